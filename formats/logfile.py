"""Ratchet's own log file: what `ratchet export --format jsonl` writes and `ratchet import` reads.

One JSON object per line: a chat log as OpenAI fine-tuning files write it (`messages`, the answer
last, tool calls and all; `tools`), or a completions log as OpenAI's legacy fine-tuning files did
(`prompt` as sent, `completion` the answer's text), then the log's and its feedback's fields. A file
exported from one Ratchet imports into another unchanged, answer problems included: an answer cut
by length keeps its `finish_reason`, a stopped stream its `metadata.interrupted`, and one ended by
an upstream error event its `error`, so none of them can turn into a positive example on the way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from msgspec import Struct

from formats.chat import TEXT_PART_TYPES, Tool

UTF8_BOM = b"\xef\xbb\xbf"
"""What Windows tools (Notepad, Excel's "CSV UTF-8", PowerShell 5) put before a UTF-8 file's first
line. JSON forbids it (RFC 8259 section 8.1) but allows a reader to ignore it: readers of line
files drop it from the first line."""


class LogLine(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One line: `messages` (OpenAI chat messages, media parts kept as sent; the last is the
    assistant's answer, text or tool calls) for a chat log, or `prompt` and `completion` for a
    completions log. Fields without a value are left out."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | list[Any] | None = None
    """A completions request's `prompt` as sent (text, or token ids)."""
    completion: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    finish_reason: str | None = None
    """The answer's finish reason when it is not `stop` (`length`, `tool_calls`, ...)."""
    error: str | None = None
    """The message of the upstream error event that ended the answer, if one did."""
    id: str | None = None
    created_at: datetime | None = None
    """UTC; exports write it with a `Z`."""
    adapter: str | None = None
    end_user: str | None = None
    """The log's end user (the one the app served)."""
    feedback_end_user: str | None = None
    """The end user who gave the line's feedback (`""`: anonymous), on a line with feedback; one
    log's verdicts by different users are different lines, kept apart again on import. Absent (a
    file from elsewhere, or an older export): the feedback is `end_user`'s."""
    metadata: dict[str, Any] | None = None
    rating: Literal[1, -1] | None = None
    score: float | None = None
    correction: str | None = None
    comment: str | None = None
    regenerated: bool | None = None
    """Implicit feedback (issue 13): the user asked for another answer; `regenerated_log_id`
    names the new one's log when known."""
    regenerated_log_id: str | None = None
    edited_text: str | None = None
    """Implicit feedback: the answer as the user edited it before using it."""
    copied: bool | None = None
    """Implicit feedback: the user copied the answer."""
    events: list[str] | None = None
    """Implicit feedback: the names of the app's own events on the answer (`kind: event`)."""

    def answer_problem(self) -> str | None:
        """Why the line's answer may never be a positive training target, as capture marks it
        (`formats.log.AnswerProblem`, same order): `upstream_error` (an `error`), `interrupted`
        (`metadata.interrupted`), `length` / `content_filter` (its `finish_reason`), `empty` (no
        text, no tool call, no refusal); None for a sound answer."""
        if self.error is not None:
            return "upstream_error"
        if (self.metadata or {}).get("interrupted") is True:
            return "interrupted"
        if self.finish_reason in ("length", "content_filter"):
            return self.finish_reason
        answer = self.messages[-1] if self.messages else {"content": self.completion}
        if (
            not _has_text(answer.get("content"))
            and not answer.get("tool_calls")
            and not answer.get("refusal")
        ):
            return "empty"
        return None


def _has_text(content: Any) -> bool:
    """Whether an OpenAI message `content` (text, or a list of parts) holds more than whitespace."""
    if isinstance(content, str):
        return bool(content.strip())
    if isinstance(content, list):
        return any(
            isinstance(part, dict)
            and (part.get("type") not in TEXT_PART_TYPES or _has_text(part.get(part["type"])))
            for part in content
        )
    return False
