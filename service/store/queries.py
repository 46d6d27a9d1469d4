"""Reads and low-rate writes of projects, keys and logs. Rows come back as domain Structs.

High-rate writes (logs, feedback) go through the group-commit writer instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import msgspec

from service.auth import StoredKey
from service.domain import AdapterStats, FeedbackOut, ImplicitStats, LogOut, NewSignal, Project, ProjectStats
from service.errors import Conflict, NotFound
from service.store.archive import Archive
from service.store.archive_index import log_keys
from service.store.db import Database
from service.store.serving import Event, Serving

_KEY_COLUMNS = (
    "id, project, sha256, created_at, revoked_at, scopes, name, last_used_at, expires_at, rotated_from"
)


def _key(row: tuple[Any, ...]) -> StoredKey:
    fields = dict(zip(_KEY_COLUMNS.split(", "), row, strict=True))
    return StoredKey(**{**fields, "scopes": tuple(fields["scopes"] or ())})


# Point reads through the single-column indexes on logs.id (migration 010) and feedback.log_key
# (016: `archive_index.log_keys` of (project, log id), a third parameter computed by the caller).
# DuckDB plans an index scan only when the indexed column is the scan's one filter, so the project
# is filtered after a materialized CTE: `project = ? AND id = ?` in one WHERE is a full scan.
_LOG_COLUMNS = (
    "id, project, created_at, source, adapter, request, response, end_user, latency_ms, prompt_tokens,"
    " completion_tokens, metadata"
)
LOG_BY_ID = f"""
WITH hit AS MATERIALIZED (
    SELECT {_LOG_COLUMNS}
    FROM logs WHERE id = $1
)
SELECT * FROM hit WHERE project = $2
"""
ADAPTER_BY_LOG_ID = """
WITH hit AS MATERIALIZED (SELECT adapter, project FROM logs WHERE id = $1)
SELECT adapter FROM hit WHERE project = $2
"""
FEEDBACK_BY_LOG_ID = """
WITH hit AS MATERIALIZED (
    SELECT id, log_id, end_user, created_at, rating, score, correction, comment, choice, regenerated,
        regenerated_log_id, edited, copied, events, received_at, project
    FROM feedback WHERE log_key = $3::UBIGINT
)
SELECT id, log_id, end_user, created_at, rating, score, correction, comment, choice, regenerated,
    regenerated_log_id, edited, copied, events, received_at FROM hit
