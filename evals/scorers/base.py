"""What a scorer is: something that compares candidate and incumbent on one example at a time.

A scorer returns an `ExampleScore` whose `difference` is positive when the candidate did better,
or None when the example is not its business (no rule applies, no preference pair). The runner
turns the differences into a paired bootstrap CI and the decision weighs it by the scorer's role.

Writing a new scorer: subclass `PointwiseScorer` when each answer can be scored on its own
(a number in [0, 1], higher is better), or implement the `Scorer` protocol directly. Optional
extras the runner uses when present: `async prepare(examples, answers)` (called once, before any
`applies_to` or `score`, with every example and answer: batch work and calibration go there),
`notes(scores) -> list[str]` (lines for the report), `calibration` (a `Calibration`, read after
scoring), `eligibility` (one line: why the scorer may or may not decide, read after scoring; a
scorer that may not decide sets its `role` to "diagnostic") and `async aclose()` (called after
the evaluation for scorers the runner built from the config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import msgspec

from evals.config import Role
from evals.evalset import EvalExample

if TYPE_CHECKING:
    from evals.server import ModelServer

Kind = Literal["generation", "pairwise", "likelihood"]
"""generation: scores each generated answer; pairwise: compares the two generated answers;
likelihood: reads model log-probs, no generation (a diagnostic by design)."""


class AnswerPair(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What candidate and incumbent generated for one example."""

    example_id: str
    candidate: str
    incumbent: str
    candidate_finish: str | None = None
    """The server's finish reason ("stop", "length": cut at max_tokens, ...); None when unknown."""
    incumbent_finish: str | None = None


class ExampleScore(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One example's result. `difference` = candidate minus incumbent, positive = candidate better."""

    example_id: str
    difference: float
    candidate: float | None = None
    incumbent: float | None = None
    detail: str = ""


@runtime_checkable
class Scorer(Protocol):
    """The scorer interface the runner calls, once per example, concurrently."""

    name: str
    kind: Kind
    role: Role
    tolerance: float
    max_error_fraction: float
    """Share of examples that may raise `ScorerError` (they are then dropped); above it, the eval fails."""

    def applies_to(self, example: EvalExample) -> bool:
        """Whether this scorer looks at `example` at all (cheap, no I/O)."""
        ...

    async def score(
        self, example: EvalExample, answers: AnswerPair, server: ModelServer
    ) -> ExampleScore | None:
        """Score one example; None skips it. Raises `ScorerError` for this example only, any other
        `EvalError` to fail the whole evaluation."""
        ...


class PointwiseScorer:
    """Base for scorers that score each answer alone: `score_answer` -> (score in [0, 1], note)."""

    kind: ClassVar[Kind] = "generation"
    max_error_fraction: float = 0.0

    def __init__(self, name: str, *, role: Role, tolerance: float = 0.0) -> None:
        self.name, self.role, self.tolerance = name, role, tolerance

    def applies_to(self, example: EvalExample) -> bool:
        return True

    def score_answer(self, example: EvalExample, answer: str) -> tuple[float, str] | None:
        """Score one answer: (score, short note such as which check failed), or None to skip."""
        raise NotImplementedError

    async def score(
        self, example: EvalExample, answers: AnswerPair, server: ModelServer
    ) -> ExampleScore | None:
        cand = self.score_answer(example, answers.candidate)
        inc = self.score_answer(example, answers.incumbent)
        if cand is None or inc is None:
            return None
        notes = [f"{side}: {note}" for side, (_, note) in (("candidate", cand), ("incumbent", inc)) if note]
        return ExampleScore(
            example_id=example.id,
            difference=cand[0] - inc[0],
            candidate=cand[0],
            incumbent=inc[0],
            detail="; ".join(notes),
        )
