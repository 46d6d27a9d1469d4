"""The event-loop lag probe: how long the one event loop was held up, as metrics.

Every HTTP request (ingest, gateway, health) waits while the loop runs something else, so a
stall of the loop is a stall of the whole service. The probe sleeps `interval` seconds again and
again and records how late each wake-up came:

- `ratchet_event_loop_lag_seconds` (histogram) and `ratchet_event_loop_lag_max_seconds` (the
  longest since start): the lateness requests see, whatever its cause;
- `ratchet_event_loop_blocked_seconds` (histogram): the part of it not spent waiting for a CPU
  (Linux's per-thread run-queue time, /proc/thread-self/schedstat), i.e. the loop held by the
  process itself: a blocking call, or the GIL held by another thread. On a machine whose cores
  are all busy the first grows and the second does not; where schedstat is missing both are equal.

A stall that begins mid-sleep is seen up to `interval` shorter than it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from service.metrics import Metrics

PROBE_INTERVAL_S = 0.01


def runqueue_clock() -> Callable[[], float] | None:
    """A function giving the seconds the calling thread has spent waiting for a CPU so far, or
    None where the kernel does not say. Call this from the thread to be measured."""
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        os.pread(fd, 64, 0).split()[1]
    except (OSError, IndexError):
        return None
    return lambda: int(os.pread(fd, 64, 0).split()[1]) / 1e9


class LoopLagProbe:
    """A task on the running loop that measures its own lateness; `start` then `aclose`."""

    def __init__(self, metrics: Metrics, interval: float = PROBE_INTERVAL_S) -> None:
        self._metrics = metrics
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.longest = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ratchet-loop-lag")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        waited = runqueue_clock() or (lambda: 0.0)
        lag_seen, blocked_seen = (
            self._metrics.event_loop_lag.observe,
            self._metrics.event_loop_blocked.observe,
        )
        while True:
            asked, queued = loop.time(), waited()
            await asyncio.sleep(self._interval)
            lag = max(0.0, loop.time() - asked - self._interval)
            lag_seen(lag)
            blocked_seen(max(0.0, lag - (waited() - queued)))
            if lag > self.longest:
                self.longest = lag
                self._metrics.event_loop_lag_max.set(lag)
