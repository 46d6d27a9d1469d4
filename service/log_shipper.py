"""A gateway replica's logs on their way to the store: batched, spooled on local disk, delivered
exactly once.

The gateway hands each answered request's row to `submit_log_row` (after the client has its
answer, as the built-in gateway hands it to the group-commit writer). Rows wait up to
`gateway.linger_ms` (or until `gateway.batch_max_logs`) for more; then the batch is written to
its own segment file in the spool directory (temporary name, fsync, rename, fsync of the
directory), and only then sent to the store's ingest API (`POST /v1/logs?project=P&source=gateway`,
one request per project in the batch). The segment is deleted once the store has answered for
every log in it; a log counts as delivered only then.

While the store is unreachable (or answers 429/5xx, or refuses the replica's key) segments pile
up on disk in order and the oldest is retried with exponential backoff up to
`gateway.retry_max_s` (tenacity); nothing waits in memory beyond one linger. A replica killed
with segments on disk sends them at its next start. Exactly once: the log id is the gateway's
(`id` of the answer), and the store stores a log id once (a re-send is `duplicate`), so a segment
sent again after a crash between the store's commit and the deletion adds nothing. What a
`kill -9` of the replica itself can lose: the logs of its last linger (not yet on disk), as the
built-in gateway's writer linger.

A log the store rejects (its answer was unreadable and is refused by the ingest API's shape
check, or its project was deleted) is dropped with an error naming it in the replica's log and
counted `refused`: retrying it would never succeed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_exponential

from formats.gateway import GatewayFailure
from formats.versioned import SchemaVersionError, check_version
from service.config import Settings
from service.domain import LogIn
from service.durable_files import replace_durably
from service.metrics import Metrics
from service.store.rows import LogRow

log = logging.getLogger("ratchet.gateway.shipper")
_MAX_FAILURES_KEPT = 10_000


class StoreAway(Exception):
    """The store did not take a request now (unreachable, 429, 5xx, or it refused our key): try
    again later."""


SPOOL_SCHEMA_VERSION = 1
"""Of each line of a segment file: a replica of another Ratchet version may find them at start."""


class _Spooled(msgspec.Struct, frozen=True):
    """One line of a segment file: a log as `POST /v1/logs` takes it, for its project."""

    project: str
    log: msgspec.Raw
    schema_version: int = SPOOL_SCHEMA_VERSION


class _Answer(msgspec.Struct):
    results: list[_ItemAnswer] = []


class _ItemAnswer(msgspec.Struct):
    status: str
    id: str | None = None
    error: str | None = None


_decode_line = msgspec.json.Decoder(_Spooled).decode
_decode_answer = msgspec.json.Decoder(_Answer).decode


def shipped_log(row: LogRow) -> LogIn:
    """The ingest API's log for a gateway row: the same id, bodies, times, user, adapter and
    measurements, so the store's row equals the one the built-in gateway would write."""
    return LogIn(
        id=row.id, request=msgspec.Raw(row.request.encode()), response=msgspec.Raw(row.response.encode()),
        created_at=row.created_at, end_user=row.end_user, adapter=row.adapter, latency_ms=row.latency_ms,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        metadata=None if row.metadata is None else msgspec.json.decode(row.metadata),
    )  # fmt: skip


