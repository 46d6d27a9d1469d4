"""The holdout's own feedback, per prompt: what the feedback-derived evidence is built from.

The narrow input is `HeldOutRating`: a prompt as it is replayed (chat-message dicts as a client
sends them, and the request's tools, tool_choice and response_format), the text of the answer
users were served, its thumb (+1, -1 or None), a correction (or None) and the answer's problem
(or None). `read_holdout_ratings` reads them from a snapshot's holdout.parquet
(`formats.snapshot`, schema_version 2); nothing else here depends on how the snapshot stores them.

Honest evidence, as for training (`formats.log.AnswerProblem`):

- an answer with a `problem` (cut by length, filtered, interrupted, ended by an upstream error,
  empty) is never liked: not a reference, not the preferred side of a pair, not a positive rating
  in the calibration; a thumbs-down on it counts as any other;
- an answer that only calls tools has no text to compare (`HeldOutRating.answer` is None): it is
  in no text evidence (liked, disliked, pairs, calibration ratings); a correction of it is still a
  reference, the text the user wanted.

`group_feedback` turns ratings into one `FeedbackExample` per distinct prompt, keyed by
`evals.evalset.prompt_key`, the key the eval set groups holdout prompts by, so a scorer finds the
feedback of the `EvalExample` it is handed (`EvalExample.key`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from evals.errors import EvalInputError
from evals.evalset import prompt_key
from formats.rendering import openai_message, openai_tools
from formats.snapshot import SnapshotFormatError, iter_rows

log = logging.getLogger(__name__)

__all__ = [
    "FeedbackExample",
    "HeldOutRating",
    "RatedPair",
    "group_feedback",
    "prompt_key",
    "read_holdout_ratings",
]


class HeldOutRating(msgspec.Struct, frozen=True, kw_only=True):
    """One held-out answer and what its user said of it."""

    messages: list[dict[str, Any]]
    answer: str | None
    """The answer's text; None for an answer that only calls tools (no text to compare)."""
    rating: int | None = None
    """+1 thumbs-up, -1 thumbs-down, None unrated."""
    correction: str | None = None
    problem: str | None = None
    """Why the answer may never count as liked (`formats.log.AnswerProblem`), or None."""
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    log_id: str = ""

    @property
    def key(self) -> str:
        return prompt_key(self.messages, self.tools, self.tool_choice, self.response_format)


class RatedPair(msgspec.Struct, frozen=True, kw_only=True):
    """Two answers to one prompt where users said which is better: `preferred` over `other`."""

    preferred: str
    other: str
    origin: str
    """"correction" (the correction over the answer it corrected) or "thumbs" (liked over disliked)."""


class FeedbackExample(msgspec.Struct, frozen=True, kw_only=True):
    """One held-out prompt's feedback. Answers users disagree on (liked by one, disliked by another)
    are in neither `liked` nor `disliked`."""

    key: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    liked: list[str] = []
    disliked: list[str] = []
    corrections: list[str] = []
    pairs: list[RatedPair] = []
    ratings: list[tuple[str, int]] = []
    """Every thumb on a text answer as (answer, +1/-1), one per rating (the calibration's unit);
    a thumbs-up on an answer with a problem is left out (never liked)."""


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def group_feedback(ratings: Iterable[HeldOutRating]) -> list[FeedbackExample]:
    """One `FeedbackExample` per distinct prompt, in first-seen order (module docstring for what
    counts).

    A correction that is empty or equals the answer corrects nothing; a real one is a reference
    answer and, when the corrected answer has text, a pair (correction over it). Same-prompt liked
    and disliked answers make thumbs pairs, each answer used at least once, never quadratically many.
    """
    groups: dict[str, dict[str, Any]] = {}
    for r in ratings:
        key = r.key
        g = groups.setdefault(
            key,
            {
                "messages": r.messages,
                "tools": r.tools,
                "liked": [],
                "disliked": [],
                "corrections": [],
                "pairs": [],
                "ratings": [],
            },
        )
        text = r.answer if r.answer is not None and r.answer.strip() else None
        empty_text = r.answer is not None and text is None  # an empty answer: text "", never liked
        correction = r.correction if r.correction and r.correction.strip() != (text or "").strip() else None
        if correction is not None:
            g["corrections"].append(correction)
            if r.answer is not None:
                g["pairs"].append(RatedPair(preferred=correction, other=r.answer, origin="correction"))
        if r.answer is None:
            continue  # a tool call only: no text evidence
        if r.rating == 1 and r.problem is None and not empty_text:
            g["ratings"].append((r.answer, 1))
            g["liked"].append(r.answer)
        elif r.rating == -1:
            g["ratings"].append((r.answer, -1))
            if text is not None:
                g["disliked"].append(r.answer)
    examples = []
    for key, g in groups.items():
        liked, disliked = _unique(g["liked"]), _unique(g["disliked"])
        both = set(liked) & set(disliked)
        liked = [a for a in liked if a not in both]
        disliked = [a for a in disliked if a not in both]
        pairs = list(g["pairs"])
        if liked and disliked:
            pairs += [
                RatedPair(preferred=liked[i % len(liked)], other=disliked[i % len(disliked)], origin="thumbs")
                for i in range(max(len(liked), len(disliked)))
            ]
        examples.append(
            FeedbackExample(
                key=key,
                messages=g["messages"],
                tools=g["tools"],
                liked=liked,
                disliked=disliked,
                corrections=_unique(g["corrections"]),
                pairs=pairs,
                ratings=g["ratings"],
            )
        )
    return examples


def read_holdout_ratings(path: str | Path) -> list[HeldOutRating]:
    """Every chat row of a snapshot's holdout.parquet as a `HeldOutRating`, the prompt as the eval
    set replays it (`formats.rendering.openai_message`/`openai_tools`). `EvalInputError` when the
    file cannot be read; a row that does not decode, and a completions prompt (not replayable as
    chat, as in `evals.evalset.load_holdout`), are skipped and logged."""
    skipped: Counter[str] = Counter()

    def skip(log_id: str | None, exc: Exception) -> None:
        skipped["unreadable"] += 1
        log.warning("holdout %s: log %s skipped, it does not decode: %s", path, log_id, exc)

    out = []
    try:
        for row in iter_rows(Path(path), on_error=skip):
            if not isinstance(row.prompt, list) or not row.prompt:
                skipped["completions_or_empty_prompt"] += 1
                continue
            message = row.completion
            tool_call_only = not (message.content or "").strip() and bool(message.tool_calls)
            out.append(
                HeldOutRating(
                    messages=[openai_message(m) for m in row.prompt],
                    tools=openai_tools(row.tools),
                    tool_choice=row.tool_choice,
                    response_format=row.response_format,
                    answer=None if tool_call_only else (message.content or ""),
                    rating=row.rating,
                    correction=row.correction,
                    problem=row.problem,
                    log_id=row.log_id,
                )
            )
    except SnapshotFormatError as exc:
        raise EvalInputError(f"holdout {path}: {exc}") from exc
    if skipped:
        log.warning("holdout %s: skipped %s", path, dict(skipped))
    return out
