"""GenAI inference spans as OpenAI chat request/response bodies, and evaluation events as verdicts.

Instrumentations record one LLM call as one span, in one of four dialects still in the wild; each
is read into the OpenAI chat shape (`formats.chat`) that every other way into Ratchet produces:

- **semconv** (OpenTelemetry GenAI conventions, current): `gen_ai.system_instructions`,
  `gen_ai.input.messages`, `gen_ai.output.messages` (JSON text, or structured values), whose
  messages are `{role, parts: [{type: text, content} | {type: tool_call, id, name, arguments} |
  {type: tool_call_response, id, response} | media], finish_reason}`, and `gen_ai.tool.definitions`.
  Written by `opentelemetry-instrumentation-openai-v2` with
  `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` and content capture `span_only`.
- **events** (conventions up to v1.36): span events `gen_ai.system.message`,
  `gen_ai.user.message`, `gen_ai.assistant.message`, `gen_ai.tool.message` and `gen_ai.choice`,
  their body's fields (`content`, `tool_calls`, `id`, `index`, `finish_reason`, `message`) as the
  event's attributes (or as JSON in a `body`/`event.body` attribute).
- **openllmetry** (Traceloop): flattened `gen_ai.prompt.N.{role,content,tool_call_id}`,
  `gen_ai.prompt.N.tool_calls.M.{id,name,arguments}`, `gen_ai.completion.N.{role,content,
  finish_reason,tool_calls.M.*}`, tools as `llm.request.functions.N.{name,description,parameters}`.
- **openinference** (Arize): `openinference.span.kind = LLM`, flattened
  `llm.input_messages.N.message.{role,content,name,tool_call_id}` (content parts as
  `message.contents.M.message_content.{type,text}`; tool calls as
  `message.tool_calls.M.tool_call.{id,function.name,function.arguments}`), `llm.output_messages.N.*`,
  tools as `llm.tools.N.tool.json_schema`; the response id from `output.value` when it is JSON.

A span is a GenAI inference when `gen_ai.operation.name` is `chat`, `text_completion` or
`generate_content`, or its OpenInference kind is `LLM`, or (older instrumentations that set
neither) it carries prompt content in one of the dialects. Anything else (embeddings, tools,
agents, HTTP) is not one: `read_span` returns None.

Feedback: a `gen_ai.evaluation.result` event (`gen_ai.evaluation.name`, `.score.value`,
`.score.label`, `.explanation`) on any span. It targets the completion named by its
`gen_ai.response.id` (on the event, else on its span), else the GenAI span it sits on, else its
span's parent, else its span's first link (a post-hoc carrier span linked to the call).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Literal

from msgspec import Struct

from formats.otlp import Span

Dialect = Literal["semconv", "events", "openinference", "openllmetry"]
INFERENCE_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
CHOICE_EVENT = "gen_ai.choice"
EVALUATION_EVENT = "gen_ai.evaluation.result"
USER_ATTRIBUTES = ("user.id", "enduser.id", "llm.user")
_ROLES = {"model": "assistant"}  # Gemini's name for the assistant, kept by some instrumentations
# semconv's finish reasons are singular where OpenAI's are plural
_FINISH_REASONS = {"tool_call": "tool_calls"}


class SpanError(ValueError):
    """A GenAI inference span Ratchet cannot turn into a log (e.g. captured without content)."""


class SpanChat(Struct, kw_only=True):
    """One GenAI inference span read as the OpenAI chat pair it stands for."""

    log_id: str
    request: dict[str, Any]
    response: dict[str, Any]
    dialect: Dialect
    end_user: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Evaluation(Struct, kw_only=True):
    """One `gen_ai.evaluation.result`. Its target is `response_id` if known, else the span
    `(trace_id, span_id)`."""

    name: str
    time_unix_nano: int
    trace_id: str
    span_id: str
    response_id: str | None = None
    score: float | None = None
    label: str | None = None
    explanation: str | None = None
    end_user: str | None = None


def span_log_id(trace_id: str, span_id: str) -> str:
    """The log id of a span without `gen_ai.response.id`."""
    return f"otel-{trace_id}-{span_id}"


def end_user_of(span: Span) -> str | None:
    for key in USER_ATTRIBUTES:
        value = span.attributes.get(key, span.resource.get(key))
        if isinstance(value, str) and value:
            return value
    return None


def is_inference(span: Span) -> bool:
    """Whether `span` records one GenAI inference (see the module docstring)."""
    a = span.attributes
    operation = a.get("gen_ai.operation.name")
    if operation is not None:
        return operation in INFERENCE_OPERATIONS
    kind = a.get("openinference.span.kind")
    if kind is not None:
        return str(kind).upper() == "LLM"
    return (
        "gen_ai.input.messages" in a
        or any(k.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for k in a)
        or any(e.name in MESSAGE_EVENTS or e.name == CHOICE_EVENT for e in span.events)
    )


def read_span(span: Span) -> SpanChat | None:
    """The OpenAI chat pair a GenAI inference span records; None for any other span. Raises
    `SpanError` for an inference span whose prompt or answer was not captured."""
    if not is_inference(span):
        return None
    a = span.attributes
    read = _semconv if "gen_ai.input.messages" in a or "gen_ai.output.messages" in a else None
    dialect: Dialect = "semconv"
    if read is None and any(e.name in MESSAGE_EVENTS or e.name == CHOICE_EVENT for e in span.events):
        read, dialect = _events, "events"
    elif read is None and any(k.startswith("llm.input_messages.") for k in a):
        read, dialect = _openinference, "openinference"
    elif read is None and any(k.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for k in a):
        read, dialect = _openllmetry, "openllmetry"
    if read is None:
        raise SpanError(
            "a GenAI inference span without message content: turn content capture on "
            "(OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)"
        )
    try:
        messages, choices, tools = read(span)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:  # attributes of the wrong shape
        raise SpanError(
            f"the span's {dialect} content attributes are malformed ({type(exc).__name__}: {exc})"
        ) from None
    if not messages:
        raw = a.get("gen_ai.input.messages")
        if isinstance(raw, str | bytes) and raw.strip() and _json(raw) is None:
            raise SpanError(
                "gen_ai.input.messages is not JSON: the semantic conventions record it as a JSON array "
                'of messages ([{"role": "user", "parts": [...]}])'
            )
        raise SpanError("the span records no input messages: turn content capture on")
    if not choices:
        raise SpanError("the span records no output message (a failed call, or content capture off)")
    response_id = _response_id(span)
    request: dict[str, Any] = {
        "model": _first(a, "gen_ai.request.model", "llm.model_name"),
        "messages": messages,
    }
    if tools:
        request["tools"] = tools
    request.update(_request_parameters(a))
    prompt_tokens = _int(
        _first(a, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
    )
    completion_tokens = _int(
        _first(
            a, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"
        )
    )
    response: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "model": _first(a, "gen_ai.response.model", "llm.model_name"),
        "choices": choices,
    }
    if prompt_tokens is not None or completion_tokens is not None:
        response["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return SpanChat(
        log_id=response_id or span_log_id(span.trace_id, span.span_id),
        request={k: v for k, v in request.items() if v is not None},
        response={k: v for k, v in response.items() if v is not None},
        dialect=dialect,
        end_user=end_user_of(span),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def evaluations(span: Span) -> list[Evaluation]:
    """The `gen_ai.evaluation.result` events on `span`, each with its target (module docstring)."""
    found = []
    for event in span.events:
        if event.name != EVALUATION_EVENT:
            continue
        e = event.attributes
        response_id = e.get("gen_ai.response.id") or span.attributes.get("gen_ai.response.id")
        trace_id, span_id = span.trace_id, span.span_id
        if not response_id and not is_inference(span):
            if span.parent_span_id:
                span_id = span.parent_span_id
            elif span.links:
                trace_id, span_id = span.links[0].trace_id, span.links[0].span_id
        value = e.get("gen_ai.evaluation.score.value")
        found.append(
            Evaluation(
                name=str(e.get("gen_ai.evaluation.name") or ""),
                time_unix_nano=event.time_unix_nano,
                trace_id=trace_id,
                span_id=span_id,
                response_id=str(response_id) if response_id else None,
                score=float(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else None,
                label=_str(e.get("gen_ai.evaluation.score.label")),
                explanation=_str(e.get("gen_ai.evaluation.explanation")),
                end_user=end_user_of(span),
            )
        )
    return found


# --- the dialects: each returns (messages, choices, tools) in OpenAI's shape

Read = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]


def _semconv(span: Span) -> Read:
    a = span.attributes
    messages: list[dict[str, Any]] = []
    instructions = _json(a.get("gen_ai.system_instructions"))
    if instructions:
        messages.append({"role": "system", "content": _content(instructions)})
    for m in _json(a.get("gen_ai.input.messages")) or []:
        messages.extend(_from_parts(m))
    choices = []
    for i, m in enumerate(_json(a.get("gen_ai.output.messages")) or []):
        (message,) = _from_parts({**m, "role": "assistant"})[:1] or [{"role": "assistant", "content": ""}]
        choices.append({"index": i, "message": message, "finish_reason": _finish(m.get("finish_reason"))})
    tools = [_tool(t) for t in _json(a.get("gen_ai.tool.definitions")) or []]
    return messages, choices, tools


def _from_parts(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One semconv message as OpenAI messages: tool-call responses become one `tool` message each."""
    role = _ROLES.get(m.get("role"), m.get("role")) or "user"
    parts = m.get("parts") or []
    responses = [p for p in parts if p.get("type") == "tool_call_response"]
    if responses:
        return [
            {"role": "tool", "tool_call_id": p.get("id") or "", "content": _text(p.get("response"))}
            for p in responses
        ]
    message: dict[str, Any] = {
        "role": role,
        "content": _content([p for p in parts if p.get("type") != "tool_call"]),
    }
    calls = [p for p in parts if p.get("type") == "tool_call"]
    if calls:
        message["tool_calls"] = [_call(p.get("id"), p.get("name"), p.get("arguments")) for p in calls]
        if message["content"] == "":
            message["content"] = None
    if m.get("name"):
        message["name"] = m["name"]
    return [message]


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """semconv parts as OpenAI content: one text part (or none) as a string, several or media as
    a part list."""
    converted = [_part(p) for p in parts]
    converted = [p for p in converted if p is not None]
    if all(p["type"] == "text" for p in converted) and len(converted) <= 1:
        return converted[0]["text"] if converted else ""
    return converted


