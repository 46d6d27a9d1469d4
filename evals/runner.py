"""One evaluation from config to report: build the eval set, let both models answer every prompt
(concurrently, bounded), score each example with each scorer, bootstrap, decide.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import httpx

from evals.calibration import DEFAULT_CALIBRATION
from evals.config import EvalConfig
from evals.decision import Evidence, decide
from evals.errors import EvalError, EvalInputError, ScorerError
from evals.evalset import EvalExample, fingerprint, load_golden, load_holdout
from evals.feedback import HeldOutRating, group_feedback, read_holdout_ratings
from evals.feedback_gate import build_feedback_scorers
from evals.report import Report, ScorerResult, Timings
from evals.reward_model import RewardModel, TrainerRewardModel
from evals.scorers.agreement import PreferenceAgreement
from evals.scorers.base import AnswerPair, ExampleScore, Scorer
from evals.scorers.golden import GoldenScorer
from evals.scorers.judge import PairwiseJudge
from evals.scorers.rules import RuleScorer
from evals.server import ChatAnswer, ModelServer
from evals.statistics import PairedStats, paired_bootstrap

T = TypeVar("T")


def build_eval_set(config: EvalConfig) -> list[EvalExample]:
    """Holdout examples then golden ones; `EvalInputError` if there is nothing to evaluate."""
    examples: list[EvalExample] = []
    if config.holdout is not None:
        examples += load_holdout(config.holdout, max_examples=config.max_examples, seed=config.seed)
    if config.golden is not None:
        examples += load_golden(config.golden.path)
    if not examples:
        raise EvalInputError(f"the eval set is empty (holdout {config.holdout!r} has no rows)")
    return examples


def build_scorers(
    config: EvalConfig,
    *,
    judge_transport: httpx.AsyncBaseTransport | None = None,
    ratings: Sequence[HeldOutRating] | None = None,
    reward_model: RewardModel | None = None,
) -> list[Scorer]:
    """The scorers the config declares, in report order.

    With `config.feedback` enabled, `ratings` (the holdout's feedback) add the feedback-derived
    scorers (`evals.feedback_gate`) and the LLM judge is calibrated on them before it may decide.
    `reward_model` is the learned judge's model (default: the config's reward model directory,
    scored by the trainer).
    """
    feedback_cfg = config.feedback if config.feedback is not None and config.feedback.enabled else None
    feedback = group_feedback(ratings) if feedback_cfg is not None and ratings is not None else None
    scorers: list[Scorer] = []
    judge = None
    if config.judge is not None:
        calibration = feedback_cfg.calibration if feedback_cfg else DEFAULT_CALIBRATION
        judge = PairwiseJudge(
            config.judge, transport=judge_transport, feedback=feedback, calibration=calibration
        )
        scorers.append(judge)
    if config.rules is not None:
        scorers.append(RuleScorer(config.rules))
    if config.golden is not None:
        scorers.append(GoldenScorer(config.golden))
    if feedback_cfg is not None and feedback is not None:
        if reward_model is None and feedback_cfg.reward_model is not None:
            reward_model = TrainerRewardModel(
                feedback_cfg.reward_model,
                command=feedback_cfg.reward_command,
                timeout_s=feedback_cfg.reward_timeout_s,
            )
        scorers += build_feedback_scorers(
            feedback_cfg, feedback, min_samples=config.min_samples, reward_model=reward_model, judge=judge
        )
    if config.preference_agreement and config.holdout is not None:
        scorers.append(PreferenceAgreement(candidate=config.candidate, incumbent=config.incumbent))
    return scorers


async def _all(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Await all, in order; on the first exception cancel the rest and raise it (not a group)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(a) for a in awaitables]  # type: ignore[arg-type]
    except BaseExceptionGroup as eg:
        first = eg.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


def _sampling_seed(seed: int, example_id: str, side: str) -> int:
    # Different per side: with sampling, candidate and incumbent are independent draws even when
    # they are the same adapter (that is what "no difference" looks like).
    return int.from_bytes(hashlib.sha256(f"{seed}:{example_id}:{side}".encode()).digest()[:4], "big") >> 1


async def generate_answers(
    server: ModelServer, config: EvalConfig, examples: list[EvalExample]
) -> list[AnswerPair]:
    """Both models' answers to every example, requested concurrently (bounded by the server)."""
    g = config.generation

    def ask(model: str, example: EvalExample, side: str) -> Awaitable[ChatAnswer]:
        seed = _sampling_seed(config.seed, example.id, side) if g.temperature > 0 else None
        return server.chat_answer(
            model,
            example.messages,
            max_tokens=g.max_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            seed=seed,
            tools=example.tools,
            tool_choice=example.tool_choice,
            response_format=example.response_format,
        )

    texts = await _all(
        [
            ask(model, e, side)
            for e in examples
            for side, model in (("c", config.candidate), ("i", config.incumbent))
        ]
    )
    return [
        AnswerPair(
            example_id=e.id,
            candidate=texts[2 * i].text,
            incumbent=texts[2 * i + 1].text,
            candidate_finish=texts[2 * i].finish_reason,
            incumbent_finish=texts[2 * i + 1].finish_reason,
        )
        for i, e in enumerate(examples)
    ]


