"""Several base models on one server, without vLLM: the settings, and the production wiring
(`service.app.build_runtime`) that gives each project its own base model's replicas, path and
served name, for the gateway, rollouts, trainer and evaluation. The real servers:
tests/test_multibase_vllm.py."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import msgspec
import pytest

from deploy.adapters import AdapterLoadFailed
from service.app import build_runtime
from service.config import BaseModelSettings, Settings, SettingsError
from service.domain import ProjectIn
from service.errors import InvalidInput
from service.pipeline import run_spec
from service.projects import create_project
from tests.fixtures.models import SyntheticAdapters

TOML = """
data_dir = "{data}"

[[vllm.models]]
name = "chat"
path = "{chat}"
replicas = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
served_name = "chat-base"

[[vllm.models]]
name = "classifier"
path = "/models/classifier"
replicas = ["http://127.0.0.1:11"]
"""


def test_one_base_model_configured_as_before_is_the_one_default_entry() -> None:
    s = Settings.load(env={"RATCHET_VLLM__BASE_MODEL": "/models/tiny", "RATCHET_VLLM__BASE_SERVED_NAME": "tiny",
                           "RATCHET_VLLM__URLS": '["http://127.0.0.1:8001"]'})  # fmt: skip
    (only,) = s.vllm.fleets
    assert only == BaseModelSettings(
        name="tiny", path="/models/tiny", replicas=("http://127.0.0.1:8001",), served_name="tiny"
    )
    assert s.vllm.model("") == s.vllm.model("tiny") == s.vllm.model("/models/tiny/") == only


@pytest.mark.parametrize(
    ("models", "extra", "needle"),
    [
        ([{"name": "a", "path": "/a", "replicas": ["http://h:1"]}], {"RATCHET_VLLM__BASE_MODEL": "/a"}, "not both"),
        ([{"name": "a", "path": "/a", "replicas": ["http://h:1"]}, {"name": "a", "path": "/b", "replicas": ["http://h:2"]}],
         {}, "names must be distinct"),
        ([{"name": "a", "path": "/a", "replicas": ["http://h:1"]}, {"name": "b", "path": "/b", "replicas": ["http://h:1/"]}],
         {}, "serves one base model"),
        ([{"name": "a", "path": "/a", "replicas": []}], {}, "replicas"),
    ],
)  # fmt: skip
def test_bad_base_model_lists_fail_at_start(models: list, extra: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        Settings.load(env={"RATCHET_VLLM__MODELS": json.dumps(models), **extra})


def test_each_project_gets_its_own_base_models_replicas_path_and_served_name(
    tmp_path: Path, tiny_model_dir: Path, random_adapters: SyntheticAdapters
) -> None:
    config = tmp_path / "ratchet.toml"
    config.write_text(TOML.format(chat=tiny_model_dir, data=tmp_path / "data"))
    settings = Settings.load(config, env={})
    runtime = build_runtime(settings)
    try:
        with pytest.raises(
            InvalidInput, match=r"'llama' is not configured; known: chat \(.*\), classifier"
        ) as e:
            create_project(runtime, ProjectIn(name="nope", base_model="llama"))
        assert e.value.field == "base_model" and "nope" not in runtime.projects
        create_project(runtime, ProjectIn(name="talk"))  # the default: the first
        create_project(runtime, ProjectIn(name="label", base_model="/models/classifier"))  # by path
        assert {p.name: p.base_model for p in runtime.queries.list_projects()} == {
            "talk": "",
            "label": "/models/classifier",
        }

        talk, label = (runtime.project_settings.effective(p).vllm for p in ("talk", "label"))
        assert (talk.base_model, talk.urls, talk.base_served_name) == (
            str(tiny_model_dir), ("http://127.0.0.1:9", "http://127.0.0.1:10"), "chat-base",
        )  # fmt: skip
        assert (label.base_model, label.urls, label.base_served_name) == (
            "/models/classifier", ("http://127.0.0.1:11",), "base",
        )  # fmt: skip
        # The trainer gets the project's base model; the evaluation replays on its replicas.
        spec = run_spec(runtime.project_settings.effective("label"), run_id="r1", snapshot=tmp_path / "s",
                        output=tmp_path / "o", run_dir=tmp_path, parent_version="label@v0", parent_adapter=None)  # fmt: skip
        assert spec.base_model == "/models/classifier"
        # Rollouts and the gateway use the project's fleet: its replicas, its base served name.
        fleets = runtime.fleets
        assert (fleets.base_of("talk"), fleets.base_of("label")) == ("chat", "classifier")
        assert [r.base_url for r in fleets.of("label").replicas] == ["http://127.0.0.1:11"]
        assert fleets.serving("talk@v3") is fleets.of("talk") is not fleets.of("label")
        assert runtime.rollouts.current("talk").champion == "chat-base"
        assert runtime.rollouts.current("label").champion == "base"
        assert {s.labels["project"]: s.labels["base_model"]
                for s in runtime.metrics.project_base_model.collect()[0].samples} == {
            "talk": "chat", "label": "classifier"}  # fmt: skip

        # An adapter of the chat model is refused for the classifier's project, before any replica.
        adapter = settings.adapters_dir / "label" / "v1"
        shutil.copytree(random_adapters.random[0], adapter)

        async def load() -> None:
            try:
                await fleets.of("label").load("label@v1", adapter)
            finally:
                await fleets.aclose()

        with pytest.raises(
            AdapterLoadFailed, match=r"trained on base model .* but the servers run '/models/classifier'"
        ):
            asyncio.run(load())
    finally:
        runtime.db.close()


def test_gateway_replicas_learn_each_projects_base_model_from_the_store(tmp_path: Path) -> None:
    """The store's sync answer names each project's base model and every base model's servable
    adapters; a `ratchet gateway` replica with the same settings routes each project to its own
    base model's replicas and served name."""
    from formats.gateway import GatewayState
    from service.gateway_replica import build_replica

    config = tmp_path / "ratchet.toml"
    config.write_text(TOML.format(chat="/models/chat", data=tmp_path / "data"))
    settings = Settings.load(config, env={})
    store = build_runtime(settings)
    try:
        create_project(store, ProjectIn(name="talk", base_model="chat"))
        create_project(store, ProjectIn(name="label", base_model="classifier"))
        state = store.gateways.state(store.rollouts.routing, store.projects, [])
    finally:
        store.db.close()
    assert state.base_models == {"label": "classifier", "talk": "chat"}
    # Mirrored as the store would hand it over: label@v1 serves on the classifier's replica.
    state = msgspec.structs.replace(state, servable={"label@v1": ["http://127.0.0.1:11"]})
    replica = build_replica(settings)
    replica.apply(msgspec.json.decode(msgspec.json.encode(state), type=GatewayState))
    fleets = replica.fleets
    assert [r.base_url for r in fleets.of("talk").replicas] == ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    assert fleets.of("label").servable("label@v1") and not fleets.of("talk").servable("label@v1")
    assert (replica.routing.current("talk").champion, replica.routing.current("label").champion) == (
        "chat-base", "base",
    )  # fmt: skip
    asyncio.run(fleets.aclose())
