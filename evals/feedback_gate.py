"""The gate built from the holdout's own feedback: which scorers, in which roles.

    references                primary  chrF to held-out corrections and liked answers
    learned_judge             primary  the reward model, once calibrated on held-out pairs
    forgetting_learned_judge  guard    the calibrated reward model on liked prompts
    forgetting_judge          guard    the calibrated LLM judge on liked prompts (if one is configured)
    forgetting_liked          guard    chrF to liked answers on liked prompts, when no judge above
                                       is calibrated (reported either way)
    degenerate_answers        guard    empty / truncated / looping answers, rate vs the incumbent

A scorer needs `min_samples` held-out prompts (the evaluation's own minimum) to decide or guard.
Every scorer that lacks the data or calibration to decide is a diagnostic that says why; with
none able to decide, nothing is promoted. An LLM judge configured beside it is calibrated on the
same feedback by the runner (`PairwiseJudge(feedback=...)`).
"""

from __future__ import annotations

from collections.abc import Sequence

from evals.config import FeedbackGateConfig
from evals.feedback import FeedbackExample
from evals.reward_model import RewardModel
from evals.scorers.base import Scorer
from evals.scorers.degenerate import DegenerateAnswers
from evals.scorers.forgetting import ForgettingGuard
from evals.scorers.judge import PairwiseJudge
from evals.scorers.learned import LearnedJudge
from evals.scorers.reference import ReferenceSimilarity


def build_feedback_scorers(
    config: FeedbackGateConfig,
    feedback: Sequence[FeedbackExample],
    *,
    min_samples: int = 30,
    reward_model: RewardModel | None = None,
    judge: PairwiseJudge | None = None,
) -> list[Scorer]:
    """The feedback-derived scorers `config` turns on, in report order (module docstring).

    `judge` is the configured LLM judge (already in the scorer list): only its forgetting guard
    is added here. Nothing when `config.enabled` is false.
    """
    if not config.enabled:
        return []
    by_key = {ex.key: ex for ex in feedback}
    scorers: list[Scorer] = []
    if config.corrections:
        scorers.append(
            ReferenceSimilarity(
                by_key, references="endorsed", name="references", role="primary", min_examples=min_samples
            )
        )
    learned = None
    if reward_model is not None:
        learned = LearnedJudge(reward_model, feedback, calibration=config.calibration)
        scorers.append(learned)
    if config.forgetting:
        judge_guards = [
            ForgettingGuard(inner, by_key, tolerance=config.forgetting_tolerance, min_examples=min_samples)
            for inner in (learned, judge)
            if inner is not None
        ]
        scorers += judge_guards
        scorers.append(
            ReferenceSimilarity(
                by_key,
                references="liked",
                name="forgetting_liked",
                role="guard",
                tolerance=config.forgetting_tolerance,
                min_examples=min_samples,
                defer_to=judge_guards,
            )
        )
    if config.degenerate:
        scorers.append(DegenerateAnswers(tolerance=config.degenerate_tolerance))
    return scorers
