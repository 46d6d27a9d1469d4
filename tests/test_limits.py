"""Bounded resources: DuckDB's memory ceiling, checkpoints that never wait for reads, a bounded stop."""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime
from pathlib import Path

from service.app import build_runtime
from service.config import Settings, WriterSettings
from tests.fixtures.logs import load_chat_logs
from tests.fixtures.rows import feedback_row
from tests.fixtures.server import wait_for


def test_a_query_over_the_memory_limit_fails_cleanly_and_ingest_goes_on(start_ratchet) -> None:  # type: ignore[no-untyped-def]
    server = start_ratchet(
        env={"RATCHET_DATABASE__MEMORY_LIMIT_MIB": "48", "RATCHET_SCHEDULER_ENABLED": "false"}
    )
    key = server.create_project("big")
    load_chat_logs(server, key, 20_000, batch=200, text=2000)
    with server.client(key, timeout=120) as api:
        r = api.get("/v1/projects/big/export", params={"format": "parquet"})
        assert r.status_code == 503, r.text[:300]
        body = r.json()
        assert body["code"] == "store_out_of_memory" and "database.memory_limit_mib" in body["message"], body
        accepted = api.post("/v1/logs", json={"id": "after", "request": {"prompt": "p"},
                                              "response": {"choices": [{"text": "t"}]}})  # fmt: skip
        assert accepted.status_code == 202, accepted.text
        assert api.get("/v1/logs/after").json()["id"] == "after"


def test_a_stop_without_the_final_checkpoint_loses_nothing(start_ratchet) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM skips DuckDB's final checkpoint (seconds at 10M logs): the next start replays the WAL."""
    server = start_ratchet(env={"RATCHET_SCHEDULER_ENABLED": "false"})
    key = server.create_project("big")
    load_chat_logs(server, key, 3000)
    wal = server.data_dir / "ratchet.duckdb.wal"
    assert server.proc is not None
    server.proc.terminate()
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises it after shutting down
    assert wal.exists() and wal.stat().st_size > 0  # what the last checkpoint had not folded in
    again = start_ratchet(data_dir=server.data_dir)
    with again.client(key) as api:
        stats = api.get("/v1/projects/big/stats").json()
        assert (stats["logs"], stats["feedback"]) == (3000, 1800)
        assert api.get("/v1/logs/l2997").json()["feedback"][0]["end_user"] == "u37"


def test_the_writer_never_waits_behind_a_long_read_and_checkpoints_once_it_ends(tmp_path: Path) -> None:
    """A read open across feedback changes does not hold checkpoints off: since migration 016 a
    change is a DELETE and an INSERT, which DuckDB checkpoints past an open read. An UPDATE made
    while a read is open does make DuckDB refuse checkpoints: the writer goes on committing (the
    WAL grows) and checkpoints at the first flush after the read ends.

    The WAL is kept between the writer's threshold (1 MiB here) and DuckDB's own (twice that,
    service/store/db.py): past DuckDB's, DuckDB checkpoints inside the commit and the writer's
    checkpoint, the one this test is about, would have nothing left to do.
    """
    runtime = build_runtime(Settings(data_dir=str(tmp_path), writer=WriterSettings(checkpoint_wal_mib=1)))
    runtime.writer.start()
    sample = runtime.metrics.registry.get_sample_value
    now = datetime(2026, 11, 1)
    rounds = iter(range(1000))

    def upsert(rating: int, logs: int) -> None:
        # A new item id each round: a re-sent id is a duplicate that changes nothing (issue 13).
        n = next(rounds)
        rows = [
            feedback_row(
                "p", f"l{i}", now, end_user="u", fid=f"f{i}-{n}", rating=rating, correction="a fix " * 40
            )
            for i in range(logs)
        ]
        asyncio.run(runtime.writer.write("feedback", rows))

    try:
        upsert(1, 2000)
        reader = runtime.db.cursor()
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM feedback").fetchall()  # a long read, still open
        rating = -1
        for _ in range(100):  # feedback changes checkpoint at the writer's threshold all the same
            upsert(rating, 500)
            rating = -rating
            if sample("ratchet_write_checkpoint_seconds_count"):
                break
        assert sample("ratchet_write_checkpoint_seconds_count") and not sample(
            "ratchet_write_checkpoints_deferred_total"
        )
        assert reader.execute("SELECT count(*) FROM feedback").fetchall() == [(2000,)]
        other = runtime.db.cursor()  # an UPDATE while the read is open (none by the writer)
        other.execute("UPDATE feedback SET comment = 'edited' WHERE log_id = 'l0'")
        other.close()
        while runtime.db.wal_bytes() < 1 << 20:
            upsert(rating, 500)  # returns although no checkpoint can run
            rating = -rating
        # The writer tries its checkpoint after answering the flush that crossed the threshold.
        wait_for(
            lambda: (sample("ratchet_write_checkpoints_deferred_total") or 0) > 0, 30, "a deferred checkpoint"
        )
        assert runtime.db.wal_bytes() < 2 << 20  # DuckDB's own threshold not reached: see the docstring
        checkpoints = sample("ratchet_write_checkpoint_seconds_count") or 0
        reader.execute("COMMIT")
        reader.close()
        upsert(rating, 1)  # a change (an identical verdict writes nothing): the checkpoint follows this flush
        wait_for(
            lambda: (sample("ratchet_write_checkpoint_seconds_count") or 0) > checkpoints, 30, "a checkpoint"
        )
        assert runtime.db.wal_bytes() < 1 << 20
    finally:
        runtime.writer.stop()
        runtime.db.close()
