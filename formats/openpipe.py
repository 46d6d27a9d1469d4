"""OpenPipe dataset files (JSONL), read as Ratchet log lines.

docs.openpipe.ai/features/datasets/uploading-data: each line is an OpenAI chat fine-tuning row,
`messages` (ending with the assistant's answer), optional `tools` and `tool_choice` (and the
deprecated `functions` / `function_call`, refused here: convert them to tools), plus OpenPipe's
own optional fields: `split` (`TRAIN` or `TEST`) and `rejected_message` (an assistant message
rejected in favour of the row's answer, for DPO). Other OpenAI request parameters (`temperature`,
...) are allowed and ignored, as OpenPipe ignores them.

A row without `rejected_message` is one log whose answer is the last message, liked (rating +1:
the dataset is examples to learn from). A row with one is a preference, as
`formats.finetuning` reads OpenAI's: one log whose answer is the rejected message, disliked, with
the row's answer as its correction (which must be text). `split` is kept in the log's metadata
(`openpipe.split`); a TEST row is stored like any other.
"""

from __future__ import annotations

from typing import Any

from formats.vendor import (
    ExportRow,
    VendorError,
    chat_answer,
    chat_messages,
    decode_object,
    make_line,
    text_of,
)

SPLITS = ("TRAIN", "TEST")


def detect(row: dict[str, Any]) -> bool:
    return isinstance(row.get("messages"), list) and ("split" in row or "rejected_message" in row)


def read_row(raw: bytes) -> ExportRow:
    """One dataset row as a log line (see the module docstring)."""
    row = decode_object(raw)
    for old in ("functions", "function_call"):
        if old in row:
            raise VendorError("deprecated: give `tools` / `tool_choice` instead", old)
    messages = chat_messages(row.get("messages"), "messages")
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise VendorError("must end with the assistant's answer", f"messages[{len(messages) - 1}]")
    answer, _ = chat_answer(messages[-1], f"messages[{len(messages) - 1}]")
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise VendorError("TRAIN or TEST", "split")
    fields: dict[str, Any] = {
        "tools": row.get("tools"),
        "tool_choice": row.get("tool_choice"),
        "metadata": {"openpipe": {"split": split}} if split else None,
    }
    rejected = row.get("rejected_message")
    if rejected is None:
        fields |= {"messages": [*messages[:-1], answer], "rating": 1}
    else:
        preferred = text_of(answer.get("content"))
        if not preferred or answer.get("tool_calls"):
            raise VendorError(
                "with a `rejected_message`, the answer must be text: Ratchet keeps it as a correction",
                f"messages[{len(messages) - 1}].content",
            )
        worse, _ = chat_answer(rejected, "rejected_message")
        fields |= {"messages": [*messages[:-1], worse], "rating": -1, "correction": preferred}
    last = fields["messages"][-1]
    if last.get("tool_calls"):
        fields["finish_reason"] = "tool_calls"
    return ExportRow(make_line(fields))
