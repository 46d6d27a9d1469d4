"""The reward model's scoring files: what evals hands `python -m trainer score` and what comes back.

Input: JSONL, one `ScoreItem` per line: a conversation before the answer (`formats.log.Message`s,
as the snapshot stores them), the request's `tools`, and the answer's text. Output: JSONL, one
`ScoreLine` per input line, in input order. The trainer renders each item with the base model's
chat template after preparing messages and tools as vLLM does (`formats.rendering`), exactly as
it rendered the reward model's training pairs.

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


class ScoreLine(Struct, frozen=True, kw_only=True):
    """One line of the scoring output: higher means users would like the answer more."""

    id: str
    score: float
