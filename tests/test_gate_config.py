"""The offline-gate config over HTTP: validated, versioned, each change an event, the judge's key
never shown; a project's eval.json is imported once; the CLI reads and writes it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.fixtures.server import RatchetProcess

UPPER = {"name": "upper", "when_prompt_matches": "(?i)uppercase", "must_match": "^[^a-z]*[A-Z][^a-z]*$"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rules": {"rules": [{"name": "x", "must_match": "(["}]}}, "rules.rules[0]"),
        ({"rules": {"rules": [{"name": "x"}]}}, "rules.rules[0]"),
        ({"golden": {"examples": [{"prompt": "hi"}]}}, "golden.examples"),
        ({"golden": {"examples": [{"prompt": "hi", "messages": [], "reference": "x"}]}}, "golden.examples"),
        ({"golden": {"examples": []}}, "golden.examples"),
        ({"judge": {"url": "http://x", "model": "m", "prompt": "no placeholders"}}, "judge"),
        ({"min_samples": 0}, "min_samples"),
        ({"rulez": {}}, "rulez"),
    ],
)
def test_a_bad_gate_config_is_a_422_naming_what_to_fix(
    ratchet_server: RatchetProcess, body: dict[str, Any], field: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    with ratchet_server.client(ratchet_server.create_project(name)) as c:
        r = c.put(f"/v1/projects/{name}/gate", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "invalid_input"
        assert r.json()["field"] == field, r.json()
        assert c.get(f"/v1/projects/{name}/gate").json()["version"] == 0  # nothing stored


def test_versions_events_and_the_judges_key(ratchet_server: RatchetProcess) -> None:
    key = ratchet_server.create_project("gated")
    c = ratchet_server.client(key)
    first = c.get("/v1/projects/gated/gate").json()
    assert first["version"] == 0 and first["config"]["rules"] is None
    assert first["evidence"].startswith("the holdout's feedback decides")
    judge = {"url": "http://127.0.0.1:9/v1", "model": "judge", "api_key": "sk-secret", "role": "guard"}
    body = {"rules": {"role": "primary", "rules": [UPPER]}, "judge": judge, "min_samples": 10}
    r = c.put("/v1/projects/gated/gate", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["version"] == 1 and got["judge_api_key_set"] is True
    assert got["config"]["judge"]["api_key"] is None and "sk-secret" not in r.text
    assert got["evidence"].startswith("rules (primary), judge (guard), joined by the holdout's feedback")
    # the same config again (the key left out: kept) is no new version
    same = {**body, "judge": {k: v for k, v in judge.items() if k != "api_key"}}
    assert c.put("/v1/projects/gated/gate", json=same).json()["version"] == 1
    # a stale expected_version is a 409; the right one stores version 2
    body2 = {**same, "rules": None}
    r = c.put("/v1/projects/gated/gate", json=body2, params={"expected_version": 0})
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    r = c.put("/v1/projects/gated/gate", json=body2, params={"expected_version": 1})
    assert r.json()["version"] == 2 and r.json()["judge_api_key_set"] is True
    assert r.json()["evidence"].startswith("the holdout's feedback decides (judge (guard) is primary)")
    assert (
        c.get("/v1/projects/gated/gate", params={"version": 1}).json()["config"]["rules"]["role"] == "primary"
    )
    assert c.get("/v1/projects/gated/gate", params={"version": 7}).status_code == 404
    events = [e for e in c.get("/v1/projects/gated/events").json() if e["kind"] == "gate_config_changed"]
    assert [e["detail"]["version"] for e in events] == [2, 1]
    assert events[0]["detail"]["changed"] == ["rules"]
    assert "sk-secret" not in c.get("/v1/projects/gated/events").text
    # the feedback evidence turned off in the settings: the rules alone
    c.put("/v1/projects/gated/gate", json=body)
    c.patch("/v1/projects/gated/settings", json={"feedback_gate": {"enabled": False}})
    assert c.get("/v1/projects/gated/gate").json()["evidence"].startswith("hand-written only")
    # another project's key sees nothing of it
    other = ratchet_server.create_project("ungated")
    with ratchet_server.client(other) as o:
        assert o.get("/v1/projects/gated/gate").status_code == 404
        assert o.put("/v1/projects/gated/gate", json={}).status_code == 404


def test_an_eval_json_is_imported_once_and_the_cli_reads_and_writes(
    start_ratchet: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server: RatchetProcess = start_ratchet(data_dir=data)
    server.create_project("legacy")
    server.stop()
    project_dir = data / "projects" / "legacy"
    project_dir.mkdir(parents=True)
    (project_dir / "golden.jsonl").write_text(
        '{"id": "f1", "prompt": "capital of France?", "reference": "Paris"}\n\n'
        '{"prompt": "2+2?", "reference": "4", "match": "contains"}\n'
    )
    eval_json = {
        "rules": {"role": "primary", "rules": [UPPER]},
        "golden": {"path": "golden.jsonl", "role": "guard", "tolerance": 0.1},
        "generation": {"max_tokens": 8, "temperature": 0.0},
        "min_samples": 10,
    }
    (project_dir / "eval.json").write_bytes(msgspec.json.encode(eval_json))
    server.start()
    with server.client() as c:
        g = c.get("/v1/projects/legacy/gate").json()
        assert g["version"] == 1 and g["config"]["min_samples"] == 10
        assert [e["reference"] for e in g["config"]["golden"]["examples"]] == ["Paris", "4"]
        assert g["config"]["golden"]["tolerance"] == 0.1
        imported = [
            e for e in c.get("/v1/projects/legacy/events").json() if e["kind"] == "gate_config_imported"
        ]
        assert len(imported) == 1 and imported[0]["detail"]["version"] == 1
    # read once: a changed file is not imported again
    (project_dir / "eval.json").write_bytes(msgspec.json.encode({**eval_json, "min_samples": 99}))
    server.stop()
    server.start()
    env = {**os.environ, "RATCHET_URL": server.url, "RATCHET_KEY": server.admin_key}

    def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env=env,
            input=stdin,
            capture_output=True,
            timeout=60,
        )

    shown = cli("gate", "get", "--project", "legacy")
    assert shown.returncode == 0, shown.stderr
    config = msgspec.json.decode(shown.stdout)
    assert config["min_samples"] == 10
    put = cli(
        "gate", "put", "--project", "legacy", "-", stdin=msgspec.json.encode({**config, "min_samples": 20})
    )
    assert put.returncode == 0, put.stderr
    assert b"version 2" in put.stdout
    bad = cli("gate", "put", "--project", "legacy", "-", stdin=b'{"min_samples": "many"}')
    assert bad.returncode == 1 and b"min_samples" in bad.stderr
    with server.client() as c:
        assert c.get("/v1/projects/legacy/gate").json()["config"]["min_samples"] == 20
        # deleting the project deletes its gate configs (golden examples may hold user data)
        assert c.delete("/v1/projects/legacy").status_code == 200
        c.post("/v1/projects", json={"name": "legacy"}).raise_for_status()
        assert c.get("/v1/projects/legacy/gate").json()["version"] == 0
