"""Uploaded files and fine-tuning jobs (OpenAI's API, `service.fine_tuning`): their rows.

A job's status, model and error live in its run (`service.store.runs`); this table only ties the
job's id and request to the run. A job without a run is queued (waiting for its project to be
free), or cancelled before it ran (`cancelled_at`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from formats.openai_jobs import Hyperparameters, JobCreate
from service.errors import NotFound
from service.store.db import Database

_FILE_COLUMNS = "id, project, purpose, filename, bytes, format, lines, sha256, path, created_at"
_JOB_COLUMNS = "id, project, run_id, request, hyperparameters, created_at, cancelled_at, result_file"
_FILE_FIELDS = _FILE_COLUMNS.split(", ")
_QUEUED = "run_id IS NULL AND cancelled_at IS NULL"


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
    run_id: str | None
    """None while the job is queued (or once it was cancelled in the queue)."""
    request: JobCreate
    hyperparameters: Hyperparameters
    """As applied: `auto` resolved to the numbers training was given."""
    created_at: datetime
    cancelled_at: datetime | None = None
    """Set when the job was cancelled while queued, before it had a run."""
    result_file: str | None = None
    """The id of its metrics file (purpose `fine-tune-results`), once it succeeded."""


def _job(row: tuple[Any, ...]) -> StoredJob:
    job_id, project, run_id, request, hyperparameters, created_at, cancelled_at, result_file = row
    return StoredJob(
        id=job_id,
        project=project,
        run_id=run_id,
        created_at=created_at,
        cancelled_at=cancelled_at,
        result_file=result_file,
        request=msgspec.json.decode(request, type=JobCreate),
        hyperparameters=msgspec.json.decode(hyperparameters, type=Hyperparameters),
    )


class FineTuningStore:
    """Reads and writes files and jobs, always within one project."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_file(self, file: StoredFile) -> None:
        with self._db.transaction() as cur:
            _insert_file(cur, file)

    def file(self, project: str, file_id: str) -> StoredFile:
        """`NotFound` for no such file in this project (another project's file included)."""
        with self._db.reading() as cur:
            row = cur.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE project = ? AND id = ?", [project, file_id]
            ).fetchone()
        if row is None:
            raise NotFound(f"no file {file_id!r}: upload it with POST /v1/files (see GET /v1/files)")
        return _stored_file(row)

    def files(
        self, project: str, *, purpose: str | None = None, after: str | None = None, limit: int = 10_000,
        order: str = "desc",
    ) -> list[StoredFile]:  # fmt: skip
        """In `order` of creation (`desc`: newest first), as OpenAI's files list: `purpose` only
        those of that purpose, `after` only those past that file in this order (its cursor).
        `NotFound` for an `after` that is no file of the project."""
        where, params = "project = ?", [project]
        if purpose:
            where, params = f"{where} AND purpose = ?", [*params, purpose]
        anchor = None if after is None else self.file(project, after)
        page = _page_sql(where, params, anchor, descending=order != "asc", limit=limit)
        with self._db.reading() as cur:
            rows = cur.execute(f"SELECT {_FILE_COLUMNS} FROM files {page[0]}", page[1]).fetchall()
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
                f"INSERT INTO fine_tuning_jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    job.id,
                    job.project,
                    job.run_id,
                    msgspec.json.encode(job.request).decode(),
                    msgspec.json.encode(job.hyperparameters).decode(),
                    job.created_at,
                    job.cancelled_at,
                    job.result_file,
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
        anchor = None if after is None else self.job(project, after)
        page = _page_sql("project = ?", [project], anchor, descending=True, limit=limit)
        with self._db.reading() as cur:
            rows = cur.execute(f"SELECT {_JOB_COLUMNS} FROM fine_tuning_jobs {page[0]}", page[1]).fetchall()
        return [_job(r) for r in rows]

    def next_queued(self, project: str) -> StoredJob | None:
        """The project's oldest queued job (FIFO), if any."""
        with self._db.reading() as cur:
            row = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM fine_tuning_jobs WHERE project = ? AND {_QUEUED}"
                " ORDER BY created_at, id LIMIT 1",
                [project],
            ).fetchone()
        return None if row is None else _job(row)

    def queued_projects(self) -> list[str]:
        """The projects that have a queued job."""
        with self._db.reading() as cur:
            rows = cur.execute(
                f"SELECT DISTINCT project FROM fine_tuning_jobs WHERE {_QUEUED} ORDER BY project"
            ).fetchall()
        return [p for (p,) in rows]

    def set_run(self, job_id: str, run_id: str) -> None:
        """Tie a queued job to the run that now trains it."""
        with self._db.transaction() as cur:
            cur.execute(
                f"UPDATE fine_tuning_jobs SET run_id = ? WHERE id = ? AND {_QUEUED}", [run_id, job_id]
            )

    def add_result_file(self, job_id: str, file: StoredFile) -> None:
        """Keep a job's result file and name it on the job, in one transaction."""
        with self._db.transaction() as cur:
            _insert_file(cur, file)
            cur.execute("UPDATE fine_tuning_jobs SET result_file = ? WHERE id = ?", [file.id, job_id])

    def cancel_queued(self, job_id: str, now: datetime) -> bool:
        """Cancel a job that is still queued; False if it is not (it has a run, or was cancelled)."""
        with self._db.transaction() as cur:
            row = cur.execute(
                f"UPDATE fine_tuning_jobs SET cancelled_at = ? WHERE id = ? AND {_QUEUED} RETURNING id",
                [now, job_id],
            ).fetchone()
        return row is not None

    def version_suffix(self, project: str, served_name: str) -> str | None:
        """The suffix of the job that trained version `served_name` (`project@vN`); None when no
        job of the project trained it, or its job gave no suffix."""
        with self._db.reading() as cur:
            row = cur.execute(
                "SELECT json_extract_string(j.request, '$.suffix') FROM fine_tuning_jobs j"
                " JOIN runs r ON r.id = j.run_id"
                " WHERE j.project = ? AND json_extract_string(r.stats, '$.adapter') = ?",
                [project, served_name],
            ).fetchone()
        return None if row is None else row[0]

    def run_events(self, run_id: str) -> list[tuple[datetime, str, dict[str, Any]]]:
        """The audit trail of a job's run, oldest first: (at, kind, detail)."""
        with self._db.reading() as cur:
            rows = cur.execute(
                'SELECT "at", kind, detail FROM events WHERE run_id = ? ORDER BY "at", rowid', [run_id]
            ).fetchall()
        return [(at, kind, msgspec.json.decode(detail)) for at, kind, detail in rows]


def _page_sql(
    where: str, params: list[Any], anchor: StoredFile | StoredJob | None, *, descending: bool, limit: int
) -> tuple[str, list[Any]]:
    """`WHERE ... ORDER BY ... LIMIT ...` and its parameters for one page of OpenAI's cursor
    listing: rows past `anchor` (the `after` item) in (created_at, id) order, ties broken by id."""
    direction, past = ("DESC", "<") if descending else ("ASC", ">")
    if anchor is not None:
        where = f"{where} AND (created_at {past} ? OR (created_at = ? AND id {past} ?))"
        params = [*params, anchor.created_at, anchor.created_at, anchor.id]
    return f"WHERE {where} ORDER BY created_at {direction}, id {direction} LIMIT {int(limit)}", params


def _insert_file(cur: Any, file: StoredFile) -> None:
    cur.execute(
        f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [getattr(file, name) for name in _FILE_FIELDS],
    )


def _stored_file(row: tuple[Any, ...]) -> StoredFile:
    return StoredFile(**dict(zip(_FILE_FIELDS, row, strict=True)))
