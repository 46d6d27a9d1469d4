"""A project's version 0 is a copy of its base model's null adapter, written once per base model
(service/null_adapters.py). The trainer's side (`python -m trainer null-adapter`) is
tests/test_trainer_cli.py's; a server making v0 through both steps is in every test that creates
a project on a real vLLM (tests/test_adapter_budget.py, tests/test_gateway_replicas.py, ...)."""

from __future__ import annotations

import asyncio
import filecmp
import json
import shutil
from pathlib import Path

from service.null_adapters import CACHE_DIR, _keep, cache_key, place_null_adapter

FILES = ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]


def test_v0_is_a_copy_of_the_base_models_cached_null_adapter(
    tmp_path: Path, tiny_model_dir: Path, random_adapters
) -> None:  # type: ignore[no-untyped-def]
    cached = tmp_path / "data" / CACHE_DIR / cache_key(str(tiny_model_dir))
    shutil.copytree(random_adapters.null, cached)
    (cached / "marker").write_text("from the cache")  # a trainer run would not write this

    for project in ("a", "b"):
        out = tmp_path / "data" / "adapters" / project / "v0"
        asyncio.run(place_null_adapter(tmp_path / "data", str(tiny_model_dir), out))
        assert (out / "marker").read_text() == "from the cache"
        assert filecmp.cmpfiles(random_adapters.null, out, FILES, shallow=False) == (FILES, [], [])
        assert out.stat().st_mode & 0o755 == 0o755  # vLLM (another user, a container) reads it
    assert [p.name for p in (tmp_path / "data" / "adapters" / "a").iterdir()] == ["v0"]  # no temporary left


def test_the_key_follows_the_base_models_path_and_architecture(tmp_path: Path, tiny_model_dir: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config))
    first = cache_key(str(base))
    assert cache_key(str(tmp_path / "." / "base")) == first  # the same directory, however named
    assert cache_key(str(tiny_model_dir)) != first  # another path: its manifest names another base
    (base / "config.json").write_text(
        json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 1})
    )
    assert cache_key(str(base)) != first  # another model put at the same path


def test_of_two_writers_of_one_key_the_first_is_kept(tmp_path: Path, random_adapters) -> None:  # type: ignore[no-untyped-def]
    cached = tmp_path / "key"
    shutil.copytree(random_adapters.null, cached)
    late = tmp_path / "late"
    shutil.copytree(random_adapters.random[0], late)
    _keep(late, cached)  # another server wrote it meanwhile: no error, the first stays
    assert filecmp.cmpfiles(random_adapters.null, cached, FILES, shallow=False) == (FILES, [], [])
