"""The event-loop lag probe: how long the one event loop was held up, as a metric.

Every HTTP request (ingest, gateway, health) waits while the loop runs something else, so a
stall of the loop is a stall of the whole service. The probe sleeps `interval` seconds again and
again and records how late each wake-up came: `ratchet_event_loop_lag_seconds` (histogram) and
`ratchet_event_loop_lag_max_seconds` (the longest since start). A stall that begins mid-sleep is
seen up to `interval` shorter than it was.
"""

from __future__ import annotations

import asyncio
import contextlib

from service.metrics import Metrics

PROBE_INTERVAL_S = 0.01


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
        observe = self._metrics.event_loop_lag.observe
        while True:
            asked = loop.time()
            await asyncio.sleep(self._interval)
            lag = max(0.0, loop.time() - asked - self._interval)
            observe(lag)
            if lag > self.longest:
                self.longest = lag
                self._metrics.event_loop_lag_max.set(lag)
