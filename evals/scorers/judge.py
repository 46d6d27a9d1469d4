"""Pairwise LLM-as-judge on any OpenAI-compatible chat endpoint, asked in both answer orders.

Each pair is judged twice, candidate first and incumbent first, and the two verdicts are
averaged: a judge that always prefers the first answer (position bias) scores a tie. A judge
that cannot be reached fails the evaluation (`JudgeError`); an answer that is no verdict is a
`ScorerError`, which fails the evaluation unless `max_invalid_fraction` tolerates it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, ClassVar, Literal

import httpx

from evals.config import JudgeConfig
from evals.errors import JudgeError, ScorerError
from evals.evalset import EvalExample, message_text
from evals.scorers.base import AnswerPair, ExampleScore, Kind
from evals.server import ModelServer, error_message

Verdict = Literal["A", "B", "TIE"]
_VERDICT = re.compile(r"^\W*(?:\[\[)?\s*(A|B|TIE)\s*(?:\]\])?(?:$|[\s.,:;!)\]*])", re.IGNORECASE)
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def parse_verdict(text: str) -> Verdict | None:
    """'A', 'B' or 'TIE' from a judge's reply ("A", "**b**.", "[[TIE]]", "A - because ..."), or None."""
    match = _VERDICT.match(text.strip())
    return match.group(1).upper() if match else None  # type: ignore[return-value]


def render_conversation(messages: list[dict[str, Any]]) -> str:
    """The conversation as the judge reads it: one 'role: text' paragraph per message, tool calls
    as `name(arguments)`."""
    return "\n\n".join(f"{m.get('role', 'user')}: {_message_line(m)}" for m in messages)


def _message_line(message: dict[str, Any]) -> str:
    calls = [
        f"{c['function'].get('name', '?')}({c['function'].get('arguments', '')})"
        for c in message.get("tool_calls") or []
        if isinstance(c, dict) and isinstance(c.get("function"), dict)
    ]
    return " ".join([message_text(message), *(f"[calls {call}]" for call in calls)]).strip()


class PairwiseJudge:
    """Judges candidate vs incumbent answers to each holdout prompt; difference per example:
    +1 candidate won both orders, +0.5 one win and one tie, 0 tie or split, negative mirrored.

    Identical answers are a tie without asking the judge.
    """

    kind: ClassVar[Kind] = "pairwise"

    def __init__(
        self, config: JudgeConfig, *, name: str = "judge", transport: httpx.AsyncBaseTransport | None = None
    ):
        self.name, self.config = name, config
        self.role, self.tolerance = config.role, config.tolerance
        self.max_error_fraction = config.max_invalid_fraction
        self._limit = asyncio.Semaphore(config.concurrency)
        self._client = httpx.AsyncClient(
            base_url=config.url.rstrip("/"),
            headers={"Authorization": f"Bearer {config.api_key}"} if config.api_key else {},
            timeout=httpx.Timeout(config.timeout_s, connect=10.0),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def applies_to(self, example: EvalExample) -> bool:
        return example.source == "holdout"

    def prompt(self, example: EvalExample, answer_a: str, answer_b: str) -> str:
        """The judge prompt for one ordering (placeholders replaced, other braces left alone)."""
        return (
            self.config.prompt.replace("{conversation}", render_conversation(example.messages))
            .replace("{answer_a}", answer_a)
            .replace("{answer_b}", answer_b)
        )

    async def _ask(self, prompt: str) -> str:
        body = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.config.max_tokens,
            "temperature": 0.0,
        }
        where = f"judge {self.config.model!r} at {self.config.url}"
        for attempt in range(self.config.retries + 1):
            last = attempt == self.config.retries
            async with self._limit:
                try:
                    response = await self._client.post("/chat/completions", json=body)
                except httpx.TransportError as exc:
                    if last:
                        raise JudgeError(f"{where} unreachable: {type(exc).__name__}: {exc}") from exc
                    response = None
            if response is not None and response.status_code == 200:
                try:
                    return str(response.json()["choices"][0]["message"]["content"] or "")
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise JudgeError(f"{where} answered no chat completion: {response.text[:200]!r}") from exc
            if response is not None and (response.status_code not in _RETRY_STATUS or last):
                raise JudgeError(f"{where} answered {response.status_code}: {error_message(response)}")
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def verdict(self, example: EvalExample, answer_a: str, answer_b: str) -> Verdict:
        """The judge's verdict on one ordering; `ScorerError` if its reply is no verdict."""
        reply = await self._ask(self.prompt(example, answer_a, answer_b))
        verdict = parse_verdict(reply)
        if verdict is None:
            raise ScorerError(f"judge {self.config.model!r} gave no verdict (A, B or TIE): {reply[:80]!r}")
        return verdict

    async def score(self, example: EvalExample, answers: AnswerPair, server: ModelServer) -> ExampleScore:
        if answers.candidate.strip() == answers.incumbent.strip():
            return ExampleScore(example_id=example.id, difference=0.0, detail="identical answers")
        first, second = await asyncio.gather(
            self.verdict(example, answers.candidate, answers.incumbent),
            self.verdict(example, answers.incumbent, answers.candidate),
        )
        candidate_first = {"A": 1, "B": -1, "TIE": 0}[first]
        incumbent_first = {"A": -1, "B": 1, "TIE": 0}[second]
        return ExampleScore(
            example_id=example.id,
            difference=(candidate_first + incumbent_first) / 2,
            detail=f"candidate as A: {first}; candidate as B: {second}",
        )

    def notes(self, scores: list[ExampleScore]) -> list[str]:
        """Position-bias diagnostics over the judged pairs."""
        judged = [s for s in scores if s.detail != "identical answers"]
        if not judged:
            return ["no pair needed judging (all answers identical)"]
        split = sum(1 for s in judged if s.difference == 0 and "TIE" not in s.detail)
        return [
            f"{len(judged)} pairs judged in both orders; {len(scores) - len(judged)} identical pairs scored a tie",
            f"verdicts flipped with the order (position bias) in {split}/{len(judged)} pairs",
        ]
