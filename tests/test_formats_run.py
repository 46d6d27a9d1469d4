"""The typed hand-offs between service, trainer, deploy and CLI (`formats.run`, `formats.manifest`):
each reader checks `schema_version` and names the file (or record) and both versions; old files
still load; a misspelt stats field is an error, not a silent new key; the pipeline is handed its
parts by name and runs the trainer through the one runner."""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

from deploy.adapter_dir import InvalidAdapter, check_adapter_dir
from formats.manifest import AdapterManifest, decode_manifest, read_manifest
from formats.run import GateDecision, RunStats, StepEvent, decode_event, runs_from_json
from formats.versioned import SchemaVersionError
from service.config import Settings, TrainingSettings, VllmSettings
from service.pipeline import Pipeline, RunFailed, run_spec
from service.store.db import Database
from service.store.runs import RunRecord, Runs
from service.store.serving import Serving
from service.trainer_process import TrainerFailed, run_trainer
from trainer.null_adapter import write_null_adapter

ROOT = Path(__file__).resolve().parents[1]

# What the trainer wrote before the manifest was a Struct (schema_version 1), and what the null
# adapter wrote before it had a version: both must still load.
OLD_TRAINED = {
    "schema_version": 1, "run_id": "run-20261120-101500-ab12", "parent_version": "demo@v0",
    "parent_adapter": None, "method": "kto", "method_requested": "auto", "method_why": "thumbs only",
    "base_model": "/models/tiny", "snapshot_sha256": "ab" * 32,
    "snapshot": {"dir": "/d/runs/r/snapshot", "files": {"train.parquet": "cd" * 32}, "rows": {"train": 120, "holdout": 20}},
    "examples": {"kto": 120}, "hyperparameters": {"learning_rate": 0.0005, "max_length": 64},
    "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"},
    "libraries": {"python": "3.12.3", "torch": "2.13.0"}, "metrics": {"train_loss": 0.41},
    "wall_time_s": 31.2, "reward_model": {"dir": "/d/runs/r/reward_model", "wall_time_s": 9.1},
    "created_at": "2026-11-20T10:16:01+00:00",
}  # fmt: skip
OLD_NULL = {"kind": "null", "base_model": "/models/tiny", "seed": None, "lora": {"r": 8, "lora_alpha": 8}}


def test_old_manifests_still_load() -> None:
    trained = decode_manifest(json.dumps(OLD_TRAINED))
    assert (trained.kind, trained.run_id, trained.method, trained.lora and trained.lora.r) == (
        "trained", "run-20261120-101500-ab12", "kto", 8
    )  # fmt: skip
    assert trained.snapshot is not None and trained.snapshot.rows == {"train": 120, "holdout": 20}
    null = decode_manifest(json.dumps(OLD_NULL))
    assert (null.kind, null.base_model, null.schema_version) == ("null", "/models/tiny", 1)
    # Written again, it is the current version, every field named.
    assert json.loads(null.encode())["schema_version"] == 1


def test_a_newer_manifest_is_refused_naming_file_and_versions(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({**OLD_TRAINED, "schema_version": 2, "lora": "x"}))
    with pytest.raises(SchemaVersionError) as caught:
        read_manifest(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'manifest.json'} has schema_version 2; this version of Ratchet reads 1 or older"
    )
    assert read_manifest(tmp_path / "nowhere") is None  # an adapter trained elsewhere has none


def test_deploy_refuses_an_adapter_whose_manifest_is_newer(tmp_path: Path, tiny_model_dir: Path) -> None:
    adapter = write_null_adapter(tiny_model_dir, tmp_path / "adapters" / "p" / "v0")
    checked = check_adapter_dir(adapter, root=tmp_path / "adapters", max_rank=8)
    assert isinstance(checked.manifest, AdapterManifest) and checked.manifest.kind == "null"
    manifest = json.loads((adapter / "manifest.json").read_text())
    (adapter / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 3}))
    with pytest.raises(InvalidAdapter, match="has schema_version 3; this version of Ratchet reads 1"):
        check_adapter_dir(adapter, root=tmp_path / "adapters", max_rank=8)


