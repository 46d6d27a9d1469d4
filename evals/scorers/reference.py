"""Held-out feedback as reference answers: is the candidate's answer closer to what users wanted?

Two uses, one measure:

- **Corrections** (primary): a correction is the answer the user wanted. Per held-out prompt with
  a correction, each model's generated answer scores its similarity to the closest correction.
- **Liked answers** (a forgetting guard): per held-out prompt whose logged answer users liked,
  the candidate must stay about as close to it as the incumbent.

The measure is chrF (sacreBLEU's `CHRF`, standard settings: character 6-grams, beta 2, case
kept), divided by 100 so it lies in [0, 1]. Why chrF rather than an edit distance (rapidfuzz) or
token F1: a correction usually fixes part of an answer (a wrong word, the casing, a number) and
may word the rest differently; chrF credits every matching character n-gram wherever it sits, so
it rewards getting what the user wrote right without demanding the same word order, needs no
tokenizer for any language, and was chosen over BLEU at sentence level for agreeing better with
human judgments (WMT metrics tasks). Recall is weighted over precision (beta 2), as what the user
wanted must be there first. sacreBLEU pins the computation (its signature is in the notes), so a
score means the same in every report. Case is kept: "PARIS" and "Paris" differ to a user who asked
for uppercase. An identical pair of answers scores a difference of exactly 0.

A scorer with fewer than `min_examples` prompts to look at is reported but does not decide: a
few prompts can neither show an improvement nor rule out a regression.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from evals.config import Role
from evals.evalset import EvalExample
from evals.feedback import FeedbackExample, prompt_key
from evals.scorers.base import AnswerPair, ExampleScore, Kind

References = Literal["corrections", "liked"]


def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


class ReferenceSimilarity:
    """Per example, chrF/100 of each answer to its closest reference; difference = candidate minus incumbent."""

    kind: ClassVar[Kind] = "generation"
    max_error_fraction: ClassVar[float] = 0.0

    def __init__(
        self,
        feedback: Mapping[str, FeedbackExample],
        *,
        references: References,
        name: str,
        role: Role,
        tolerance: float = 0.0,
        min_examples: int = 30,
    ) -> None:
        self.name, self.tolerance, self.references = name, tolerance, references
        self._refs = {
            key: refs
            for key, ex in feedback.items()
            if (refs := (ex.corrections if references == "corrections" else ex.liked))
        }
        self._metric = _chrf()
        what = "a correction" if references == "corrections" else "a liked answer"
        n = len(self._refs)
        if n >= min_examples:
            self.role: Role = role
            self.eligibility = f"eligible: {n} held-out prompts with {what} (>= {min_examples})"
        else:
            self.role = "diagnostic"
            self.eligibility = f"not eligible: {n} held-out prompts with {what}, {min_examples} needed"

    def applies_to(self, example: EvalExample) -> bool:
        return example.source == "holdout" and prompt_key(example.messages) in self._refs

    def similarity(self, answer: str, references: list[str]) -> float:
        """chrF/100 of `answer` to the closest of `references` (0 for an empty answer)."""
        if not answer.strip():
            return 0.0
        return max(self._metric.sentence_score(answer, [ref]).score for ref in references) / 100

    async def score(self, example: EvalExample, answers: AnswerPair, server: object) -> ExampleScore:
        refs = self._refs[prompt_key(example.messages)]
        if answers.candidate == answers.incumbent:
            value = self.similarity(answers.candidate, refs)
            return ExampleScore(example_id=example.id, difference=0.0, candidate=value, incumbent=value)
        cand = self.similarity(answers.candidate, refs)
        inc = self.similarity(answers.incumbent, refs)
        return ExampleScore(
            example_id=example.id,
            difference=cand - inc,
            candidate=cand,
            incumbent=inc,
            detail=f"closest {self.references[:-1]}: {refs[0][:60]!r}",
        )

    def notes(self, scores: list[ExampleScore]) -> list[str]:
        return [f"chrF/100 to the closest {self.references[:-1]} ({self._metric.get_signature()})"]
