"""Capture: turn inbound logs and feedback into rows, write them durably, say what happened.

Each item of a batch is validated on its own: a bad item is reported `rejected` with the
reason while the others are written (partial success is a 2xx that lists what was rejected).
A log is normalised here, once (`formats.log.normalize`), into the typed columns training reads.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET

from formats.chat import ShapeError
from formats.content_coding import ContentCodingError, InflatedTooLarge, decompress
from formats.log import NormalizedLog, normalize
from service.clock import to_utc, utcnow
from service.domain import CaptureResult, FeedbackBatchIn, FeedbackIn, ItemResult, LogBatchIn, LogIn
from service.errors import BodyTooLarge, InvalidInput, MalformedPayload, NestedTooDeeply, WriterSaturated
from service.metrics import Metrics
from service.store.rows import WITHDRAW, FeedbackRow, LogRow, UpstreamFailureRow, normalized_columns
from service.store.writer import GroupCommitWriter

_encode = msgspec.json.encode
log = logging.getLogger("ratchet.capture")


def new_log_id() -> str:
    return f"log-{uuid.uuid4().hex}"


def adapter_label(project: str, adapter: str | None, base_served_name: str | None = None) -> str:
    """The one bounded metric label for the version that answered, in every metric that has one:
    `v3` for `project@v3`, `base` for the base model (`base_served_name`), `none` when no
    version is known, `other` for anything else."""
    if adapter is None:
        return "none"
    if adapter == base_served_name:
        return "base"
    match = re.fullmatch(rf"{re.escape(project)}@(v\d+)", adapter)
    return match.group(1) if match else "other"


class Rejected(msgspec.Struct, frozen=True):
    """An item of a batch that could not be decoded or validated: the field at fault (its path in
    the item, e.g. `rating` or `request.messages[0].role`; `$` for the item as a whole) and why."""

    field: str
    message: str


def decode_logs(body: bytes) -> list[LogIn | Rejected]:
    """Decode `POST /v1/logs`: one log, `{"logs": [...]}` or a JSON array of logs. A batch item that
    does not decode is a `Rejected` in its place; a body that is not JSON, or one log that does not
    decode, raises (`InvalidInput` or a msgspec error naming the field)."""
    return _decode_one_or_batch(body, "logs", LogIn, LogBatchIn)


def decode_feedback(body: bytes) -> list[FeedbackIn | Rejected]:
    """Decode `POST /v1/feedback`: one item, `{"feedback": [...]}` or a JSON array of items."""
    return _decode_one_or_batch(body, "feedback", FeedbackIn, FeedbackBatchIn)


class _Peek(msgspec.Struct):
    logs: msgspec.Raw = msgspec.Raw()
    feedback: msgspec.Raw = msgspec.Raw()


class _LogsEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    logs: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1)]


class _FeedbackEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    feedback: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1)]


_peek = msgspec.json.Decoder(_Peek | list[msgspec.Raw])
_envelopes: dict[str, msgspec.json.Decoder[Any]] = {
    "logs": msgspec.json.Decoder(_LogsEnvelope),
    "feedback": msgspec.json.Decoder(_FeedbackEnvelope),
}
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


def _decoder(type_: type) -> msgspec.json.Decoder[Any]:
    return _decoders.get(type_) or _decoders.setdefault(type_, msgspec.json.Decoder(type_))


def _decode_one_or_batch(body: bytes, key: str, one: type, batch: type) -> list[Any]:
    try:
        try:
            return _decode_items(body, key, one, batch)
        except msgspec.DecodeError:
            repaired = without_lone_surrogates(body)
            if repaired is body:
                raise
            return _decode_items(repaired, key, one, batch)
    except RecursionError:
        raise NestedTooDeeply() from None


def without_lone_surrogates(body: bytes) -> bytes:
    """`body` with each `\\uXXXX` escape of half a surrogate pair replaced by `\\ufffd` (U+FFFD,
    the replacement character), or `body` itself if it has none. JSON's grammar allows such
    escapes but they name no character (RFC 8259 section 8.2), and msgspec refuses the whole body:
    Python's `json.dumps` writes one for an emoji cut in half, so one truncated string would cost
    its whole batch."""
    if b"\\u" not in body:
        return body
    repaired = _ESCAPE.sub(_replace_lone_surrogate, body)
    return body if repaired == body else repaired


# An escaped backslash (`\\` in the JSON text) is matched whole, so in `\\ud83d` (a backslash, then the
# text `ud83d`) nothing is replaced.
_ESCAPE = re.compile(
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?|\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _replace_lone_surrogate(m: re.Match[bytes]) -> bytes:
    escape = m.group()
    return escape if len(escape) in (2, 12) else b"\\ufffd"


def _decode_items(body: bytes, key: str, one: type, batch: type) -> list[Any]:
    if not body.strip():
        raise InvalidInput("the request body is empty: send JSON", "body")
    try:
        peeked = _peek.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidInput(
            f"the body must be a JSON object (one item, or {{{key!r}: [...]}}) or an array of items: {exc}",
            "body",
        ) from None
    if isinstance(peeked, list):
        if not peeked:
            raise InvalidInput("the array holds no items", "body")
        return [decode_item(bytes(raw), one) for raw in peeked]
    if not len(getattr(peeked, key)):
        return [_decoder(one).decode(body)]
    try:  # the common case, decoded in one go
        return list(getattr(_decoder(batch).decode(body), key))
    except msgspec.ValidationError:
        pass  # some item is bad: decode them one by one, so it costs only itself
    envelope = _envelopes[key].decode(body)
    return [decode_item(bytes(raw), one) for raw in getattr(envelope, key)]


def decode_item(raw: bytes, type_: type) -> Any:
    """One item decoded with the API's own rules, or a `Rejected` naming the field at fault."""
    try:
        item = _decoder(type_).decode(raw)
    except msgspec.ValidationError as exc:
        return rejected_by(exc)
    except msgspec.DecodeError as exc:
        return Rejected("$", f"not valid JSON: {exc}")
    if isinstance(item, FeedbackIn):
        return check_feedback(item) or item
    return item