def _part(p: dict[str, Any]) -> dict[str, Any] | None:
    kind = p.get("type")
    if kind == "text":
        return {"type": "text", "text": _text(p.get("content"))}
    if kind == "uri" and p.get("modality") == "image":
        return {"type": "image_url", "image_url": {"url": p.get("uri")}}
    if kind == "blob" and p.get("modality") == "image":
        data = p.get("content")
        encoded = base64.b64encode(data).decode() if isinstance(data, bytes) else str(data)
        return {
            "type": "image_url",
            "image_url": {"url": f"data:{p.get('mime_type') or 'image/png'};base64,{encoded}"},
        }
    if kind in ("reasoning", None):
        return None
    return {"type": str(kind)}  # media Ratchet keeps as a marker: the log is then never trained on as text


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    if "function" in t:
        return t
    function = {k: t[k] for k in ("name", "description", "parameters") if t.get(k) is not None}
    return {"type": t.get("type") or "function", "function": function}


def _events(span: Span) -> Read:
    messages: list[dict[str, Any]] = []
    choices: list[dict[str, Any]] = []
    for event in span.events:
        body = _event_body(event.attributes)
        if event.name in MESSAGE_EVENTS:
            role = MESSAGE_EVENTS[event.name]
            message: dict[str, Any] = {
                "role": body.get("role") or role,
                "content": _event_content(body.get("content")),
            }
            if body.get("tool_calls"):
                message["tool_calls"] = [_openai_call(c) for c in _json(body["tool_calls"])]
                message["content"] = message["content"] or None
            if role == "tool":
                message["tool_call_id"] = body.get("id") or body.get("tool_call_id") or ""
            messages.append(message)
        elif event.name == CHOICE_EVENT:
            inner = _json(body.get("message")) or {}
            message = {"role": "assistant", "content": _event_content(inner.get("content"))}
            if inner.get("tool_calls"):
                message["tool_calls"] = [_openai_call(c) for c in _json(inner["tool_calls"])]
                message["content"] = message["content"] or None
            choices.append(
                {
                    "index": _int(body.get("index")) or 0,
                    "message": message,
                    "finish_reason": _finish(body.get("finish_reason")),
                }
            )
    return messages, sorted(choices, key=lambda c: c["index"]), []


