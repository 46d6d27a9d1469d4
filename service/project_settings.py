"""Per-project settings: training thresholds, method and launcher, canary fraction, online gate, the offline
gate's feedback evidence (on/off, calibration and tolerance thresholds), retention, base model. The global settings are the defaults; a project stores only what it overrides.

`GET/PATCH /v1/projects/{p}/settings`. A PATCH is a JSON merge patch (RFC 7396): a field given
overrides, `null` goes back to the global default, an absent field is left as it is. Each field
is validated by the same constraint as its global setting (the override types below are derived
from `TrainingSettings`, `GatePolicy` and `FeedbackGateSettings`, so a constraint is written once). The overrides live in
`projects.settings` (JSON), the base model in `projects.base_model`; each change is an event.

The scheduler and the pipeline read `ProjectSettingsBook.effective(project)`: a whole `Settings`
with the project's overrides applied, so code that reads `settings.training.min_new_ratings`
reads the project's value.
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import msgspec
from msgspec import UNSET, Meta, UnsetType

from deploy.online_gate import GatePolicy
from service.clock import utcnow
from service.config import FeedbackGateSettings, Settings, TrainingSettings, UnknownBaseModel, VllmSettings
from service.domain import Principal
from service.errors import Conflict, InvalidInput
from service.store.serving import Event

if TYPE_CHECKING:
    from service.runtime import Runtime

TRAINING_FIELDS = (
    "min_new_ratings", "min_new_corrections", "min_minority_share", "min_train_rows", "method", "launcher",
)  # fmt: skip
GATE_FIELDS = tuple(GatePolicy.__struct_fields__)
FEEDBACK_GATE_FIELDS = tuple(FeedbackGateSettings.__struct_fields__)


def _overrides(name: str, struct: type, fields: tuple[str, ...], doc: str) -> type:
    hints = get_type_hints(struct, include_extras=True)
    out = msgspec.defstruct(
        name,
        [(f, hints[f] | None | UnsetType, UNSET) for f in fields],
        forbid_unknown_fields=True,
        kw_only=True,
        omit_defaults=True,
    )
    out.__doc__ = doc
    return out


TrainingOverrides = _overrides(
    "TrainingOverrides",
    TrainingSettings,
    TRAINING_FIELDS,
    "When this project's runs start and how they train.",
)
GateOverrides = _overrides("GateOverrides", GatePolicy, GATE_FIELDS, "This project's online gate.")
FeedbackGateOverrides = _overrides(
    "FeedbackGateOverrides",
    FeedbackGateSettings,
    FEEDBACK_GATE_FIELDS,
    "This project's offline-gate evidence from its held-out feedback.",
)
_settings_hints = get_type_hints(Settings, include_extras=True)

ProjectSettingsPatch = msgspec.defstruct(
    "ProjectSettingsPatch",
    [
        ("training", TrainingOverrides | None | UnsetType, UNSET),
        ("online_gate", GateOverrides | None | UnsetType, UNSET),
        ("feedback_gate", FeedbackGateOverrides | None | UnsetType, UNSET),
        ("canary_fraction", _settings_hints["canary_fraction"] | None | UnsetType, UNSET),
        ("retention_days", _settings_hints["retention_days"] | UnsetType, UNSET),
        (
            "base_model",
            Annotated[
                str,
                Meta(
                    max_length=512,
                    description="The project's base model: a name or path of the settings' vllm.models.",
                ),
            ]
            | None
            | UnsetType,
            UNSET,
        ),
    ],
    forbid_unknown_fields=True,
    kw_only=True,
    omit_defaults=True,
)
ProjectSettingsPatch.__doc__ = (
    "A JSON merge patch of a project's settings: a value overrides the global default, `null` "
    "returns to it, an absent field stays as it is. `retention_days: null` returns to the global "
    "retention (unset: keep everything)."
)


class ProjectSettingsOut(msgspec.Struct):
    """A project's settings: what it overrides, and the values in effect (overrides on defaults)."""

    project: str
    overrides: dict[str, Any]
    effective: dict[str, Any]


