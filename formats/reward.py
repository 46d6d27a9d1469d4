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

The reward model's directory holds the PEFT files and `manifest.json` (`RewardManifest`, kind
`reward_model`, `schema_version` `REWARD_MANIFEST_VERSION`), written by the trainer when it
publishes the directory and read, version first, before a model is loaded to score.

Answers are text: the offline gate compares the text two models generate, and an answer that only
calls tools has none (`formats.log.Message.content` is None), so it is never scored.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

from formats.chat import Tool
from formats.log import Message
from formats.versioned import SchemaVersionError, check_version

REWARD_MANIFEST_VERSION = 1


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


class RewardManifestError(ValueError):
    """A reward model's manifest.json is unreadable, of a newer version, or of something else."""


class RewardManifest(Struct, kw_only=True):
    """What made a reward model and what scoring needs to load it (`base_model`, `max_length`,
    `pad_token_id`)."""

    schema_version: int = REWARD_MANIFEST_VERSION
    kind: Literal["reward_model"] = "reward_model"
    run_id: str
    base_model: str
    snapshot_sha256: str
    trained_on: str = "train split only; the holdout is left for calibration"
    examples: dict[str, Any] = {}
    """Pair counts (`pairs`, `correction_pairs`, ..., `left_out`) and `trained_pairs`."""
    hyperparameters: dict[str, Any] = {}
    max_length: int
    """Tokens kept of each rendered conversation (its last ones): scoring cuts the same way."""
    pad_token_id: int | None
    metrics: dict[str, Any] = {}
    wall_time_s: float | None = None
    created_at: str | None = None

    def encode(self) -> bytes:
        """The file's bytes: indented JSON."""
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"


def decode_reward_manifest(raw: bytes | str, what: str = "reward model manifest") -> RewardManifest:
    """A reward model's manifest from JSON text, version first. `RewardManifestError` naming `what`
    for a newer version, another kind of manifest (an adapter's: "not a reward model manifest")
    or a missing or mistyped field."""
    try:
        check_version(raw, what, REWARD_MANIFEST_VERSION)
        kind = msgspec.json.decode(raw, type=_Kind).kind
        if kind != "reward_model":
            raise RewardManifestError(f"{what} is not a reward model manifest (kind {kind!r})")
        return msgspec.json.decode(raw, type=RewardManifest)
    except SchemaVersionError as exc:
        raise RewardManifestError(str(exc)) from exc
    except msgspec.DecodeError as exc:  # ValidationError included
        raise RewardManifestError(f"{what} is not a reward model manifest: {exc}") from exc


class _Kind(Struct):
    kind: str | None = None
