"""The trainer as a subprocess: `python -m trainer COMMAND ...`, the one way the service runs it
on its own host (a run's training under the `local` and `accelerate` launchers, a project's null
adapter v0). `module` is how the trainer module is started: `python -m` by default, or
`accelerate launch ... -m` (`service.launchers`).

The trainer's stdout is its progress lines (`formats.run.TrainerEvent`), each handed to
`on_event` as it comes; its stderr (human logs) goes to a log file. A run past `timeout` gets
SIGTERM (the trainer then removes its half-written adapter directory), SIGKILL after a grace
period, and so does one whose caller is cancelled. The subprocess starts its own session and the
signals go to its whole process group, so a launcher's workers get them too (each then cleans up
as the trainer does). A non-zero exit, or no `done` event, raises `TrainerFailed` with the
trainer's own error message, or the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path
from typing import IO

from formats.run import DoneEvent, ErrorEvent, TrainerEvent, decode_event
from service.errors import RatchetError


class TrainerFailed(RatchetError):
    """The trainer exited without finishing: the message says why (its error, or its log's end)."""


class TrainerTimedOut(TrainerFailed):
    """The trainer ran past its time limit and was stopped."""


async def follow_events(
    lines: AsyncIterable[bytes], on_event: Callable[[TrainerEvent], Awaitable[None]] | None
) -> tuple[DoneEvent | None, str | None]:
    """Read the trainer's output to its end, handing each progress line to `on_event` (other
    lines are skipped): (its `done` event, its last error message), each None when it sent none.
    Every launcher reads its trainer's output through this (`service.ray_jobs` too)."""
    done: DoneEvent | None = None
    error: str | None = None
    async for raw in lines:
        event = decode_event(raw)
        if isinstance(event, DoneEvent):
            done = event
        elif isinstance(event, ErrorEvent):
            error = event.message
        if event is not None and on_event is not None:
            await on_event(event)
    return done, error


async def run_trainer(
    *args: str,
    log_path: Path | None = None,
    timeout: float | None = None,
    on_event: Callable[[TrainerEvent], Awaitable[None]] | None = None,
    grace: float = 10.0,
    module: tuple[str, ...] = (sys.executable, "-m"),
) -> DoneEvent:
    """Run `<module> trainer *args` to its end and return its `done` event. `log_path`: where
    its stderr is appended (None: a temporary file, read for the error's tail)."""
    with _stderr_file(log_path) as stderr:
        proc = await asyncio.create_subprocess_exec(
            *module, "trainer", *args,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, limit=1 << 20, start_new_session=True,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                assert proc.stdout is not None
                done, error = await follow_events(proc.stdout, on_event)
                await proc.wait()
        except TimeoutError:
            await stop(proc, grace)
            raise TrainerTimedOut(f"the trainer ran past {timeout:.0f}s and was stopped") from None
        except BaseException:  # cancelled (a run cancelled or aborted), or on_event failed
            await asyncio.shield(stop(proc, grace))
            raise
        if proc.returncode != 0 or done is None:
            stderr.flush()
            stderr.seek(max(0, stderr.seek(0, 2) - 400))
            tail = stderr.read().decode(errors="replace")
            raise TrainerFailed(f"the trainer failed (exit {proc.returncode}): {error or tail}")
        return done


def _stderr_file(log_path: Path | None) -> IO[bytes]:
    if log_path is None:
        return tempfile.TemporaryFile()
    return open(log_path, "a+b")


async def stop(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM first: the trainer then removes its half-written adapter directory; SIGKILL after."""
    if proc.returncode is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        _signal_group(proc, signal.SIGKILL)
        await proc.wait()


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group ended meanwhile
        os.killpg(proc.pid, sig)  # its own session and group: the launcher and its workers
