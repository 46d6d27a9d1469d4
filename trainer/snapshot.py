"""Reading a feedback snapshot the service exported, after checking it is whole and ours.

The snapshot's contract is `formats.snapshot` (schema_version 2): `manifest.json` with each
file's rows and sha256, and Parquet rows of `SnapshotRow` in TRL's column names. The manifest is
checked whole (version, sha256s, row counts) and a bad one stops the run (`SnapshotError`): nothing
is trained on a snapshot that is not what the service wrote. A single row the trainer cannot
decode does not: it is left out and counted (`Snapshot.unreadable`), and the run goes on.

Only `train.parquet` is read, unless the run validates on the holdout (a fine-tuning job's
validation file, `RunSpec.validation`); otherwise the holdout belongs to evals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from formats.snapshot import SnapshotFormatError, SnapshotManifest, SnapshotRow, iter_rows, read_manifest
from trainer.errors import SnapshotError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot's training rows. `sha256` identifies it (the manifest's `sha256`)."""

    path: Path
    sha256: str
    manifest: SnapshotManifest
    train: list[SnapshotRow]
    unreadable: int = 0
    """Train rows that could not be decoded into a `SnapshotRow` (left out, logged)."""
    holdout: list[SnapshotRow] | None = None
    """The holdout's rows, when asked for (`read_snapshot(..., holdout=True)`)."""

    @property
    def holdout_rows(self) -> int:
        return self.manifest.files["holdout.parquet"].rows


def read_snapshot(directory: str | Path, *, batch_rows: int = 4096, holdout: bool = False) -> Snapshot:
    """Verify the manifest (schema version, each file's sha256 and row count) and read the train rows.

    Raises SnapshotError naming the file and the problem when the snapshot as a whole is wrong
    (missing, corrupt, another schema version, a required column missing). Rows that do not decode
    are counted in `unreadable`, never raised.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SnapshotError(f"snapshot directory {directory} does not exist")
    try:
        manifest = read_manifest(directory)
    except SnapshotFormatError as exc:
        raise SnapshotError(str(exc)) from exc
    path = directory / "train.parquet"
    unreadable = 0

    def left_out(log_id: str | None, exc: Exception) -> None:
        nonlocal unreadable
        unreadable += 1
        if unreadable <= 5:
            log.warning("%s: log %s left out, it does not decode: %s", path, log_id, exc)

    try:
        rows = list(iter_rows(path, batch_rows, on_error=left_out))
        held = None
        if holdout:  # a row that does not decode only leaves validation smaller: logged, not counted
            held = list(iter_rows(directory / "holdout.parquet", batch_rows, on_error=lambda i, e: log.warning(
                "holdout.parquet: log %s left out of validation, it does not decode: %s", i, e)))  # fmt: skip
    except SnapshotFormatError as exc:
        raise SnapshotError(str(exc)) from exc
    return Snapshot(
        path=directory, sha256=manifest.sha256, manifest=manifest, train=rows, unreadable=unreadable,
        holdout=held,
    )  # fmt: skip
