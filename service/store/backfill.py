"""Data steps of migrations: work SQL alone cannot do, run inside the migration's transaction.

Migration 004 added the normalised columns of `logs` (`formats.log`); `normalize_old_logs` fills
them for the rows captured before it, with the same function capture uses, so a log reads the
same whenever it arrived. A log the shape module cannot read is quarantined (`shape_error`),
never dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import duckdb
import pyarrow as pa

from formats.chat import ShapeError
from formats.log import normalize
from service.store.rows import LOG_SCHEMA, normalized_columns

log = logging.getLogger("ratchet.store")

_CHUNK_ROWS = 10_000
_NORMALIZED = LOG_SCHEMA.names[LOG_SCHEMA.names.index("endpoint") :]


def normalize_old_logs(con: duckdb.DuckDBPyConnection) -> int:
    """Normalise every log whose normalised columns are all NULL; returns how many were."""
    (last,) = con.execute("SELECT coalesce(max(rowid), -1) FROM logs").fetchone()
    done = 0
    for start in range(0, last + 1, _CHUNK_ROWS):
        found = con.execute(
            "SELECT project, id, request::VARCHAR, response::VARCHAR, end_user, metadata->>'$.interrupted'"
            " FROM logs WHERE rowid >= ? AND rowid < ? AND endpoint IS NULL AND quarantine IS NULL",
            [start, start + _CHUNK_ROWS],
        ).fetchall()
        if not found:
            continue
        columns: dict[str, list[object]] = {"project": [], "id": [], "end_user": []}
        columns |= {name: [] for name in _NORMALIZED}
        for project, log_id, request, response, end_user, interrupted in found:
            try:
                n = normalize(
                    request.encode(), response.encode(), end_user=end_user, interrupted=interrupted == "true"
                )
            except ShapeError:
                n = None
            columns["project"].append(project)
            columns["id"].append(log_id)
            columns["end_user"].append(n.end_user if n else end_user)
            for name, value in zip(_NORMALIZED, normalized_columns(n), strict=True):
                columns[name].append(value)
        schema = pa.schema(
            [LOG_SCHEMA.field("project"), LOG_SCHEMA.field("id"), LOG_SCHEMA.field("end_user")]
            + [LOG_SCHEMA.field(name) for name in _NORMALIZED]
        )
        batch = pa.Table.from_pydict(columns, schema=schema)  # noqa: F841 - read by the UPDATE below
        sets = ", ".join(f"{c} = batch.{c}" for c in ("end_user", *_NORMALIZED))
        con.execute(
            f"UPDATE logs SET {sets} FROM batch WHERE logs.project = batch.project AND logs.id = batch.id"
        )
        done += len(found)
    if done:
        log.info("normalised %d logs captured before migration 004", done)
    return done


DATA_STEPS: dict[int, Callable[[duckdb.DuckDBPyConnection], object]] = {4: normalize_old_logs}
"""Migration version -> the data step run right after its SQL, in the same transaction."""
