"""Snapshot rows -> SFT, DPO and KTO examples, and the method `auto` picks (pure Python, no training)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from formats.log import Message
from formats.snapshot import SnapshotRow
from trainer.dataset import Example, build_examples, choose_method
from trainer.errors import NotEnoughSignalError

T0 = datetime(2026, 11, 1)


def row(
    i: int,
    question: str,
    answer: str | Message,
    rating: int | None = None,
    correction: str | None = None,
    **fields: Any,
) -> SnapshotRow:
    return SnapshotRow(
        log_id=f"log-{i}",
        prompt=[Message(role="user", content=question)],
        completion=answer if isinstance(answer, Message) else Message(role="assistant", content=answer),
        rating=rating,
        correction=correction,
        end_user=f"user-{i % 3}",
        created_at=T0 + timedelta(minutes=i),
        **fields,
    )


def assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def shapes(examples: list[Example]) -> list[tuple]:
    """(prompt text, {answer name: text}, label) of each example: what the assertions compare."""
    return [
        (e.prompt[-1].content, {k: m.content for k, m in e.answers.items()}, e.label)
        for e in examples
        if isinstance(e.prompt, list)
    ]


def test_each_kind_of_feedback_becomes_the_rows_the_contract_names():
    rows = [
        row(0, "capital of france?", "paris", rating=1),
        row(1, "capital of spain?", "rome", rating=-1),
        row(2, "capital of italy?", "madrid", rating=-1, correction="rome"),
        row(3, "colour of grass?", "blue", correction="green"),  # unrated correction
        row(4, "colour of snow?", "white"),  # no signal at all
    ]
    ex = build_examples(rows)

    assert ("capital of france?", {"completion": "paris"}, None) in shapes(ex.sft)
    assert ("capital of italy?", {"completion": "rome"}, None) in shapes(ex.sft)  # the correction
    assert ("capital of italy?", {"chosen": "rome", "rejected": "madrid"}, None) in shapes(ex.dpo)
    assert ("capital of italy?", {"completion": "madrid"}, False) in shapes(ex.kto)
    assert ("capital of italy?", {"completion": "rome"}, True) in shapes(ex.kto)
    # An unrated corrected answer is treated as disliked, but is not counted as a thumb.
    assert ("colour of grass?", {"completion": "blue"}, False) in shapes(ex.kto)
    assert ex.counts() == {
        "thumbs_up": 1,
        "thumbs_down": 2,
        "corrections": 2,
        "ignored": 1,
        "sft_rows": 3,
        "dpo_pairs": 2,
        "kto_rows": 6,
        "kto_desirable": 3,
        "kto_undesirable": 3,
        "excluded": {},
        "not_positive": {},
    }


def test_same_prompt_up_and_down_answers_pair_up_without_a_quadratic_blowup():
    q = "capital of france?"
    rows = [row(i, q, "paris", rating=1) for i in range(3)]
    rows += [row(10 + i, q, wrong, rating=-1) for i, wrong in enumerate(["lyon", "nice", "rome", "oslo"])]
    rows += [row(20, q, "paris", rating=-1)]  # the same answer disliked by someone: no self-pair
    ex = build_examples(rows)
    rejected = [p.answers["rejected"].content for p in ex.dpo]
    assert all(p.answers["chosen"] == assistant("paris") for p in ex.dpo)
    assert sorted(rejected) == ["lyon", "nice", "oslo", "rome"]  # each disliked answer once
    assert len(ex.dpo) <= max(3, 5)


def test_empty_or_unchanged_correction_corrects_nothing():
    ex = build_examples(
        [row(0, "q?", "a", rating=1, correction="a"), row(1, "r?", "b", rating=-1, correction=" ")]
    )
    assert ex.corrections == 0 and ex.dpo == []


def test_examples_are_in_time_order_whatever_the_input_order():
    rows = [row(i, f"q{i}?", "a", rating=1) for i in range(5)]
    assert build_examples(list(reversed(rows))).sft == build_examples(rows).sft


def unpaired_thumbs(n: int) -> list[SnapshotRow]:
    return [row(i, f"question {i}?", "yes", rating=1 if i % 2 else -1) for i in range(n)]


@pytest.mark.parametrize(
    ("rows", "method", "reason"),
    [
        (unpaired_thumbs(40), "kto", "mostly unpaired thumbs"),
        (
            [row(i, f"q{i}?", "no", rating=-1, correction="yes") for i in range(40)],
            "sft",
            "mostly corrections",
        ),
        (
            [row(i, f"q{i // 2}?", "yes" if i % 2 else "no", rating=1 if i % 2 else -1) for i in range(80)],
            "dpo",
            "preference pairs",
        ),
        ([row(i, f"q{i}?", "yes", rating=1) for i in range(40)], "sft", "no usable liked/disliked contrast"),
    ],
    ids=["unpaired-thumbs", "corrections", "paired", "only-thumbs-up"],
)
def test_auto_picks_a_method_from_the_signal_and_says_why(rows, method, reason):
    choice = choose_method(build_examples(rows), "auto", min_examples=32, min_pair_share=0.5)
    assert choice.method == method
    assert reason in choice.why


def test_an_explicit_method_overrides_auto():
    choice = choose_method(build_examples(unpaired_thumbs(40)), "sft", min_examples=10, min_pair_share=0.5)
    assert (choice.method, choice.why) == ("sft", "sft requested in the run spec")


def test_too_little_signal_is_an_error_naming_the_counts():
    with pytest.raises(NotEnoughSignalError, match=r"DPO: 0 preference pairs, need at least 32"):
        choose_method(build_examples(unpaired_thumbs(40)), "dpo", min_examples=32, min_pair_share=0.5)
    with pytest.raises(NotEnoughSignalError, match="too little signal for any method"):
        choose_method(build_examples(unpaired_thumbs(10)), "auto", min_examples=32, min_pair_share=0.5)


def test_kto_needs_both_liked_and_disliked_answers():
    ups = [row(i, f"q{i}?", "yes", rating=1) for i in range(40)]
    with pytest.raises(NotEnoughSignalError, match="KTO needs both liked and disliked"):
        choose_method(build_examples(ups), "kto", min_examples=32, min_pair_share=0.5)


# --- honest data: what may never be a positive target, and rows that cannot be used ------------------


def test_an_answer_with_a_problem_is_never_a_positive_target_but_may_be_rejected():
    q = "capital of france?"
    rows = [
        row(0, q, "paris is the cap", rating=1, problem="length"),  # liked, but cut by max_tokens
        row(1, q, "paris", rating=1, problem="interrupted"),
        row(2, q, "", rating=1),  # empty, though the snapshot did not say so
        row(3, q, Message(role="assistant", content="  "), rating=1, problem="empty"),
        row(4, q, "lyon", rating=-1, problem="upstream_error"),  # disliked: a fine rejected answer
        row(5, "capital of spain?", "mad", rating=-1, correction="madrid", problem="length"),
        row(6, q, "paris", rating=1),  # the one honest thumbs-up
    ]
    ex = build_examples(rows)
    assert ex.not_positive == {"length": 1, "interrupted": 1, "empty": 2}
    assert shapes(ex.sft) == [
        ("capital of spain?", {"completion": "madrid"}, None),
        ("capital of france?", {"completion": "paris"}, None),
    ]
    assert [e.answers["completion"].content for e in ex.kto if e.label] == ["madrid", "paris"]
    assert sorted(e.answers["completion"].content for e in ex.kto if not e.label) == ["lyon", "mad"]
    # Problem answers are rejected in pairs, never chosen.
    assert sorted((e.answers["chosen"].content, e.answers["rejected"].content) for e in ex.dpo) == [
        ("madrid", "mad"),
        ("paris", "lyon"),
    ]
    assert ex.thumbs_up == 5 and ex.counts()["not_positive"] == {"empty": 2, "interrupted": 1, "length": 1}


def test_rows_that_cannot_become_examples_are_counted_not_raised():
    chat = [row(0, "q?", "a", rating=1), row(1, "r?", "b", rating=5), row(2, "s?", "c", rating=0)]
    empty = row(3, "x", "y", rating=1)
    empty.prompt = []
    completion = row(4, "x", "y", rating=1)
    completion.prompt = "Once upon a time"
    ex = build_examples([*chat, empty, completion], unreadable=2)
    assert ex.excluded == {
        "bad_rating": 2,
        "empty_prompt": 1,
        "completions_in_chat_snapshot": 1,
        "unreadable": 2,
    }
    assert len(ex.sft) == 1
    assert "bad_rating 2" in ex.left_out() and "unreadable 2" in ex.left_out()


def test_a_snapshot_of_completions_prompts_trains_in_the_standard_format():
    rows = [row(i, "q", f"answer {i}", rating=1) for i in range(3)]
    for i, r in enumerate(rows):
        r.prompt = f"Once upon a time {i}"
    ex = build_examples(rows)
    assert [e.prompt for e in ex.sft] == ["Once upon a time 0", "Once upon a time 1", "Once upon a time 2"]
    assert not any(e.is_chat for e in ex.sft) and ex.excluded == {}


def test_the_same_messages_with_other_tools_are_another_prompt():
    from formats.chat import FunctionDefinition, Tool

    weather = [Tool(function=FunctionDefinition(name="get_weather"))]
    rows = [row(0, "weather?", "sunny", rating=1), row(1, "weather?", "rainy", rating=-1, tools=weather)]
    assert build_examples(rows).dpo == []
    rows[1].tools = None
    assert len(build_examples(rows).dpo) == 1


def test_tool_calls_in_the_prompt_or_the_answer_need_a_tool_rendering_template():
    from formats.chat import FunctionCall, ToolCall

    call = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
    tool_answer = Message(role="assistant", tool_calls=[call])
    ex = build_examples([row(0, "weather in paris?", tool_answer, rating=1), row(1, "hi", "hello", rating=1)])
    assert [e.uses_tool_calls for e in ex.sft] == [True, False]
