"""The reward model's scoring files: what evals hands `python -m trainer score` and what comes back.

Input: JSONL, one `ScoreItem` per line: a conversation before the answer (`formats.log.Message`s,
as the snapshot stores them), the request's `tools`, and the answer's text. Output: JSONL, one
`ScoreLine` per input line, in input order. The trainer renders each item with the base model's
chat template after preparing messages and tools as vLLM does (`formats.rendering`), exactly as
it rendered the reward model's training pairs.

The same items also travel over a long-lived scorer's pipes (`python -m trainer score-server`):
one `ScoreRequest` per line on its stdin, one `ScoreResponse` per line on its stdout, in order.
The process imports torch once and keeps the last reward model it loaded, so the offline gate
pays neither for each evaluation (the one-shot command above spends most of its time importing).
Both carry `schema_version` (`SCORE_PROTOCOL_VERSION`); a scorer answers a request of another
version with an error response naming both versions.

Answers are text: the offline gate compares the text two models generate, and an answer that only
calls tools has none (`formats.log.Message.content` is None), so it is never scored.
"""

from __future__ import annotations

from msgspec import Struct

from formats.chat import Tool
from formats.log import Message


class ScoreItem(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One answer to score: `messages` is the conversation before it."""

    id: str
    messages: list[Message]
    answer: str
    tools: list[Tool] | None = None


SCORE_PROTOCOL_VERSION = 1


class ScoreRequest(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Score `items` with the reward model in directory `reward_model`."""

    schema_version: int
    id: int
    """Echoed in the response; the client numbers its requests."""
    reward_model: str
    items: list[ScoreItem]


class ScoreResponse(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The answer to request `id`: one score per item in request order, or why there is none.

    `kind` names the trainer's error class (`RewardModelError`, `BaseModelError`, ...); a
    response with an error leaves the scorer running for the next request.
    """

    schema_version: int
    id: int
    scores: list[float] | None = None
    error: str | None = None
    kind: str | None = None
    wall_time_s: float | None = None


class ScoreLine(Struct, frozen=True, kw_only=True):
    """One line of the scoring output: higher means users would like the answer more."""

    id: str
    score: float
