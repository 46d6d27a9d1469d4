"""The group-commit writer: many requests, one transaction, then answer each.

One commit per request tops out near 80 requests/s here; batching whatever arrived while the
previous commit ran gives thousands (notes/ingest-performance.md). The writer runs in its own
thread so commits and Arrow building stay off the event loop. It flushes as soon as it is free
rather than on a timer: a timer waits for rows that cannot come. A request is answered only after
its rows are committed (durable: DuckDB fsyncs the WAL on commit). The one exception is rows
nobody waits for (`submit`: the gateway's logs, after their answer): those may linger a few
milliseconds for company.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import duckdb
import pyarrow as pa

from service.errors import StoreUnavailable, WriterSaturated
from service.metrics import Metrics
from service.store.archive_index import log_keys
from service.store.db import Database
from service.store.rows import (
    FEEDBACK_FIELDS,
    FEEDBACK_SCHEMA,
    LOG_SCHEMA,
    UPSTREAM_FAILURE_SCHEMA,
    WITHDRAW,
    FeedbackRow,
    LogRow,
    UpstreamFailureRow,
)

log = logging.getLogger("ratchet.writer")

Table = Literal["logs", "feedback", "upstream_failures"]
Row = LogRow | FeedbackRow | UpstreamFailureRow
Archived = Callable[[str, list[str]], set[str]]
"""(project, log ids) -> those of the ids the project has archived."""


class ArchivedLogs(Protocol):
    """The archive as the writer sees it (`service.store.archive.Archive`)."""

    # Held by the writer from its look-up to its commit; a move takes it once after adding a
    # file's ids to the look-up and before deleting them from `logs`, so no flush that looked
    # before the add can insert an id after the table no longer holds it.
    flushing: threading.Lock

    def archived(self, project: str, log_ids: list[str]) -> set[str]: ...


_SCHEMAS = {"logs": LOG_SCHEMA, "feedback": FEEDBACK_SCHEMA, "upstream_failures": UPSTREAM_FAILURE_SCHEMA}
# What the writer inserts into `feedback`: the row and its `log_key` (migration 016).
_KEYED_FEEDBACK_SCHEMA = FEEDBACK_SCHEMA.append(pa.field("log_key", pa.uint64()))
_PENDING_SCHEMAS = {**_SCHEMAS, "feedback": _KEYED_FEEDBACK_SCHEMA}
_KEY_WIDTH = {"logs": 2, "feedback": 3, "upstream_failures": 2}  # leading columns that form the key
_LOG_COLUMNS = ", ".join(LOG_SCHEMA.names)
_FEEDBACK_COLUMNS = ", ".join(FEEDBACK_SCHEMA.names)
_KEPT_IDS = 16  # item ids a feedback row remembers: a retry of one of them is a no-op
_KEYS_PER_READ = 500  # log keys per read of stored feedback rows


def merge_feedback(stored: FeedbackRow, patch: FeedbackRow) -> FeedbackRow | None:
    """The stored row with a feedback patch applied; None if the patch was applied before (its
    ids all are among the row's: a retried item touches nothing).

    Each field takes the patch's value only if the patch carries it (`fields`), is cleared by a
    withdrawal (`choice` stays), and otherwise stays; `events` is a set the patch adds to. The
    patch's ids are remembered (the last `_KEPT_IDS`, so `DELETE /v1/feedback/{id}` finds the row
    by any id a client was given). The times, `fields` and `attributed` move to the patch's only
    if a value changed, `rating_at` and `correction_at` only if that value did: the row's receive
    time is the patch's exactly when the patch changed something (the writer's outcome)."""
    if patch.item_ids and set(patch.item_ids) <= set(stored.item_ids or ()):
        return None
    withdraw = WITHDRAW in patch.fields
    new: dict[str, Any] = {}
    for f in FEEDBACK_FIELDS:
        before = getattr(stored, f)
        if f in patch.fields:
            if f == "events":
                kept = () if withdraw else before or ()
                new[f] = sorted({e for e in (*kept, *(patch.events or ())) if e is not None})
            else:
                new[f] = getattr(patch, f)
        elif withdraw:
            new[f] = before if f == "choice" else None
        else:
            new[f] = before
    changed = any(new[f] != getattr(stored, f) for f in FEEDBACK_FIELDS)
    moved = {f: getattr(patch if changed else stored, f) for f in ("created_at", "received_at", "attributed")}
    return stored._replace(
        **new,
        **moved,
        fields=patch.fields if changed else stored.fields,
        item_ids=[*(stored.item_ids or ()), *patch.item_ids][-_KEPT_IDS:],
        rating_at=patch.received_at if new["rating"] != stored.rating else stored.rating_at,
        correction_at=patch.received_at if new["correction"] != stored.correction else stored.correction_at,
    )


# Prepared once on the writer's connection, each reading its table's `_Pending` rows: a flush then
# runs `EXECUTE name` instead of parsing, binding and planning an INSERT (~25% of a flush's CPU).
_PREPARED = {
    "insert_logs": f"INSERT INTO logs ({_LOG_COLUMNS}) SELECT {_LOG_COLUMNS} FROM pending_logs",
    # A retried or repeated id is a no-op; RETURNING tells which rows were new.
    "insert_new_logs": f"INSERT INTO logs ({_LOG_COLUMNS}) SELECT {_LOG_COLUMNS} FROM pending_logs"
    " ON CONFLICT DO NOTHING RETURNING project, id",
    # Failures have unique generated ids and no constraint: a plain INSERT, on either path.
    "insert_upstream_failures": f"INSERT INTO upstream_failures ({', '.join(UPSTREAM_FAILURE_SCHEMA.names)})"
    f" SELECT {', '.join(UPSTREAM_FAILURE_SCHEMA.names)} FROM pending_upstream_failures",
    # Feedback: new rows, and the changed rows the flush deleted (`_Batch._merge_feedback`).
    "insert_feedback": f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}, log_key)"
    f" SELECT {_FEEDBACK_COLUMNS}, log_key FROM pending_feedback",
}


def combine_feedback(first: FeedbackRow, then: FeedbackRow) -> FeedbackRow:
    """Two patches on the same row as one (`then` applied after `first`), the way the stored row
    would take them one after the other: a flush sends each row one patch (DuckDB updates a row
    at most once per statement)."""
    if WITHDRAW in then.fields:
        return then._replace(id=first.id, item_ids=first.item_ids + then.item_ids)
    values = {f: getattr(then, f) for f in then.fields if f != "events"}
    if "events" in then.fields:
        values["events"] = sorted(set(first.events or ()) | set(then.events or ()))
    fields = list(dict.fromkeys([*first.fields, *then.fields]))
    return first._replace(
        **values,
        fields=fields,
        item_ids=first.item_ids + then.item_ids,
        created_at=then.created_at,
        received_at=then.received_at,
        attributed=then.attributed,
        rating_at=then.received_at if "rating" in then.fields else first.rating_at,
        correction_at=then.received_at if "correction" in then.fields else first.correction_at,
    )


def _changes(before: FeedbackRow, after: FeedbackRow) -> bool:
    """Whether `after` (a combined patch) says more than `before` did."""
    if set(after.fields) - set(before.fields):
        return True
    return any(getattr(after, f) != getattr(before, f) for f in after.fields if f != WITHDRAW)


class _Pending:
    """The rows a prepared INSERT reads: registered once as a view, refilled before each run."""

    def __init__(self, schema: pa.Schema) -> None:
        self.empty = self.table = schema.empty_table()

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self.table.__arrow_c_stream__(requested_schema)


@dataclass(slots=True)
class _Op:
    table: Table
    rows: Sequence[Row]
    future: asyncio.Future[list[bool]] | None = None
    # Only `write_sync` waits on an Event: creating one per request costs the event loop ~10 µs.
    done: threading.Event | None = None
    result: list[bool] | BaseException | None = None
    # `submit`: nobody waits for this op, so its commit may linger until this monotonic time.
    linger_until: float | None = None


class _Batch:
    """One table's rows from the ops of a flush, one row (or feedback patch) per key."""

    def __init__(self, table: Table, ops: list[_Op], archived: Archived | None = None) -> None:
        self.table = table
        self.ops = ops
        width = self._width = _KEY_WIDTH[table]
        unique: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._first_of: dict[tuple[Any, ...], tuple[int, int]] = {}
        # Feedback: items on one row in this flush that add nothing to what came before them.
        self._repeats: set[tuple[int, int]] = set()
        # Logs whose id is archived: stored already, so duplicates, never inserted again.
        self._archived = _archived_keys(ops, archived) if table == "logs" and archived else set()
        for op in ops:
            for i, row in enumerate(op.rows):
                key = row[:width]
                if key in self._archived:
                    continue
                if key not in unique:
                    unique[key] = row
                elif table == "feedback":  # each patch applies on top of the ones before it
                    combined = combine_feedback(unique[key], row)  # type: ignore[arg-type]
                    if not _changes(unique[key], combined):  # type: ignore[arg-type]
                        self._repeats.add((id(op), i))
                    unique[key] = combined
                self._first_of.setdefault(key, (id(op), i))
        self._unique = unique
        # Feedback is merged onto the stored rows first (`_merge_feedback`).
        self.arrow = None if table == "feedback" else _to_arrow(list(unique.values()), _SCHEMAS[table])

    def insert(
        self, cur: duckdb.DuckDBPyConnection, pending: _Pending, *, seen_before: bool
    ) -> dict[int, list[bool]]:
        """Run the INSERT; map back, per op, which of its rows were new.

        `seen_before=False` is the fast path: a plain INSERT, which raises `ConstraintException`
        (and writes nothing) if any log id is already stored. ON CONFLICT costs ~2x per flush.
        """
        if self.table == "feedback":
            return self._merge_feedback(cur, pending)
        pending.table = self.arrow
        try:
            if self.table == "upstream_failures":
                cur.execute("EXECUTE insert_upstream_failures")
                return self._outcomes(None)
            if not seen_before:
                cur.execute("EXECUTE insert_logs")
                return self._outcomes(None)
            return self._outcomes({tuple(r) for r in cur.execute("EXECUTE insert_new_logs").fetchall()})
        finally:
            pending.table = pending.empty

    def _merge_feedback(self, cur: duckdb.DuckDBPyConnection, pending: _Pending) -> dict[int, list[bool]]:
        """Merge each row's patch onto its stored row (`merge_feedback`), in the caller's
        transaction: delete each changed row and insert it anew with the new rows (one Arrow
        INSERT). Per op, which items changed their row (not a retry, not a repeat in this flush).

        Not `INSERT ... ON CONFLICT DO UPDATE`: that needs a unique index on the text key, whose
        probes and checkpoint rewrites grow with the table (migration 016)."""
        patches: dict[tuple[Any, ...], FeedbackRow] = self._unique  # type: ignore[assignment]
        keys = dict(zip(patches, log_keys(k[:2] for k in patches), strict=True))
        stored = _stored_feedback(cur, keys)
        rows: list[FeedbackRow] = []
        gone: list[int] = []
        changed: set[tuple[Any, ...]] = set()
        for key, patch in patches.items():
            if key not in stored:
                rows.append(patch)
                changed.add(key)
                continue
            rowid, before = stored[key]
            after = merge_feedback(before, patch)
            if after is None:  # a retried item
                continue
            if after.received_at == patch.received_at:  # as `RETURNING received_at` told before 016
                changed.add(key)
            if after != before:
                gone.append(rowid)
                rows.append(after)
        if gone:
            # By row id, read above in this transaction: exactly the (project, log_id, end_user) rows
            # matched (a key alone may be shared), cheaper than a second look-up by key.
            cur.execute(f"DELETE FROM feedback WHERE rowid IN ({', '.join(map(str, gone))})")
        arrow = _to_arrow(rows, FEEDBACK_SCHEMA)
        pending.table = arrow.append_column(
            "log_key", pa.array([keys[r[:3]] for r in rows], type=pa.uint64())
        )
        try:
            cur.execute("EXECUTE insert_feedback")
        finally:
            pending.table = pending.empty
        return {
            id(op): [row[:3] in changed and (id(op), i) not in self._repeats for i, row in enumerate(op.rows)]
            for op in self.ops
        }

    def _outcomes(self, inserted: set[tuple[Any, ...]] | None) -> dict[int, list[bool]]:
        """A row is new if its key was inserted (None: all were) and it is that key's first row."""
        width, first_of = self._width, self._first_of
        return {
            id(op): [
                first_of.get(row[:width]) == (id(op), i) and (inserted is None or row[:width] in inserted)
                for i, row in enumerate(op.rows)
            ]
            for op in self.ops
        }


