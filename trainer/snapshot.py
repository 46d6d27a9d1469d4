"""Reading a feedback snapshot the service exported, after checking it is whole and ours.

A snapshot directory holds `train.parquet`, `holdout.parquet` and `manifest.json`:
`{"schema_version": 1, "files": {"train.parquet": {"rows": N, "sha256": "..."}, ...}, "sha256": ...}`,
where the top-level `sha256` (optional here) is the sha256 of the files' sha256s concatenated in
manifest order (service/store/snapshot.py writes it so).
One Parquet row per (log, feedback) with the columns in `COLUMNS`. Scrubbing, dedup and per-user
caps were done by the service; the trainer only verifies and reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.errors import SnapshotError

SNAPSHOT_SCHEMA_VERSION = 1
FILES = ("train.parquet", "holdout.parquet")


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


# column -> (type check, may hold nulls). A column of type null (all nulls) passes where nullable.
COLUMNS = {
    "log_id": (_is_str, False),
    "prompt_messages": (_is_str, False),
    "completion": (_is_str, False),
    "rating": (pa.types.is_integer, True),
    "score": (pa.types.is_floating, True),
    "correction": (_is_str, True),
    "end_user": (_is_str, True),
    "created_at": (pa.types.is_timestamp, False),
    "adapter": (_is_str, True),
}


class Message(msgspec.Struct, forbid_unknown_fields=False):
    """One OpenAI chat message as the trainer needs it (extra keys such as `name` are dropped)."""

    role: str
    content: str


class FeedbackRow(msgspec.Struct, frozen=True, kw_only=True):
    """One (log, feedback) row. `prompt` is the conversation before the answer."""

    log_id: str
    prompt: list[dict[str, str]]
    completion: str
    rating: int | None
    score: float | None
    correction: str | None
    end_user: str | None
    created_at: datetime
    adapter: str | None


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot. `sha256` identifies it: the hash of its files' hashes (the manifest's `sha256`)."""

    path: Path
    sha256: str
    manifest: dict
    train: list[FeedbackRow]
    holdout: list[FeedbackRow]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_snapshot(directory: str | Path) -> Snapshot:
    """Verify the manifest (schema version, each file's sha256 and row count, columns) and read both splits.

    Raises SnapshotError naming the file and the problem; nothing is trained on a snapshot that fails.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SnapshotError(f"snapshot directory {directory} does not exist")
    manifest_path = directory / "manifest.json"
    try:
        manifest_bytes = manifest_path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or exc
        raise SnapshotError(f"snapshot {directory} has no readable manifest.json ({reason})") from exc
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        raise SnapshotError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SNAPSHOT_SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise SnapshotError(
            f"{manifest_path} has schema_version {found!r}; this trainer reads {SNAPSHOT_SCHEMA_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise SnapshotError(f'{manifest_path} has no "files" object')

    splits = {}
    for name in FILES:
        entry = files.get(name)
        if not isinstance(entry, dict) or not {"rows", "sha256"} <= entry.keys():
            raise SnapshotError(f'{manifest_path} lists no rows and sha256 for "{name}"')
        path = directory / name
        if not path.is_file():
            raise SnapshotError(f"snapshot file {path} is missing")
        actual = file_sha256(path)
        if actual != entry["sha256"]:
            raise SnapshotError(
                f"{path} does not match the manifest (sha256 {actual[:12]}…, "
                f"expected {str(entry['sha256'])[:12]}…): "
                "the snapshot is corrupt or was changed after export; export it again"
            )
        table = _read_table(path)
        if table.num_rows != entry["rows"]:
            raise SnapshotError(f"{path} has {table.num_rows} rows; the manifest says {entry['rows']}")
        splits[name] = _rows(table, path)

    # The snapshot's identity, as the service computes it: sha256 over its files' sha256s, in order.
    digest = hashlib.sha256("".join(str(entry["sha256"]) for entry in files.values()).encode()).hexdigest()
    if manifest.get("sha256", digest) != digest:
        raise SnapshotError(
            f"{manifest_path}: sha256 {manifest['sha256']} does not match its files ({digest})"
        )
    return Snapshot(
        path=directory,
        sha256=digest,
        manifest=manifest,
        train=splits["train.parquet"],
        holdout=splits["holdout.parquet"],
    )


def _read_table(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise SnapshotError(f"{path} is not a readable Parquet file: {exc}") from exc
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise SnapshotError(f"{path} lacks column(s) {', '.join(missing)}")
    for column, (type_ok, nullable) in COLUMNS.items():
        data_type = table.schema.field(column).type
        if not (type_ok(data_type) or (nullable and pa.types.is_null(data_type))):
            raise SnapshotError(f"{path} column {column} has type {data_type}")
        if not nullable and table.column(column).null_count:
            raise SnapshotError(f"{path} column {column} has nulls; it must not")
    return table


def _rows(table: pa.Table, path: Path) -> list[FeedbackRow]:
    rows = []
    for record in table.select(list(COLUMNS)).to_pylist():
        try:
            messages = msgspec.json.decode(record["prompt_messages"], type=list[Message])
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise SnapshotError(
                f"{path} log {record['log_id']}: prompt_messages is not a JSON list of chat messages ({exc})"
            ) from exc
        rating = record["rating"]
        if rating not in (None, 1, -1):
            raise SnapshotError(f"{path} log {record['log_id']}: rating {rating} is not +1, -1 or null")
        rows.append(
            FeedbackRow(
                log_id=record["log_id"],
                prompt=[{"role": m.role, "content": m.content} for m in messages],
                completion=record["completion"],
                rating=rating,
                score=record["score"],
                correction=record["correction"],
                end_user=record["end_user"],
                created_at=record["created_at"],
                adapter=record["adapter"],
            )
        )
    return rows