def rejected_by(exc: msgspec.ValidationError) -> Rejected:
    """msgspec says "Expected `int`, got `str` - at `$.rating`" or "Object contains unknown field
    `x` - at `$`": the field, as a path in the item, and the message."""
    text = str(exc)
    message, _, where = text.partition(" - at `")
    path = where.rstrip("`") or "$"
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        path = f"{path}.{unknown.group(1)}"
    if message.startswith("Invalid enum value") and path.endswith(".rating"):
        message += ": a rating is 1 (thumbs up) or -1 (thumbs down); a graded value goes in `score`"
    return Rejected(path.removeprefix("$.") if path != "$" else "$", message)


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]*)`")
_KIND_FIELD = {"edited": "edited_text", "event": "event", "regenerated": "regenerated_log_id"}


def check_feedback(item: FeedbackIn) -> Rejected | None:
    """The rules a decoded feedback item must also meet: it carries something, and the fields of
    an implicit kind come with that kind (`edited_text` with `edited`, `event` with `event`)."""
    carried = [f for f in _FEEDBACK_VALUES if getattr(item, f) is not UNSET]
    if not carried:
        return Rejected("$", "give at least one of rating, score, correction, comment or kind")
    for kind, field in _KIND_FIELD.items():
        given = getattr(item, field) is not UNSET
        if given and item.kind != kind:
            return Rejected(field, f"`{field}` goes with kind `{kind}`")
        if item.kind == kind and not given and kind != "regenerated":
            return Rejected(field, f"kind `{kind}` needs `{field}`")
    if item.kind == "regenerated" and item.regenerated_log_id == item.log_id:
        # With `regenerated_pairs` the replacement becomes the preferred answer of a pair: a log
        # preferred over itself is no pair, and the regenerate's thumbs-down would hit it too.
        return Rejected("regenerated_log_id", "names the rated log itself: give the id of the new answer")
    for field in ("correction", "edited_text"):
        value = getattr(item, field)
        if isinstance(value, str) and not value.strip():
            # A blank answer would become a training target that teaches the model to say nothing.
            return Rejected(field, f"`{field}` is blank: send the answer's text, or null to clear it")
    return None


def check_log(item: LogIn) -> Rejected | None:
    """The rules a decoded log must also meet: its bodies are an OpenAI chat or completions
    request and response (`formats.log.normalize`)."""
    try:
        normalize(bytes(item.request), bytes(item.response), end_user=item.end_user)
    except ShapeError as exc:
        return Rejected(exc.field, exc.message)
    return None


_FEEDBACK_VALUES = ("rating", "score", "correction", "comment", "kind")


def feedback_patch(
    project: str, item: FeedbackIn, fid: str, now: datetime, *, attributed: bool
) -> FeedbackRow:
    """The writer's patch for one checked feedback item: the fields it carries, and its id."""
    values: dict[str, Any] = {
        f: getattr(item, f)
        for f in ("rating", "score", "correction", "comment", "choice")
        if getattr(item, f) is not UNSET
    }
    if item.metadata is not UNSET:
        values["metadata"] = None if item.metadata is None else _encode(item.metadata).decode()
    if item.kind == "regenerated":
        values["regenerated"] = True
        if item.regenerated_log_id is not UNSET:
            values["regenerated_log_id"] = item.regenerated_log_id
    elif item.kind == "edited":
        values["edited"] = item.edited_text
    elif item.kind == "copied":
        values["copied"] = True
    elif item.kind == "event":
        values["events"] = [item.event]
    row = FeedbackRow(
        project, item.log_id, item.end_user or "", fid, to_utc(item.created_at, now), now,
        None, None, None, None, None, 0, list(values), [fid], attributed=attributed,
    )  # fmt: skip
    return row._replace(
        **values,
        rating_at=now if values.get("rating") is not None else None,
        correction_at=now if values.get("correction") is not None else None,
    )


class Capture:
    """Writes logs and feedback for a project through the group-commit writer."""

    def __init__(
        self,
        writer: GroupCommitWriter,
        metrics: Metrics,
        *,
        max_batch_items: int,
        base_served_name: str | None = None,
        adapters_of: Callable[[str, list[str]], dict[str, str | None]] | None = None,
    ) -> None:
        """`adapters_of(project, log_ids)`: the stored logs' adapters (a read, run in a thread),
        for feedback on logs this process has not seen (written before a restart); without it
        their feedback is counted as `adapter="none"`."""
        self._writer = writer
        self._metrics = metrics
        self._max_batch_items = max_batch_items
        self._base_served_name = base_served_name
        self._adapters_of = adapters_of
        # Which adapter answered a recent log, so feedback metrics carry the version without a read.
        self._adapters: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._accepted_logs = metrics.ingest_outcomes["log", "accepted"]

    def check_size(self, items: Sequence[Any]) -> None:
        if len(items) > self._max_batch_items:
            raise InvalidInput(
                f"a batch holds at most {self._max_batch_items} items, got {len(items)}: split it", "batch"
            )

    async def write_logs(
        self, project: str, items: Sequence[LogIn | Rejected], source: str = "api"
    ) -> CaptureResult:
        """Validate and durably store logs; duplicates of an existing id are no-ops. A `Rejected`
        item (or one whose bodies are not OpenAI's shape) is reported and costs only itself."""
        self.check_size(items)
        now = utcnow()
        rows, results = [], []
        for i, item in enumerate(items):
            if isinstance(item, Rejected):
                results.append(_rejected(i, "logs", item))
                continue
            log_id = item.id or new_log_id()
            try:
                row = self.log_row(project, item, log_id, now, source)
            except ShapeError as exc:
                results.append(_rejected(i, "logs", Rejected(exc.field, exc.message), item.id))
                continue
            results.append(ItemResult(i, "accepted", log_id))
            rows.append(row)
        return await self._write("logs", "log", rows, results)

    def submit_log_row(self, row: LogRow) -> None:
        """Queue a row built from a parsed body (the gateway's, after its answer) for a group
        commit within the writer's linger, without waiting for it. Raises `WriterSaturated`."""
        self._writer.submit("logs", (row,))
        self._accepted_logs.inc()

    def submit_upstream_failure(
        self, project: str, adapter: str, reason: str, log_id: str | None = None
    ) -> None:
        """Queue the record of a gateway request vLLM failed or refused, charged to `adapter` (what
        the online gate's error-rate guard counts), like a gateway log: committed within the
        writer's linger, nobody waits. A saturated writer drops it (logged): a request must not
        fail twice."""
        row = UpstreamFailureRow(project, f"uf-{uuid.uuid4().hex}", utcnow(), adapter, reason, log_id)
        try:
            self._writer.submit("upstream_failures", (row,))
        except WriterSaturated:
            log.warning(
                "upstream failure of %s on %s not recorded: the writer is saturated", project, adapter
            )

    async def flush(self) -> None:
        """Wait until every row submitted so far is committed (or its commit failed)."""
        await self._writer.write("logs", ())

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

    async def write_feedback(
        self, project: str, items: Sequence[FeedbackIn | Rejected], *, may_attribute: bool = True
    ) -> CaptureResult:
        """Store feedback items: each updates only the fields it carries of the verdict of its
        (log, end user); an item that changes nothing (a retry) is a `duplicate`. `may_attribute`:
        the key may name an end user other than the log's (snapshots trust the log's otherwise)."""
        self.check_size(items)
        now = utcnow()
        rows, results, taken = [], [], []
        for i, item in enumerate(items):
            if isinstance(item, Rejected):
                results.append(_rejected(i, "feedback", item))
                continue
            if problem := check_feedback(item):
                results.append(_rejected(i, "feedback", problem, item.id))
                continue
            fid = item.id or f"fb-{uuid.uuid4().hex}"
            results.append(ItemResult(i, "accepted", fid))
            rows.append(feedback_patch(project, item, fid, now, attributed=may_attribute))
            taken.append(item)
        result = await self._write("feedback", "feedback", rows, results)
        counted = [
            item
            for item, res in zip(taken, (r for r in results if r.status != "rejected"), strict=True)
            if res.status == "accepted"
        ]
        await self._recall_adapters(project, [item.log_id for item in counted])
        for item in counted:
            adapter = adapter_label(
                project, self._adapters.get((project, item.log_id)), self._base_served_name
            )
            if item.rating is not UNSET or item.kind is UNSET:
                rating = {1: "up", -1: "down"}.get(item.rating or 0, "none")  # type: ignore[arg-type]
                self._metrics.feedback.labels(project, adapter, rating).inc()
            if item.kind is not UNSET:
                self._metrics.implicit_feedback.labels(project, item.kind).inc()
        return result

    async def withdraw_feedback(self, project: str, log_id: str, end_user: str, now: datetime) -> bool:
        """Clear the verdict of (log, end user) through the writer, like any feedback write;
        whether it held anything."""
        patch = FeedbackRow(project, log_id, end_user, f"fb-{uuid.uuid4().hex}", now, now,
                            None, None, None, None, None, 0, [WITHDRAW], [])  # fmt: skip
        (changed,) = await self._writer.write("feedback", [patch])
        return changed

    async def _recall_adapters(self, project: str, log_ids: list[str]) -> None:
        """Read from the store which adapter answered the logs not in the cache (logs written
        before a restart, or long ago), off the event loop; remember those found."""
        missing = list(dict.fromkeys(i for i in log_ids if (project, i) not in self._adapters))
        if not missing or self._adapters_of is None:
            return
        for log_id, adapter in (await asyncio.to_thread(self._adapters_of, project, missing)).items():
            self.remember_adapter(project, log_id, adapter)

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


def _rejected(index: int, key: str, why: Rejected, item_id: str | None = None) -> ItemResult:
    field = f"{key}[{index}]" + ("" if why.field == "$" else f".{why.field}")
    return ItemResult(index, "rejected", item_id, f"{field}: {why.message}", field)


def inflated(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """A request body as sent before its `Content-Encoding`, at most `limit` bytes inflated:
    `BodyTooLarge` (413) past that, as a plain body over its limit is; `MalformedPayload` (400)
    for another coding or a corrupt stream. Shared by every endpoint that reads gzip bodies."""
    try:
        return decompress(body, content_encoding, limit)
    except InflatedTooLarge as exc:
        raise BodyTooLarge(exc.message) from None
    except ContentCodingError as exc:
        raise MalformedPayload(exc.message, "body") from None


MAX_TOKENS_COLUMN = 2**31 - 1
"""The most the logs table's INTEGER token columns hold (LogIn's fields are bounded the same)."""


def storable_tokens(n: int | None) -> int | None:
    """A reported token count as the logs table can hold it: None for a count out of range (a
    server's garbage must never fail a group commit shared with other requests)."""
    return n if n is not None and 0 <= n <= MAX_TOKENS_COLUMN else None


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
    `end_user` is then the one the caller knows. Token counts not given are the response's
    `usage` (each dropped if the column cannot hold it)."""
    usage = normalized.usage if normalized else None
    if prompt_tokens is None and usage is not None:
        prompt_tokens = storable_tokens(usage.prompt_tokens)
    if completion_tokens is None and usage is not None:
        completion_tokens = storable_tokens(usage.completion_tokens)
    return LogRow(
        project, log_id, created_at, received_at, source, adapter, request, response, latency_ms,
        prompt_tokens, completion_tokens, normalized.end_user if normalized else end_user,
        None if metadata is None else _encode(metadata).decode(), *normalized_columns(normalized),
    )  # fmt: skip