def _stored_feedback(
    cur: duckdb.DuckDBPyConnection, keys: dict[tuple[Any, ...], int]
) -> dict[tuple[Any, ...], tuple[int, FeedbackRow]]:
    """The stored rows (row id, row) of `keys` ((project, log_id, end_user) -> its `log_key`): read
    by `log_key` through `feedback_log_key`, then matched exactly (two logs may share a key)."""
    wanted = sorted(set(keys.values()))
    found: dict[tuple[Any, ...], tuple[int, FeedbackRow]] = {}
    for start in range(0, len(wanted), _KEYS_PER_READ):
        # Literals, not a parameter list: DuckDB scans the index for an IN list of constants.
        chunk = ", ".join(map(str, wanted[start : start + _KEYS_PER_READ]))
        for rowid, *row in cur.execute(
            f"SELECT rowid, {_FEEDBACK_COLUMNS} FROM feedback WHERE log_key IN ({chunk})"
        ).fetchall():
            if tuple(row[:3]) in keys:
                found[tuple(row[:3])] = (rowid, FeedbackRow(*row))
    return found


def _archived_keys(ops: list[_Op], archived: Archived) -> set[tuple[Any, ...]]:
    """The (project, id) keys among the ops' log rows that are archived."""
    by_project: dict[str, list[str]] = {}
    for op in ops:
        for row in op.rows:
            by_project.setdefault(row[0], []).append(row[1])
    return {(project, i) for project, ids in by_project.items() for i in archived(project, ids)}