def merge(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """`current` overrides with a `ProjectSettingsPatch` applied (base model excluded)."""
    out = copy.deepcopy(current)
    for name in patch.__struct_fields__:
        value = getattr(patch, name)
        if value is UNSET or name == "base_model":
            continue
        if value is None:
            out.pop(name, None)
        elif isinstance(value, msgspec.Struct):
            section = out.get(name, {})
            for field in value.__struct_fields__:
                sub = getattr(value, field)
                if sub is None:
                    section.pop(field, None)
                elif sub is not UNSET:
                    section[field] = sub
            if section:
                out[name] = section
            else:
                out.pop(name, None)
        else:
            out[name] = value
    return msgspec.to_builtins(out)  # type: ignore[no-any-return]


def effective(settings: Settings, overrides: dict[str, Any], base_model: str) -> Settings:
    """The global settings with a project's overrides applied."""
    replace = msgspec.structs.replace
    return replace(
        settings,
        training=replace(settings.training, **overrides.get("training", {})),
        online_gate=replace(settings.online_gate, **overrides.get("online_gate", {})),
        feedback_gate=replace(settings.feedback_gate, **overrides.get("feedback_gate", {})),
        vllm=project_vllm(settings, base_model),
        **{k: overrides[k] for k in ("canary_fraction", "retention_days") if k in overrides},
    )


def project_vllm(settings: Settings, base_model: str) -> VllmSettings:
    """The vLLM settings of a project's base model (`vllm.models`): its path, replicas and served
    name. A stored base model no setting names (a path stored before `vllm.models`, or settings
    changed since) keeps the default replicas with its own path, so its adapters stay checked
    against the base they were trained on."""
    try:
        return settings.vllm.serving(settings.vllm.model(base_model))
    except UnknownBaseModel:
        return msgspec.structs.replace(settings.vllm, base_model=base_model)


def known_base_model(settings: Settings, base_model: str) -> str:
    """`base_model` as a project may name it (a `vllm.models` name or path; "" for the default).
    `InvalidInput` naming the known ones otherwise."""
    try:
        settings.vllm.model(base_model)
    except UnknownBaseModel as exc:
        raise InvalidInput(str(exc), "base_model") from exc
    return base_model


def base_model_name(settings: Settings, base_model: str) -> str:
    """The `vllm.models` name of a project's base model (the default's for one no setting names)."""
    try:
        return settings.vllm.model(base_model).name
    except UnknownBaseModel:
        return settings.vllm.fleets[0].name


def view(settings: Settings) -> dict[str, Any]:
    """The per-project settable values of an effective `Settings`, as JSON-ready data."""
    return {
        "training": {f: getattr(settings.training, f) for f in TRAINING_FIELDS},
        "online_gate": msgspec.to_builtins(settings.online_gate),
        "feedback_gate": msgspec.to_builtins(settings.feedback_gate),
        "canary_fraction": settings.canary_fraction,
        "retention_days": settings.retention_days,
        "base_model": settings.vllm.base_model,
    }


def changes(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"training.min_new_ratings": {"from": 200, "to": 5}, ...}` between two views."""
    out: dict[str, Any] = {}
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out.update(changes(old, new, f"{prefix}{key}."))
        elif old != new:
            out[f"{prefix}{key}"] = {"from": old, "to": new}
    return out


class ProjectSettingsBook:
    """Every project's overrides, in memory (the service is the only writer), and the effective
    settings built from them."""

    def __init__(self, settings: Settings, stored: dict[str, tuple[dict[str, Any], str]]) -> None:
        self.settings = settings
        self._stored = dict(stored)
        self._effective: dict[str, Settings] = {}
        self._base_names: dict[str, str] = {}
        self._lock = threading.Lock()

    def effective(self, project: str) -> Settings:
        """The project's settings in effect (the global ones for an unknown project)."""
        found = self._effective.get(project)
        if found is None:
            overrides, base_model = self._stored.get(project, ({}, ""))
            found = self._effective[project] = effective(self.settings, overrides, base_model)
        return found

    def base_name(self, project: str) -> str:
        """The `vllm.models` name of the project's base model (kept: the gateway asks per request)."""
        found = self._base_names.get(project)
        if found is None:
            found = self._base_names[project] = base_model_name(self.settings, self.stored(project)[1])
        return found

    def overrides(self, project: str) -> dict[str, Any]:
        overrides, base_model = self._stored.get(project, ({}, ""))
        return {**overrides, **({"base_model": base_model} if base_model else {})}

    def stored(self, project: str) -> tuple[dict[str, Any], str]:
        return self._stored.get(project, ({}, ""))

    def set(self, project: str, overrides: dict[str, Any], base_model: str) -> None:
        with self._lock:
            self._stored[project] = (overrides, base_model)
            self._effective.pop(project, None)
            self._base_names.pop(project, None)

    def forget(self, project: str) -> None:
        with self._lock:
            self._stored.pop(project, None)
            self._effective.pop(project, None)
            self._base_names.pop(project, None)


def read(runtime: Runtime, project: str) -> ProjectSettingsOut:
    """A project's overrides and the settings in effect."""
    return ProjectSettingsOut(
        project,
        runtime.project_settings.overrides(project),
        view(runtime.project_settings.effective(project)),
    )


def update(runtime: Runtime, principal: Principal, project: str, patch: Any) -> ProjectSettingsOut:
    """Apply a merge patch, store it with an event naming each changed value, and return the
    result. `Conflict` for a new base model once the project has trained adapters."""
    book = runtime.project_settings
    before = view(book.effective(project))
    current, base_model = book.stored(project)
    overrides = merge(current, patch)
    if patch.base_model is not UNSET:
        new_base = known_base_model(book.settings, patch.base_model or "")
        if new_base != base_model:
            check_base_model_change(runtime, project, base_model, new_base)
        base_model = new_base
    after = view(effective(book.settings, overrides, base_model))
    diff = changes(before, after)
    if diff or overrides != current:
        event = Event(utcnow(), project, None, "settings_changed", {"by": principal.key_id, "changed": diff})
        runtime.queries.save_project_settings(project, overrides, base_model, event)
        book.set(project, overrides, base_model)
        runtime.metrics.set_base_model(project, runtime.fleets.base_of(project))
    return read(runtime, project)


def check_base_model_change(runtime: Runtime, project: str, old: str, new: str) -> None:
    """`Conflict` once the project has trained adapters (they fit the old base only), or serves
    version 0 (a zero adapter of the old base) and the new base is another `vllm.models` entry,
    whose replicas would refuse it."""
    versions = runtime.serving.adapters(project)
    trained = [a.served_name for a in versions if a.version > 0]
    if trained:
        raise Conflict(
            f"project {project} already has adapters trained on its base model ({', '.join(trained)}): "
            "create a new project for another base model"
        )
    settings = runtime.project_settings.settings
    if versions and base_model_name(settings, new) != base_model_name(settings, old):
        raise Conflict(
            f"project {project} serves version 0 of base model {base_model_name(settings, old)!r} on its "
            "replicas: create a new project for another base model"
        )
