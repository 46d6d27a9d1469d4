"""APScheduler wiring: the background jobs, each a plain function tested without a scheduler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from service.archive import archive_old_logs
from service.clock import utcnow
from service.erasure import apply_retention
from service.keys import flush_key_use
from service.pipeline import Pipeline
from service.rollouts import bring_up_serving
from service.runtime import Runtime

log = logging.getLogger("ratchet.scheduler")


def _logged(name: str, job: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        try:
            await job()
        except Exception:  # a failing job must not stop the others; the next tick tries again
            log.exception("job %s failed", name)

    return run


def build_scheduler(runtime: Runtime, pipeline: Pipeline) -> AsyncIOScheduler:
    """The jobs: new-signal check, optional cron runs, canary monitor, reconcile, retention, archive."""
    t = runtime.settings.training
    scheduler = AsyncIOScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
    )

    async def prune() -> None:
        await asyncio.to_thread(pipeline.prune)  # deletes directories: off the event loop

    jobs: list[tuple[str, Callable[[], Awaitable[Any]], Any]] = [
        ("signal-check", lambda: pipeline.check_signal(utcnow()), {"trigger": "interval", "seconds": t.signal_check_seconds}),
        ("canary-monitor", lambda: pipeline.monitor_canaries(time.time()),
         {"trigger": "interval", "seconds": t.canary_check_seconds}),
        ("reconcile", lambda: bring_up_serving(runtime), {"trigger": "interval", "seconds": t.reconcile_seconds}),
        ("retention", prune, {"trigger": "interval", "hours": 1}),
        ("data-retention", lambda: asyncio.to_thread(apply_retention, runtime, utcnow()),
         {"trigger": "interval", "hours": 1}),
        ("key-use", lambda: asyncio.to_thread(flush_key_use, runtime),
         {"trigger": "interval", "seconds": runtime.settings.key_use_flush_seconds}),
    ]  # fmt: skip
    if runtime.settings.archive.after_days is not None:
        jobs.append(("archive", lambda: asyncio.to_thread(archive_old_logs, runtime, utcnow()),
                     {"trigger": "interval", "seconds": runtime.settings.archive.interval_seconds}))  # fmt: skip
    if t.cron:
        jobs.append(("scheduled-run", pipeline.scheduled, {"trigger": CronTrigger.from_crontab(t.cron)}))
    for job_id, job, trigger in jobs:
        scheduler.add_job(_logged(job_id, job), id=job_id, name=job_id, replace_existing=True, **trigger)
    return scheduler
