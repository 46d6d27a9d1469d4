"""Uploaded files and fine-tuning jobs (OpenAI's API, `service.fine_tuning`): their rows.

A job's status, model and error live in its run (`service.store.runs`); this table only ties the
job's id and request to the run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from formats.openai_jobs import Hyperparameters, JobCreate
from service.errors import NotFound
from service.store.db import Database

_FILE_COLUMNS = "id, project, purpose, filename, bytes, format, lines, sha256, path, created_at"
_JOB_COLUMNS = "id, project, run_id, request, hyperparameters, created_at"
_FILE_FIELDS = _FILE_COLUMNS.split(", ")


class StoredFile(msgspec.Struct, kw_only=True):
    """An uploaded, validated file; its content is at `path`."""

    id: str
    project: str
    purpose: str
    filename: str
    bytes: int
    format: str
    lines: int
    sha256: str
    path: str
    created_at: datetime


class StoredJob(msgspec.Struct, kw_only=True):
    id: str
    project: str
    run_id: str
    request: JobCreate
    hyperparameters: Hyperparameters
    """As applied: `auto` resolved to the numbers training was given."""
    created_at: datetime


def _job(row: tuple[Any, ...]) -> StoredJob:
    job_id, project, run_id, request, hyperparameters, created_at = row
    return StoredJob(
        id=job_id,
        project=project,
        run_id=run_id,
        created_at=created_at,
        request=msgspec.json.decode(request, type=JobCreate),
        hyperparameters=msgspec.json.decode(hyperparameters, type=Hyperparameters),
    )


class FineTuningStore:
    """Reads and writes files and jobs, always within one project."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_file(self, file: StoredFile) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [getattr(file, name) for name in _FILE_FIELDS],
            )

    def file(self, project: str, file_id: str) -> StoredFile:
        """`NotFound` for no such file in this project (another project's file included)."""
        with self._db.reading() as cur:
            row = cur.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE project = ? AND id = ?", [project, file_id]
            ).fetchone()
        if row is None:
            raise NotFound(f"no file {file_id!r}: upload it with POST /v1/files (see GET /v1/files)")
        return _stored_file(row)

    def files(self, project: str, *, purpose: str | None = None, limit: int = 10_000) -> list[StoredFile]:
        """Newest first."""
        where, params = "project = ?", [project]
        if purpose:
            where, params = f"{where} AND purpose = ?", [*params, purpose]
        with self._db.reading() as cur:
            rows = cur.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE {where} ORDER BY created_at DESC, id DESC"
                f" LIMIT {int(limit)}",
                params,
            ).fetchall()
        return [_stored_file(r) for r in rows]

    def delete_file(self, project: str, file_id: str) -> StoredFile:
        """Remove the file's row (the caller deletes its content); `NotFound` as `file`."""
        with self._db.transaction() as cur:
            row = cur.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE project = ? AND id = ?", [project, file_id]
            ).fetchone()
            if row is None:
                raise NotFound(f"no file {file_id!r}: see GET /v1/files")
            cur.execute("DELETE FROM files WHERE id = ?", [file_id])
        return _stored_file(row)

    def add_job(self, job: StoredJob) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                f"INSERT INTO fine_tuning_jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    job.id,
                    job.project,
                    job.run_id,
                    msgspec.json.encode(job.request).decode(),
                    msgspec.json.encode(job.hyperparameters).decode(),
                    job.created_at,
                ],
            )

    def job(self, project: str, job_id: str) -> StoredJob:
        """`NotFound` for no such job in this project."""
        with self._db.reading() as cur:
            row = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM fine_tuning_jobs WHERE project = ? AND id = ?", [project, job_id]
            ).fetchone()
        if row is None:
            raise NotFound(f"no fine-tuning job {job_id!r}: see GET /v1/fine_tuning/jobs")
        return _job(row)

    def jobs(self, project: str, *, after: str | None = None, limit: int = 20) -> list[StoredJob]:
        """Newest first; `after`: only jobs created before that job (OpenAI's cursor).
        `NotFound` for an `after` that is no job of the project."""
        where, params = "project = ?", [project]
        if after is not None:
            anchor = self.job(project, after)
            where = f"{where} AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [anchor.created_at, anchor.created_at, anchor.id]
        with self._db.reading() as cur:
            rows = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM fine_tuning_jobs WHERE {where}"
                f" ORDER BY created_at DESC, id DESC LIMIT {int(limit)}",
                params,
            ).fetchall()
        return [_job(r) for r in rows]

    def run_events(self, run_id: str) -> list[tuple[datetime, str, dict[str, Any]]]:
        """The audit trail of a job's run, oldest first: (at, kind, detail)."""
        with self._db.reading() as cur:
            rows = cur.execute(
                'SELECT "at", kind, detail FROM events WHERE run_id = ? ORDER BY "at", rowid', [run_id]
            ).fetchall()
        return [(at, kind, msgspec.json.decode(detail)) for at, kind, detail in rows]


def _stored_file(row: tuple[Any, ...]) -> StoredFile:
    return StoredFile(**dict(zip(_FILE_FIELDS, row, strict=True)))
