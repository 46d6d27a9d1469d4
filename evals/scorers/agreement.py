"""Preference agreement: does the model give the answer users preferred more likelihood than the
one they rejected? Read from the answers' token log-probs served by vLLM.

A diagnostic, by design and not by configuration: over-trained adapters that answer nonsense show
the best margins (shared/notes/training.md), so likelihoods never promote.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from evals.config import Role
from evals.evalset import EvalExample
from evals.scorers.base import AnswerPair, ExampleScore, Kind
from evals.server import ModelServer


class PreferenceAgreement:
    """Per example, for both models: the share of (preferred, rejected) pairs where the preferred
    answer has the higher summed log-prob. Difference = candidate minus incumbent.

    Only examples with at least one preferred and one rejected answer count; at most `max_pairs`
    pairs per example (the first answers of each kind).
    """

    kind: ClassVar[Kind] = "likelihood"
    role: ClassVar[Role] = "diagnostic"
    tolerance: ClassVar[float] = 0.0
    max_error_fraction: ClassVar[float] = 0.0

    def __init__(
        self, *, candidate: str, incumbent: str, max_pairs: int = 4, name: str = "preference_agreement"
    ):
        self.name, self.candidate, self.incumbent, self.max_pairs = name, candidate, incumbent, max_pairs

    def applies_to(self, example: EvalExample) -> bool:
        return example.source == "holdout" and bool(example.preferred) and bool(example.rejected)

    def _pairs(self, example: EvalExample) -> list[tuple[str, str]]:
        pairs = [(p, r) for p in example.preferred for r in example.rejected]
        return pairs[: self.max_pairs]

    async def score(
        self, example: EvalExample, answers: AnswerPair, server: ModelServer
    ) -> ExampleScore | None:
        pairs = self._pairs(example)
        texts = list(dict.fromkeys(a for pair in pairs for a in pair))
        tokens = await asyncio.gather(
            *(server.answer_tokens(example.messages, t, example.tools) for t in texts)
        )
        by_text = dict(zip(texts, tokens, strict=True))

        async def logprobs(model: str) -> dict[str, float]:
            values = await asyncio.gather(*(server.sequence_logprob(model, *by_text[t]) for t in texts))
            return dict(zip(texts, values, strict=True))

        cand, inc = await asyncio.gather(logprobs(self.candidate), logprobs(self.incumbent))
        cand_agree = sum(cand[p] > cand[r] for p, r in pairs) / len(pairs)
        inc_agree = sum(inc[p] > inc[r] for p, r in pairs) / len(pairs)
        cand_margin = sum(cand[p] - cand[r] for p, r in pairs) / len(pairs)
        inc_margin = sum(inc[p] - inc[r] for p, r in pairs) / len(pairs)
        return ExampleScore(
            example_id=example.id,
            difference=cand_agree - inc_agree,
            candidate=cand_agree,
            incumbent=inc_agree,
            detail=f"log-prob margin candidate {cand_margin:+.2f}, incumbent {inc_margin:+.2f} nats",
        )
