"""A cheap load generator for streamed completions: N keep-alive connections, each sending one
streaming request after another for a fixed time. wrk cannot see a stream's first chunk, so this
measures time to first chunk (request sent -> first body bytes) and the whole stream's duration.

A bare asyncio protocol on uvloop with httptools parsing, one pre-encoded request: its own CPU per
stream is printed with the results so a reader can see it stayed small next to the gateway's.
Prints one JSON object: streams done, errors, streams/s, ttfc and duration percentiles (ms),
and this process's CPU seconds.

    python bench/streams.py URL --body JSON [--header 'name: value'] [--connections 32] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
from urllib.parse import urlsplit

import httptools
import uvloop


class Stream(asyncio.Protocol):
    """One connection that sends `request` again as soon as the previous stream has ended."""

    def __init__(self, request: bytes, results: Results, deadline: float) -> None:
        self.request = request
        self.results = results
        self.deadline = deadline
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.sent = self.first = 0.0
        self.tail = b""
        self.in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.first = 0.0
        self.tail = b""
        self.sent = time.perf_counter()
        self.in_flight = True
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.results.errors += 1
            self.transport.close()  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        if not self.first:
            self.first = time.perf_counter()
        self.tail = (self.tail + body)[-64:]

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        self.in_flight = False
        ok = self.parser.get_status_code() == 200 and b"[DONE]" in self.tail
        if ok:
            self.results.ttfc.append((self.first - self.sent) * 1000)
            self.results.durations.append((now - self.sent) * 1000)
        else:
            self.results.errors += 1
        if now < self.deadline and not self.transport.is_closing():  # type: ignore[union-attr]
            self._send()
        else:
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.results.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


class Results:
    def __init__(self) -> None:
        self.ttfc: list[float] = []
        self.durations: list[float] = []
        self.errors = 0


async def run(
    url: str, body: bytes, headers: list[str], connections: int, seconds: float
) -> dict[str, float]:
    parts = urlsplit(url)
    head = [f"POST {parts.path or '/'} HTTP/1.1", f"host: {parts.netloc}", "content-type: application/json",
            f"content-length: {len(body)}", "accept: text/event-stream", *headers]  # fmt: skip
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    results = Results()
    loop = asyncio.get_running_loop()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + seconds

    async def slot() -> None:  # a gateway that closes the connection gets a new one
        while time.perf_counter() < deadline:
            _, protocol = await loop.create_connection(
                lambda: Stream(request, results, deadline), parts.hostname, parts.port
            )
            await protocol.closed

    await asyncio.wait_for(asyncio.gather(*(slot() for _ in range(connections))), seconds + 60)
    elapsed = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    done = len(results.ttfc)
    return {
        "streams": done,
        "errors": results.errors,
        "seconds": elapsed,
        "streams_per_s": done / elapsed,
        "ttfc_p50_ms": _pct(results.ttfc, 50),
        "ttfc_p99_ms": _pct(results.ttfc, 99),
        "duration_p50_ms": _pct(results.durations, 50),
        "duration_p99_ms": _pct(results.durations, 99),
        "cpu_s": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime,
    }


def _pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100)[p - 1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="the JSON request body (with stream: true)")
    parser.add_argument("--header", action="append", default=[], help="'name: value', repeatable")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    result = uvloop.run(run(args.url, args.body.encode(), args.header, args.connections, args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
