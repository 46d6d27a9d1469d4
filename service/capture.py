"""Capture: turn inbound logs and feedback into rows, write them durably, say what happened.

Each item of a batch is validated on its own: a bad item is reported `rejected` with the
reason while the others are written (partial success is a 2xx that lists what was rejected).
A log is normalised here, once (`formats.log.normalize`), into the typed columns training reads.
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from formats.chat import ShapeError
from formats.log import NormalizedLog, normalize
from service.domain import CaptureResult, FeedbackBatchIn, FeedbackIn, ItemResult, LogBatchIn, LogIn
from service.errors import InvalidInput, WriterSaturated
from service.metrics import Metrics
from service.store.rows import FeedbackRow, LogRow, normalized_columns
from service.store.writer import GroupCommitWriter

_encode = msgspec.json.encode


def utcnow() -> datetime:
    """Now, as the naive UTC datetime the store keeps."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_utc(value: datetime | None, default: datetime) -> datetime:
    if value is None:
        return default
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def new_log_id() -> str:
    return f"log-{uuid.uuid4().hex}"


def adapter_label(project: str, adapter: str | None) -> str:
    """A bounded metric label for an adapter name: `v3`, `none`, or `other` for anything else."""
    if adapter is None:
        return "none"
    match = re.fullmatch(rf"{re.escape(project)}@(v\d+)", adapter)
    return match.group(1) if match else "other"


def decode_logs(body: bytes) -> list[LogIn]:
    """Decode `POST /v1/logs`: one log, or `{"logs": [...]}`. Raises msgspec errors on bad JSON."""
    return _decode_one_or_batch(body, "logs", LogIn, LogBatchIn)


def decode_feedback(body: bytes) -> list[FeedbackIn]:
    """Decode `POST /v1/feedback`: one item, or `{"feedback": [...]}`."""
    return _decode_one_or_batch(body, "feedback", FeedbackIn, FeedbackBatchIn)


class _Peek(msgspec.Struct):
    logs: msgspec.Raw = msgspec.Raw()
    feedback: msgspec.Raw = msgspec.Raw()


_peek = msgspec.json.Decoder(_Peek)
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


def _decode_one_or_batch(body: bytes, key: str, one: type, batch: type) -> list[Any]:
    if not body.strip():
        raise InvalidInput("the request body is empty: send JSON", "body")
    peeked = _peek.decode(body)
    is_batch = len(getattr(peeked, key)) > 0
    type_ = batch if is_batch else one
    decoder = _decoders.get(type_) or _decoders.setdefault(type_, msgspec.json.Decoder(type_))
    decoded = decoder.decode(body)
    return getattr(decoded, key) if is_batch else [decoded]


