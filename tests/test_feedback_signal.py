"""What feedback counts as signal (issue 13), against real server processes on real DuckDB files:
implicit feedback kinds and their weights, client timestamps vs the server's receive time,
orphans, and the poisoning cap. Snapshots are cut by real runs (which then fail for want of a base
model: the snapshot is what these tests read)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from formats.snapshot import FILES, SnapshotRow, iter_rows
from service.capture import Capture
from service.config import FeedbackSettings
from service.metrics import Metrics
from service.store.db import Database
from service.store.serving import Serving
from service.store.writer import GroupCommitWriter
from tests.fixtures.rows import chat_log, feedback_row
from tests.fixtures.server import RatchetProcess, wait_for


def log(log_id: str, question: str | None = None, answer: str = "Paris", **extra: Any) -> dict[str, Any]:
    """A chat log with its own prompt (identical examples would be deduplicated)."""
    return {
        "id": log_id,
        "request": {
            "model": "m",
            "messages": [{"role": "user", "content": question or f"Question {log_id}?"}],
        },
        "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]},
        **extra,
    }


def taken(r: httpx.Response) -> None:
    assert r.status_code == 202, r.text
    assert r.json()["rejected"] == 0, r.text


def run_snapshot(
    server: RatchetProcess, c: httpx.Client, project: str
) -> tuple[dict[str, Any], list[SnapshotRow]]:
    """Start a run, wait for it to end, and return its snapshot stats and rows (train + holdout)."""
    r = c.post(f"/v1/projects/{project}/runs")
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]

    def ended() -> Any:
        run = c.get(f"/v1/runs/{run_id}").json()
        return run if run["state"] in ("failed", "rejected", "promoted", "rolled_back") else None

    run = wait_for(ended, 60, f"run {run_id} to end")
    snapshot = server.data_dir / "runs" / run_id / "snapshot"
    rows = [row for name in FILES for row in iter_rows(Path(snapshot / name))]
    return run["stats"]["snapshot"], rows


def project_client(server: RatchetProcess) -> tuple[str, str, httpx.Client]:
    name = f"sig-{uuid.uuid4().hex[:8]}"
    key = server.create_project(name)
    c = server.client(key)
    # A run goes on to training with any snapshot (and then fails: no base model here).
    assert (
        c.patch(f"/v1/projects/{name}/settings", json={"training": {"min_train_rows": 1}}).status_code == 200
    )
    return name, key, c


def test_implicit_feedback_is_stored_counted_and_weighed(start_ratchet: Any) -> None:
    server = start_ratchet(env={"RATCHET_FEEDBACK__EVENT_WEIGHTS": '{"shared": 0.5}'})
    name, _, c = project_client(server)
    taken(c.post("/v1/logs", json={"logs": [log(f"i-{k}") for k in range(6)]}))
    # A regenerate whose second answer the user kept: a preference pair.
    taken(
        c.post(
            "/v1/logs",
            json={
                "logs": [log("p-1", "Capital of Spain?", "Paris"), log("p-2", "Capital of Spain?", "Madrid.")]
            },
        )
    )
    items = [
        {"log_id": "i-0", "end_user": "u0", "kind": "regenerated", "regenerated_log_id": "i-5"},
        {"log_id": "i-1", "end_user": "u1", "kind": "edited", "edited_text": "Paris, of course."},
        {"log_id": "i-2", "end_user": "u2", "kind": "copied"},
        {"log_id": "i-3", "end_user": "u3", "kind": "event", "event": "shared"},
        {"log_id": "i-4", "end_user": "u4", "kind": "event", "event": "viewed"},  # no weight: not trained on
        {"log_id": "i-5", "end_user": "u5", "kind": "copied"},
        {"log_id": "i-5", "end_user": "u5", "rating": -1},  # an explicit thumb wins over the copy
        {"log_id": "p-1", "end_user": "u6", "kind": "regenerated", "regenerated_log_id": "p-2"},
        {"log_id": "p-2", "end_user": "u6", "kind": "copied"},
    ]
    taken(c.post("/v1/feedback", json={"feedback": items}))
    got = c.get("/v1/logs/i-0").json()["feedback"][0]
    assert (got["regenerated"], got["regenerated_log_id"], got["rating"]) == (True, "i-5", None)
    assert c.get("/v1/logs/i-1").json()["feedback"][0]["edited"] == "Paris, of course."
    assert c.get("/v1/logs/i-4").json()["feedback"][0]["events"] == ["viewed"]

    stats = c.get(f"/v1/projects/{name}/stats").json()
    assert stats["implicit"] == {"regenerated": 2, "edited": 1, "copied": 3, "events": 2}
    assert (stats["thumbs_up"], stats["thumbs_down"], stats["corrections"]) == (0, 1, 0)
    metrics = httpx.get(f"{server.url}/metrics").text
    for kind, n in (("regenerated", 2), ("edited", 1), ("copied", 3), ("event", 2)):
        assert f'ratchet_implicit_feedback_total{{kind="{kind}",project="{name}"}} {n}.0' in metrics

    snap, rows = run_snapshot(server, c, name)
    by_log = {row.log_id: row for row in rows}
    assert set(by_log) == {"i-0", "i-1", "i-2", "i-3", "i-5", "p-1", "p-2"}, snap
    # i-0's replacement (i-5) got a thumbs-down: no pair, only the weak thumbs-down.
    assert (by_log["i-0"].rating, by_log["i-0"].weight, by_log["i-0"].signals) == (-1, 0.5, ["regenerated"])
    assert by_log["i-0"].correction is None
    assert (by_log["p-1"].rating, by_log["p-1"].correction, by_log["p-1"].completion.content) == (
        -1,
        "Madrid.",
        "Paris",
    )
    assert (by_log["i-1"].correction, by_log["i-1"].weight, by_log["i-1"].rating) == (
        "Paris, of course.",
        1.0,
        None,
    )
    assert (by_log["i-2"].rating, by_log["i-2"].weight) == (1, 0.25)
    assert (by_log["i-3"].rating, by_log["i-3"].weight, by_log["i-3"].signals) == (1, 0.5, ["event:shared"])
    assert (by_log["i-5"].rating, by_log["i-5"].weight, by_log["i-5"].signals) == (-1, 1.0, ["copied"])


def test_client_timestamps_never_hide_a_log_or_date_its_signal(ratchet_server: RatchetProcess) -> None:
    name, _, c = project_client(ratchet_server)
    # Feedback first: an orphan, kept but not counted.
    taken(c.post("/v1/feedback", json={"log_id": "late", "end_user": "u", "rating": 1}))
    stats = c.get(f"/v1/projects/{name}/stats").json()
    assert (stats["orphan_feedback"], stats["feedback"], stats["thumbs_up"], stats["new_rated_since_last_run"]) == (
        1, 0, 0, 0,
    )  # fmt: skip
    _, rows = run_snapshot(ratchet_server, c, name)
    assert rows == []
    last_run = c.get(f"/v1/projects/{name}/stats").json()["last_run_at"]
    # The log arrives after the run, claiming to be from 2001: its feedback is new signal now.
    taken(c.post("/v1/logs", json=log("late", created_at="2001-01-01T12:00:00+05:00")))
    # Another claims to be from the future, with feedback dated in the past.
    taken(c.post("/v1/logs", json=log("future", created_at="2099-01-01T00:00:00")))
    taken(
        c.post(
            "/v1/feedback",
            json={"log_id": "future", "end_user": "u", "rating": -1, "created_at": "1999-01-01T00:00:00Z"},
        )
    )
    stored = c.get("/v1/logs/late").json()
    assert stored["created_at"].startswith("2001-01-01T07:00:00")  # the client's time, in UTC
    assert c.get("/v1/logs/future").json()["feedback"][0]["received_at"] > last_run
    stats = c.get(f"/v1/projects/{name}/stats").json()
    assert (stats["orphan_feedback"], stats["thumbs_up"], stats["thumbs_down"]) == (0, 1, 1)
    assert stats["new_rated_since_last_run"] == 2
    # Both are in the next snapshot: a future created_at counts only up to the receive time.
    _, rows = run_snapshot(ratchet_server, c, name)
    assert sorted(row.log_id for row in rows) == ["future", "late"]
    assert all(row.created_at.year < 2099 for row in rows)


def test_stale_orphans_are_reported(start_ratchet: Any) -> None:
    server = start_ratchet(env={"RATCHET_FEEDBACK__ORPHAN_REPORT_HOURS": "0.0003"})  # about a second
    name, _, c = project_client(server)
    taken(c.post("/v1/feedback", json={"feedback": [{"log_id": f"typo-{k}", "rating": 1} for k in range(3)]}))
    time.sleep(1.5)
    taken(c.post("/v1/feedback", json={"log_id": "typo-new", "rating": 1}))
    stats = c.get(f"/v1/projects/{name}/stats").json()
    assert (stats["orphan_feedback"], stats["stale_orphans"], stats["new_rated_since_last_run"]) == (4, 3, 0)


def test_poisoning_cap_holds_for_anonymous_rows_and_borrowed_names(start_ratchet: Any) -> None:
    server = start_ratchet(env={"RATCHET_SNAPSHOT__MIN_USER_CAP": "1"})
    name, _, c = project_client(server)
    honest = [log(f"h-{u}-{k}", end_user=f"user-{u}") for u in range(10) for k in range(10)]
    anonymous = [log(f"anon-{k}") for k in range(300)]  # an attacker sending no end user at all
    attacker = [log(f"att-{k}", end_user="mallory") for k in range(100)]
    for batch in (honest, anonymous, attacker):
        taken(c.post("/v1/logs", json={"logs": batch}))
    fb = [{"log_id": x["id"], "end_user": x["end_user"], "rating": 1} for x in honest]
    fb += [{"log_id": x["id"], "rating": -1} for x in anonymous]
    # Mallory's feedback names a different user each time; this key may not attribute.
    fb += [{"log_id": x["id"], "end_user": f"alias-{k}", "rating": 1} for k, x in enumerate(attacker)]
    for start in range(0, len(fb), 250):
        taken(c.post("/v1/feedback", json={"feedback": fb[start : start + 250]}))
    snap, rows = run_snapshot(server, c, name)
    assert snap["largest_user_share"] <= 0.2, snap
    by_user: dict[str | None, int] = {}
    for row in rows:
        by_user[row.end_user] = by_user.get(row.end_user, 0) + 1
    assert max(by_user.values()) / len(rows) <= 0.2, by_user
    assert by_user[None] == by_user["mallory"] == snap["user_cap"]  # each one group, capped
    assert not any(user and user.startswith("alias-") for user in by_user)
    assert sum(n for user, n in by_user.items() if user and user.startswith("user-")) == 100


def test_an_attributing_key_may_name_the_end_user(start_ratchet: Any) -> None:
    server = start_ratchet()
    name = f"attr-{uuid.uuid4().hex[:6]}"
    server.create_project(name)
    admin = server.client()
    relay = admin.post(f"/v1/projects/{name}/keys", json={"scopes": ["ingest"]}).json()
    server.stop()
    server = start_ratchet(
        env={"RATCHET_FEEDBACK__ATTRIBUTING_KEYS": f'["{relay["key_id"]}"]'}, data_dir=server.data_dir
    )
    admin = server.client()
    assert (
        admin.patch(f"/v1/projects/{name}/settings", json={"training": {"min_train_rows": 1}}).status_code
        == 200
    )
    plain = server.client(
        admin.post(f"/v1/projects/{name}/keys", json={"scopes": ["ingest"]}).json()["api_key"]
    )
    relayed = server.client(relay["api_key"])
    taken(
        plain.post(
            "/v1/logs",
            json={"logs": [log("a-1", end_user="shared-kiosk"), log("a-2", end_user="shared-kiosk")]},
        )
    )
    taken(relayed.post("/v1/feedback", json={"log_id": "a-1", "end_user": "ann", "rating": 1}))
    taken(plain.post("/v1/feedback", json={"log_id": "a-2", "end_user": "bob", "rating": 1}))
    _, rows = run_snapshot(server, admin, name)
    assert sorted((row.log_id, row.end_user) for row in rows) == [("a-1", "ann"), ("a-2", "shared-kiosk")]


def test_the_online_gate_counts_implicit_votes_by_their_weights(tmp_path: Path) -> None:
    """`arm_counts` is what the canary's online gate reads (`Rollouts.online_verdict`); here on a
    real DuckDB file written through the real writer."""
    db = Database(tmp_path / "r.duckdb")
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=1000, max_queue_rows=10_000)
    writer.start()
    try:
        at = datetime(2026, 11, 1)
        logs = [
            Capture.log_row("p", chat_log(f"g-{i}", [{"role": "user", "content": f"q{i}"}], "a", adapter="p@v1"),
                            f"g-{i}", at, "api")
            for i in range(12)
        ]  # fmt: skip
        writer.write_sync("logs", logs)
        fb = [feedback_row("p", "g-0", at, end_user="u", rating=1)]
        fb += [feedback_row("p", f"g-{i}", at, end_user="u", copied=True) for i in range(1, 5)]  # 4 x 0.25
        fb += [
            feedback_row("p", f"g-{i}", at, end_user="u", regenerated=True) for i in range(5, 11)
        ]  # 6 x 0.5
        fb += [feedback_row("p", "g-11", at, end_user="u", rating=-1, copied=True)]  # the thumb wins
        writer.write_sync("feedback", fb)
        counts = Serving(db).arm_counts("p", "p@v1", at, FeedbackSettings())
        assert (counts.up, counts.down) == (1 + 1, 1 + 3)
        silent = Serving(db).arm_counts(
            "p", "p@v1", at, FeedbackSettings(copied_weight=0, regenerated_weight=0)
        )
        assert (silent.up, silent.down) == (1, 1)
    finally:
        writer.stop()
        db.close()


def test_the_online_gate_counts_the_gateways_upstream_failures_per_adapter(tmp_path: Path) -> None:
    """Failures recorded through capture (as the gateway does) are what `arm_counts` gives the
    error-rate guard: per adapter, since the canary started; a failure without a log is one more
    request, a broken stream (it has its log) is not."""
    from service.clock import utcnow

    db = Database(tmp_path / "r.duckdb")
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=1000, max_queue_rows=10_000)
    writer.start()
    capture = Capture(writer, Metrics(), max_batch_items=100)
    try:
        since = utcnow()
        logs = [
            Capture.log_row("p", chat_log(f"g-{i}", [{"role": "user", "content": f"q{i}"}], "a", adapter="p@v2"),
                            f"g-{i}", since, "gateway")
            for i in range(4)
        ]  # fmt: skip
        writer.write_sync("logs", logs)
        for reason in ("status", "timeout", "rejected"):
            capture.submit_upstream_failure("p", "p@v2", reason)
        capture.submit_upstream_failure("p", "p@v2", "stream_error", log_id="g-0")
        capture.submit_upstream_failure("p", "p@v1", "status")
        capture.submit_upstream_failure("q", "q@v2", "status")
        writer.write_sync("logs", [])  # after the submitted rows: they are committed
        canary = Serving(db).arm_counts("p", "p@v2", since)
        assert (canary.requests, canary.upstream_errors) == (4 + 3, 4)
        champion = Serving(db).arm_counts("p", "p@v1", since)
        assert (champion.requests, champion.upstream_errors) == (1, 1)
    finally:
        writer.stop()
        db.close()


def test_feedback_metrics_name_the_answering_version_after_a_restart(start_ratchet: Any) -> None:
    """The version comes from the stored log when this process has not seen it; the base model is
    `base` here as in the gateway's metrics."""
    server = start_ratchet()
    api = server.client(server.create_project("vm"))
    logs = [log("v-1", adapter="vm@v2"), log("v-2", adapter="base"), log("v-3")]
    taken(api.post("/v1/logs", json={"logs": logs}))
    server.stop()
    server.start()
    feedback = [
        {"log_id": "v-1", "rating": 1},
        {"log_id": "v-2", "rating": -1},
        {"log_id": "v-3", "rating": 1},
    ]
    taken(api.post("/v1/feedback", json={"feedback": feedback}))
    metrics = httpx.get(f"{server.url}/metrics").text
    for adapter, rating in (("v2", "up"), ("base", "down"), ("none", "up")):
        series = f'ratchet_feedback_total{{adapter="{adapter}",project="vm",rating="{rating}"}} 1.0'
        assert series in metrics, [line for line in metrics.splitlines() if "feedback_total{" in line]
