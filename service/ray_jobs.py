"""The `ray` trainer launcher: `python -m trainer ...` as a Ray job on an existing cluster, through
Ray's own Jobs client (`ray.job_submission.JobSubmissionClient`, the dashboard's Jobs API).

The run sees what the `local` launcher gives it: the job's log (stdout and stderr together, as
Ray keeps them) is tailed, appended to the run's log file, and each progress line in it is handed
to `on_event`; the job's end status is the exit status (SUCCEEDED with a `done` line: done;
FAILED: the trainer's own error line, or Ray's message; STOPPED: stopped by someone). A run
cancelled or past its time limit stops the job (Ray sends SIGTERM, so the trainer cleans up as it
does locally, then SIGKILL). A cluster that cannot be reached, or that refuses the job, raises
`TrainerFailed` saying so, before anything runs.

Ray is an optional extra (`pip install 'ratchet[ray]'`), imported only when this launcher is used.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from formats.run import DoneEvent, TrainerEvent
from service.config import LauncherSettings
from service.trainer_process import TrainerFailed, TrainerTimedOut, follow_events

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_SECONDS = 0.5


async def run_ray_job(
    launcher: LauncherSettings,
    job_name: str,
    *args: str,
    log_path: Path,
    timeout: float | None = None,
    on_event: Callable[[TrainerEvent], Awaitable[None]] | None = None,
    grace: float = 30.0,
) -> DoneEvent:
    """Submit `<ray_python> -m trainer *args` as the job `job_name` (its submission id, unique
    on the cluster), follow it to its end and return its `done` event. Raises `TrainerFailed`
    (unreachable cluster, refused job, failed or stopped job), `TrainerTimedOut`."""
    client = await _connect(launcher)
    job = await _submit(client, launcher, job_name, args)
    try:
        async with asyncio.timeout(timeout):
            with log_path.open("ab") as log:
                done, error = await follow_events(_logged(_lines(client.tail_job_logs(job)), log), on_event)
            status, message = await _final_status(client, job)
    except TimeoutError:
        await _stop(client, job, grace)
        raise TrainerTimedOut(
            f"the trainer ran past {timeout:.0f}s and its Ray job {job} was stopped"
        ) from None
    except BaseException:  # cancelled (a run cancelled or aborted), or on_event failed
        await asyncio.shield(_stop(client, job, grace))
        raise
    if status == "STOPPED":
        raise TrainerFailed(f"the trainer's Ray job {job} was stopped{f': {error}' if error else ''}")
    if status != "SUCCEEDED" or done is None:
        raise TrainerFailed(f"the trainer's Ray job {job} ended {status}: {error or message}")
    return done


async def _connect(launcher: LauncherSettings) -> Any:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise TrainerFailed(f"the ray launcher needs Ray: pip install 'ratchet[ray]' ({exc})") from exc
    try:
        return await asyncio.to_thread(JobSubmissionClient, launcher.ray_address)
    except Exception as exc:  # ConnectionError, or whatever the dashboard answered instead
        raise TrainerFailed(
            f"the ray launcher cannot reach the Ray cluster at {launcher.ray_address}: {exc}"
        ) from exc


async def _submit(client: Any, launcher: LauncherSettings, job_name: str, args: tuple[str, ...]) -> str:
    entrypoint = shlex.join([launcher.ray_python, "-m", "trainer", *args])
    try:
        return str(
            await asyncio.to_thread(
                client.submit_job,
                entrypoint=entrypoint,
                submission_id=job_name,
                runtime_env=launcher.ray_runtime_env or None,
                entrypoint_num_cpus=launcher.ray_num_cpus,
                entrypoint_num_gpus=launcher.ray_num_gpus,
                entrypoint_resources=launcher.ray_resources or None,
            )
        )
    except Exception as exc:  # the cluster went away, or refused the job (a bad runtime_env)
        raise TrainerFailed(
            f"the Ray cluster at {launcher.ray_address} did not take the trainer's job: {exc}"
        ) from exc


async def _logged(lines: AsyncIterator[bytes], log: IO[bytes]) -> AsyncIterator[bytes]:
    """`lines`, each appended to `log` (flushed) on the way."""
    async for line in lines:
        log.write(line)
        log.flush()
        yield line


async def _lines(chunks: Any) -> Any:
    """Whole lines (bytes, newline kept) from the log's chunks, which may split a line."""
    pending = b""
    async for chunk in chunks:
        pending += chunk.encode() if isinstance(chunk, str) else chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending + b"\n"


async def _final_status(client: Any, job: str) -> tuple[str, str]:
    """The job's end status and Ray's message (the log ends a moment before the status is set)."""
    while True:
        info = await asyncio.to_thread(client.get_job_info, job)
        status = str(getattr(info.status, "value", info.status))
        if status in TERMINAL:
            return status, info.message or ""
        await asyncio.sleep(POLL_SECONDS)


async def _stop(client: Any, job: str, grace: float) -> None:
    """Stop the job (SIGTERM, then Ray's SIGKILL) and wait up to `grace` for it to end."""
    try:
        await asyncio.to_thread(client.stop_job, job)
        async with asyncio.timeout(grace):
            await _final_status(client, job)
    except Exception:  # the cluster is gone: nothing left to stop from here
        return
