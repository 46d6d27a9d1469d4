"""An adapter directory, checked before any vLLM replica is asked to load it.

vLLM refuses some adapters only at load time (rank above `--max-lora-rank`, PEFT features it does
not implement, weights for a module its model class has no LoRA layer for: "expected target
modules in ... but received ..."), and accepts others it cannot serve correctly
(`modules_to_save`/`lm_head`, #9280); a load also reads whatever path it is given (lorax #798 was
a path traversal through adapter ids). So Ratchet checks first: the directory lies under its
adapter root (symlinks resolved), `adapter_config.json` is a LoRA config for the expected base
model with a rank the servers accept and nothing vLLM can't apply, a weights file is present,
and every module the weights adapt is a linear layer of the base model, of the same shape
(an adapter for Llama's `q_proj` on a Phi-3 base, whose attention is one fused `qkv_proj`, or an
adapter trained on another size of model, is refused with the layers the base does have). That
last check reads only the safetensors headers of the adapter and of the base model. The
trainer's `manifest.json`, when the directory has one, must be one this version reads
(`formats.manifest`: a newer one is refused naming its versions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from safetensors import SafetensorError, safe_open

from formats.manifest import AdapterManifest, ManifestError, SchemaVersionError, read_manifest

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# Targets vLLM's LoRA cannot apply as adapters (they need modules_to_save-style full copies).
_UNSUPPORTED_TARGETS = frozenset({"lm_head", "embed_tokens"})
# PEFT features vLLM (0.32, `vllm/lora/peft_helper.py`) refuses: config key -> why.
_UNSUPPORTED_FEATURES = {
    "use_dora": "DoRA adapters are not supported by vLLM",
    "lora_bias": "LoRA bias (lora_bias) is not supported by vLLM",
    "layer_replication": "layer_replication is not supported by vLLM",
    "alora_invocation_tokens": "Activated LoRA (aLoRA) is not supported by vLLM",
    "use_qalora": "QALoRA is not supported by vLLM",
}
# String inits that only set the starting weights; others (PiSSA, OLoRA, LoftQ...) change the base.
_PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})


class InvalidAdapter(ValueError):
    """The directory cannot be served as a LoRA adapter; the message says what is wrong."""


class AdapterOutsideRoot(InvalidAdapter):
    """The path is not inside the adapter root (after resolving symlinks and `..`)."""


class AdapterDir(msgspec.Struct, frozen=True, kw_only=True):
    """A checked adapter directory. `path` is absolute and resolved: load exactly this."""

    path: str
    rank: int
    target_modules: tuple[str, ...]
    base_model: str | None
    manifest: AdapterManifest | None = None
    """The trainer's manifest (None: an adapter trained elsewhere)."""


def resolve_under_root(path: str | Path, root: str | Path) -> Path:
    """`path` made absolute and resolved, if it lies strictly inside `root`; otherwise
    `AdapterOutsideRoot`. A relative `path` is taken relative to `root`."""
    root_resolved = Path(root).resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root_resolved / candidate
    resolved = candidate.resolve()
    if resolved == root_resolved or not resolved.is_relative_to(root_resolved):
        raise AdapterOutsideRoot(
            f"adapter path {str(path)!r} is outside the adapter root {str(root_resolved)!r}"
        )
    return resolved


def check_adapter_dir(
    path: str | Path, *, root: str | Path, max_rank: int, base_model: str | None = None
) -> AdapterDir:
    """Check the adapter in `path` can be loaded by servers started with `--max-lora-rank
    max_rank` on `base_model` (None: don't compare base models). Reads files only; raises
    `InvalidAdapter` (or `AdapterOutsideRoot`) with the reason."""
    directory = resolve_under_root(path, root)
    if not directory.is_dir():
        raise InvalidAdapter(f"adapter directory {str(directory)!r} does not exist")
    config = _read_config(directory)
    try:
        manifest = read_manifest(directory)
    except (ManifestError, SchemaVersionError) as exc:
        raise InvalidAdapter(f"{directory}: {exc}") from exc
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise InvalidAdapter(f"{directory}: peft_type is {config.get('peft_type')!r}, not LORA")
    rank = _rank_of(config, directory)
    if rank > max_rank:
        raise InvalidAdapter(
            f"{directory}: LoRA rank {rank} is above the servers' maximum {max_rank} (--max-lora-rank)"
        )
    if config.get("modules_to_save"):
        raise InvalidAdapter(
            f"{directory}: modules_to_save {config['modules_to_save']!r} is not supported by vLLM; "
            "train LoRA on linear layers only"
        )
    for key, why in _UNSUPPORTED_FEATURES.items():
        if config.get(key):
            raise InvalidAdapter(f"{directory}: {why}")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        raise InvalidAdapter(
            f"{directory}: init_lora_weights={init!r} changes the base model's weights, which vLLM does "
            "not do; convert the adapter to a plain LoRA first"
        )
    targets = _targets_of(config)
    # A single-string target is a regular expression: look for the names inside it.
    unsupported = sorted(u for u in _UNSUPPORTED_TARGETS if any(u in t for t in targets))
    if unsupported:
        raise InvalidAdapter(f"{directory}: target modules {unsupported} are not supported by vLLM's LoRA")
    adapter_base = config.get("base_model_name_or_path") or None
    if base_model is not None and not _same_model(adapter_base, base_model):
        raise InvalidAdapter(
            f"{directory}: trained on base model {adapter_base!r}, but the servers run {base_model!r}"
        )
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise InvalidAdapter(f"{directory}: no weights file ({' or '.join(WEIGHT_FILES)})")
    _check_modules_against_base(directory, base_model or adapter_base)
    return AdapterDir(
        path=str(directory), rank=rank, target_modules=targets, base_model=adapter_base, manifest=manifest
    )


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise InvalidAdapter(f"{directory}: adapter_config.json is missing") from None
    except (OSError, ValueError) as exc:
        raise InvalidAdapter(f"{directory}: adapter_config.json is unreadable: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{directory}: adapter_config.json is not a JSON object")
    return config


