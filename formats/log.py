"""A log normalised once, at capture: the fields training needs, read from the OpenAI bodies.

`normalize` turns a raw request/response pair (chat or completions, as the app sent and got it)
into a `NormalizedLog`: the conversation before the answer (text parts flattened, tool calls and
tool results kept), the request's `tools`, `tool_choice` and `response_format`, one `Answer` per
choice with its finish reason and, where it must never be a positive training target, why
(`Answer.problem`), and `quarantine`: why the log can never train a text model at all.
Capture stores these as typed columns beside the raw bodies; snapshots, exports and evals read
them instead of re-parsing OpenAI JSON.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec
from msgspec import Struct

from formats.chat import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Completion,
    CompletionRequest,
    ShapeError,
    Tool,
    ToolCall,
    Usage,
    check_request,
    content_text,
    media_types,
)

Endpoint = Literal["chat", "completions"]

AnswerProblem = Literal["length", "content_filter", "interrupted", "upstream_error", "empty"]
"""Why an answer may be a rejected example but never a positive one (issue #11, "Training data is
honest"): cut by the token limit, filtered, stopped by the user, ended by an upstream error event,
or empty (no text and no tool call)."""

Quarantine = Literal["media_prompt", "token_prompt", "legacy_function_call", "shape_error"]
"""Why a log can never train a text model: its prompt holds images/audio/files, its completions
prompt is token ids (no text to render), it uses the deprecated `function_call` format, or (set by
capture, never by `normalize`) the shape module could not read a gateway answer that was stored
all the same."""


class Message(Struct, kw_only=True, omit_defaults=True):
    """A chat message as a text model is trained on it (TRL's conversational format): `content` is
    text (parts flattened), None only for an assistant turn that only calls tools."""

    role: str
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class Answer(Struct, kw_only=True, omit_defaults=True):
    """One choice of the response. `prompt` is set for completions only (the prompt text this
    choice answers: with a list `prompt`, choice i answers prompt i // n)."""

    index: int
    message: Message
    finish_reason: str | None = None
    problem: AnswerProblem | None = None
    prompt: str | None = None
    refusal: str | None = None
    """The model's refusal (`message.refusal`), when it gave one. `message.content` then holds its
    text too when the answer has no other (`text_message`: a text model trains on it); exports
    write it back as OpenAI's assistant `refusal`."""

    @property
    def text(self) -> str:
        return self.message.content or ""


class NormalizedLog(Struct, kw_only=True, omit_defaults=True):
    """What capture derives from one request/response pair (see the module docstring)."""

    endpoint: Endpoint
    answers: list[Answer]
    messages: list[Message] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    end_user: str | None = None
    quarantine: Quarantine | None = None
    prompt_sha256: str = ""
    usage: Usage | None = None
    """The response's token counts, as the server reported them (the stored log's own columns)."""

    def answer(self, choice: int) -> Answer | None:
        """The answer of choice `choice` (its `index`), or None if the response has no such choice."""
        return next((a for a in self.answers if a.index == choice), None)


class _Kind(Struct):
    messages: msgspec.Raw = msgspec.Raw()
    prompt: msgspec.Raw = msgspec.Raw()


_peek_kind = msgspec.json.Decoder(_Kind).decode
_decode_chat_request = msgspec.json.Decoder(ChatCompletionRequest).decode
_decode_completion_request = msgspec.json.Decoder(CompletionRequest).decode
_decode_chat_response = msgspec.json.Decoder(ChatCompletion).decode
_decode_completion_response = msgspec.json.Decoder(Completion).decode
_encode = msgspec.json.encode


def _decoded(decode: Any, data: bytes, where: str) -> Any:
    try:
        return decode(data)
    except msgspec.ValidationError as exc:
        # msgspec says "Expected `str`, got `int` - at `$.messages[0].role`": name our path.
        text = str(exc)
        path = text.rsplit(" - at `$", 1)
        field = where + path[1].rstrip("`") if len(path) == 2 else where
        raise ShapeError(path[0], field) from None
    except msgspec.DecodeError as exc:
        raise ShapeError(f"not valid JSON: {exc}", where) from None


def endpoint_of(request: bytes) -> Endpoint:
    """Which API a request body is for: `messages` (chat) or `prompt` (completions)."""
    kind = _decoded(_peek_kind, request, "request")
    if len(kind.messages):
        return "chat"
    if len(kind.prompt):
        return "completions"
    raise ShapeError("needs `messages` (chat) or `prompt` (completions)", "request")


def normalize(
    request: bytes, response: bytes, *, end_user: str | None = None, interrupted: bool = False
) -> NormalizedLog:
    """Normalise raw JSON bodies. `end_user` (the log's own field) wins over the request's
    `safety_identifier` and `user`; `interrupted` marks a stream the user stopped.

    Raises `ShapeError` (with the JSON path, e.g. `response.choices[0].message`) when a body is
    not a valid OpenAI chat or completions request/response.
    """
    if endpoint_of(request) == "chat":
        chat = _decoded(_decode_chat_request, request, "request")
        check_request(chat)  # the request's faults first, then the response's
        return normalize_chat(
            chat,
            _decoded(_decode_chat_response, response, "response"),
            end_user=end_user,
            interrupted=interrupted,
        )
    completion = _decoded(_decode_completion_request, request, "request")
    check_request(completion)
    return normalize_completion(
        completion,
        _decoded(_decode_completion_response, response, "response"),
        end_user=end_user,
        interrupted=interrupted,
    )


def text_message(m: ChatMessage) -> Message:
    """`m` as a text model is trained on it: content parts flattened (`content_text`), a refusal as
    the text of an assistant turn that has no other."""
    text = content_text(m.content)
    if m.role == "assistant" and not text and m.refusal:
        text = m.refusal
    return Message(
        role=m.role,
        content=None if m.content is None and m.tool_calls and not text else text,
        name=m.name,
        tool_calls=m.tool_calls or None,
        tool_call_id=m.tool_call_id,
    )


def _problem(finish_reason: str | None, message: Message, error: str | None, interrupted: bool) -> Any:
    if error is not None:
        return "upstream_error"
    if interrupted:
        return "interrupted"
    if finish_reason in ("length", "content_filter"):
        return finish_reason
    if not (message.content or "").strip() and not message.tool_calls:
        return "empty"
    return None


def normalize_chat(
    request: ChatCompletionRequest,
    response: ChatCompletion,
    *,
    end_user: str | None = None,
    interrupted: bool = False,
) -> NormalizedLog:
    """Normalise an already-decoded chat pair (the gateway's path: nothing is parsed twice).
    An `error` in the response (a stream that ended in an error event) marks every answer."""
    check_request(request)
    error = response.error.message if response.error is not None else None
    messages = [text_message(m) for m in request.messages]
    quarantine: Any = None
    if any(media_types(m.content) for m in request.messages):
        quarantine = "media_prompt"
    elif any(m.function_call is not None or m.role == "function" for m in request.messages) or any(
        c.message.function_call is not None for c in response.choices
    ):
        quarantine = "legacy_function_call"
    answers = []
    for choice in sorted(response.choices, key=lambda c: c.index):
        message = text_message(choice.message)
        message.role = "assistant"
        answers.append(
            Answer(
                index=choice.index,
                message=message,
                finish_reason=choice.finish_reason,
                problem=_problem(choice.finish_reason, message, error, interrupted),
                refusal=choice.message.refusal or None,
            )
        )
    return NormalizedLog(
        endpoint="chat",
        answers=answers,
        messages=messages,
        tools=request.tools or None,
        tool_choice=request.tool_choice,
        response_format=request.response_format,
        end_user=end_user or request.safety_identifier or request.user,
        quarantine=quarantine,
        prompt_sha256=hashlib.sha256(_encode([messages, request.tools])).hexdigest(),
        usage=response.usage,
    )


def normalize_completion(
    request: CompletionRequest,
    response: Completion,
    *,
    end_user: str | None = None,
    interrupted: bool = False,
) -> NormalizedLog:
    """Normalise an already-decoded completions pair. A list `prompt` of k strings answered with
    `n` choices each: choice i answers prompt i // n (the API's order)."""
    check_request(request)
    error = response.error.message if response.error is not None else None
    prompt = request.prompt
    prompts: list[str] | None
    if isinstance(prompt, str):
        prompts = [prompt]
    elif all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        prompts = None  # token ids
    n = request.n or 1
    answers = []
    for choice in sorted(response.choices, key=lambda c: c.index):
        message = Message(role="assistant", content=choice.text)
        text_prompt = None
        if prompts:
            text_prompt = prompts[min(choice.index // n, len(prompts) - 1)]
        answers.append(
            Answer(
                index=choice.index,
                message=message,
                finish_reason=choice.finish_reason,
                problem=_problem(choice.finish_reason, message, error, interrupted),
                prompt=text_prompt,
            )
        )
    return NormalizedLog(
        endpoint="completions",
        answers=answers,
        end_user=end_user or request.safety_identifier or request.user,
        quarantine=None if prompts is not None else "token_prompt",
        prompt_sha256=hashlib.sha256(_encode(prompts if prompts is not None else prompt)).hexdigest(),
        usage=response.usage,
    )
