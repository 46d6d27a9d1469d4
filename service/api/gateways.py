"""`POST /v1/gateways/sync` (the store): a `ratchet gateway` replica reports and gets what it
routes by; and the replica's own `/readyz` (`runtime` is then a
`service.gateway_replica.ReplicaRuntime`, typed Any: it imports these routes)."""

from __future__ import annotations

from typing import Any

from litestar import Response, get, post

from formats.gateway import GATEWAY_SCHEMA_VERSION, GatewayReport, GatewayState
from service.api.deps import needs
from service.api.health import Health
from service.domain import Principal
from service.errors import InvalidInput
from service.runtime import Runtime


@post("/v1/gateways/sync", status_code=200, summary="A gateway replica's sync", opt=needs("admin"))
async def sync_gateway(data: GatewayReport, principal: Principal, runtime: Runtime) -> GatewayState:
    """A replica's in-flight requests per adapter (an unload waits for them) and the upstream
    failures it saw (the online gate's error-rate guard counts them), answered with the routing
    table, which vLLM replicas serve each adapter, the projects and the API keys (sha256 only).
    Needs an admin key: the answer holds every project's keys' hashes."""
    if data.schema_version > GATEWAY_SCHEMA_VERSION:
        raise InvalidInput(
            f"the replica speaks gateway schema {data.schema_version}, this store {GATEWAY_SCHEMA_VERSION}: "
            "upgrade the store first",
            "schema_version",
        )
    for failure in data.failures:
        if failure.project in runtime.projects:
            runtime.capture.submit_upstream_failure(
                failure.project, failure.adapter, failure.reason, failure.log_id
            )
    runtime.gateways.record(data)
    return runtime.gateways.state(
        runtime.rollouts.routing, runtime.projects, runtime.keys.stored(), serving_up=runtime.serving_up
    )


@get("/readyz", summary="Ready to take traffic (a gateway replica)")
async def replica_readyz(runtime: Any) -> Response[Health]:
    """A `ratchet gateway` replica: ready when it has routing (from the store, or kept from
    before a restart) and every vLLM replica is healthy; the store being away is reported in
    the checks, with the logs spooled meanwhile, and does not make it unready."""
    ready, checks = await runtime.readiness()
    return Response(Health("ok" if ready else "unavailable", checks), status_code=200 if ready else 503)
