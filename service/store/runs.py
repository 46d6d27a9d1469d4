"""Training runs: a persisted state machine per project, one active run at a time."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import msgspec

from formats.run import RunStateName, RunStats
from service.errors import Conflict, NotFound
from service.store.db import Database
from service.store.serving import Event, Serving

RunState = RunStateName
ACTIVE: tuple[RunState, ...] = ("pending", "snapshot", "training", "evaluating", "canary")
_COLUMNS = "id, project, trigger, state, started_at, updated_at, finished_at, error, stats"


class RunRecord(msgspec.Struct, kw_only=True):
    """One run: where it is, and what each stage found (`stats`, `formats.run.RunStats`)."""

    id: str
    project: str
    trigger: str
    state: RunState
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    stats: RunStats = msgspec.field(default_factory=RunStats)


def _run(row: tuple[Any, ...]) -> RunRecord:
    """A row as a record; its stats are checked for their schema version (`SchemaVersionError`
    for stats a newer Ratchet wrote)."""
    *head, stats = row
    fields = dict(zip(_COLUMNS.split(", ")[:-1], head, strict=True))
    return RunRecord(**fields, stats=RunStats.decode(stats, f"the stats of run {fields['id']}"))


class EvalReportText(msgspec.Struct):
    """An evaluation report as stored: JSON for machines, Markdown for people."""

    json: str
    markdown: str


class Runs:
    """Reads and writes runs; every state change is also an event."""

    def __init__(self, db: Database, serving: Serving) -> None:
        self._db = db
        self._serving = serving
        self._lock = threading.Lock()

    def create(self, run: RunRecord) -> None:
        """Store a new run; `Conflict` if the project already has one in progress (single flight)."""
        with self._lock, self._db.transaction() as cur:
            active = cur.execute(
                f"SELECT id, state FROM runs WHERE project = ? AND state IN {ACTIVE}", [run.project]
            ).fetchone()
            if active:
                raise Conflict(
                    f"project {run.project} already has run {active[0]} in state {active[1]}: wait for it"
                )
            cur.execute(
                f"INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run.id, run.project, run.trigger, run.state, run.started_at, run.updated_at, None, None,
                 msgspec.json.encode(run.stats).decode()],
            )  # fmt: skip
            self._serving._insert_event(
                cur, Event(run.started_at, run.project, run.id, "run_started", {"trigger": run.trigger})
            )

    def update(
        self,
        run_id: str,
        now: datetime,
        *,
        state: RunState | None = None,
        stats: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> RunRecord:
        """Move a run to `state` and/or set fields of its stats (`RunStats` field names: another
        name is a TypeError); a terminal state finishes it, and a finished run stays finished.

        Updates of runs are serialised: a cancelled run's stage may still have an update in
        flight on a worker thread while the cancel finishes the run, and two transactions
        updating one row conflict in DuckDB ("Conflict on update"); the late stage update then
        comes after the end and cannot move the run back to an active state."""
        with self._lock, self._db.transaction() as cur:
            run = _run(cur.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", [run_id]).fetchone())
            merged = msgspec.structs.replace(run.stats, **(stats or {}))
            new_state = run.state if run.state not in ACTIVE else (state or run.state)
            finished = (run.finished_at or now) if new_state not in ACTIVE else None
            cur.execute(
                "UPDATE runs SET state = ?, updated_at = ?, finished_at = ?, error = coalesce(?, error), stats = ?"
                " WHERE id = ?",
                [new_state, now, finished, error, msgspec.json.encode(merged).decode(), run_id],
            )
            if new_state != run.state:
                detail = {"from": run.state, "to": new_state, **({"error": error} if error else {})}
                self._serving._insert_event(cur, Event(now, run.project, run_id, f"run_{new_state}", detail))
        return RunRecord(**{**msgspec.structs.asdict(run), "state": new_state, "updated_at": now,
                            "finished_at": finished, "error": error or run.error, "stats": merged})  # fmt: skip

    def get(self, run_id: str) -> RunRecord:
        with self._db.reading() as cur:
            row = cur.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}: see `ratchet runs`")
        return _run(row)

    def list(
        self, project: str | None = None, *, active_only: bool = False, limit: int = 50
    ) -> list[RunRecord]:
        clauses, params = [], []
        if project:
            clauses.append("project = ?")
            params.append(project)
        if active_only:
            clauses.append(f"state IN {ACTIVE}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._db.reading() as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM runs {where} ORDER BY started_at DESC LIMIT {int(limit)}", params
            ).fetchall()
        return [_run(r) for r in rows]

    def save_report(
        self, run_id: str, project: str, candidate: str, incumbent: str, promote: bool, report: bytes, markdown: str,
        now: datetime,
    ) -> None:  # fmt: skip
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO eval_reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, project, candidate, incumbent, promote, now, report.decode(), markdown],
            )

    def report_for_adapter(self, served_name: str) -> EvalReportText | None:
        """The newest evaluation report whose candidate was this adapter version, if any."""
        with self._db.reading() as cur:
            row = cur.execute(
                "SELECT CAST(report AS VARCHAR), markdown FROM eval_reports WHERE candidate = ?"
                " ORDER BY created_at DESC LIMIT 1",
                [served_name],
            ).fetchone()
        return None if row is None else EvalReportText(json=str(row[0]), markdown=str(row[1]))

    def report_markdown(self, run_id: str) -> str:
        return self._report(run_id, "markdown")

    def report_json(self, run_id: str) -> str:
        """The report as `evals.Report.to_json` wrote it (a JSON document, as text)."""
        return self._report(run_id, "report")

    def _report(self, run_id: str, column: str) -> str:
        with self._db.reading() as cur:
            row = cur.execute(f"SELECT {column} FROM eval_reports WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            raise NotFound(f"run {run_id!r} has no evaluation report (yet)")
        return str(row[0])
