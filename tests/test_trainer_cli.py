"""`python -m trainer tiny-model` and `null-adapter`: wired to the builders, errors as exit 2."""

from __future__ import annotations

import json

import pytest

from tests.test_trainer_inputs import run_trainer


@pytest.mark.slow
def test_tiny_model_builds_a_loadable_model_dir(tmp_path):
    code, _, stderr = run_trainer("tiny-model", str(tmp_path / "tiny"), "--pretrain-steps", "5")
    assert code == 0, stderr[-2000:]
    info = json.loads((tmp_path / "tiny" / "tiny_model.json").read_text())
    assert info["pretrain_steps"] == 5
    assert (tmp_path / "tiny" / "config.json").is_file()


def test_tiny_model_refuses_a_non_empty_dir(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    code, events, _ = run_trainer("tiny-model", str(tmp_path / "taken"))
    assert code == 2 and "not empty" in events[0]["message"]


def test_null_adapter_is_written_for_the_base(tmp_path, tiny_model_dir):
    out = tmp_path / "v0"
    code, _, stderr = run_trainer("null-adapter", "--base", str(tiny_model_dir), "--out", str(out))
    assert code == 0, stderr[-2000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_null_adapter_names_a_missing_base(tmp_path):
    code, events, _ = run_trainer(
        "null-adapter", "--base", str(tmp_path / "none"), "--out", str(tmp_path / "v0")
    )
    assert code == 2
    assert events[0]["kind"] == "BaseModelError" and "none does not exist" in events[0]["message"]
    assert not (tmp_path / "v0").exists()
