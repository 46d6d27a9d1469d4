"""The feedback gate's parts, and `evals.run` with it end to end against loopback stand-ins.

The holdout is the simulated one the training tests use (tests/fixtures/training.py: users of the
tiny world who like exactly-right answers, 5% label noise, some corrections). The stand-in vLLM
serves a candidate that follows "answer in uppercase." and an incumbent that never does; stand-in
judges either share the users' taste or always say "A". The learned judge's reward model is
trained for real in tests/test_trainer_reward.py; here it is a stand-in passed through the
`reward_model` seam.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from demo import tiny_world
from evals import EvalConfig, JudgeConfig, Report, run
from evals.calibration import (
    AgreementCalibration,
    AucCalibration,
    CalibrationConfig,
    agreement_and_kappa,
    calibrate_scores,
    calibrate_verdicts,
)
from evals.config import FeedbackGateConfig
from evals.evalset import EvalExample, load_holdout
from evals.feedback import HeldOutRating, group_feedback, prompt_key, read_holdout_ratings
from evals.reward_model import TrainerRewardModel
from evals.scorers.base import AnswerPair
from evals.scorers.degenerate import defect
from evals.scorers.learned import LearnedJudge
from evals.scorers.reference import ReferenceSimilarity
from formats.chat import FunctionCall, Tool, ToolCall
from formats.log import Message
from formats.snapshot import SnapshotRow, rows_to_table
from tests.fixtures.evals import OpenAIStub, chat_reply, model_server
from tests.fixtures.training import dicts_of, messages_of, simulate_feedback


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- grouping and references


def test_group_feedback_makes_pairs_and_drops_answers_users_disagree_on():
    q = user("what is the capital of peru? answer in uppercase.")
    ratings = [
        HeldOutRating(messages=q, answer="IT IS LIMA.", rating=1),
        HeldOutRating(messages=q, answer="it is lima.", rating=-1, correction="IT IS LIMA."),
        HeldOutRating(messages=q, answer="it is rome.", rating=-1),
        HeldOutRating(messages=q, answer="it is rome.", rating=1),  # another user liked it
        HeldOutRating(messages=q, answer="x", rating=None, correction="x"),  # corrects nothing
    ]
    [ex] = group_feedback(ratings)
    assert ex.key == prompt_key(q)
    assert ex.liked == ["IT IS LIMA."] and ex.disliked == ["it is lima."]
    assert ex.corrections == ["IT IS LIMA."]
    assert [(p.preferred, p.other, p.origin) for p in ex.pairs] == [
        ("IT IS LIMA.", "it is lima.", "correction"),
        ("IT IS LIMA.", "it is lima.", "thumbs"),
    ]
    assert len(ex.ratings) == 4  # every thumb counts once for the calibration


def write_holdout(path, rows) -> str:
    pq.write_table(rows_to_table(rows), path)
    return str(path)


@pytest.fixture(scope="module")
def holdout(tmp_path_factory) -> str:
    rows = simulate_feedback(
        "holdout", 200, seed=3, start=datetime(2026, 11, 20, tzinfo=UTC), correction_rate=0.5
    )
    return write_holdout(tmp_path_factory.mktemp("feedback") / "holdout.parquet", rows)


def test_feedback_is_found_for_every_holdout_example(holdout):
    """Scorers find an eval example's feedback by its prompt: the keys must agree with the eval set's."""
    keys = {ex.key for ex in group_feedback(read_holdout_ratings(holdout))}
    examples = load_holdout(holdout)
    assert examples and {e.key for e in examples} == keys


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def test_holdout_feedback_is_honest_about_cut_answers_and_tool_calls(tmp_path):
    """Schema-2 rows: a thumbs-up on a cut answer is never liked; an answer that only calls a tool
    is no text evidence (its correction still is a reference); the same messages with and without
    tools are two prompts, as in the eval set."""
    q = messages_of(user("what is the weather in paris?"))
    t0 = datetime(2026, 11, 20)
    call = Message(
        role="assistant",
        tool_calls=[
            ToolCall(id="c1", type="function", function=FunctionCall(name="get_weather", arguments="{}"))
        ],
    )

    def row(i: int, completion: Message, **fields: Any) -> SnapshotRow:
        return SnapshotRow(
            log_id=f"l{i}", prompt=q, completion=completion, created_at=t0 + timedelta(minutes=i), **fields
        )

    text = lambda s: Message(role="assistant", content=s)  # noqa: E731
    rows = [
        row(0, text("it is sunny in"), rating=1, problem="length"),
        row(1, text("it is sunny."), rating=1),
        row(2, text("no idea."), rating=-1),
        row(3, text(""), rating=1, problem="empty"),
        row(4, call, rating=1, tools=[msgspec.convert(WEATHER_TOOL, Tool)]),
        row(5, call, rating=-1, correction="18C and cloudy.", tools=[msgspec.convert(WEATHER_TOOL, Tool)]),
    ]
    path = write_holdout(tmp_path / "holdout.parquet", rows)
    ratings = read_holdout_ratings(path)
    assert [r.answer for r in ratings][4:] == [None, None] and ratings[0].problem == "length"
    plain, with_tools = group_feedback(ratings)
    assert plain.liked == ["it is sunny."] and plain.disliked == ["no idea."]
    assert sorted(plain.ratings) == [("it is sunny.", 1), ("no idea.", -1)]  # cut and empty: never liked
    assert with_tools.liked == [] and with_tools.ratings == [] and with_tools.pairs == []
    assert with_tools.corrections == ["18C and cloudy."] and with_tools.tools == [WEATHER_TOOL]
    assert {e.key for e in load_holdout(path)} == {plain.key, with_tools.key}


def test_reference_similarity_prefers_the_answer_closer_to_what_users_wrote():
    q = user("what is the capital of peru? answer in uppercase.")
    [ex] = group_feedback(
        [HeldOutRating(messages=q, answer="it is lima.", rating=-1, correction="IT IS LIMA.")]
    )
    scorer = ReferenceSimilarity(
        {ex.key: ex}, references="corrections", name="c", role="primary", min_examples=1
    )
    example = EvalExample(id="e", source="holdout", messages=q)
    pair = AnswerPair(example_id="e", candidate="IT IS LIMA.", incumbent="it is lima.")
    better = asyncio.run(scorer.score(example, pair, None))
    assert better.candidate == 1.0 and better.incumbent < 0.2 and better.difference > 0.8
    pair = AnswerPair(example_id="e", candidate="IT IS ROME.", incumbent="IT IS ROME.")
    same = asyncio.run(scorer.score(example, pair, None))
    assert same.difference == 0.0
    few = ReferenceSimilarity(
        {ex.key: ex}, references="corrections", name="c", role="primary", min_examples=2
    )
    assert few.role == "diagnostic" and "1 held-out prompts with a correction, 2 needed" in few.eligibility


@pytest.mark.parametrize(
    ("answer", "finish", "expected"),
    [
        ("IT IS LIMA.", "stop", None),
        ("   ", "stop", "empty"),
        ("IT IS LIMA. IT IS", "length", "truncated"),
        ("THE THE THE THE THE", "stop", "repetitive"),
        ("sure, it is lima. sure, it is lima. sure, it is lima. sure, it is lima.", "stop", "repetitive"),
        ("| a | b |\n| --- | --- |\n| --- | --- |\n| 1 | 2 |", "stop", None),
    ],
)
def test_degenerate_answers_are_named(answer, finish, expected):
    assert defect(answer, finish) == expected


# --- calibration


def test_auc_calibration_orders_pairs_within_a_prompt_and_needs_enough_of_them():
    preferred = [0.9, 0.8, 0.7, 0.6, 0.5] * 8
    other = [0.1, 0.2, 0.3, 0.6, 0.9] * 8  # right three times, a tie, wrong
    prompts = [f"p{i}" for i in range(40)]
    scores = preferred + other
    liked = [True] * 40 + [False] * 40
    c = calibrate_scores(preferred, other, prompts, scores, liked, CalibrationConfig(min_auc_low=0.5))
    assert c.auc == pytest.approx((3 + 0.5 + 0) / 5) and c.ties == 8 and c.pairs == 40
    assert c.eligible and c.low <= c.auc <= c.high and "calibrated: AUC within a prompt 0.700" in c.why
    assert c.pooled_auc == pytest.approx(roc_auc_score(liked, scores))
    assert c.base_rate == 0.5 and c.ratings == 80
    assert not calibrate_scores(preferred, other, prompts, scores, liked).eligible  # lower bound below 0.65
    few = calibrate_scores(preferred[:20], other[:20], prompts[:20], scores, liked)
    assert not few.eligible and "30 pairs needed" in few.why
    none = calibrate_scores([], [], [], scores, liked)
    assert not none.eligible and none.auc is None and "no preference pairs" in none.why
    # Corrections need no thumb: pairs alone calibrate (the pooled AUC is then unknown).
    alone = calibrate_scores([1.0] * 40, [0.0] * 40, prompts)
    assert alone.eligible and alone.pooled_auc is None and alone.ratings == 0


def test_auc_calibration_resamples_prompts_and_refuses_scores_that_are_not_numbers():
    """40 pairs on 4 prompts (one greedy answer corrected by ten users each) are 4 pieces of
    evidence, not 40: the interval is as wide as 4 prompts make it. A NaN score (a broken reward
    model) never calibrates, where its NaN bounds would pass every `<` comparison."""
    preferred, other = [1.0] * 30 + [0.0] * 10, [0.5] * 40
    spread = calibrate_scores(
        preferred, other, [f"p{i}" for i in range(40)], config=CalibrationConfig(min_auc_low=0.5)
    )
    clustered = calibrate_scores(preferred, other, [f"p{i // 10}" for i in range(40)])
    assert spread.auc == clustered.auc == pytest.approx(0.75)
    assert spread.eligible and spread.low > 0.55
    assert not clustered.eligible and clustered.low <= 0.5 and "of 4 prompts" in clustered.why
    for broken in (float("nan"), float("inf")):
        c = calibrate_scores([broken] + [1.0] * 39, [0.0] * 40, [f"p{i}" for i in range(40)])
        assert not c.eligible and c.auc is None and "not finite" in c.why
    c = calibrate_scores(
        [1.0] * 40, [0.0] * 40, [f"p{i}" for i in range(40)], [float("nan"), 0.0], [True, False]
    )
    assert not c.eligible and "not finite" in c.why


def test_a_reward_model_that_reads_only_the_question_is_not_calibrated():
    """The confound that vetoed a clearly better candidate (e2e, 2026-12-02): users dislike most
    answers to uppercase questions, so a model scoring the question alone has a high AUC over thumbs
    pooled across prompts, yet it cannot say which of two answers to one question users prefer."""
    feedback = group_feedback(
        HeldOutRating(messages=user(q), answer=a, rating=r, correction=c)
        for i in range(40)
        for q, a, r, c in (
            (f"what is fact {i}?", f"it is {i}.", 1, None),
            (f"what is fact {i}? answer in uppercase.", f"it is {i}.", -1, f"IT IS {i}."),
        )
    )
    pairs = [(ex.key, pair) for ex in feedback for pair in ex.pairs]
    assert len(pairs) == 40 and all(p.origin == "correction" for _, p in pairs)

    class ReadsTheQuestion:
        description = "reads the question"

        async def score(self, items):
            return [-1.0 if "uppercase" in i.messages[-1].content else 1.0 for i in items]

    class ReadsTheAnswer(ReadsTheQuestion):
        async def score(self, items):
            return [
                1.0 if i.answer.isupper() == ("uppercase" in i.messages[-1].content) else -1.0 for i in items
            ]

    for model, calibrated in ((ReadsTheQuestion(), False), (ReadsTheAnswer(), True)):
        judge = LearnedJudge(model, feedback, calibration=CalibrationConfig(resamples=500))
        asyncio.run(judge.prepare([], []))
        c = judge.calibration
        assert c is not None and c.pooled_auc == 1.0 and c.ratings == 80, c
        assert (judge.calibrated, judge.role) == (calibrated, "primary" if calibrated else "diagnostic"), (
            c.why
        )
        assert c.auc == (1.0 if calibrated else 0.5)


def test_a_position_biased_judge_agrees_half_the_time_and_has_kappa_zero():
    truth = ["A", "B"] * 40
    ids = [i // 2 for i in range(80)]
    biased = calibrate_verdicts(truth, ["A"] * 80, ids)
    assert biased.agreement == 0.5 and biased.kappa == 0.0 and not biased.eligible
    noisy = ["B" if i % 5 == 0 else x for i, x in enumerate(truth)]
    mixed = calibrate_verdicts(truth, noisy, ids)
    confusion = np.zeros((1, 3, 3))
    for a, b in zip(truth, noisy, strict=True):
        confusion[0, "AB".index(a), "AB".index(b)] += 1
    _, kappa = agreement_and_kappa(confusion)  # what the interval's resamples are computed with
    assert kappa[0] == pytest.approx(cohen_kappa_score(truth, noisy)) == pytest.approx(mixed.kappa)
    assert mixed.kappa_low < mixed.kappa < mixed.kappa_high
    faithful = calibrate_verdicts(truth, truth, ids)
    assert faithful.kappa == 1.0 and faithful.eligible and faithful.pairs == 40
    few = calibrate_verdicts(truth[:20], truth[:20], ids[:20], CalibrationConfig(min_pairs=30))
    assert not few.eligible and "30 pairs needed" in few.why


def test_a_judges_kappa_interval_resamples_prompts_not_pairs():
    """40 pairs on 4 prompts, 3 of them judged right: the same figures as 40 prompts, but the
    interval of 4 prompts' evidence."""
    truth = ["A", "B"] * 40
    ids = [i // 2 for i in range(80)]
    verdicts = [x if i // 2 < 30 else "AB"[x == "A"] for i, x in enumerate(truth)]
    spread = calibrate_verdicts(truth, verdicts, ids, prompts=[str(i // 2) for i in range(80)])
    clustered = calibrate_verdicts(truth, verdicts, ids, prompts=[str(i // 20) for i in range(80)])
    assert spread.kappa == clustered.kappa == pytest.approx(0.5) and spread.pairs == clustered.pairs == 40
    assert spread.kappa_low > 0.1 and clustered.kappa_low < 0.0


def test_a_judge_needs_pairs_from_enough_prompts_not_just_enough_pairs():
    """An app with a few fixed prompts (FAQ buttons) gives many pairs of few prompts, and a
    prompt's pairs share answers, so a judge ordering them at chance gets them all right or all
    wrong. 30 pairs of 3 prompts all ordered right: AUC 1.0 and an interval of [1.0, 1.0], since it
    resamples prompts; it must not calibrate. Of 10 prompts it does."""
    few = calibrate_scores([1.0] * 30, [0.0] * 30, [f"p{i % 3}" for i in range(30)])
    assert few.auc == few.low == 1.0 and not few.eligible and "10 prompts needed" in few.why
    assert calibrate_scores([1.0] * 30, [0.0] * 30, [f"p{i % 10}" for i in range(30)]).eligible
    truth = ["A", "B"] * 30
    ids = [i // 2 for i in range(60)]
    few_verdicts = calibrate_verdicts(truth, truth, ids, prompts=[str(i % 3) for i in range(60)])
    assert few_verdicts.kappa == 1.0 and not few_verdicts.eligible and "of 3 prompts" in few_verdicts.why
    assert calibrate_verdicts(truth, truth, ids, prompts=[str(i % 10) for i in range(60)]).eligible
    # Without prompt keys, each of the 30 pairs counts as a prompt, and the account says so.
    unkeyed = calibrate_verdicts(truth, truth, ids, CalibrationConfig(min_prompts=40))
    assert not unkeyed.eligible and "of 30 pairs, no prompt keys given" in unkeyed.why, unkeyed.why


def test_a_judge_at_chance_is_rarely_calibrated_from_the_fewest_prompts_allowed():
    """The module docstring's trials, at the floor: 10 prompts, 30 pairs, each prompt's pairs all
    right or all wrong at chance (measured 1% calibrated, 2026-12-03); a 95% interval's lower
    bound above 0.65 should be rarer than 1 in 20."""
    rng = np.random.default_rng(7)
    config = CalibrationConfig(resamples=500)
    prompts = [f"p{i % 10}" for i in range(30)]
    passed = 0
    for _ in range(200):
        right = rng.random(10) < 0.5
        preferred = [1.0 if right[i % 10] else 0.0 for i in range(30)]
        passed += calibrate_scores(preferred, [0.5] * 30, prompts, config=config).eligible
    assert passed <= 10, passed


# --- end to end with stand-ins


def conversation_of(body: dict[str, Any]) -> tuple[list[dict[str, str]], str, str]:
    text = body["messages"][-1]["content"]
    match = re.search(
        r"\[Conversation\]\nuser: (.*?)\n\n\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\n", text, re.S
    )
    assert match
    return user(match.group(1)), match.group(2), match.group(3)


def tasteful_judge(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """Prefers the answer the tiny world's users like."""
    prompt, a, b = conversation_of(body)
    la, lb = tiny_world.user_likes(prompt, a), tiny_world.user_likes(prompt, b)
    return 200, chat_reply("A" if la and not lb else "B" if lb and not la else "TIE")


def first_answer(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return 200, chat_reply("A")


class Refusing:
    """A judge endpoint that refuses `temperature` and wants max_completion_tokens, like some hosted APIs."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.bodies.append(body)
        if "temperature" in body:
            return 400, {
                "error": {"message": "Unsupported parameter: 'temperature' is not supported with this model."}
            }
        if "max_tokens" in body:
            return 400, {
                "error": {
                    "message": "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead."
                }
            }
        return tasteful_judge(path, body)


def incumbent_answer(messages) -> str:
    return tiny_world.parse_question(messages).fact  # never follows the instruction


ANSWERS = {"tiny@v2": tiny_world.correct_answer, "tiny@v1": incumbent_answer}


class LikesRightAnswers:
    """A stand-in reward model: +1 for an answer the tiny world's users like."""

    description = "stand-in reward model"

    async def score(self, items):
        return [
            float(tiny_world.user_likes(dicts_of(i.messages), i.answer)) + 0.01 * len(i.answer) for i in items
        ]


@pytest.fixture(scope="module")
def vllm():
    with OpenAIStub(model_server(ANSWERS)) as server:
        yield server


def feedback_config(vllm, holdout, **kw) -> EvalConfig:
    fields = {
        "vllm_url": vllm.url,
        "candidate": "tiny@v2",
        "incumbent": "tiny@v1",
        "holdout": holdout,
        "preference_agreement": False,
        "resamples": 2000,
        "feedback": FeedbackGateConfig(calibration=CalibrationConfig(resamples=500)),
    }
    return EvalConfig(**(fields | kw))


def test_with_no_answer_key_the_feedback_gate_promotes_the_better_candidate(vllm, holdout):
    with OpenAIStub(tasteful_judge) as j:
        report = run(
            feedback_config(vllm, holdout, judge=JudgeConfig(url=j.url + "/v1", model="j")),
            reward_model=LikesRightAnswers(),
        )
    assert report.status == "ok", report.error
    roles = {r.name: r.role for r in report.results}
    assert roles == {
        "judge": "primary",
        "references": "primary",
        "learned_judge": "primary",
        "forgetting_learned_judge": "guard",
        "forgetting_judge": "guard",
        "forgetting_liked": "diagnostic",
        "degenerate_answers": "guard",
    }
    judge = report.result("judge")
    assert (
        isinstance(judge.calibration, AgreementCalibration)
        and judge.calibration.kappa > 0.8
        and judge.calibration.eligible
    )
    learned = report.result("learned_judge")
    assert isinstance(learned.calibration, AucCalibration) and learned.calibration.low >= 0.65
    assert report.promote, [r.message for r in report.decision.reasons]
    md = report.to_markdown()
    assert "## Evidence" in md and "Cohen's kappa" in md and "AUC" in md
    again = Report.from_json(report.to_json())
    assert again.result("judge").calibration == judge.calibration


def test_an_uncalibrated_judge_only_reports(vllm, holdout):
    with OpenAIStub(first_answer) as j:
        report = run(feedback_config(vllm, holdout, judge=JudgeConfig(url=j.url + "/v1", model="j")))
    judge = report.result("judge")
    assert judge.role == "diagnostic" and judge.calibration.kappa == 0.0
    reason = next(r for r in report.decision.reasons if r.scorer == "judge")
    assert reason.ok and "not calibrated" in reason.message and "kappa" in reason.message
    # Without a calibrated judge, chrF to liked answers guards the liked prompts.
    assert report.result("forgetting_liked").role == "guard"


def test_the_judge_leaves_out_what_the_endpoint_refuses(vllm, holdout):
    endpoint = Refusing()
    with OpenAIStub(endpoint) as j:
        report = run(
            feedback_config(vllm, holdout, judge=JudgeConfig(url=j.url + "/v1", model="j", concurrency=1))
        )
    assert report.status == "ok", report.error
    first_ok = next(
        i for i, b in enumerate(endpoint.bodies) if "temperature" not in b and "max_tokens" not in b
    )
    assert first_ok == 2  # refused twice, then asked without: once per parameter, not once per request
    assert all("temperature" not in b and "max_completion_tokens" in b for b in endpoint.bodies[first_ok:])
    assert any("refused temperature, max_tokens" in n for n in report.result("judge").notes)


def test_feedback_evidence_can_be_turned_off(vllm, holdout):
    report = run(feedback_config(vllm, holdout, feedback=FeedbackGateConfig(enabled=False)))
    assert report.results == [] and not report.promote
    assert "no primary scorer" in report.decision.reasons[-1].message


def test_a_reward_model_that_cannot_score_is_not_eligible_and_the_evaluation_goes_on(vllm, holdout, tmp_path):
    report = run(feedback_config(vllm, holdout), reward_model=TrainerRewardModel(tmp_path / "missing"))
    assert report.status == "ok"
    learned = report.result("learned_judge")
    assert learned.role == "diagnostic" and "has no manifest.json" in learned.eligibility
    assert report.result("references").role == "primary"
