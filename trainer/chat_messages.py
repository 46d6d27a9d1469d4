"""Chat messages prepared the way vLLM's chat endpoint prepares them, so training renders what serving renders.

An app sends OpenAI chat messages; vLLM (0.32, `vllm/renderers/chat_utils.py` and `hf.py`) does
not hand them to the chat template as they came. It:

- joins a message's text parts with "\\n" into one string, unless the template iterates over
  message contents (Gemma 3 does), in which case every content becomes a list of
  `{"type": "text", "text": ...}` parts (a plain string too); `None` content becomes "" (or []);
- keeps only `role`, `content`, `name`, and per role `tool_calls`, `reasoning` (also passed as
  `reasoning_content`, which Qwen3's template reads), `tool_call_id`; anything else is dropped,
  a `reasoning_content` key sent by the client included;
- parses each tool call's JSON `arguments` string into a dict (templates render it with
  `tojson`), an unparsable or non-object one into {}, and drops an empty `tool_calls` list;
  each call keeps only `id`, `function`, `type`, and its function `arguments` then `name`, in
  that order (the order of the OpenAI types it validates them with), which a template that
  prints `tool_call.function | tojson` (Mistral's) shows;
- turns `developer` messages into `system` ones (then merges all system messages into one at
  the front) when the template never mentions "developer";
- normalises each tool to `{"type": "function", "function": {"name", "description",
  "parameters"}}`, absent fields as None (a template's `tojson` prints them as null).

The trainer hands TRL messages as they were captured; without this, a prompt with a developer
message, text parts or tool calls would be rendered differently in training than in serving (or
make the template raise). `as_served` is this preparation, for the training side. The content
format test is a simplification of vLLM's (any loop over a `content` value counts).

`prepare_rows` applies it to TRL's rows and sets aside, counting them, the rows that still could
not be trained as served: the template raises on them (vLLM would answer 400), or their prompt
renders differently once the answer follows it (Mistral's template drops the system prompt then),
so TRL would train the answer on a context serving never shows.

Pure Python (jinja2 only; `prepare_rows` is handed the tokenizer): it runs before torch is imported.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

ContentFormat = Literal["string", "openai"]

_TEXT_PARTS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}


class UnservableMessages(ValueError):
    """Messages vLLM's chat endpoint refuses (400) before any template sees them."""


@lru_cache(maxsize=16)
def content_format(chat_template: str) -> ContentFormat:
    """`"openai"` when the template loops over a message's content (it expects a list of parts),
    else "string" (it expects one string)."""
    import jinja2
    from jinja2 import nodes

    try:
        ast = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(chat_template)
    except jinja2.TemplateSyntaxError:
        return "string"

    def is_content(node: nodes.Node) -> bool:
        while isinstance(node, nodes.Filter | nodes.Test) and node.node is not None:
            node = node.node
        if isinstance(node, nodes.Name):
            return node.name == "content"
        if isinstance(node, nodes.Getitem):
            return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
        return isinstance(node, nodes.Getattr) and node.attr == "content"

    return "openai" if any(is_content(loop.iter) for loop in ast.find_all(nodes.For)) else "string"