def runs_store(tmp_path: Path) -> tuple[Database, Runs]:
    db = Database(tmp_path / "ratchet.duckdb")
    return db, Runs(db, Serving(db))


def test_a_cancel_racing_a_stage_update_neither_conflicts_nor_revives_the_run(tmp_path: Path) -> None:
    """A cancelled run's stage can still have an update in flight on a worker thread while the
    cancel finishes the run (a job cancelled right after it was created answered 500: DuckDB's
    "Conflict on update"): updates of a run are serialised, and an ended run stays ended."""
    db, runs = runs_store(tmp_path)
    now = datetime(2026, 11, 30, 12)
    runs.create(
        RunRecord(id="r1", project="p", trigger="manual", state="pending", started_at=now, updated_at=now)
    )

    def stage(i: int) -> None:
        runs.update(
            "r1", now, state="training" if i % 2 else "snapshot", stats={"stage_seconds": {"snapshot": i}}
        )

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stage, i) for i in range(40)]
        futures.append(pool.submit(runs.update, "r1", now, state="cancelled", error="cancelled on request"))
        futures += [pool.submit(stage, i) for i in range(40)]
        for future in futures:
            future.result()  # no "Conflict on update"
    run = runs.get("r1")
    assert (run.state, run.error, run.finished_at) == ("cancelled", "cancelled on request", now)
    with db.reading() as cur:
        kinds = [
            k for (k,) in cur.execute("SELECT kind FROM events WHERE run_id = 'r1' ORDER BY rowid").fetchall()
        ]
    assert kinds.count("run_cancelled") == 1 and kinds[-1] == "run_cancelled", kinds  # none after the end
    db.close()


def test_run_stats_are_typed_checked_and_old_ones_load(tmp_path: Path) -> None:
    db, runs = runs_store(tmp_path)
    now = datetime(2026, 11, 30, 12)
    runs.create(
        RunRecord(id="r1", project="p", trigger="manual", state="pending", started_at=now, updated_at=now)
    )
    step = StepEvent(step=60, total_steps=60, loss=0.2, logs={"grad_norm": 1.5})
    run = runs.update("r1", now, state="training", stats={"progress": step, "adapter": "p@v1"})
    assert runs.get("r1").stats == run.stats and run.stats.progress == step
    with pytest.raises(TypeError, match="adapterr"):  # a misspelt stats field, not a silent new key
        runs.update("r1", now, stats={"adapterr": "p@v2"})
    # Stats stored before they were versioned (a dict of the same keys) still load...
    old = {"adapter": "p@v1", "stage_seconds": {"snapshot": 1.5},
           "progress": {"event": "step", "step": 3, "total_steps": 60, "loss": 0.5, "epoch": 0.1, "grad_norm": 2.0}}  # fmt: skip
    with db.transaction() as cur:
        cur.execute("UPDATE runs SET stats = ? WHERE id = 'r1'", [json.dumps(old)])
    loaded = runs.get("r1").stats
    assert (loaded.schema_version, loaded.adapter, loaded.progress and loaded.progress.step) == (1, "p@v1", 3)
    # ...and stats a newer Ratchet wrote are refused naming the run and the versions.
    with db.transaction() as cur:
        cur.execute("UPDATE runs SET stats = ? WHERE id = 'r1'", [json.dumps({**old, "schema_version": 2})])
    with pytest.raises(SchemaVersionError, match="the stats of run r1 has schema_version 2; this version"):
        runs.get("r1")
    db.close()


def test_the_cli_reads_runs_as_structs_and_refuses_a_newer_servers_stats() -> None:
    wire = [{"id": "r1", "project": "p", "trigger": "manual", "state": "training",
             "started_at": "2026-11-30T12:00:00", "updated_at": "2026-11-30T12:00:05",
             "stats": {"schema_version": 1, "progress": {"event": "step", "step": 59, "total_steps": 60}}}]  # fmt: skip
    (run,) = runs_from_json(wire)
    assert run.stats.progress is not None and run.stats.progress.step == 59
    wire[0]["stats"]["schema_version"] = 2
    with pytest.raises(SchemaVersionError, match="the stats of run r1 has schema_version 2"):
        runs_from_json(wire)


