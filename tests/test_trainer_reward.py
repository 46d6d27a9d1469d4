"""The learned judge for real: a reward model trained beside the adapter on the tiny model, scored
by `python -m trainer score` in a subprocess (as evals runs it), calibrated on the holdout's own
thumbs, and judging answers on held-out prompts.

One training run (adapter + reward model, the same snapshot and process) also gives the measure
the issue asks for: the reward model's training time next to the adapter's.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

from demo import tiny_world
from evals.calibration import CalibrationConfig
from evals.config import EvalConfig
from evals.errors import RewardModelError
from evals.evalset import EvalExample
from evals.feedback import group_feedback, read_holdout_ratings
from evals.reward_model import ScorerProcess, TrainerRewardModel, reward_item
from evals.runner import score_with
from evals.scorers.base import AnswerPair
from evals.scorers.learned import LearnedJudge
from formats.chat import FunctionCall, ToolCall
from formats.log import Message
from formats.reward import REWARD_MANIFEST_VERSION, RewardManifest
from formats.snapshot import SnapshotRow
from tests.fixtures.training import build_snapshot, messages_of
from trainer.progress import Progress
from trainer.reward import RewardModelError as TrainerRewardModelError
from trainer.reward import build_pairs, rated_answers, read_manifest, tokenized_pairs
from trainer.run import _train_reward_model
from trainer.snapshot import read_snapshot
from trainer.spec import RunSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_with_reward_model(trained_run, reward_model_dir) -> tuple[Path, Path, list[dict]]:
    """The session's good adapter, the reward model its run trained beside it, and the run's events."""
    adapter, events = trained_run
    return adapter, reward_model_dir, events


def test_the_run_trains_a_reward_model_beside_the_adapter(run_with_reward_model, snapshot_dir):
    adapter, reward_dir, events = run_with_reward_model
    assert {p.name for p in reward_dir.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    }
    assert not list(reward_dir.parent.glob(".*partial*"))
    manifest = json.loads((reward_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == REWARD_MANIFEST_VERSION and manifest["kind"] == "reward_model"
    assert manifest["snapshot_sha256"] == read_snapshot(snapshot_dir).sha256
    assert manifest["examples"]["pairs"] >= 200 and manifest["metrics"]["steps"] == 100
    adapter_config = json.loads((reward_dir / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS" and "score" in adapter_config["modules_to_save"]
    done = events[-1]
    assert done["event"] == "done" and done["reward_model"]["dir"] == str(reward_dir)
    assert json.loads((adapter / "manifest.json").read_text())["reward_model"] == done["reward_model"]
    steps = [e for e in events if e["event"] == "reward_step"]
    assert steps and steps[-1]["step"] == 100
    reward_s, adapter_s = done["reward_model"]["wall_time_s"], done["adapter_wall_time_s"]
    print(
        f"training wall time: adapter {adapter_s:.1f} s, reward model {reward_s:.1f} s ({reward_s / adapter_s:.2f}x)"
    )


def test_the_reward_model_is_calibrated_on_held_out_pairs_and_prefers_what_users_like(
    run_with_reward_model, snapshot_dir
):
    """Scored in a subprocess by the trainer; AUC within a prompt on the holdout's real preference
    pairs (its 160 rows hold 22: 12 corrections, 10 liked over disliked), so 20 pairs suffice here;
    then as a judge: answers that follow the users' instruction beat the base's plain answers on
    held-out prompts."""
    _, reward_dir, _ = run_with_reward_model
    feedback = group_feedback(read_holdout_ratings(snapshot_dir / "holdout.parquet"))
    judge = LearnedJudge(
        TrainerRewardModel(reward_dir), feedback, calibration=CalibrationConfig(resamples=2000, min_pairs=20)
    )
    upper = [q for q in tiny_world.all_questions("holdout", kinds=("upper",))][:60]
    examples = [EvalExample(id=f"q{i}", source="holdout", messages=q.messages) for i, q in enumerate(upper)]
    answers = [
        AnswerPair(example_id=e.id, candidate=q.answer, incumbent=q.fact)
        for e, q in zip(examples, upper, strict=True)
    ]
    config = EvalConfig(
        vllm_url="http://unused", candidate="c", incumbent="i", holdout="unused", resamples=2000
    )
    result = asyncio.run(score_with(judge, config, examples, answers, None))
    c = judge.calibration
    print(f"learned judge on the holdout: {judge.eligibility}")
    print(
        f"learned judge, uppercase answers vs plain on {result.stats.n} held-out prompts: {result.stats.mean:+.3f} [{result.stats.low:+.3f}, {result.stats.high:+.3f}]"
    )
    assert c is not None and c.pairs >= 20 and c.ratings >= 100 and c.eligible and c.low >= 0.65
    assert result.role == "primary" and result.stats.low > 0


def test_the_score_command_refuses_a_directory_that_is_no_reward_model(run_with_reward_model, tmp_path):
    adapter, _, _ = run_with_reward_model
    model = TrainerRewardModel(adapter)  # an adapter directory: a manifest, but not of a reward model
    with pytest.raises(Exception, match="not a reward model manifest"):
        asyncio.run(model.score([reward_item("1", [{"role": "user", "content": "hi"}], "x")]))


def test_one_scorer_process_serves_every_evaluation_and_is_restarted_when_it_dies(
    run_with_reward_model, tmp_path
):
    """`python -m trainer score-server` behind `ScorerProcess`: scores as the reward model gives
    them (uppercase answers to "answer in uppercase" above plain ones, the same twice), one
    process for many requests (a refused one included), a new one after a kill, and none left
    after `aclose`. (The one-shot `trainer score` is the test above's path.)"""
    adapter, reward_dir, _ = run_with_reward_model
    items = [
        reward_item(str(i), q.messages, answer)
        for i, q in enumerate(tiny_world.all_questions("holdout", kinds=("upper",))[:8])
        for answer in (q.answer, q.fact)
    ]

    async def session() -> None:
        scorer = ScorerProcess(timeout_s=300)
        kept = TrainerRewardModel(reward_dir, scorer=scorer)
        try:
            await scorer.start()
            pid = scorer.pid
            once = await kept.score(items)
            assert all(upper > plain for upper, plain in zip(once[::2], once[1::2], strict=True))
            with pytest.raises(RewardModelError, match="not a reward model manifest"):
                await TrainerRewardModel(adapter, scorer=scorer).score(items[:1])
            assert await kept.score(items[:2]) == pytest.approx(once[:2], abs=1e-5)
            assert scorer.pid == pid and scorer.starts == 1  # torch imported once for all three
            os.kill(pid, signal.SIGKILL)  # dies between evaluations (OOM killer, an operator)
            await asyncio.sleep(0.5)
            assert await kept.score(items[:2]) == pytest.approx(once[:2], abs=1e-5)
            assert scorer.starts == 2 and scorer.pid not in (None, pid)
            last = scorer.pid
        finally:
            await scorer.aclose()
        assert scorer.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(last, 0)

    asyncio.run(session())


def test_pairs_from_feedback_and_too_little_signal_skips_only_the_reward_model(tmp_path, tiny_model_dir):
    small = build_snapshot(tmp_path / "snap", n_train=20, n_holdout=10)
    snapshot = read_snapshot(small)
    pairs = build_pairs(rated_answers(snapshot.train))
    assert pairs.corrections + pairs.same_prompt + pairs.cross_prompt == len(pairs.pairs)
    assert all(not chosen.answer.tool_calls for chosen, _ in pairs.pairs)
    assert len(pairs.pairs) >= max(pairs.thumbs_up, pairs.thumbs_down)  # every thumb used at least once
    spec = msgspec.convert(
        {"run_id": "r", "base_model": str(tiny_model_dir), "snapshot_dir": str(small), "output_dir": str(tmp_path / "a"),
         "reward_model": {"output_dir": str(tmp_path / "rm"), "min_pairs": 1000}},
        RunSpec,
    )  # fmt: skip
    outcome = _train_reward_model(spec, snapshot, Progress(io.StringIO()))
    assert "too little signal for a reward model" in (outcome.skipped or "")
    assert not (tmp_path / "rm").exists()


def test_honest_pairs_cut_answers_are_never_liked_and_tool_calls_need_a_template_that_renders_them(
    tiny_model_dir,
):
    """A thumbs-up on an answer cut by length is not liked (counted); a completions row is left
    out; a pair with a tool call is left out when the base model's template cannot render tools."""
    from transformers import AutoTokenizer

    from trainer.tokens import Renderer

    t0 = datetime(2026, 11, 1)
    q = messages_of([{"role": "user", "content": "what is the capital of peru?"}])
    call = Message(
        role="assistant",
        tool_calls=[ToolCall(id="c1", type="function", function=FunctionCall(name="lookup", arguments="{}"))],
    )
    rows = [
        SnapshotRow(log_id="a", prompt=q, completion=Message(role="assistant", content="lima"), created_at=t0, rating=1),
        SnapshotRow(log_id="b", prompt=q, completion=Message(role="assistant", content="li"), created_at=t0, rating=1, problem="length"),
        SnapshotRow(log_id="c", prompt=q, completion=Message(role="assistant", content="rome"), created_at=t0, rating=-1),
        SnapshotRow(log_id="d", prompt="capital of peru:", completion=Message(role="assistant", content="x"), created_at=t0, rating=1),
        SnapshotRow(log_id="e", prompt=q, completion=call, created_at=t0, rating=-1, correction="LIMA"),
    ]  # fmt: skip
    rated = rated_answers(rows)
    assert rated.left_out == {"completions_prompt": 1, "not_liked_length": 1}
    pairs = build_pairs(rated)
    assert (pairs.thumbs_up, pairs.thumbs_down, pairs.corrections) == (1, 2, 1)
    chosen = {c.answer.content for c, _ in pairs.pairs}
    assert "li" not in chosen and chosen <= {"lima", "LIMA"}
    renderer = Renderer(AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True))
    rows_ids = tokenized_pairs(pairs, renderer, max_length=16)
    expected_left_out = 0 if renderer.renders_tools else 2  # the correction pair and lima-over-call
    assert pairs.left_out.get("tool_calls_not_rendered", 0) == expected_left_out
    assert len(rows_ids) == len(pairs.pairs) - expected_left_out
    assert all(len(r["chosen_ids"]) <= 16 and len(r["rejected_ids"]) <= 16 for r in rows_ids)


def test_the_reward_manifest_is_read_typed_and_version_first(tmp_path):
    """`manifest.json` of a reward model is `formats.reward.RewardManifest` (was a dict read by
    key): a newer version is refused naming both versions, before a field it may have changed."""
    written = RewardManifest(run_id="r1", base_model="/models/tiny", snapshot_sha256="ab" * 32,
                             max_length=256, pad_token_id=0)  # fmt: skip
    (tmp_path / "manifest.json").write_bytes(written.encode())
    assert read_manifest(tmp_path) == written
    newer = {
        **msgspec.to_builtins(written),
        "schema_version": REWARD_MANIFEST_VERSION + 1,
        "max_length": "long",
    }
    (tmp_path / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(
        TrainerRewardModelError, match=f"schema_version {REWARD_MANIFEST_VERSION + 1}; this version"
    ):
        read_manifest(tmp_path)
    missing = {k: v for k, v in msgspec.to_builtins(written).items() if k != "max_length"}
    (tmp_path / "manifest.json").write_text(json.dumps(missing))
    with pytest.raises(TrainerRewardModelError, match="max_length"):
        read_manifest(tmp_path)
