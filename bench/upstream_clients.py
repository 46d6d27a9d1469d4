"""Which upstream HTTP client and which server path should the gateway use? Prototypes, measured.

Bench-only code (not product code), to decide the gateway rewrite (issue 19) by measurement:

1. Clients alone: one process (uvloop) sends requests to the stand-in upstream (bench/standin.py)
   from 32 concurrent tasks through each client, for a fixed time: requests/s and this process's
   CPU per request; then 32 concurrent streams read to the end: streams/s, CPU per stream, time
   to first chunk. Clients: httpx.AsyncClient (as the gateway uses it today: build_request +
   send(stream=True) + aread), aiohttp.ClientSession, and `PooledClient` below: a minimal
   keep-alive pool on asyncio protocols with httptools parsing (an idle-connection stack, no
   per-request scan, one write per request).
2. Server path x client: bench/proxy_stack.py as a real `uvicorn` process (uvloop, httptools, as
   `ratchet serve` runs), forwarding to the stand-in through each client, once as a Litestar
   route (with two injected dependencies, like the gateway route) and once as a bare ASGI
   callable (like service/api/fastpath.py); wrk at 32 connections and 32 streams
   (bench/streams.py); CPU per request from /proc. Each does the same work per request: decode
   the body, rewrite `model`, forward, decode the answer, set `id`/`model`, encode it; streams are
   relayed byte for byte.

Rounds alternate the variants; medians are printed.

    .venv/bin/python bench/upstream_clients.py [--rounds 3] [--seconds 5] [--part clients|stacks|all]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httptools

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
from bench.load import post_script, run_wrk, tree_cpu_seconds  # noqa: E402
from bench.tools import ensure_command  # noqa: E402

PATH = "/v1/chat/completions"
BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
).encode()
STREAM_BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40,
                          "stream": True}).encode()  # fmt: skip
CLIENTS = ("httpx", "aiohttp", "pooled")
SERVERS = ("litestar", "asgi")


class UpstreamError(Exception):
    """The upstream connection failed or closed before the answer was complete."""


class PooledResponse:
    """An answer being received: `status` and `headers` once the head is in, then the body."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self.done = False
        self.error: BaseException | None = None

    async def read(self) -> bytes:
        """The whole body."""
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (chunked transfer encoding already removed)."""
        while True:
            while self._chunks:
                yield self._chunks.popleft()
            if self.error:
                raise UpstreamError(str(self.error))
            if self.done:
                return
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._notify()

    def _finish(self, error: BaseException | None = None) -> None:
        self.done, self.error = True, error
        if error and not self.head.done():
            self.head.set_exception(UpstreamError(str(error)))
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: PooledClient) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: PooledResponse | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.transport.close()  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self.parser.get_status_code()
        response.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.response._feed(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        response, self.response = self.response, None
        keep = self.parser.should_keep_alive()
        response._finish()  # type: ignore[union-attr]
        if keep and not self.closed:
            self.pool._idle.append(self)
        else:
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the upstream closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self.response is not None:
            self.response._finish(exc)
            self.response = None


class PooledClient:
    """A minimal HTTP/1.1 keep-alive client for one upstream: idle connections on a stack (taken
    and returned in O(1), no scan), the request head and body sent in one write, httptools
    parsing. No redirects, cookies, proxies or retries; a connection closed while idle is noticed
    by the event loop (connection_lost) and never handed out again."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._fixed = f"host: {host}:{port}\r\n{extra}".encode()
        self._idle: list[_Connection] = []

    async def post(self, path: str, body: bytes, content_type: bytes = b"application/json") -> PooledResponse:
        """Send a POST; returns once the answer's head is in (read the body from the response)."""
        conn = await self._acquire()
        response = conn.response = PooledResponse()
        conn.transport.write(  # type: ignore[union-attr]
            b"POST " + path.encode() + b" HTTP/1.1\r\n" + self._fixed + b"content-type: " + content_type
            + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        await response.head
        return response

    async def _acquire(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        return conn

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.transport.close()  # type: ignore[union-attr]
        self._idle.clear()


# --- the three clients behind one call shape: post(body) -> (status, body) and stream(body) ---

Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]
Stream = Callable[[bytes], AsyncIterator[bytes]]


async def make_client(kind: str, upstream: str) -> tuple[Post, Stream, Callable[[], Awaitable[None]]]:
    """`post`, `stream` and `aclose` for client `kind` against `upstream` (http://host:port)."""
    host, port = upstream.removeprefix("http://").split(":")
    url = upstream + PATH
    if kind == "httpx":
        import httpx

        client = httpx.AsyncClient(
            timeout=httpx.Timeout(60, connect=3.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

        async def post(body: bytes) -> tuple[int, bytes]:
            request = client.build_request(
                "POST", url, content=body, headers={"content-type": "application/json"}
            )
            response = await client.send(request, stream=True)
            try:
                return response.status_code, await response.aread()
            finally:
                await response.aclose()

        async def stream(body: bytes) -> AsyncIterator[bytes]:
            request = client.build_request(
                "POST", url, content=body, headers={"content-type": "application/json"}
            )
            response = await client.send(request, stream=True)
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        return post, stream, client.aclose
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=60, connect=3.0),
        )

        async def post(body: bytes) -> tuple[int, bytes]:
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                return r.status, await r.read()

        async def stream(body: bytes) -> AsyncIterator[bytes]:
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                async for chunk in r.content.iter_any():
                    yield chunk

        return post, stream, session.close
    pooled = PooledClient(host, int(port))

    async def post(body: bytes) -> tuple[int, bytes]:
        async with asyncio.timeout(60):  # httpx and aiohttp above pay for theirs too
            response = await pooled.post(PATH, body)
            return response.status, await response.read()

    async def stream(body: bytes) -> AsyncIterator[bytes]:
        response = await pooled.post(PATH, body)
        async for chunk in response.chunks():
            yield chunk

    return post, stream, pooled.aclose


# --- part 1: the clients alone, in this process ---


async def drive_clients(kind: str, upstream: str, seconds: float, concurrency: int) -> dict[str, float]:
    post, stream, aclose = await make_client(kind, upstream)
    await post(BODY)  # connect and warm up
    out: dict[str, float] = {}
    done = 0
    deadline = time.perf_counter() + seconds

    async def requests() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            status, body = await post(BODY)
            assert status == 200 and body.endswith(b"}"), (status, body[:100])
            done += 1

    cpu, t0 = _own_cpu(), time.perf_counter()
    await asyncio.gather(*(requests() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    out["rps"], out["cpu_ms"] = done / elapsed, 1000 * (_own_cpu() - cpu) / done

    ttfc: list[float] = []
    deadline = time.perf_counter() + seconds

    async def streams() -> None:
        while time.perf_counter() < deadline:
            sent, first, tail = time.perf_counter(), 0.0, b""
            async for chunk in stream(STREAM_BODY):
                first = first or time.perf_counter()
                tail = (tail + chunk)[-32:]
            assert b"[DONE]" in tail, tail
            ttfc.append((first - sent) * 1000)

    cpu, t0 = _own_cpu(), time.perf_counter()
    await asyncio.gather(*(streams() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    out["streams_per_s"] = len(ttfc) / elapsed
    out["stream_cpu_ms"] = 1000 * (_own_cpu() - cpu) / len(ttfc)
    out["ttfc_ms"] = statistics.median(ttfc)
    await aclose()
    return out


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def clients_part(upstream: str, rounds: int, seconds: float) -> None:
    import uvloop

    results: dict[str, list[dict[str, float]]] = {k: [] for k in CLIENTS}
    for round_ in range(rounds):
        for kind in CLIENTS[round_ % 3 :] + CLIENTS[: round_ % 3]:
            results[kind].append(uvloop.run(drive_clients(kind, upstream, seconds, 32)))
    print(f"\nupstream clients alone: one uvloop process, 32 concurrent requests/streams to the stand-in, "
          f"{rounds} rounds of {seconds:g} s, medians")  # fmt: skip
    print(f"{'client':<26}{'req/s':>9}{'CPU ms/req':>12}{'streams/s':>11}{'CPU ms/stream':>15}{'TTFC ms':>9}")
    for kind, rows in results.items():
        m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{kind:<26}{m['rps']:>9,.0f}{m['cpu_ms']:>12.3f}{m['streams_per_s']:>11,.0f}"
              f"{m['stream_cpu_ms']:>15.3f}{m['ttfc_ms']:>9.2f}")  # fmt: skip


# --- part 2: server path x client, as real processes ---


def stacks_part(upstream: str, standin_pid: int, rounds: int, seconds: float) -> None:
    from bench.gateway import System, run_streams
    from tests.fixtures.server import free_port

    ensure_command("wrk", "wrk")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        for server in SERVERS:
            for client in CLIENTS:
                port = free_port()
                name = f"{server} + {client}"
                procs[name] = subprocess.Popen(
                    [sys.executable, str(BENCH / "proxy_stack.py"), "--server", server, "--client", client,
                     "--port", str(port), "--upstream", upstream], start_new_session=True,
                )  # fmt: skip
                urls[name] = f"http://127.0.0.1:{port}{PATH}"
        for name, url in urls.items():
            _wait_ready(url, name)
        results: dict[str, list[dict[str, float]]] = {k: [] for k in urls}
        names = list(urls)
        plain = post_script(BODY.decode(), {})
        for name in names:  # warm-up
            run_wrk(urls[name], plain, seconds=2, connections=32)
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                pid = procs[name].pid
                cpu, up = tree_cpu_seconds(pid), tree_cpu_seconds(standin_pid)
                load = run_wrk(urls[name], plain, seconds=seconds, connections=32)
                time.sleep(0.3)
                row = {"rps": load.rps, "p99_ms": load.p99_ms, "errors": load.errors,
                       "cpu_ms": 1000 * (tree_cpu_seconds(pid) - cpu) / max(load.requests, 1),
                       "standin_ms": 1000 * (tree_cpu_seconds(standin_pid) - up) / max(load.requests, 1)}  # fmt: skip
                cpu = tree_cpu_seconds(pid)
                streams = run_streams(System(name, urls[name], {}), seconds, 32)
                time.sleep(0.3)
                row |= {"streams_per_s": streams["streams_per_s"], "ttfc_ms": streams["ttfc_p50_ms"],
                        "stream_cpu_ms": 1000 * (tree_cpu_seconds(pid) - cpu) / max(streams["streams"], 1),
                        "stream_errors": streams["errors"]}  # fmt: skip
                results[name].append(row)
            print(
                f"stacks: round {round_ + 1}/{rounds} done (load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            proc.wait()
    print(f"\nserver path x upstream client: one uvicorn process forwarding to the stand-in, wrk -c32 and 32 streams, "
          f"{rounds} rounds of {seconds:g} s, medians (CPU from /proc: the proxy process)")  # fmt: skip
    print(f"{'stack':<22}{'req/s':>9}{'p99 ms':>8}{'CPU ms/req':>12}{'errors':>8}{'streams/s':>11}"
          f"{'TTFC ms':>9}{'CPU ms/stream':>15}{'errors':>8}")  # fmt: skip
    for name, rows in results.items():
        m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{name:<22}{m['rps']:>9,.0f}{m['p99_ms']:>8.1f}{m['cpu_ms']:>12.3f}{sum(r['errors'] for r in rows):>8.0f}"
              f"{m['streams_per_s']:>11,.0f}{m['ttfc_ms']:>9.2f}{m['stream_cpu_ms']:>15.3f}"
              f"{sum(r['stream_errors'] for r in rows):>8.0f}")  # fmt: skip
    base = statistics.median(r["cpu_ms"] for r in results["litestar + httpx"])
    print("CPU per request relative to litestar + httpx (today's stack): " + ", ".join(
        f"{n} {statistics.median(r['cpu_ms'] for r in rows) / base:.2f}x" for n, rows in results.items()))  # fmt: skip


def _wait_ready(url: str, name: str) -> None:
    import httpx

    for _ in range(60):
        try:
            if httpx.post(url, content=BODY, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} at {url} did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("clients", "stacks", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    from tests.fixtures.server import free_port

    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    standin = subprocess.Popen([sys.executable, str(BENCH / "standin.py"), str(port)])
    try:
        time.sleep(1.0)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        if args.part in ("clients", "all"):
            clients_part(upstream, args.rounds, args.seconds)
        if args.part in ("stacks", "all"):
            stacks_part(upstream, standin.pid, args.rounds, args.seconds)
    finally:
        standin.terminate()
        standin.wait()


if __name__ == "__main__":
    main()
