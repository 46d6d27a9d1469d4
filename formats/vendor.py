"""What the readers of other tools' exports share: the row they give, their errors, and the
OpenAI chat shapes those exports mostly hold.

A reader (`formats.helicone`, `formats.langfuse_export`, `formats.langsmith`, `formats.openpipe`)
turns one line of a vendor's export into an `ExportRow`: Ratchet's `formats.logfile.LogLine` (the
log, with the feedback the line itself carries), any further feedback items of the line (a
vendor's named scores: one item each), and the keys by which feedback from a second file (Langfuse
scores, LangSmith feedback) joins the row. A line that is valid but no model call (a Langfuse SPAN,
a LangSmith chain run) raises `NotInference`: skipped and counted, not a bad line. A line that
cannot be read raises `VendorError` naming the field to fix.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

import msgspec

from formats.logfile import LogLine

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


class VendorError(ValueError):
    """A line Ratchet cannot read; `field` is its path in the line."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field


class NotInference(Exception):
    """A valid line that records no model call (skipped, counted)."""


class ExportRow(NamedTuple):
    line: LogLine
    feedback: tuple[dict[str, Any], ...] = ()
    """Further `/v1/feedback` items (without `log_id`), e.g. one per named score."""
    join_keys: tuple[str, ...] = ()
    """Keys a second file's feedback names this row by (`FeedbackRef.key`)."""


class FeedbackRef(NamedTuple):
    """One item of a second (feedback) file: the row key it joins and the item's fields."""

    key: str
    item: dict[str, Any]


def decode_object(raw: bytes) -> dict[str, Any]:
    """A line as a JSON object; `VendorError` otherwise."""
    try:
        row = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise VendorError(f"not valid JSON: {exc}", "$") from None
    if not isinstance(row, dict):
        raise VendorError("a line is one JSON object", "$")
    return row


def log_id(vendor_id: Any, prefix: str) -> str:
    """The vendor's id as the log id when Ratchet's id rules allow it, else a stable hash of it."""
    text = str(vendor_id)
    if _ID.match(text):
        return text
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def text_of(value: Any) -> str | None:
    """A string, or the text of a list of content parts; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = [p.get("text") for p in value if isinstance(p.get("text"), str)]
        return "".join(texts) if texts else None
    return None


def chat_answer(response: Any, where: str) -> tuple[dict[str, Any], str | None]:
    """The assistant message and finish reason (when not `stop`) of an OpenAI chat completion
    (`{"choices": [{"message": ...}]}`), a bare assistant message, or an answer's text."""
    if isinstance(response, dict) and isinstance(response.get("choices"), list):
        if not response["choices"] or not isinstance(response["choices"][0], dict):
            raise VendorError("the response has no choice", f"{where}.choices")
        choice = response["choices"][0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise VendorError("the first choice has no `message`", f"{where}.choices[0].message")
        finish = choice.get("finish_reason")
        return _assistant(message, where), (finish if finish not in (None, "stop") else None)
    if isinstance(response, dict) and ("content" in response or "tool_calls" in response):
        return _assistant(response, where), None
    if isinstance(response, str):
        return {"role": "assistant", "content": response}, None
    raise VendorError("no answer: give an OpenAI chat completion, an assistant message or text", where)


def _assistant(message: dict[str, Any], where: str) -> dict[str, Any]:
    answer = {
        k: v for k, v in message.items() if v is not None and k not in ("refusal", "annotations", "audio")
    }
    answer["role"] = "assistant"
    if not answer.get("tool_calls"):
        answer.pop("tool_calls", None)
        if text_of(answer.get("content")) is None:
            raise VendorError("the answer has neither text nor tool calls", where)
    return answer


def chat_messages(value: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI chat messages from a list of them, `{"messages": [...]}`, one message, or a bare
    prompt string (one user turn)."""
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
        where = f"{where}.messages"
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict) and "role" in value:
        value = [value]
    if not isinstance(value, list) or not value:
        raise VendorError("no prompt: give OpenAI chat messages or text", where)
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise VendorError("a message is an object with a `role`", f"{where}[{i}]")
    return [{k: v for k, v in m.items() if v is not None} for m in value]


def request_fields(request: dict[str, Any]) -> dict[str, Any]:
    """The `LogLine` fields an OpenAI chat request carries besides its messages."""
    return {name: request[name] for name in ("tools", "tool_choice", "response_format") if request.get(name)}


def make_line(fields: dict[str, Any], where: str = "$") -> LogLine:
    """A `LogLine` from its fields as JSON values (checked: a wrong type is a `VendorError`)."""
    try:
        return msgspec.convert({k: v for k, v in fields.items() if v is not None}, LogLine)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `")
        raise VendorError(message, at.rstrip("`").removeprefix("$.") or where) from None
