"""Export a project's logs with their feedback: JSONL in the import format, or Parquet.

The JSONL lines are OpenAI chat format (`messages` ending in the assistant's answer) plus the
feedback fields, so `ratchet export` output feeds `ratchet import` unchanged.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Literal

from service.store.db import Database, sql_string

ExportFormat = Literal["jsonl", "parquet"]

# One row per log; a log with several end users' feedback repeats once per feedback row.
# `messages` appends the answer to the request's messages (or wraps a completions `prompt`).
EXPORT_SQL = """
SELECT
    l.id AS id,
    CASE WHEN json_type(l.request, '$.messages') = 'ARRAY'
         THEN (l.request->'$.messages')::JSON[]
         ELSE [json_object('role', 'user', 'content', l.request->>'$.prompt')] END
      || [json_object('role', 'assistant', 'content',
            coalesce(l.response->>'$.choices[0].message.content', l.response->>'$.choices[0].text'))]
      AS messages,
    {created_at} AS created_at,
    l.adapter AS adapter,
    nullif(coalesce(f.end_user, l.end_user), '') AS end_user,
    f.rating AS rating,
    f.score AS score,
    f.correction AS correction,
    f.comment AS comment
FROM logs l
LEFT JOIN feedback f ON f.project = l.project AND f.log_id = l.id
WHERE l.project = $project AND l.created_at >= $since AND l.created_at < $until
ORDER BY l.created_at, l.id
"""


def export_logs(
    db: Database,
    project: str,
    dest: Path,
    fmt: ExportFormat,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Write the project's logs in [since, until) to `dest`; returns the row count.

    Written to a temporary sibling and renamed, so `dest` never holds a half-written file.
    """
    tmp = dest.with_name(f".{dest.name}.tmp")
    params = {"project": project, "since": since or datetime.min, "until": until or datetime.max}
    if fmt == "jsonl":  # explicit UTC ISO-8601, as the importer reads it
        sql, options = (
            EXPORT_SQL.format(created_at="strftime(l.created_at, '%Y-%m-%dT%H:%M:%S.%fZ')"),
            "FORMAT JSON",
        )
    else:
        sql, options = EXPORT_SQL.format(created_at="l.created_at"), "FORMAT PARQUET, COMPRESSION ZSTD"
    with db.reading() as cur:
        cur.execute(f"COPY ({sql}) TO '{sql_string(str(tmp))}' ({options})", params)
        (rows,) = cur.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    return int(rows)
