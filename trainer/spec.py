"""SPEC.json: everything one training run is told. Its Structs are defined once, in `formats.run`
(the service writes them, the trainer reads them); this module reads the file for the trainer,
turning a bad or newer spec into `SpecError` (exit 2, `{"event": "error", "kind": "SpecError"}`).
"""

from __future__ import annotations

from pathlib import Path

from formats.run import (
    SPEC_SCHEMA_VERSION,
    LoraSpec,
    Method,
    OptimSpec,
    RewardModelSpec,
    RunSpec,
    RunSpecError,
)
from formats.versioned import SchemaVersionError
from trainer.errors import SpecError

__all__ = [
    "SPEC_SCHEMA_VERSION",
    "LoraSpec",
    "Method",
    "OptimSpec",
    "RewardModelSpec",
    "RunSpec",
    "load_spec",
]


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate SPEC.json (relative paths made absolute from the working directory).
    Raises SpecError naming the file and the offending field or the versions."""
    try:
        return RunSpec.load(path)
    except (RunSpecError, SchemaVersionError) as exc:
        raise SpecError(str(exc)) from exc
