"""Request-scoped dependencies: who is calling, and which project they may touch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar import Request
from litestar.datastructures import State

from service.domain import Principal
from service.errors import Forbidden, InvalidInput, NotFound
from service.runtime import Runtime

_DEV_PRINCIPAL = Principal("auth-disabled", None)


def provide_runtime(state: State) -> Runtime:
    return state.runtime  # type: ignore[no-any-return]


def provide_principal(request: Request[Any, Any, Any], runtime: Runtime) -> Principal:
    """Authenticate the `Authorization: Bearer <key>` header (or `x-api-key`)."""
    return authenticate(runtime, request.scope["headers"])


def authenticate(runtime: Runtime, headers: Iterable[tuple[bytes, bytes]]) -> Principal:
    """The principal for an ASGI scope's raw headers; raises `Unauthenticated`."""
    if runtime.settings.auth_disabled:
        return _DEV_PRINCIPAL
    return runtime.keys.authenticate(_presented_key(headers))


def _presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    # Read from the raw ASGI headers: Litestar's parsed `Headers` cost more than the key check.
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    return api_key


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("this needs an admin key; project keys can only use their own project's data")


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
        raise InvalidInput("an admin key must name the project: add ?project=NAME", "project")
    if requested not in runtime.projects:
        raise NotFound(f"project {requested!r} does not exist: create it with `ratchet projects create`")
    return requested
