"""Training runs: start one now, follow them, read the offline gate's report."""

from __future__ import annotations

import asyncio

from litestar import Response, get, post

from formats.run import RunOut
from service.api.deps import needs, page_limit, scoped_project
from service.domain import Principal
from service.errors import NotFound
from service.runtime import Runtime
from service.store.runs import RunRecord


def run_out(run: RunRecord) -> RunOut:
    """A run as the API shows it (`formats.run.RunOut`), not the store's record."""
    return RunOut(
        id=run.id, project=run.project, trigger=run.trigger, state=run.state, started_at=run.started_at,
        updated_at=run.updated_at, finished_at=run.finished_at, error=run.error, stats=run.stats,
    )  # fmt: skip


@post(
    "/v1/projects/{name:str}/runs",
    status_code=202,
    summary="Start a training run now",
    response_description="The run, started: follow it with `GET /v1/runs/{id}`.",
    opt=needs("manage"),
)
async def start_run(name: str, principal: Principal, runtime: Runtime) -> RunOut:
    """Snapshot, train, evaluate and (if it wins) canary a new adapter. 409 while a run is active."""
    assert runtime.pipeline is not None
    return run_out(await runtime.pipeline.start(scoped_project(principal, runtime, name), "manual"))


@get("/v1/runs", summary="List runs", sync_to_thread=True, opt=needs("read"))
def list_runs(
    principal: Principal, runtime: Runtime, project: str | None = None, limit: int = 50
) -> list[RunOut]:
    """Newest first, `limit` 1 to 1,000; a project key sees its own project's runs."""
    limit = page_limit(limit, 1000)
    if principal.project is None and project is None:
        return [run_out(r) for r in runtime.runs.list(limit=limit)]
    return [run_out(r) for r in runtime.runs.list(scoped_project(principal, runtime, project), limit=limit)]


def _visible(run_id: str, principal: Principal, runtime: Runtime) -> RunRecord:
    run = runtime.runs.get(run_id)
    if principal.project is not None and run.project != principal.project:
        raise NotFound(f"no run {run_id!r}: see `ratchet runs`")
    return run


@get("/v1/runs/{run_id:str}", summary="One run", sync_to_thread=True, opt=needs("read"))
def get_run(run_id: str, principal: Principal, runtime: Runtime) -> RunOut:
    """Its state, stage durations, training progress, snapshot and eval statistics."""
    return run_out(_visible(run_id, principal, runtime))


@post("/v1/runs/{run_id:str}/cancel", status_code=200, summary="Cancel a run", opt=needs("manage"))
async def cancel_run(run_id: str, principal: Principal, runtime: Runtime) -> RunOut:
    """Stop a run before its canary: its trainer gets SIGTERM, it ends `cancelled`, serving is
    untouched. 409 naming the state for a run that has finished or is in canary."""
    assert runtime.pipeline is not None
    await asyncio.to_thread(_visible, run_id, principal, runtime)
    return run_out(await runtime.pipeline.cancel(run_id))


@get(
    "/v1/runs/{run_id:str}/report",
    summary="The run's eval report",
    media_type="text/markdown",  # Litestar adds the charset
    sync_to_thread=True,
    opt=needs("read"),
)
def get_report(run_id: str, principal: Principal, runtime: Runtime) -> str:
    """The offline gate's report as Markdown: per-scorer tables, intervals, decision, examples."""
    _visible(run_id, principal, runtime)
    return runtime.runs.report_markdown(run_id)


@get(
    "/v1/runs/{run_id:str}/report.json",
    summary="The run's eval report as JSON",
    media_type="application/json",
    sync_to_thread=True,
    opt=needs("read"),
)
def get_report_json(run_id: str, principal: Principal, runtime: Runtime) -> Response[bytes]:
    """The offline gate's report as JSON: config (no secrets), per-scorer results with eligibility
    and calibration figures, intervals, the decision and its reasons, answers, timings."""
    _visible(run_id, principal, runtime)
    return Response(runtime.runs.report_json(run_id).encode(), media_type="application/json")