class LogShipper:
    """The gateway's log sink in a replica (see the module docstring). `client` is the store's
    HTTP client (base URL and key set); `spool` the replica's own directory."""

    def __init__(self, settings: Settings, metrics: Metrics, client: httpx.AsyncClient, spool: Path) -> None:
        self._settings = settings.gateway
        self._max_body = settings.max_body_bytes
        self._metrics = metrics
        self._client = client
        self._spool = spool
        self._batch: list[bytes] = []
        self._full = asyncio.Event()
        self._has_logs = asyncio.Event()
        self._segments: collections.deque[tuple[Path, int]] = collections.deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_name = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.failures: collections.deque[GatewayFailure] = collections.deque(maxlen=_MAX_FAILURES_KEPT)
        """Upstream failures not yet reported to the store (the sync takes them)."""

    # --- the gateway's log sink

    def submit_log_row(self, row: LogRow) -> None:
        """Queue a gateway row for the next batch (never waits, never raises for the store)."""
        self._batch.append(
            msgspec.json.encode(_Spooled(row.project, msgspec.Raw(msgspec.json.encode(shipped_log(row)))))
        )
        self._has_logs.set()
        if len(self._batch) >= self._settings.batch_max_logs:
            self._full.set()

    def submit_upstream_failure(
        self, project: str, adapter: str, reason: str, log_id: str | None = None
    ) -> None:
        """Keep a failure for the next sync (the store records it for the online gate)."""
        self.failures.append(GatewayFailure(project=project, adapter=adapter, reason=reason, log_id=log_id))

    def remember_adapter(self, project: str, log_id: str, adapter: str | None) -> None:
        """Nothing to remember here: the store learns the adapter from the log itself."""

    async def flush(self) -> None:
        """Spool the logs submitted so far (on disk, fsync'd) without waiting for the store."""
        await self._seal()

    # --- running

    async def start(self) -> None:
        """Pick up the segments a previous run left (in order), then start batching and sending."""
        self._spool.mkdir(parents=True, exist_ok=True)
        for torn in self._spool.glob("*.tmp"):  # a batch cut by a crash mid-write: never spooled
            torn.unlink()
        for path in sorted(self._spool.glob("*.jsonl")):
            count = await asyncio.to_thread(_count_lines, path)
            self._segments.append((path, count))
            self._metrics.gateway_spool_logs.inc(count)
            self._last_name = max(self._last_name, int(path.stem))
        if self._segments:
            log.warning(
                "%d spooled logs from a previous run are being delivered", sum(n for _, n in self._segments)
            )
            self._ready.set()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._batching()), loop.create_task(self._delivering())]

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Spool what is left, give the store `grace_s` to take the spool, then stop; what it did
        not take stays on disk for the next start."""
        await self._seal()
        try:
            await asyncio.wait_for(self.delivered(), grace_s)
        except TimeoutError:
            log.warning("stopping with %d logs spooled for the next start", self.spooled())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def delivered(self) -> None:
        """Wait until every spooled segment has been taken by the store."""
        while self._segments or not self._idle.is_set():
            await asyncio.sleep(0.01)

    def spooled(self) -> int:
        """Logs on disk that the store has not taken yet."""
        return sum(n for _, n in self._segments)

    # --- batching: memory -> segment file

    async def _batching(self) -> None:
        linger = self._settings.linger_ms / 1000
        while True:
            await self._has_logs.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), linger)
            try:
                await self._seal()
            except OSError:  # a full or failing disk: the batch stays in memory, tried again
                log.exception("could not spool %d gateway logs; retrying", len(self._batch))
                await asyncio.sleep(self._settings.retry_max_s)

    async def _seal(self) -> None:
        batch, self._batch = self._batch, []
        self._has_logs.clear()
        self._full.clear()
        if not batch:
            return
        self._last_name = max(self._last_name + 1, time.time_ns())
        path = self._spool / f"{self._last_name:020d}.jsonl"
        try:
            await asyncio.to_thread(replace_durably, path, b"\n".join(batch) + b"\n")
        except BaseException:
            self._batch[:0] = batch
            self._has_logs.set()
            raise
        self._segments.append((path, len(batch)))
        self._metrics.gateway_spool_logs.inc(len(batch))
        self._ready.set()

    # --- delivering: segment file -> store

    async def _delivering(self) -> None:
        while True:
            while not self._segments:
                self._ready.clear()
                await self._ready.wait()
            path, count = self._segments[0]
            self._idle.clear()
            try:
                lines = await asyncio.to_thread(_read_lines, path)
                for project, logs in _by_project(lines):
                    for chunk in self._chunks(logs):
                        await self._send(project, chunk)
                await asyncio.to_thread(path.unlink)
                self._segments.popleft()
                self._metrics.gateway_spool_logs.dec(count)
            except Exception:  # a bug or a failing disk must not stop delivery for good
                log.exception("could not deliver spool segment %s; retrying", path)
                await asyncio.sleep(self._settings.retry_max_s)
            finally:
                self._idle.set()

    def _chunks(self, logs: list[bytes]) -> Iterable[list[bytes]]:
        """Runs of logs that fit one request: `batch_max_logs`, and the store's body limit."""
        chunk: list[bytes] = []
        size = 0
        for raw in logs:
            if chunk and (
                len(chunk) >= self._settings.batch_max_logs or size + len(raw) + 16 > self._max_body
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append(raw)
            size += len(raw) + 1
        if chunk:
            yield chunk

    async def _send(self, project: str, logs: list[bytes]) -> None:
        """Hand `logs` to the store, trying until it answers for them (see the module docstring)."""
        body = b'{"logs":[' + b",".join(logs) + b"]}"
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StoreAway),
            wait=wait_exponential(multiplier=0.05, max=self._settings.retry_max_s),
            stop=stop_never,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                answer = await self._post(project, body)
        self._count(project, answer, len(logs))

    async def _post(self, project: str, body: bytes) -> httpx.Response:
        try:
            answer = await self._client.post(
                "/v1/logs", params={"project": project, "source": "gateway"}, content=body,
                headers={"content-type": "application/json"},
            )  # fmt: skip
        except httpx.TransportError as exc:
            raise StoreAway(f"the store is unreachable: {exc!r}") from exc
        if answer.status_code in (401, 403):
            log.error(
                "the store refused the gateway's key (%d): %s; logs stay spooled",
                answer.status_code,
                answer.text,
            )
            raise StoreAway("the store refused the gateway's key")
        if answer.status_code == 429 or answer.status_code >= 500:
            raise StoreAway(f"the store answered {answer.status_code}")
        return answer

    def _count(self, project: str, answer: httpx.Response, sent: int) -> None:
        shipped = self._metrics.gateway_logs_shipped
        if answer.status_code == 202:
            results = _decode_answer(answer.content).results
        else:  # 404 (project deleted), 413, 422 (every item rejected): nothing of it will ever be taken
            log.error(
                "the store refused %d logs of %s (%d): %s",
                sent,
                project,
                answer.status_code,
                answer.text[:2000],
            )
            shipped.labels("refused").inc(sent)
            return
        for item in results:
            if item.status == "accepted":
                shipped.labels("delivered").inc()
            elif item.status == "duplicate":
                shipped.labels("duplicate").inc()
            else:
                shipped.labels("refused").inc()
                log.error("the store refused gateway log %s of %s: %s", item.id, project, item.error)


def _by_project(lines: list[_Spooled]) -> list[tuple[str, list[bytes]]]:
    groups: dict[str, list[bytes]] = {}
    for line in lines:
        groups.setdefault(line.project, []).append(bytes(line.log))
    return list(groups.items())


def _read_lines(path: Path) -> list[_Spooled]:
    """A segment's logs; a line that does not decode (cannot happen short of disk damage: a
    segment appears whole, by rename) is skipped with an error. A line of a newer spool schema (a
    newer replica wrote it) raises `SchemaVersionError`: the segment stays on disk for a replica
    that reads it, and delivery retries, saying so in the log."""
    out: list[_Spooled] = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            check_version(line, f"spool segment {path} line {n}", SPOOL_SCHEMA_VERSION)
            out.append(_decode_line(line))
        except SchemaVersionError:
            raise
        except (msgspec.MsgspecError, ValueError) as exc:
            log.error("spool %s line %d is unreadable and skipped: %s", path, n, exc)
    return out


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")
