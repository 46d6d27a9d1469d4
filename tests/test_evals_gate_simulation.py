"""The feedback gate's decision rule in simulation: 600 runs, no vLLM.

Each run simulates a holdout of 300 prompts the way the service produces one: the incumbent
(served at the time) answered each prompt (greedy: one answer per prompt), about half of those
answers got a thumb (10% of thumbs random), a third of the disliked ones a correction. Then a
candidate answers the same prompts and the real feedback scorers (`build_feedback_scorers`:
chrF to corrections and liked answers, the learned judge with its calibration, the forgetting and
degenerate-answer guards) score both, through the runner's own `score_with` and `decide`.

The learned judge's reward model is simulated (a `RewardModel` whose score is "right answer" plus
fixed noise per answer: AUC about 0.9 against the thumbs pooled, and it orders the held-out
corrections above the answers they corrected): the one part that is not real here;
tests/test_trainer_reward.py trains and calibrates the real one.

Candidates:
- equal: retrained on shuffled labels: half its answers are the incumbent's, the other half
  redrawn from the incumbent's own accuracy (equal in expectation, different answers);
- the same adapter: identical answers;
- better: learned the uppercase instruction the users want, kept the rest;
- collapsed: half its answers are empty or loop ("THE THE THE THE ...");
- forgetting: learned the uppercase instruction, lost a third of the plain answers users liked.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from scipy.stats import beta

from evals.calibration import CalibrationConfig
from evals.config import EvalConfig, FeedbackGateConfig
from evals.decision import Decision, decide
from evals.evalset import EvalExample
from evals.feedback import HeldOutRating, group_feedback
from evals.feedback_gate import build_feedback_scorers
from evals.reward_model import RewardItem
from evals.runner import evidence_of, score_with
from evals.scorers.base import AnswerPair

pytestmark = pytest.mark.slow  # ~1 minute of CPU: 600 simulated evaluations (~0.1 s each)

WORDS = [
    f"{a}{b}"
    for a in ("par", "rom", "lim", "cai", "tok", "oslo", "bern", "kyiv")
    for b in ("is", "a", "o", "")
]
PROMPTS = 300
UPPER_SHARE = 0.6
# The incumbent follows "answer in uppercase" on 30% of prompts, answers plain prompts right on 95%.
INCUMBENT_RIGHT = {"upper": 0.3, "plain": 0.95}


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    kind: str
    right: str
    wrong: tuple[str, ...]


def world(rng: random.Random) -> list[Prompt]:
    prompts = []
    for i in range(PROMPTS):
        word = rng.choice(WORDS)
        upper = rng.random() < UPPER_SHARE
        text = f"question {i}: which word is number {i}?" + (" answer in uppercase." if upper else "")
        fact = f"it is {word}."
        other = f"it is {rng.choice([w for w in WORDS if w != word])}."
        right = fact.upper() if upper else fact
        wrong = (fact, other.upper()) if upper else (other,)
        prompts.append(
            Prompt([{"role": "user", "content": text}], "upper" if upper else "plain", right, wrong)
        )
    return prompts


def answer(rng: random.Random, p: Prompt, right_rate: float) -> str:
    return p.right if rng.random() < right_rate else rng.choice(p.wrong)


DEGENERATE = ("", "THE THE THE THE THE THE THE THE", "it is it is it is it is it is")


def candidate_answers(
    kind: str, rng: random.Random, prompts: Sequence[Prompt], incumbent: Sequence[str]
) -> list[str]:
    out = []
    for p, inc in zip(prompts, incumbent, strict=True):
        knew = inc == p.right
        if kind == "same":
            a = inc
        elif kind == "equal":
            a = inc if rng.random() < 0.5 else answer(rng, p, INCUMBENT_RIGHT[p.kind])
        elif kind == "better":
            a = answer(rng, p, 0.98 if knew else (0.8 if p.kind == "upper" else 0.3))
        elif kind == "forgetting":
            a = answer(rng, p, (0.98 if knew else 0.8) if p.kind == "upper" else (0.6 if knew else 0.3))
        elif kind == "collapsed":
            a = rng.choice(DEGENERATE) if rng.random() < 0.5 else inc
        else:
            raise ValueError(kind)
        out.append(a)
    return out


class SimulatedRewardModel:
    """Scores "is this the right answer" plus fixed noise per (prompt, answer)."""

    description = "simulated reward model"

    def __init__(self, prompts: Sequence[Prompt]) -> None:
        self.right = {p.messages[-1]["content"]: p.right for p in prompts}

    async def score(self, items: Sequence[RewardItem]) -> list[float]:
        out = []
        for item in items:
            key = item.messages[-1].content
            noise = (
                int.from_bytes(hashlib.sha256(f"{key}|{item.answer}".encode()).digest()[:4], "big") / 2**32
            )
            out.append(1.5 * (item.answer == self.right[key]) + 2.0 * (noise - 0.5))
        return out


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    eligible: dict[str, str]


def simulate(
    kind: str, seed: int, *, rate_right: float = 0.5, rate_wrong: float = 0.5, correction_rate: float = 0.5
) -> Outcome:
    """One evaluation; users rate right answers with probability `rate_right`, wrong ones with
    `rate_wrong`, and correct a disliked wrong answer with probability `correction_rate`."""
    rng = random.Random(f"gate-sim:{kind}:{seed}")
    prompts = world(rng)
    incumbent = [answer(rng, p, INCUMBENT_RIGHT[p.kind]) for p in prompts]
    ratings = []
    for p, logged in zip(prompts, incumbent, strict=True):
        if rng.random() >= (rate_right if logged == p.right else rate_wrong):  # about half are rated
            continue
        liked = logged == p.right if rng.random() >= 0.1 else rng.random() < 0.5  # 10% random thumbs
        correction = p.right if not liked and logged != p.right and rng.random() < correction_rate else None
        ratings.append(
            HeldOutRating(
                messages=p.messages, answer=logged, rating=1 if liked else -1, correction=correction
            )
        )
    candidate = candidate_answers(kind, rng, prompts, incumbent)
    examples = [
        EvalExample(id=f"h-{i}", source="holdout", messages=p.messages) for i, p in enumerate(prompts)
    ]
    answers = [
        AnswerPair(example_id=e.id, candidate=c, incumbent=i)
        for e, c, i in zip(examples, candidate, incumbent, strict=True)
    ]
    # The judge is calibrated on held-out preference pairs (here corrections: ~29 in a 300-prompt
    # holdout), 15 of them at least, so it takes part in nearly every run (30 by default: ~half).
    calibration = CalibrationConfig(resamples=500, seed=seed, min_pairs=15)
    feedback_cfg = FeedbackGateConfig(calibration=calibration)
    config = EvalConfig(
        vllm_url="http://unused", candidate="p@v2", incumbent="p@v1", holdout="unused", feedback=feedback_cfg,
        resamples=1000, seed=seed,
    )  # fmt: skip
    scorers = build_feedback_scorers(
        feedback_cfg,
        group_feedback(ratings),
        min_samples=config.min_samples,
        reward_model=SimulatedRewardModel(prompts),
    )

    async def evaluate():
        return [await score_with(s, config, examples, answers, None) for s in scorers]  # type: ignore[arg-type]

    results = asyncio.run(evaluate())
    decision = decide(evidence_of(results), min_samples=config.min_samples)
    return Outcome(decision, {r.name: f"{r.role}: {r.eligibility}" for r in results})


def blocked_by(outcome: Outcome) -> set[str]:
    return {r.scorer for r in outcome.decision.reasons if not r.ok and r.scorer}


def primary_passed(outcomes: Sequence[Outcome], scorer: str) -> int:
    return sum(
        any(r.scorer == scorer and r.role == "primary" and r.ok for r in o.decision.reasons) for o in outcomes
    )


def promotion_rate_bound(promoted: int, runs: int, confidence: float = 0.95) -> float:
    """The exact (Clopper-Pearson) one-sided upper confidence bound of a rate seen `promoted`
    times in `runs` independent runs (the beta quantile): 0 of 100 gives 2.95%, 1 of 100 4.66%,
    0 of 400 0.75%."""
    return 1.0 if promoted >= runs else float(beta.ppf(confidence, promoted + 1, runs - promoted))


def test_an_equal_candidate_is_promoted_in_at_most_5_percent_of_runs():
    """The issue's bar is at most 5% of >= 400 runs; the false-promotion rate is also shown to be
    below 5% with 95% confidence, not only seen below it (at most 12 promotions of 400)."""
    runs = 400
    outcomes = [simulate("equal", seed) for seed in range(runs)]
    promoted = sum(o.decision.promote for o in outcomes)
    judged = primary_passed(outcomes, "learned_judge")
    calibrated = sum(o.eligible["learned_judge"].startswith("primary") for o in outcomes)
    bound = promotion_rate_bound(promoted, runs)
    print(
        f"equal candidate: promoted in {promoted}/{runs} runs (95% upper bound {bound:.1%}); the learned "
        f"judge was calibrated in {calibrated} and alone said better in {judged}; references alone in "
        f"{primary_passed(outcomes, 'references')}"
    )
    print("eligibility in run 0:", outcomes[0].eligible)
    assert calibrated >= 0.95 * runs  # the rule was really exercised: the calibrated judge took part
    assert bound <= 0.05


def test_users_who_rate_mostly_bad_answers_do_not_make_an_equal_candidate_pass():
    """Users who rate wrong answers more often (and correct them) bias the reference scorer toward
    any change (evals/scorers/reference.py); the rule as a whole still holds."""
    outcomes = [
        simulate("equal", seed, rate_right=0.3, rate_wrong=0.8, correction_rate=0.6) for seed in range(100)
    ]
    promoted = sum(o.decision.promote for o in outcomes)
    print(
        f"complaining users, equal candidate: promoted in {promoted}/100; references alone said better in "
        f"{primary_passed(outcomes, 'references')}, the learned judge in {primary_passed(outcomes, 'learned_judge')}"
    )
    assert promotion_rate_bound(promoted, 100) <= 0.05  # at most one promotion (was: at most 5)


def test_the_same_adapter_is_never_promoted():
    outcomes = [simulate("same", seed) for seed in range(20)]
    assert not any(o.decision.promote for o in outcomes)
    reasons = [r.message for r in outcomes[0].decision.reasons if r.role == "primary"]
    assert reasons and all("not shown better" in m for m in reasons)


def test_a_better_candidate_is_promoted():
    """The rule has power: a candidate that learned what users want gets through."""
    outcomes = [simulate("better", seed) for seed in range(40)]
    promoted = sum(o.decision.promote for o in outcomes)
    print(
        f"better candidate: promoted in {promoted}/40 runs; blocked by {[blocked_by(o) for o in outcomes if not o.decision.promote][:5]}"
    )
    assert promoted >= 0.8 * 40


def test_a_collapsed_adapter_is_rejected_and_the_degenerate_guard_names_why():
    for seed in range(20):
        outcome = simulate("collapsed", seed)
        assert not outcome.decision.promote
        reason = next(r for r in outcome.decision.reasons if r.scorer == "degenerate_answers")
        assert not reason.ok and "regressed" in reason.message
        assert "repetitive" in reason.message and "empty" in reason.message


def test_a_forgetting_adapter_is_rejected_by_the_forgetting_guards():
    """It learned the new skill (the primaries would promote it) but lost plain answers users liked."""
    outcomes = [simulate("forgetting", seed) for seed in range(20)]
    for outcome in outcomes:
        assert not outcome.decision.promote
        assert blocked_by(outcome) & {"forgetting_liked", "forgetting_learned_judge"}
    judged_better = primary_passed(outcomes, "learned_judge")
    print(f"forgetting adapter: the learned judge found it better overall in {judged_better}/20 runs")
    assert judged_better >= 15
