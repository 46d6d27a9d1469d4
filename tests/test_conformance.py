"""Issue #11 end to end: realistic OpenAI traffic (tests/fixtures/openai_traffic.py) goes through
capture (a real `ratchet serve`, over HTTP), the export/import round trip, the service's own
snapshot on the server's DuckDB file, the trainer (SFT, DPO and KTO, real TRL on the tiny model)
and evals' holdout loader, without an error. Each row trains or is quarantined with its reason,
no answer with a problem is ever a positive target, and no PII reaches a snapshot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from evals.evalset import load_holdout
from formats.snapshot import SnapshotRow, iter_rows, read_manifest
from service.config import SnapshotSettings
from service.store.db import Database
from service.store.snapshot import export_snapshot
from tests.fixtures.openai_traffic import CORPUS, PII_VALUES
from tests.fixtures.server import RatchetProcess
from tests.fixtures.training import train_in_process

pytestmark = pytest.mark.slow
T0 = datetime(2026, 11, 1, 9)


def _post_corpus(server: RatchetProcess, key: str) -> None:
    logs, feedback = [], []
    for i, case in enumerate(CORPUS):
        log_id = f"conf-{i:02d}"
        log: dict[str, Any] = {
            "id": log_id,
            "request": case.request,
            "response": case.response,
            "created_at": (T0 + timedelta(minutes=i)).isoformat() + "Z",
        }
        if "safety_identifier" not in case.request:
            log["end_user"] = f"user-{i}"
        if case.metadata:
            log["metadata"] = case.metadata
        logs.append(log)
        feedback.append({"log_id": log_id, "id": f"fb-{i:02d}", **case.feedback})
    with server.client(key) as client:
        r = client.post("/v1/logs", json={"logs": logs})
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == len(CORPUS), r.json()
        r = client.post("/v1/feedback", json={"feedback": feedback})
        assert r.status_code == 202 and r.json()["accepted"] == len(CORPUS), r.text


def _snapshot(db: Database, project: str, out: Path) -> tuple[Any, list[SnapshotRow], list[SnapshotRow]]:
    export_snapshot(db, project, out, SnapshotSettings(), now=T0 + timedelta(days=1))
    manifest = read_manifest(out)
    return manifest, list(iter_rows(out / "train.parquet")), list(iter_rows(out / "holdout.parquet"))


def test_openai_traffic_from_capture_to_training(
    start_ratchet: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = start_ratchet()
    key = server.create_project("conf")
    copy_key = server.create_project("conf-copy")
    _post_corpus(server, key)

    # Export, scrubbed and not; the plain export imports into another project unchanged.
    with server.client(key) as client:
        plain = client.get("/v1/projects/conf/export", params={"format": "jsonl"})
        scrubbed = client.get("/v1/projects/conf/export", params={"format": "jsonl", "scrub": "true"})
    assert plain.status_code == scrubbed.status_code == 200
    assert not [v for v in PII_VALUES if v in scrubbed.text]
    for line in scrubbed.text.splitlines():
        json.loads(line)
    exported = tmp_path / "conf.jsonl"
    exported.write_text(plain.text)
    env = {"RATCHET_URL": server.url, "RATCHET_KEY": copy_key}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "import", str(exported)],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    server.stop()

    db = Database(server.data_dir / "ratchet.duckdb")
    try:
        manifest, train, holdout = _snapshot(db, "conf", tmp_path / "snap")
        copy_manifest, copy_train, copy_holdout = _snapshot(db, "conf-copy", tmp_path / "snap-copy")
    finally:
        db.close()

    # Every case is accounted for: quarantined with its reason, or a train/holdout row.
    expected_quarantine = Counter(c.quarantine for c in CORPUS if c.quarantine)
    assert manifest.stats.quarantined == dict(expected_quarantine)
    rows = {r.log_id: r for r in train + holdout}
    for i, case in enumerate(CORPUS):
        if case.quarantine is None:
            row = rows[f"conf-{i:02d}"]
            assert row.problem == case.problem, case.name
            assert row.choice == case.feedback.get("choice", 0), case.name
    # The round trip through the log file keeps what matters for training (completions stay
    # completions, media and token prompts stay quarantined); only the choice collapses to 0.
    copy_rows = {r.log_id: r for r in copy_train + copy_holdout}
    assert copy_manifest.stats.quarantined == manifest.stats.quarantined
    for log_id, row in rows.items():
        twin = copy_rows[log_id]
        assert (twin.prompt, twin.completion, twin.tools, twin.problem, twin.rating) == (
            row.prompt,
            row.completion,
            row.tools,
            row.problem,
            row.rating,
        ), log_id
    n2 = rows[f"conf-{[c.name for c in CORPUS].index('n = 2, feedback on the second choice'):02d}"]
    assert n2.completion.content == "Mango."

    # No PII in the snapshot files, and they are valid JSON where JSON is due.
    for path in (tmp_path / "snap").glob("*.parquet"):
        text = path.read_bytes()
        assert not [v for v in PII_VALUES if v.encode() in text], path

    # The trainer takes the snapshot with every method; nothing with a problem is a positive target.
    for method in ("sft", "dpo", "kto"):
        adapter, events = train_in_process(
            {
                "run_id": f"conf-{method}", "base_model": str(tiny_model_dir),
                "snapshot_dir": str(tmp_path / "snap"), "output_dir": str(tmp_path / f"adapter-{method}"),
                "method": method, "min_examples": 1,
                "optim": {"max_steps": 2, "batch_size": 2, "logging_steps": 1},
            }
        )  # fmt: skip
        assert (adapter / "adapter_model.safetensors").is_file(), method
        examples = json.loads((adapter / "manifest.json").read_text())["examples"]
        assert examples["trainable_tokens"][method] > 0, method
        problems = {r.problem for r in train if r.problem is not None}
        assert set(examples["not_positive"]) <= problems | {"empty"}, method
        assert events[-1]["event"] == "done", method

    # Evals read the holdout the gate will replay.
    loaded = load_holdout(tmp_path / "snap" / "holdout.parquet")
    assert loaded and all(e.messages for e in loaded)
