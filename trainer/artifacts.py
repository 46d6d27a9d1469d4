"""`python -m trainer run --artifacts URL`: a run whose inputs and outputs live at a shared
artifact location (an fsspec URL), for a trainer on another machine than the service.

The service put there (`service.launchers`):

    URL/spec.json     the run spec, its paths relative to URL: snapshot_dir "snapshot",
                      output_dir "adapter", parent_adapter "parent", reward_model.output_dir
                      "reward_model" (base_model stays a path on this machine)
    URL/snapshot/     the snapshot
    URL/parent/       the parent adapter, when the run continues one

This process copies them to a local temporary directory, trains there as `trainer.run` does,
then copies the adapter (and the reward model) back to URL/adapter (URL/reward_model). The `done`
line is written only once they are all there, with `adapter_dir` = URL/adapter: the service
reads the outputs after it, never half-copied ones. Under `accelerate launch` each process
copies the inputs for itself and only the main one copies outputs back. The temporary directory
goes with the process, on success, error or SIGTERM alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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
from trainer.errors import SpecError
from trainer.progress import Progress

INPUTS = (ARTIFACT_SNAPSHOT, ARTIFACT_PARENT)


class HeldDone(Progress):
    """Passes every event on but `done`, which it keeps until the outputs are copied."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(progress.stream, enabled=progress.enabled)
        self.done: DoneEvent | None = None

    def send(self, event: TrainerEvent) -> None:
        if isinstance(event, DoneEvent):
            self.done = event
        else:
            super().send(event)


def run_from(url: str, progress: Progress) -> None:
    """Train the run at `url` (see the module docstring). Raises SpecError for a missing or bad
    spec.json there; the trainer's own errors as `trainer.run` raises them."""
    import fsspec

    from trainer.run import is_main_process, run

    url = url.rstrip("/")
    fs, root = fsspec.core.url_to_fs(url)
    with tempfile.TemporaryDirectory(prefix="ratchet-run-") as tmp:
        local = Path(tmp)
        try:
            raw = fs.cat_file(f"{root}/spec.json")
        except (FileNotFoundError, OSError) as exc:
            raise SpecError(f"cannot read run spec {url}/spec.json: {exc}") from exc
        try:
            spec = RunSpec.decode(raw, f"{url}/spec.json").resolved(local)
        except ValueError as exc:  # RunSpecError, SchemaVersionError
            raise SpecError(str(exc)) from exc
        for name in INPUTS:
            if fs.isdir(f"{root}/{name}"):
                fs.get(f"{root}/{name}/", str(local / name), recursive=True)
        held = HeldDone(progress)
        run(spec, held)
        if not is_main_process() or held.done is None:
            return
        fs.put(str(local / ARTIFACT_ADAPTER) + "/", f"{root}/{ARTIFACT_ADAPTER}", recursive=True)
        if (local / ARTIFACT_REWARD_MODEL).is_dir():
            fs.put(
                str(local / ARTIFACT_REWARD_MODEL) + "/", f"{root}/{ARTIFACT_REWARD_MODEL}", recursive=True
            )
        progress.send(msgspec.structs.replace(held.done, adapter_dir=f"{url}/{ARTIFACT_ADAPTER}"))
