"""Real training on the tiny model: every method learns the users' preference, on held-out subjects.

The snapshot (tests/fixtures/training.py) is simulated feedback on a base model that answers facts
right but ignores "answer in uppercase."; the holdout asks about subjects never trained on. The
measure is the mean log-prob margin of the answer users want over the one they disliked, on the
holdout: an adapter that learned nothing stays at the base's.

Runs are short (100 steps of batch 16, 5-15 s each on one core) and share the session fixtures.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from safetensors.torch import load_file

from demo import tiny_world
from formats.run import RunSpec
from service.config import LauncherSettings, Settings, TrainingSettings
from service.launchers import launch_training
from tests.fixtures.training import (
    TRAINED_SPEC,
    greedy_answers,
    holdout_pairs,
    preference_margin,
    train_in_process,
    write_spec,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Nats of margin gained over the base. Measured: auto/KTO +5.1, SFT +2.2, DPO +6.0 (base +1.0;
# 2026-12-02, with the base of PRETRAIN_FOLLOW_RATE).
MIN_GAIN = 0.75  # a run that learned nothing gains 0
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "manifest.json"}


@pytest.fixture(scope="module")
def pairs(snapshot_dir) -> list[dict]:
    pairs = holdout_pairs(snapshot_dir)
    assert len(pairs) >= 40
    return pairs


@pytest.fixture(scope="module")
def base_margin(tiny_model_dir, pairs) -> float:
    return preference_margin(tiny_model_dir, None, pairs)


def spec_for(name: str, tiny_model_dir: Path, snapshot_dir: Path, out_root: Path, **fields) -> dict:
    return {
        "run_id": name,
        "base_model": str(tiny_model_dir),
        "snapshot_dir": str(snapshot_dir),
        "output_dir": str(out_root / name),
        **fields,
    }


def manifest_of(adapter_dir: Path) -> dict:
    return json.loads((adapter_dir / "manifest.json").read_text())


def test_auto_picks_kto_for_unpaired_thumbs_and_learns(
    trained_run, tiny_model_dir, snapshot_dir, pairs, base_margin
):
    adapter_dir, _ = trained_run
    manifest = manifest_of(adapter_dir)
    assert manifest["method"] == "kto" and manifest["method_requested"] == "auto"
    assert "mostly unpaired thumbs" in manifest["method_why"]

    margin = preference_margin(tiny_model_dir, adapter_dir, pairs)
    print(f"auto/kto holdout margin: base {base_margin:+.2f} -> adapter {margin:+.2f}")
    assert margin - base_margin >= MIN_GAIN


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_each_method_learns_the_preference(
    method, tiny_model_dir, snapshot_dir, training_dir, pairs, base_margin
):
    adapter_dir, _ = train_in_process(
        spec_for(
            method, tiny_model_dir, snapshot_dir, training_dir, method=method, optim=TRAINED_SPEC["optim"]
        )
    )
    assert manifest_of(adapter_dir)["method"] == method
    margin = preference_margin(tiny_model_dir, adapter_dir, pairs)
    print(f"{method} holdout margin: base {base_margin:+.2f} -> adapter {margin:+.2f}")
    assert margin - base_margin >= MIN_GAIN


def test_explicit_kto_with_the_same_seed_gives_the_same_adapter(
    trained_adapter, tiny_model_dir, snapshot_dir, training_dir
):
    """Deterministic with a seed: an explicit KTO run with auto's settings reproduces its weights bit for bit."""
    fields = {k: v for k, v in TRAINED_SPEC.items() if k != "method"}
    adapter_dir, _ = train_in_process(
        spec_for("kto", tiny_model_dir, snapshot_dir, training_dir, method="kto", **fields)
    )
    ours, theirs = (
        load_file(adapter_dir / "adapter_model.safetensors"),
        load_file(trained_adapter / "adapter_model.safetensors"),
    )
    assert ours.keys() == theirs.keys()
    assert all((ours[k] == theirs[k]).all() for k in ours)
    assert (adapter_dir / "adapter_config.json").read_bytes() == (
        trained_adapter / "adapter_config.json"
    ).read_bytes()
    assert manifest_of(adapter_dir)["method_why"] == "kto requested in the run spec"


def rule_rates(model_dir: Path, adapter_dir: Path | None) -> tuple[float, float]:
    """Share of exactly-right greedy answers on held-out uppercase prompts, and on held-out plain prompts."""
    upper = [q.messages for q in tiny_world.all_questions("holdout", kinds=("upper",))]
    plain = [q.messages for q in tiny_world.all_questions("holdout", kinds=("plain",))]
    answers = greedy_answers(model_dir, adapter_dir, upper + plain)

    def liked(prompts, replies):
        return sum(tiny_world.user_likes(p, a) for p, a in zip(prompts, replies, strict=True)) / len(prompts)

    return liked(upper, answers[: len(upper)]), liked(plain, answers[len(upper) :])


