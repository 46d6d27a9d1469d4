"""An adapter directory, checked before any vLLM replica is asked to load it.

vLLM refuses some adapters only at load time (rank above `--max-lora-rank`), and accepts others
it cannot serve correctly (`modules_to_save`/`lm_head`, #9280); a load also reads whatever path it
is given (lorax #798 was a path traversal through adapter ids). So Ratchet checks first: the
directory lies under its adapter root (symlinks resolved), `adapter_config.json` is a LoRA config
for the expected base model with a rank the servers accept and nothing vLLM can't apply, and a
weights file is present.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# Targets vLLM's LoRA cannot apply as adapters (they need modules_to_save-style full copies).
_UNSUPPORTED_TARGETS = frozenset({"lm_head", "embed_tokens"})


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
    if config.get("use_dora"):
        raise InvalidAdapter(f"{directory}: DoRA adapters are not supported by vLLM")
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
    return AdapterDir(path=str(directory), rank=rank, target_modules=targets, base_model=adapter_base)


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