WHERE log_id = $1 AND project = $2 ORDER BY received_at, end_user
"""


def _json(value: str | None) -> Any:
    return None if value is None else msgspec.json.decode(value)


class Queries:
    """Projects, keys, logs and stats."""

    def __init__(self, db: Database, archive: Archive | None = None) -> None:
        self._db = db
        self._archive = archive

    # --- projects
    def create_project(self, project: Project, key: StoredKey) -> None:
        """Store a project with its first key; raises `Conflict` if the name is taken."""
        try:
            with self._db.transaction() as cur:
                cur.execute(
                    "INSERT INTO projects (name, base_model, created_at) VALUES (?, ?, ?)",
                    [project.name, project.base_model, project.created_at],
                )
                self._insert_key(cur, key)
        except duckdb.ConstraintException as exc:
            raise Conflict(f"project {project.name!r} already exists: pick another name") from exc

    def get_project(self, name: str) -> Project:
        with self._db.reading() as cur:
            row = cur.execute(
                "SELECT name, base_model, created_at FROM projects WHERE name = ?", [name]
            ).fetchone()
        if row is None:
            raise NotFound(
                f"project {name!r} does not exist: create it with `ratchet projects create {name}`"
            )
        return Project(*row)

    def list_projects(self) -> list[Project]:
        with self._db.reading() as cur:
            rows = cur.execute("SELECT name, base_model, created_at FROM projects ORDER BY name").fetchall()
        return [Project(*r) for r in rows]

    def project_settings(self) -> dict[str, tuple[dict[str, Any], str]]:
        """Every project's settings overrides and base model."""
        with self._db.reading() as cur:
            rows = cur.execute("SELECT name, settings, base_model FROM projects").fetchall()
        return {name: (_json(settings) or {}, base_model or "") for name, settings, base_model in rows}

    def save_project_settings(
        self, project: str, overrides: dict[str, Any], base_model: str, event: Event
    ) -> None:
        """Store a project's overrides and base model with the event recording the change."""
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE projects SET settings = ?, base_model = ? WHERE name = ?",
                [msgspec.json.encode(overrides).decode(), base_model, project],
            )
            Serving._insert_event(cur, event)

    # --- keys
    def add_key(self, key: StoredKey, event: Event | None = None) -> None:
        """Store a new key (and the event that records it) in one transaction."""
        with self._db.transaction() as cur:
            self._insert_key(cur, key)
            if event:
                Serving._insert_event(cur, event)

    @staticmethod
    def _insert_key(cur: duckdb.DuckDBPyConnection, key: StoredKey) -> None:
        cur.execute(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [key.id, key.project, key.sha256, key.created_at, key.revoked_at, list(key.scopes), key.name,
             key.last_used_at, key.expires_at, key.rotated_from],
        )  # fmt: skip

    def list_keys(self) -> list[StoredKey]:
        """Every key, revoked ones included (the key ring and the listing start from here)."""
        with self._db.reading() as cur:
            rows = cur.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id").fetchall()
        return [_key(r) for r in rows]

    def revoke_key(self, key_id: str, now: datetime, event: Event) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [now, key_id]
            )
            Serving._insert_event(cur, event)

    def rotate_key(
        self, old_id: str, new: StoredKey, old_expires_at: datetime, revoke_now: bool, event: Event
    ) -> None:
        """Store the replacement key and end the old one (now, or at `old_expires_at`), atomically."""
        with self._db.transaction() as cur:
            self._insert_key(cur, new)
            cur.execute(
                "UPDATE api_keys SET expires_at = ?, revoked_at = CASE WHEN ? THEN ? ELSE revoked_at END"
                " WHERE id = ?",
                [old_expires_at, revoke_now, old_expires_at, old_id],
            )
            Serving._insert_event(cur, event)

    def record_key_use(self, used: dict[str, datetime]) -> None:
        """Write when keys were last used (kept in memory between calls), in one transaction."""
        if not used:
            return
        with self._db.transaction() as cur:
            cur.executemany(
                "UPDATE api_keys SET last_used_at = greatest(coalesce(last_used_at, ?), ?) WHERE id = ?",
                [[at, at, key_id] for key_id, at in used.items()],
            )

    # --- logs
    def get_log(self, project: str, log_id: str) -> LogOut:
        """A log with its current feedback rows; `NotFound` if the project has no such log.
        The DuckDB file is looked in first (an index), then the archive (a scan of its ids)."""
        with self._db.reading() as cur:
            row = cur.execute(LOG_BY_ID, [log_id, project]).fetchone()
        if row is None and self._archive is not None:
            # Looked up after the table: a log deleted from it by a move is listed in the archive.
            row = self._archive.get_log(project, log_id, _LOG_COLUMNS)
        if row is None:
            raise NotFound(f"no log {log_id!r} in project {project!r}")
        with self._db.reading() as cur:
            feedback = cur.execute(
                FEEDBACK_BY_LOG_ID, [log_id, project, *log_keys([(project, log_id)])]
            ).fetchall()
        (id_, proj, created, source, adapter, req, resp, user, latency, pt, ct, meta) = row
        return LogOut(
            id_, proj, created, source, adapter, _json(req), _json(resp), user, latency, pt, ct, _json(meta),
            [FeedbackOut(f[0], f[1], f[2] or None, *f[3:]) for f in feedback],
        )  # fmt: skip

    def log_adapters(self, project: str, log_ids: list[str]) -> dict[str, str | None]:
        """The adapter that answered each of these logs of the project (None: the app named
        none), by log id; logs not stored are left out. One point read per id: in the DuckDB
        file, then in the archive for those not there (late feedback on an archived log keeps
        its version in the metrics; an id the archive's look-up does not know opens no file)."""
        found: dict[str, str | None] = {}
        with self._db.reading() as cur:
            for log_id in log_ids:
                row = cur.execute(ADAPTER_BY_LOG_ID, [log_id, project]).fetchone()
                if row is not None:
                    found[log_id] = row[0]
        if self._archive is not None:
            for log_id in log_ids:
                if log_id not in found and (row := self._archive.get_log(project, log_id, "adapter")):
                    found[log_id] = row[0]
        return found

    def logs_of_spans(
        self, project: str, spans: list[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, str | None]]:
        """The project's logs stored from these OTLP spans ((trace id, span id), as kept in
        `metadata.otel`): (log id, end user) by span. Scans the project's OTLP logs (no index
        holds span ids), then the archive's for the spans not found there (late evaluations
        only): it serves only evaluations that name their target by span alone."""
        wanted = set(spans)
        with self._db.reading() as cur:
            found = _logs_of_spans(cur, "logs", project, wanted)
            missing = wanted - found.keys()
            if missing and self._archive is not None and (archived := self._archive.relation(cur, project)):
                found |= _logs_of_spans(cur, f"({archived})", project, missing)
        return found

    def find_feedback(self, project: str, feedback_id: str) -> tuple[str, str]:
        """(log id, end user) of the feedback row an item id belongs to (the row's own id or any
        of its last items'); `NotFound` if the project has none."""
        with self._db.reading() as cur:
            row = cur.execute(
                "SELECT log_id, end_user FROM feedback WHERE project = $p"
                " AND (id = $id OR list_contains(item_ids, $id)) ORDER BY received_at DESC LIMIT 1",
                {"p": project, "id": feedback_id},
            ).fetchone()
        if row is None:
            raise NotFound(f"no feedback {feedback_id!r} in project {project!r}")
        return row[0], row[1]

    # --- stats
    def count_new_signal(self, project: str, since: datetime | None) -> NewSignal:
        """Ratings and corrections that changed after `since` (None: ever) on logs that exist, by
        server receive times: a later comment does not make an old thumb new, and feedback that
        came before its log counts when the log arrives. Costs O(rows since), not O(history):
        rows arrive in `received_at` order, so DuckDB skips every row group whose maximum is
        older, on both sides of the union.

        Feedback on an archived log (late feedback, `service/store/archive.py`) counts too: the new
        feedback rows whose log is not in the DuckDB file are looked up in the archive, which costs a
        scan of the archive's ids only while there are such rows (late feedback, orphans). Logs
        archived after `since` with feedback from before it (a project without a run for longer than
        `archive.after_days`) are not counted as new."""
        since_at = since or datetime.min
        with self._db.reading() as cur:
            row = cur.execute(
                """
                WITH pairs AS (
                    SELECT f.rating, f.correction, f.rating_at, f.correction_at, l.received_at AS log_at
                    FROM (SELECT * FROM feedback WHERE project = $p AND received_at > $since) f
                    JOIN logs l ON l.project = f.project AND l.id = f.log_id
                    UNION ALL
                    SELECT f.rating, f.correction, f.rating_at, f.correction_at, l.received_at
                    FROM (SELECT * FROM logs WHERE project = $p AND received_at > $since) l
                    JOIN feedback f ON f.project = l.project AND f.log_id = l.id AND f.received_at <= $since
                )
                SELECT count(*) FILTER (rating IS NOT NULL AND greatest(rating_at, log_at) > $since),
                    count(*) FILTER (rating = 1 AND greatest(rating_at, log_at) > $since),
                    count(*) FILTER (rating = -1 AND greatest(rating_at, log_at) > $since),
                    count(*) FILTER (correction IS NOT NULL AND greatest(correction_at, log_at) > $since)
                FROM pairs
                """,
                {"p": project, "since": since_at},
            ).fetchone()
            unmatched = (
                cur.execute(
                    "SELECT log_id, rating, correction, rating_at, correction_at FROM feedback f"
                    " WHERE project = $p AND received_at > $since AND NOT EXISTS"
                    " (SELECT 1 FROM logs l WHERE l.project = f.project AND l.id = f.log_id)",
                    {"p": project, "since": since_at},
                ).fetchall()
                if self._archive is not None and self._archive.files(cur, project)
                else []  # nothing archived: no second pass
            )
        counts = list(row)
        archived = self._archive.received_at(project, [u[0] for u in unmatched]) if unmatched else {}
        for log_id, rating, correction, rating_at, correction_at in unmatched:
            if log_id not in archived:
                continue  # an orphan: its log has not arrived
            log_at = archived[log_id]
            if rating is not None and max(rating_at or log_at, log_at) > since_at:
                counts[0] += 1
                counts[1] += rating == 1
                counts[2] += rating == -1
            if correction is not None and max(correction_at or log_at, log_at) > since_at:
                counts[3] += 1
        return NewSignal(since, *counts)

    def last_run_start(self, project: str) -> datetime | None:
        with self._db.reading() as cur:
            (last_run,) = cur.execute(
                "SELECT max(started_at) FROM runs WHERE project = ?", [project]
            ).fetchone()
        return last_run  # type: ignore[no-any-return]

    def project_stats(self, project: str, *, orphan_hours: float = 24.0) -> ProjectStats:
        """Counts by kind, thumbs-up rate overall and per adapter, new signal since the last run
        (`count_new_signal`).

        Feedback counts only once its log exists: feedback for a log id not (yet) stored is an
        orphan, counted apart (`stale_orphans`: received more than `orphan_hours` ago). A full
        pass over the project's history (about a second per million logs): call it off the event
        loop."""
        self.get_project(project)
        new = self.count_new_signal(project, self.last_run_start(project))
        with self._db.reading() as cur:
            cur.execute("BEGIN TRANSACTION")  # the archive's files and the table as of one moment
            if self._archive is not None:
                self._archive.shadow_logs(cur, project)
            (logs,) = cur.execute("SELECT count(*) FROM logs WHERE project = ?", [project]).fetchone()
            fb = cur.execute(
                """
                SELECT count(*) FILTER (l.id IS NOT NULL),
                    count(DISTINCT f.log_id) FILTER (l.id IS NOT NULL AND f.rating IS NOT NULL),
                    count(*) FILTER (l.id IS NOT NULL AND f.rating = 1),
                    count(*) FILTER (l.id IS NOT NULL AND f.rating = -1),
                    count(*) FILTER (l.id IS NOT NULL AND f.correction IS NOT NULL),
                    count(*) FILTER (l.id IS NOT NULL AND f.regenerated),
                    count(*) FILTER (l.id IS NOT NULL AND f.edited IS NOT NULL),
                    count(*) FILTER (l.id IS NOT NULL AND f.copied),
                    count(*) FILTER (l.id IS NOT NULL AND len(f.events) > 0),
                    count(*) FILTER (l.id IS NULL),
                    count(*) FILTER (l.id IS NULL AND f.received_at < $stale)
                FROM feedback f LEFT JOIN logs l ON l.project = f.project AND l.id = f.log_id
                WHERE f.project = $project
                """,
                {
                    "project": project,
                    "stale": datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=orphan_hours),
                },
            ).fetchone()
            by_adapter = cur.execute(
                "SELECT l.adapter, count(DISTINCT l.id), count(f.rating),"
                " count(*) FILTER (f.rating = 1), count(*) FILTER (f.rating = -1)"
                " FROM logs l LEFT JOIN feedback f ON f.project = l.project AND f.log_id = l.id"
                " WHERE l.project = ? GROUP BY l.adapter ORDER BY l.adapter NULLS FIRST",
                [project],
            ).fetchall()
            cur.execute("ROLLBACK")  # read only; drops the view
        (feedback, rated, up, down, corrections, regenerated, edited, copied, events, orphans, stale) = fb
        return ProjectStats(
            project=project,
            logs=logs,
            feedback=feedback,
            rated_logs=rated,
            thumbs_up=up,
            thumbs_down=down,
            corrections=corrections,
            thumbs_up_rate=_rate(up, down),
            new_rated_since_last_run=new.rated,
            new_corrections_since_last_run=new.corrections,
            last_run_at=new.since,
            by_adapter=[AdapterStats(a, n, r, u, d, _rate(u, d)) for a, n, r, u, d in by_adapter],
            implicit=ImplicitStats(regenerated=regenerated, edited=edited, copied=copied, events=events),
            orphan_feedback=orphans,
            stale_orphans=stale,
        )


def _rate(up: int, down: int) -> float | None:
    return up / (up + down) if up + down else None


def _logs_of_spans(
    cur: duckdb.DuckDBPyConnection, relation: str, project: str, spans: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str | None]]:
    if not spans:
        return {}
    rows = cur.execute(
        "SELECT json_extract_string(metadata, '$.otel.trace_id'), json_extract_string(metadata, '$.otel.span_id'),"
        f" id, end_user FROM {relation} WHERE project = ? AND source = 'otlp'"
        " AND json_extract_string(metadata, '$.otel.span_id') IN (SELECT unnest(?))",
        [project, sorted({span for _, span in spans})],
    ).fetchall()
    return {(t, s): (log_id, user) for t, s, log_id, user in rows if (t, s) in spans}
