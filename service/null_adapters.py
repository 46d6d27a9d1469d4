"""Null adapters (a project's version 0: the base model as a LoRA of zeros), written once per base
model and copied for each new project.

Writing one runs `python -m trainer null-adapter`, which imports torch, transformers and PEFT
(~8 s of CPU and a few hundred MB for every new project, measured on the 2-core box). Its
content depends only on the base model's path and architecture (its `config.json`): the trainer
draws LoRA A from a fixed seed and B is zero, at its default rank and target modules (the service
names neither; a key would have to if it did). So the first one for a base model is kept under
`<data_dir>/null-adapters/<key>` (the key hashes the base's resolved path and `config.json`, so
a different model put at the same path gets its own) and each project's `v0` is a copy of it.

Both steps hand off through directories that appear all at once (STYLE.md 5): the trainer
writes a temporary sibling that is renamed to the key (two servers sharing the directory may
race: the loser's copy is dropped), and a project's copy is renamed into place after an fsync.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from service.durable_files import fsync_dir, fsync_tree
from service.trainer_process import run_trainer

CACHE_DIR = "null-adapters"
"""The cache's directory under the data directory."""


def cache_key(base_model: str) -> str:
    """16 hex digits naming `base_model`'s null adapter: its resolved path and, for a local
    directory, its `config.json` (a model id without one: the id alone)."""
    base = Path(base_model)
    config = base / "config.json"
    digest = hashlib.sha256(str(base.resolve() if base.exists() else base_model).encode() + b"\0")
    if config.is_file():
        digest.update(config.read_bytes())
    return digest.hexdigest()[:16]


async def place_null_adapter(data_dir: str | os.PathLike[str], base_model: str, out: Path) -> None:
    """Write `base_model`'s null adapter at `out` (absent, or an empty directory), from the cache,
    running the trainer first when the cache lacks it. `TrainerFailed` when the trainer cannot
    write it (a base model that is not there, say); `out` then does not appear."""
    cache = Path(data_dir) / CACHE_DIR
    cached = cache / await asyncio.to_thread(cache_key, base_model)
    if not (cached / "adapter_config.json").exists():
        await asyncio.to_thread(cache.mkdir, parents=True, exist_ok=True)
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f".{cached.name}.tmp-", dir=cache))
        try:
            await run_trainer("null-adapter", "--base", base_model, "--out", str(tmp / "adapter"))
            await asyncio.to_thread(_keep, tmp / "adapter", cached)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
    await asyncio.to_thread(_copy, cached, out)


def _keep(written: Path, cached: Path) -> None:
    """Rename the trainer's `written` directory to `cached`, unless another writer got there first."""
    try:
        os.rename(written, cached)
    except OSError:
        if not (cached / "adapter_config.json").exists():
            raise
    fsync_dir(cached.parent)


def _copy(cached: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shutil.copytree(cached, tmp, dirs_exist_ok=True)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; others (a vLLM container) must read it
        fsync_tree(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
