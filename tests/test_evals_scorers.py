"""Known-answer tests per scorer: each would fail if the scorer scored wrongly."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest

from evals import (
    AnswerPair,
    EvalExample,
    EvalInputError,
    GoldenConfig,
    GoldenScorer,
    JudgeConfig,
    JudgeError,
    PairwiseJudge,
    RulesConfig,
    RuleScorer,
    RuleSpec,
    ScorerError,
    UserPreference,
    parse_verdict,
)
from evals.scorers.rules import rule_failure
from tests.fixtures.evals import OpenAIStub, chat_reply, closed_port_url, first_answer_judge, judge


def example(text: str = "summarise the report.", **kw) -> EvalExample:
    return EvalExample(
        id=kw.pop("id", "ex"),
        source=kw.pop("source", "holdout"),
        messages=[{"role": "user", "content": text}],
        **kw,
    )


def score(scorer, ex: EvalExample, candidate: str, incumbent: str):
    return asyncio.run(
        scorer.score(ex, AnswerPair(example_id=ex.id, candidate=candidate, incumbent=incumbent), None)
    )


# --- rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "answer", "passes"),
    [
        (RuleSpec(name="w", max_words=3), "one two three", True),
        (RuleSpec(name="w", max_words=3), "one two  three\nfour", False),
        (RuleSpec(name="w", max_words=0), "", True),
        (RuleSpec(name="m", must_match=r"^[A-Z ]+$"), "PARIS", True),
        (RuleSpec(name="m", must_match=r"^[A-Z ]+$"), "Paris", False),
        (RuleSpec(name="n", must_not_match=r"(?i)\bsorry\b"), "Sorry, no.", False),
        (RuleSpec(name="n", must_not_match=r"(?i)\bsorry\b"), "sorryful", True),
        (RuleSpec(name="j", valid_json=True), '{"a": 1}', True),
        (RuleSpec(name="j", valid_json=True), "{'a': 1}", False),
        (RuleSpec(name="s", json_schema={"type": "object", "required": ["title"]}), '{"title": "x"}', True),
        (RuleSpec(name="s", json_schema={"type": "object", "required": ["title"]}), '{"name": "x"}', False),
        (RuleSpec(name="s", json_schema={"type": "object"}), "not json", False),
        (RuleSpec(name="both", must_match="a", max_words=1), "a b", False),
    ],
)
def test_rule_checks(rule, answer, passes):
    assert (rule_failure(rule, answer) is None) is passes


def test_summary_under_50_words():
    rules = RulesConfig(rules=[RuleSpec(name="summary-under-50-words", max_words=49)], role="primary")
    result = score(RuleScorer(rules), example(), "short summary " * 10, "long " * 60)
    assert (result.candidate, result.incumbent, result.difference) == (1.0, 0.0, 1.0)
    assert "60 words > 49" in result.detail


def test_rule_score_is_the_share_of_applicable_rules_passed():
    rules = RulesConfig(
        rules=[
            RuleSpec(name="upper", when_prompt_matches="(?i)uppercase", must_not_match="[a-z]"),
            RuleSpec(name="short", max_words=2),
            RuleSpec(name="json", when_prompt_matches="(?i)json", valid_json=True),  # never applies here
        ]
    )
    scorer = RuleScorer(rules)
    ex = example("capital of peru? answer in uppercase.")
    result = score(scorer, ex, "LIMA", "lima is the capital")
    assert (result.candidate, result.incumbent, result.difference) == (1.0, 0.0, 1.0)
    result = score(scorer, ex, "Lima", "LIMA CITY")
    assert (result.candidate, result.incumbent, result.difference) == (0.5, 1.0, -0.5)
    plain = example("capital of peru?")
    assert score(scorer, plain, "lima", "lima").difference == 0.0
    assert not RuleScorer(RulesConfig(rules=[rules.rules[2]])).applies_to(plain)
    assert not scorer.applies_to(example("x", source="golden"))


def test_bad_rules_are_refused_with_the_rule_name(tmp_path):
    with pytest.raises(EvalInputError, match=r"'r'.*must_match is not a valid regex"):
        RuleSpec(name="r", must_match="(unclosed")
    with pytest.raises(EvalInputError, match="checks nothing"):
        RuleSpec(name="empty")
    with pytest.raises(EvalInputError, match="json_schema is invalid"):
        RuleSpec(name="s", json_schema={"type": "no-such-type"})
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"name": "x", "max_wrods": 3}]}))
    with pytest.raises(EvalInputError, match="max_wrods"):
        RulesConfig.load(path)
    path.write_text(json.dumps({"rules": [{"name": "x", "must_match": "("}]}))
    with pytest.raises(EvalInputError, match=r"rules\[0\]"):
        RulesConfig.load(path)


# --- golden --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "answer", "expected"),
    [
        ("exact", " paris \n", 1.0),
        ("exact", "Paris", 0.0),
        ("exact", "paris.", 0.0),
        ("casefold", "PARIS", 1.0),
        ("contains", "it is paris, france", 1.0),
        ("contains", "it is lima", 0.0),
    ],
)
def test_golden_reference_match(match, answer, expected):
    ex = example("capital of france?", source="golden", reference="paris", match=match)
    result = score(GoldenScorer(GoldenConfig(path="-")), ex, answer, "paris")
    assert result.candidate == expected
    assert result.difference == expected - 1.0


def test_golden_checks_must_all_pass():
    ex = example("describe x", source="golden", checks=[RuleSpec(name="short", max_words=3)])
    result = score(GoldenScorer(GoldenConfig(path="-")), ex, "a b c d", "a b")
    assert (result.candidate, result.incumbent) == (0.0, 1.0)
    assert "short" in result.detail
    assert GoldenScorer(GoldenConfig(path="-")).role == "guard"


# --- user preference -----------------------------------------------------------------------------


def test_user_preference_wraps_a_callable():
    likes_upper = UserPreference(lambda messages, answer: answer.isupper())
    result = score(likes_upper, example(), "YES", "yes")
    assert (result.candidate, result.incumbent, result.difference) == (1.0, 0.0, 1.0)
    graded = UserPreference(lambda messages, answer: len(answer) / 10, name="length")
    assert score(graded, example(), "12345", "1").difference == pytest.approx(0.4)


# --- judge ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"),
        ("b", "B"),
        (" TIE\n", "TIE"),
        ("**A**.", "A"),
        ("[[B]]", "B"),
        ("A - it follows the instruction", "A"),
        ("Tie.", "TIE"),
        ("Answer A", None),
        ("AB", None),
        ("banana", None),
        ("", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def run_judge(config: JudgeConfig, pairs: list[tuple[str, str]]):
    async def go():
        scorer = PairwiseJudge(config)
        try:
            return [
                await scorer.score(
                    example(id=f"e{i}"), AnswerPair(example_id=f"e{i}", candidate=c, incumbent=i_), None
                )
                for i, (c, i_) in enumerate(pairs)
            ]
        finally:
            await scorer.aclose()

    return asyncio.run(go())


PAIRS = [("LIMA", "lima"), ("CAIRO", "cairo"), ("lima", "LIMA")]


def test_judge_that_always_prefers_the_first_answer_ends_a_tie():
    with OpenAIStub(first_answer_judge()) as stub:
        scores = run_judge(JudgeConfig(url=stub.url + "/v1", model="j"), PAIRS)
    assert [s.difference for s in scores] == [0.0, 0.0, 0.0]
    assert len(stub.calls) == 2 * len(PAIRS)
    # Both orders were really asked: the candidate's answer appears once as A and once as B.
    firsts = sorted(
        c[1]["messages"][0]["content"].split("[Answer A]\n")[1].split("\n")[0] for c in stub.calls[:2]
    )
    assert firsts == ["LIMA", "lima"]


def test_judge_scores_a_consistent_preference_in_both_orders():
    prefers_upper = judge(
        lambda a, b: "A" if a.isupper() and not b.isupper() else ("B" if b.isupper() else "TIE")
    )
    with OpenAIStub(prefers_upper) as stub:
        scores = run_judge(JudgeConfig(url=stub.url + "/v1", model="j"), [*PAIRS, ("x", "y")])
    assert [s.difference for s in scores] == [1.0, 1.0, -1.0, 0.0]
    assert "TIE" in scores[3].detail


def test_judge_half_point_for_a_win_and_a_tie():
    # Prefers the candidate when it comes first, calls it a tie otherwise.
    with OpenAIStub(judge(lambda a, b: "A" if a == "good" else "TIE")) as stub:
        [result] = run_judge(JudgeConfig(url=stub.url + "/v1", model="j"), [("good", "bad")])
    assert result.difference == 0.5


def test_identical_answers_tie_without_asking_the_judge():
    with OpenAIStub(first_answer_judge()) as stub:
        [result] = run_judge(JudgeConfig(url=stub.url + "/v1", model="j"), [("same", " same ")])
    assert result.difference == 0.0 and stub.calls == []


def test_judge_prompt_is_configurable_and_must_have_placeholders():
    config = JudgeConfig(
        url="http://x/v1", model="j", prompt="Q: {conversation}\n1) {answer_a}\n2) {answer_b}\n{not_a_field}"
    )
    text = PairwiseJudge(config).prompt(example("hi {there}"), "one", "two")
    assert text == "Q: user: hi {there}\n1) one\n2) two\n{not_a_field}"
    with pytest.raises(EvalInputError, match="answer_b"):
        JudgeConfig(url="http://x/v1", model="j", prompt="{answer_a} only")


def test_garbage_verdict_is_a_scorer_error():
    with (
        OpenAIStub(judge(lambda a, b: "I think both are lovely")) as stub,
        pytest.raises(ScorerError, match="no verdict"),
    ):
        run_judge(JudgeConfig(url=stub.url + "/v1", model="j"), PAIRS[:1])


def test_judge_that_answers_no_completion_is_a_judge_error():
    with (
        OpenAIStub(lambda path, body: (200, "<html>oops</html>")) as stub,
        pytest.raises(JudgeError, match="no chat completion"),
    ):
        run_judge(JudgeConfig(url=stub.url + "/v1", model="j"), PAIRS[:1])


def test_judge_down_is_a_judge_error():
    config = JudgeConfig(url=closed_port_url(), model="j", retries=1)
    with pytest.raises(JudgeError, match="unreachable"):
        run_judge(config, PAIRS[:1])


def test_judge_errors_are_retried_then_reported():
    replies = iter([(503, {"error": {"message": "busy"}})] * 2)

    def flaky(path, body):
        return next(replies, (200, chat_reply("A")))

    with OpenAIStub(flaky) as stub:
        [result] = run_judge(JudgeConfig(url=stub.url + "/v1", model="j", retries=2), [("x", "y")])
    assert len(stub.calls) == 4 and result.difference in (0.0, 0.5, 1.0, -0.5, -1.0)
    with OpenAIStub(lambda p, b: (401, {"error": {"message": "bad key"}})) as stub:
        with pytest.raises(JudgeError, match="401: bad key"):
            run_judge(JudgeConfig(url=stub.url + "/v1", model="j"), [("x", "y")])
        assert len(stub.calls) <= 2  # at most one per order: a 401 is not retried


def test_config_round_trips_and_forbids_unknown_fields():
    config = JudgeConfig(url="http://x/v1", model="j", api_key="secret")
    assert msgspec.json.decode(msgspec.json.encode(config), type=JudgeConfig) == config
    with pytest.raises(msgspec.ValidationError, match="temprature"):
        msgspec.json.decode(b'{"url": "u", "model": "m", "temprature": 1}', type=JudgeConfig)
