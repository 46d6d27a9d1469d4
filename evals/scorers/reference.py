"""Held-out feedback as reference answers: is the candidate's answer closer to what users wanted?

Two uses, one measure:

- **References** (primary, `references="endorsed"`): per held-out prompt where users said what
  they want, the closest of its corrections (the answer the user wrote) and liked answers; each
  model's generated answer scores its similarity to it.
- **Liked answers** (a forgetting guard, `references="liked"`): per held-out prompt whose logged
  answer users liked, the candidate must stay about as close to it as the incumbent.

Why corrections alone must not decide: users correct the answers that were wrong, and those were
mostly the incumbent's own (it served them). On exactly those prompts any other model, even one
no better, tends to do better than the incumbent (regression to the mean): in simulation an equal
candidate "beat" the incumbent on corrected prompts by +0.16 [+0.05, +0.28] almost every run.
Taking the liked prompts along balances it: there the incumbent was right and an equal candidate
tends to do worse. For a candidate of equal quality the expected difference over both is
proportional to (correction rate x rating rate of bad answers - rating rate of good answers),
which is <= 0 while users rate good and bad answers alike (each disliked answer gets at most one
correction): the test is then conservative. The simulation
(tests/test_evals_gate_simulation.py) measures the false-promotion rate of the whole rule.

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

The liked-answer guard steps aside (reports, does not guard) when a calibrated judge guards the
same prompts (`defer_to`): similarity to a liked answer also punishes improving on answers that
were liked by mistake (about 10% of thumbs are noise), which a judge that agrees with the users
does not; without a calibrated judge, similarity is the guard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from evals.config import Role
from evals.evalset import EvalExample
from evals.feedback import FeedbackExample
from evals.scorers.base import AnswerPair, ExampleScore, Kind

References = Literal["endorsed", "corrections", "liked"]
"""endorsed: corrections and liked answers; corrections: corrections only (biased for any change,
see above: a diagnostic at most); liked: liked answers only."""


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
        defer_to: Sequence[Any] = (),
    ) -> None:
        self.name, self.tolerance, self.references = name, tolerance, references
        self.defer_to = list(defer_to)
        self._keys: dict[str, str] = {}
        pick = {
            "endorsed": lambda ex: [*ex.corrections, *ex.liked],
            "corrections": lambda ex: ex.corrections,
            "liked": lambda ex: ex.liked,
        }[references]
        self._refs = {key: refs for key, ex in feedback.items() if (refs := pick(ex))}
        self._metric = _chrf()
        what = {
            "endorsed": "a correction or a liked answer",
            "corrections": "a correction",
            "liked": "a liked answer",
        }[references]
        n = len(self._refs)
        if n >= min_examples:
            self.role: Role = role
            self.eligibility = f"eligible: {n} held-out prompts with {what} (>= {min_examples})"
        else:
            self.role = "diagnostic"
            self.eligibility = f"not eligible: {n} held-out prompts with {what}, {min_examples} needed"

    async def prepare(self, examples: Sequence[EvalExample], answers: Sequence[Any]) -> None:
        """Step aside for a calibrated judge guard, if there is one (module docstring)."""
        for guard in self.defer_to:
            await guard.prepare(examples, answers)
            if self.role != "diagnostic" and guard.role == "guard":
                self.role = "diagnostic"
                self.eligibility = (
                    f"reported only: {guard.name} guards the liked prompts ({guard.eligibility})"
                )

    def _key(self, example: EvalExample) -> str:
        if example.id not in self._keys:
            self._keys[example.id] = example.key
        return self._keys[example.id]

    def applies_to(self, example: EvalExample) -> bool:
        return example.source == "holdout" and self._key(example) in self._refs

    def similarity(self, answer: str, references: list[str]) -> float:
        """chrF/100 of `answer` to the closest of `references` (0 for an empty answer)."""
        if not answer.strip():
            return 0.0
        return max(self._metric.sentence_score(answer, [ref]).score for ref in references) / 100

    async def score(self, example: EvalExample, answers: AnswerPair, server: object) -> ExampleScore:
        refs = self._refs[self._key(example)]
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
            detail=f"reference: {refs[0][:60]!r}",
        )

    def notes(self, scores: list[ExampleScore]) -> list[str]:
        return [f"chrF/100 to the closest reference ({self.references}; {self._metric.get_signature()})"]
