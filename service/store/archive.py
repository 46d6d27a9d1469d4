"""The lake tier: old logs leave the DuckDB file for Hive-partitioned Parquet files.

Layout, under the archive root (a local directory or any fsspec URL):

    project=<project>/day=<YYYY-MM-DD>/<sequence>-<token>.parquet

`day` is the UTC day the server received the log. A file holds one project's logs of one day,
every `logs` column but `project` (the partition), JSON columns as text, plus `archive_key`. This
is the standard lake layout: DuckDB (`read_parquet('<root>/**/*.parquet', hive_partitioning =
true)`), Spark, Trino and Ray Data read it as one table partitioned by project and day.

Feedback stays in the DuckDB file. It is mutable (an item updates only the fields it carries, a
rating can be withdrawn, a re-sent item id is a no-op), which the writer's upsert does against the
stored row; its rows are small (no request or response text). So feedback that arrives for an
archived log simply lands in `feedback` and joins the archived log at read time, like any other.

A move (`move_day`) is crash-safe without ever counting a log twice or losing one:
1. choose up to `file_rows` logs and stream them into `<name>.parquet.tmp`, fsync, rename;
2. one transaction lists the file in `archive_files` as 'moving': its commit point. A file not
   listed (a move killed before this) is invisible to readers and deleted at the next start;
3. delete the file's logs from `logs` in transactions of `delete_batch_rows` (a DuckDB commit that
   deletes from a table with a VARCHAR primary key costs ~0.3 ms per row and holds ingest
   meanwhile, service/store/erasure.py); readers take from a 'moving' file only the rows `logs`
   no longer holds, so each log is seen exactly once at every instant;
4. mark the file 'done'. A start-up finishes the deletes of a file still 'moving' (`recover`).

An id's file is known without reading the archive (`service/store/archive_index.py`): the file's
id hashes are stored in its manifest row, in the transaction that lists it, and held in memory.
So the writer answers `duplicate` for a log id re-sent after its log was archived (`archived`,
asked on every flush), and a point read (`get_log`) reads one row group of one file: files are
sorted by id in row groups of `_ROW_GROUP` logs. The row group's size was chosen by measurement
(one log read from a 100,000-log file, the same rows written with each size, alternating reads):
1,024 beat 8,192 (a quarter of the time at low load) and 256 (more groups to prune: 3x slower
under load); `bench/scale.py` measures the read at scale.

Readers see hot and archived logs as one relation: `shadow_logs` creates, on a cursor, a
temporary view named `logs` (it shadows the table for that cursor only) that unions the table
with the files the manifest lists, in the cursor's own transaction; its `rowid` column is the
table's row id or the file row's `archive_key` (negative), so code that reads logs by row id
ranges (snapshots, exports) reads archived rows the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from service.durable_files import fsync_dir
from service.errors import ArchiveUnavailable
from service.store.archive_index import ArchiveIndex, id_hashes
from service.store.db import Database, sql_string
from service.store.rows import LOG_SCHEMA

log = logging.getLogger("ratchet.archive")

KEY = "archive_key"
_JSON = [f.name for f in LOG_SCHEMA if f.type == pa.json_()]
_FILE_COLUMNS = [n for n in LOG_SCHEMA.names if n != "project"]  # project is the partition
_HIVE = "hive_partitioning = true, hive_types = {'project': 'VARCHAR', 'day': 'DATE'}"
_ATTEMPTS = 5
_PARTITION = re.compile(r"project=[^/]+(/day=[^/]+)?")
_LAYOUT = re.compile(r"project=[a-z0-9][a-z0-9\-]*/day=\d{4}-\d{2}-\d{2}/\d{12}-[0-9a-f]{8}\.parquet(\.tmp)?")
_BATCH_ROWS = 8192  # rows per Arrow batch streamed into a file
# Rows per Parquet row group: a point read decompresses one whole row group (module docstring).
_ROW_GROUP = 1024


@dataclass(frozen=True)
class ArchiveFile:
    """One row of the manifest: a Parquet file of one project's logs of one day."""

    path: str  # relative to the archive root
    project: str
    day: date
    rows: int
    first_key: int
    state: str  # moving | done
    hashes: np.ndarray | None = field(default=None, compare=False, repr=False)  # id_hashes, when written


@dataclass(frozen=True)
class Moved:
    """What one run of the archive job moved."""

    rows: int = 0
    files: int = 0


