"""OpenAI fine-tuning JSONL files, chat and preference, read into Ratchet's log lines and back.

https://platform.openai.com/docs/api-reference/fine-tuning/chat-input and
https://platform.openai.com/docs/api-reference/fine-tuning/preference-input:

- **chat** (supervised): `{"messages": [...], "tools": [...], "parallel_tool_calls": bool}`; the
  messages end with the assistant's answer (text, tool calls, or a `refusal`); an assistant
  message may carry `weight` 0 or 1 (0: not trained on; without one OpenAI trains on every
  assistant turn). A row is one log whose answer is the last message, liked (rating +1: the file
  is a set of examples to learn from) unless that answer has `weight: 0`. Earlier assistant turns
  stay in the prompt; the weights given are kept in the log's `metadata.openai_fine_tuning` so an
  export writes them back. An export weights every assistant turn: the answer 1 when it is to be
  learnt (liked and sound, or replaced by a correction), earlier turns 0 unless imported with 1.
- **preference** (DPO): `{"input": {"messages": [...], "tools": [...], "parallel_tool_calls": bool},
  "preferred_output": [assistant message], "non_preferred_output": [assistant message]}`. A row is
  one log whose answer is the non-preferred output, disliked (rating -1), with the preferred output
  as its correction: Ratchet's own preference pair (correction over answer). A preferred output
  must be text (a correction is text).

`chat_line` / `preference_line` read one row into a `formats.logfile.LogLine` (raising
`FineTuningError` naming the field); `chat_row` / `preference_row` write a `LogLine` as a row
(None when the line cannot be one: a completions log, an empty answer, no correction for a
preference).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

from formats.chat import Tool
from formats.logfile import LogLine

FileFormat = Literal["openai-chat", "openai-preference"]
METADATA_KEY = "openai_fine_tuning"


class FineTuningError(ValueError):
    """A row that is not a valid OpenAI fine-tuning row; `field` is its path in the row."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field


