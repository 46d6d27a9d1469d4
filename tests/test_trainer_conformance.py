"""Realistic OpenAI traffic (tests/fixtures/conformance.py) through the trainer: every row either
trains or is left out with its reason, and SFT, DPO and KTO run on it with real TRL on the tiny model.

The tiny model's own chat template renders no tool calls: there, tool rows are left out and
counted; `tool_model_dir` is the same model with a template that renders tools, where they train.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.fixtures.conformance import CHAT_CASES, COMPLETION_CASES, Case, snapshot_rows
from tests.fixtures.training import train_in_process, write_snapshot
from trainer.dataset import KINDS, Examples, build_examples
from trainer.tokens import Renderer, fit_examples

pytestmark = pytest.mark.slow
ROW_REASONS = {"completions_in_chat_snapshot"}
STEPS = {"max_steps": 2, "batch_size": 4, "logging_steps": 1}


def fit(model_dir: Path, cases: list[Case]) -> tuple[Examples, Examples, Renderer]:
    from transformers import AutoTokenizer

    renderer = Renderer(AutoTokenizer.from_pretrained(model_dir, local_files_only=True))
    built = build_examples(snapshot_rows(cases))
    return built, fit_examples(built, renderer, 512), renderer


def check_fates(cases: list[Case], built: Examples, fitted: Examples, renderer: Renderer) -> None:
    """Each case's row has the fate it expects, and every example is either kept or counted."""
    kept = {e.log_id for kind in KINDS for e in fitted.of(kind)}
    for case in cases:
        fate = case.tool_fate if renderer.renders_tools and case.tool_fate else case.fate
        examples = [e for kind in KINDS for e in built.of(kind) if e.log_id == case.name]
        if fate == "trains":
            assert case.name in kept, case.name
        elif fate.startswith("not_positive:"):
            assert fitted.not_positive[fate.split(":")[1]] >= 1
            assert not [e for e in examples if e.label or "chosen" in e.answers or e in built.sft], case.name
        elif fate in ROW_REASONS:
            assert examples == [] and built.excluded[fate] == 1, case.name
        else:
            assert examples and case.name not in kept, case.name
            assert {renderer.fit(e, 512) for e in examples} == {fate}, case.name
    for kind in KINDS:  # nothing vanishes: kept + dropped = built
        assert len(built.of(kind)) == len(fitted.of(kind)) + sum(fitted.dropped[kind].values()), kind


def test_each_row_trains_or_is_left_out_with_its_reason(tiny_model_dir):
    built, fitted, renderer = fit(tiny_model_dir, CHAT_CASES)
    assert not renderer.renders_tools
    check_fates(CHAT_CASES, built, fitted, renderer)
    counts = fitted.counts()
    assert counts["excluded"] == {"completions_in_chat_snapshot": 1}
    assert counts["not_positive"] == {"empty": 1, "interrupted": 1, "length": 1}
    assert counts["dropped"]["sft"] == {"too_long": 1, "tool_calls_not_rendered": 2}
    assert counts["prompts_truncated"]["sft"] == counts["system_dropped"]["sft"] == 1
    # The corrected tool call: its text correction trains, the rejected tool call cannot render.
    assert [e.log_id for e in fitted.sft].count("correction_of_a_tool_call") == 1
    assert "correction_of_a_tool_call" not in {e.log_id for e in fitted.dpo}


def test_with_a_tool_template_tool_calls_train_as_tool_calls(tool_model_dir):
    built, fitted, renderer = fit(tool_model_dir, CHAT_CASES)
    assert renderer.renders_tools
    check_fates(CHAT_CASES, built, fitted, renderer)
    assert fitted.counts()["dropped"] == {"sft": {"too_long": 1}, "kto": {"too_long": 1}}
    tool_answer = next(e.trl for e in fitted.sft if e.log_id == "tool_call_answer")
    # Arguments as vLLM hands them to the template (parsed); tools with vLLM's null fields.
    assert tool_answer["completion"] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        }
    ]
    agent = next(e.trl for e in fitted.sft if e.log_id == "agent_turn_in_prompt")
    assert json.loads(agent["tools"])[1] == {
        "type": "function",
        "function": {"name": "search", "description": None, "parameters": None},
    }
    assert agent["prompt"][-1] == {"role": "tool", "content": "18C, cloudy", "tool_call_id": "call_1"}
    bad_json = next(e.trl for e in fitted.kto if e.log_id == "tool_arguments_not_json")
    assert bad_json["prompt"][1]["tool_calls"][0]["function"]["arguments"] == {}  # vLLM's coercion