class Archive:
    """The archive root and its manifest (`archive_files`). Methods block: call them off the
    event loop. Moves and purges of a project must not run at the same time (the caller holds
    the project's data lock)."""

    def __init__(
        self, db: Database, url: str, *, file_rows: int = 100_000, delete_batch_rows: int = 100
    ) -> None:
        self._db = db
        self.url = url
        self.file_rows = file_rows
        self.delete_batch_rows = delete_batch_rows
        self.fs, root = fsspec.core.url_to_fs(url)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        else:
            db.register_filesystem(self.fs)
        with db.reading() as cur:
            self._catalog = cur.execute("SELECT current_database()").fetchone()[0]
            # Files never change once listed (a rewrite gets a new name), so their footers can be
            # cached: a snapshot reads the archive once per batch of row ids.
            cur.execute("SET GLOBAL parquet_metadata_cache = true")
        self.index = ArchiveIndex()
        self.flushing = threading.Lock()  # the writer's (service/store/writer.py ArchivedLogs)
        self._load_index()

    def _load_index(self) -> None:
        """Hold the manifest's id hashes in memory; files listed before migration 015 get theirs
        computed from the file and stored first."""
        with self._db.reading() as cur:
            missing = cur.execute("SELECT path FROM archive_files WHERE id_hashes IS NULL").fetchall()
        for (path,) in missing:
            with self._db.reading() as cur:
                ids = [
                    i
                    for (i,) in cur.execute(
                        f"SELECT id FROM read_parquet(['{sql_string(self.location(path))}'])"
                    ).fetchall()
                ]
            self._retried(
                lambda cur, path=path, ids=ids: cur.execute(
                    "UPDATE archive_files SET id_hashes = ? WHERE path = ?", [id_hashes(ids).tobytes(), path]
                )
            )
        with self._db.reading() as cur:
            self.index.load(cur.execute("SELECT project, path, id_hashes FROM archive_files").fetchall())

    # --- reading

    def location(self, rel: str) -> str:
        """Where DuckDB reads the file `rel` (a path, or a URL of the fsspec filesystem)."""
        full = f"{self.root}/{rel}"
        return full if self.local else self.fs.unstrip_protocol(full)

    def files(self, cur: duckdb.DuckDBPyConnection, project: str | None = None) -> list[ArchiveFile]:
        """The files the manifest lists (of `project`, or all), as `cur`'s transaction sees them."""
        where, params = ("WHERE project = ?", [project]) if project is not None else ("", [])
        rows = cur.execute(
            f"SELECT path, project, day, rows, first_key, state FROM archive_files {where} ORDER BY first_key DESC",
            params,
        ).fetchall()
        return [ArchiveFile(*r) for r in rows]

    def source(self, files: list[ArchiveFile], *, filename: bool = False) -> str:
        """SQL for the rows of `files` (`project` and `day` from the path)."""
        paths = ", ".join(f"'{sql_string(self.location(f.path))}'" for f in files)
        return f"read_parquet([{paths}], {_HIVE}{', filename = true' if filename else ''})"

    def relation(self, cur: duckdb.DuckDBPyConnection, project: str | None = None) -> str | None:
        """SQL of the archived logs (all `logs` columns, `rowid` = `archive_key`) as `cur` sees
        them; None when there are none. Rows of a 'moving' file still in `logs` are left out."""
        files = self.files(cur, project)
        if not files:
            return None
        # JSON columns are text in the files; the union with the table makes them JSON again.
        columns = ", ".join(LOG_SCHEMA.names)
        parts = []
        if done := [f for f in files if f.state == "done"]:
            parts.append(f"SELECT {KEY} AS rowid, {columns} FROM {self.source(done)}")
        if moving := [f for f in files if f.state != "done"]:
            parts.append(
                f"SELECT {KEY} AS rowid, {columns} FROM {self.source(moving)} a WHERE NOT EXISTS ("
                f"SELECT 1 FROM {self._catalog}.main.logs h WHERE h.project = a.project AND h.id = a.id)"
            )
        return " UNION ALL ".join(parts)

    def shadow_logs(self, cur: duckdb.DuckDBPyConnection, project: str | None = None) -> None:
        """Make `logs`, for `cur` only, the hot table and the archive as one relation (a temporary
        view that shadows the table; its `rowid` column is the row id or `archive_key`). Call it
        inside the cursor's transaction so the files listed match the table read; only for reads.
        Nothing changes when nothing is archived."""
        archived = self.relation(cur, project)
        if archived is None:
            return
        columns = ", ".join(LOG_SCHEMA.names)
        cur.execute(
            f"CREATE OR REPLACE TEMP VIEW logs AS SELECT rowid AS rowid, {columns}"
            f" FROM {self._catalog}.main.logs UNION ALL {archived}"
        )

    def get_log(self, project: str, log_id: str, columns: str) -> tuple[Any, ...] | None:
        """`columns` of the archived log `log_id` of `project`, or None: the file the index
        names, one row group of it (the file is sorted by id). An id not archived reads nothing.
        `ArchiveUnavailable` if that file cannot be read."""
        paths = self.index.candidates(project, [log_id])
        if not paths:
            return None
        with self._db.reading() as cur:
            files = [f for f in self.files(cur, project) if f.path in paths]
            if not files:
                return None
            names = ", ".join(LOG_SCHEMA.names)
            with self._reading(files):
                return cur.execute(  # type: ignore[no-any-return]
                    f"SELECT {columns} FROM (SELECT {names} FROM {self.source(files)} WHERE id = $id) LIMIT 1",
                    {"id": log_id},
                ).fetchone()

    def archived(self, project: str, log_ids: list[str]) -> set[str]:
        """Those of `log_ids` that `project` has archived: the index names the files, and the
        ids are confirmed there (a hash can collide), so an id not archived costs no read. A file
        that cannot be read is not confirmed: its ids the index names count as archived (a
        re-sent log stays a duplicate and ingest goes on; a new id wrongly held back needs a
        64-bit hash collision)."""
        paths = self.index.candidates(project, log_ids)
        if not paths:
            return set()
        found: set[str] = set()
        with self._db.reading() as cur:
            for file in self.files(cur, project):
                if (ids := paths.get(file.path)) is not None:
                    try:
                        rows = cur.execute(
                            f"SELECT id FROM {self.source([file])} WHERE id IN (SELECT unnest($ids))",
                            {"ids": ids},
                        ).fetchall()
                    except duckdb.IOException as exc:
                        log.error("archive file %s cannot be read, its look-up decides: %s", file.path, exc)
                        rows = [(i,) for i in ids]
                    found.update(i for (i,) in rows)
        return found

    def received_at(self, project: str, log_ids: list[str]) -> dict[str, datetime]:
        """When the archived logs among `log_ids` were received (those not archived are absent).
        `ArchiveUnavailable` if a file holding one cannot be read."""
        if not log_ids:
            return {}
        paths = self.index.candidates(project, log_ids)
        with self._db.reading() as cur:
            files = [f for f in self.files(cur, project) if f.path in paths]
            if not files:
                return {}
            with self._reading(files):
                rows = cur.execute(
                    f"SELECT id, received_at FROM {self.source(files)} WHERE project = $p AND id IN (SELECT unnest($ids))",
                    {"p": project, "ids": log_ids},
                ).fetchall()
        return dict(rows)

    @contextlib.contextmanager
    def _reading(self, files: list[ArchiveFile]) -> Iterator[None]:
        """DuckDB's error for a file gone or unreadable as `ArchiveUnavailable`, naming them."""
        try:
            yield
        except duckdb.IOException as exc:
            names = ", ".join(f.path for f in files)
            raise ArchiveUnavailable(
                f"archive file(s) {names} under {self.root} cannot be read: {exc}"
            ) from exc

    # --- moving

    def days_before(self, project: str, cutoff: datetime) -> list[date]:
        """The days (UTC, by receive time) that hold logs of `project` received before `cutoff`."""
        with self._db.reading() as cur:
            rows = cur.execute(
                "SELECT DISTINCT received_at::DATE FROM logs WHERE project = ? AND received_at < ? ORDER BY 1",
                [project, cutoff],
            ).fetchall()
        return [d for (d,) in rows]

    def move_day(self, project: str, day: date, cutoff: datetime, now: datetime) -> Moved:
        """Move the logs of `project` received on `day` before `cutoff` into files of at most
        `file_rows`; see the module docstring for why it is all or nothing."""
        moved = Moved()
        while True:
            file = self._write_chunk(project, day, cutoff)
            if file is None:
                return moved
            self._list(file, now)
            self._delete_hot(file)
            moved = Moved(moved.rows + file.rows, moved.files + 1)
            if file.rows < self.file_rows:
                return moved

    def _write_chunk(self, project: str, day: date, cutoff: datetime) -> ArchiveFile | None:
        """Step 1: up to `file_rows` of the day's logs into a new file (written whole, then renamed)."""
        start = datetime.combine(day, datetime.min.time())
        end = min(start + timedelta(days=1), cutoff)
        with self._db.reading() as cur:
            ((seq,),) = cur.execute("SELECT nextval('archive_file_seq')").fetchall()
            first_key = -(int(seq) << 32)
            rel = f"project={project}/day={day.isoformat()}/{int(seq):012d}-{secrets.token_hex(4)}.parquet"
            columns = ", ".join(f"{c}::VARCHAR AS {c}" if c in _JSON else c for c in _FILE_COLUMNS)
            reader = cur.sql(
                f"SELECT {columns} FROM logs WHERE project = $p AND received_at >= $start AND received_at < $end"
                " ORDER BY id LIMIT $n",  # sorted by id: a point read skips all but one row group per file
                params={"p": project, "start": start, "end": end, "n": self.file_rows},
            ).to_arrow_reader(_BATCH_ROWS)
            ids: list[str] = []
            rows = self._put(rel, _keyed(_ids_of(reader, ids), first_key))
        if rows == 0:
            self._remove(rel)
            return None
        return ArchiveFile(rel, project, day, rows, first_key, "moving", id_hashes(ids))

    def _list(self, file: ArchiveFile, now: datetime) -> None:
        """Step 2, the commit point: the file is in the archive from here on, and its ids in the
        index before any of them leaves the table (so a re-sent id is a duplicate throughout)."""
        hashes = file.hashes if file.hashes is not None else np.empty(0, dtype=np.uint64)
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO archive_files (path, project, day, rows, first_key, state, created_at, id_hashes)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    file.path,
                    file.project,
                    file.day,
                    file.rows,
                    file.first_key,
                    "moving",
                    now,
                    hashes.tobytes(),
                ],
            )
        self.index.add(file.project, file.path, hashes)
        with self.flushing:  # a flush that looked before the add has committed: deletes may start
            pass

    def _delete_hot(self, file: ArchiveFile) -> None:
        """Steps 3-4: delete the file's logs from `logs` in small transactions, then mark it done."""
        with self._db.reading() as cur:
            ids = [i for (i,) in cur.execute(f"SELECT id FROM {self.source([file])}").fetchall()]
        n = self.delete_batch_rows
        for start in range(0, len(ids), n):
            self._retried(
                lambda cur, chunk=ids[start : start + n]: cur.execute(
                    "DELETE FROM logs WHERE project = ? AND id IN (SELECT unnest(?))", [file.project, chunk]
                )
            )
        self._retried(
            lambda cur: cur.execute("UPDATE archive_files SET state = 'done' WHERE path = ?", [file.path])
        )

    def recover(self) -> int:
        """At start-up, before serving: finish the moves a kill cut short (files still 'moving'),
        and delete files the manifest does not list (a move or a purge killed before its commit,
        or a purged file whose deletion was cut short). Returns how many files it acted on."""
        with self._db.reading() as cur:
            files = self.files(cur)
        acted = 0
        for file in files:
            if file.state != "done":
                log.warning("finishing the move of %s, interrupted by the restart", file.path)
                self._delete_hot(file)
                acted += 1
        listed = {f.path for f in files}
        for path in self._stored():
            if path not in listed:
                log.warning("deleting %s: not in the archive manifest (a move or purge was cut short)", path)
                self._remove(path)
                acted += 1
        self._prune_dirs()
        return acted

    # --- erasure

    def purge(
        self, project: str, where: str, params: dict[str, Any], delete_feedback: Callable[[list[str]], None]
    ) -> int:
        """Rewrite every file of `project` holding a log that matches `where` (SQL over the logs'
        columns, with named `params`) without those logs, and delete files left empty. The
        feedback on the removed logs goes first (`delete_feedback`, given their ids), then each
        file is swapped in one transaction; a restart after a kill redoes what is left (the old
        file still holds the rows) or deletes the unlisted file. Returns how many logs it removed."""
        with self._db.reading() as cur:
            files = {self.location(f.path): f for f in self.files(cur, project)}
            if not files:
                return 0
            hit = cur.execute(
                f"SELECT DISTINCT filename FROM {self.source(list(files.values()), filename=True)}"
                f" WHERE coalesce(({where}), false)",
                params,
            ).fetchall()
        removed = 0
        for (name,) in hit:
            removed += self._rewrite(files[name], where, params, delete_feedback)
        self._prune_dirs()
        return removed

    def _rewrite(
        self,
        file: ArchiveFile,
        where: str,
        params: dict[str, Any],
        delete_feedback: Callable[[list[str]], None],
    ) -> int:
        source = self.source([file])
        with self._db.reading() as cur:
            ids = [
                i
                for (i,) in cur.execute(
                    f"SELECT id FROM {source} WHERE coalesce(({where}), false)", params
                ).fetchall()
            ]
        delete_feedback(ids)
        new = f"{file.path.rsplit('-', 1)[0]}-{secrets.token_hex(4)}.parquet"
        with self._db.reading() as cur:
            reader = cur.sql(
                f"SELECT * EXCLUDE (project, day) FROM {source} WHERE NOT coalesce(({where}), false)",
                params=params,
            ).to_arrow_reader(_BATCH_ROWS)
            kept: list[str] = []
            rows = self._put(new, _ids_of(reader, kept))
        if rows == 0:
            self._remove(new)
        hashes = id_hashes(kept)

        def swap(cur: duckdb.DuckDBPyConnection) -> None:
            cur.execute("DELETE FROM archive_files WHERE path = ?", [file.path])
            if rows:
                cur.execute(
                    "INSERT INTO archive_files (path, project, day, rows, first_key, state, created_at, id_hashes)"
                    " VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP, ?)",
                    [new, file.project, file.day, rows, file.first_key, file.state, hashes.tobytes()],
                )

        self._retried(swap)
        if rows:
            self.index.add(file.project, new, hashes)
        self.index.drop(file.project, file.path)
        self._remove(file.path)
        return len(ids)

    # --- files

    def _put(self, rel: str, batches: Iterator[pa.RecordBatch] | pa.RecordBatchReader) -> int:
        """Write `batches` to the file `rel`, whole: a temporary sibling, fsync, rename. Returns the
        rows written (an empty file is written too; the caller removes it)."""
        full = f"{self.root}/{rel}"
        tmp = f"{full}.tmp"
        rows = 0
        writer: pq.ParquetWriter | None = None
        if self.local:
            Path(full).parent.mkdir(parents=True, exist_ok=True)
        opened = open(tmp, "wb") if self.local else self.fs.open(tmp, "wb")  # noqa: SIM115
        try:
            with opened as fh:
                for batch in batches:
                    if writer is None:
                        writer = pq.ParquetWriter(fh, batch.schema, compression="zstd")
                    writer.write_batch(batch, row_group_size=_ROW_GROUP)
                    rows += batch.num_rows
                if writer is not None:
                    writer.close()
                if self.local:
                    fh.flush()
                    os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError, FileNotFoundError):
                self.fs.rm(tmp)
            raise
        if self.local:
            os.replace(tmp, full)
            fsync_dir(Path(full).parent)
        else:
            self.fs.mv(tmp, full)
        return rows

    def _remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(f"{self.root}/{rel}")

    def _stored(self) -> list[str]:
        """The archive's files under the root (relative to it): only names of its own layout, so a
        root pointed at a directory holding anything else never loses that."""
        if not self.fs.exists(self.root):
            return []
        found = (p[len(self.root) + 1 :] for p in self.fs.find(self.root))
        return sorted(p for p in found if _LAYOUT.fullmatch(p))

    def _prune_dirs(self) -> None:
        """Remove empty partition directories (an erased project's name must not linger)."""
        if not self.local:
            return  # object stores have no directories
        for dirpath, _, _ in sorted(os.walk(self.root), key=lambda w: -len(w[0])):
            if _PARTITION.fullmatch(os.path.relpath(dirpath, self.root)):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    def _retried(self, work: Callable[[duckdb.DuckDBPyConnection], object]) -> None:
        for attempt in range(_ATTEMPTS):
            try:
                with self._db.transaction() as cur:
                    work(cur)
                return
            except duckdb.TransactionException:
                if attempt == _ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))


def _ids_of(
    batches: Iterator[pa.RecordBatch] | pa.RecordBatchReader, into: list[str]
) -> Iterator[pa.RecordBatch]:
    """`batches` unchanged, their `id` column's values appended to `into` on the way."""
    for batch in batches:
        into.extend(batch.column("id").to_pylist())
        yield batch


def _keyed(reader: pa.RecordBatchReader, first_key: int) -> Iterator[pa.RecordBatch]:
    """`reader`'s batches with `archive_key` first_key, first_key + 1, ... as their first column."""
    key = first_key
    for batch in reader:
        keys = pa.array(range(key, key + batch.num_rows), type=pa.int64())
        key += batch.num_rows
        yield pa.RecordBatch.from_arrays([keys, *batch.columns], names=[KEY, *batch.schema.names])
