"""The rows capture writes, each named once: its fields are the table's columns, in order.

The Arrow schemas below list the same fields in the same order (checked at import) and the writer
inserts with explicit column lists, so a field can never land in another's column (STYLE.md 17). JSON columns hold text that msgspec
encoded (valid JSON), typed as Arrow's JSON extension so DuckDB stores it without parsing again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import msgspec
import pyarrow as pa

from formats.log import NormalizedLog


class LogRow(NamedTuple):
    """One row of `logs`: the raw bodies as sent, and what `formats.log.normalize` read from them
    (NULL normalised fields and `quarantine='shape_error'` when the shape module could not read a
    gateway answer: the log is kept, never trained on)."""

    project: str
    id: str
    created_at: datetime
    received_at: datetime
    source: str
    adapter: str | None
    request: str
    response: str
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    end_user: str | None
    metadata: str | None
    endpoint: str | None
    messages: str | None
    tools: str | None
    tool_choice: str | None
    response_format: str | None
    answers: str | None
    prompt_sha256: str | None
    quarantine: str | None


class FeedbackRow(NamedTuple):
    """One row of `feedback`: a user's current verdict on one log (`end_user` '' = anonymous);
    `choice` is the answer of an `n > 1` response it is about.

    Capture hands the writer one of these per feedback item as a patch: `fields` names what the
    item carries (`FEEDBACK_FIELDS`, or `withdraw`: clear the verdict), the other value fields are
    the new row's defaults and are ignored when the row exists. `item_ids` holds the item's id;
    the stored row keeps the ids of its last items (`service.store.writer` merges)."""

    project: str
    log_id: str
    end_user: str
    id: str
    created_at: datetime
    received_at: datetime
    rating: int | None
    score: float | None
    correction: str | None
    comment: str | None
    metadata: str | None
    choice: int
    fields: list[str]
    item_ids: list[str]
    rating_at: datetime | None = None
    correction_at: datetime | None = None
    regenerated: bool | None = None
    regenerated_log_id: str | None = None
    edited: str | None = None
    copied: bool | None = None
    events: list[str] | None = None
    attributed: bool = False


FEEDBACK_FIELDS = (
    "rating", "score", "correction", "comment", "metadata", "choice", "regenerated",
    "regenerated_log_id", "edited", "copied", "events",
)  # fmt: skip
"""The feedback fields an item can carry; each is updated only by an item that carries it."""
WITHDRAW = "withdraw"
"""In `FeedbackRow.fields`: the item withdraws the whole verdict (every field but `choice` cleared)."""


_JSON = pa.json_()
_TIME = pa.timestamp("us")
_TEXTS = pa.list_(pa.string())
LOG_SCHEMA = pa.schema(
    [
        ("project", pa.string()), ("id", pa.string()), ("created_at", _TIME), ("received_at", _TIME),
        ("source", pa.string()), ("adapter", pa.string()), ("request", _JSON), ("response", _JSON),
        ("latency_ms", pa.float64()), ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
        ("end_user", pa.string()), ("metadata", _JSON), ("endpoint", pa.string()), ("messages", _JSON),
        ("tools", _JSON), ("tool_choice", _JSON), ("response_format", _JSON), ("answers", _JSON),
        ("prompt_sha256", pa.string()), ("quarantine", pa.string()),
    ]
)  # fmt: skip
FEEDBACK_SCHEMA = pa.schema(
    [
        ("project", pa.string()), ("log_id", pa.string()), ("end_user", pa.string()), ("id", pa.string()),
        ("created_at", _TIME), ("received_at", _TIME), ("rating", pa.int8()), ("score", pa.float64()),
        ("correction", pa.string()), ("comment", pa.string()), ("metadata", _JSON), ("choice", pa.int16()),
        ("fields", _TEXTS), ("item_ids", _TEXTS), ("rating_at", _TIME), ("correction_at", _TIME),
        ("regenerated", pa.bool_()), ("regenerated_log_id", pa.string()), ("edited", pa.string()),
        ("copied", pa.bool_()), ("events", _TEXTS), ("attributed", pa.bool_()),
    ]
)  # fmt: skip
assert LOG_SCHEMA.names == list(LogRow._fields)
assert FEEDBACK_SCHEMA.names == list(FeedbackRow._fields)


_encode = msgspec.json.encode


def _json(value: Any) -> str | None:
    return None if value is None else _encode(value).decode()


def normalized_columns(n: NormalizedLog | None) -> tuple[Any, ...]:
    """The values of `LogRow`'s normalised fields, `endpoint` to `quarantine`, in order.
    `n` None (the shape module could not read the bodies): all NULL, quarantined `shape_error`."""
    if n is None:
        return (None,) * 7 + ("shape_error",)
    return (
        n.endpoint, _json(n.messages), _json(n.tools), _json(n.tool_choice), _json(n.response_format),
        _json(n.answers), n.prompt_sha256, n.quarantine,
    )  # fmt: skip
