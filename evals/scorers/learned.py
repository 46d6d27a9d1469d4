"""The judge learned from the thumbs: a reward model, calibrated on the holdout before it decides.

Once per evaluation (`prepare`) the reward model scores, in one batch, both answers of every
held-out preference pair (for the calibration: its AUC within a prompt, `evals.calibration`),
every held-out rated answer (the pooled AUC, reported only) and both models' generated
answers. Calibrated, it compares candidate and incumbent on each holdout prompt:
difference = 2 * sigmoid(r_candidate - r_incumbent) - 1, the Bradley-Terry probability (the
model's own training loss) that users prefer the candidate's answer, rescaled to [-1, 1] like the
LLM judge's; identical answers are exactly 0. Uncalibrated, or if the reward model cannot score,
it is a diagnostic and says why.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import ClassVar

from evals.calibration import DEFAULT_CALIBRATION, AucCalibration, CalibrationConfig, calibrate_scores
from evals.config import Role
from evals.errors import RewardModelError
from evals.evalset import EvalExample
from evals.feedback import FeedbackExample
from evals.reward_model import RewardItem, RewardModel, reward_item
from evals.scorers.base import AnswerPair, ExampleScore, Kind


class LearnedJudge:
    """Pairwise scorer backed by a `RewardModel`, eligible once calibrated on held-out preference pairs."""

    kind: ClassVar[Kind] = "pairwise"
    max_error_fraction: ClassVar[float] = 0.0

    def __init__(
        self,
        model: RewardModel,
        feedback: Sequence[FeedbackExample],
        *,
        calibration: CalibrationConfig = DEFAULT_CALIBRATION,
        name: str = "learned_judge",
        role: Role = "primary",
        tolerance: float = 0.0,
    ) -> None:
        self.model, self.feedback, self.config = model, list(feedback), calibration
        self.name, self.tolerance = name, tolerance
        self._role_when_calibrated: Role = role
        self.role: Role = "diagnostic"
        self.calibration: AucCalibration | None = None
        self.eligibility = "not eligible: not calibrated yet"
        self._rewards: dict[tuple[str, str], float] = {}
        self._lock = asyncio.Lock()
        self._prepared = False
        self._keys: dict[str, str] = {}

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None and self.calibration.eligible

    async def prepare(self, examples: Sequence[EvalExample], answers: Sequence[AnswerPair]) -> None:
        """Score held-out pairs, ratings and generated answers in one batch, then calibrate. Idempotent."""
        async with self._lock:
            if self._prepared:
                return
            self._prepared = True
            wanted: dict[tuple[str, str], RewardItem] = {}

            def want(key: str, messages: list, tools: list | None, answer: str) -> None:
                if (key, answer) not in wanted:
                    wanted[key, answer] = reward_item(str(len(wanted)), messages, answer, tools)

            try:
                for ex in self.feedback:
                    for pair in ex.pairs:
                        want(ex.key, ex.messages, ex.tools, pair.preferred)
                        want(ex.key, ex.messages, ex.tools, pair.other)
                    for answer, _ in ex.ratings:
                        want(ex.key, ex.messages, ex.tools, answer)
                for ex, pair in zip(examples, answers, strict=True):
                    if ex.source == "holdout":
                        self._keys[ex.id] = ex.key
                        want(ex.key, ex.messages, ex.tools, pair.candidate)
                        want(ex.key, ex.messages, ex.tools, pair.incumbent)
                values = await self.model.score(list(wanted.values()))
            except RewardModelError as exc:
                self._keys.clear()
                self.eligibility = f"not eligible: {exc}"
                return
            self._rewards = dict(zip(wanted, values, strict=True))
            reward = self._rewards
            pairs = [(ex.key, pair) for ex in self.feedback for pair in ex.pairs]
            rated = [(ex.key, a, r) for ex in self.feedback for a, r in ex.ratings]
            self.calibration = calibrate_scores(
                [reward[k, pair.preferred] for k, pair in pairs],
                [reward[k, pair.other] for k, pair in pairs],
                [k for k, _ in pairs],
                [reward[k, a] for k, a, _ in rated],
                [r > 0 for _, _, r in rated],
                self.config,
            )
            self.eligibility = f"{self.calibration.why} ({self.model.description})"
            if self.calibration.eligible:
                self.role = self._role_when_calibrated

    def applies_to(self, example: EvalExample) -> bool:
        return example.source == "holdout" and bool(self._rewards) and example.id in self._keys

    async def score(self, example: EvalExample, answers: AnswerPair, server: object) -> ExampleScore:
        key = self._keys[example.id]
        cand, inc = self._rewards[(key, answers.candidate)], self._rewards[(key, answers.incumbent)]
        diff = 0.0 if answers.candidate == answers.incumbent else 2 / (1 + math.exp(-(cand - inc))) - 1
        return ExampleScore(
            example_id=example.id,
            difference=diff,
            candidate=cand,
            incumbent=inc,
            detail=f"reward candidate {cand:+.2f}, incumbent {inc:+.2f}",
        )

    def notes(self, scores: list[ExampleScore]) -> list[str]:
        return [f"{self.model.description}; difference = 2*sigmoid(r_candidate - r_incumbent) - 1"]
