"""The OpenAI chat-completions and completions shapes, as the API reference defines them.

Requests, responses and streamed chunks of `POST /v1/chat/completions` and `POST /v1/completions`
(https://platform.openai.com/docs/api-reference/chat): messages whose `content` is a string or a
list of parts, tool calls and tool results, `n` choices with their finish reasons, streamed deltas
whose tool calls arrive in pieces keyed by `index`, and the error event a server may send inside
a stream.

Unknown fields are allowed everywhere: apps and servers add their own (vLLM's `reasoning_content`,
provider extras), and Ratchet keeps the raw bodies beside what it reads from them. What is
declared is checked: a wrong type is a `msgspec.ValidationError` naming the path
(`$.messages[1].content`). Rules the types cannot say (a tool message needs `tool_call_id`) are
checked by `check_request`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
Index = Annotated[int, Meta(ge=0)]
TEXT_PART_TYPES = frozenset({"text", "refusal"})
"""Part types that carry text. Any other (`image_url`, `input_audio`, `file`, vLLM's `video_url`, ...)
is media: kept in the raw log, never flattened into a text model's prompt."""


class ContentPart(Struct, kw_only=True, omit_defaults=True):
    """One element of a list-form `content`. Only the text-bearing fields are read; media parts
    (`image_url`, `input_audio`, `file`, ...) keep their payload in the raw log."""

    type: str
    text: str | None = None
    refusal: str | None = None


Content = str | list[ContentPart] | None


class FunctionCall(Struct, kw_only=True, omit_defaults=True):
    """The function a tool call invokes. `arguments` is JSON text in the API (some clients send an
    object; both are kept as sent)."""

    name: str
    arguments: str | dict[str, Any] = ""


class CustomCall(Struct, kw_only=True, omit_defaults=True):
    """A call of a custom (free-text input) tool."""

    name: str
    input: str = ""


class ToolCall(Struct, kw_only=True, omit_defaults=True):
    """A tool call in an assistant message: `function` for function tools, `custom` for custom ones.
    `type` is kept as sent (the API always sends it; None only when a client left it out, which
    means "function")."""

    id: str
    type: str | None = None
    function: FunctionCall | None = None
    custom: CustomCall | None = None


class ChatMessage(Struct, kw_only=True, omit_defaults=True):
    """One chat message of any role (system, developer, user, assistant, tool, function)."""

    role: Role
    content: Content = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    function_call: FunctionCall | None = None  # deprecated in the API, still sent by old clients


class FunctionDefinition(Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct, kw_only=True, omit_defaults=True):
    """A tool the model may call: `{"type": "function", "function": {...}}` (or a custom tool);
    `type` as sent (None: left out, which means "function")."""

    type: str | None = None
    function: FunctionDefinition | None = None
    custom: dict[str, Any] | None = None


class ChatCompletionRequest(Struct, kw_only=True, omit_defaults=True):
    """The body of `POST /v1/chat/completions` (the fields Ratchet reads; the rest are kept raw)."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, Any] | None = None


class CompletionRequest(Struct, kw_only=True, omit_defaults=True):
    """The body of `POST /v1/completions`. `prompt` is a string, a list of strings (one prompt per
    element, each answered `n` times), or token ids (an int list, or a list of them)."""

    prompt: str | list[Any]
    model: str | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    safety_identifier: str | None = None


class Usage(Struct, kw_only=True, omit_defaults=True):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class StreamError(Struct, kw_only=True, omit_defaults=True):
    """The `{"error": {...}}` event a server sends when generation fails mid-stream."""

    message: str = ""
    type: str | None = None
    code: int | str | None = None


class ChatChoice(Struct, kw_only=True, omit_defaults=True):
    index: Index = 0
    message: ChatMessage
    finish_reason: str | None = None


class ChatCompletion(Struct, kw_only=True, omit_defaults=True):
    """A non-streamed chat answer: one choice per `n`."""

    choices: Annotated[list[ChatChoice], Meta(min_length=1)]
    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    usage: Usage | None = None
    error: StreamError | None = None  # set by Ratchet on a stream that ended in an error event


class CompletionChoice(Struct, kw_only=True, omit_defaults=True):
    index: Index = 0
    text: str
    finish_reason: str | None = None


class Completion(Struct, kw_only=True, omit_defaults=True):
    """A non-streamed completions answer: one choice per prompt and `n`."""

    choices: Annotated[list[CompletionChoice], Meta(min_length=1)]
    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    usage: Usage | None = None
    error: StreamError | None = None


# --- streaming


class FunctionDelta(Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Struct, kw_only=True, omit_defaults=True):
    """A piece of a streamed tool call: `index` says which call of the choice it continues."""

    index: Index = 0
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


class Delta(Struct, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(Struct, kw_only=True, omit_defaults=True):
    """One choice's piece of a chunk: `delta` (chat) or `text` (completions)."""

    index: Index = 0
    delta: Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class Chunk(Struct, kw_only=True, omit_defaults=True):
    """One server-sent event of a streamed answer (chat or completions)."""

    id: str | None = None
    choices: list[ChunkChoice] = []
    usage: Usage | None = None
    error: StreamError | None = None


_decode_chunk = msgspec.json.Decoder(Chunk).decode


class _Building:
    __slots__ = ("finish_reason", "refusal", "text", "tool_calls")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None


class StreamAssembler:
    """Rebuilds the complete answer a stream spells out: text per choice `index`, tool calls per
    their own `index` (id, type and name from the first piece, `arguments` concatenated), finish
    reasons, usage, and the error event if one came.

    Feed it each event's JSON (`add_event`); `response()` is then the non-streamed body the same
    answer would have had (`ChatCompletion` or `Completion` shape), choices in index order.
    """

    def __init__(self, endpoint: Literal["chat", "completions"]) -> None:
        self.endpoint = endpoint
        self._choices: dict[int, _Building] = {}
        self.usage: Usage | None = None
        self.error: StreamError | None = None
        self.done = False

    def add_event(self, data: bytes | str) -> None:
        """One `data:` payload. `[DONE]` marks the end; anything undecodable is ignored (a relay
        must not fail on a chunk it cannot read; the answer then lacks that piece)."""
        if data in (b"[DONE]", "[DONE]"):
            self.done = True
            return
        try:
            chunk = _decode_chunk(data)
        except msgspec.MsgspecError:
            return
        self.add(chunk)

    def add(self, chunk: Chunk) -> None:
        if chunk.error is not None:
            self.error = chunk.error
        if chunk.usage is not None:
            self.usage = chunk.usage
        for piece in chunk.choices:
            building = self._choices.get(piece.index)
            if building is None:
                building = self._choices[piece.index] = _Building()
            if piece.finish_reason:
                building.finish_reason = piece.finish_reason
            if piece.text:
                building.text.append(piece.text)
            delta = piece.delta
            if delta is None:
                continue
            if delta.content:
                building.text.append(delta.content)
            if delta.refusal:
                building.refusal.append(delta.refusal)
            for call in delta.tool_calls or ():
                self._add_tool_call(building, call)

    @staticmethod
    def _add_tool_call(building: _Building, call: ToolCallDelta) -> None:
        current = building.tool_calls.setdefault(
            call.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if call.id:
            current["id"] = call.id
        if call.type:
            current["type"] = call.type
        if call.function is not None:
            if call.function.name:
                current["function"]["name"] += call.function.name
            if call.function.arguments:
                current["function"]["arguments"] += call.function.arguments

    def response(self) -> dict[str, Any]:
        """The assembled answer as a response body (JSON-ready), choices in index order."""
        choices: list[dict[str, Any]] = []
        for index in sorted(self._choices):
            b = self._choices[index]
            text = "".join(b.text)
            if self.endpoint == "completions":
                choices.append({"index": index, "text": text, "finish_reason": b.finish_reason})
                continue
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if b.tool_calls:
                message["tool_calls"] = [b.tool_calls[i] for i in sorted(b.tool_calls)]
            elif not text:
                message["content"] = ""
            if b.refusal:
                message["refusal"] = "".join(b.refusal)
            choices.append({"index": index, "message": message, "finish_reason": b.finish_reason})
        body: dict[str, Any] = {
            "object": "chat.completion" if self.endpoint == "chat" else "text_completion",
            "choices": choices,
        }
        if self.usage is not None:
            body["usage"] = msgspec.to_builtins(self.usage)
        if self.error is not None:
            body["error"] = msgspec.to_builtins(self.error)
        return body


def content_text(content: Content) -> str:
    """A message's text as a text-only model sees it: a string as is; the text parts of a part
    list joined by newlines (what vLLM's chat rendering does, vllm/renderers/chat_utils.py);
    media parts contribute nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text or p.refusal or "" for p in content if p.type in TEXT_PART_TYPES)


def media_types(content: Content) -> list[str]:
    """The types of the non-text parts of a message's content (empty for a string)."""
    if not isinstance(content, list):
        return []
    return [p.type for p in content if p.type not in TEXT_PART_TYPES]


class ShapeError(ValueError):
    """A body is not a valid OpenAI request/response. `field` is the JSON path of the fault,
    e.g. `request.messages[2].tool_call_id`."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field


def check_request(request: ChatCompletionRequest | CompletionRequest, where: str = "request") -> None:
    """The rules of the API reference that types cannot express; raises `ShapeError`.

    - a `tool` message names the call it answers (`tool_call_id`);
    - a text part has `text`;
    - a completions `prompt` is a string, a non-empty list of strings, or token ids.
    """
    if isinstance(request, CompletionRequest):
        prompt = request.prompt
        if isinstance(prompt, list) and not (
            (prompt and all(isinstance(p, str) for p in prompt))
            or (prompt and all(isinstance(p, int) for p in prompt))
            or (prompt and all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt))
        ):
            raise ShapeError(
                "`prompt` must be a string, a non-empty list of strings, or token ids", f"{where}.prompt"
            )
        return
    for i, message in enumerate(request.messages):
        if message.role == "tool" and not message.tool_call_id:
            raise ShapeError(
                "a `tool` message needs the `tool_call_id` of the call it answers",
                f"{where}.messages[{i}].tool_call_id",
            )
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.type == "text" and part.text is None:
                    raise ShapeError("a text part needs `text`", f"{where}.messages[{i}].content[{j}].text")
