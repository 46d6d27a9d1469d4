"""Langfuse's score API body (`POST /api/public/scores`), read as a Ratchet feedback item.

Apps that already post scores to Langfuse can point its SDK or raw calls at Ratchet instead.
A score names what it judges by `observationId` (the generation) or `traceId`; in Ratchet that is
the log id the app holds (the response id), or, for logs that came in as OpenTelemetry spans
without a response id, the pair (`traceId`, `observationId`) of hex span ids, which names the log
`otel-<traceId>-<observationId>` (`formats.genai.span_log_id`).

Data types (`dataType`; inferred as Langfuse does when absent: a number is NUMERIC, a string
CATEGORICAL):

- NUMERIC: `value` in [0, 1] is the score (other ranges are refused: rescale first);
- BOOLEAN: 1 / 0 (or "true" / "false") is a thumbs-up / thumbs-down;
- CATEGORICAL: a label Ratchet knows (`good`/`bad`, `pass`/`fail`, `correct`/`incorrect`, ...) is
  a thumbs-up / down; any other label is kept as the comment (`name: value`);
- TEXT: the comment; CORRECTION: the correction (the answer that was right).

`comment` is the comment (a TEXT value wins). The score's name, type, value, environment and
config id are kept in the feedback's metadata under `langfuse`.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

from formats.genai import span_log_id

DataType = Literal["NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT", "CORRECTION"]
POSITIVE = frozenset({"pass", "passed", "correct", "relevant", "good", "positive", "thumbs_up", "up", "yes",
                      "true", "helpful", "accept", "accepted", "like", "liked"})  # fmt: skip
NEGATIVE = frozenset({"fail", "failed", "incorrect", "not_relevant", "irrelevant", "bad", "negative",
                      "thumbs_down", "down", "no", "false", "unhelpful", "reject", "rejected", "dislike",
                      "disliked"})  # fmt: skip
_HEX = frozenset("0123456789abcdef")


class ScoreError(ValueError):
    """A score Ratchet cannot take; `field` names the body field to fix."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field


class ScoreBody(Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """The fields of Langfuse's `CreateScoreRequest` Ratchet reads (others are ignored)."""

    name: str
    value: float | str
    id: str | None = None
    trace_id: str | None = None
    observation_id: str | None = None
    session_id: str | None = None
    data_type: DataType | None = None
    comment: str | None = None
    config_id: str | None = None
    environment: str | None = None
    metadata: dict[str, Any] | None = None


def _hex(value: str, length: int) -> bool:
    return len(value) == length and set(value.lower()) <= _HEX


def target_log_id(score: ScoreBody) -> str:
    """The log a score judges (see the module docstring); raises `ScoreError` without one."""
    trace, observation = score.trace_id, score.observation_id
    if trace and observation and _hex(trace, 32) and _hex(observation, 16):
        return span_log_id(trace.lower(), observation.lower())
    if observation or trace:
        return str(observation or trace)
    raise ScoreError("name the log scored: `traceId` or `observationId` (the log id)", "traceId")


def feedback_item(score: ScoreBody) -> dict[str, Any]:
    """The `/v1/feedback` item (as JSON-ready dict, without `id`) a score stands for."""
    kind = score.data_type or ("CATEGORICAL" if isinstance(score.value, str) else "NUMERIC")
    value = score.value
    item: dict[str, Any] = {"log_id": target_log_id(score)}
    if kind == "NUMERIC":
        if isinstance(value, str) or not 0 <= value <= 1:
            raise ScoreError("a NUMERIC score is Ratchet's score in [0, 1]: rescale it", "value")
        item["score"] = float(value)
    elif kind == "BOOLEAN":
        truth = {"1": 1, "1.0": 1, "true": 1, "0": -1, "0.0": -1, "false": -1}.get(str(value).strip().lower())
        if truth is None:
            raise ScoreError("a BOOLEAN score is 1 or 0", "value")
        item["rating"] = truth
    elif kind == "CATEGORICAL":
        label = str(value).strip().lower()
        if label in POSITIVE or label in NEGATIVE:
            item["rating"] = 1 if label in POSITIVE else -1
        else:
            item["comment"] = f"{score.name}: {value}"
    elif kind == "TEXT":
        item["comment"] = str(value)
    else:  # CORRECTION
        if not isinstance(value, str) or not value:
            raise ScoreError("a CORRECTION score's value is the corrected answer's text", "value")
        item["correction"] = value
    if score.comment and "comment" not in item:
        item["comment"] = score.comment
    langfuse = {"name": score.name, "dataType": kind, "value": value, "environment": score.environment,
                "configId": score.config_id}  # fmt: skip
    item["metadata"] = {
        **(score.metadata or {}),
        "langfuse": {k: v for k, v in langfuse.items() if v is not None},
    }
    return item
