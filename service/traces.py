"""OpenTelemetry traces in: GenAI inference spans become logs, evaluation events become feedback.

`POST /v1/traces` (OTLP/HTTP) hands its body here. The payload is decoded by `formats.otlp`, each
span read by `formats.genai`; what comes out is the same `LogIn` / `FeedbackIn` a client could have
posted to `/v1/logs` and `/v1/feedback`, checked by the same decoders and written by the same
`Capture` (so the same shape module, the same group-commit writer, durable before the answer).

- A GenAI inference span is a log with id `gen_ai.response.id` (the id the app already holds for
  the answer), else `otel-<trace id>-<span id>`; its end user is `user.id` / `enduser.id`; its
  `metadata.otel` keeps the trace and span ids, the dialect and the resource's `service.name`.
  Re-exporting a span is a duplicate, never a second row.
- A `gen_ai.evaluation.result` is feedback on its target log (module docstring of
  `formats.genai`; a target named by span alone is found among this export's spans, else among
  the logs stored from earlier exports, whatever their id): `score.value` in [0, 1] is the score (-1 outside it without a label is a
  thumbs-down); a `score.label` Ratchet knows (`pass`/`fail`, `correct`/`incorrect`,
  `relevant`/`not_relevant`, `good`/`bad`, ...) is the rating; `explanation` is the comment;
  the evaluation's name goes into the feedback's metadata. Its id is derived from the event, so a
  re-export changes nothing.
- Any other span is acknowledged and dropped, counted in `ratchet_otlp_spans_total{outcome="dropped"}`.
- An inference span or evaluation that cannot be stored is counted in the OTLP partial success
  (`rejected_spans`) with the first reasons in `error_message`; the rest are stored.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from formats import genai, otlp
from service.capture import Capture, Rejected, decode_item, inflated
from service.domain import FeedbackIn, LogIn
from service.errors import MalformedPayload
from service.metrics import Metrics

SpanLookup = Callable[[str, list[tuple[str, str]]], dict[tuple[str, str], tuple[str, str | None]]]
"""(project, [(trace id, span id)]) -> the stored logs of those spans: (log id, end user) by span."""
INFLATE_FACTOR = 16
"""A gzip body may inflate to this many times `max_body_bytes` (GenAI text compresses ~10x)."""
POSITIVE_LABELS = frozenset(
    {"pass", "passed", "correct", "relevant", "good", "positive", "thumbs_up", "up", "yes", "true",
     "helpful", "accept", "accepted", "like", "liked"}
)  # fmt: skip
NEGATIVE_LABELS = frozenset(
    {"fail", "failed", "incorrect", "not_relevant", "irrelevant", "bad", "negative", "thumbs_down",
     "down", "no", "false", "unhelpful", "reject", "rejected", "dislike", "disliked"}
)  # fmt: skip
_encode = msgspec.json.encode


class TraceResult(msgspec.Struct, kw_only=True):
    """What one export did: spans by outcome, evaluations stored, and the OTLP partial success
    (`rejected` spans and evaluations, `message` naming the first reasons)."""

    logged: int = 0
    duplicates: int = 0
    dropped: int = 0
    rejected: int = 0
    feedback: int = 0
    message: str = ""


def decode_export(
    body: bytes, content_type: str | None, content_encoding: str | None, max_body_bytes: int
) -> tuple[otlp.Encoding, list[otlp.Span]]:
    """The encoding and spans of an OTLP/HTTP trace export; raises `MalformedPayload` (400), or
    `BodyTooLarge` (413) for a body that inflates past its limit."""
    try:
        encoding = otlp.encoding_of(content_type)
        data = inflated(body, content_encoding, max_body_bytes * INFLATE_FACTOR)
        return encoding, otlp.decode_spans(otlp.parse_request(data, encoding))
    except otlp.PayloadError as exc:
        raise MalformedPayload(exc.message, "body") from None


def resource_project(spans: Sequence[otlp.Span]) -> str | None:
    """The project the spans' resources name (`ratchet.project`), if any; raises
    `MalformedPayload` if they name more than one."""
    named = {
        s.resource["ratchet.project"] for s in spans if isinstance(s.resource.get("ratchet.project"), str)
    }
    if len(named) > 1:
        raise MalformedPayload(
            f"one export names several projects ({', '.join(sorted(named))}): export each project separately",
            "resource.ratchet.project",
        )
    return next(iter(named), None)


async def ingest_spans(
    capture: Capture,
    metrics: Metrics,
    project: str,
    spans: Sequence[otlp.Span],
    *,
    max_batch_items: int,
    may_attribute: bool,
    stored_spans: SpanLookup | None = None,
) -> TraceResult:
    """Store the GenAI inference spans of an export as logs, then its evaluations as feedback;
    returns what happened (see the module docstring). `stored_spans` finds the logs of spans
    exported earlier (an evaluation that names its target by span alone; called off the event
    loop, only for such evaluations)."""
    result = TraceResult()
    problems: list[str] = []
    logs: list[LogIn | Rejected] = []
    span_logs: dict[tuple[str, str], tuple[str, str | None]] = {}
    evaluations: list[genai.Evaluation] = []
    for span in spans:
        evaluations.extend(genai.evaluations(span))
        try:
            chat = genai.read_span(span)
        except genai.SpanError as exc:
            result.rejected += 1
            problems.append(f"span {span.span_id} ({span.name}): {exc}")
            continue
        if chat is None:
            result.dropped += 1
            continue
        span_logs[(span.trace_id, span.span_id)] = (chat.log_id, chat.end_user)
        logs.append(decode_item(_encode(_log_item(span, chat)), LogIn))
    for chunk in _chunks(logs, max_batch_items):
        written = await capture.write_logs(project, chunk, source="otlp")
        result.logged += written.accepted
        result.duplicates += written.duplicates
        result.rejected += written.rejected
        problems.extend(r.error or "" for r in written.results if r.status == "rejected")
    earlier = {
        (e.trace_id, e.span_id) for e in evaluations
        if e.response_id is None and (e.trace_id, e.span_id) not in span_logs
    }  # fmt: skip
    if earlier and stored_spans is not None:
        span_logs.update(await asyncio.to_thread(stored_spans, project, sorted(earlier)))
    feedback: list[FeedbackIn | Rejected] = []
    for evaluation in evaluations:
        item = _feedback_item(evaluation, span_logs)
        if isinstance(item, str):
            result.rejected += 1
            problems.append(item)
            continue
        feedback.append(decode_item(_encode(item), FeedbackIn))
    for chunk in _chunks(feedback, max_batch_items):
        written = await capture.write_feedback(project, chunk, may_attribute=may_attribute)
        result.feedback += written.accepted + written.duplicates
        result.rejected += written.rejected
        problems.extend(r.error or "" for r in written.results if r.status == "rejected")
    for outcome, n in (("logged", result.logged), ("duplicate", result.duplicates),
                       ("rejected", result.rejected), ("dropped", result.dropped)):  # fmt: skip
        if n:
            metrics.otlp_spans.labels(outcome).inc(n)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        result.message = "; ".join(problems[:3]) + more
    return result


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _time(unix_nano: int) -> str | None:
    if not unix_nano:
        return None
    return datetime.fromtimestamp(unix_nano / 1e9, UTC).isoformat()


def _log_item(span: otlp.Span, chat: genai.SpanChat) -> dict[str, Any]:
    otel = {"trace_id": span.trace_id, "span_id": span.span_id, "dialect": chat.dialect}
    if isinstance(span.resource.get("service.name"), str):
        otel["service"] = span.resource["service.name"]
    item: dict[str, Any] = {
        "id": chat.log_id,
        "request": chat.request,
        "response": chat.response,
        "created_at": _time(span.start_time_unix_nano),
        "end_user": chat.end_user,
        "prompt_tokens": chat.prompt_tokens,
        "completion_tokens": chat.completion_tokens,
        "metadata": {"otel": otel},
    }
    if span.end_time_unix_nano >= span.start_time_unix_nano > 0:
        item["latency_ms"] = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    return {k: v for k, v in item.items() if v is not None}


def _feedback_item(
    evaluation: genai.Evaluation, span_logs: dict[tuple[str, str], tuple[str, str | None]]
) -> dict[str, Any] | str:
    """The `/v1/feedback` item an evaluation stands for, or why it cannot be one."""
    target, log_user = span_logs.get((evaluation.trace_id, evaluation.span_id), (None, None))
    log_id = evaluation.response_id or target or genai.span_log_id(evaluation.trace_id, evaluation.span_id)
    if log_id != target:  # named by response id: the end user of that log, if it came in this export
        log_user = next((user for logged, user in span_logs.values() if logged == log_id), None)
    key = f"{log_id}|{evaluation.trace_id}|{evaluation.span_id}|{evaluation.name}|{evaluation.time_unix_nano}"
    item: dict[str, Any] = {
        "id": f"otel-eval-{hashlib.sha256(key.encode()).hexdigest()[:32]}",
        "log_id": log_id,
        "created_at": _time(evaluation.time_unix_nano),
        "end_user": evaluation.end_user or log_user,
        "metadata": {"evaluation": evaluation.name, "source": "otel"},
    }
    label = (evaluation.label or "").strip().lower()
    if label in POSITIVE_LABELS:
        item["rating"] = 1
    elif label in NEGATIVE_LABELS:
        item["rating"] = -1
    score = evaluation.score
    if score is not None and 0 <= score <= 1:
        item["score"] = score
    elif score == -1 and "rating" not in item:
        item["rating"] = -1
    if evaluation.explanation:
        item["comment"] = evaluation.explanation
    if not any(k in item for k in ("rating", "score", "comment")):
        return (
            f"evaluation {evaluation.name!r} on {log_id}: give gen_ai.evaluation.score.value in [0, 1], "
            f"a score.label Ratchet knows (pass/fail, correct/incorrect, ...), or an explanation"
        )
    return {k: v for k, v in item.items() if v is not None}
