"""`python -m demo tiny-model` and `python -m trainer null-adapter`: wired to the builders, errors as exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_trainer_inputs import REPO, run_trainer


def run_demo_cli(*args: str) -> tuple[int, list[dict], str]:
    """Run `python -m demo ...`; return the exit code, the stdout events and stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "demo", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.mark.slow
def test_tiny_model_builds_a_loadable_model_dir(tmp_path):
    code, _, stderr = run_demo_cli("tiny-model", str(tmp_path / "tiny"), "--pretrain-steps", "5")
    assert code == 0, stderr[-2000:]
    info = json.loads((tmp_path / "tiny" / "tiny_model.json").read_text())
    assert info["pretrain_steps"] == 5
    assert (tmp_path / "tiny" / "config.json").is_file()


def test_tiny_model_refuses_a_non_empty_dir(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    code, events, _ = run_demo_cli("tiny-model", str(tmp_path / "taken"))
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


def test_ratchet_tiny_model_runs_the_demo_package(tmp_path):
    """`ratchet tiny-model` (the product's CLI, which never imports the demo) runs `python -m demo`."""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "tiny-model", str(tmp_path / "taken"), "--family", "qwen3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "not empty" in proc.stderr, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1])["event"] == "error"
