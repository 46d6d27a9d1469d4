"""The vLLM fleets of the settings: one `deploy.fleets.Fleets` entry per base model (`vllm.models`)."""

from __future__ import annotations

from collections.abc import Callable

from deploy.adapters import AdapterManager
from deploy.fleets import Fleets
from service.config import Settings


def build_fleets(settings: Settings, base_of: Callable[[str], str], *, check_base: bool = True) -> Fleets:
    """One adapter manager per base model over its replicas, the default first; `base_of`:
    project -> its base model's name. `check_base`: adapters are checked against the base
    model's path before any replica loads them (deploy.adapter_dir); a gateway replica, which
    never loads, skips it."""
    vllm = settings.vllm
    managers = {
        fleet.name: AdapterManager.from_urls(
            fleet.replicas,
            api_key=vllm.api_key,
            adapter_root=settings.adapters_dir,
            max_loras=vllm.max_loras,
            max_rank=vllm.max_lora_rank,
            base_served_name=fleet.served_name,
            base_model=fleet.path if check_base else None,
        )
        for fleet in vllm.fleets
    }
    return Fleets(managers, base_of)
