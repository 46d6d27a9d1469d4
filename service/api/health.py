"""Liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import SharedRuntime, authenticate
from service.errors import Forbidden
from service.runtime import Runtime


class Health(msgspec.Struct):
    status: str
    checks: dict[str, str] = {}


@get("/healthz", summary="Alive", include_in_schema=True)
async def healthz() -> Health:
    """The process answers."""
    return Health("ok")


@get("/readyz", summary="Ready to take traffic")
async def readyz(runtime: Runtime) -> Response[Health]:
    """The database answers, each base model has a healthy vLLM replica (one that is down is
    listed as unreachable: it gets no requests, the others answer) and the serving adapters were
    loaded once since start; 503 (with the failing check) otherwise."""
    checks: dict[str, str] = {}
    try:
        await asyncio.to_thread(_ping, runtime)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc}"
    health = await runtime.fleets.health()
    for url, healthy in health.items():
        checks[f"vllm {url}"] = "ok" if healthy else "unreachable"
    # Right after a start the adapters are still being loaded: the gateway would answer 503.
    checks["serving"] = "ok" if runtime.serving_up else "loading adapters"
    ok = checks["database"] == checks["serving"] == "ok" and runtime.fleets.every_base_served(health)
    return Response(Health("ok" if ok else "unavailable", checks), status_code=200 if ok else 503)


def _ping(runtime: Runtime) -> None:
    with runtime.db.reading() as cur:
        cur.execute("SELECT 1").fetchone()


# Litestar appends `; charset=utf-8` to every text/ type: given twice, a strict scraper
# (Prometheus 3 parses the header) refuses the answer.
_EXPOSITION = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


@get("/metrics", summary="Prometheus metrics", media_type=MediaType.TEXT, sync_to_thread=True)
def metrics(request: Request[Any, Any, Any], runtime: SharedRuntime) -> Response[bytes]:
    """Prometheus text exposition of every `ratchet_*` metric. With `metrics_require_key`, only
    for an all-projects key with the `read` scope: the series name every project."""
    if runtime.settings.metrics_require_key:
        principal = authenticate(runtime, request.scope["headers"], "read")
        if principal.project is not None:
            raise Forbidden(
                "/metrics names every project: use a key for all projects "
                "(`ratchet keys create --all-projects --scope read`)"
            )
    return Response(generate_latest(runtime.metrics.registry), media_type=_EXPOSITION)
