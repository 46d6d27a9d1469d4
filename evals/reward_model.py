"""The learned judge's reward model, as evals sees it: something that scores answers.

`RewardModel` is the interface (a batch of (conversation, answer) items in, one float each out,
higher = users would like it more). `TrainerRewardModel` is the real one: it runs the trainer's
`python -m trainer score DIR --input ... --output ...` as a subprocess, the way the service runs
training. Why a process and not transformers in-process: evals runs inside the long-running
service, which must not import torch (7-12 s, ~1 GB, and seconds of GIL-holding compute next to
the ingest path that was tuned to the millisecond); the trainer already owns loading a base model
with an adapter and works the same on a GPU host; files in, files out, as between every part.
One process per evaluation scores everything at once (calibration and both models' answers).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from evals.errors import RewardModelError
from formats.chat import Tool
from formats.log import Message
from formats.reward import ScoreItem, ScoreLine

RewardItem = ScoreItem
"""One answer to score (`formats.reward.ScoreItem`): the conversation before it and its text."""


def reward_item(
    item_id: str, messages: list[dict[str, Any]], answer: str, tools: list[dict[str, Any]] | None = None
) -> RewardItem:
    """A `RewardItem` from the eval set's messages and tools (as a client sends them); raises
    `RewardModelError` for messages that are not OpenAI chat messages."""
    try:
        return RewardItem(
            id=item_id,
            messages=msgspec.convert(messages, list[Message]),
            answer=answer,
            tools=None if tools is None else msgspec.convert(tools, list[Tool]),
        )
    except msgspec.ValidationError as exc:
        raise RewardModelError(f"cannot score an answer to these messages: {exc}") from exc


class RewardModel(Protocol):
    """Scores answers; raises `RewardModelError` when it cannot."""

    description: str

    async def score(self, items: Sequence[RewardItem]) -> list[float]: ...


class TrainerRewardModel:
    """The reward model directory a training run wrote, scored by `python -m trainer score`.

    `command` is how to start the trainer (default: this Python, `-m trainer`); `timeout_s` bounds
    one scoring process (it is killed past it).
    """

    def __init__(
        self, directory: str | Path, *, command: Sequence[str] | None = None, timeout_s: float = 900.0
    ) -> None:
        self.directory = Path(directory)
        self.command = list(command) if command else [sys.executable, "-m", "trainer"]
        self.timeout_s = timeout_s
        self.description = f"reward model {self.directory.name}"

    async def score(self, items: Sequence[RewardItem]) -> list[float]:
        if not (self.directory / "manifest.json").is_file():
            raise RewardModelError(f"reward model directory {self.directory} has no manifest.json")
        with tempfile.TemporaryDirectory(prefix="ratchet-reward-") as tmp:
            src, dst = Path(tmp) / "items.jsonl", Path(tmp) / "scores.jsonl"
            src.write_bytes(b"".join(msgspec.json.encode(item) + b"\n" for item in items))
            proc = await asyncio.create_subprocess_exec(
                *self.command, "score", str(self.directory), "--input", str(src), "--output", str(dst),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                async with asyncio.timeout(self.timeout_s):
                    stdout, stderr = await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise RewardModelError(
                    f"scoring with {self.directory} ran past {self.timeout_s:.0f}s"
                ) from None
            except asyncio.CancelledError:
                proc.kill()
                await proc.wait()
                raise
            if proc.returncode != 0:
                raise RewardModelError(
                    f"scoring with {self.directory} failed (exit {proc.returncode}): {_last_error(stdout, stderr)}"
                )
            try:
                scores = msgspec.json.decode(
                    b"[" + b",".join(dst.read_bytes().splitlines()) + b"]", type=list[ScoreLine]
                )
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise RewardModelError(
                    f"scoring with {self.directory} wrote no usable scores: {exc}"
                ) from exc
        if [s.id for s in scores] != [i.id for i in items]:
            raise RewardModelError(
                f"scoring with {self.directory} returned {len(scores)} scores for {len(items)} items"
            )
        return [s.score for s in scores]


def _last_error(stdout: bytes, stderr: bytes) -> str:
    """The trainer's `error` event message, else the end of its stderr."""
    for line in reversed(stdout.splitlines()):
        try:
            event = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(event, dict) and event.get("event") == "error":
            return str(event.get("message"))
    return stderr.decode(errors="replace")[-300:]
