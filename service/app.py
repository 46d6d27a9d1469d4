"""The application factory: settings in, Litestar app out."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from formats.snapshot import SnapshotManifest
from service.api import (
    adapters,
    capture,
    erasure,
    fine_tuning,
    gate,
    gateway,
    gateways,
    health,
    keys,
    projects,
    runs,
    scores,
    traces,
)
from service.api import settings as project_settings_api
from service.api.deps import SCOPE_OPT, provide_principal, provide_runtime
from service.api.errors import EXCEPTION_HANDLERS
from service.api.openapi import publish_errors
from service.auth import KeyRing, mint_key
from service.capture import Capture
from service.clock import utcnow
from service.config import Settings
from service.erasure import finish_interrupted
from service.fine_tuning import FineTuning
from service.fleets import build_fleets
from service.gate_config import import_files
from service.gateway import Gateway
from service.gateways import GatewayRegistry
from service.keys import flush_key_use
from service.loop_lag import LoopLagProbe
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.project_settings import ProjectSettingsBook
from service.rollouts import Rollouts, bring_up_serving
from service.runtime import Runtime
from service.scheduler import build_scheduler
from service.store.archive import Archive
from service.store.db import Database, default_memory_limit_mib
from service.store.erasure import Erasures
from service.store.fine_tuning import FineTuningStore
from service.store.gate_configs import GateConfigs
from service.store.queries import Queries
from service.store.runs import Runs
from service.store.serving import Serving
from service.store.snapshot import export_snapshot
from service.store.writer import GroupCommitWriter

log = logging.getLogger("ratchet")

# The writer thread re-takes the GIL after every DuckDB call (and pyarrow releases it inside array
# building); while the event loop is busy each such wait lasts the switch interval, 5 ms by default.
# Single-log ingest, 32 connections: ~1,950 req/s at 0.5 ms, ~2,750 at 0.1 ms (30 µs: no better).
# Only a waiting thread forces a switch, so a short interval costs the event loop little.
GIL_SWITCH_INTERVAL_S = 0.0001
# Ingest allocates thousands of containers per request (decoded JSON) that live until their commit,
# so the default 700-allocation young generation collected them again and again: 1.5 of 4.6 ms of
# event-loop time per 200-log request went to the garbage collector.
GC_GEN0_THRESHOLD = 20_000


def tune_interpreter_for_serving() -> None:
    """Process-wide settings for `ratchet serve`: a hot event loop next to the writer thread.

    Call once the app is built: `gc.freeze()` moves everything alive (modules, the app, the
    runtime) out of the collector's reach, so full collections walk only what requests made.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def build_runtime(settings: Settings, metrics: Metrics | None = None) -> Runtime:
    """Open the store and build the in-memory views. The writer is started by the app."""
    metrics = metrics or Metrics()
    db = Database(
        settings.db_path,
        checkpoint_wal_mib=settings.writer.checkpoint_wal_mib,
        memory_limit_mib=settings.database.memory_limit_mib or default_memory_limit_mib(),
        temp_directory=Path(settings.database.temp_directory or Path(settings.data_dir) / "tmp"),
    )
    metrics.wal_bytes.set_function(db.wal_bytes)
    archive = Archive(
        db,
        settings.archive_url,
        file_rows=settings.archive.file_rows,
        delete_batch_rows=settings.archive.delete_batch_rows,
    )
    queries = Queries(db, archive)
    writer = GroupCommitWriter(
        db,
        metrics,
        max_batch_rows=settings.writer.max_batch_rows,
        max_queue_rows=settings.writer.max_queue_rows,
        linger_seconds=settings.writer.linger_ms / 1000,
        archive=archive,
    )
    capture = Capture(
        writer,
        metrics,
        max_batch_items=settings.max_batch_items,
        base_served_name=settings.vllm.base_served_name,
        adapters_of=queries.log_adapters,
    )
    serving = Serving(db)
    project_settings = ProjectSettingsBook(settings, queries.project_settings())
    fleets = build_fleets(settings, project_settings.base_name)
    rollouts = Rollouts(settings, serving, fleets, metrics, project_settings.effective)
    runtime = Runtime(
        settings=settings,
        db=db,
        writer=writer,
        queries=queries,
        capture=capture,
        keys=KeyRing(queries.list_keys(), settings.admin_key),
        metrics=metrics,
        serving=serving,
        fleets=fleets,
        gateway=Gateway(settings, fleets, capture, metrics, rollouts.routing),
        rollouts=rollouts,
        runs=Runs(db, serving),
        erasures=Erasures(db, settings.runs_dir, settings.erasure_batch_rows, archive),
        project_settings=project_settings,
        gate_configs=GateConfigs(db),
        gateways=GatewayRegistry(fleets),
        projects={p.name for p in queries.list_projects()},
        archive=archive,
    )
    for name in runtime.projects:
        metrics.init_project(name, fleets.base_of(name))
    import_files(runtime)  # a project's eval.json, once
    return runtime


