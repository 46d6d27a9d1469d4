"""Scorers of answers by a preference you hold in code: simulated users, a heuristic, a metric."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evals.config import Role
from evals.evalset import EvalExample
from evals.scorers.base import PointwiseScorer

Preference = Callable[[Sequence[Mapping[str, Any]], str], bool | float]
"""(prompt chat messages, answer) -> liked (True/False) or a score in [0, 1]."""


class UserPreference(PointwiseScorer):
    """Scores each generated holdout answer with `preference(messages, answer)`.

    For tests and demos, where the users' taste is known (e.g. `demo.tiny_world.user_likes`),
    and for projects with a programmatic quality metric. Primary by default.
    """

    def __init__(
        self,
        preference: Preference,
        *,
        name: str = "user_preference",
        role: Role = "primary",
        tolerance: float = 0.0,
    ) -> None:
        super().__init__(name, role=role, tolerance=tolerance)
        self.preference = preference

    def applies_to(self, example: EvalExample) -> bool:
        return example.source == "holdout"

    def score_answer(self, example: EvalExample, answer: str) -> tuple[float, str]:
        value = float(self.preference(example.messages, answer))
        return value, ""
