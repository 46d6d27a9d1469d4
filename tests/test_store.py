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
from tests.fixtures.server import wait_for

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
        "correction", "comment", "metadata", "choice", "fields", "item_ids", "rating_at", "correction_at",
        "regenerated", "regenerated_log_id", "edited", "copied", "events", "attributed", "log_key",
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
    "upstream_failures": ["project", "id", "failed_at", "adapter", "reason", "log_id"],
    "archive_files": ["path", "project", "day", "rows", "first_key", "state", "created_at", "id_hashes"],
    "gate_configs": ["project", "version", "config", "created_at", "created_by"],
    "files": ["id", "project", "purpose", "filename", "bytes", "format", "lines", "sha256", "path", "created_at"],
    "fine_tuning_jobs": ["id", "project", "run_id", "request", "hyperparameters", "created_at", "cancelled_at",
                         "result_file"],
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


def test_a_migration_that_landed_below_the_highest_applied_one_is_still_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Branches land migrations out of number order: a database that ran 010 before 007 existed
    gets 007 at its next start."""
    import duckdb

    Database(tmp_path / "r.duckdb").close()
    missing = migrations()[-2][0]
    with duckdb.connect(str(tmp_path / "r.duckdb")) as con:
        con.execute("DELETE FROM schema_migrations WHERE version = ?", [missing])
    # Its SQL already ran on this file; what counts is that the runner applies it again.
    monkeypatch.setattr(
        "service.store.db.migrations",
        lambda: [(v, n, "SELECT 1" if v == missing else sql) for v, n, sql in migrations()],
    )
    again = Database(tmp_path / "r.duckdb")
    with again.reading() as cur:
        applied = [
            v for (v,) in cur.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        ]
    assert applied == [v for v, _, _ in migrations()] and again.schema_version == migrations()[-1][0]


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


def test_submitted_rows_linger_for_company_but_never_hold_back_a_waiting_write(tmp_path: Path) -> None:
    """The gateway's logs (`submit`) wait up to the linger for more rows, so that one commit
    carries many; a write someone waits for takes them along at once; `stop` commits the rest."""
    db = Database(tmp_path / "r.duckdb")
    metrics = Metrics()
    writer = GroupCommitWriter(db, metrics, max_batch_rows=100, max_queue_rows=1000, linger_seconds=3600)
    writer.start()
    for i in range(5):
        writer.submit("logs", [log_row("gw", f"g{i}")])
    # Within an hour's linger, only a waiting write can have them committed now: with it.
    assert writer.write_sync("logs", [log_row("api", "w1")]) == [True]
    with db.reading() as cur:
        assert cur.execute("SELECT count(*) FROM logs").fetchone() == (6,)
    assert metrics.registry.get_sample_value("ratchet_write_batch_rows_count") == 1  # one commit
    writer.submit("logs", [log_row("gw", "late")])
    writer.stop()  # does not wait out the linger
    with db.reading() as cur:
        assert cur.execute("SELECT count(*) FROM logs WHERE id = 'late'").fetchone() == (1,)
    assert writer.queued_rows == 0


def test_submitted_rows_are_committed_once_they_have_lingered(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb")
    metrics = Metrics()
    writer = GroupCommitWriter(db, metrics, max_batch_rows=100, max_queue_rows=1000, linger_seconds=0.05)
    writer.start()
    writer.submit("logs", [log_row("gw", "1"), log_row("gw", "2")])
    writer.submit("logs", [log_row("gw", "3")])
    wait_for(lambda: writer.queued_rows == 0, 10, "the lingering rows to be committed")
    with db.reading() as cur:
        assert cur.execute("SELECT count(*) FROM logs").fetchone() == (3,)
    assert metrics.registry.get_sample_value("ratchet_write_batch_rows_sum") == 3
    writer.stop()