def test_prompts_are_the_ones_vllm_renders_and_cut_from_the_oldest_turn(tiny_model_dir):
    _, fitted, _ = fit(tiny_model_dir, CHAT_CASES)
    prompt = {e.log_id: e.trl["prompt"] for e in fitted.sft}
    # The tiny template has no developer role: vLLM makes developer messages system messages and
    # merges every system message into the first.
    assert prompt["developer_role"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of Peru?"},
    ]
    assert prompt["multi_turn_with_system_and_developer"][0] == {
        "role": "system",
        "content": "You are terse.\n\nNow answer in French.",
    }
    assert prompt["very_long_earlier_turn"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "And the capital of Spain?"},
    ]
    assert prompt["very_long_system_prompt"] == [{"role": "user", "content": "Capital of Chile?"}]
    assert prompt["part_list_content"] == [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def conformance_snapshots(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conformance")
    chat = snapshot_rows(CHAT_CASES)
    completions = snapshot_rows(COMPLETION_CASES)
    return {
        "chat": write_snapshot(root / "chat", chat, chat[:3]),
        "completions": write_snapshot(root / "completions", completions, completions[:2]),
    }


def train(name: str, model_dir: Path, snapshot: Path, out: Path, method: str) -> dict:
    adapter_dir, events = train_in_process(
        {
            "run_id": name,
            "base_model": str(model_dir),
            "snapshot_dir": str(snapshot),
            "output_dir": str(out / name),
            "method": method,
            "min_examples": 1,
            "optim": STEPS,
        }
    )
    manifest = json.loads((adapter_dir / "manifest.json").read_text())
    assert events[-1]["event"] == "done"
    assert math.isfinite(manifest["metrics"]["train_loss"])
    return manifest


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_every_method_trains_on_the_conformance_snapshot(
    method, tool_model_dir, conformance_snapshots, tmp_path
):
    manifest = train(f"conf-{method}", tool_model_dir, conformance_snapshots["chat"], tmp_path, method)
    _, fitted, _ = fit(tool_model_dir, CHAT_CASES)
    examples = manifest["examples"]
    assert examples == fitted.counts()
    assert manifest["metrics"]["examples_trained"] == len(fitted.of(method))  # TRL dropped nothing
    assert examples["trainable_tokens"][method] == fitted.trainable_tokens(method) > 0
    assert manifest["hyperparameters"]["max_length"] == max(e.length for e in fitted.of(method))


def test_the_stock_template_trains_without_the_tool_rows(tiny_model_dir, conformance_snapshots, tmp_path):
    manifest = train("conf-stock", tiny_model_dir, conformance_snapshots["chat"], tmp_path, "kto")
    assert manifest["examples"]["dropped"]["kto"] == {"too_long": 1, "tool_calls_not_rendered": 4}
    assert manifest["metrics"]["examples_trained"] == manifest["examples"]["kto_rows"] == 14


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_a_completions_snapshot_trains_in_the_standard_format(
    method, tiny_model_dir, conformance_snapshots, tmp_path
):
    manifest = train(f"text-{method}", tiny_model_dir, conformance_snapshots["completions"], tmp_path, method)
    examples = manifest["examples"]
    assert examples["not_positive"] == {"length": 1}
    assert examples["dropped"] == {"sft": {"too_long": 1}, "kto": {"too_long": 1}}
    assert (
        manifest["metrics"]["examples_trained"]
        == examples[{"sft": "sft_rows", "dpo": "dpo_pairs", "kto": "kto_rows"}[method]]
    )