def _event_body(attributes: dict[str, Any]) -> dict[str, Any]:
    for key in ("event.body", "body"):
        body = _json(attributes.get(key))
        if isinstance(body, dict):
            return body
    return attributes


def _event_content(content: Any) -> Any:
    if isinstance(content, list):
        return [p if "type" in p else {"type": "text", "text": _text(p)} for p in content]
    return "" if content is None else _text(content)


def _openinference(span: Span) -> Read:
    a = span.attributes
    messages = [_oi_message(m.get("message", {})) for m in _indexed(_unflatten(a, "llm.input_messages."))]
    choices = []
    for i, m in enumerate(_indexed(_unflatten(a, "llm.output_messages."))):
        message = _oi_message(m.get("message", {}))
        message["role"] = "assistant"
        choices.append({"index": i, "message": message, "finish_reason": _oi_finish(span, i, message)})
    tools = []
    for t in _indexed(_unflatten(a, "llm.tools.")):
        schema = _json(t.get("tool", {}).get("json_schema"))
        if isinstance(schema, dict):
            tools.append(_tool(schema))
    return messages, choices, tools


def _oi_message(m: dict[str, Any]) -> dict[str, Any]:
    content: Any = m.get("content")
    if content is None and "contents" in m:
        parts = [c.get("message_content", {}) for c in _indexed(m["contents"])]
        content = [
            {"type": "text", "text": p.get("text", "")}
            if p.get("type") == "text"
            else {"type": p.get("type")}
            for p in parts
        ]
    message: dict[str, Any] = {"role": m.get("role") or "user", "content": "" if content is None else content}
    calls = [c.get("tool_call", {}) for c in _indexed(m.get("tool_calls", {}))]
    if calls:
        message["tool_calls"] = [
            _call(c.get("id"), c.get("function", {}).get("name"), c.get("function", {}).get("arguments"))
            for c in calls
        ]
        message["content"] = message["content"] or None
    for key in ("name", "tool_call_id"):
        if m.get(key):
            message[key] = m[key]
    return message