def as_served(
    messages: Sequence[Mapping[str, Any]],
    chat_template: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools vLLM passes to `chat_template` for this request (see the module
    docstring). The inputs are not modified. Raises `UnservableMessages` where vLLM answers 400
    (a content part that is not text, a tool call that is not a function call)."""
    parts_as_list = content_format(chat_template) == "openai"
    prepared = [_message(m, parts_as_list) for m in messages]
    if any(m["role"] == "developer" for m in prepared) and not _mentions_developer(chat_template):
        prepared = _merge_system([_developer_as_system(m) for m in prepared])
    for message in prepared:
        _parse_tool_arguments(message)
    return prepared, None if tools is None else [_tool(t) for t in tools]


def _mentions_developer(chat_template: str) -> bool:
    return '"developer"' in chat_template or "'developer'" in chat_template


def _texts(content: Any) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        key = _TEXT_PARTS.get(part.get("type", "")) if isinstance(part, Mapping) else None
        if key is None:
            raise UnservableMessages(f"content part {part!r} is not text; only text parts can be served")
        if part.get(key) is not None:  # vLLM skips a text part without text
            texts.append(part[key])
    return texts


def _message(message: Mapping[str, Any], parts_as_list: bool) -> dict[str, Any]:
    role = message["role"]
    texts = _texts(message.get("content"))
    content: Any = [{"type": "text", "text": t} for t in texts] if parts_as_list else "\n".join(texts)
    if role == "tool" and parts_as_list:
        content = "\n".join(texts)  # vLLM gives tool results as one string whatever the template
    out: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant":
        if message.get("tool_calls") is not None:
            out["tool_calls"] = copy.deepcopy(list(message["tool_calls"]))
        if message.get("reasoning") is not None:
            out["reasoning"] = out["reasoning_content"] = message["reasoning"]
    elif role == "tool" and "tool_call_id" in message:
        out["tool_call_id"] = message["tool_call_id"]
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    if role == "developer":
        out["tools"] = message.get("tools")
    return out


def _developer_as_system(message: dict[str, Any]) -> dict[str, Any]:
    if message["role"] != "developer":
        return message
    converted = {k: v for k, v in message.items() if k != "tools"}
    converted["role"] = "system"
    return converted


def _merge_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All system messages merged into one at the front (joined by a blank line), as vLLM does
    after turning developer messages into system ones; unchanged when only the first is one."""
    systems = [i for i, m in enumerate(messages) if m["role"] == "system"]
    if not systems or systems == [0]:
        return messages
    texts = []
    for i in systems:
        content = messages[i]["content"]
        text = "\n".join(p["text"] for p in content) if isinstance(content, list) else content
        if text:
            texts.append(text)
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": "\n\n".join(texts)}, *rest]


def _parse_tool_arguments(message: dict[str, Any]) -> None:
    calls = message.get("tool_calls")
    if message["role"] != "assistant" or not isinstance(calls, list):
        return
    if not calls:
        del message["tool_calls"]
        return
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise UnservableMessages(f"tool call {call!r} is not a function call; only those can be served")
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        served_function = {"arguments": arguments if isinstance(arguments, dict) else {}}
        if "name" in function:
            served_function["name"] = function["name"]
        calls[i] = {
            k: served_function if k == "function" else call[k]
            for k in ("id", "function", "type")
            if k in call
        }


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    served: dict[str, Any] = {
        "name": function.get("name"),
        "description": function.get("description"),
        "parameters": function.get("parameters"),
    }
    for optional in ("strict", "defer_loading"):
        if function.get(optional) is not None:
            served[optional] = function[optional]
    out: dict[str, Any] = {"type": "function", "function": served}
    if tool.get("defer_loading") is not None:
        out["defer_loading"] = tool["defer_loading"]
    return out


ANSWER_KEYS = ("completion", "chosen", "rejected")

QUARANTINE_REASONS = {
    "unservable": "vLLM would refuse the messages (a non-text part, a tool call that is no function call)",
    "template_refused": "the chat template raises on the messages (e.g. roles that do not alternate)",
    "prompt_not_prefix": "the prompt renders differently once the answer follows it (e.g. Mistral drops "
    "the system prompt), so training would see a context serving never shows",
}
"""Why `prepare_rows` sets a row aside, by the key it is counted under."""


def prepare_rows(rows: Sequence[Mapping[str, Any]], tokenizer: Any) -> tuple[list[dict], dict[str, int]]:
    """TRL conversational rows (`prompt` plus `completion`, or `chosen` and `rejected`, optional
    `tools`) with their messages prepared `as_served` for the tokenizer's chat template, and the
    count of rows set aside by reason (`QUARANTINE_REASONS`; only non-zero counts).

    A row is kept only if the template renders its prompt (with the generation prompt, as vLLM
    serves it) as an exact prefix of the prompt followed by each answer: that is the context TRL
    trains the answer on. Rendering a row costs about a millisecond per answer.
    """
    from jinja2 import TemplateError

    template = tokenizer.chat_template
    kept: list[dict] = []
    set_aside: dict[str, int] = {}
    for row in rows:
        try:
            prepared = _prepared_row(row, template)
            reason = _render_problem(prepared, tokenizer)
        except UnservableMessages:
            reason = "unservable"
        except TemplateError:
            reason = "template_refused"
        if reason is None:
            kept.append(prepared)
        else:
            set_aside[reason] = set_aside.get(reason, 0) + 1
    return kept, set_aside


def _prepared_row(row: Mapping[str, Any], template: str) -> dict[str, Any]:
    prepared = dict(row)
    prepared["prompt"], tools = as_served(row["prompt"], template, row.get("tools"))
    if tools is not None:
        prepared["tools"] = tools
    for key in ANSWER_KEYS:
        if key in row:
            prepared[key] = as_served(row[key], template)[0]
    return prepared


def _render_problem(row: Mapping[str, Any], tokenizer: Any) -> str | None:
    tools = row.get("tools")
    prompt = tokenizer.apply_chat_template(
        row["prompt"], tools=tools, add_generation_prompt=True, tokenize=False
    )
    for key in ANSWER_KEYS:
        if key in row:
            full = tokenizer.apply_chat_template([*row["prompt"], *row[key]], tools=tools, tokenize=False)
            if not full.startswith(prompt):
                return "prompt_not_prefix"
    return None
