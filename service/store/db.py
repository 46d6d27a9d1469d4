"""The one DuckDB file: open it (refusing a second owner), apply numbered migrations.

Memory: DuckDB's buffer pool is capped at `memory_limit_mib` and spills to `temp_directory`, so
the serving process, the trainer and vLLM keep the rest of the machine; a query that still does
not fit fails with `StoreOutOfMemory` (HTTP 503 naming the setting), and the writer goes on.

Shutdown: `close` interrupts the reads still running and skips DuckDB's final checkpoint. A
checkpoint rewrites every index with random keys whole (~5-8 s at 10M logs whatever the WAL
holds); the WAL the writer keeps under `checkpoint_wal_mib` is replayed at the next start instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa
from duckdb.sqltypes import UBIGINT, VARCHAR

from service.errors import StoreOutOfMemory, StoreUnavailable
from service.store.archive_index import log_keys
from service.store.backfill import DATA_STEPS

_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def default_memory_limit_mib() -> int:
    """A quarter of the memory this process may use (the machine's, or its cgroup's if lower):
    the rest is for the serving process itself, the trainer and, on one box, vLLM."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    return max(256, total // 4 >> 20)


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
    if not starts:  # nothing chosen (a snapshot without signal)
        return []
    return list(zip(starts, [*starts[1:], 2**62], strict=True))


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped with Ratchet: (version, file name, SQL), in order."""
    found = []
    for entry in resources.files("service.store").joinpath("migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def register_log_key(con: duckdb.DuckDBPyConnection) -> None:
    """Make `ratchet_log_key(project, log_id)` callable in SQL on `con` (until `remove_function`):
    `feedback.log_key`, computed by `archive_index.log_keys` itself, so a key computed in SQL (a
    migration, a bench filling a file) equals the writer's."""
    con.create_function("ratchet_log_key", _log_key_udf, [VARCHAR, VARCHAR], UBIGINT, type="arrow")


def _log_key_udf(project: pa.Array, log_id: pa.Array) -> pa.Array:
    pairs = zip(project.to_pylist(), log_id.to_pylist(), strict=True)
    return pa.array(log_keys(pairs), type=pa.uint64())


class Database:
    """Owns the DuckDB connection. Hands out a cursor per thread of work.

    DuckDB allows one process per file: opening a file another process holds raises
    `StoreUnavailable` naming that process, so a second `ratchet serve` fails fast.
    """

    def __init__(
        self,
        path: Path,
        *,
        checkpoint_wal_mib: int = 64,
        memory_limit_mib: int | None = None,
        temp_directory: Path | None = None,
    ) -> None:
        self.path = path
        config = {}
        if memory_limit_mib is not None:
            config["memory_limit"] = f"{int(memory_limit_mib)}MiB"
        for directory in (path.parent, temp_directory):
            if directory is None:
                continue
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file in the way, no permission, storage gone
                raise StoreUnavailable(
                    f"cannot use {directory} as a directory: {exc.strerror or exc}: set data_dir"
                ) from exc
        if temp_directory is not None:
            config["temp_directory"] = str(temp_directory)
        self.memory_limit_mib = memory_limit_mib
        try:
            self._con = duckdb.connect(str(path), config=config)
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
        self._cursors: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()
        self.schema_version = self.migrate()

    def migrate(self) -> int:
        """Apply every shipped migration not yet recorded, in number order; return the highest version.

        Each migration (its SQL, then its data step if it has one) commits whole or not at all."""
        con = self._con
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
            " applied_at TIMESTAMP NOT NULL DEFAULT now())"
        )
        # Every shipped version not yet recorded, not only those above the highest: branches land
        # migrations out of number order (010 was applied before 007 existed on some databases).
        applied = {v for (v,) in con.execute("SELECT version FROM schema_migrations").fetchall()}
        current = max(applied, default=0)
        pending = [m for m in migrations() if m[0] not in applied]
        if not pending:
            return current
        register_log_key(con)  # migration 016 keys the stored feedback
        try:
            for version, name, sql in pending:
                con.execute("BEGIN")
                try:
                    con.execute(sql)
                    if version in DATA_STEPS:
                        DATA_STEPS[version](con)
                    con.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name]
                    )
                    con.execute("COMMIT")
                except Exception:
                    con.execute("ROLLBACK")
                    raise
                current = max(current, version)
        finally:
            con.remove_function("ratchet_log_key")
        return current

    def register_filesystem(self, filesystem: object) -> None:
        """Let DuckDB read paths of an fsspec filesystem (the archive on an object store)."""
        with self._lock:
            self._con.register_filesystem(filesystem)

    def wal_bytes(self) -> int:
        """Size of the write-ahead log (0 when there is none, e.g. right after a checkpoint)."""
        try:
            return self._wal_path.stat().st_size
        except FileNotFoundError:
            return 0

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor for one thread of work; close it when done."""
        with self._lock:
            cur = self._con.cursor()
            self._cursors.add(cur)
            return cur

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for a read, closed afterwards. `StoreOutOfMemory` if a query needed more
        than the memory limit, `StoreUnavailable` if a file it reads cannot be read."""
        cur = self.cursor()
        try:
            with self.store_errors():
                yield cur
        finally:
            cur.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside BEGIN/COMMIT; rolled back if the block raises."""
        cur = self.cursor()
        try:
            with self.store_errors():
                cur.execute("BEGIN")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
        finally:
            cur.close()

    @contextmanager
    def store_errors(self) -> Iterator[None]:
        """DuckDB's out-of-memory error as `StoreOutOfMemory`, naming the limit and the setting;
        a file it cannot read (an archive file removed, or its storage away) as `StoreUnavailable`."""
        try:
            yield
        except duckdb.IOException as exc:
            raise StoreUnavailable(
                f"a file the store reads cannot be read: {str(exc).splitlines()[0]}"
            ) from exc
        except duckdb.OutOfMemoryException as exc:
            limit = f"{self.memory_limit_mib} MiB" if self.memory_limit_mib else "its default"
            raise StoreOutOfMemory(
                f"the database needed more memory than its limit ({limit}) for this request: narrow it "
                f"(e.g. since/until) or raise database.memory_limit_mib. DuckDB: {str(exc).splitlines()[0]}"
            ) from exc

    def close(self) -> None:
        """Interrupt the queries still running, then close without a final checkpoint: the WAL
        (at most about `checkpoint_wal_mib`, the writer checkpoints as it goes) is replayed at
        the next start."""
        for cur in list(self._cursors):
            with contextlib.suppress(duckdb.Error):
                cur.interrupt()
        with contextlib.suppress(duckdb.Error):
            self._con.execute("PRAGMA disable_checkpoint_on_shutdown")
        self._con.close()
