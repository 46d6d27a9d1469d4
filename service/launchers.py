"""Trainer launchers: where a run's `python -m trainer run` runs (`training.launcher`, global or
per project; each set up in the `launcher` settings).

- `local`: a subprocess of the service (`service.trainer_process`).
- `accelerate`: `accelerate launch [--config_file F] [args] -m trainer run ...` on this host: DDP,
  FSDP or DeepSpeed over its GPUs (on CPU, `--multi_gpu --num_processes 2` runs two processes
  over gloo; `--cpu` runs one), rank 0 reporting progress and writing the adapter. Same
  subprocess handling as `local`; its signals reach every worker.
- `ray`: a Ray job on an existing cluster (`service.ray_jobs`).

Whichever runs it, the run gets the same things: the trainer's progress lines as they come, its
`done` event or a `TrainerFailed` with the reason (the launcher unreachable included), and
cancellation by stopping it. With `launcher.artifacts_url` set, the run's spec, snapshot and parent
adapter are first copied to `<artifacts_url>/<project>/<run_id>/` and the trainer reads them from
there (`trainer/artifacts.py`); its adapter and reward model are copied back into the service's
directories (each appearing at once, by a rename) and the run's place there is removed, whatever
the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import fsspec
import msgspec

from formats.run import (
    ARTIFACT_ADAPTER,
    ARTIFACT_PARENT,
    ARTIFACT_REWARD_MODEL,
    ARTIFACT_SNAPSHOT,
    DoneEvent,
    RunSpec,
    TrainerEvent,
)
from service.config import LauncherSettings, Settings
from service.durable_files import fsync_dir, fsync_tree
from service.ray_jobs import run_ray_job
from service.trainer_process import TrainerFailed, run_trainer


async def launch_training(
    settings: Settings,
    spec: RunSpec,
    run_dir: Path,
    *,
    project: str,
    on_event: Callable[[TrainerEvent], Awaitable[None]] | None = None,
) -> DoneEvent:
    """Train `spec` with the project's launcher (`settings` are the project's effective ones) and
    return the trainer's `done` event, its `adapter_dir` being `spec.output_dir`. Writes
    `run_dir/spec.json` and appends the trainer's log to `run_dir/trainer.log`. Raises
    `TrainerFailed` (`TrainerTimedOut` past `training.timeout_seconds`)."""
    spec_path = run_dir / "spec.json"
    spec_path.write_bytes(msgspec.json.encode(spec))
    launcher = settings.launcher
    place = None
    args: tuple[str, ...] = ("run", str(spec_path))
    if launcher.artifacts_url:
        place = ArtifactPlace(launcher.artifacts_url, f"{project}/{spec.run_id}")
        args = ("run", "--artifacts", place.url)
    try:
        if place is not None:
            await asyncio.to_thread(place.upload, spec)
        done = await _launch(
            settings.training.launcher, launcher, args, job_name=f"ratchet-{project}-{spec.run_id}",
            log_path=run_dir / "trainer.log", timeout=settings.training.timeout_seconds, on_event=on_event,
        )  # fmt: skip
        if place is not None:
            await asyncio.to_thread(place.download, spec)
            done = msgspec.structs.replace(done, adapter_dir=spec.output_dir)
        return done
    finally:
        if place is not None:
            await asyncio.shield(asyncio.to_thread(place.remove))


async def _launch(
    kind: str,
    launcher: LauncherSettings,
    args: tuple[str, ...],
    *,
    job_name: str,
    log_path: Path,
    timeout: float,
    on_event: Callable[[TrainerEvent], Awaitable[None]] | None,
) -> DoneEvent:
    if kind == "ray":
        return await run_ray_job(
            launcher, job_name, *args, log_path=log_path, timeout=timeout, on_event=on_event
        )
    module: tuple[str, ...] = (sys.executable, "-m")
    if kind == "accelerate":
        module = accelerate_command(launcher)
    return await run_trainer(*args, log_path=log_path, timeout=timeout, on_event=on_event, module=module)


def accelerate_command(launcher: LauncherSettings) -> tuple[str, ...]:
    """`accelerate launch [--config_file F] [accelerate_args] -m` (this interpreter's accelerate)."""
    config = ("--config_file", launcher.accelerate_config) if launcher.accelerate_config else ()
    return (sys.executable, "-m", "accelerate.commands.launch", *config, *launcher.accelerate_args, "-m")


class ArtifactPlace:
    """One run's place at the shared artifact location: `<base_url>/<name>`. Blocking methods;
    `TrainerFailed` naming the location when it cannot be written or read."""

    def __init__(self, base_url: str, name: str) -> None:
        self.url = f"{base_url.rstrip('/')}/{name}"
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ValueError, ImportError) as exc:  # an unknown protocol, or its library missing
            raise TrainerFailed(f"the artifact location {base_url} cannot be used: {exc}") from exc

    def upload(self, spec: RunSpec) -> None:
        """The spec (its paths relative to the place) and its inputs: snapshot, parent adapter."""
        try:
            if self.fs.exists(self.root):  # left by an attempt that crashed mid-copy
                self.fs.rm(self.root, recursive=True)
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.put(f"{spec.snapshot_dir}/", f"{self.root}/{ARTIFACT_SNAPSHOT}", recursive=True)
            if spec.parent_adapter:
                self.fs.put(f"{spec.parent_adapter}/", f"{self.root}/{ARTIFACT_PARENT}", recursive=True)
            reward = spec.reward_model
            staged = msgspec.structs.replace(
                spec, snapshot_dir=ARTIFACT_SNAPSHOT, output_dir=ARTIFACT_ADAPTER,
                parent_adapter=ARTIFACT_PARENT if spec.parent_adapter else None,
                reward_model=None if reward is None else msgspec.structs.replace(reward, output_dir=ARTIFACT_REWARD_MODEL),
            )  # fmt: skip
            self.fs.pipe_file(f"{self.root}/spec.json", msgspec.json.encode(staged))
        except OSError as exc:
            raise TrainerFailed(
                f"cannot put the run's inputs at the artifact location {self.url}: {exc}"
            ) from exc

    def download(self, spec: RunSpec) -> None:
        """The trained adapter to `spec.output_dir`, the reward model (if one was trained) to its
        directory: each copied beside its place, made durable, then renamed into it (as the
        trainer writes them when it runs here)."""
        outputs = [(ARTIFACT_ADAPTER, Path(spec.output_dir))]
        if spec.reward_model is not None and self.fs.isdir(f"{self.root}/{ARTIFACT_REWARD_MODEL}"):
            outputs.append((ARTIFACT_REWARD_MODEL, Path(spec.reward_model.output_dir)))
        for name, target in outputs:
            partial = target.with_name(f".{target.name}.download")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
            try:
                self.fs.get(f"{self.root}/{name}/", str(partial), recursive=True)
            except OSError as exc:
                shutil.rmtree(partial, ignore_errors=True)
                raise TrainerFailed(f"cannot fetch the trained {name} from {self.url}: {exc}") from exc
            fsync_tree(partial)
            os.replace(partial, target)
            fsync_dir(target.parent)

    def remove(self) -> None:
        """Delete the run's place (best effort: a location gone away keeps its copy)."""
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.rm(self.root, recursive=True)
