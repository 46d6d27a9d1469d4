"""LangSmith's runs and feedback, read as Ratchet log lines and feedback items.

Runs are LangSmith's `Run` schema (docs.smith.langchain.com reference, `langsmith.schemas.Run`:
`id`, `name`, `run_type`, `inputs`, `outputs`, `start_time`, `error`, `extra`, `trace_id`,
`tags`), one per line as `client.list_runs()` yields them serialized. Only `run_type: "llm"` is a
model call (chains, tools, retrievers are skipped). Its `inputs` are OpenAI chat messages
(`{"messages": [...]}`, what `wrap_openai` and `@traceable(run_type="llm")` record) or LangChain's
serialized messages (`{"messages": [[{"lc": 1, "id": [..., "HumanMessage"], "kwargs": {...}}]]}`),
or `{"prompts": [text]}` for a completions model; its `outputs` an OpenAI chat completion, an
assistant message, or LangChain's `{"generations": [[{"text": ..., "message": ...}]]}`. The end
user is `extra.metadata.user_id` when the app set it; `extra.metadata`, `name` and `tags` are kept
in the log's metadata under `langsmith`. A run with `error` and no output is a bad line.

Feedback is LangSmith's `Feedback` schema (docs.smith.langchain.com/langsmith/feedback-data-format:
`id`, `run_id`, `key`, `score`, `value`, `comment`, `correction`, `created_at`), one per line as
`client.list_feedback()` yields them, passed as a second file and joined by `run_id`. A boolean
`score` is a thumbs up / down, a number in [0, 1] the score (another number is kept as the comment
`key: score`); a categorical `value` Ratchet knows (`good`/`bad`, ...) is a thumb, another is kept
as the comment `key: value`; `comment` is the comment; `correction` (text, or an object whose
`content` / `output` / `text` / `answer` is text) the correction. The key is kept in the item's
metadata under `langsmith`.
"""

from __future__ import annotations

import json
from typing import Any

from formats.langfuse import NEGATIVE, POSITIVE
from formats.vendor import (
    ExportRow,
    FeedbackRef,
    NotInference,
    VendorError,
    chat_answer,
    chat_messages,
    decode_object,
    log_id,
    make_line,
    request_fields,
    text_of,
)

_LC_ROLES = {"HumanMessage": "user", "AIMessage": "assistant", "SystemMessage": "system",
             "ToolMessage": "tool", "ChatMessage": None, "FunctionMessage": "function"}  # fmt: skip


def detect(row: dict[str, Any]) -> bool:
    return "run_type" in row and "inputs" in row


def read_row(raw: bytes) -> ExportRow:
    """One run as a log line; `NotInference` unless it is an `llm` run."""
    row = decode_object(raw)
    if row.get("run_type") != "llm":
        raise NotInference(f"a {row.get('run_type')} run")
    if not row.get("id"):
        raise VendorError("missing", "id")
    rid = log_id(row["id"], "langsmith")
    inputs, outputs = row.get("inputs"), row.get("outputs")
    if not isinstance(inputs, dict):
        raise VendorError("the run's inputs are an object", "inputs")
    if outputs in (None, {}):
        raise VendorError(
            f"no output (the run failed: {row['error']})" if row.get("error") else "no output", "outputs"
        )
    extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    metadata = extra.get("metadata") if isinstance(extra.get("metadata"), dict) else {}
    fields: dict[str, Any] = {
        "id": rid,
        "created_at": row.get("start_time"),
        "end_user": metadata.get("user_id"),
    }
    if "prompts" in inputs and "messages" not in inputs:
        prompts = inputs["prompts"]
        if not isinstance(prompts, list) or len(prompts) != 1 or not isinstance(prompts[0], str):
            raise VendorError("one prompt text", "inputs.prompts")
        fields |= {"prompt": prompts[0], "completion": _generation_text(outputs)}
    else:
        messages = _messages(inputs.get("messages"))
        answer, finish = _answer(outputs)
        fields |= {"messages": [*messages, answer], "finish_reason": finish, **request_fields(inputs)}
        if answer.get("tool_calls") and not finish:
            fields["finish_reason"] = "tool_calls"
    kept = {"metadata": metadata, "name": row.get("name"), "tags": row.get("tags")}
    kept = {k: v for k, v in kept.items() if v}
    fields["metadata"] = {"langsmith": kept} if kept else None
    return ExportRow(make_line(fields), (), (f"run:{rid}",))


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]  # LangChain: one list of messages per prompt
    if isinstance(value, list) and value and all(isinstance(m, dict) and "lc" in m for m in value):
        return [_lc_message(m, f"inputs.messages[{i}]") for i, m in enumerate(value)]
    return chat_messages(value, "inputs.messages")


