"""The forgetting guard by a judge: on held-out prompts whose logged answer users liked, the
candidate must not be judged worse than the incumbent.

It wraps a calibrated judge (the learned judge, or the LLM judge) and looks only at those prompts;
the judge's work is shared, not repeated (the learned judge scores each answer once; the LLM
judge remembers its verdicts per pair). A guard only while the judge is calibrated and at least
`min_examples` such prompts exist; otherwise a diagnostic that says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evals.config import Role
from evals.evalset import EvalExample
from evals.feedback import FeedbackExample
from evals.scorers.base import AnswerPair, ExampleScore


class ForgettingGuard:
    """`judge`, restricted to held-out prompts with a liked answer, as a guard."""

    max_error_fraction: float = 0.0

    def __init__(
        self,
        judge: Any,
        feedback: Mapping[str, FeedbackExample],
        *,
        tolerance: float = 0.05,
        min_examples: int = 30,
        name: str | None = None,
    ) -> None:
        self.judge, self.tolerance, self.min_examples = judge, tolerance, min_examples
        self.name = name or f"forgetting_{judge.name}"
        self.kind = judge.kind
        self._liked = {key for key, ex in feedback.items() if ex.liked}
        self._keys: dict[str, str] = {}
        self.role: Role = "diagnostic"
        self.calibration = None
        self.eligibility = "not eligible: the judge is not calibrated yet"

    async def prepare(self, examples: Sequence[EvalExample], answers: Sequence[AnswerPair]) -> None:
        await self.judge.prepare(examples, answers)
        self.calibration = getattr(self.judge, "calibration", None)
        n = len(self._liked)
        if not self.judge.calibrated:
            # Why not is the judge's own eligibility, in its row of the report: not repeated here.
            self.eligibility = f"not eligible: {self.judge.name} is not calibrated"
        elif n < self.min_examples:
            self.eligibility = (
                f"not eligible: {n} held-out prompts with a liked answer, {self.min_examples} needed"
            )
        else:
            self.role = "guard"
            self.eligibility = (
                f"eligible: {self.judge.name} is calibrated; {n} held-out prompts with a liked answer"
            )

    def applies_to(self, example: EvalExample) -> bool:
        if example.id not in self._keys:
            self._keys[example.id] = example.key
        return self.judge.applies_to(example) and self._keys[example.id] in self._liked

    async def score(self, example: EvalExample, answers: AnswerPair, server: Any) -> ExampleScore | None:
        return await self.judge.score(example, answers, server)
