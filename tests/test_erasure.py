"""Deleting data: a log, an end user (no trace left anywhere), a project, retention; all or nothing
under `kill -9`. Real server processes and DuckDB files; the lineage and retention rules also
in-process, where the adapters and times they depend on can be set up exactly."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from formats.manifest import AdapterManifest
from service import erasure
from service.app import build_runtime
from service.auth import mint_key
from service.capture import Capture
from service.cli import main
from service.config import Settings
from service.domain import Principal, Project
from service.runtime import Runtime
from service.store.db import Database
from service.store.runs import RunRecord
from service.store.serving import AdapterRecord
from service.store.snapshot import export_snapshot
from tests.fixtures import rows
from tests.fixtures.server import RatchetProcess, wait_for
from tests.test_api_capture import chat_log

SECRET = "ZEDSECRET-4471"  # the erased person's text
PERSON = "zed-7731"  # and their id


def person_log(log_id: str, user: str, text: str) -> dict[str, Any]:
    log = chat_log(log_id, answer=f"answer for {user}", end_user=user)
    log["request"]["messages"][0]["content"] = text
    return log


def cut_snapshot(c: httpx.Client, project: str) -> str:
    """A run's snapshot (the run then fails for want of a base model; its snapshot stays)."""
    run = c.post(f"/v1/projects/{project}/runs").json()["id"]
    wait_for(lambda: c.get(f"/v1/runs/{run}").json()["state"] == "failed", 60, f"run {run} to end")
    return str(run)


