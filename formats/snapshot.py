"""The training snapshot: the files the service cuts and the trainer and evals read.

A snapshot directory holds `train.parquet`, `holdout.parquet` and `manifest.json`. Each Parquet
row is one (log, feedback) pair, `SnapshotRow`, in TRL's column names: `prompt` (the chat messages
before the answer, or a completions prompt's text), `completion` (the answer the feedback is
about), `tools`. Structured columns are JSON text, decoded with the Structs of `formats.log` and
`formats.chat`, so a reader never parses OpenAI JSON by hand.

The manifest lists each file's rows and sha256 and what cleaning dropped or quarantined, and
carries `schema_version`: a reader refuses any other version (`SnapshotFormatError`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from msgspec import Struct

from formats.chat import Tool
from formats.log import AnswerProblem, Message

SNAPSHOT_SCHEMA_VERSION = 2
FILES = ("train.parquet", "holdout.parquet")
MANIFEST = "manifest.json"


class SnapshotRow(Struct, kw_only=True, omit_defaults=True):
    """One (log, feedback) pair as training and evaluation read it.

    `completion` is the answer of the choice the feedback names (`choice`, default 0); `problem`
    says why it may never be a positive target (cut by length, interrupted, upstream error,
    empty). `rating` is +1/-1 or None; `score` in [0, 1]; `correction` the answer the user wanted.
    """

    log_id: str
    prompt: list[Message] | str
    completion: Message
    created_at: datetime
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    problem: AnswerProblem | None = None
    choice: int = 0
    rating: int | None = None
    score: float | None = None
    correction: str | None = None
    end_user: str | None = None
    adapter: str | None = None
    weight: float = 1.0
    """How much this row's signal counts: 1.0 for explicit feedback (a rating, score or
    correction); for a rating or correction that only implicit feedback gave, its configured weight
    (a regenerate is a weak thumbs-down, a copy a weak thumbs-up, an edit a correction)."""
    signals: list[str] | None = None
    """The implicit feedback on this answer: `regenerated`, `edited`, `copied`, `event:<name>`."""

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


_JSON_COLUMNS = ("prompt", "completion", "tools", "tool_choice", "response_format", "signals")
ARROW_SCHEMA = pa.schema(
    [
        ("log_id", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("created_at", pa.timestamp("us")),
        ("tools", pa.string()),
        ("tool_choice", pa.string()),
        ("response_format", pa.string()),
        ("problem", pa.string()),
        ("choice", pa.int32()),
        ("rating", pa.int8()),
        ("score", pa.float64()),
        ("correction", pa.string()),
        ("end_user", pa.string()),
        ("adapter", pa.string()),
        ("weight", pa.float64()),
        ("signals", pa.string()),
    ]
)
"""The Parquet schema of both files: `SnapshotRow`'s fields, structured ones as JSON text."""


class SnapshotFile(Struct):
    rows: int
    sha256: str


class SnapshotStats(Struct, kw_only=True):
    """What cleaning kept, dropped and quarantined, and why (counts of (log, feedback) rows)."""

    joined_rows: int
    quarantined: dict[str, int] = {}
    """Rows that cannot become a training example, by reason (e.g. `media_prompt`, `shape_error`)."""
    pii_scrubbed_rows: int = 0
    dropped_duplicates: int = 0
    user_cap: int = 0
    dropped_user_cap: int = 0
    """Rows over `user_cap` in the snapshot."""
    holdout_user_cap: int = 0
    """Most holdout rows one end user may supply (the holdout is capped on its own size too; a
    user's rows over it stay training candidates)."""
    split: Literal["time", "prompt_groups"] = "time"
    """`time`: the newest rows are the holdout; `prompt_groups`: whole prompts are held out (when
    repeating prompts would otherwise drop most training rows)."""
    dropped_prompt_in_holdout: int = 0
    dropped_history: int = 0
    """Older rows beyond `max_train_examples` that the replay sample did not take."""
    largest_user_share: float = 0.0
    """The largest share of the snapshot's rows one end user supplied (rows without an end user
    count as one user), after the cap: at most `max_user_share` unless `min_user_cap` allows more."""
    train_rows: int = 0
    holdout_rows: int = 0


class SnapshotManifest(Struct, kw_only=True):
    """`manifest.json` of a snapshot directory."""

    schema_version: int
    project: str
    created_at: datetime
    files: dict[str, SnapshotFile]
    sha256: str
    """sha256 over the files' sha256s concatenated in `FILES` order: the snapshot's identity."""
    stats: SnapshotStats
    since: datetime | None = None
    until: datetime | None = None


class SnapshotFormatError(ValueError):
    """A snapshot directory is missing, corrupt, or of another schema version."""


_encode = msgspec.json.encode
_decode_prompt = msgspec.json.Decoder(list[Message] | str).decode
_decode_message = msgspec.json.Decoder(Message).decode
_decode_tools = msgspec.json.Decoder(list[Tool] | None).decode
_decode_any = msgspec.json.Decoder().decode


