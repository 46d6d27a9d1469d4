"""Degenerate answers: empty, cut off at the token limit, or looping. A guard.

A collapsed adapter answers nonsense that a likelihood never shows (shared/notes/training.md);
some of it is plain to see without any reference: nothing at all, an answer the server cut at
`max_tokens` (finish reason "length"), or one that repeats itself. Per example each answer scores
1 when sound, 0 when degenerate; the guard fails when the candidate's rate of degenerate answers
is shown above the incumbent's by more than the tolerance.

Repetition: the same run of 1 to 4 words (words holding a letter or digit; punctuation and
Markdown rules are skipped) at least 4 times in a row, or text that zlib compresses more than
`max_compression`-fold (2.4, the threshold Whisper uses to spot looping output) once it is at
least 64 characters long.
"""

from __future__ import annotations

import zlib
from typing import ClassVar

from evals.config import Role
from evals.evalset import EvalExample
from evals.scorers.base import AnswerPair, ExampleScore, Kind

DEFECTS = ("empty", "truncated", "repetitive")


def is_repetitive(
    text: str, *, min_repeats: int = 4, max_ngram: int = 4, max_compression: float = 2.4
) -> bool:
    """Whether `text` loops (module docstring)."""
    data = text.encode()
    if len(data) >= 64 and len(data) / len(zlib.compress(data)) > max_compression:
        return True
    words = [w for w in text.split() if any(c.isalnum() for c in w)]
    for n in range(1, max_ngram + 1):
        for i in range(len(words) - n * min_repeats + 1):
            chunk = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == chunk for k in range(1, min_repeats)):
                return True
    return False


def defect(answer: str, finish_reason: str | None) -> str | None:
    """The first defect of an answer ("empty", "truncated", "repetitive"), or None if it is sound."""
    if not answer.strip():
        return "empty"
    if finish_reason == "length":
        return "truncated"
    if is_repetitive(answer):
        return "repetitive"
    return None


class DegenerateAnswers:
    """Guard: candidate's degenerate-answer rate must not exceed the incumbent's by more than `tolerance`."""

    kind: ClassVar[Kind] = "generation"
    max_error_fraction: ClassVar[float] = 0.0

    def __init__(self, *, name: str = "degenerate_answers", role: Role = "guard", tolerance: float = 0.02):
        self.name, self.role, self.tolerance = name, role, tolerance
        self.eligibility = "eligible: needs no reference"

    def applies_to(self, example: EvalExample) -> bool:
        return example.source == "holdout"

    async def score(self, example: EvalExample, answers: AnswerPair, server: object) -> ExampleScore:
        cand = defect(answers.candidate, answers.candidate_finish)
        inc = defect(answers.incumbent, answers.incumbent_finish)
        notes = [f"{side}: {d}" for side, d in (("candidate", cand), ("incumbent", inc)) if d]
        c, i = float(cand is None), float(inc is None)
        return ExampleScore(
            example_id=example.id, difference=c - i, candidate=c, incumbent=i, detail="; ".join(notes)
        )

    def rates(self, scores: list[ExampleScore]) -> dict[str, dict[str, float]]:
        """Share of answers with each defect, per side."""
        n = max(len(scores), 1)
        return {
            side: {d: sum(f"{side}: {d}" in s.detail for s in scores) / n for d in DEFECTS}
            for side in ("candidate", "incumbent")
        }

    def summary(self, scores: list[ExampleScore]) -> str:
        """'candidate empty 0%, truncated 2%, repetitive 40%; incumbent ...' for the decision's reason."""
        rates = self.rates(scores)
        return "; ".join(
            f"{side} " + ", ".join(f"{d} {rate:.0%}" for d, rate in r.items()) for side, r in rates.items()
        )

    def notes(self, scores: list[ExampleScore]) -> list[str]:
        return [f"degenerate answers: {self.summary(scores)}"] if scores else []
