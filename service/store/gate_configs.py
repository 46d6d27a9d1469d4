"""The offline gate's configuration per project, versioned: each change is a new row and an event,
in one transaction; the newest version is in effect."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from service.domain import GateConfig
from service.errors import Conflict, NotFound
from service.store.db import Database
from service.store.serving import Event, Serving

_COLUMNS = "project, version, config, created_at, created_by"


class StoredGateConfig(msgspec.Struct, kw_only=True):
    """One version of a project's gate config (the judge's api_key included: never answer with it)."""

    project: str
    version: int
    config: GateConfig
    created_at: datetime
    created_by: str | None


def _stored(row: tuple[Any, ...]) -> StoredGateConfig:
    project, version, config, created_at, created_by = row
    return StoredGateConfig(
        project=project,
        version=version,
        config=msgspec.json.decode(config, type=GateConfig),
        created_at=created_at,
        created_by=created_by,
    )


class GateConfigs:
    """Reads and writes gate config versions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def current(self, project: str) -> StoredGateConfig | None:
        """The newest version, or None when the project never had one."""
        with self._db.reading() as cur:
            row = cur.execute(
                f"SELECT {_COLUMNS} FROM gate_configs WHERE project = ? ORDER BY version DESC LIMIT 1",
                [project],
            ).fetchone()
        return None if row is None else _stored(row)

    def get(self, project: str, version: int) -> StoredGateConfig:
        """One version; `NotFound` names the versions there are."""
        with self._db.reading() as cur:
            row = cur.execute(
                f"SELECT {_COLUMNS} FROM gate_configs WHERE project = ? AND version = ?", [project, version]
            ).fetchone()
            (latest,) = cur.execute(
                "SELECT max(version) FROM gate_configs WHERE project = ?", [project]
            ).fetchone()
        if row is None:
            have = f"versions 1 to {latest}" if latest else "no version yet"
            raise NotFound(f"project {project} has no gate config version {version} ({have})")
        return _stored(row)

    def projects(self) -> set[str]:
        """Projects that have a gate config."""
        with self._db.reading() as cur:
            return {p for (p,) in cur.execute("SELECT DISTINCT project FROM gate_configs").fetchall()}

    def save(
        self,
        project: str,
        config: GateConfig,
        now: datetime,
        by: str | None,
        event: Event,
        *,
        expected_version: int | None = None,
    ) -> StoredGateConfig:
        """Store `config` as the project's next version with `event` (its detail gains the
        version). `Conflict` when `expected_version` is given and is not the newest version (0: none)."""
        with self._db.transaction() as cur:
            (latest,) = cur.execute(
                "SELECT coalesce(max(version), 0) FROM gate_configs WHERE project = ?", [project]
            ).fetchone()
            if expected_version is not None and expected_version != latest:
                raise Conflict(
                    f"project {project}'s gate config is at version {latest}, not {expected_version}: "
                    "read it again (GET .../gate) and re-apply the change"
                )
            version = int(latest) + 1
            cur.execute(
                f"INSERT INTO gate_configs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                [project, version, msgspec.json.encode(config).decode(), now, by],
            )
            Serving._insert_event(
                cur,
                Event(
                    event.at, event.project, event.run_id, event.kind, {**event.detail, "version": version}
                ),
            )
        return StoredGateConfig(
            project=project, version=version, config=config, created_at=now, created_by=by
        )
