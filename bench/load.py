"""Load and cost measurement shared by the benches: wrk runs (with wrk's own CPU) and a process
tree's CPU seconds read from /proc."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.tools import ensure_command

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class WrkResult:
    """One wrk run: requests/s, latency percentiles (ms), failures, and wrk's own CPU seconds."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers plus socket errors (connect, read, write, timeout)
    cpu_s: float


def run_wrk(url: str, script: str, *, seconds: float, connections: int) -> WrkResult:
    """Run `wrk -t1` against `url` with the Lua `script` text; one thread keeps wrk's own CPU
    (printed by the benches) to a fraction of one core."""
    wrk = ensure_command("wrk", "wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    before = _children_cpu()  # wrk is the only child reaped meanwhile
    try:
        done = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", f.name, url],
            capture_output=True, text=True,
        )  # fmt: skip
    finally:
        Path(f.name).unlink()
    cpu = _children_cpu() - before
    if done.returncode:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    out = done.stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    errors += sum(int(n) for n in socket.groups()) if socket else 0
    return WrkResult(
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        errors=errors,
        cpu_s=cpu,
    )


def post_script(body: str, headers: dict[str, str]) -> str:
    """A wrk script that sends the same POST every time (built once by wrk, no Lua per request)."""
    lines = ["wrk.method = 'POST'", f"wrk.body = {_lua(body)}"]
    for name, value in {"Content-Type": "application/json", **headers}.items():
        lines.append(f"wrk.headers[{_lua(name)}] = {_lua(value)}")
    return "\n".join(lines) + "\n"


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and every live descendant (all threads), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _lua(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
