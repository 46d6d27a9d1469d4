"""Per-project settings: read them, change them (a JSON merge patch)."""

from __future__ import annotations

from litestar import get, patch

from service import project_settings
from service.api.deps import needs, scoped_project
from service.domain import Principal
from service.project_settings import ProjectSettingsOut, ProjectSettingsPatch
from service.runtime import Runtime


@get(
    "/v1/projects/{name:str}/settings", summary="A project's settings", sync_to_thread=True, opt=needs("read")
)
def get_settings(name: str, principal: Principal, runtime: Runtime) -> ProjectSettingsOut:
    """What the project overrides, and every per-project value in effect (the global settings are
    the defaults)."""
    return project_settings.read(runtime, scoped_project(principal, runtime, name))


@patch(
    "/v1/projects/{name:str}/settings",
    summary="Change a project's settings",
    sync_to_thread=True,
    opt=needs("manage"),
)
def patch_settings(
    name: str,
    data: ProjectSettingsPatch,
    principal: Principal,
    runtime: Runtime,  # type: ignore[valid-type]
) -> ProjectSettingsOut:
    """Override training thresholds and method, canary fraction, online gate, the offline gate's
    feedback evidence (on/off, calibration and tolerance thresholds), retention or base
    model for this project; `null` returns a value to the global default. Each change is an event."""
    return project_settings.update(runtime, principal, scoped_project(principal, runtime, name), data)