def _oi_finish(span: Span, index: int, message: dict[str, Any]) -> str:
    output = _output_value(span)
    if output:
        for choice in output.get("choices") or []:
            if choice.get("index", 0) == index and choice.get("finish_reason"):
                return str(choice["finish_reason"])
    return "tool_calls" if message.get("tool_calls") else "stop"


def _openllmetry(span: Span) -> Read:
    a = span.attributes
    messages = []
    for m in _indexed(_unflatten(a, "gen_ai.prompt.")):
        message = _ll_message(m)
        if m.get("tool_call_id"):
            message["tool_call_id"] = m["tool_call_id"]
        messages.append(message)
    choices = []
    for i, m in enumerate(_indexed(_unflatten(a, "gen_ai.completion."))):
        message = _ll_message(m)
        message["role"] = "assistant"
        reason = m.get("finish_reason") or ("tool_calls" if message.get("tool_calls") else "stop")
        choices.append({"index": i, "message": message, "finish_reason": _finish(reason)})
    tools = []
    for f in _indexed(_unflatten(a, "llm.request.functions.")):
        function = {
            "name": f.get("name"),
            "description": f.get("description"),
            "parameters": _json(f.get("parameters")),
        }
        tools.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    return messages, choices, tools


def _ll_message(m: dict[str, Any]) -> dict[str, Any]:
    content = m.get("content")
    parsed = _json(content) if isinstance(content, str) and content.startswith("[{") else None
    message: dict[str, Any] = {
        "role": m.get("role") or "user",
        "content": parsed if isinstance(parsed, list) else (content or ""),
    }
    calls = _indexed(m.get("tool_calls", {}))
    if calls:
        message["tool_calls"] = [_call(c.get("id"), c.get("name"), c.get("arguments")) for c in calls]
        message["content"] = message["content"] or None
    return message


