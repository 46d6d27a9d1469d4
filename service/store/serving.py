"""Adapters, rollouts and the audit trail of events.

A rollout transition (new state of the project's rollout, new adapter states, one event) is
written in one transaction: after a crash the database holds either the old state or the new.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from deploy.online_gate import ArmCounts, p95_lower_quantile
from deploy.rollout import Rollout, StateChange
from formats.manifest import AdapterManifest, decode_manifest
from service.config import FeedbackSettings
from service.errors import NotFound
from service.store.db import Database

_encode = msgspec.json.encode


class AdapterRecord(msgspec.Struct, kw_only=True):
    """One adapter version of a project."""

    project: str
    version: int
    served_name: str
    path: str
    parent_version: int | None
    method: str
    snapshot_sha256: str | None
    state: str
    created_at: datetime
    updated_at: datetime
    manifest: AdapterManifest | None = None
    """What made it (`formats.manifest`); None for an adapter trained elsewhere."""
    fingerprint: list[str] | None = None
    erased_data: list[dict[str, Any]] = []
    """Marks left by deletions of data this adapter was (or may have been) trained on."""


class Event(msgspec.Struct):
    """One row of the audit trail."""

    at: datetime
    project: str | None
    run_id: str | None
    kind: str
    detail: dict[str, Any]


_ADAPTER_COLUMNS = (
    "project, version, served_name, path, parent_version, method, snapshot_sha256, state, created_at, "
    "updated_at, manifest, fingerprint"
)


def _adapter(row: tuple[Any, ...]) -> AdapterRecord:
    *head, manifest, fingerprint, erased = row
    return AdapterRecord(
        **dict(zip(_ADAPTER_COLUMNS.split(", ")[:-2], head, strict=True)),
        manifest=_manifest(manifest, head[2]),
        fingerprint=msgspec.json.decode(fingerprint) if fingerprint else None,
        erased_data=msgspec.json.decode(erased) if erased else [],
    )


def _manifest(stored: str | None, served_name: str) -> AdapterManifest | None:
    """A stored manifest: `{}` (none) is None; one a newer Ratchet stored is `SchemaVersionError`."""
    if not stored or stored.strip() == "{}":
        return None
    return decode_manifest(stored, f"the manifest stored with {served_name}")


class Serving:
    """Reads and writes what each project serves."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def next_version(self, project: str) -> int:
        with self._db.reading() as cur:
            (latest,) = cur.execute(
                "SELECT max(version) FROM adapters WHERE project = ?", [project]
            ).fetchone()
        return 1 if latest is None else latest + 1

    def add_adapter(self, record: AdapterRecord, event: Event | None = None) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                f"INSERT INTO adapters ({_ADAPTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    record.project, record.version, record.served_name, record.path, record.parent_version,
                    record.method, record.snapshot_sha256, record.state, record.created_at, record.updated_at,
                    "{}" if record.manifest is None else _encode(record.manifest).decode(),
                    None if record.fingerprint is None else _encode(record.fingerprint).decode(),
                ],
            )  # fmt: skip
            if event:
                self._insert_event(cur, event)

    def remove_adapter(self, served_name: str, event: Event) -> None:
        """Forget a version that was recorded but refused before anything loaded it (its canary
        could not start): no adapter record is left behind; `event` says why (the audit keeps it)."""
        with self._db.transaction() as cur:
            cur.execute("DELETE FROM adapters WHERE served_name = ?", [served_name])
            self._insert_event(cur, event)

    def set_adapter_state(
        self, served_name: str, state: str, now: datetime, event: Event | None = None
    ) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE adapters SET state = ?, updated_at = ? WHERE served_name = ?",
                [state, now, served_name],
            )
            if event:
                self._insert_event(cur, event)

    def set_fingerprint(self, served_name: str, answers: list[str]) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE adapters SET fingerprint = ? WHERE served_name = ?",
                [_encode(answers).decode(), served_name],
            )

    def adapters(self, project: str | None = None) -> list[AdapterRecord]:
        where, params = ("WHERE project = ?", [project]) if project else ("", [])
        with self._db.reading() as cur:
            rows = cur.execute(
                f"SELECT {_ADAPTER_COLUMNS}, erased_data FROM adapters {where} ORDER BY project, version",
                params,
            ).fetchall()
        return [_adapter(r) for r in rows]

    def adapter(self, served_name: str) -> AdapterRecord:
        with self._db.reading() as cur:
            row = cur.execute(
                f"SELECT {_ADAPTER_COLUMNS}, erased_data FROM adapters WHERE served_name = ?", [served_name]
            ).fetchone()
        if row is None:
            raise NotFound(f"no adapter {served_name!r}: see `ratchet adapters list`")
        return _adapter(row)

    def rollouts(self) -> dict[str, Rollout]:
        with self._db.reading() as cur:
            rows = cur.execute(
                "SELECT project, champion, previous, candidate, fraction, canary_started_at FROM rollouts"
            ).fetchall()
        return {
            r[0]: Rollout(
                project=r[0],
                champion=r[1],
                previous=r[2],
                candidate=r[3],
                fraction=r[4],
                canary_started_at=r[5],
            )
            for r in rows
        }

    def save_rollout(
        self, rollout: Rollout, changes: tuple[StateChange, ...], event: Event, now: datetime
    ) -> None:
        """Store the project's new rollout, its adapters' new states and the event, atomically."""
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO rollouts (project, champion, previous, candidate, fraction, canary_started_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project) DO UPDATE SET champion = excluded.champion,"
                " previous = excluded.previous, candidate = excluded.candidate, fraction = excluded.fraction,"
                " canary_started_at = excluded.canary_started_at, updated_at = excluded.updated_at",
                [
                    rollout.project, rollout.champion, rollout.previous, rollout.candidate, rollout.fraction,
                    rollout.canary_started_at, now,
                ],
            )  # fmt: skip
            for change in changes:
                cur.execute(
                    "UPDATE adapters SET state = ?, updated_at = ? WHERE served_name = ?",
                    [change.state, now, change.served_name],
                )
            self._insert_event(cur, event)

    def arm_counts(
        self,
        project: str,
        served_name: str,
        since: datetime,
        weights: FeedbackSettings | None = None,
        *,
        per_user: int | None = None,
    ) -> ArmCounts:
        """Live numbers of one adapter since `since` (server receive time): thumbs on its answers,
        requests (answered, and failed without an answer), upstream failures among them (the
        gateway's, `upstream_failures`), p95 latency of the answered. A verdict without a thumb counts by its implicit feedback: a
        regenerate as a thumbs-down of `weights.regenerated_weight`, a copy as a thumbs-up of
        `copied_weight`, app events by `event_weights`; these fractions are summed per arm and
        rounded to whole votes for the test. Each end user's first `per_user` verdicts count at
        most (in the order the server received them; the end user as the snapshot's cap reads it,
        an anonymous verdict is its own user), so one user flooding thumbs cannot decide a canary."""
        weights = weights or FeedbackSettings()
        events = list(weights.event_weights.items())
        event_sum = (
            " + ".join(
                f"CASE WHEN list_contains(f.events, ${i * 2 + 1}) THEN ${i * 2 + 2} ELSE 0 END"
                for i in range(len(events))
            )
            or "0"
        )
        implicit = (
            f"(-${len(events) * 2 + 1} * coalesce(f.regenerated, false)::INTEGER"
            f" + ${len(events) * 2 + 2} * coalesce(f.copied, false)::INTEGER + {event_sum})"
        )
        n = len(events) * 2 + 2
        params: list[Any] = [v for pair in events for v in pair]
        params += [weights.regenerated_weight, weights.copied_weight, project, served_name, since]
        params.append(per_user if per_user is not None else 2**62)
        with self._db.reading() as cur:
            up, down, implicit_up, implicit_down = cur.execute(
                "SELECT count(*) FILTER (rating = 1), count(*) FILTER (rating = -1),"
                " coalesce(sum(implicit) FILTER (rating IS NULL AND implicit > 0), 0),"
                " coalesce(-sum(implicit) FILTER (rating IS NULL AND implicit < 0), 0) FROM ("
                f" SELECT rating, implicit, row_number() OVER ("
                "   PARTITION BY who, CASE WHEN who IS NULL THEN log_id END ORDER BY received_at, log_id) AS nth"
                f" FROM (SELECT f.rating, {implicit} AS implicit, f.log_id, f.received_at,"
                "   CASE WHEN f.attributed AND f.end_user <> '' THEN f.end_user"
                "    ELSE coalesce(nullif(l.end_user, ''), nullif(f.end_user, '')) END AS who"
                " FROM logs l JOIN feedback f ON f.project = l.project AND f.log_id = l.id"
                f" WHERE l.project = ${n + 1} AND l.adapter = ${n + 2} AND l.received_at >= ${n + 3}"
                f" AND (f.rating IS NOT NULL OR {implicit} <> 0))"
                f") WHERE nth <= ${n + 4}",
                params,
            ).fetchone()
            answered, p95_ms = cur.execute(
                "SELECT count(*), quantile_cont(latency_ms, 0.95) FROM logs"
                " WHERE project = ? AND adapter = ? AND received_at >= ?",
                [project, served_name, since],
            ).fetchone()
            (p95_lower_ms,) = cur.execute(
                f"SELECT quantile_cont(latency_ms, {p95_lower_quantile(answered)!r}) FROM logs"
                " WHERE project = ? AND adapter = ? AND received_at >= ?",
                [project, served_name, since],
            ).fetchone()
            errors, unanswered = cur.execute(
                "SELECT count(*), count(*) FILTER (log_id IS NULL) FROM upstream_failures"
                " WHERE project = ? AND adapter = ? AND failed_at >= ?",
                [project, served_name, since],
            ).fetchone()
        return ArmCounts(
            up=up + round(implicit_up),
            down=down + round(implicit_down),
            requests=answered + unanswered,
            upstream_errors=errors,
            latency_p95_seconds=None if p95_ms is None else p95_ms / 1000,
            latency_p95_lower_seconds=None if p95_lower_ms is None else p95_lower_ms / 1000,
        )

    def add_event(self, event: Event) -> None:
        with self._db.transaction() as cur:
            self._insert_event(cur, event)

    def events(self, project: str | None = None, limit: int = 200) -> list[Event]:
        where, params = ("WHERE project = ?", [project]) if project else ("", [])
        with self._db.reading() as cur:
            rows = cur.execute(
                f'SELECT "at", project, run_id, kind, detail FROM events {where} ORDER BY "at" DESC LIMIT {int(limit)}',
                params,
            ).fetchall()
        return [Event(r[0], r[1], r[2], r[3], msgspec.json.decode(r[4])) for r in rows]

    @staticmethod
    def _insert_event(cur: Any, event: Event) -> None:
        cur.execute(
            'INSERT INTO events ("at", project, run_id, kind, detail) VALUES (?, ?, ?, ?, ?)',
            [event.at, event.project, event.run_id, event.kind, _encode(event.detail).decode()],
        )
