"""Durable ingest throughput against the bare decode ceiling, measured in one run.

Starts, one after the other on loopback: a bare Litestar endpoint that only decodes the body
(bench/bare_server.py), then `ratchet serve` on a fresh DuckDB file. wrk drives each with ~2 KB
chat logs with unique ids. Prints requests/s and latency as ratios to the ceiling, batch ingest in
logs/s, and how soon an acknowledged log can be read back. The header line gives the 1-minute
load average before and after: on a shared machine, repeat a run whose load exceeds the cores.

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 32]

Goals (this 2-core machine): single-log ingest >= 0.65x the ceiling's requests/s (issue 11, after
typed rows and normalisation at capture; issue 2 asked 0.50x) with p99 <= 25 ms at 32
connections; batch >= 20,000 logs/s; readable <= 50 ms after the ack.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.load import run_wrk  # noqa: E402
from bench.tools import ensure_command  # noqa: E402
from tests.fixtures.server import RatchetProcess, free_port  # noqa: E402

ANSWER = "The capital of France is Paris. " * 40  # ~1.3 KB
QUESTION = "Tell me about the capital of France, with some history please. " * 10  # ~0.6 KB

LUA = r"""
local counter = 0
local tid = 0
local batch = %(batch)d
local question = "%(question)s"
local answer = "%(answer)s"
function setup(thread) thread:set("tid", math.random(1, 2^30)) end
local function log(id)
  return '{"id":"' .. id .. '","end_user":"u' .. (counter %% 100) .. '","request":{"model":"bench","messages":[{"role":"user","content":"'
    .. question .. '"}]},"response":{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"'
    .. answer .. '"},"finish_reason":"stop"}]},"latency_ms":120.5,"prompt_tokens":150,"completion_tokens":300}'
end
request = function()
  counter = counter + 1
  local id = "%(run)s-" .. tid .. "-" .. counter
  local body
  if batch == 0 then body = log(id) else
    local items = {}
    for i = 1, batch do items[i] = log(id .. "-" .. i) end
    body = '{"logs":[' .. table.concat(items, ",") .. ']}'
  end
  return wrk.format("POST", "/v1/logs", {["Content-Type"]="application/json", ["Authorization"]="Bearer %(key)s"}, body)
end
"""


def wrk(url: str, key: str, seconds: int, connections: int, batch: int = 0) -> dict[str, float]:
    script = LUA % {
        "batch": batch,
        "question": QUESTION,
        "answer": ANSWER,
        "key": key,
        "run": uuid.uuid4().hex[:8],
    }
    result = run_wrk(url, script, seconds=seconds, connections=connections)
    return {
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": float(result.errors),
    }


def read_after_ack(server: RatchetProcess, key: str, trials: int = 200) -> list[float]:
    """Milliseconds from a log's 202 until GET returns it (ack means committed: one GET should do)."""
    delays = []
    with server.client(key) as c:
        for i in range(trials):
            log_id = f"probe-{uuid.uuid4().hex}"
            body = {"id": log_id, "request": {"messages": [{"role": "user", "content": QUESTION}]},
                    "response": {"choices": [{"message": {"role": "assistant", "content": ANSWER}}]}}  # fmt: skip
            assert c.post("/v1/logs", json=body).status_code == 202
            acked = time.perf_counter()
            while c.get(f"/v1/logs/{log_id}").status_code != 200:
                pass
            delays.append((time.perf_counter() - acked) * 1000)
            if i == 0:
                delays.clear()  # first read warms the connection and the query
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch", type=int, default=200, help="logs per batch request")
    args = parser.parse_args()
    ensure_command("wrk", "wrk")

    load_before = os.getloadavg()[0]
    port = free_port()
    bare = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_server.py"), str(port)], cwd=ROOT)
    try:
        _wait(f"http://127.0.0.1:{port}/v1/logs")
        wrk(f"http://127.0.0.1:{port}", "x", 2, args.connections)  # warm-up
        ceiling = wrk(f"http://127.0.0.1:{port}", "x", args.seconds, args.connections)
    finally:
        bare.terminate()
        bare.wait()

    with tempfile.TemporaryDirectory() as tmp:
        server = RatchetProcess(Path(tmp) / "data").start()
        try:
            key = server.create_project("bench")
            wrk(server.url, key, 2, args.connections)  # warm-up
            checkpoints = _checkpoints(server)
            single = wrk(server.url, key, args.seconds, args.connections)
            checkpoints = _checkpoints(server) - checkpoints
            batch = wrk(server.url, key, args.seconds, 4, batch=args.batch)
            delays = read_after_ack(server, key)
            db_mb = sum(f.stat().st_size for f in (Path(tmp) / "data").glob("ratchet.duckdb*")) / 1e6
        finally:
            server.stop()

    body_kb = len(QUESTION + ANSWER) / 1000 + 0.3
    print(f"\ningest bench: ~{body_kb:.1f} KB logs, {args.connections} connections, {args.seconds}s per run, "
          f"{os.cpu_count()} cores, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")  # fmt: skip
    print(f"{'path':<38}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}{'non-2xx':>9}")
    for name, r in (("bare decode (ceiling)", ceiling), ("durable single log (group commit)", single)):
        print(f"{name:<38}{r['rps']:>10.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['rps'] / ceiling['rps']:>8.2f}{r['errors']:>9.0f}")  # fmt: skip
    logs_per_s = batch["rps"] * args.batch
    print(f"{f'durable batch of {args.batch} (4 conns)':<38}{batch['rps']:>10.0f}{batch['p50_ms']:>9.1f}"
          f"{batch['p99_ms']:>9.1f}{logs_per_s / ceiling['rps']:>8.2f}{batch['errors']:>9.0f}"
          f"   = {logs_per_s:,.0f} logs/s")  # fmt: skip
    print(f"readable after ack: p50 {statistics.median(delays):.1f} ms, "
          f"max {max(delays):.1f} ms over {len(delays)} logs;  database {db_mb:.0f} MB")  # fmt: skip
    print(f"checkpoints during the single-log run: {checkpoints:.0f} (each stops every commit for ~0.1 s, "
          "which wrk counts for every request it would have sent meanwhile)")  # fmt: skip
    ok = single["rps"] / ceiling["rps"] >= 0.65 and single["p99_ms"] <= 25
    print(f"goals: single >= 0.65x and p99 <= 25 ms: {'met' if ok else 'NOT met'}; "
          f"batch >= 20,000 logs/s: {'met' if logs_per_s >= 20000 else 'NOT met'}; "
          f"readable <= 50 ms: {'met' if max(delays) <= 50 else 'NOT met'}")  # fmt: skip


def _checkpoints(server: RatchetProcess) -> float:
    metrics = httpx.get(f"{server.url}/metrics").text
    found = re.search(r"^ratchet_write_checkpoint_seconds_count ([\d.e+]+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def _wait(url: str) -> None:
    for _ in range(100):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


if __name__ == "__main__":
    main()