# --- helpers shared by the dialects


def _unflatten(attributes: dict[str, Any], prefix: str) -> dict[Any, Any]:
    """`prefix` + `0.message.role` = "user" -> {0: {"message": {"role": "user"}}}."""
    tree: dict[Any, Any] = {}
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        node = tree
        *path, leaf = (int(p) if p.isdigit() else p for p in key[len(prefix) :].split("."))
        for step in path:
            child = node.get(step)
            if not isinstance(child, dict):
                child = node[step] = {}
            node = child
        node[leaf] = value
    return tree


def _indexed(tree: Any) -> list[dict[str, Any]]:
    """The integer-keyed children of an unflattened node, in index order."""
    if not isinstance(tree, dict):
        return []
    return [tree[k] for k in sorted(k for k in tree if isinstance(k, int)) if isinstance(tree[k], dict)]


def _call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {
        "id": str(call_id or ""),
        "type": "function",
        "function": {
            "name": str(name or ""),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _openai_call(c: dict[str, Any]) -> dict[str, Any]:
    function = c.get("function") or {}
    return _call(c.get("id"), function.get("name"), function.get("arguments", ""))


def _finish(reason: Any) -> str | None:
    if reason is None:
        return None
    return _FINISH_REASONS.get(str(reason), str(reason))


def _json(value: Any) -> Any:
    """A JSON-text attribute decoded (structured values as they are; invalid JSON: None)."""
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _first(attributes: dict[str, Any], *keys: str) -> Any:
    return next((attributes[k] for k in keys if attributes.get(k) is not None), None)


def _output_value(span: Span) -> dict[str, Any] | None:
    if span.attributes.get("output.mime_type") != "application/json":
        return None
    value = _json(span.attributes.get("output.value"))
    return value if isinstance(value, dict) else None


_ID_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")


def _response_id(span: Span) -> str | None:
    a = span.attributes
    value = a.get("gen_ai.response.id") or a.get("llm.response.id")
    if not value:
        output = _output_value(span)
        value = output.get("id") if output else None
    if isinstance(value, str) and _ID_SAFE.match(value) and len(value) <= 128:
        return value
    return None


_PARAMETERS = {
    "gen_ai.request.temperature": "temperature",
    "gen_ai.request.top_p": "top_p",
    "gen_ai.request.max_tokens": "max_tokens",
    "gen_ai.request.seed": "seed",
    "gen_ai.request.frequency_penalty": "frequency_penalty",
    "gen_ai.request.presence_penalty": "presence_penalty",
    "gen_ai.request.stop_sequences": "stop",
    "gen_ai.request.choice.count": "n",
}


def _request_parameters(a: dict[str, Any]) -> dict[str, Any]:
    params = {name: a[key] for key, name in _PARAMETERS.items() if a.get(key) is not None}
    invocation = _json(a.get("llm.invocation_parameters"))
    if isinstance(invocation, dict):
        params.update({k: v for k, v in invocation.items() if k not in ("messages", "model", "tools")})
    return params
