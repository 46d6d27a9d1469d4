"""Reads and low-rate writes of projects, keys and logs. Rows come back as domain Structs.

High-rate writes (logs, feedback) go through the group-commit writer instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb
import msgspec

from service.auth import StoredKey
from service.domain import AdapterStats, FeedbackOut, LogOut, Project, ProjectStats
from service.errors import Conflict, NotFound
from service.store.db import Database
from service.store.serving import Event, Serving

_KEY_COLUMNS = (
    "id, project, sha256, created_at, revoked_at, scopes, name, last_used_at, expires_at, rotated_from"
)


def _key(row: tuple[Any, ...]) -> StoredKey:
    fields = dict(zip(_KEY_COLUMNS.split(", "), row, strict=True))
    return StoredKey(**{**fields, "scopes": tuple(fields["scopes"] or ())})


def _json(value: str | None) -> Any:
    return None if value is None else msgspec.json.decode(value)


class Queries:
    """Projects, keys, logs and stats."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
        """A log with its current feedback rows; `NotFound` if the project has no such log."""
        with self._db.reading() as cur:
            row = cur.execute(
                "SELECT id, project, created_at, source, adapter, request, response, end_user, latency_ms,"
                " prompt_tokens, completion_tokens, metadata FROM logs WHERE project = ? AND id = ?",
                [project, log_id],
            ).fetchone()
            if row is None:
                raise NotFound(f"no log {log_id!r} in project {project!r}")
            feedback = cur.execute(
                "SELECT id, log_id, end_user, created_at, rating, score, correction, comment, choice FROM feedback"
                " WHERE project = ? AND log_id = ? ORDER BY created_at",
                [project, log_id],
            ).fetchall()
        (id_, proj, created, source, adapter, req, resp, user, latency, pt, ct, meta) = row
        return LogOut(
            id_, proj, created, source, adapter, _json(req), _json(resp), user, latency, pt, ct, _json(meta),
            [FeedbackOut(f[0], f[1], f[2] or None, *f[3:]) for f in feedback],
        )  # fmt: skip

    # --- stats
    def project_stats(self, project: str) -> ProjectStats:
        """Counts by kind, thumbs-up rate overall and per adapter, new signal since the last run."""
        self.get_project(project)
        with self._db.reading() as cur:
            (logs,) = cur.execute("SELECT count(*) FROM logs WHERE project = ?", [project]).fetchone()
            (last_run,) = cur.execute(
                "SELECT max(started_at) FROM runs WHERE project = ?", [project]
            ).fetchone()
            fb = cur.execute(
                "SELECT count(*), count(DISTINCT log_id) FILTER (rating IS NOT NULL),"
                " count(*) FILTER (rating = 1), count(*) FILTER (rating = -1),"
                " count(*) FILTER (correction IS NOT NULL),"
                " count(*) FILTER (rating IS NOT NULL AND received_at > ?),"
                " count(*) FILTER (correction IS NOT NULL AND received_at > ?)"
                " FROM feedback WHERE project = ?",
                [last_run or datetime.min, last_run or datetime.min, project],
            ).fetchone()
            by_adapter = cur.execute(
                "SELECT l.adapter, count(DISTINCT l.id), count(f.rating),"
                " count(*) FILTER (f.rating = 1), count(*) FILTER (f.rating = -1)"
                " FROM logs l LEFT JOIN feedback f ON f.project = l.project AND f.log_id = l.id"
                " WHERE l.project = ? GROUP BY l.adapter ORDER BY l.adapter NULLS FIRST",
                [project],
            ).fetchall()
        feedback, rated, up, down, corrections, new_rated, new_corr = fb
        return ProjectStats(
            project=project,
            logs=logs,
            feedback=feedback,
            rated_logs=rated,
            thumbs_up=up,
            thumbs_down=down,
            corrections=corrections,
            thumbs_up_rate=_rate(up, down),
            new_rated_since_last_run=new_rated,
            new_corrections_since_last_run=new_corr,
            last_run_at=last_run,
            by_adapter=[AdapterStats(a, n, r, u, d, _rate(u, d)) for a, n, r, u, d in by_adapter],
        )


def _rate(up: int, down: int) -> float | None:
    return up / (up + down) if up + down else None