def _rank_of(config: dict[str, Any], directory: Path) -> int:
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not isinstance(ranks[0], int) or not all(isinstance(r, int) and r > 0 for r in ranks):
        raise InvalidAdapter(f"{directory}: adapter_config.json has no valid LoRA rank 'r'")
    return max(ranks)


def _targets_of(config: dict[str, Any]) -> tuple[str, ...]:
    targets = config.get("target_modules") or ()
    # PEFT stores either a list of module names or one regular expression.
    return (targets,) if isinstance(targets, str) else tuple(str(t) for t in targets)


def _same_model(adapter_base: str | None, base_model: str) -> bool:
    if adapter_base is None:
        return False
    if adapter_base == base_model:
        return True
    # A local base model may be named by different spellings of the same directory.
    a, b = Path(adapter_base), Path(base_model)
    return a.is_absolute() and b.is_absolute() and a.exists() and a.resolve() == b.resolve()


def _check_modules_against_base(directory: Path, base_model: str | None) -> None:
    """Every module the adapter's weights adapt is a linear layer of the base, with the same
    in/out features. Skipped when either side's weights are not safetensors files on disk (a
    hub id, a `.bin` file): vLLM's own check then decides at load."""
    weights = directory / WEIGHT_FILES[0]
    if base_model is None or not Path(base_model).is_dir() or not weights.is_file():
        return
    linear = _linear_shapes(Path(base_model))
    if linear is None:
        return
    adapted = _adapted_shapes(weights)
    unknown = sorted(m for m in adapted if m not in linear)
    if unknown:
        names = sorted({m.rsplit(".", 1)[-1] for m in unknown})
        layers = sorted({m.rsplit(".", 1)[-1] for m in linear})
        raise InvalidAdapter(
            f"{directory}: adapts {names} ({len(unknown)} modules, e.g. {unknown[0]}), which the base model "
            f"{base_model} does not have; its linear layers are {layers}"
        )
    for module, (fan_in, fan_out) in sorted(adapted.items()):
        if (fan_in, fan_out) != linear[module]:
            raise InvalidAdapter(
                f"{directory}: {module} is adapted as {fan_in} -> {fan_out} features, but the base model "
                f"{base_model} has {linear[module][0]} -> {linear[module][1]}: trained on another model"
            )


def _adapted_shapes(weights: Path) -> dict[str, tuple[int, int]]:
    """`{module path: (in, out)}` from a PEFT LoRA safetensors file.
    Keys look like `base_model.model.<module>.lora_A.weight` (shape r x in) and `lora_B` (out x r)."""
    shapes: dict[str, list[int]] = {}
    try:
        with safe_open(weights, "numpy") as f:
            for key in f.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                stem, dot, leaf = key.rpartition(".lora_")
                if not dot or leaf not in ("A.weight", "B.weight"):
                    continue
                shape = f.get_slice(key).get_shape()
                module = stem.removeprefix("base_model.model.")
                entry = shapes.setdefault(module, [0, 0])
                entry[0 if leaf == "A.weight" else 1] = shape[1] if leaf == "A.weight" else shape[0]
    except (OSError, SafetensorError) as exc:
        raise InvalidAdapter(f"{weights}: unreadable safetensors file: {exc}") from exc
    return {m: (fan_in, fan_out) for m, (fan_in, fan_out) in shapes.items()}


def _linear_shapes(base: Path) -> dict[str, tuple[int, int]] | None:
    """`{module path: (in, out)}` of the base model's 2-D `.weight` tensors (linear layers, and
    the embeddings, which no adapter passing the checks above targets), from the headers of its
    safetensors files; None when it has none or they cannot be read."""
    index = base / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (base / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    shapes: dict[str, tuple[int, int]] = {}
    try:
        for name in files:
            with safe_open(base / name, "numpy") as f:
                for key in f.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                    shape = f.get_slice(key).get_shape()
                    if key.endswith(".weight") and len(shape) == 2:
                        shapes[key.removesuffix(".weight")] = (shape[1], shape[0])
    except (OSError, ValueError, SafetensorError):
        return None  # not ours to judge: vLLM would not serve this base at all
    return shapes
