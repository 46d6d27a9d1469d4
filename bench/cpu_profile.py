"""Where a Python server's CPU goes: py-spy samples sorted into the parts that decide the gateway's
cost per request.

py-spy samples the running process (all threads, native frames so msgspec and DuckDB show up,
idle threads left out) at a low rate: native unwinding pauses the process for each sample, and at
200 Hz it fell behind and halved the throughput it was measuring. Each sample is put into one
category: a thread other than the event loop's by what it runs (the group-commit writer is the
durable log write); on the event loop, a stack that passes through the log hand-off (capture,
store, `Gateway._log`/`_write`) is the durable log write too, and one through httpcore's pool
scan is pool bookkeeping; any other stack goes to the
innermost frame that belongs to a known part (so msgspec called from Litestar counts as msgspec,
and the socket check under httpcore's pool as httpcore).

    python bench/cpu_profile.py SAMPLES.raw   # re-sort a saved py-spy `--format raw` file
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.load import WrkResult, tree_cpu_seconds  # noqa: E402
from bench.tools import ensure_pyspy  # noqa: E402

RATE_HZ = 40

LOG_WRITE_LOOP = "durable log write: event loop side (capture, row, queue)"
LOG_WRITE_THREAD = "durable log write: writer thread (Arrow, DuckDB, commit)"
POOL = "httpx/httpcore: connection-pool bookkeeping"
CLIENT = "httpx/httpcore/h11/anyio: request and response"
# Innermost-first: the first (category, needles) whose needle is in a frame names the sample.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("garbage collector", ("gc_collect", "collect_generations", "gc_collect_main")),
    ("msgspec decode/encode", ("msgspec", "_core.cpython")),
    (CLIENT, ("httpcore/", "httpx/", "h11/", "anyio/")),
    (
        "aiohttp/yarl/multidict: upstream request and response",
        ("aiohttp/", "yarl/", "multidict/", "_http_parser"),
    ),
    ("Litestar routing, request, response, DI", ("litestar/",)),
    ("prometheus_client metrics", ("prometheus_client/",)),
    ("uvicorn + httptools (HTTP server)", ("uvicorn/", "httptools")),
    ("Ratchet's own code", ("service/", "deploy/")),
    ("event loop (uvloop, asyncio)", ("uvloop", "asyncio/")),
]
LOG_FRAMES = ("service/capture.py", "service/store/", "Gateway._log ", "Gateway._store ", "Gateway._write ")
# httpcore's pool: on every request it walks the pooled connections and asks each whether it has
# expired (a socket readability check), before and after the request (encode/httpcore #928, #1035).
POOL_FRAMES = ("_assign_requests_to_connections", "has_expired", "is_socket_readable", "_close_connections")
IDLE = ("epoll_wait", "epoll_pwait")  # waiting for I/O: py-spy's native stacks can still show it
SYSCALLS = ("write (", "writev (", "send (", "sendmsg (", "sendto (", "read (", "recv (", "recvfrom (")


def categorize(stack: list[str]) -> str:
    """The category of one sample; `stack` is outermost frame first, the thread name frame first."""
    thread, frames = stack[0], stack[1:]
    if frames and frames[-1].startswith(IDLE):
        return IDLE_CATEGORY
    if "MainThread" not in thread:
        if any("service/store/" in f for f in frames):
            return LOG_WRITE_THREAD
        return "other threads"
    if any(needle in f for f in frames for needle in LOG_FRAMES):
        return LOG_WRITE_LOOP
    if any(needle in f for f in frames for needle in POOL_FRAMES):
        return POOL
    syscall = bool(frames) and frames[-1].startswith(SYSCALLS) and "libc" in frames[-1]
    for frame in reversed(frames):
        for name, needles in PARTS:
            if any(needle in frame for needle in needles):
                return f"{name} — socket syscalls (kernel)" if syscall else name
    return "other (stdlib, interpreter)"


IDLE_CATEGORY = "idle: waiting in epoll (left out)"


def breakdown(raw: str) -> Counter[str]:
    """Samples per category from py-spy's raw (collapsed-stack) output."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[categorize(stack.split(";"))] += int(n)
    return counts


def format_breakdown(counts: Counter[str], cpu_ms_per_request: float | None = None) -> str:
    idle = counts.pop(IDLE_CATEGORY, 0)
    total = sum(counts.values()) or 1
    lines = [f"{'part':<66}{'share':>8}" + (f"{'ms/request':>12}" if cpu_ms_per_request else "")]
    for name, n in counts.most_common():
        share = n / total
        cost = f"{share * cpu_ms_per_request:>12.2f}" if cpu_ms_per_request else ""
        lines.append(f"{name:<66}{share:>8.1%}{cost}")
    lines.append(f"({total} samples on CPU; {idle} more waiting in epoll, left out)")
    return "\n".join(lines)


def profile_process(pid: int, seconds: float, load: Callable[[], WrkResult], out: Path) -> str:
    """Sample `pid` with py-spy for `seconds` while `load()` runs (it must outlast the sampling);
    returns the breakdown, with CPU ms per request from /proc over the whole load run."""
    pyspy = ensure_pyspy()
    sampler = subprocess.Popen(
        [str(pyspy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(RATE_HZ),
         "--format", "raw", "--native", "--threads", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)  # py-spy attaches
    cpu = tree_cpu_seconds(pid)
    result = load()
    cpu = tree_cpu_seconds(pid) - cpu
    _, err = sampler.communicate()
    if sampler.returncode or not out.exists():
        return f"py-spy failed ({sampler.returncode}): {err.strip()[-500:]}"
    per_request = 1000 * cpu / max(result.requests, 1)
    head = (f"\nCPU profile of ratchet serve under 32 clients, non-streaming (py-spy --native, {RATE_HZ} Hz, "
            f"{seconds:g} s): {result.rps:.0f} req/s while sampled, {per_request:.2f} ms CPU per request")  # fmt: skip
    return head + "\n" + format_breakdown(breakdown(out.read_text()), per_request)


def main() -> None:
    print(format_breakdown(breakdown(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