def _lc_message(message: dict[str, Any], where: str) -> dict[str, Any]:
    """A LangChain-serialized message (`{"lc": 1, "id": [..., "AIMessage"], "kwargs": {...}}`) as
    an OpenAI one."""
    kind = (message.get("id") or [""])[-1].removesuffix("Chunk")
    kwargs = message.get("kwargs") or {}
    role = _LC_ROLES.get(kind, "") or kwargs.get("role")
    if not role:
        raise VendorError(f"unknown LangChain message type {kind!r}", f"{where}.id")
    out: dict[str, Any] = {"role": role, "content": kwargs.get("content", "")}
    if role == "tool":
        out["tool_call_id"] = kwargs.get("tool_call_id")
    calls = kwargs.get("tool_calls") or []
    if role == "assistant" and calls:
        out["tool_calls"] = [
            {"id": c.get("id"), "type": "function",
             "function": {"name": c.get("name"), "arguments": json.dumps(c.get("args") or {})}}
            for c in calls
        ]  # fmt: skip
        if not out["content"]:
            out.pop("content")
    return out


def _answer(outputs: Any) -> tuple[dict[str, Any], str | None]:
    if isinstance(outputs, dict) and isinstance(outputs.get("generations"), list):
        generation = _first_generation(outputs)
        if isinstance(generation.get("message"), dict) and "lc" in generation["message"]:
            message = _lc_message(generation["message"], "outputs.generations[0][0].message")
            if message["role"] != "assistant":
                raise VendorError("the generation is not an AI message", "outputs.generations[0][0].message")
            answer, _ = chat_answer(message, "outputs.generations[0][0].message")
        else:
            answer, _ = chat_answer(generation.get("text"), "outputs.generations[0][0].text")
        finish = (generation.get("generation_info") or {}).get("finish_reason")
        return answer, finish if finish not in (None, "stop") else None
    return chat_answer(outputs, "outputs")


def _first_generation(outputs: dict[str, Any]) -> dict[str, Any]:
    generations = outputs["generations"]
    first = generations[0] if generations else None
    first = first[0] if isinstance(first, list) and first else first
    if not isinstance(first, dict):
        raise VendorError("no generation", "outputs.generations")
    return first


def _generation_text(outputs: Any) -> str:
    if isinstance(outputs, dict) and isinstance(outputs.get("generations"), list):
        text = _first_generation(outputs).get("text")
        if isinstance(text, str):
            return text
    raise VendorError("a completions run's output is `generations[0][0].text`", "outputs")


def read_feedback(raw: bytes) -> list[FeedbackRef]:
    """One feedback record as the feedback item on its run."""
    row = decode_object(raw)
    if not row.get("run_id"):
        raise VendorError("feedback on a run names it: `run_id`", "run_id")
    key = str(row.get("key") or "feedback")
    item: dict[str, Any] = {}
    score, value = row.get("score"), row.get("value")
    if isinstance(score, bool):
        item["rating"] = 1 if score else -1
    elif isinstance(score, int | float):
        if 0 <= score <= 1:
            item["score"] = float(score)
        else:
            item["comment"] = f"{key}: {score}"
    if isinstance(value, str) and value:
        label = value.strip().lower()
        if label in POSITIVE or label in NEGATIVE:
            item.setdefault("rating", 1 if label in POSITIVE else -1)
        else:
            item.setdefault("comment", f"{key}: {value}")
    if isinstance(row.get("comment"), str) and row["comment"]:
        item["comment"] = row["comment"]
    correction = row.get("correction")
    if correction not in (None, "", {}):
        text = correction if isinstance(correction, str) else _correction_text(correction)
        if text is None:
            raise VendorError(
                "a correction is text, or an object whose `content`, `output`, `text` or `answer` is text",
                "correction",
            )
        item["correction"] = text
    if not item:
        raise VendorError("no verdict: give `score`, `value`, `comment` or `correction`", "score")
    if row.get("id"):
        item["id"] = log_id(row["id"], "ls-feedback")
    if row.get("created_at"):
        item["created_at"] = row["created_at"]
    item["metadata"] = {"langsmith": {"key": key, **({"score": score} if score is not None else {})}}
    return [FeedbackRef(f"run:{log_id(row['run_id'], 'langsmith')}", item)]


def _correction_text(correction: Any) -> str | None:
    if not isinstance(correction, dict):
        return None
    for name in ("content", "output", "text", "answer"):
        value = correction.get(name)
        if isinstance(value, dict) and name == "output":
            value = value.get("content")
        if (text := text_of(value)) is not None:
            return text
    return None
