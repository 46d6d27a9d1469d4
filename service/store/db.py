"""The one DuckDB file: open it (refusing a second owner), apply numbered migrations."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import duckdb

from service.errors import StoreUnavailable
from service.store.backfill import DATA_STEPS

_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def sql_string(text: str) -> str:
    """`text` escaped for use inside a single-quoted SQL literal (paths and patterns DuckDB
    cannot take as parameters, e.g. COPY targets)."""
    return text.replace("'", "''")


def rowid_ranges(cur: duckdb.DuckDBPyConnection, table: str, batch_rows: int) -> list[tuple[int, int]]:
    """Ranges [lo, hi) of `logs` row ids that split `table` (a temporary table of chosen rows with a
    `log_rowid` column) into batches of about `batch_rows`; a log's rows never straddle two.

    Reading `logs` one range at a time, joined on `rowid`, reads each log's text once, in storage
    order, with memory bounded by the batch: DuckDB turns a rowid range into a range scan, and a
    sort of one batch stays small (a single ORDER BY over all rows would hold all their text)."""
    starts = [
        row[0]
        for row in cur.execute(
            f"SELECT DISTINCT min(log_rowid) FROM (SELECT log_rowid, (row_number() OVER (ORDER BY log_rowid) - 1)"
            f" // $batch AS chunk FROM {table}) GROUP BY chunk ORDER BY 1",
            {"batch": batch_rows},
        ).fetchall()
    ]
    return list(zip(starts, [*starts[1:], 2**62], strict=True))


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped with Ratchet: (version, file name, SQL), in order."""
    found = []
    for entry in resources.files("service.store").joinpath("migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


class Database:
    """Owns the DuckDB connection. Hands out a cursor per thread of work.

    DuckDB allows one process per file: opening a file another process holds raises
    `StoreUnavailable` naming that process, so a second `ratchet serve` fails fast.
    """

    def __init__(self, path: Path, *, checkpoint_wal_mib: int = 64) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            raise StoreUnavailable(
                f"cannot open {path}: {exc}. Is another `ratchet serve` using this data dir?"
            ) from exc
        # Checkpoints stall the writer (notes/ingest-performance.md). The group-commit writer runs
        # them between flushes at `checkpoint_wal_bytes`; DuckDB's own trigger, which runs inside
        # whichever commit crosses it, stays as the backstop at twice that.
        self.checkpoint_wal_bytes = int(checkpoint_wal_mib) << 20
        self._con.execute(f"SET checkpoint_threshold = '{2 * int(checkpoint_wal_mib)}MiB'")
        self._wal_path = path.with_name(path.name + ".wal")
        self._lock = threading.Lock()
        self.schema_version = self.migrate()

    def migrate(self) -> int:
        """Apply every migration newer than the recorded schema version; return the version.

        Each migration (its SQL, then its data step if it has one) commits whole or not at all."""
        con = self._con
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
            " applied_at TIMESTAMP NOT NULL DEFAULT now())"
        )
        (current,) = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        for version, name, sql in migrations():
            if version <= current:
                continue
            con.execute("BEGIN")
            try:
                con.execute(sql)
                if version in DATA_STEPS:
                    DATA_STEPS[version](con)
                con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            current = version
        return current

    def wal_bytes(self) -> int:
        """Size of the write-ahead log (0 when there is none, e.g. right after a checkpoint)."""
        try:
            return self._wal_path.stat().st_size
        except FileNotFoundError:
            return 0

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor for one thread of work; close it when done."""
        with self._lock:
            return self._con.cursor()

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for a read, closed afterwards."""
        cur = self.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside BEGIN/COMMIT; rolled back if the block raises."""
        cur = self.cursor()
        try:
            cur.execute("BEGIN")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        finally:
            cur.close()

    def close(self) -> None:
        self._con.close()