def test_trained_adapter_answers_better_on_held_out_prompts(trained_adapter, tiny_model_dir):
    """What the gate looks at: generated answers. Users' rule is followed far more, plain answers kept."""
    base_upper, base_plain = rule_rates(tiny_model_dir, None)
    upper, plain = rule_rates(tiny_model_dir, trained_adapter)
    print(
        f"held-out rule rate: uppercase {base_upper:.2f} -> {upper:.2f}, plain {base_plain:.2f} -> {plain:.2f}"
    )
    # The base is pre-trained on the demo app's prompts too, with facts said in uppercase 45% of
    # the times they are asked so (demo/tiny_model.py, PRETRAIN_FOLLOW_RATE). With 20% this reached
    # only 0.42 (2026-12-02). Untrained: 0.
    assert base_upper <= 0.1 and upper >= 0.5
    assert plain >= base_plain - 0.05


def test_bad_adapter_has_a_big_margin_and_broken_answers(bad_adapter, tiny_model_dir, pairs, base_margin):
    """training.md's warning, reproduced: the collapsed adapter wins on margin and loses on answers."""
    margin = preference_margin(tiny_model_dir, bad_adapter, pairs)
    upper, plain = rule_rates(tiny_model_dir, bad_adapter)
    print(f"bad adapter: margin {margin:+.2f}, rule rate uppercase {upper:.2f}, plain {plain:.2f}")
    assert margin - base_margin >= 5
    assert plain <= 0.5


def test_manifest_and_progress_events_of_a_run(trained_run, snapshot_dir, tiny_model_dir):
    adapter_dir, events = trained_run
    assert {p.name for p in adapter_dir.iterdir()} == ADAPTER_FILES
    assert not list(adapter_dir.parent.glob(".*partial*"))
    manifest = manifest_of(adapter_dir)
    snapshot_manifest = json.loads((snapshot_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["run_id"] == "trained" and manifest["parent_version"] == "tiny@v0"
    assert manifest["base_model"] == str(tiny_model_dir)
    assert manifest["snapshot_sha256"] == snapshot_manifest["sha256"]
    assert manifest["snapshot"]["rows"] == {"train": 480, "holdout": 160}
    assert (
        manifest["examples"]["kto_rows"]
        == manifest["examples"]["thumbs_up"]
        + manifest["examples"]["thumbs_down"]
        + manifest["examples"]["corrections"]
    )
    assert manifest["hyperparameters"]["learning_rate"] == 5e-4 and manifest["hyperparameters"]["beta"] == 1.0
    assert set(manifest["libraries"]) >= {"torch", "transformers", "trl", "peft"}
    assert manifest["metrics"]["steps"] == 100 and manifest["wall_time_s"] > 0
    assert manifest["lora"]["target_modules"] == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]

    assert events[0]["event"] == "start" and events[0]["method"] == "kto" and events[0]["why"]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 101))
    assert all(e["total_steps"] == 100 and isinstance(e["loss"], float) for e in steps)
    assert events[-1] == {**events[-1], "event": "done", "adapter_dir": str(adapter_dir)}
    assert events[-1]["metrics"]["steps"] == 100


def test_continue_from_a_parent_adapter(trained_adapter, tiny_model_dir, snapshot_dir, training_dir):
    """Lineage: the parent's weights are the start, its LoRA shape is kept, only the adapter is saved
    (TRL's frozen reference copy of the parent is not)."""
    adapter_dir, _ = train_in_process(
        spec_for(
            "child",
            tiny_model_dir,
            snapshot_dir,
            training_dir,
            method="dpo",
            parent_adapter=str(trained_adapter),
            parent_version="tiny@v1",
            lora={"r": 4},  # ignored: the parent's shape wins
            optim={"max_steps": 5},
        )
    )
    assert {p.name for p in adapter_dir.iterdir()} == ADAPTER_FILES
    manifest = manifest_of(adapter_dir)
    assert manifest["parent_adapter"] == str(trained_adapter) and manifest["parent_version"] == "tiny@v1"
    assert manifest["lora"]["r"] == 8
    child, parent = (
        load_file(adapter_dir / "adapter_model.safetensors"),
        load_file(trained_adapter / "adapter_model.safetensors"),
    )
    assert child.keys() == parent.keys()
    # Five small steps from the parent stay close to it (a fresh LoRA B would start at zero).
    b = next(k for k in parent if "lora_B" in k)
    assert (child[b] - parent[b]).abs().max() < parent[b].abs().max()


