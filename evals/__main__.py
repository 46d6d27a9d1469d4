"""Evaluate a candidate adapter against the incumbent on a running vLLM server.

    python -m evals --vllm-url http://127.0.0.1:8000 --candidate proj@v3 --incumbent proj@v2 \\
        --holdout data/runs/7/holdout.parquet --rules rules.json --out report.json

Writes the JSON report to --out, prints the Markdown summary. Exit status: 0 promote,
1 do not promote, 2 the evaluation could not be done (bad input, vLLM or judge down).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from evals.config import (
    DEFAULT_JUDGE_PROMPT,
    EvalConfig,
    FeedbackGateConfig,
    GenerationConfig,
    GoldenConfig,
    JudgeConfig,
    RulesConfig,
)
from evals.errors import EvalInputError
from evals.runner import run

EXIT_PROMOTE, EXIT_REJECT, EXIT_FAILED = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evals", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--vllm-url", required=True, nargs="+",
                   help="vLLM server root, e.g. http://127.0.0.1:8000; several replicas share the requests")  # fmt: skip
    p.add_argument("--candidate", required=True, help="served name of the candidate adapter")
    p.add_argument("--incumbent", required=True, help="served name of the incumbent (champion or v0)")
    p.add_argument("--holdout", help="holdout.parquet of the run's snapshot")
    p.add_argument("--golden", help="golden set JSONL (prompt/messages, reference and/or checks per line)")
    p.add_argument(
        "--golden-tolerance", type=float, default=0.02, help="largest tolerated golden drop (0.02)"
    )
    p.add_argument("--rules", help="rules JSON: {'rules': [...], 'role': 'guard', 'tolerance': 0.02}")
    p.add_argument(
        "--judge-url", help="OpenAI-compatible base URL of the judge, e.g. https://api.openai.com/v1"
    )
    p.add_argument("--judge-model", help="judge model name")
    p.add_argument(
        "--judge-prompt", help="file with the judge prompt ({conversation}, {answer_a}, {answer_b})"
    )
    p.add_argument(
        "--judge-api-key-env",
        default="RATCHET_JUDGE_API_KEY",
        help="environment variable holding the judge's key",
    )
    p.add_argument("--no-preference-agreement", action="store_true", help="skip the log-prob diagnostic")
    p.add_argument(
        "--feedback",
        action="store_true",
        help="also build evidence from the holdout's own feedback (references, calibrated judges, guards)",
    )
    p.add_argument(
        "--reward-model",
        help="with --feedback: the reward model directory the training run wrote (learned judge)",
    )
    p.add_argument("--level", type=float, default=0.95, help="CI confidence level (0.95)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (10000)")
    p.add_argument("--min-samples", type=int, default=30, help="examples a primary scorer needs (30)")
    p.add_argument("--max-examples", type=int, default=1000, help="most holdout prompts evaluated (1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=64, help="most tokens per generated answer (64)")
    p.add_argument("--temperature", type=float, default=0.0, help="generation temperature (0 = greedy)")
    p.add_argument("--concurrency", type=int, default=16, help="vLLM requests in flight (16)")
    p.add_argument("--out", required=True, help="where to write the JSON report")
    p.add_argument("--markdown", help="also write the Markdown summary here")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig the command line describes; `EvalInputError` if it does not add up."""
    if args.reward_model and not args.feedback:
        raise EvalInputError("--reward-model is used by the feedback evidence: add --feedback")
    judge = None
    if args.judge_url or args.judge_model:
        if not (args.judge_url and args.judge_model):
            raise EvalInputError("give both --judge-url and --judge-model")
        prompt = (
            Path(args.judge_prompt).read_text(encoding="utf-8") if args.judge_prompt else DEFAULT_JUDGE_PROMPT
        )
        judge = JudgeConfig(
            url=args.judge_url,
            model=args.judge_model,
            prompt=prompt,
            api_key=os.environ.get(args.judge_api_key_env),
        )
    return EvalConfig(
        vllm_url=args.vllm_url[0] if len(args.vllm_url) == 1 else args.vllm_url,
        candidate=args.candidate,
        incumbent=args.incumbent,
        holdout=args.holdout,
        golden=GoldenConfig(path=args.golden, tolerance=args.golden_tolerance) if args.golden else None,
        rules=RulesConfig.load(args.rules) if args.rules else None,
        judge=judge,
        feedback=FeedbackGateConfig(reward_model=args.reward_model) if args.feedback else None,
        preference_agreement=not args.no_preference_agreement,
        generation=GenerationConfig(
            max_tokens=args.max_tokens, temperature=args.temperature, concurrency=args.concurrency
        ),
        level=args.level,
        resamples=args.resamples,
        min_samples=args.min_samples,
        max_examples=args.max_examples,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = run(config_from_args(args))
    except (EvalInputError, OSError) as exc:
        print(f"evals: {exc}", file=sys.stderr)
        return EXIT_FAILED
    Path(args.out).write_bytes(report.to_json())
    markdown = report.to_markdown()
    if args.markdown:
        Path(args.markdown).write_text(markdown, encoding="utf-8")
    print(markdown)
    if report.status == "failed":
        print(f"evals: evaluation failed: {report.error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_PROMOTE if report.decision.promote else EXIT_REJECT


if __name__ == "__main__":
    sys.exit(main())
