"""Migrations and the group-commit writer on a real DuckDB file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from service.capture import Capture
from service.errors import WriterSaturated
from service.metrics import Metrics
from service.store.db import Database, migrations
from service.store.rows import LogRow
from service.store.writer import GroupCommitWriter
from tests.fixtures.rows import completion_log

EXPECTED_TABLES = {
    "schema_migrations": ["version", "name", "applied_at"],
    "projects": ["name", "base_model", "created_at", "settings"],
    "api_keys": [
        "id", "project", "sha256", "created_at", "revoked_at", "scopes", "name", "last_used_at", "expires_at",
        "rotated_from",
    ],
    "logs": [
        "project", "id", "created_at", "received_at", "source", "adapter", "request", "response",
        "latency_ms", "prompt_tokens", "completion_tokens", "end_user", "metadata", "endpoint", "messages",
        "tools", "tool_choice", "response_format", "answers", "prompt_sha256", "quarantine",
    ],
    "feedback": [
        "project", "log_id", "end_user", "id", "created_at", "received_at", "rating", "score",
        "correction", "comment", "metadata", "choice",
    ],
    "adapters": [
        "project", "version", "served_name", "path", "parent_version", "method", "snapshot_sha256",
        "state", "created_at", "updated_at", "manifest", "fingerprint", "erased_data",
    ],
    "runs": ["id", "project", "trigger", "state", "started_at", "updated_at", "finished_at", "error", "stats"],
    "events": ["at", "project", "run_id", "kind", "detail"],
    "eval_reports": ["run_id", "project", "candidate", "incumbent", "promote", "created_at", "report", "markdown"],
    "rollouts": ["project", "champion", "previous", "candidate", "fraction", "canary_started_at", "updated_at"],
    "pending_deletions": ["path", "reason", "created_at"],
    "erasure_jobs": ["id", "project", "kind", "params", "created_at"],
}  # fmt: skip


def schema(db: Database) -> dict[str, list[str]]:
    with db.reading() as cur:
        rows = cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns ORDER BY table_name, ordinal_position"
        ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def test_migrations_build_the_exact_schema_and_rerun_changes_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb")
    assert db.schema_version == migrations()[-1][0]
    assert schema(db) == EXPECTED_TABLES
    db.close()
    again = Database(tmp_path / "r.duckdb")
    assert again.schema_version == migrations()[-1][0]
    assert schema(again) == EXPECTED_TABLES
    with again.reading() as cur:
        assert cur.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(migrations()),)


def test_a_second_process_cannot_open_the_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = Database(tmp_path / "r.duckdb")
    code = f"from pathlib import Path; from service.store.db import Database; Database(Path(r'{db.path}'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "StoreUnavailable" in r.stderr and "another `ratchet serve`" in r.stderr


def log_row(project: str, log_id: str, prompt: str = "p") -> LogRow:
    return Capture.log_row(project, completion_log(log_id, prompt, "t"), log_id, datetime(2026, 11, 1), "api")


def test_writer_reports_new_and_duplicate_rows_across_requests(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb")
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=100, max_queue_rows=1000)
    writer.start()
    assert writer.write_sync("logs", [log_row("a", "1"), log_row("a", "2")]) == [True, True]
    assert writer.write_sync("logs", [log_row("a", "2"), log_row("b", "2"), log_row("a", "3")]) == [
        False,
        True,
        True,
    ]
    writer.stop()
    with db.reading() as cur:
        assert cur.execute("SELECT count(*) FROM logs").fetchone() == (4,)


def test_writer_refuses_more_than_its_queue_holds(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb")
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=10, max_queue_rows=5)
    writer.start()
    with pytest.raises(WriterSaturated):
        writer.write_sync("logs", [log_row("a", str(i)) for i in range(6)])
    writer.stop()


def test_writer_checkpoints_between_flushes_once_the_wal_is_large(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb", checkpoint_wal_mib=1)
    metrics = Metrics()
    writer = GroupCommitWriter(db, metrics, max_batch_rows=100, max_queue_rows=1000)
    writer.start()
    big = "x" * 20_000
    for i in range(100):  # ~2 MB of WAL, written 10 rows per request
        rows = [log_row("a", f"{i}-{j}", big) for j in range(10)]
        assert writer.write_sync("logs", rows) == [True] * 10
    writer.stop()
    checkpoints = metrics.registry.get_sample_value("ratchet_write_checkpoint_seconds_count")
    assert checkpoints is not None and checkpoints >= 1
    assert db.wal_bytes() < 1 << 20
    with db.reading() as cur:
        assert cur.execute("SELECT count(*) FROM logs").fetchone() == (1000,)
