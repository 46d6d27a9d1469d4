"""`manifest.json` of an adapter directory: what made the adapter, written by the trainer beside
the PEFT files and read by the service (recorded with the version), deploy (checked before a
load) and anyone holding a downloaded adapter.

Three kinds share the file: `trained` (a run of `python -m trainer run`: its run, parent, method,
snapshot, hyperparameters, library versions), `null` (serves exactly the base: a project's v0)
and `random` (a test adapter). An adapter trained elsewhere has no manifest (`read_manifest`
gives None).

Old files still load: schema_version 1 is this shape, and a manifest with no `schema_version`
(written before it was versioned) is read as version 1, every field but `kind` optional. A
manifest of a newer version is refused with `SchemaVersionError` naming the file and versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from formats.versioned import SchemaVersionError, check_version

MANIFEST = "manifest.json"
ADAPTER_MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """An adapter's manifest.json is unreadable or not a manifest."""


class SnapshotRef(msgspec.Struct, kw_only=True):
    """The snapshot a trained adapter learned from."""

    dir: str
    files: dict[str, str] = {}
    """sha256 of each snapshot file, by name."""
    rows: dict[str, int] = {}


class LoraShape(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The adapter's shape, as `adapter_config.json` says (what vLLM reads)."""

    r: int | None = None
    lora_alpha: int | float | None = None
    lora_dropout: float | None = None
    target_modules: list[str] | str | None = None
    peft_type: str | None = None


class AdapterManifest(msgspec.Struct, kw_only=True):
    """What made an adapter. `trained` manifests fill the run's fields; `null`/`random` ones only
    `base_model`, `seed` and `lora`."""

    schema_version: int = ADAPTER_MANIFEST_VERSION
    kind: Literal["trained", "null", "random"] = "trained"
    base_model: str | None = None
    lora: LoraShape | None = None
    run_id: str | None = None
    parent_version: str | None = None
    """Served name of the adapter it continued from, e.g. `support@v3` (or the base's v0)."""
    parent_adapter: str | None = None
    method: str | None = None
    method_requested: str | None = None
    method_why: str | None = None
    snapshot_sha256: str | None = None
    snapshot: SnapshotRef | None = None
    examples: dict[str, Any] = {}
    hyperparameters: dict[str, Any] = {}
    libraries: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    wall_time_s: float | None = None
    reward_model: dict[str, Any] | None = None
    """The reward model trained beside it (`formats.run.RewardOutcome`)."""
    seed: int | None = None
    created_at: str | None = None

    def encode(self) -> bytes:
        """The file's bytes: indented JSON."""
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"


def decode_manifest(raw: bytes | str, what: str = "adapter manifest") -> AdapterManifest:
    """A manifest from JSON text, version first (`SchemaVersionError`), `ManifestError` if not one.
    Read as this version: a version 1 file, or one from before versions, is this shape."""
    try:
        check_version(raw, what, ADAPTER_MANIFEST_VERSION)
        manifest = msgspec.json.decode(raw, type=AdapterManifest)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ManifestError(f"{what} is not an adapter manifest: {exc}") from exc
    return msgspec.structs.replace(manifest, schema_version=ADAPTER_MANIFEST_VERSION)


def read_manifest(adapter_dir: str | Path) -> AdapterManifest | None:
    """`adapter_dir/manifest.json`, or None when the directory has none (an adapter trained
    elsewhere). `SchemaVersionError` for a newer one, `ManifestError` for an unreadable one."""
    path = Path(adapter_dir) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_manifest(raw, str(path))


__all__ = [
    "ADAPTER_MANIFEST_VERSION", "MANIFEST", "AdapterManifest", "LoraShape", "ManifestError",
    "SchemaVersionError", "SnapshotRef", "decode_manifest", "read_manifest",
]  # fmt: skip