def rows_to_table(rows: Iterable[SnapshotRow]) -> pa.Table:
    """Rows as an Arrow table of `ARROW_SCHEMA` (structured fields encoded as JSON text)."""
    columns: dict[str, list[Any]] = {name: [] for name in ARROW_SCHEMA.names}
    for row in rows:
        for name in ARROW_SCHEMA.names:
            value = getattr(row, name)
            if name in _JSON_COLUMNS and value is not None:
                value = _encode(value).decode()
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=ARROW_SCHEMA)


def row_from_record(record: dict[str, Any]) -> SnapshotRow:
    """One Parquet record back as a `SnapshotRow`; `msgspec` errors name the bad column's content."""

    def json_or_none(name: str) -> Any:
        raw = record.get(name)
        return None if raw is None else _decode_any(raw)

    return SnapshotRow(
        log_id=record["log_id"],
        prompt=_decode_prompt(record["prompt"]),
        completion=_decode_message(record["completion"]),
        created_at=record["created_at"],
        tools=_decode_tools(record["tools"]) if record.get("tools") is not None else None,
        tool_choice=json_or_none("tool_choice"),
        response_format=json_or_none("response_format"),
        problem=record.get("problem"),
        choice=record.get("choice") or 0,
        rating=record.get("rating"),
        score=record.get("score"),
        correction=record.get("correction"),
        end_user=record.get("end_user"),
        adapter=record.get("adapter"),
        weight=1.0 if record.get("weight") is None else record["weight"],
        signals=json_or_none("signals"),
    )


def iter_rows(
    path: Path,
    batch_rows: int = 4096,
    *,
    on_error: Callable[[str | None, Exception], None] | None = None,
) -> Iterator[SnapshotRow]:
    """Stream a snapshot Parquet file's rows (bounded memory). Raises `SnapshotFormatError` for a
    file that is unreadable or lacks a column. A row the Structs reject raises too, unless
    `on_error` is given: then it is called with the row's log id and the error, and reading goes
    on (one bad row must not cost the others)."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise SnapshotFormatError(f"{path} is not a readable Parquet file: {exc}") from exc
    missing = [
        c for c in ("log_id", "prompt", "completion", "created_at") if c not in parquet.schema_arrow.names
    ]
    if missing:
        raise SnapshotFormatError(f"{path} lacks column(s) {', '.join(missing)}")
    for batch in parquet.iter_batches(batch_size=batch_rows):
        for record in batch.to_pylist():
            try:
                yield row_from_record(record)
            except (msgspec.MsgspecError, KeyError, TypeError, ValueError) as exc:
                if on_error is None:
                    raise SnapshotFormatError(f"{path} log {record.get('log_id')}: {exc}") from exc
                on_error(record.get("log_id"), exc)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot_sha256(files: dict[str, SnapshotFile]) -> str:
    """The snapshot's identity: sha256 over its files' sha256s, in `FILES` order."""
    return hashlib.sha256("".join(files[name].sha256 for name in FILES).encode()).hexdigest()


def read_manifest(directory: Path, *, verify: bool = True) -> SnapshotManifest:
    """The manifest of a snapshot directory, after checking its schema version and (with `verify`)
    every file's sha256 and the snapshot's identity. Raises `SnapshotFormatError` naming the file
    and the problem."""
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SnapshotFormatError(
            f"snapshot {directory} has no readable {MANIFEST} ({exc.strerror or exc})"
        ) from exc
    try:
        version = _decode_any(raw).get("schema_version")
    except (msgspec.DecodeError, AttributeError) as exc:
        raise SnapshotFormatError(f"{path} is not a JSON object: {exc}") from exc
    if version != SNAPSHOT_SCHEMA_VERSION:
        raise SnapshotFormatError(
            f"{path} has schema_version {version!r}; this reader reads {SNAPSHOT_SCHEMA_VERSION}: "
            "cut the snapshot again with this version of Ratchet"
        )
    try:
        manifest = msgspec.json.decode(raw, type=SnapshotManifest)
    except msgspec.ValidationError as exc:
        raise SnapshotFormatError(f"{path}: {exc}") from exc
    if not verify:
        return manifest
    for name in FILES:
        entry = manifest.files.get(name)
        if entry is None:
            raise SnapshotFormatError(f"{path} lists no {name}")
        file = directory / name
        if not file.is_file():
            raise SnapshotFormatError(f"snapshot file {file} is missing")
        actual = file_sha256(file)
        if actual != entry.sha256:
            raise SnapshotFormatError(
                f"{file} does not match the manifest (sha256 {actual[:12]}…, expected {entry.sha256[:12]}…): "
                "the snapshot is corrupt or was changed after export; cut it again"
            )
        rows = pq.ParquetFile(file).metadata.num_rows
        if rows != entry.rows:
            raise SnapshotFormatError(f"{file} has {rows} rows; the manifest says {entry.rows}")
    if manifest.sha256 != snapshot_sha256(manifest.files):
        raise SnapshotFormatError(f"{path}: sha256 {manifest.sha256} does not match its files")
    return manifest
