"""A project's offline-gate config over HTTP (`GET/PUT /v1/projects/{p}/gate`): hand-written rules,
a golden set and an LLM judge, and how answers are generated. Versioned: each PUT stores a new
version with a `gate_config_changed` event; the newest version is in effect.

With no hand-written primary scorer the evidence from the holdout's feedback decides (the
`feedback_gate` settings, per project); with one, the feedback evidence joins it (`evidence`).

It replaces `<data_dir>/projects/<p>/eval.json` on the server's disk: `import_files` reads such a
file once at start for a project with no version yet (its golden file read into the config) and
records a `gate_config_imported` event; the file is not read again.

The judge's `api_key` is stored but never answered: a PUT that leaves it out keeps the stored one
while the judge's url stays the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from evals import EvalInputError, GoldenConfig, load_golden
from evals.evalset import GoldenLine, golden_examples
from service.clock import utcnow
from service.config import FeedbackGateSettings
from service.domain import GateConfig, GateConfigOut, GoldenSetIn, Principal
from service.errors import InvalidInput
from service.store.gate_configs import StoredGateConfig
from service.store.serving import Event

if TYPE_CHECKING:
    from service.runtime import Runtime

log = logging.getLogger("ratchet.gate_config")

GOLDEN_FILE = "golden.jsonl"


def has_primary(config: GateConfig) -> bool:
    """Whether a hand-written scorer may promote on its own (rules, golden set or judge as primary)."""
    return any(
        part is not None and part.role == "primary" for part in (config.rules, config.golden, config.judge)
    )


def evidence(config: GateConfig, feedback: FeedbackGateSettings) -> str:
    """Which evidence the next evaluation decides on, and why, in one sentence."""
    declared = [
        f"{name} ({part.role})"
        for name, part in (("rules", config.rules), ("golden set", config.golden), ("judge", config.judge))
        if part is not None
    ]
    hand = ", ".join(declared) if declared else "no hand-written scorer"
    if not feedback.enabled:
        if has_primary(config):
            return f"hand-written only: {hand}; the feedback evidence is off (settings feedback_gate.enabled)"
        return (
            f"nothing can promote: {hand} is primary and the feedback evidence is off "
            "(settings feedback_gate.enabled); declare a primary scorer or turn it on"
        )
    learned = "a learned judge trained beside each adapter" if feedback.learned_judge else "no learned judge"
    parts = f"held-out corrections and liked answers as references, {learned} (once calibrated on held-out preference pairs)"
    if has_primary(config):
        return f"{hand}, joined by the holdout's feedback: {parts}"
    return f"the holdout's feedback decides ({hand} is primary): {parts}"


def _out(project: str, stored: StoredGateConfig | None, feedback: FeedbackGateSettings) -> GateConfigOut:
    config = stored.config if stored is not None else GateConfig()
    shown = config
    if config.judge is not None:
        shown = msgspec.structs.replace(config, judge=msgspec.structs.replace(config.judge, api_key=None))
    return GateConfigOut(
        project=project,
        version=stored.version if stored is not None else 0,
        config=shown,
        judge_api_key_set=config.judge is not None and config.judge.api_key is not None,
        updated_at=stored.created_at if stored is not None else None,
        updated_by=stored.created_by if stored is not None else None,
        evidence=evidence(config, feedback),
    )


def read(runtime: Runtime, project: str) -> GateConfigOut:
    """The config in effect (version 0, the defaults, when never set); no secrets."""
    feedback = runtime.project_settings.effective(project).feedback_gate
    return _out(project, runtime.gate_configs.current(project), feedback)


def read_version(runtime: Runtime, project: str, version: int) -> GateConfigOut:
    """One stored version; `NotFound` names the versions there are."""
    feedback = runtime.project_settings.effective(project).feedback_gate
    return _out(project, runtime.gate_configs.get(project, version), feedback)


def check(config: GateConfig) -> None:
    """What msgspec's field constraints cannot say: the golden examples are usable (one of prompt
    and messages, a reference or checks, unique ids, chat messages). `InvalidInput` names the example."""
    if config.golden is not None:
        try:
            golden_examples(list(enumerate(config.golden.examples, start=1)), "golden.examples")
        except EvalInputError as exc:
            raise InvalidInput(str(exc), "golden.examples") from exc


def put(
    runtime: Runtime,
    principal: Principal,
    project: str,
    config: GateConfig,
    expected_version: int | None = None,
) -> GateConfigOut:
    """Store `config` as the project's next version with a `gate_config_changed` event (which parts
    changed), unless it equals the version in effect. A judge without `api_key` keeps the stored
    one if its url is unchanged. `Conflict` if `expected_version` is not the newest version."""
    check(config)
    current = runtime.gate_configs.current(project)
    old = current.config if current is not None else None
    kept = old.judge if old is not None else None
    if (
        config.judge is not None
        and config.judge.api_key is None
        and kept is not None
        and kept.url == config.judge.url
    ):
        config = msgspec.structs.replace(
            config, judge=msgspec.structs.replace(config.judge, api_key=kept.api_key)
        )
    if current is not None and old == config and expected_version in (None, current.version):
        return read(runtime, project)  # nothing changed: no new version, no event
    before = msgspec.to_builtins(old or GateConfig())
    after = msgspec.to_builtins(config)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    feedback = runtime.project_settings.effective(project).feedback_gate
    event = Event(
        utcnow(),
        project,
        None,
        "gate_config_changed",
        {"by": principal.key_id, "changed": changed, "evidence": evidence(config, feedback)},
    )
    stored = runtime.gate_configs.save(
        project, config, event.at, principal.key_id, event, expected_version=expected_version
    )
    return _out(project, stored, feedback)


class _LegacyEvalFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The former `<data_dir>/projects/<p>/eval.json`: the golden set as a path on the server's disk."""

    rules: Any = None
    golden: GoldenConfig | None = None
    judge: Any = None
    generation: Any = None
    min_samples: int | None = None
    level: float | None = None


