"""Deleting data, as callers see it: one log, one end user (the right to erasure), a project, and
the retention job. The SQL, and why a deletion is all or nothing, is in `service/store/erasure.py`.

Order of each deletion, under the project's data lock (no snapshot is cut meanwhile):
1. (a project) stop taking anything for it: out of the in-memory project set and key ring, its
   runs stopped, its versions out of routing and unloaded from vLLM, in-flight writes drained;
2. the transaction that records it (its commit point): event, adapter marks, eval reports, the
   files to delete and the rows to delete;
3. runs whose snapshot held the data and that have not reached their canary are stopped (they
   would train on it);
4. the files go, then the rows, in small transactions (ingest commits between them); a start-up
   after `kill -9` finishes both before serving (`finish_interrupted`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from service.clock import utcnow
from service.domain import ErasureOut, Principal
from service.errors import NotFound
from service.runtime import Runtime
from service.store.erasure import Erased

log = logging.getLogger("ratchet.erasure")


async def erase_log(runtime: Runtime, principal: Principal, project: str, log_id: str) -> ErasureOut:
    """Delete one log, its feedback and every snapshot holding it; mark adapters trained on it."""
    return await _erase(runtime, "log", project, "a log in its snapshot was deleted",
                        lambda now: runtime.erasures.erase_log(project, log_id, now, principal.key_id))  # fmt: skip


async def erase_end_user(runtime: Runtime, principal: Principal, project: str, end_user: str) -> ErasureOut:
    """Delete everything of one end user in the project (their logs, feedback on those logs,
    feedback they gave) and every snapshot holding any of it; mark adapters trained on it."""
    return await _erase(runtime, "end_user", project, "an end user in its snapshot was erased",
                        lambda now: runtime.erasures.erase_end_user(project, end_user, now, principal.key_id))  # fmt: skip


async def delete_project(runtime: Runtime, principal: Principal, project: str) -> ErasureOut:
    """Delete a project and everything of it: rows in every table, keys, runs and their files,
    adapter directories, versions loaded in vLLM, metric series. `NotFound` if there is no such
    project."""
    if project not in runtime.projects:
        raise NotFound(f"project {project!r} does not exist")
    runtime.projects.discard(project)
    runtime.keys.drop_project(project)
    lock = runtime.data_lock(project)
    try:
        active = await asyncio.to_thread(runtime.runs.list, project, active_only=True, limit=1000)
        stopped = [
            run.id for run in active
            if runtime.pipeline is not None and await runtime.pipeline.abort(run.id, "the project was deleted")
        ]  # fmt: skip
        adapters = await asyncio.to_thread(runtime.serving.adapters, project)
        versions = [a.served_name for a in adapters]
        await runtime.rollouts.forget(project, versions)
        await runtime.gateway.drain()  # gateway logs of the project still being written
        await runtime.writer.write("logs", [])  # and every row queued before now is committed
        settings = runtime.settings
        paths = [
            settings.adapters_dir / project,
            Path(settings.data_dir).resolve() / "projects" / project,
            *(Path(a.path) for a in adapters),
            *_exports(runtime, project),
        ]
        await asyncio.to_thread(lock.acquire)
        try:
            erased = await asyncio.to_thread(
                runtime.erasures.delete_project, project, utcnow(), paths, principal.key_id
            )
        except BaseException:
            lock.release()
            raise
    except BaseException:
        _restore(runtime, project)
        raise
    try:
        runtime.project_settings.forget(project)
        runtime.metrics.forget_project(project)
        await asyncio.to_thread(_carry_out, runtime, erased)
    finally:
        lock.release()
    return _out("project", project, erased, stopped)


def apply_retention(runtime: Runtime, now: datetime) -> list[ErasureOut]:
    """Job body (blocking; the scheduler runs it in a thread): for every project with a retention
    period, delete its data received before `now - retention_days` and its snapshots and eval
    reports older than that. Returns what each project lost (projects that lost nothing omitted)."""
    done = []
    for project in sorted(runtime.projects):
        days = runtime.project_settings.effective(project).retention_days
        if days is None:
            continue
        with runtime.data_lock(project):
            erased = runtime.erasures.expire(project, now - timedelta(days=days), now)
            _carry_out(runtime, erased)
        if erased.anything:
            done.append(_out("retention", project, erased, []))
    return done


def finish_interrupted(runtime: Runtime) -> int:
    """At start-up, before serving: delete the files and rows of deletions that were recorded but
    cut short by `kill -9`, and exports a crash left. Returns how many deletions it finished."""
    shutil.rmtree(Path(runtime.settings.data_dir) / "exports", ignore_errors=True)
    _delete_files(runtime, runtime.erasures.pending_deletions())
    jobs = runtime.erasures.unfinished_jobs()
    for job in jobs:
        runtime.erasures.finish(job)
    return len(jobs)


async def _erase(
    runtime: Runtime, kind: Any, project: str, why: str, record: Callable[[datetime], Erased]
) -> ErasureOut:
    # The logs of answers the gateway already gave may still linger before their commit: commit
    # them first, so that the erasure reaches them.
    await runtime.gateway.drain()
    lock = runtime.data_lock(project)
    await asyncio.to_thread(lock.acquire)
    try:
        erased = await asyncio.to_thread(record, utcnow())
        stopped = []
        if runtime.pipeline is not None:
            for run_id in erased.snapshot_runs:
                if await runtime.pipeline.abort(run_id, f"stopped: {why} (its data may not be trained on)"):
                    stopped.append(run_id)
        # Exports are temporary files, deleted once sent; one being written now may hold the data.
        erased.files += map(str, _exports(runtime, project))
        await asyncio.to_thread(_carry_out, runtime, erased)
    finally:
        lock.release()
    return _out(kind, project, erased, stopped)


def _carry_out(runtime: Runtime, erased: Erased) -> None:
    """Delete a recorded deletion's files, then its rows, then have the writer checkpoint: until
    then the WAL still holds the deleted rows' text as it was inserted (a newcomer found an erased
    person's words in `ratchet.duckdb.wal`; a checkpoint otherwise waits for 64 MiB of WAL)."""
    _delete_files(runtime, erased.files)
    if erased.job is not None:
        runtime.erasures.finish(erased.job)
        runtime.writer.request_checkpoint()