async def score_with(
    scorer: Scorer,
    config: EvalConfig,
    examples: list[EvalExample],
    answers: list[AnswerPair],
    server: ModelServer,
) -> ScorerResult:
    """Run one scorer over its examples concurrently and bootstrap its differences.

    Raises the scorer's `EvalError`s, and `ScorerError` when more examples failed than it tolerates.
    The scorer's `prepare` (if any) runs first, with every example and answer.
    """
    if hasattr(scorer, "prepare"):
        await scorer.prepare(examples, answers)
    chosen = [(e, a) for e, a in zip(examples, answers, strict=True) if scorer.applies_to(e)]
    problems: list[str] = []

    async def one(example: EvalExample, pair: AnswerPair) -> ExampleScore | None:
        try:
            return await scorer.score(example, pair, server)
        except ScorerError as exc:
            problems.append(str(exc))
            return None

    scores = [s for s in await _all([one(e, a) for e, a in chosen]) if s is not None]
    if problems and len(problems) > scorer.max_error_fraction * len(chosen):
        raise ScorerError(
            f"{scorer.name}: {len(problems)} of {len(chosen)} examples could not be scored "
            f"(tolerated share {scorer.max_error_fraction:g}); first: {problems[0]}"
        )
    stats = None
    if scores:
        seed = config.seed + zlib.crc32(scorer.name.encode())
        stats = paired_bootstrap(
            [s.difference for s in scores], level=config.level, resamples=config.resamples, seed=seed
        )
    cand = [s.candidate for s in scores if s.candidate is not None]
    inc = [s.incumbent for s in scores if s.incumbent is not None]
    notes = scorer.notes(scores) if hasattr(scorer, "notes") else []
    if problems:
        notes = [*notes, f"{len(problems)} examples dropped: {problems[0]}"]
    summary = scorer.summary(scores) if hasattr(scorer, "summary") and scores else ""
    return ScorerResult(
        name=scorer.name,
        kind=scorer.kind,
        role=scorer.role,
        tolerance=scorer.tolerance,
        applicable=len(chosen),
        invalid=len(problems),
        stats=stats,
        candidate_mean=sum(cand) / len(cand) if cand else None,
        incumbent_mean=sum(inc) / len(inc) if inc else None,
        notes=notes,
        scores=scores,
        eligibility=getattr(scorer, "eligibility", None)
        or declared_eligibility(scorer, stats, config.min_samples),
        calibration=getattr(scorer, "calibration", None),
        summary=summary,
    )


def declared_eligibility(scorer: Scorer, stats: PairedStats | None, min_samples: int) -> str:
    """Why a scorer that does not judge its own eligibility (rules, golden set, a programmatic
    scorer, preference agreement) may or may not decide: its declared role and its sample size."""
    n = stats.n if stats is not None else 0
    if scorer.role == "diagnostic":
        return f"reported only: declared diagnostic ({n} examples)"
    if scorer.role == "primary" and n < min_samples:
        return f"not eligible: declared primary, {n} examples scored, {min_samples} needed"
    return f"eligible: declared {scorer.role} ({n} examples)"