class ChatRow(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    messages: list[dict[str, Any]]
    tools: list[Tool] | None = None
    parallel_tool_calls: bool | None = None


class PreferenceInput(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    messages: list[dict[str, Any]]
    tools: list[Tool] | None = None
    parallel_tool_calls: bool | None = None


class PreferenceRow(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    input: PreferenceInput
    preferred_output: list[dict[str, Any]]
    non_preferred_output: list[dict[str, Any]]


_decode_chat = msgspec.json.Decoder(ChatRow).decode
_decode_preference = msgspec.json.Decoder(PreferenceRow).decode


def _decoded(decode: Any, raw: bytes) -> Any:
    try:
        return decode(raw)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `")
        raise FineTuningError(message, where.rstrip("`").removeprefix("$.") or "$") from None
    except msgspec.DecodeError as exc:
        raise FineTuningError(f"not valid JSON: {exc}", "$") from None


def detect(raw: bytes) -> FileFormat | None:
    """The format a row is in when that is unambiguous: `input` + `preferred_output` is
    preference; `messages` with `weight` on a message or `parallel_tool_calls` is chat. A row of
    only `messages` (and `tools`) is also Ratchet's own line: None."""
    try:
        row = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(row, dict):
        return None
    if "input" in row and "preferred_output" in row:
        return "openai-preference"
    messages = row.get("messages")
    if isinstance(messages, list) and (
        "parallel_tool_calls" in row or any(isinstance(m, dict) and "weight" in m for m in messages)
    ):
        return "openai-chat"
    return None


def _strip_weights(messages: list[dict[str, Any]], where: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    stripped, weights = [], {}
    for i, m in enumerate(messages):
        if "weight" not in m:
            stripped.append(m)
            continue
        weight = m["weight"]
        if m.get("role") != "assistant":
            raise FineTuningError("only assistant messages carry a `weight`", f"{where}[{i}].weight")
        if weight not in (0, 1) or isinstance(weight, bool):
            raise FineTuningError("`weight` is 0 or 1", f"{where}[{i}].weight")
        weights[str(i)] = int(weight)
        stripped.append({k: v for k, v in m.items() if k != "weight"})
    return stripped, weights


def _answer(messages: list[dict[str, Any]], where: str) -> None:
    if len(messages) < 2:
        raise FineTuningError("needs the prompt and the assistant's answer", where)
    last = messages[-1]
    if last.get("role") != "assistant" or not (
        last.get("content") or last.get("tool_calls") or last.get("refusal")
    ):
        raise FineTuningError(
            "the last message must be the assistant's answer (text, tool calls or a refusal)",
            f"{where}[{len(messages) - 1}]",
        )


def chat_line(raw: bytes) -> LogLine:
    """A chat row as Ratchet's log line (see the module docstring)."""
    row = _decoded(_decode_chat, raw)
    messages, weights = _strip_weights(row.messages, "messages")
    _answer(messages, "messages")
    extra: dict[str, Any] = {}
    if weights:
        extra["weights"] = weights
    if row.parallel_tool_calls is not None:
        extra["parallel_tool_calls"] = row.parallel_tool_calls
    liked = weights.get(str(len(messages) - 1), 1) == 1
    return LogLine(
        messages=messages,
        tools=row.tools,
        finish_reason="tool_calls" if messages[-1].get("tool_calls") else None,
        metadata={METADATA_KEY: extra} if extra else None,
        rating=1 if liked else None,
    )


def preference_line(raw: bytes) -> LogLine:
    """A preference row as Ratchet's log line: the non-preferred answer, rated -1, corrected by
    the preferred one."""
    row = _decoded(_decode_preference, raw)
    for name in ("preferred_output", "non_preferred_output"):
        output = getattr(row, name)
        if len(output) != 1 or output[0].get("role") != "assistant":
            raise FineTuningError("must be one assistant message", name)
    preferred = row.preferred_output[0].get("content")
    if not isinstance(preferred, str) or not preferred:
        raise FineTuningError(
            "must be text: Ratchet keeps the preferred answer as a correction (tool calls cannot be one)",
            "preferred_output[0].content",
        )
    messages = [*row.input.messages, row.non_preferred_output[0]]
    _answer(messages, "input.messages")
    extra = (
        {}
        if row.input.parallel_tool_calls is None
        else {"parallel_tool_calls": row.input.parallel_tool_calls}
    )
    return LogLine(
        messages=messages,
        tools=row.input.tools,
        finish_reason="tool_calls" if messages[-1].get("tool_calls") else None,
        metadata={METADATA_KEY: extra} if extra else None,
        rating=-1,
        correction=preferred,
    )


def chat_row(line: LogLine) -> dict[str, Any] | None:
    """A log line as a chat row, every assistant turn weighted as OpenAI's format defines: the
    answer (the correction's text if the line has one) 1 when corrected, or liked with no
    `LogLine.answer_problem` (an interrupted, cut, filtered or failed answer is never a trained
    one, as in snapshots), else 0; earlier turns 0 (they are context) unless an import gave them
    a weight. None for a completions log and for an empty answer without a correction."""
    if not line.messages:
        return None
    problem = line.answer_problem()
    if problem == "empty" and not line.correction:
        return None
    extra = (line.metadata or {}).get(METADATA_KEY) or {}
    weights: dict[str, int] = extra.get("weights") or {}
    messages = [dict(m) for m in line.messages]
    last = len(messages) - 1
    for index, message in enumerate(messages[:last]):
        if message.get("role") == "assistant":
            message["weight"] = weights.get(str(index), 0)
    if line.correction:
        messages[last] = {"role": "assistant", "content": line.correction, "weight": 1}
    else:
        messages[last]["weight"] = 1 if line.rating == 1 and problem is None else 0
    row: dict[str, Any] = {"messages": messages}
    if line.tools:
        row["tools"] = msgspec.to_builtins(line.tools)
    if "parallel_tool_calls" in extra:
        row["parallel_tool_calls"] = extra["parallel_tool_calls"]
    return row


def preference_row(line: LogLine) -> dict[str, Any] | None:
    """A log line with a correction as a preference row (the correction preferred over the
    answer); None for any other line, and for an empty answer (OpenAI refuses an empty output)."""
    if not line.messages or not line.correction or line.answer_problem() == "empty":
        return None
    extra = (line.metadata or {}).get(METADATA_KEY) or {}
    row_input: dict[str, Any] = {"messages": line.messages[:-1]}
    if line.tools:
        row_input["tools"] = msgspec.to_builtins(line.tools)
    if "parallel_tool_calls" in extra:
        row_input["parallel_tool_calls"] = extra["parallel_tool_calls"]
    return {
        "input": row_input,
        "preferred_output": [{"role": "assistant", "content": line.correction}],
        "non_preferred_output": [line.messages[-1]],
    }