def everything_in_store(db_path: Path) -> str:
    """Every value of every table of the DuckDB file, as text (the server must be stopped)."""
    db = Database(db_path)
    try:
        with db.reading() as cur:
            tables = [
                t for (t,) in cur.execute("SELECT table_name FROM information_schema.tables").fetchall()
            ]
            return "\n".join(str(cur.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)
    finally:
        db.close()


def files_holding(root: Path, needle: str) -> list[str]:
    """Files under `root` (the DuckDB file and its WAL aside) whose bytes contain `needle`."""
    return [
        str(p)
        for p in root.rglob("*")
        if p.is_file() and ".duckdb" not in p.name and needle.encode() in p.read_bytes()
    ]


def test_erasing_an_end_user_leaves_no_trace(start_ratchet: Any) -> None:
    server = start_ratchet()
    c = server.client(server.create_project("erase"))
    logs = [person_log(f"z-{i}", PERSON, f"{SECRET} question {i}") for i in range(40)]
    logs += [person_log(f"a-{i}", "ann", f"ann question {i}") for i in range(40)]
    assert c.post("/v1/logs", json={"logs": logs}).status_code == 202
    feedback = [{"log_id": f"z-{i}", "end_user": PERSON, "rating": 1 if i % 3 else -1} for i in range(40)]
    feedback += [{"log_id": f"a-{i}", "end_user": "ann", "rating": 1 if i % 4 else -1} for i in range(40)]
    feedback += [{"log_id": "z-1", "end_user": "ann", "rating": 1}]  # on the person's log
    feedback += [{"log_id": "a-1", "end_user": PERSON, "rating": -1, "correction": f"{SECRET} fix"}]
    assert c.post("/v1/feedback", json={"feedback": feedback}).status_code == 202
    run = cut_snapshot(c, "erase")
    snapshot = server.data_dir / "runs" / run / "snapshot"
    assert files_holding(snapshot, SECRET), "the snapshot should hold the person's rows before"
    assert SECRET in c.get("/v1/projects/erase/export").text

    wal = server.data_dir / "ratchet.duckdb.wal"
    assert SECRET.encode() in wal.read_bytes()  # as inserted, until a checkpoint
    r = c.delete(f"/v1/projects/erase/end-users/{PERSON}")
    assert r.status_code == 200, r.text
    wait_for(lambda: not wal.exists() or SECRET.encode() not in wal.read_bytes(), 10, "a checkpoint")
    answer = r.json()
    assert (answer["logs_deleted"], answer["feedback_deleted"]) == (40, 42)
    assert answer["snapshots_deleted"] == [run]
    assert not snapshot.exists()

    assert c.get("/v1/logs/z-3").status_code == 404
    assert [f["end_user"] for f in c.get("/v1/logs/a-1").json()["feedback"]] == ["ann"]
    assert c.get("/v1/projects/erase/stats").json()["logs"] == 40
    for fmt in ("jsonl", "parquet"):
        export = c.get("/v1/projects/erase/export", params={"format": fmt}).content
        assert SECRET.encode() not in export and PERSON.encode() not in export
    metrics = httpx.get(f"{server.url}/metrics").text
    assert PERSON not in metrics and SECRET not in metrics
    erased_events = [e for e in c.get("/v1/projects/erase/events").json() if e["kind"] == "end_user_erased"]
    assert len(erased_events) == 1 and erased_events[0]["detail"]["logs_deleted"] == 40
    # A snapshot cut afterwards holds the others' rows and none of the person's.
    later = server.data_dir / "runs" / cut_snapshot(c, "erase") / "snapshot"
    assert later.exists() and not files_holding(later, SECRET) and not files_holding(later, PERSON)
    server.stop()
    assert not files_holding(server.data_dir, SECRET) and not files_holding(server.data_dir, PERSON)
    stored = everything_in_store(server.data_dir / "ratchet.duckdb")
    assert "ann question 3" in stored  # the scan does see rows
    assert SECRET not in stored and PERSON not in stored


def test_deleting_a_log_deletes_its_feedback_and_snapshots(start_ratchet: Any) -> None:
    server = start_ratchet()
    c = server.client(server.create_project("onelog"))
    logs = [person_log(f"l-{i}", f"u{i % 5}", f"question {i}") for i in range(50)]
    assert c.post("/v1/logs", json={"logs": logs}).status_code == 202
    fb = [{"log_id": f"l-{i}", "end_user": f"u{i % 5}", "rating": 1 if i % 3 else -1} for i in range(50)]
    assert c.post("/v1/feedback", json={"feedback": fb}).status_code == 202
    run = cut_snapshot(c, "onelog")
    r = c.delete("/v1/logs/l-7")
    assert r.status_code == 200, r.text
    assert (r.json()["logs_deleted"], r.json()["feedback_deleted"], r.json()["snapshots_deleted"]) == (
        1,
        1,
        [run],
    )
    assert c.get("/v1/logs/l-7").status_code == 404
    assert c.delete("/v1/logs/l-7").status_code == 404
    assert c.get("/v1/logs/l-8").status_code == 200  # only that one
    assert not (server.data_dir / "runs" / run / "snapshot").exists()
    event = next(e for e in c.get("/v1/projects/onelog/events").json() if e["kind"] == "log_deleted")
    assert event["detail"]["log_id"] == "l-7" and event["detail"]["feedback_deleted"] == 1


def test_deleting_a_project_removes_everything_of_it(start_ratchet: Any) -> None:
    server = start_ratchet()
    admin = server.client()
    key = server.create_project("doomed")
    keep = server.client(server.create_project("kept"))
    c = server.client(key)
    assert (
        c.post(
            "/v1/logs", json={"logs": [person_log(f"d-{i}", "u", f"q {i}") for i in range(40)]}
        ).status_code
        == 202
    )
    fb = [{"log_id": f"d-{i}", "end_user": f"u{i}", "rating": 1 if i % 3 else -1} for i in range(40)]
    assert c.post("/v1/feedback", json={"feedback": fb}).status_code == 202
    assert keep.post("/v1/logs", json=chat_log("k-1")).status_code == 202
    run = cut_snapshot(c, "doomed")
    adapter_dir = server.data_dir / "adapters" / "doomed" / "outside"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_config.json").write_text("{}")
    assert c.patch("/v1/projects/doomed/settings", json={"canary_fraction": 0.5}).status_code == 200

    assert c.delete("/v1/projects/doomed").status_code == 403  # admin only
    r = admin.delete("/v1/projects/doomed")
    assert r.status_code == 200, r.text
    assert (r.json()["logs_deleted"], r.json()["feedback_deleted"]) == (40, 40)
    assert c.get("/v1/projects").status_code == 401  # its keys are gone
    assert admin.get("/v1/projects/doomed/stats").status_code == 404
    assert not (server.data_dir / "runs" / run).exists()
    assert not (server.data_dir / "adapters" / "doomed").exists()
    assert 'project="doomed"' not in httpx.get(f"{server.url}/metrics").text
    assert keep.get("/v1/logs/k-1").status_code == 200  # the other project is untouched
    # The name can be used again, for an empty project with the default settings.
    c2 = server.client(server.create_project("doomed"))
    assert c2.get("/v1/projects/doomed/stats").json()["logs"] == 0
    assert c2.get("/v1/projects/doomed/settings").json()["overrides"] == {}
    server.stop()
    db = Database(server.data_dir / "ratchet.duckdb")
    with db.reading() as cur:
        kinds = [k for (k,) in cur.execute("SELECT kind FROM events WHERE project = 'doomed'").fetchall()]
        (pending,) = cur.execute("SELECT count(*) FROM pending_deletions").fetchone()
    db.close()
    assert "project_deleted" in kinds and "settings_changed" not in kinds and pending == 0


@pytest.mark.slow
def test_deleting_a_project_unloads_its_versions_from_vllm(
    tmp_path: Path, vllm_server: Any, tiny_model_dir: Path
) -> None:
    env = {
        "RATCHET_VLLM__URLS": f'["{vllm_server.base_url}"]',
        "RATCHET_VLLM__BASE_SERVED_NAME": vllm_server.model_name,
        "RATCHET_VLLM__BASE_MODEL": str(tiny_model_dir),
    }
    server = RatchetProcess(tmp_path / "data", env=env).start()
    try:
        admin = server.client()
        server.create_project("served")
        wait_for(
            lambda: admin.get("/v1/projects/served/rollout").json()["champion"] == "served@v0", 120, "v0"
        )

        def models() -> list[str]:
            return [m["id"] for m in httpx.get(f"{vllm_server.base_url}/v1/models").json()["data"]]

        assert "served@v0" in models()
        assert admin.delete("/v1/projects/served").status_code == 200
        assert "served@v0" not in models()
        assert not (server.data_dir / "adapters" / "served").exists()
    finally:
        server.stop()
        vllm_server.unload_adapters("served")


# --- lineage and retention, in-process


def _runtime(tmp_path: Path, **settings: Any) -> Runtime:
    runtime = build_runtime(Settings(data_dir=str(tmp_path / "data"), **settings))
    runtime.queries.create_project(
        Project("p", "", datetime(2026, 11, 1)), mint_key("p", datetime(2026, 11, 1))[1]
    )
    runtime.projects.add("p")
    runtime.writer.start()
    return runtime


def _write(runtime: Runtime, user: str, n: int, received: datetime, prefix: str) -> None:
    logs, feedback = [], []
    for i in range(n):
        item = rows.chat_log(
            f"{prefix}-{i}", [{"role": "user", "content": f"{prefix} {user} q{i}"}], f"a{i}", end_user=user
        )
        logs.append(Capture.log_row("p", item, f"{prefix}-{i}", received, "api"))
        feedback.append(
            rows.feedback_row(
                "p",
                f"{prefix}-{i}",
                received,
                end_user=user,
                fid=f"f-{prefix}-{i}",
                rating=1 if i % 2 else -1,
            )
        )
    runtime.writer.write_sync("logs", logs)
    runtime.writer.write_sync("feedback", feedback)


def _adapter(runtime: Runtime, version: int, created: datetime, **extra: Any) -> None:
    record = AdapterRecord(project="p", version=version, served_name=f"p@v{version}", path=f"/x/{version}",
                           state="retired", created_at=created, updated_at=created,
                           **{"method": "sft", "parent_version": None, "snapshot_sha256": None, **extra})  # fmt: skip
    runtime.serving.add_adapter(record)


def test_adapters_trained_on_erased_data_are_listed_and_marked(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    t0 = datetime(2026, 11, 10)
    _write(runtime, PERSON, 30, t0, "z")
    _write(runtime, "ann", 30, t0, "a")
    run_dir = runtime.settings.runs_dir / "run-1" / "snapshot"
    manifest = export_snapshot(
        runtime.db, "p", run_dir, runtime.settings.snapshot, now=t0 + timedelta(days=1)
    )
    runtime.runs.create(RunRecord(id="run-1", project="p", trigger="manual", state="failed",
                                  started_at=t0 + timedelta(days=1), updated_at=t0))  # fmt: skip
    day = timedelta(days=1)
    _adapter(
        runtime, 1, t0 + 2 * day, snapshot_sha256=manifest.sha256, manifest=AdapterManifest(run_id="run-1")
    )
    _adapter(
        runtime, 2, t0 + 3 * day, parent_version=1, manifest=AdapterManifest(run_id="run-2")
    )  # trained on top of v1
    _adapter(runtime, 3, t0 + 4 * day, manifest=AdapterManifest(run_id="run-gone"))  # its snapshot was pruned
    _adapter(runtime, 4, t0 - day, manifest=AdapterManifest(run_id="run-old"))  # trained before the data came
    _adapter(runtime, 5, t0 + 4 * day, method="external")  # not trained here
    principal = Principal("k", "p", frozenset({"manage"}))
    try:
        out = asyncio.run(erasure.erase_end_user(runtime, principal, "p", PERSON))
        assert (out.logs_deleted, out.feedback_deleted, out.snapshots_deleted) == (30, 30, ["run-1"])
        assert out.adapters_trained_on_it == ["p@v1", "p@v2"]
        assert out.adapters_possibly_trained_on_it == ["p@v3"]
        marks = {a.served_name: a.erased_data for a in runtime.serving.adapters("p")}
        assert [m["certain"] for m in marks["p@v1"]] == [True] and [m["certain"] for m in marks["p@v3"]] == [
            False
        ]
        assert marks["p@v4"] == [] and marks["p@v5"] == []
        assert PERSON not in msgspec.json.encode(marks).decode()
        assert not run_dir.exists() and runtime.erasures.pending_deletions() == []
        again = asyncio.run(erasure.erase_end_user(runtime, principal, "p", PERSON))
        assert (again.logs_deleted, again.snapshots_deleted) == (0, [])
    finally:
        runtime.writer.stop()
        runtime.db.close()


def test_retention_deletes_what_is_older_than_the_project_period(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    runtime.queries.create_project(
        Project("q", "", datetime(2026, 11, 1)), mint_key("q", datetime(2026, 11, 1))[1]
    )
    runtime.projects.add("q")  # no retention: keeps everything
    now = datetime(2026, 12, 31)
    _write(runtime, "old", 20, now - timedelta(days=40), "old")
    _write(runtime, "new", 20, now - timedelta(days=5), "new")
    for run_id, started in (("run-old", now - timedelta(days=35)), ("run-new", now - timedelta(days=2))):
        snapshot = runtime.settings.runs_dir / run_id / "snapshot"
        snapshot.mkdir(parents=True)
        (snapshot / "train.parquet").write_bytes(b"x")
        runtime.runs.create(RunRecord(id=run_id, project="p", trigger="manual", state="failed",
                                      started_at=started, updated_at=started))  # fmt: skip
    runtime.project_settings.set("p", {"retention_days": 30}, "")
    try:
        assert erasure.apply_retention(runtime, now - timedelta(days=60)) == []  # nothing old enough yet
        (done,) = erasure.apply_retention(runtime, now)
        assert (done.project, done.logs_deleted, done.feedback_deleted) == ("p", 20, 20)
        assert done.snapshots_deleted == ["run-old"]
        assert not (runtime.settings.runs_dir / "run-old" / "snapshot").exists()
        assert (runtime.settings.runs_dir / "run-new" / "snapshot").exists()
        assert runtime.queries.project_stats("p").logs == 20
        assert erasure.apply_retention(runtime, now) == []
        assert [e.kind for e in runtime.serving.events("p")].count("retention_applied") == 1
    finally:
        runtime.writer.stop()
        runtime.db.close()


# --- kill -9 in the middle of an erasure


VICTIM_LOGS = 3000


def _load_victim(c: httpx.Client, project: str) -> None:
    for start in range(0, VICTIM_LOGS, 1000):
        ids = range(start, start + 1000)
        logs = [person_log(f"v-{i}", "victim", f"{SECRET} q{i}") for i in ids]
        assert c.post("/v1/logs", json={"logs": logs}).status_code == 202
        fb = [{"log_id": f"v-{i}", "end_user": "victim", "rating": 1 if i % 3 else -1} for i in ids]
        assert c.post("/v1/feedback", json={"feedback": fb}).status_code == 202
    others = [person_log(f"o-{i}", "other", f"q{i}") for i in range(200)]
    assert c.post("/v1/logs", json={"logs": others}).status_code == 202


def _state(server: RatchetProcess, c: httpx.Client, project: str, run: str) -> str:
    stats = c.get(f"/v1/projects/{project}/stats").json()
    erased = [e for e in c.get(f"/v1/projects/{project}/events").json() if e["kind"] == "end_user_erased"]
    snapshot = (server.data_dir / "runs" / run / "snapshot").exists()
    if (stats["logs"], stats["feedback"], snapshot, len(erased)) == (200, 0, False, 1):
        return "all"
    if (stats["logs"], stats["feedback"], snapshot, len(erased)) == (VICTIM_LOGS + 200, VICTIM_LOGS, True, 0):
        return "none"
    return f"PARTIAL: {stats['logs']} logs, {stats['feedback']} feedback, snapshot {snapshot}, events {len(erased)}"


def test_kill_9_mid_erasure_leaves_all_or_nothing(start_ratchet: Any, tmp_path: Path) -> None:
    """SIGKILL at a random moment of an erasure, again and again: after the restart the person's
    data is either all there (rows, snapshot, no event: killed before the deletion was recorded)
    or all gone (recorded: the start-up finished it), never part of it."""
    server = start_ratchet(data_dir=tmp_path / "killed")
    rng = random.Random(13)
    outcomes: list[tuple[float, int | None, str]] = []
    took = 0.0
    state = "all"
    for round_ in range(8):
        if state == "all":  # the person is gone: a new project with a new one
            project = f"kill-{round_}"
            c = server.client(server.create_project(project))
            _load_victim(c, project)
            run = cut_snapshot(c, project)
        answer: dict[str, Any] = {}

        def erase(c: httpx.Client = c, project: str = project, answer: dict[str, Any] = answer) -> None:
            try:
                answer["status"] = c.delete(
                    f"/v1/projects/{project}/end-users/victim", timeout=120
                ).status_code
            except httpx.TransportError:
                answer["status"] = None

        started = time.monotonic()
        thread = threading.Thread(target=erase)
        thread.start()
        delay = -1.0
        if round_ == 0:  # the first one runs to the end and times the erasure
            thread.join()
            took = time.monotonic() - started
        else:
            # Odd rounds aim at the recording transaction, even ones at the batches after it.
            low, high = (0.0, 0.3 * took) if round_ % 2 else (0.3 * took, 1.3 * took)
            time.sleep(delay := rng.uniform(low, high))
            server.kill()
            thread.join()
            server.start()
        state = _state(server, server.client(), project, run)
        outcomes.append((round(delay, 3), answer["status"], state))
        assert state in ("all", "none"), outcomes
        if answer["status"] == 200:
            assert state == "all", outcomes  # an answered erasure is never undone
    assert outcomes[0][1:] == (200, "all")
    print(f"erasure of {VICTIM_LOGS} logs took {took:.2f} s; (kill after s, answer, state): {outcomes}")


def test_a_recorded_deletion_cut_short_is_finished_at_start(start_ratchet: Any, tmp_path: Path) -> None:
    """`kill -9` after a deletion's commit point, before its files and rows were gone: the next
    start finishes it before serving (and never deletes outside the data directory)."""
    data_dir = tmp_path / "pending"
    server = start_ratchet(data_dir=data_dir)
    c = server.client(server.create_project("cut"))
    logs = [person_log(f"c-{i}", PERSON if i % 2 else "ann", f"{SECRET} {i}") for i in range(30)]
    assert c.post("/v1/logs", json={"logs": logs}).status_code == 202
    server.stop()
    left = data_dir / "runs" / "run-x" / "snapshot"
    left.mkdir(parents=True)
    (left / "train.parquet").write_bytes(SECRET.encode())
    outside = tmp_path / "not-ours.txt"
    outside.write_text("keep")
    db = Database(data_dir / "ratchet.duckdb")
    with db.transaction() as cur:
        cur.executemany(
            "INSERT INTO pending_deletions VALUES (?, 'erasure', now())",
            [[str(left.resolve())], [str(outside)]],
        )
        cur.execute(
            "INSERT INTO erasure_jobs VALUES ('job-1', 'cut', 'end_user', ?, now())",
            [f'{{"end_user": "{PERSON}"}}'],
        )
    db.close()
    server = start_ratchet(data_dir=data_dir)
    assert not left.exists() and outside.read_text() == "keep"
    c = server.client(server.create_project("other"))
    admin = server.client()
    assert admin.get("/v1/projects/cut/stats").json()["logs"] == 15
    assert admin.get("/v1/logs/c-1", params={"project": "cut"}).status_code == 404
    server.stop()
    db = Database(data_dir / "ratchet.duckdb")
    with db.reading() as cur:
        assert cur.execute("SELECT count(*) FROM erasure_jobs").fetchone() == (0,)
        assert cur.execute("SELECT count(*) FROM pending_deletions").fetchone() == (0,)
    db.close()


# Ids a person may carry that a URL reads as something else: a dot-segment, a query, a fragment, a
# separator, an escape. `ratchet end-users erase ..` once deleted the whole project.
AWKWARD_END_USERS = ["..", ".", "alice?ref=x", "u#1", "org/u1", "a%2Fb", "ann b", "ünï/çødé"]


def test_the_cli_erases_exactly_the_named_end_user_whatever_its_id(
    ratchet_server: RatchetProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ratchet_server.create_project("awkward")
    c = ratchet_server.client(key)
    bystanders = ["alice", "u", "org", "a/b", "ann"]
    users = AWKWARD_END_USERS + bystanders
    logs = [person_log(f"aw-{i}", user, f"question of {user}") for i, user in enumerate(users)]
    assert c.post("/v1/logs", json={"logs": logs}).status_code == 202
    base = ["--url", ratchet_server.url, "--key", ratchet_server.admin_key]
    for i, user in enumerate(AWKWARD_END_USERS):
        assert main([*base, "end-users", "erase", user, "--project", "awkward"]) == 0, user
        assert "deleted 1 logs" in capsys.readouterr().out, user
        assert c.get(f"/v1/logs/aw-{i}").status_code == 404, user
    for i, user in enumerate(bystanders, start=len(AWKWARD_END_USERS)):
        assert c.get(f"/v1/logs/aw-{i}").json()["end_user"] == user  # the project and they remain
    assert main([*base, "logs", "delete", "../projects/awkward", "--project", "awkward"]) == 1
    assert "awkward" in [p["name"] for p in ratchet_server.client().get("/v1/projects").json()]
