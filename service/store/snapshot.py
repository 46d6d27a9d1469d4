"""Cut a training snapshot: `train.parquet`, `holdout.parquet` and `manifest.json`.

The one place where data is cleaned before training (DESIGN.md, Contracts):
1. join logs with their current feedback (a row per (log, feedback) that carries a signal);
2. scrub PII (e-mail, phone, card numbers, key-like strings, configured patterns);
3. drop identical examples (same prompt, answer, rating and correction): a thousand fake users
   posting the same thumb count once;
4. cap each end user's share, keeping their newest rows (a user spamming thumbs cannot steer);
5. split by time: the newest `holdout_fraction` is the holdout; training rows whose prompt also
   appears in the holdout are dropped, so the gate never scores a prompt the model trained on.

The directory appears all at once (temporary sibling, fsync, rename).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from datetime import datetime
from pathlib import Path

import msgspec

from service.config import SnapshotSettings
from service.store.db import Database, sql_string

SCHEMA_VERSION = 1
REDACTED = "[REDACTED]"
# RE2 syntax (DuckDB). Order matters: cards before phones, both digit runs.
PII_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}",
    "card": r"\b(?:\d[ \-]?){12,15}\d\b",
    "phone": r"(?:\+\d{1,3}[\s.\-]?)?\(?\b\d{3}\)?[\s.\-]?\d{3}[\s.\-]?\d{4}\b",
    "api_key": r"\b(?:sk|rk|pk|api|key|token|ghp|xox[abp])[_\-][A-Za-z0-9_\-]{16,}|\bAKIA[0-9A-Z]{16}\b|\b[A-Fa-f0-9]{32,}\b",
}

# prompt_messages: the request's chat messages (a completions `prompt` becomes one user message).
_JOINED = """
SELECT
    l.id AS log_id,
    CASE WHEN json_type(l.request, '$.messages') = 'ARRAY' THEN (l.request->'$.messages')::VARCHAR
         ELSE json_array(json_object('role', 'user', 'content', l.request->>'$.prompt'))::VARCHAR END
      AS prompt_messages,
    coalesce(l.response->>'$.choices[0].message.content', l.response->>'$.choices[0].text') AS completion,
    f.rating::TINYINT AS rating,
    f.score AS score,
    f.correction AS correction,
    nullif(coalesce(nullif(f.end_user, ''), l.end_user), '') AS end_user,
    l.created_at AS created_at,
    l.adapter AS adapter
FROM logs l
JOIN feedback f ON f.project = l.project AND f.log_id = l.id
WHERE l.project = $project AND l.created_at >= $since AND l.created_at < $until
  AND (f.rating IS NOT NULL OR f.score IS NOT NULL OR f.correction IS NOT NULL)