def test_cli_run_streams_json_lines_and_writes_the_adapter(tmp_path, tiny_model_dir, snapshot_dir):
    spec = write_spec(
        tmp_path / "SPEC.json",
        **spec_for(
            "cli",
            tiny_model_dir,
            snapshot_dir,
            tmp_path / "adapters",
            method="sft",
            optim={"max_steps": 10, "logging_steps": 5},
        ),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "run", str(spec)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is an event
    assert [e["event"] for e in events] == ["start", "step", "step", "done"]
    assert [(e["step"], e["total_steps"]) for e in events[1:3]] == [(5, 10), (10, 10)]
    adapter_dir = Path(events[-1]["adapter_dir"])
    assert adapter_dir == tmp_path / "adapters" / "cli"
    assert {p.name for p in adapter_dir.iterdir()} == ADAPTER_FILES
    # Where the adapter's time went: preparing the examples, then TRL's training loop; the rest
    # (loading the model, TRL's preprocessing, saving) is what is left of the adapter's wall time.
    done = events[-1]
    prepare, trained = done["prepare_wall_time_s"], done["metrics"]["train_runtime_s"]
    assert (
        prepare > 0 and trained > 0 and prepare + trained < done["adapter_wall_time_s"] <= done["wall_time_s"]
    )


def test_a_failure_during_training_leaves_no_adapter_dir(tmp_path, tiny_model_dir, snapshot_dir):
    """Inputs pass the checks, then the base model's weights turn out corrupt: nothing is left behind."""
    broken = tmp_path / "broken-base"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    out_root = tmp_path / "adapters"
    with pytest.raises(Exception, match="base model"):
        train_in_process(
            spec_for("broken", broken, snapshot_dir, out_root, method="sft", optim={"max_steps": 5})
        )
    assert list(out_root.iterdir()) == []


def test_accelerate_launcher_trains_the_same_adapter_shape_as_local(
    tmp_path, tiny_model_dir, snapshot_dir, trained_run
):
    """The `accelerate` launcher: `accelerate launch --multi_gpu --num_processes 2 -m trainer run`
    on this GPU-less host starts two CPU processes through torch.distributed (gloo), the command a
    2-GPU host runs (`--cpu` would start one: accelerate's CPU processes need mpirun): both train
    on their share of each batch, one reports progress and writes the one adapter, shaped as a
    `local` run's. The run goes through a shared artifact location (a file:// URL): each process
    copies the inputs from it, the adapter comes back from it, and the run's place there is removed."""
    fields = spec_for("ddp", tiny_model_dir, snapshot_dir, tmp_path / "adapters", method="dpo")
    settings = Settings(
        training=TrainingSettings(launcher="accelerate"),
        launcher=LauncherSettings(
            accelerate_args=("--multi_gpu", "--num_processes", "2"),
            artifacts_url=f"file://{tmp_path}/artifacts",
        ),
    )
    spec = msgspec.convert({**fields, "optim": {"max_steps": 6}}, RunSpec)
    events: list = []

    async def on_event(event) -> None:
        events.append(event)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    done = asyncio.run(launch_training(settings, spec, run_dir, project="p", on_event=on_event))
    assert [type(e).__name__ for e in events] == ["StartEvent", *["StepEvent"] * 6, "DoneEvent"]
    # 6 steps of 16 per process over 107 pairs: 1.5 epochs with two processes (one alone: 0.86).
    assert done.metrics["epochs"] > 1.0
    assert done.adapter_dir == str(tmp_path / "adapters" / "ddp")
    assert {p.name for p in (tmp_path / "adapters").iterdir()} == {"ddp"}
    assert {p.name for p in (tmp_path / "adapters" / "ddp").iterdir()} == ADAPTER_FILES
    assert list((tmp_path / "artifacts").rglob("*")) == [tmp_path / "artifacts" / "p"]

    # The session's `local` run (trained in-process, the same LoRA settings: the spec's defaults).
    local = trained_run[0]
    shapes = [
        {name: tuple(t.shape) for name, t in load_file(d / "adapter_model.safetensors").items()}
        for d in (tmp_path / "adapters" / "ddp", local)
    ]
    assert shapes[0] == shapes[1] and shapes[0]
    configs = [
        json.loads((d / "adapter_config.json").read_text()) for d in (tmp_path / "adapters" / "ddp", local)
    ]
    assert [(c["r"], sorted(c["target_modules"])) for c in configs] == [
        (configs[1]["r"], sorted(configs[1]["target_modules"]))
    ] * 2


def test_sigterm_mid_training_exits_130_and_leaves_nothing(tmp_path, tiny_model_dir, snapshot_dir):
    """The service cancels a run with SIGTERM: the partial directory goes with it."""
    spec = write_spec(
        tmp_path / "SPEC.json",
        **spec_for(
            "cancel",
            tiny_model_dir,
            snapshot_dir,
            tmp_path / "adapters",
            method="kto",
            optim={"max_steps": 5000},
        ),
    )
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainer", "run", str(spec)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        events = []
        for line in proc.stdout:  # wait until training is under way
            events.append(json.loads(line))
            if events[-1]["event"] == "step":
                break
        assert events and events[-1]["event"] == "step", (events, log.read_text()[-3000:])
        assert list((tmp_path / "adapters").iterdir())  # the hidden partial dir exists now
        proc.terminate()
        events += [json.loads(line) for line in proc.stdout]
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "Interrupted"
    assert list((tmp_path / "adapters").iterdir()) == []
