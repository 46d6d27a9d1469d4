"""Request-scoped dependencies: who is calling, what they may do, which project they may touch.

Every route that takes a `principal` names the scope it needs in its handler's `opt`
(`opt=needs("read")`); `provide_principal` authenticates the key and checks that scope before the
handler runs, through the same `authenticate` the ingest fast path calls. `create_app` refuses a
route that takes a principal without naming a scope.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Annotated, Any

from litestar import Request
from litestar.datastructures import State
from litestar.params import Dependency

from service.auth import ADMIN_SCOPES, Scope, authorize
from service.domain import Principal
from service.errors import InvalidInput, NotFound
from service.runtime import Runtime

SharedRuntime = Annotated[Runtime, Dependency(skip_validation=True)]
"""The runtime, in routes a `ratchet gateway` replica serves too (the gateway's, `/metrics`): there
it is a `service.gateway_replica.ReplicaRuntime`, which has what those routes read."""

_DEV_PRINCIPAL = Principal("auth-disabled", None, frozenset(ADMIN_SCOPES))
SCOPE_OPT = "scope"


def needs(scope: Scope) -> dict[str, Any]:
    """A route handler's `opt` naming the scope its caller needs."""
    return {SCOPE_OPT: scope}


def provide_runtime(state: State) -> Runtime:
    return state.runtime  # type: ignore[no-any-return]


def provide_principal(request: Request[Any, Any, Any], runtime: SharedRuntime) -> Principal:
    """Authenticate the `Authorization: Bearer <key>` header (or `x-api-key`) and check the
    route's scope."""
    return authenticate(runtime, request.scope["headers"], request.route_handler.opt[SCOPE_OPT])


def authenticate(runtime: Runtime, headers: Iterable[tuple[bytes, bytes]], scope: Scope) -> Principal:
    """The principal for an ASGI scope's raw headers, allowed `scope`: raises `Unauthenticated`
    (no, unknown, revoked or expired key) or `Forbidden` (the key lacks the scope)."""
    if runtime.settings.auth_disabled:
        return _DEV_PRINCIPAL
    principal = runtime.keys.authenticate(_presented_key(headers))
    authorize(principal, scope)
    return principal


def _presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    # Read from the raw ASGI headers: Litestar's parsed `Headers` cost more than the key check.
    # HTTP Basic (Langfuse's SDKs send public:secret) presents the password as the key.
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
            if scheme.lower() == "basic":
                return _basic_password(token.strip())
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    return api_key


def _basic_password(token: str) -> str | None:
    try:
        user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password or user or None


def scoped_project(principal: Principal, runtime: Runtime, requested: str | None) -> str:
    """The project this request acts on. A project key only ever sees its own project.

    Another project's name gets the same 404 as a project that does not exist, so keys cannot
    probe which projects exist.
    """
    if principal.project is not None:
        if requested is not None and requested != principal.project:
            raise NotFound(f"project {requested!r} does not exist")
        return principal.project
    if requested is None:
        raise InvalidInput("a key for all projects must name the project: add ?project=NAME", "project")
    if requested not in runtime.projects:
        raise NotFound(f"project {requested!r} does not exist: create it with `ratchet projects create`")
    return requested


def page_limit(limit: int, most: int) -> int:
    """`limit` if it is 1 to `most`, else `InvalidInput` naming the field (never clamped: a
    client asking for more than a page gets told, not quietly fewer)."""
    if not 1 <= limit <= most:
        raise InvalidInput(f"`limit` is 1 to {most:,}", "limit")
    return limit
