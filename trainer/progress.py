"""Progress for the service: one JSON object per line on stdout, nothing else there.

The events the service reads are the Structs of `formats.run` (`send`). Events, in order: `start` (once the inputs are checked), `step` (every `logging_steps` optimiser
steps), then `done` or `error`. Under `accelerate launch` only the main process writes.

    {"event": "start", "run_id": "...", "method": "kto", "why": "...", "examples": 480, "total_steps": 100}
    {"event": "step", "step": 10, "total_steps": 100, "loss": 0.41, "epoch": 0.2, "learning_rate": 0.00045, "logs": {...}}
    {"event": "done", "adapter_dir": "/.../support@v4", "metrics": {...}, "wall_time_s": 31.2}
    {"event": "error", "message": "snapshot file .../train.parquet is missing", "kind": "SnapshotError"}

Human-readable logs go to stderr; libraries that print to stdout are redirected there while
training, so stdout stays machine-readable.
"""

from __future__ import annotations

import json
import math
import sys
from typing import IO, Any

import msgspec

from formats.run import TrainerEvent


class Progress:
    """Writes progress events to `stream` (stdout by default), flushing after each line."""

    def __init__(self, stream: IO[str] | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled

    def send(self, event: TrainerEvent) -> None:
        """Write one of the events the service reads (`formats.run`); a NaN is written as null."""
        if not self.enabled:
            return
        self.stream.write(msgspec.json.encode(event, enc_hook=str).decode() + "\n")
        self.stream.flush()

    def emit(self, event: str, **fields: Any) -> None:
        """Write an event the service does not read (the reward model's, the tools' `done`)."""
        if not self.enabled:
            return
        line = json.dumps(_jsonable({"event": event, **fields}), default=str, allow_nan=False)
        self.stream.write(line + "\n")
        self.stream.flush()


def _jsonable(value: Any) -> Any:
    """`value` with every non-finite float as null: a NaN loss must not break the JSON line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
