"""Deleting data: one log, one end user, a whole project, or what is older than a retention period.

A deletion has one commit point, the transaction that records it: the audit event (with the row
counts), the marks on adapters trained on the data, the eval reports that quote it (deleted), the
files to delete (snapshots holding the data, adapter directories) in `pending_deletions`, and an
`erasure_jobs` row naming the rows to delete. Before that commit nothing has changed; after it the
deletion is decided and runs to its end: the caller deletes the files and runs the job, and a
start-up after `kill -9` finishes both before serving (`unfinished_jobs`, `pending_deletions`).
So a deletion is all or nothing.

The rows themselves go in transactions of `batch_rows` logs with their feedback. One transaction
would be simpler, but DuckDB (2.0) takes ~0.3 ms per deleted row at commit on a 1M-row table with
a VARCHAR primary key (the index upkeep reads each deleted row's key back from compressed storage:
10,000 rows commit in 3-4 s, 500,000 in 160 s; with an integer key, or in memory, 10,000 commit in
~0.1 s), and every other commit, ingest's included, waits meanwhile. In batches, ingest commits
between them.

Archived logs (`service/store/archive.py`) are counted and found in the recording transaction like
the others (`logs` there includes the archive); the job first rewrites every archive file holding a
selected log without it (after deleting the feedback on those logs), then deletes from the tables.

Which snapshots hold the data is read from the snapshot files themselves (their `log_id` and
`end_user` columns), so a snapshot that a row was copied into is found whatever the row's state
today. The erased person's id is written nowhere lasting: events and adapter marks carry counts,
and the job row holding the id is deleted when the job ends.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from service.errors import NotFound, StoreUnavailable
from service.store.archive import Archive
from service.store.db import Database
from service.store.serving import Event, Serving

# A concurrent write to the same rows (a feedback upsert of the person being erased) aborts one
# of the two transactions; the erasure simply tries again.
_ATTEMPTS = 5
SNAPSHOT_DIR = "snapshot"
REPORT_FILE = "eval_report.md"


@dataclass
class Erased:
    """What one deletion removes (see `service.domain.ErasureOut`), and the job that removes it."""

    job: str | None = None
    logs: int = 0
    feedback: int = 0
    snapshot_runs: list[str] = field(default_factory=list)
    eval_reports: int = 0
    adapters: list[str] = field(default_factory=list)
    possible_adapters: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def anything(self) -> bool:
        return bool(self.logs or self.feedback or self.files or self.eval_reports)


@dataclass
class _Selection:
    """The rows one deletion removes, as SQL over a project (`$project` and named params): the
    logs, all feedback to delete (on those logs, and `own_feedback`: the rest, such as what the
    erased person said about others' answers), and the rows of a snapshot file that hold any of it."""

    logs: str  # WHERE clause on logs
    own_feedback: str  # WHERE clause on feedback, besides the feedback on the selected logs
    params: dict[str, Any]
    snapshot_rows: str | None = None

    @property
    def feedback(self) -> str:
        return f"({self.own_feedback}) OR (project = $project AND log_id IN (SELECT id FROM logs WHERE {self.logs}))"


def _selection(kind: str, project: str, params: dict[str, Any]) -> _Selection:
    """What a job of `kind` deletes (the same SQL when it is recorded and when it is resumed)."""
    p = {"project": project, **params}
    if kind == "log":
        return _Selection("project = $project AND id = $log_id", "project = $project AND log_id = $log_id", p,
                          "log_id = $log_id")  # fmt: skip
    if kind == "end_user":
        return _Selection(
            "project = $project AND end_user = $end_user",
            "project = $project AND end_user = $end_user",
            p,
            "end_user = $end_user OR log_id IN (SELECT id FROM logs WHERE project = $project AND end_user = $end_user)",
        )
    if kind == "retention":
        p["cutoff"] = datetime.fromisoformat(params["cutoff"])
        return _Selection(
            "project = $project AND received_at < $cutoff", "project = $project AND received_at < $cutoff", p
        )
    if kind == "project":
        return _Selection("project = $project", "project = $project", p)
    raise ValueError(f"unknown erasure kind {kind!r}")


class Erasures:
    """Deletes logs, end users, projects and expired data; lists and clears what is left to do."""

    def __init__(
        self, db: Database, runs_dir: Path, batch_rows: int = 200, archive: Archive | None = None
    ) -> None:
        self._db = db
        self._runs_dir = runs_dir
        self.batch_rows = batch_rows
        self._archive = archive

    def _see_archive(self, cur: duckdb.DuckDBPyConnection, project: str) -> None:
        """In a recording transaction: `logs` (read only there) includes the archived logs, so the
        counts and the snapshot hits cover them."""
        if self._archive is not None:
            self._archive.shadow_logs(cur, project)

    # --- recording a deletion (its commit point)

    def erase_log(self, project: str, log_id: str, now: datetime, by: str) -> Erased:
        """Record the deletion of one log, all feedback on it, and every snapshot that holds it.
        `NotFound` (nothing recorded) if the project has neither a log nor feedback with that id."""
        missing = NotFound(f"no log {log_id!r} in project {project!r}")
        return self._record(project, "log", {"log_id": log_id}, now, "log_deleted", {"log_id": log_id, "by": by},
                            missing)  # fmt: skip

    def erase_end_user(self, project: str, end_user: str, now: datetime, by: str) -> Erased:
        """Record the deletion of every log of `end_user`, all feedback on those logs, all feedback
        they gave, and every snapshot holding any of it. An end user with no data is no error."""
        return self._record(project, "end_user", {"end_user": end_user}, now, "end_user_erased", {"by": by})

    def expire(self, project: str, cutoff: datetime, now: datetime) -> Erased:
        """Retention: record the deletion of the project's logs and feedback received before
        `cutoff` (and feedback on such a log), and of the snapshots and eval reports of runs started
        before it. Adapters stay unmarked: a model is not the data it learnt from. Records nothing
        (no event, no job) when nothing expired."""
        params = {"cutoff": cutoff.isoformat()}
        sel = _selection("retention", project, params)
        for attempt in range(_ATTEMPTS):
            try:
                with self._db.transaction() as cur:
                    self._see_archive(cur, project)
                    erased = self._count(cur, sel)
                    old_runs = [
                        r for (r,) in cur.execute(
                            "SELECT id FROM runs WHERE project = $project AND started_at < $cutoff",
                            {"project": project, "cutoff": cutoff},
                        ).fetchall()
                    ]  # fmt: skip
                    erased.snapshot_runs = [
                        r for r in old_runs if (self._runs_dir / r / SNAPSHOT_DIR).exists()
                    ]
                    erased.eval_reports = self._delete_reports(cur, old_runs)
                    erased.files = [
                        *(str(self._runs_dir / r / SNAPSHOT_DIR) for r in erased.snapshot_runs),
                        *(str(p) for r in old_runs if (p := self._runs_dir / r / REPORT_FILE).exists()),
                    ]
                    if erased.anything:
                        self._pend(cur, erased.files, "retention", now)
                        erased.job = self._add_job(cur, project, "retention", params, now)
                        detail = {"cutoff": cutoff.isoformat(), **_counts(erased)}
                        Serving._insert_event(cur, Event(now, project, None, "retention_applied", detail))
                    return erased
            except duckdb.TransactionException:
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def delete_project(self, project: str, now: datetime, paths: Iterable[Path], by: str) -> Erased:
        """Delete the project's rows in every small table, and record the deletion of its logs and
        feedback and of its files (`paths`, its runs' directories). One `project_deleted` event stays
        (the audit of the deletion). `NotFound` if there is no such project."""
        with self._db.transaction() as cur:
            if cur.execute("SELECT 1 FROM projects WHERE name = ?", [project]).fetchone() is None:
                raise NotFound(f"project {project!r} does not exist")
            self._see_archive(cur, project)
            erased = self._count(cur, _selection("project", project, {}))
            runs = [r for (r,) in cur.execute("SELECT id FROM runs WHERE project = ?", [project]).fetchall()]
            erased.eval_reports = self._delete_reports(cur, runs)
            erased.adapters = [
                n for (n,) in cur.execute("SELECT served_name FROM adapters WHERE project = ? ORDER BY version",
                                          [project]).fetchall()
            ]  # fmt: skip
            erased.snapshot_runs = [r for r in runs if (self._runs_dir / r / SNAPSHOT_DIR).exists()]
            for table in (
                "adapters",
                "rollouts",
                "runs",
                "events",
                "api_keys",
                "upstream_failures",
                "gate_configs",
                "files",  # their content is under <data_dir>/projects/<project>/
                "fine_tuning_jobs",
            ):
                cur.execute(f"DELETE FROM {table} WHERE project = ?", [project])
            cur.execute("DELETE FROM projects WHERE name = ?", [project])
            erased.files = [*(str(p) for p in paths), *(str(self._runs_dir / r) for r in runs)]
            self._pend(cur, erased.files, "project deleted", now)
            erased.job = self._add_job(cur, project, "project", {}, now)
            detail = {"by": by, **_counts(erased), "adapters": erased.adapters}
            Serving._insert_event(cur, Event(now, project, None, "project_deleted", detail))
        return erased

    # --- running a recorded deletion

    def finish(self, job: str) -> None:
        """Delete the job's rows in transactions of `batch_rows` logs with the feedback on them,
        then the rest of its feedback `batch_rows` at a time, then the job. Resumes where a killed
        one stopped. Each batch finds its rows again by the job's predicate: row ids would not do,
        as a checkpoint between two batches may renumber rows."""
        with self._db.reading() as cur:
            row = cur.execute("SELECT kind, project, params FROM erasure_jobs WHERE id = ?", [job]).fetchone()
        if row is None:
            return
        kind, project, params = row
        sel = _selection(kind, project, json.loads(params))
        n = int(self.batch_rows)
        if self._archive is not None:  # archived logs first: their files are rewritten without them

            def delete_feedback(ids: list[str]) -> None:
                for start in range(0, len(ids), n):
                    self._batch(
                        lambda cur, chunk=ids[start : start + n]: _deleted(
                            cur, "DELETE FROM feedback WHERE project = ? AND log_id IN (SELECT unnest(?))",
                            [project, chunk],
                        )
                    )  # fmt: skip

            self._archive.purge(project, sel.logs, _used(sel.params, sel.logs), delete_feedback)
        while self._batch(lambda cur: self._delete_logs(cur, sel, n)) >= n:
            pass
        own = f"DELETE FROM feedback WHERE rowid IN (SELECT rowid FROM feedback WHERE {sel.own_feedback} LIMIT {n})"
        while self._batch(lambda cur: int(cur.execute(own, _used(sel.params, own)).fetchone()[0])) >= n:
            pass
        with self._db.transaction() as cur:
            cur.execute("DELETE FROM erasure_jobs WHERE id = ?", [job])

    @staticmethod
    def _delete_logs(cur: duckdb.DuckDBPyConnection, sel: _Selection, n: int) -> int:
        """Delete up to `n` of the selected logs and the feedback on them; how many logs."""
        ids = [
            i
            for (i,) in cur.execute(
                f"SELECT id FROM logs WHERE {sel.logs} LIMIT {n}", _used(sel.params, sel.logs)
            ).fetchall()
        ]
        if ids:
            project = sel.params["project"]
            cur.execute(
                "DELETE FROM feedback WHERE project = ? AND log_id IN (SELECT unnest(?))", [project, ids]
            )
            cur.execute("DELETE FROM logs WHERE project = ? AND id IN (SELECT unnest(?))", [project, ids])
        return len(ids)

    def unfinished_jobs(self) -> list[str]:
        with self._db.reading() as cur:
            return [
                j for (j,) in cur.execute("SELECT id FROM erasure_jobs ORDER BY created_at, id").fetchall()
            ]

    def pending_deletions(self) -> list[str]:
        with self._db.reading() as cur:
            return [p for (p,) in cur.execute("SELECT path FROM pending_deletions ORDER BY path").fetchall()]

    def clear_pending(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if not paths:
            return
        with self._db.transaction() as cur:
            cur.executemany("DELETE FROM pending_deletions WHERE path = ?", [[p] for p in paths])

    def _batch(self, work: Callable[[duckdb.DuckDBPyConnection], int]) -> int:
        """Run one batch in its own transaction, again if a concurrent write to its rows aborts it."""
        for attempt in range(_ATTEMPTS):
            try:
                with self._db.transaction() as cur:
                    return work(cur)
            except duckdb.TransactionException:
                if attempt == _ATTEMPTS - 1:
                    raise StoreUnavailable(
                        "the deletion kept conflicting with concurrent writes to the same rows; it resumes at "
                        "the next start"
                    ) from None
        raise AssertionError("unreachable")

    # --- inside the recording transaction

    def _record(
        self,
        project: str,
        kind: str,
        params: dict[str, Any],
        now: datetime,
        event: str,
        detail: dict[str, Any],
        if_nothing: NotFound | None = None,
    ) -> Erased:
        sel = _selection(kind, project, params)
        for attempt in range(_ATTEMPTS):
            try:
                with self._db.transaction() as cur:
                    self._see_archive(cur, project)
                    erased = self._record_in(cur, project, sel, now)
                    if if_nothing and not (erased.logs or erased.feedback or erased.snapshot_runs):
                        raise if_nothing
                    erased.job = self._add_job(cur, project, kind, params, now)
                    Serving._insert_event(
                        cur, Event(now, project, None, event, {**detail, **_counts(erased)})
                    )
                    return erased
            except duckdb.TransactionException:
                if attempt == _ATTEMPTS - 1:
                    raise StoreUnavailable(
                        "the deletion kept conflicting with concurrent writes to the same rows; retry"
                    ) from None
        raise AssertionError("unreachable")

    def _record_in(
        self, cur: duckdb.DuckDBPyConnection, project: str, sel: _Selection, now: datetime
    ) -> Erased:
        runs = cur.execute(
            "SELECT id, stats->>'$.adapter' FROM runs WHERE project = $project ORDER BY started_at",
            {"project": project},
        ).fetchall()
        hits = self._snapshot_hits(cur, [r for r, _ in runs], sel)
        (first_received,) = cur.execute(
            f"SELECT min(received_at) FROM feedback WHERE {sel.feedback}", _used(sel.params, sel.feedback)
        ).fetchone()
        erased = self._count(cur, sel)
        erased.snapshot_runs = sorted(hits)
        quoted = [
            run for run, files in hits.items() if any(Path(f).name.startswith("holdout") for f in files)
        ]
        erased.eval_reports = self._delete_reports(cur, quoted)
        erased.files = [
            *(str(self._runs_dir / run / SNAPSHOT_DIR) for run in erased.snapshot_runs),
            *(str(self._runs_dir / run / REPORT_FILE) for run in quoted),
        ]
        run_adapters = {run: adapter for run, adapter in runs if adapter}
        self._mark_adapters(cur, project, hits, run_adapters, first_received, now, erased)
        self._pend(cur, erased.files, "erasure", now)
        return erased

    @staticmethod
    def _count(cur: duckdb.DuckDBPyConnection, sel: _Selection) -> Erased:
        (feedback,) = cur.execute(
            f"SELECT count(*) FROM feedback WHERE {sel.feedback}", _used(sel.params, sel.feedback)
        ).fetchone()
        (logs,) = cur.execute(
            f"SELECT count(*) FROM logs WHERE {sel.logs}", _used(sel.params, sel.logs)
        ).fetchone()
        return Erased(logs=int(logs), feedback=int(feedback))

    @staticmethod
    def _add_job(
        cur: duckdb.DuckDBPyConnection, project: str, kind: str, params: dict[str, Any], now: datetime
    ) -> str:
        job = f"erase-{now:%Y%m%d%H%M%S}-{secrets.token_hex(4)}"
        cur.execute(
            "INSERT INTO erasure_jobs (id, project, kind, params, created_at) VALUES (?, ?, ?, ?, ?)",
            [job, project, kind, json.dumps(params), now],
        )
        return job

    def _snapshot_hits(
        self, cur: duckdb.DuckDBPyConnection, runs: list[str], sel: _Selection
    ) -> dict[str, list[str]]:
        """Per run, the snapshot files that hold a selected row."""
        files = [
            str(p) for run in runs for p in sorted((self._runs_dir / run / SNAPSHOT_DIR).glob("*.parquet"))
        ]
        if not files or sel.snapshot_rows is None:
            return {}
        rows = cur.execute(
            "SELECT DISTINCT filename FROM read_parquet($files, filename = true, union_by_name = true)"
            f" WHERE {sel.snapshot_rows}",
            _used({**sel.params, "files": files}, sel.snapshot_rows + "$files"),
        ).fetchall()
        hits: dict[str, list[str]] = {}
        for (name,) in rows:
            hits.setdefault(Path(name).parent.parent.name, []).append(name)
        return hits

    def _mark_adapters(
        self,
        cur: duckdb.DuckDBPyConnection,
        project: str,
        hits: dict[str, list[str]],
        run_adapters: dict[str, str],
        first_received: datetime | None,
        now: datetime,
        erased: Erased,
    ) -> None:
        """Mark, in their lineage, the adapters trained on an affected snapshot and their
        descendants (certain), and those trained after the data arrived on a snapshot that is gone
        (possible)."""
        adapters = cur.execute(
            "SELECT served_name, version, parent_version, snapshot_sha256, created_at, method,"
            " manifest->>'$.run_id', erased_data FROM adapters WHERE project = ? ORDER BY version",
            [project],
        ).fetchall()
        shas = {_manifest_sha(self._runs_dir / run / SNAPSHOT_DIR) for run in hits} - {None}
        certain = {name for name, _, _, sha, *_ in adapters if sha in shas}
        certain |= {run_adapters[run] for run in hits if run in run_adapters}
        by_version = {version: name for name, version, *_ in adapters}
        changed = True
        while changed:  # descendants learnt from their parents' weights
            changed = False
            for name, _, parent, *_ in adapters:
                if name not in certain and parent is not None and by_version.get(parent) in certain:
                    certain.add(name)
                    changed = True
        possible = set()
        if first_received is not None:
            for name, version, _, _, created, method, run_id, _ in adapters:
                trained_here = run_id is not None and method not in ("null", "external")
                gone = run_id is not None and not (self._runs_dir / run_id / SNAPSHOT_DIR).exists()
                if name not in certain and version > 0 and trained_here and gone and created > first_received:
                    possible.add(name)
        for name, *_, marks in adapters:
            if name in certain or name in possible:
                entry = {"at": now.isoformat(), "certain": name in certain}
                updated = [*(json.loads(marks) if marks else []), entry]
                cur.execute(
                    "UPDATE adapters SET erased_data = ? WHERE project = ? AND served_name = ?",
                    [json.dumps(updated), project, name],
                )
        erased.adapters = [n for n, *_ in adapters if n in certain]
        erased.possible_adapters = [n for n, *_ in adapters if n in possible]

    @staticmethod
    def _delete_reports(cur: duckdb.DuckDBPyConnection, runs: list[str]) -> int:
        if not runs:
            return 0
        (n,) = cur.execute("DELETE FROM eval_reports WHERE run_id IN (SELECT unnest(?))", [runs]).fetchone()
        return int(n)

    @staticmethod
    def _pend(cur: duckdb.DuckDBPyConnection, paths: list[str], reason: str, now: datetime) -> None:
        if paths:
            cur.executemany(
                "INSERT INTO pending_deletions (path, reason, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [[p, reason, now] for p in paths],
            )


def _deleted(cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> int:
    (n,) = cur.execute(sql, params).fetchone()
    return int(n)


def _used(params: dict[str, Any], sql: str) -> dict[str, Any]:
    """The named parameters `sql` uses (DuckDB refuses unused ones)."""
    return {k: v for k, v in params.items() if f"${k}" in sql}


def _manifest_sha(snapshot_dir: Path) -> str | None:
    try:
        return str(msgspec.json.decode((snapshot_dir / "manifest.json").read_bytes())["sha256"])
    except (OSError, msgspec.DecodeError, KeyError, TypeError):
        return None


def _counts(erased: Erased) -> dict[str, Any]:
    return {
        "logs_deleted": erased.logs,
        "feedback_deleted": erased.feedback,
        "snapshots_deleted": erased.snapshot_runs,
        "eval_reports_deleted": erased.eval_reports,
        "adapters_marked": erased.adapters + erased.possible_adapters,
    }
