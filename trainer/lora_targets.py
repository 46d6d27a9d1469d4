"""Which layers a LoRA adapter adapts, chosen per architecture so that vLLM can serve the adapter.

Families name their layers differently: Llama, Mistral, Qwen2/3 and Gemma have `q_proj`, `k_proj`,
`v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`; Phi-3 fuses the first three into
`qkv_proj` and the MLP's first two into `gate_up_proj`. An adapter over `("q_proj", "v_proj")`
matches nothing in a Phi-3 model, and PEFT has no default for it at all.

vLLM applies LoRA to the linear layers of its own model classes, whose fused layers it maps back
to these names (`packed_modules_mapping` in `vllm/model_executor/models/*.py`, 0.32). It refuses
an adapter with weights for any other module ("expected target modules in ... but received ...");
it would take `embed_tokens`/`lm_head` for some architectures, but only as full-weight copies
Ratchet does not train. `VLLM_LORA_MODULES` records, per architecture, the names vLLM accepts.
For an architecture not listed, every linear layer but the output head is assumed servable
(true of vLLM's decoder-only text models), and `deploy.adapter_dir` still checks the adapter
against the base model's weights before anything is loaded.

- `resolve_target_modules(model, ["all-linear"])`: every servable linear layer (trained adapters).
- `base_target_modules(base_model_dir, requested)`: the same for a model directory, read on the
  meta device (no weights): the trainer checks a run's targets with it before training starts.
- `default_target_modules(model)`: PEFT's per-model-type default where vLLM can serve it (q/v
  projections), else all servable linear layers (Phi-3): the smallest sensible adapter, for
  version 0 (a null adapter) and random test adapters.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer.errors import BaseModelError, SpecError

ALL_LINEAR = "all-linear"

_SPLIT = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})

VLLM_LORA_MODULES: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _SPLIT,
    "MistralForCausalLM": _SPLIT,
    "Qwen2ForCausalLM": _SPLIT,
    "Qwen3ForCausalLM": _SPLIT,
    "GemmaForCausalLM": _SPLIT,
    "Gemma2ForCausalLM": _SPLIT,
    "Gemma3ForCausalLM": _SPLIT,
    "Phi3ForCausalLM": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
}
"""Architecture -> the module names vLLM (0.32) applies a LoRA adapter's weights to."""


class LoraTargetError(SpecError, ValueError):
    """The requested LoRA targets are not linear layers of the model, or not ones vLLM can serve."""


def linear_modules(model) -> set[str]:
    """Short names of the model's `torch.nn.Linear` layers, the output head excepted."""
    import torch

    head = model.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }


def servable_modules(model) -> set[str]:
    """The model's linear layers that vLLM can apply LoRA to (all but the head, when the
    architecture is not in `VLLM_LORA_MODULES`)."""
    available = linear_modules(model)
    known = VLLM_LORA_MODULES.get(type(model).__name__)
    return available if known is None else available & known


def resolve_target_modules(model, requested: Sequence[str]) -> list[str]:
    """The sorted short module names to adapt for `requested` (names, or `["all-linear"]`).

    Sorted short names, not PEFT's own "all-linear" expansion: PEFT writes every full module path
    in set order into adapter_config.json, which differs from run to run. Raises
    `LoraTargetError` naming the offending modules and the ones that would do.
    """
    architecture = type(model).__name__
    servable = servable_modules(model)
    if list(requested) == [ALL_LINEAR]:
        if not servable:
            raise LoraTargetError(f"{architecture} has no linear layer vLLM can apply LoRA to")
        return sorted(servable)
    wanted = set(requested)
    missing = wanted - linear_modules(model)
    if missing:
        raise LoraTargetError(
            f"{architecture} has no linear layer named {sorted(missing)}; "
            f"its adaptable layers are {sorted(servable)} (or use ['all-linear'])"
        )
    refused = wanted - servable
    if refused:
        raise LoraTargetError(
            f"vLLM cannot apply LoRA to {sorted(refused)} of {architecture}; it can to {sorted(servable)}"
        )
    return sorted(wanted)


def default_target_modules(model) -> list[str]:
    """PEFT's default targets for the model's type when vLLM can serve all of them, else every
    servable linear layer. `["q_proj", "v_proj"]` for Llama, Qwen, Gemma and Mistral; Phi-3 (no
    PEFT default) gets its four fused and plain projections."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    peft_default = PEFT_DEFAULTS.get(getattr(model.config, "model_type", ""))
    servable = servable_modules(model)
    if peft_default and set(peft_default) <= servable:
        return sorted(peft_default)
    return resolve_target_modules(model, [ALL_LINEAR])


def meta_model(base_model):
    """The base model's architecture on the meta device, from its config alone (no weights read).
    Raises `BaseModelError` when the config names no architecture transformers can build."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base_model, local_files_only=True)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise BaseModelError(f"cannot build the architecture of base model {base_model}: {exc}") from exc


def base_target_modules(base_model, requested: Sequence[str]) -> list[str]:
    """`resolve_target_modules` for the model in directory `base_model`. Raises `LoraTargetError`."""
    return resolve_target_modules(meta_model(base_model), requested)