def test_progress_lines_decode_to_events_and_anything_else_is_skipped() -> None:
    step = decode_event(b'{"event": "step", "step": 5, "total_steps": 10, "loss": null, "epoch": 0.5}')
    assert step == StepEvent(step=5, total_steps=10, epoch=0.5)
    assert decode_event(b"Map: 100%|##########| 120/120") is None  # a library printing to stdout
    assert decode_event(b'{"event": "reward_step", "step": 1}') is None  # not for the service


def test_a_misspelt_spec_override_fails_the_run_before_the_trainer_naming_it(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=str(tmp_path), vllm=VllmSettings(base_model="/models/tiny"),
        training=TrainingSettings(spec_overrides={"optim": {"max_step": 10}}),
    )  # fmt: skip
    kwargs = dict(run_id="r1", snapshot=tmp_path / "s", output=tmp_path / "o", run_dir=tmp_path,
                  parent_version="p@v0", parent_adapter=None)  # fmt: skip
    with pytest.raises(RunFailed, match=r"unknown field `max_step` - at `\$.optim`"):
        run_spec(settings, **kwargs)
    good = Settings(data_dir=str(tmp_path), vllm=VllmSettings(base_model="/models/tiny"),
                    training=TrainingSettings(spec_overrides={"optim": {"max_steps": 10}}))  # fmt: skip
    spec = run_spec(good, **kwargs)
    assert (spec.optim.max_steps, spec.base_model, spec.parent_version) == (10, "/models/tiny", "p@v0")


def test_one_trainer_runner_and_a_pipeline_handed_its_parts(tmp_path: Path) -> None:
    # The pipeline no longer takes the whole Runtime (which points back at it).
    params = inspect.signature(Pipeline).parameters
    assert "runtime" not in params and {"runs", "rollouts", "cut_snapshot", "metrics"} <= set(params)
    # Only service/trainer_process.py starts `python -m trainer` (rollouts had a second copy).
    starters = [
        p.relative_to(ROOT).as_posix() for p in (ROOT / "service").rglob("*.py")
        if "create_subprocess_exec" in p.read_text() and '"trainer"' in p.read_text()
    ]  # fmt: skip
    assert starters == ["service/trainer_process.py"]
    # Its failure carries the trainer's own error event.
    with pytest.raises(TrainerFailed, match=r"exit 2\): base model directory .*gone does not exist"):
        asyncio.run(
            run_trainer("null-adapter", "--base", str(tmp_path / "gone"), "--out", str(tmp_path / "o"))
        )
    assert sys.executable  # the runner runs this interpreter's trainer


def test_stats_round_trip_through_msgspec() -> None:
    stats = RunStats(adapter="p@v1", stage_seconds={"training": 3.0})
    assert RunStats.decode(msgspec.json.encode(stats)) == stats


def test_the_online_verdict_in_run_stats_is_the_gates_own_struct() -> None:
    """`RunStats.online` is `GateDecision` (was a free dict): it round-trips typed, and a verdict
    with a reason the gate does not have is refused, not stored as whatever it was."""
    verdict = GateDecision(
        outcome="promote", reason="better", detail="canary 27/43 up vs champion 15/58", statistic=3.2,
        harm_statistic=-4.0, promote_at=3.0, rollback_at=3.0, lift=0.37, canary_rate=0.63,
        champion_rate=0.26, canary_ratings=43, champion_ratings=58,
    )  # fmt: skip
    stats = RunStats(adapter="p@v1", online=verdict)
    loaded = RunStats.decode(msgspec.json.encode(stats))
    assert loaded == stats and isinstance(loaded.online, GateDecision)
    wire = msgspec.to_builtins(stats)
    wire["online"]["reason"] = "vibes"
    with pytest.raises(msgspec.ValidationError, match=r"\$\.online\.reason"):
        RunStats.decode(msgspec.json.encode(wire))