def _exports(runtime: Runtime, project: str) -> list[Path]:
    return sorted((Path(runtime.settings.data_dir) / "exports").glob(f"{project}-*"))


def _delete_files(runtime: Runtime, paths: list[str]) -> None:
    """Delete files and directories, then clear their pending entries. Only paths under the data
    directory are ever deleted."""
    root = Path(runtime.settings.data_dir).resolve()
    done = []
    for raw in paths:
        path = Path(raw)
        if not path.resolve().is_relative_to(root):
            log.error("not deleting %s: it is not under the data directory %s", path, root)
            done.append(raw)  # never will be: do not ask again at every start
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        done.append(raw)
    runtime.erasures.clear_pending(done)


def _restore(runtime: Runtime, project: str) -> None:
    """The project's deletion failed before its commit: take its name, keys and routing back
    (the reconcile job loads its versions again)."""
    runtime.projects.add(project)
    for key in runtime.queries.list_keys():
        if key.project == project:
            runtime.keys.add(key)
    stored = runtime.serving.rollouts().get(project)
    if stored is not None:
        runtime.rollouts.routing[project] = stored


def _out(kind: Any, project: str, erased: Erased, stopped: list[str]) -> ErasureOut:
    return ErasureOut(
        kind=kind, project=project, logs_deleted=erased.logs, feedback_deleted=erased.feedback,
        snapshots_deleted=erased.snapshot_runs, eval_reports_deleted=erased.eval_reports,
        adapters_trained_on_it=erased.adapters, adapters_possibly_trained_on_it=erased.possible_adapters,
        runs_stopped=stopped,
    )  # fmt: skip