def build_pipeline(runtime: Runtime) -> Pipeline:
    """The run pipeline over the runtime's parts (it is handed each part it uses, by name)."""
    settings = runtime.settings

    def cut_snapshot(project: str, out: Path) -> SnapshotManifest:
        with runtime.data_lock(project):  # never beside an erasure of the same project
            return export_snapshot(
                runtime.db, project, out, settings.snapshot, now=utcnow(), feedback=settings.feedback,
                archive=runtime.archive,
            )  # fmt: skip

    return Pipeline(
        settings=settings, project_settings=runtime.project_settings, projects=runtime.projects,
        runs=runtime.runs, serving=runtime.serving, queries=runtime.queries, gate_configs=runtime.gate_configs,
        rollouts=runtime.rollouts, cut_snapshot=cut_snapshot, metrics=runtime.metrics,
    )  # fmt: skip


def ensure_admin_key(runtime: Runtime) -> str | None:
    """At first start with no admin key configured, mint one; return it to show once."""
    if runtime.settings.auth_disabled or runtime.keys.has_admin():
        return None
    secret, key = mint_key(None, utcnow(), name="generated admin")
    runtime.queries.add_key(key)
    runtime.keys.add(key)
    return secret


class HttpMetrics:
    """ASGI middleware: request latency by route template, method and status class."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("path_template") or "unmatched"
            self.metrics.observe_http(route, scope.get("method", ""), status, time.perf_counter() - started)


def create_app(settings: Settings, runtime: Runtime | None = None) -> Litestar:
    """The Ratchet HTTP app. Opens the store at start-up and closes it at shutdown."""
    runtime = runtime or build_runtime(settings)

    pipeline = runtime.pipeline = build_pipeline(runtime)
    pipeline.jobs = runtime.fine_tuning = FineTuning(runtime, FineTuningStore(runtime.db))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime.writer.start()
        if runtime.archive is not None and (recovered := runtime.archive.recover()):
            log.warning("finished or undid %d archive moves interrupted by the restart", recovered)
        if finished := finish_interrupted(runtime):
            log.warning("finished %d deletions interrupted by the restart", finished)
        for run_id in pipeline.recover():
            log.warning("run %s was interrupted by the restart and is marked failed", run_id)
        for run_id in await runtime.fine_tuning.start_queued():
            log.info("run %s started for a fine-tuning job queued before the restart", run_id)
        probe = LoopLagProbe(runtime.metrics)
        probe.start()
        scheduler = build_scheduler(runtime, pipeline)
        startup = asyncio.get_running_loop().create_task(bring_up_serving(runtime))
        if settings.scheduler_enabled:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=False)
            startup.cancel()
            await probe.aclose()
            await pipeline.aclose()
            await runtime.gateway.aclose()  # logs still in flight go to the writer first
            try:
                flush_key_use(runtime)
            except Exception:
                log.exception("could not record when API keys were last used")
            await runtime.fleets.aclose()
            runtime.writer.stop()
            runtime.db.close()

    def metrics_middleware(app: ASGIApp) -> ASGIApp:
        return HttpMetrics(app, runtime.metrics)

    app = Litestar(
        route_handlers=[
            capture.post_logs,
            capture.post_feedback,
            capture.withdraw_feedback,
            traces.post_traces,
            scores.create_score,
            scores.remove_score,
            projects.create_project,
            projects.list_projects,
            projects.project_stats,
            projects.get_log,
            projects.export,
            gateway.chat_completions,
            gateway.completions,
            gateway.list_models,
            gateways.sync_gateway,
            adapters.list_adapters,
            adapters.get_rollout,
            adapters.register_adapter,
            adapters.list_events,
            adapters.promote,
            adapters.rollback,
            adapters.download_adapter,
            adapters.get_adapter,
            runs.start_run,
            runs.list_runs,
            runs.get_run,
            runs.get_report,
            runs.cancel_run,
            runs.get_report_json,
            keys.create_project_key,
            keys.create_key,
            keys.list_keys,
            keys.revoke_key,
            keys.rotate_key,
            erasure.delete_log,
            erasure.erase_end_user,
            erasure.delete_project,
            project_settings_api.get_settings,
            project_settings_api.patch_settings,
            gate.get_gate,
            gate.put_gate,
            fine_tuning.upload_route(settings.max_file_bytes),
            fine_tuning.list_files,
            fine_tuning.get_file,
            fine_tuning.get_file_content,
            fine_tuning.delete_file,
            fine_tuning.create_job,
            fine_tuning.list_jobs,
            fine_tuning.get_job,
            fine_tuning.list_job_events,
            fine_tuning.cancel_job,
            health.healthz,
            health.readyz,
            health.metrics,
        ],
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "principal": Provide(provide_principal, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[metrics_middleware],
        request_max_body_size=settings.max_body_bytes,
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="Ratchet",
            version="0.1.0",
            description="Capture feedback, train LoRA adapters, gate and roll them out into vLLM.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        logging_config=None,
        debug=False,
    )
    app.state.runtime = runtime
    _check_every_route_names_its_scope(app)
    publish_errors(app.openapi_schema)  # built once here, served as built
    return app


def _check_every_route_names_its_scope(app: Litestar) -> None:
    """A route that takes a `principal` must say which scope it needs (`opt=needs(...)`)."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if "principal" in inspect.signature(handler.fn).parameters and SCOPE_OPT not in handler.opt:
                raise RuntimeError(
                    f"route {route.path} takes a principal but names no scope: add opt=needs(...)"
                )
