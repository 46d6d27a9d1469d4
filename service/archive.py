"""The archive job: logs older than `archive.after_days` move out of the DuckDB file into the
Parquet lake (`service/store/archive.py` has the layout and why a move is all or nothing)."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from service.runtime import Runtime
from service.store.archive import Moved

log = logging.getLogger("ratchet.archive")


def archive_old_logs(runtime: Runtime, now: datetime) -> Moved:
    """Job body (blocking; the scheduler runs it in a thread): for every project, move the logs
    received before `now - archive.after_days` to the archive, a day at a time under the
    project's data lock (no snapshot or erasure of the project meanwhile). A project that fails
    is counted in `ratchet_archive_errors_total` and retried at the next run; the others go on."""
    settings = runtime.settings.archive
    if settings.after_days is None or runtime.archive is None:
        return Moved()
    cutoff = now - timedelta(days=settings.after_days)
    started = time.perf_counter()
    rows = files = 0
    for project in sorted(runtime.projects):
        try:
            for day in runtime.archive.days_before(project, cutoff):
                with runtime.data_lock(project):
                    moved = runtime.archive.move_day(project, day, cutoff, now)
                runtime.metrics.archive_rows.inc(moved.rows)
                runtime.metrics.archive_files.inc(moved.files)
                rows, files = rows + moved.rows, files + moved.files
        except Exception:
            runtime.metrics.archive_errors.inc()
            log.exception("archiving the old logs of %s failed; the next run tries again", project)
    runtime.metrics.archive_seconds.observe(time.perf_counter() - started)
    if rows:
        log.info("archived %d logs in %d files (received before %s)", rows, files, cutoff.isoformat())
    return Moved(rows, files)
