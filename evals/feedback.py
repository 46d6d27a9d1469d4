"""The holdout's own feedback, per prompt: what the feedback-derived evidence is built from.

The narrow input is `HeldOutRating`: a prompt (a list of chat-message dicts), the answer users
were served (a string), its thumb (+1, -1 or None) and a correction (or None). Whatever reads the
snapshot hands these over (`read_holdout_ratings` reads today's holdout.parquet columns); nothing
here depends on how the snapshot stores them.

`group_feedback` turns ratings into one `FeedbackExample` per distinct prompt, keyed by
`prompt_key(messages)`, the same canonical JSON the eval set groups holdout prompts by, so a
scorer finds the feedback of the `EvalExample` it is handed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq

from evals.errors import EvalInputError


class HeldOutRating(msgspec.Struct, frozen=True, kw_only=True):
    """One held-out answer and what its user said of it."""

    messages: list[dict[str, Any]]
    answer: str
    rating: int | None = None
    """+1 thumbs-up, -1 thumbs-down, None unrated."""
    correction: str | None = None
    log_id: str = ""


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
    liked: list[str] = []
    disliked: list[str] = []
    corrections: list[str] = []
    pairs: list[RatedPair] = []
    ratings: list[tuple[str, int]] = []
    """Every thumb as (answer, +1/-1), one per rating (the calibration's unit)."""


def prompt_key(messages: Sequence[dict[str, Any]]) -> str:
    """Canonical JSON of a conversation: equal prompts, equal keys."""
    return json.dumps(list(messages), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def group_feedback(ratings: Iterable[HeldOutRating]) -> list[FeedbackExample]:
    """One `FeedbackExample` per distinct prompt, in first-seen order.

    A correction that is empty or equals the answer corrects nothing; a real one is a reference
    answer and a pair (correction over the corrected answer). Same-prompt liked and disliked
    answers make thumbs pairs, each answer used at least once, never quadratically many.
    """
    groups: dict[str, dict[str, Any]] = {}
    for r in ratings:
        key = prompt_key(r.messages)
        g = groups.setdefault(
            key,
            {
                "messages": r.messages,
                "liked": [],
                "disliked": [],
                "corrections": [],
                "pairs": [],
                "ratings": [],
            },
        )
        correction = r.correction if r.correction and r.correction.strip() != r.answer.strip() else None
        if correction is not None:
            g["corrections"].append(correction)
            g["pairs"].append(RatedPair(preferred=correction, other=r.answer, origin="correction"))
        if r.rating in (1, -1):
            g["ratings"].append((r.answer, int(r.rating)))
            (g["liked"] if r.rating == 1 else g["disliked"]).append(r.answer)
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
                liked=liked,
                disliked=disliked,
                corrections=_unique(g["corrections"]),
                pairs=pairs,
                ratings=g["ratings"],
            )
        )
    return examples


# Today's holdout.parquet columns (see evals.evalset.HOLDOUT_COLUMNS); the snapshot format is
# changing (tool calls, the answer as a message): this reader is the one place to follow it.
_COLUMNS = ("log_id", "prompt_messages", "completion", "rating", "correction")


def read_holdout_ratings(path: str | Path) -> list[HeldOutRating]:
    """Every row of a snapshot's holdout.parquet as a `HeldOutRating`; `EvalInputError` names the
    file and row when it cannot be read."""
    try:
        table = pq.read_table(path, columns=list(_COLUMNS))
    except (OSError, ValueError, KeyError) as exc:
        raise EvalInputError(
            f"holdout {path}: cannot read the feedback columns {', '.join(_COLUMNS)}: {exc}"
        ) from exc
    out = []
    for i, row in enumerate(table.to_pylist()):
        try:
            messages = json.loads(row["prompt_messages"])
        except (TypeError, ValueError) as exc:
            raise EvalInputError(f"holdout {path} row {i}: prompt_messages is not JSON: {exc}") from exc
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise EvalInputError(f"holdout {path} row {i}: prompt_messages is not a list of chat messages")
        out.append(
            HeldOutRating(
                messages=messages,
                answer=row["completion"] or "",
                rating=row["rating"],
                correction=row["correction"],
                log_id=row["log_id"] or "",
            )
        )
    return out
