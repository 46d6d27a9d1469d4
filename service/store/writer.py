"""The group-commit writer: many requests, one transaction, then answer each.

One commit per request tops out near 80 requests/s here; batching whatever arrived while the
previous commit ran gives thousands (notes/ingest-performance.md). The writer runs in its own
thread so commits and Arrow building stay off the event loop. It flushes as soon as it is free
rather than on a timer: a timer waits for rows that cannot come. A request is answered only after
its rows are committed (durable: DuckDB fsyncs the WAL on commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from service.errors import StoreUnavailable, WriterSaturated
from service.metrics import Metrics
from service.store.db import Database

Table = Literal["logs", "feedback"]

LOG_SCHEMA = pa.schema(
    [
        ("project", pa.string()),
        ("id", pa.string()),
        ("created_at", pa.timestamp("us")),
        ("received_at", pa.timestamp("us")),
        ("source", pa.string()),
        ("adapter", pa.string()),
        ("request", pa.string()),
        ("response", pa.string()),
        ("latency_ms", pa.float64()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("end_user", pa.string()),
        ("metadata", pa.string()),
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("project", pa.string()),
        ("log_id", pa.string()),
        ("end_user", pa.string()),
        ("id", pa.string()),
        ("created_at", pa.timestamp("us")),
        ("received_at", pa.timestamp("us")),
        ("rating", pa.int8()),
        ("score", pa.float64()),
        ("correction", pa.string()),
        ("comment", pa.string()),
        ("metadata", pa.string()),
    ]
)
_SCHEMAS = {"logs": LOG_SCHEMA, "feedback": FEEDBACK_SCHEMA}
_KEY_WIDTH = {"logs": 2, "feedback": 3}  # leading columns that form the primary key
_FEEDBACK_UPDATE = ", ".join(
    f"{c} = excluded.{c}" for c in FEEDBACK_SCHEMA.names if c not in ("project", "log_id", "end_user")
)
_INSERT = {
    # A retried or repeated id is a no-op; RETURNING tells which rows were new.
    "logs": "INSERT INTO logs SELECT * FROM batch ON CONFLICT DO NOTHING RETURNING project, id",
    # A changed thumb replaces the previous one for that (log, end user).
    "feedback": f"INSERT INTO feedback SELECT * FROM batch ON CONFLICT DO UPDATE SET {_FEEDBACK_UPDATE}",
}


@dataclass
class _Op:
    table: Table
    rows: Sequence[tuple[Any, ...]]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[list[bool]] | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[bool] | BaseException | None = None


_STOP = object()


class GroupCommitWriter:
    """Queues rows from many requests and commits them together.

    `write` resolves to one bool per row: True if the row was new (or, for feedback, stored),
    False if a row with the same key already existed. Raises `WriterSaturated` when more than
    `max_queue_rows` are waiting, `StoreUnavailable` if the transaction failed.
    """

    def __init__(self, db: Database, metrics: Metrics, *, max_batch_rows: int, max_queue_rows: int) -> None:
        self._db = db
        self._metrics = metrics
        self._max_batch_rows = max_batch_rows
        self._max_queue_rows = max_queue_rows
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._queued_rows = 0
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ratchet-writer", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._warm_up()
        self._thread.start()

    def stop(self) -> None:
        """Write everything already queued, then stop the thread."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(_STOP)
        self._thread.join()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def write(self, table: Table, rows: Sequence[tuple[Any, ...]]) -> list[bool]:
        """Queue rows for the next group commit and wait until they are committed."""
        loop = asyncio.get_running_loop()
        op = _Op(table, rows, loop, loop.create_future())
        self._enqueue(op)
        assert op.future is not None
        return await op.future

    def write_sync(self, table: Table, rows: Sequence[tuple[Any, ...]]) -> list[bool]:
        """Blocking variant of `write` for threads without an event loop."""
        op = _Op(table, rows, None, None)
        self._enqueue(op)
        op.done.wait()
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

    def _warm_up(self) -> None:
        # The first Arrow insert in a process costs ~0.5 s; pay it at start, not on a request.
        cur = self._db.cursor()
        try:
            cur.execute("BEGIN")
            for table, schema in _SCHEMAS.items():
                cur.register("batch", schema.empty_table())
                cur.execute(_INSERT[table])
                cur.unregister("batch")
            cur.execute("ROLLBACK")
        finally:
            cur.close()

    def _run(self) -> None:
        cur = self._db.cursor()
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            ops: list[_Op] = [item]  # type: ignore[list-item]
            rows = len(ops[0].rows)
            # Take whatever else is already waiting, up to the batch size.
            while rows < self._max_batch_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                ops.append(item)  # type: ignore[arg-type]
                rows += len(item.rows)  # type: ignore[union-attr]
            self._flush(cur, ops, rows)
        cur.close()

    def _flush(self, cur: Any, ops: list[_Op], rows: int) -> None:
        started = time.perf_counter()
        try:
            cur.execute("BEGIN")
            results = {
                table: self._insert(cur, table, [op for op in ops if op.table == table]) for table in _SCHEMAS
            }
            cur.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            self._metrics.writer_errors.inc()
            failure = StoreUnavailable(f"could not commit to the database: {exc}")
            for op in ops:
                self._finish(op, failure)
        else:
            self._metrics.write_commit_seconds.observe(time.perf_counter() - started)
            self._metrics.write_batch_rows.observe(rows)
            for op in ops:
                self._finish(op, results[op.table][id(op)])
        with self._count_lock:
            self._queued_rows -= rows
            self._metrics.writer_queue_rows.set(self._queued_rows)

    @staticmethod
    def _insert(cur: Any, table: Table, ops: list[_Op]) -> dict[int, list[bool]]:
        """Insert the ops' rows in one statement; map back which rows were new, per op."""
        if not ops:
            return {}
        width = _KEY_WIDTH[table]
        batch: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        first_of: dict[tuple[Any, ...], tuple[int, int]] = {}
        for op in ops:
            for i, row in enumerate(op.rows):
                key = row[:width]
                # Logs: the first occurrence wins. Feedback: the last one does (it replaces).
                if table == "feedback" or key not in batch:
                    batch[key] = row
                first_of.setdefault(key, (id(op), i))
        columns = list(zip(*batch.values(), strict=True))
        schema = _SCHEMAS[table]
        arrow = pa.Table.from_arrays(
            [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)], schema=schema
        )
        cur.register("batch", arrow)
        try:
            cur.execute(_INSERT[table])
            inserted = {tuple(r) for r in cur.fetchall()} if table == "logs" else set()
        finally:
            cur.unregister("batch")
        if table == "feedback":
            return {id(op): [True] * len(op.rows) for op in ops}
        return {
            id(op): [
                row[:width] in inserted and first_of[row[:width]] == (id(op), i)
                for i, row in enumerate(op.rows)
            ]
            for op in ops
        }

    @staticmethod
    def _finish(op: _Op, result: list[bool] | BaseException) -> None:
        if op.future is None:
            op.result = result
            op.done.set()
            return
        assert op.loop is not None
        op.loop.call_soon_threadsafe(_resolve, op.future, result)


def _resolve(future: asyncio.Future[list[bool]], result: list[bool] | BaseException) -> None:
    if future.done():  # the client went away; its rows are committed all the same
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
