"""Golden-set regression: does each answer still match its reference and pass its checks?"""

from __future__ import annotations

from evals.config import GoldenConfig
from evals.evalset import EvalExample
from evals.scorers.base import PointwiseScorer
from evals.scorers.rules import rule_applies, rule_failure


def _normalise(text: str) -> str:
    return " ".join(text.split())


def reference_matches(example: EvalExample, answer: str) -> bool:
    """Whether `answer` matches the example's reference under its match mode (whitespace runs are
    collapsed and ends stripped first). True when there is no reference."""
    if example.reference is None:
        return True
    got, want = _normalise(answer), _normalise(example.reference)
    if example.match == "casefold":
        return got.casefold() == want.casefold()
    if example.match == "contains":
        return want in got
    return got == want


class GoldenScorer(PointwiseScorer):
    """1 if the answer matches the reference and passes every applicable check, else 0.

    A guard by default: the candidate's pass rate may not drop by more than the tolerance."""

    def __init__(self, config: GoldenConfig, *, name: str = "golden") -> None:
        super().__init__(name, role=config.role, tolerance=config.tolerance)

    def applies_to(self, example: EvalExample) -> bool:
        return example.source == "golden"

    def score_answer(self, example: EvalExample, answer: str) -> tuple[float, str]:
        if not reference_matches(example, answer):
            return 0.0, f"{answer[:40]!r} != reference {example.reference[:40]!r}"
        for rule in example.checks:
            if rule_applies(rule, example) and (why := rule_failure(rule, answer)) is not None:
                return 0.0, f"{rule.name} ({why})"
        return 1.0, ""
