"""Bounded resources: DuckDB's memory ceiling and a bounded shutdown, on a real `ratchet serve`."""

from __future__ import annotations

import signal

from tests.fixtures.logs import load_chat_logs


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