def _from_file(path: Path) -> GateConfig:
    """A `GateConfig` from an eval.json file, its golden file read into the config."""
    raw = msgspec.json.decode(path.read_bytes())
    legacy = msgspec.convert(raw, _LegacyEvalFile)
    if legacy.golden is not None:
        golden_path = Path(legacy.golden.path)
        if not golden_path.is_absolute():
            golden_path = path.parent / golden_path
        load_golden(golden_path)  # every line checked, errors naming the file and line
        lines = [
            msgspec.json.decode(text, type=GoldenLine)
            for text in golden_path.read_text().splitlines()
            if text.strip()
        ]
        raw["golden"] = {
            "examples": msgspec.to_builtins(lines),
            "role": legacy.golden.role,
            "tolerance": legacy.golden.tolerance,
        }
    return msgspec.convert({k: v for k, v in raw.items() if v is not None}, GateConfig)


def import_files(runtime: Runtime) -> list[str]:
    """At start: each project with an eval.json on disk and no stored config gets it as version 1
    (a `gate_config_imported` event names the file). A file that cannot be read is logged and
    left. Returns the projects imported."""
    projects_dir = Path(runtime.settings.data_dir) / "projects"
    have = runtime.gate_configs.projects()
    imported = []
    for project in sorted(runtime.projects - have):
        path = projects_dir / project / "eval.json"
        if not path.is_file():
            continue
        try:
            config = _from_file(path)
            check(config)
        except (OSError, msgspec.MsgspecError, EvalInputError, InvalidInput) as exc:
            log.error("project %s: %s could not be imported as its gate config: %s", project, path, exc)
            continue
        now = utcnow()
        event = Event(now, project, None, "gate_config_imported", {"from": str(path.resolve())})
        runtime.gate_configs.save(project, config, now, None, event, expected_version=0)
        log.warning(
            "project %s: imported %s as its gate config (version 1); it is no longer read: "
            "use GET/PUT /v1/projects/%s/gate",
            project,
            path,
            project,
        )
        imported.append(project)
    return imported


def golden_file(config: GoldenSetIn, run_dir: Path) -> GoldenConfig:
    """The golden set written where an evaluation reads it (a JSONL file in the run's directory)."""
    path = run_dir / GOLDEN_FILE
    path.write_bytes(b"".join(msgspec.json.encode(line) + b"\n" for line in config.examples))
    return GoldenConfig(path=str(path), role=config.role, tolerance=config.tolerance)