def _to_arrow(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    if not rows:
        return schema.empty_table()
    columns = zip(*rows, strict=True)
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)], schema=schema
    )


_STOP = object()
_CHECKPOINT = object()


class GroupCommitWriter:
    """Queues rows from many requests and commits them together.

    `write` resolves to one bool per row: True if the row was new (for feedback: if the item
    changed the stored verdict), False if a row with the same key already existed (for feedback:
    the item was a retry or said nothing new). Raises `WriterSaturated` when more than
    `max_queue_rows` are waiting, `StoreUnavailable` if the transaction failed.

    `submit` queues rows nobody waits for (the gateway's logs, written after their answer): a
    commit that holds only such rows waits up to `linger_seconds` for more, so that at gateway
    rates one commit carries many rows (a commit costs about the same CPU for 1 row as for 50).
    Rows someone waits for are never held back: when one arrives, everything queued is
    committed at once. `stop` commits what is queued without waiting.
    """

    def __init__(
        self,
        db: Database,
        metrics: Metrics,
        *,
        max_batch_rows: int,
        max_queue_rows: int,
        linger_seconds: float = 0.0,
        archive: ArchivedLogs | None = None,
    ) -> None:
        self._db = db
        self._archive = archive
        self._metrics = metrics
        self._max_batch_rows = max_batch_rows
        self._max_queue_rows = max_queue_rows
        self._linger_seconds = linger_seconds
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._queued_rows = 0
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ratchet-writer", daemon=True)
        self._stopped = False
        self._checkpoint_wanted = False
        self._cur: duckdb.DuckDBPyConnection | None = None
        self._pending = {table: _Pending(schema) for table, schema in _PENDING_SCHEMAS.items()}

    def start(self) -> None:
        self._cur = self._db.cursor()
        for table, pending in self._pending.items():
            self._cur.register(f"pending_{table}", pending)
        for name, sql in _PREPARED.items():
            self._cur.execute(f"PREPARE {name} AS {sql}")
        self._warm_up(self._cur)
        self._thread.start()

    def stop(self) -> None:
        """Write everything already queued, then stop the thread."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(_STOP)
        self._thread.join()

    def request_checkpoint(self) -> None:
        """Have the writer checkpoint soon (between flushes, as at `checkpoint_wal_mib`) whatever
        the WAL's size, so that rows just deleted leave the WAL. Thread-safe; does not wait. If
        an open read defers it, the writer tries again after each flush until it has run."""
        self._checkpoint_wanted = True
        self._queue.put(_CHECKPOINT)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def write(self, table: Table, rows: Sequence[Row]) -> list[bool]:
        """Queue rows for the next group commit and wait until they are committed."""
        op = _Op(table, rows, future=asyncio.get_running_loop().create_future())
        self._enqueue(op)
        return await op.future  # type: ignore[misc]

    def submit(self, table: Table, rows: Sequence[Row]) -> None:
        """Queue rows for a group commit within `linger_seconds`, without waiting for it. Raises
        `WriterSaturated` (nothing queued) like `write`; a commit that fails is logged."""
        self._enqueue(_Op(table, rows, linger_until=time.monotonic() + self._linger_seconds))

    def write_sync(self, table: Table, rows: Sequence[Row]) -> list[bool]:
        """Blocking variant of `write` for threads without an event loop."""
        op = _Op(table, rows, done=threading.Event())
        self._enqueue(op)
        op.done.wait()  # type: ignore[union-attr]
        if isinstance(op.result, BaseException):
            raise op.result
        assert op.result is not None
        return op.result

    def _enqueue(self, op: _Op) -> None:
        if self._stopped:
            raise StoreUnavailable("the writer is shutting down; retry against the restarted service")
        with self._count_lock:
            if self._queued_rows + len(op.rows) > self._max_queue_rows:
                raise WriterSaturated(
                    f"write queue is full ({self._queued_rows} rows waiting); retry shortly", retry_after=1.0
                )
            self._queued_rows += len(op.rows)
            self._metrics.writer_queue_rows.set(self._queued_rows)
        self._queue.put(op)

    def _warm_up(self, cur: duckdb.DuckDBPyConnection) -> None:
        # The first Arrow insert in a process costs ~0.5 s; pay it at start, not on a request.
        cur.execute("BEGIN")
        for table, pending in self._pending.items():
            for seen_before in (False, True):
                _Batch(table, []).insert(cur, pending, seen_before=seen_before)
        cur.execute("ROLLBACK")

    def _run(self) -> None:
        cur = self._cur
        assert cur is not None
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            if item is _CHECKPOINT:
                self._checkpoint_if_due(cur)
                continue
            ops: list[_Op] = [item]  # type: ignore[list-item]
            rows = len(ops[0].rows)
            # Take whatever else is already waiting, up to the batch size; while only submitted
            # rows are in hand, wait for more until the first of them has lingered its time.
            linger_until = ops[0].linger_until
            while rows < self._max_batch_rows:
                try:
                    if linger_until is None:
                        item = self._queue.get_nowait()
                    else:
                        item = self._queue.get(timeout=max(0.0, linger_until - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                if item is _CHECKPOINT:
                    continue  # `_checkpoint_wanted` is set: the checkpoint follows this flush
                ops.append(item)  # type: ignore[arg-type]
                rows += len(item.rows)  # type: ignore[union-attr]
                if item.linger_until is None:  # type: ignore[union-attr]
                    linger_until = None  # someone waits: commit what is here now
            self._flush(cur, ops, rows)
            self._checkpoint_if_due(cur)
        cur.close()

    def _flush(self, cur: duckdb.DuckDBPyConnection, ops: list[_Op], rows: int) -> None:
        started = time.perf_counter()
        outcomes: dict[int, list[bool]] | BaseException
        try:
            with self._archive.flushing if self._archive else contextlib.nullcontext():
                outcomes = self._commit(cur, ops)
        except Exception as exc:
            self._metrics.writer_errors.inc()
            outcomes = StoreUnavailable(f"could not commit to the database: {exc}")
        else:
            self._metrics.write_commit_seconds.observe(time.perf_counter() - started)
            self._metrics.write_batch_rows.observe(rows)
        # Count the rows as written before answering: an answered client's next request must not
        # find its own committed rows still "waiting" (a spurious 429 when the queue is small).
        with self._count_lock:
            self._queued_rows -= rows
            self._metrics.writer_queue_rows.set(self._queued_rows)
        self._answer(ops, outcomes)

    def _checkpoint_if_due(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Checkpoint once the WAL is large, between flushes: the requests of the flush that
        crossed the size are already answered, and the stall is measured on its own."""
        if not self._checkpoint_wanted and self._db.wal_bytes() < self._db.checkpoint_wal_bytes:
            return
        started = time.perf_counter()
        try:
            cur.execute("CHECKPOINT")
        except duckdb.Error as exc:
            # DuckDB refuses (at once, it does not wait) while a read that began before an UPDATE
            # is still open; inserts and deletes (the writer's feedback merges since migration
            # 016) do not block it. Try again after the next flush: the writer never waits behind a read.
            self._metrics.write_checkpoints_deferred.inc()
            log.debug("checkpoint deferred: %s", exc)
            return
        self._checkpoint_wanted = False
        self._metrics.write_checkpoint_seconds.observe(time.perf_counter() - started)

    def _commit(self, cur: duckdb.DuckDBPyConnection, ops: list[_Op]) -> dict[int, list[bool]]:
        """Write the ops' rows in one transaction; per op, which rows were new."""
        batches = [
            _Batch(table, mine, self._archive.archived if self._archive else None)
            for table in _SCHEMAS
            if (mine := [op for op in ops if op.table == table])
        ]
        try:
            return self._insert(cur, batches, seen_before=False)
        except duckdb.ConstraintException:
            # Some log id is already stored (a client retry): nothing was written. Redo it with
            # ON CONFLICT, whose RETURNING tells which rows are new.
            return self._insert(cur, batches, seen_before=True)

    def _insert(
        self, cur: duckdb.DuckDBPyConnection, batches: list[_Batch], *, seen_before: bool
    ) -> dict[int, list[bool]]:
        # A single statement commits itself: BEGIN and COMMIT would be two more round trips, and
        # under load each round trip waits for the event loop to hand back the GIL.
        # A feedback batch reads, deletes and inserts: always a transaction of its own.
        explicit = len(batches) > 1 or batches[0].table == "feedback"
        if explicit:
            cur.execute("BEGIN")
        try:
            outcomes: dict[int, list[bool]] = {}
            for batch in batches:
                outcomes.update(batch.insert(cur, self._pending[batch.table], seen_before=seen_before))
            if explicit:
                cur.execute("COMMIT")
        except Exception:
            if explicit:
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
            raise
        return outcomes

    @staticmethod
    def _answer(ops: list[_Op], outcomes: dict[int, list[bool]] | BaseException) -> None:
        """Hand each op its result: one wake-up per event loop for the whole flush."""
        answers: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[bool]], Any]]] = {}
        for op in ops:
            result = outcomes if isinstance(outcomes, BaseException) else outcomes[id(op)]
            if op.linger_until is not None:  # submitted: nobody to answer
                if isinstance(result, BaseException):
                    log.error("%d submitted %s rows were not stored: %s", len(op.rows), op.table, result)
            elif op.future is None:
                op.result = result
                op.done.set()  # type: ignore[union-attr]
            else:
                answers.setdefault(op.future.get_loop(), []).append((op.future, result))
        for loop, pairs in answers.items():
            loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(answers: list[tuple[asyncio.Future[list[bool]], list[bool] | BaseException]]) -> None:
    for future, result in answers:
        if future.done():  # the client went away; its rows are committed all the same
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
