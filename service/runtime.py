"""The running service's parts, built once at start and handed to handlers and jobs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from deploy.fleets import Fleets
from service.auth import KeyRing
from service.capture import Capture
from service.config import Settings
from service.gateway import Gateway
from service.gateways import GatewayRegistry
from service.metrics import Metrics
from service.project_settings import ProjectSettingsBook
from service.rollouts import Rollouts
from service.store.archive import Archive
from service.store.db import Database
from service.store.erasure import Erasures
from service.store.gate_configs import GateConfigs
from service.store.queries import Queries
from service.store.runs import Runs
from service.store.serving import Serving
from service.store.writer import GroupCommitWriter


@dataclass
class Runtime:
    """Settings, store, writer and the in-memory views that keep the hot path free of reads."""

    settings: Settings
    db: Database
    writer: GroupCommitWriter
    queries: Queries
    capture: Capture
    keys: KeyRing
    metrics: Metrics
    serving: Serving
    fleets: Fleets
    """The adapter manager of each base model (`vllm.models`) and which one serves a project."""
    gateway: Gateway
    rollouts: Rollouts
    runs: Runs
    erasures: Erasures
    project_settings: ProjectSettingsBook
    gate_configs: GateConfigs
    gateways: GatewayRegistry
    """The `ratchet gateway` replicas heard from (their in-flight requests hold an unload)."""
    projects: set[str] = field(default_factory=set)
    archive: Archive | None = None
    """The Parquet lake of old logs (None: only in tests that build a runtime by hand)."""
    serving_up: bool = False
    """Every project's serving adapters were loaded once since start (readiness waits for it)."""
    # service.pipeline.Pipeline, set by create_app for the handlers (the pipeline itself is handed
    # the parts it uses, not this object). Typed Any because Litestar resolves this dataclass's
    # annotations at request time.
    pipeline: Any = None
    # service.fine_tuning.FineTuning, set by create_app: files, jobs and the pipeline's job queue.
    fine_tuning: Any = None
    # threading.Lock values, typed Any for the same reason.
    data_locks: dict[str, Any] = field(default_factory=dict)

    def data_lock(self, project: str) -> threading.Lock:
        """Held while a snapshot of the project is cut and while its data is deleted, so that no
        snapshot copies rows an erasure is removing."""
        return self.data_locks.setdefault(project, threading.Lock())
