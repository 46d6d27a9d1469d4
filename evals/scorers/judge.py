"""Pairwise LLM-as-judge on any OpenAI-compatible chat endpoint, asked in both answer orders.

Each pair is judged twice, candidate first and incumbent first, and the two verdicts are
averaged: a judge that always prefers the first answer (position bias) scores a tie. A judge
that cannot be reached fails the evaluation (`JudgeError`); an answer that is no verdict is a
`ScorerError`, which fails the evaluation unless `max_invalid_fraction` tolerates it.

Held to the users' taste: given the holdout's feedback (and `calibrate` on), the judge first
judges held-out preference pairs (a correction over the answer it corrected, a liked over a
disliked answer to one prompt), in both orders, and decides only if its verdicts agree with the
users well enough (`evals.calibration`); otherwise it is reported as a diagnostic.

Endpoints differ in what they accept: only `model`, `messages`, the max-tokens field and the
configured `params` are sent, and a 400 whose message names an optional one (a sampling
parameter, or max_tokens) is retried once without it, which is then left out for the rest of the
evaluation and named in the report's notes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import httpx

from evals.calibration import DEFAULT_CALIBRATION, AgreementCalibration, CalibrationConfig, calibrate_verdicts
from evals.config import JudgeConfig, Role
from evals.errors import JudgeError, ScorerError
from evals.evalset import EvalExample, message_text
from evals.feedback import FeedbackExample
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
        self,
        config: JudgeConfig,
        *,
        name: str = "judge",
        transport: httpx.AsyncBaseTransport | None = None,
        feedback: Sequence[FeedbackExample] | None = None,
        calibration: CalibrationConfig = DEFAULT_CALIBRATION,
    ):
        self.name, self.config = name, config
        self.tolerance = config.tolerance
        self.max_error_fraction = config.max_invalid_fraction
        self._feedback = list(feedback) if feedback is not None and config.calibrate else None
        self._calibration_config = calibration
        self.calibration: AgreementCalibration | None = None
        if self._feedback is None:
            self.role: Role = config.role
            why = "calibration off" if feedback is not None else "no held-out feedback to calibrate on"
            self.eligibility = f"eligible as configured ({why})"
        else:
            self.role = "diagnostic"
            self.eligibility = "not eligible: not calibrated yet"
        self._prepare_lock = asyncio.Lock()
        self._prepared = False
        self._scores: dict[tuple[str, str, str], asyncio.Future[ExampleScore]] = {}
        self._optional: dict[str, Any] = {config.max_tokens_field: config.max_tokens, **config.params}
        self.dropped: list[str] = []
        """Optional parameters the endpoint refused, left out since."""
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

    @property
    def calibrated(self) -> bool:
        """Whether the judge may decide: calibrated on held-out pairs, or not asked to be."""
        return self._feedback is None or (self.calibration is not None and self.calibration.eligible)

    @staticmethod
    def _refused(response: httpx.Response, body: dict[str, Any]) -> list[str]:
        """The optional parameters of `body` a 400 answer names (the endpoint does not accept them)."""
        if response.status_code != 400:
            return []
        message = error_message(response)
        optional = [k for k in body if k not in ("model", "messages")]
        return [k for k in optional if re.search(rf"\b{re.escape(k)}\b", message)]

    def _leave_out(self, refused: list[str], message: str) -> None:
        """Stop sending `refused`; a refused max_tokens moves to max_completion_tokens when the
        endpoint asks for that (OpenAI's newer models do)."""
        for key in refused:
            value = self._optional.pop(key, None)
            if key == "max_tokens" and "max_completion_tokens" in message and value is not None:
                self._optional["max_completion_tokens"] = value
            if key not in self.dropped:
                self.dropped.append(key)

    async def _ask(self, prompt: str) -> str:
        where = f"judge {self.config.model!r} at {self.config.url}"
        refused_here: set[str] = set()
        attempt = 0
        while True:
            last = attempt == self.config.retries
            async with self._limit:
                # Built once a slot is free: a parameter refused meanwhile is not sent again.
                body = {
                    "model": self.config.model,
                    "messages": [{"role": "user", "content": prompt}],
                    **self._optional,
                }
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
            refused = self._refused(response, body) if response is not None else []
            if refused and not refused_here.issuperset(refused):
                # Once per parameter: leave out what the endpoint names and ask again (no retry spent).
                refused_here.update(refused)
                self._leave_out(refused, error_message(response))
                continue
            if response is not None and (response.status_code not in _RETRY_STATUS or last):
                raise JudgeError(f"{where} answered {response.status_code}: {error_message(response)}")
            await asyncio.sleep(0.5 * 2**attempt)
            attempt += 1

    async def verdict(self, example: EvalExample, answer_a: str, answer_b: str) -> Verdict:
        """The judge's verdict on one ordering; `ScorerError` if its reply is no verdict."""
        reply = await self._ask(self.prompt(example, answer_a, answer_b))
        verdict = parse_verdict(reply)
        if verdict is None:
            raise ScorerError(f"judge {self.config.model!r} gave no verdict (A, B or TIE): {reply[:80]!r}")
        return verdict

    async def prepare(self, examples: Sequence[EvalExample], answers: Sequence[AnswerPair]) -> None:
        """Calibrate on the held-out preference pairs (once), when given feedback. Each pair is
        judged in both orders; a reply that is no verdict counts as a tie (no agreement)."""
        async with self._prepare_lock:
            if self._prepared or self._feedback is None:
                return
            self._prepared = True
            jobs, truth, ids, prompts = [], [], [], []
            for ex in self._feedback:
                probe = EvalExample(id="calibration", source="holdout", messages=ex.messages)
                for pair in ex.pairs:
                    ids += [len(ids) // 2] * 2
                    prompts += [ex.key] * 2
                    jobs += [
                        self._calibration_verdict(probe, pair.preferred, pair.other),
                        self._calibration_verdict(probe, pair.other, pair.preferred),
                    ]
                    truth += ["A", "B"]
            verdicts = await asyncio.gather(*jobs)
            self.calibration = calibrate_verdicts(
                truth, verdicts, ids, self._calibration_config, prompts=prompts
            )
            self.eligibility = self.calibration.why
            if self.calibration.eligible:
                self.role = self.config.role

    async def _calibration_verdict(self, example: EvalExample, a: str, b: str) -> Verdict:
        try:
            return await self.verdict(example, a, b)
        except ScorerError:
            return "TIE"

    async def score(self, example: EvalExample, answers: AnswerPair, server: ModelServer) -> ExampleScore:
        """Judge one pair (both orders); remembered, so a guard over the same pair asks nothing new."""
        key = (example.id, answers.candidate, answers.incumbent)
        if key not in self._scores:
            self._scores[key] = asyncio.ensure_future(self._score(example, answers))
        return await self._scores[key]

    async def _score(self, example: EvalExample, answers: AnswerPair) -> ExampleScore:
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
            return ["no pair needed judging (all answers identical)"] + (
                [f"the endpoint refused {', '.join(self.dropped)}: sent without"] if self.dropped else []
            )
        split = sum(1 for s in judged if s.difference == 0 and "TIE" not in s.detail)
        dropped = [f"the endpoint refused {', '.join(self.dropped)}: sent without"] if self.dropped else []
        return [
            f"{len(judged)} pairs judged in both orders; {len(scores) - len(judged)} identical pairs scored a tie",
            f"verdicts flipped with the order (position bias) in {split}/{len(judged)} pairs",
            *dropped,
        ]
