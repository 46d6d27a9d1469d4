"""The learned judge's reward model, as evals sees it: something that scores answers.

`RewardModel` is the interface (a batch of (conversation, answer) items in, one float each out,
higher = users would like it more). `TrainerRewardModel` is the real one: it runs the trainer's
`python -m trainer score DIR --input ... --output ...` as a subprocess, the way the service runs
training. Why a process and not transformers in-process: evals runs inside the long-running
service, which must not import torch (7-12 s, ~1 GB, and seconds of GIL-holding compute next to
the ingest path that was tuned to the millisecond); the trainer already owns loading a base model
with an adapter and works the same on a GPU host; files in, files out, as between every part.
One process per evaluation scores everything at once (calibration and both models' answers).

`ScorerProcess` keeps one `python -m trainer score-server` alive across evaluations instead (the
protocol: `formats.reward.ScoreRequest` / `ScoreResponse` JSON lines over its stdin and stdout):
the torch import and the base model's load are paid once, not per evaluation. The service owns
one and closes it at shutdown; a scorer that died is started again by the next request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from evals.errors import RewardModelError
from formats.chat import Tool
from formats.log import Message
from formats.reward import SCORE_PROTOCOL_VERSION, ScoreItem, ScoreLine, ScoreRequest, ScoreResponse

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
    one scoring process (it is killed past it). With `scorer`, the items go to that long-lived
    process instead of a process of their own.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        command: Sequence[str] | None = None,
        timeout_s: float = 900.0,
        scorer: ScorerProcess | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.command = list(command) if command else [sys.executable, "-m", "trainer"]
        self.timeout_s = timeout_s
        self.scorer = scorer
        self.description = f"reward model {self.directory.name}"

    async def score(self, items: Sequence[RewardItem]) -> list[float]:
        if not (self.directory / "manifest.json").is_file():
            raise RewardModelError(f"reward model directory {self.directory} has no manifest.json")
        if self.scorer is not None:
            return await self.scorer.score(self.directory, items, timeout_s=self.timeout_s)
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


class ScorerProcess:
    """One long-lived `python -m trainer score-server`, started on the first request.

    Requests are answered one at a time, in order (a lock). A request that runs past `timeout_s`,
    or whose answer is not a valid response to it, kills the process; a process found dead (it
    crashed, was killed, ran out of memory) is started again by the next request, and a request
    that got no answer at all is sent once more, to a new process. `aclose()` ends
    it: end of input first (it exits by itself), killed if it has not within `grace_s`. Idle for
    `idle_s` (None: never), it is ended the same way, so a loaded base model does not hold memory
    between evaluations far apart; the next request starts it again.
    """

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        timeout_s: float = 900.0,
        grace_s: float = 5.0,
        idle_s: float | None = None,
    ) -> None:
        self.command = [*(command or [sys.executable, "-m", "trainer"]), "score-server"]
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.idle_s = idle_s
        self._idle: asyncio.TimerHandle | None = None
        self.starts = 0
        """Processes started so far (a restart after a death counts)."""
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._drain: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._next_id = 0

    @property
    def pid(self) -> int | None:
        """The running process's id; None before the first request or after it ended."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def score(
        self, directory: str | Path, items: Sequence[RewardItem], *, timeout_s: float | None = None
    ) -> list[float]:
        """One score per item with the reward model in `directory`; `RewardModelError` if none.
        `timeout_s` bounds this request (default: the scorer's)."""
        async with self._lock:
            if self._idle is not None:
                self._idle.cancel()
            try:
                return await self._request(directory, items, timeout_s or self.timeout_s)
            finally:
                self._rest()

    async def start(self) -> None:
        """Start the process now if none runs (it imports torch first), without waiting for it:
        started ahead of an evaluation (while an adapter trains), it is ready when asked."""
        async with self._lock:
            if self._idle is not None:
                self._idle.cancel()
            await self._running()
            self._rest()

    def _rest(self) -> None:
        """Between requests: ended after `idle_s` without one."""
        if self.idle_s is not None and self._proc is not None:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self.idle_s, lambda: loop.create_task(self._close_idle()))

    async def warm(self, directory: str | Path) -> None:
        """Start the process and load the reward model in `directory` (a request with no items),
        so that the evaluation's request finds both ready: called as the evaluation starts, the
        torch import overlaps with vLLM generating the answers. Failures are left to that request."""
        with contextlib.suppress(RewardModelError):
            await self.score(directory, [])

    async def _close_idle(self) -> None:
        if not self._lock.locked():
            await self.aclose()

    async def _request(
        self, directory: str | Path, items: Sequence[RewardItem], timeout_s: float, *, retry: bool = True
    ) -> list[float]:
        proc = await self._running()
        self._next_id += 1
        request = ScoreRequest(
            schema_version=SCORE_PROTOCOL_VERSION, id=self._next_id, reward_model=str(directory),
            items=list(items),
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                proc.stdin.write(msgspec.json.encode(request) + b"\n")
                await proc.stdin.drain()
                line = await proc.stdout.readline()
        except TimeoutError:
            await self._stop(kill=True)
            raise RewardModelError(
                f"scoring with {directory} ran past {timeout_s:.0f}s; the scorer was stopped"
            ) from None
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        except BaseException:  # cancelled mid-request: its answer would be read as the next one's
            await asyncio.shield(self._stop(kill=True))
            raise
        if not line:
            code = await self._stop(kill=True)
            if retry:  # it died before it read this request (killed while idle): once on a new one
                return await self._request(directory, items, timeout_s, retry=False)
            raise RewardModelError(
                f"the scorer process exited (code {code}) while scoring with {directory}: "
                + " | ".join(self._stderr)[-300:]
            )
        try:
            response = msgspec.json.decode(line, type=ScoreResponse)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._stop(kill=True)
            raise RewardModelError(f"the scorer answered with no valid response: {exc}") from exc
        if response.id != request.id:
            await self._stop(kill=True)
            raise RewardModelError(f"the scorer answered request {response.id}, not {request.id}")
        if response.error is not None:
            raise RewardModelError(f"scoring with {directory} failed: {response.error}")
        if response.scores is None or len(response.scores) != len(items):
            raise RewardModelError(
                f"scoring with {directory} returned {len(response.scores or [])} scores for {len(items)} items"
            )
        return response.scores

    async def _running(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        if self._proc is not None:
            await self._stop(kill=True)
        self._stderr.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=1 << 26,
        )  # fmt: skip
        self.starts += 1
        self._drain = asyncio.get_running_loop().create_task(self._keep_stderr(self._proc))
        return self._proc

    async def _keep_stderr(self, proc: asyncio.subprocess.Process) -> None:
        """Reads its stderr (a full pipe would block it), keeping the last lines for errors."""
        assert proc.stderr is not None
        async for raw in proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    async def _stop(self, *, kill: bool) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            if kill:
                proc.kill()
            elif proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), self.grace_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._drain, 2)
        return proc.returncode

    async def aclose(self) -> None:
        """End the process (end of input, then a kill past `grace_s`); a later request starts a new one."""
        if self._idle is not None:
            self._idle.cancel()
        async with self._lock:
            await self._stop(kill=False)


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