def evidence_of(results: Sequence[ScorerResult]) -> list[Evidence]:
    """What the decision weighs of each scorer's result."""
    return [
        Evidence(
            name=r.name,
            role=r.role,
            tolerance=r.tolerance,
            stats=r.stats,
            eligibility=r.eligibility or "",
            summary=r.summary,
        )
        for r in results
    ]


async def arun(
    config: EvalConfig,
    *,
    scorers: Sequence[Scorer] = (),
    vllm_transport: httpx.AsyncBaseTransport | None = None,
    judge_transport: httpx.AsyncBaseTransport | None = None,
    reward_model: RewardModel | None = None,
) -> Report:
    """Evaluate `config.candidate` against `config.incumbent`; see `run`."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    config = config.validated()
    examples = build_eval_set(config)
    ratings = None
    if config.feedback is not None and config.feedback.enabled and config.holdout is not None:
        ratings = read_holdout_ratings(config.holdout)
    # closed here; `scorers` are the caller's
    owned = build_scorers(config, judge_transport=judge_transport, ratings=ratings, reward_model=reward_model)
    all_scorers = owned + list(scorers)
    names = [s.name for s in all_scorers]
    if len(set(names)) != len(names):
        for s in owned:
            if hasattr(s, "aclose"):
                await s.aclose()
        raise EvalInputError(f"scorer names must be unique, got {names}")
    answers: list[AnswerPair] = []
    results: list[ScorerResult] = []
    error = None
    generation_s = scoring_s = 0.0
    scorers_s: dict[str, float] = {}
    g = config.generation
    server = ModelServer(
        config.vllm_url,
        api_key=config.vllm_api_key,
        concurrency=g.concurrency,
        timeout_s=g.timeout_s,
        transport=vllm_transport,
    )
    async with server:
        try:
            await server.require(config.candidate, config.incumbent)
            t1 = time.perf_counter()
            answers = await generate_answers(server, config, examples)
            t2 = time.perf_counter()
            generation_s = t2 - t1

            async def timed(scorer: Scorer) -> ScorerResult:
                result = await score_with(scorer, config, examples, answers, server)
                scorers_s[scorer.name] = round(time.perf_counter() - t2, 3)
                return result

            results = await _all([timed(s) for s in all_scorers])
            scoring_s = time.perf_counter() - t2
        except EvalError as exc:
            error = str(exc)
            results = []
        finally:
            for s in owned:
                if hasattr(s, "aclose"):
                    await s.aclose()
    decision = decide(evidence_of(results), min_samples=config.min_samples, error=error)
    busy = generation_s + scoring_s
    return Report(
        status="failed" if error else "ok",
        error=error,
        candidate=config.candidate,
        incumbent=config.incumbent,
        started_at=started_at,
        config=config.redacted(),
        scorers=names,
        eval_set_sha256=fingerprint(examples),
        eval_set=examples,
        answers=answers,
        results=results,
        decision=decision,
        timings=Timings(
            generation_s=round(generation_s, 3),
            scoring_s=round(scoring_s, 3),
            total_s=round(time.perf_counter() - t0, 3),
            requests=server.requests,
            examples_per_s=round(len(examples) / busy, 3) if busy > 0 else 0.0,
            scorers_s=scorers_s,
        ),
    )


def run(
    config: EvalConfig,
    *,
    scorers: Sequence[Scorer] = (),
    vllm_transport: httpx.AsyncBaseTransport | None = None,
    judge_transport: httpx.AsyncBaseTransport | None = None,
    reward_model: RewardModel | None = None,
) -> Report:
    """Evaluate the candidate against the incumbent on the config's eval set; always a `Report`.

    `scorers` adds programmatic scorers (e.g. `UserPreference(fn)`) to those the config declares.
    Raises `EvalInputError` before calling any model if the inputs are unusable. Anything that
    goes wrong while evaluating (vLLM or the judge down, garbage verdicts) gives a report with
    ``status == "failed"``, the reason in `error`, and a decision that does not promote.
    Must not be called from a running event loop; use `arun` there.
    """
    return asyncio.run(
        arun(
            config,
            scorers=scorers,
            vllm_transport=vllm_transport,
            judge_transport=judge_transport,
            reward_model=reward_model,
        )
    )