class Capture:
    """Writes logs and feedback for a project through the group-commit writer."""

    def __init__(self, writer: GroupCommitWriter, metrics: Metrics, *, max_batch_items: int) -> None:
        self._writer = writer
        self._metrics = metrics
        self._max_batch_items = max_batch_items
        # Which adapter answered a recent log, so feedback metrics carry the version without a read.
        self._adapters: OrderedDict[tuple[str, str], str | None] = OrderedDict()

    def check_size(self, items: Sequence[Any]) -> None:
        if len(items) > self._max_batch_items:
            raise InvalidInput(
                f"a batch holds at most {self._max_batch_items} items, got {len(items)}: split it", "batch"
            )

    async def write_logs(self, project: str, items: Sequence[LogIn], source: str = "api") -> CaptureResult:
        """Validate and durably store logs; duplicates of an existing id are no-ops."""
        self.check_size(items)
        now = utcnow()
        rows, results = [], []
        for i, item in enumerate(items):
            log_id = item.id or new_log_id()
            try:
                row = self.log_row(project, item, log_id, now, source)
            except ShapeError as exc:
                results.append(ItemResult(i, "rejected", item.id, f"{exc.field}: {exc.message}"))
                continue
            results.append(ItemResult(i, "accepted", log_id))
            rows.append(row)
        return await self._write("logs", "log", rows, results)

    async def write_log_rows(self, rows: Sequence[LogRow]) -> CaptureResult:
        """Durably store rows already built from parsed bodies (the gateway's): no validation, no
        re-encoding. Duplicates of an existing id are no-ops; raises `WriterSaturated`."""
        results = [ItemResult(i, "accepted", row.id) for i, row in enumerate(rows)]
        return await self._write("logs", "log", list(rows), results)

    @staticmethod
    def log_row(project: str, item: LogIn, log_id: str, now: datetime, source: str) -> LogRow:
        """The row for a log posted to the API; raises `ShapeError` if its bodies are not an
        OpenAI chat or completions request/response."""
        request, response = bytes(item.request), bytes(item.response)
        interrupted = bool(item.metadata and item.metadata.get("interrupted") is True)
        normalized = normalize(request, response, end_user=item.end_user, interrupted=interrupted)
        return log_row(
            project, log_id, to_utc(item.created_at, now), now, source, item.adapter,
            request.decode(), response.decode(), normalized, latency_ms=item.latency_ms,
            prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens,
            metadata=item.metadata,
        )  # fmt: skip

    async def write_feedback(self, project: str, items: Sequence[FeedbackIn]) -> CaptureResult:
        """Store feedback; a new verdict for the same (log, end user) replaces the previous one."""
        self.check_size(items)
        now = utcnow()
        rows, results = [], []
        for i, item in enumerate(items):
            if (
                item.rating is None
                and item.score is None
                and item.correction is None
                and item.comment is None
            ):
                results.append(
                    ItemResult(
                        i, "rejected", item.id, "give at least one of rating, score, correction, comment"
                    )
                )
                continue
            fid = item.id or f"fb-{uuid.uuid4().hex}"
            results.append(ItemResult(i, "accepted", fid))
            rows.append(
                FeedbackRow(
                    project, item.log_id, item.end_user or "", fid, to_utc(item.created_at, now), now,
                    item.rating, item.score, item.correction, item.comment,
                    None if item.metadata is None else _encode(item.metadata).decode(), item.choice or 0,
                )
            )  # fmt: skip
        result = await self._write("feedback", "feedback", rows, results)
        for item, res in zip(items, results, strict=True):
            if res.status == "accepted":
                rating = {1: "up", -1: "down"}.get(item.rating or 0, "none")
                adapter = adapter_label(project, self._adapters.get((project, item.log_id)))
                self._metrics.feedback.labels(project, adapter, rating).inc()
        return result

    def remember_adapter(self, project: str, log_id: str, adapter: str | None) -> None:
        self._adapters[(project, log_id)] = adapter
        if len(self._adapters) > 200_000:
            self._adapters.popitem(last=False)

    async def _write(
        self, table: str, kind: str, rows: list[Any], results: list[ItemResult]
    ) -> CaptureResult:
        try:
            stored = iter(await self._writer.write(table, rows) if rows else [])  # type: ignore[arg-type]
        except WriterSaturated:
            self._metrics.ingest_outcomes[kind, "throttled"].inc(len(rows))
            raise
        counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        for res in results:
            if res.status == "accepted" and not next(stored):
                res.status = "duplicate"
            counts[res.status] += 1
        for status, n in counts.items():
            if n:
                self._metrics.ingest_outcomes[kind, status].inc(n)
        if table == "logs":
            for row in rows:
                self.remember_adapter(row.project, row.id, row.adapter)
        return CaptureResult(counts["accepted"], counts["duplicate"], counts["rejected"], results)


def log_row(
    project: str,
    log_id: str,
    created_at: datetime,
    received_at: datetime,
    source: str,
    adapter: str | None,
    request: str,
    response: str,
    normalized: NormalizedLog | None,
    *,
    end_user: str | None = None,
    latency_ms: float | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> LogRow:
    """A `logs` row from raw bodies (JSON text) and their normalisation. `normalized` None: the
    shape module could not read them (a gateway answer is stored all the same, quarantined);
    `end_user` is then the one the caller knows."""
    return LogRow(
        project, log_id, created_at, received_at, source, adapter, request, response, latency_ms,
        prompt_tokens, completion_tokens, normalized.end_user if normalized else end_user,
        None if metadata is None else _encode(metadata).decode(), *normalized_columns(normalized),
    )  # fmt: skip