"""
COLUMNS = "log_id, prompt_messages, completion, rating, score, correction, end_user, created_at, adapter"


class SnapshotFile(msgspec.Struct):
    rows: int
    sha256: str


class SnapshotStats(msgspec.Struct):
    """What the cleaning kept and dropped, and why."""

    joined_rows: int
    pii_scrubbed_rows: int
    dropped_duplicates: int
    user_cap: int
    dropped_user_cap: int
    dropped_prompt_in_holdout: int
    train_rows: int
    holdout_rows: int


class SnapshotManifest(msgspec.Struct):
    """`manifest.json` of a snapshot directory; the trainer checks files against it."""

    schema_version: int
    project: str
    created_at: datetime
    since: datetime | None
    until: datetime | None
    files: dict[str, SnapshotFile]
    sha256: str
    stats: SnapshotStats


def _scrub(expr: str, patterns: list[str]) -> str:
    for pattern in patterns:
        expr = f"regexp_replace({expr}, '{sql_string(pattern)}', '{REDACTED}', 'g')"
    return expr


def export_snapshot(
    db: Database,
    project: str,
    out_dir: Path,
    settings: SnapshotSettings,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
) -> SnapshotManifest:
    """Write the project's cleaned feedback in [since, until) to `out_dir`; return its manifest."""
    patterns = [*PII_PATTERNS.values(), *settings.extra_pii_patterns]
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = {"project": project, "since": since or datetime.min, "until": until or now}
    cur = db.cursor()
    try:
        texts = ("prompt_messages", "completion", "correction")
        scrubbed = ", ".join(
            f"{_scrub(c, patterns)} AS {c}" if c in texts else c for c in COLUMNS.split(", ")
        )
        changed = " OR ".join(f"{_scrub(c, patterns)} IS DISTINCT FROM {c}" for c in texts)
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE snap_clean AS SELECT {scrubbed}, ({changed}) AS had_pii FROM ({_JOINED})",
            params,
        )
        joined = _count(cur, "snap_clean")
        (pii,) = cur.execute("SELECT count(*) FROM snap_clean WHERE had_pii").fetchone()
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE snap_dedup AS SELECT * FROM snap_clean QUALIFY row_number() OVER"
            " (PARTITION BY prompt_messages, completion, rating, correction ORDER BY created_at DESC, log_id) = 1"
        )
        deduped = _count(cur, "snap_dedup")
        cap = max(settings.min_user_cap, math.floor(settings.max_user_share * deduped))
        # Rows without an end user are not capped: nothing says they come from one person.
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE snap_capped AS SELECT * FROM snap_dedup QUALIFY end_user IS NULL"
            " OR row_number() OVER (PARTITION BY end_user ORDER BY created_at DESC, log_id) <= $cap",
            {"cap": cap},
        )
        capped = _count(cur, "snap_capped")
        n_holdout = math.ceil(settings.holdout_fraction * capped) if capped else 0
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE snap_split AS SELECT *, row_number() OVER"
            " (ORDER BY created_at, log_id) > $first_holdout AS is_holdout FROM snap_capped",
            {"first_holdout": capped - n_holdout},
        )
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE snap_train AS SELECT * EXCLUDE (is_holdout) FROM snap_split"
            " WHERE NOT is_holdout AND prompt_messages NOT IN"
            " (SELECT prompt_messages FROM snap_split WHERE is_holdout)"
        )
        files = {}
        for name, where in (
            ("train.parquet", "snap_train"),
            ("holdout.parquet", "snap_split WHERE is_holdout"),
        ):
            path = tmp / name
            cur.execute(
                f"COPY (SELECT {COLUMNS} FROM {where} ORDER BY created_at, log_id) TO '{sql_string(str(path))}'"
                " (FORMAT PARQUET, COMPRESSION ZSTD)"
            )
            files[name] = SnapshotFile(
                rows=cur.execute(f"SELECT count(*) FROM '{sql_string(str(path))}'").fetchone()[0],
                sha256=_sha256(path),
            )
        for table in ("snap_clean", "snap_dedup", "snap_capped", "snap_split", "snap_train"):
            cur.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        cur.close()
    train_rows = files["train.parquet"].rows
    manifest = SnapshotManifest(
        schema_version=SCHEMA_VERSION,
        project=project,
        created_at=now,
        since=since,
        until=until or now,
        files=files,
        sha256=hashlib.sha256("".join(f.sha256 for f in files.values()).encode()).hexdigest(),
        stats=SnapshotStats(
            joined_rows=joined,
            pii_scrubbed_rows=pii,
            dropped_duplicates=joined - deduped,
            user_cap=cap,
            dropped_user_cap=deduped - capped,
            dropped_prompt_in_holdout=capped - n_holdout - train_rows,
            train_rows=train_rows,
            holdout_rows=files["holdout.parquet"].rows,
        ),
    )
    (tmp / "manifest.json").write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
    _fsync_dir_files(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return manifest


def _count(cur: object, table: str) -> int:
    return int(cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[attr-defined]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir_files(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
