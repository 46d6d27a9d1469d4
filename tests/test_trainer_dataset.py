"""Feedback rows -> TRL datasets, and the method `auto` picks (pure Python, no training)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trainer.dataset import build_examples, choose_method
from trainer.errors import NotEnoughSignalError
from trainer.snapshot import FeedbackRow

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def row(
    i: int, question: str, answer: str, rating: int | None = None, correction: str | None = None
) -> FeedbackRow:
    return FeedbackRow(
        log_id=f"log-{i}",
        prompt=[{"role": "user", "content": question}],
        completion=answer,
        rating=rating,
        score=None,
        correction=correction,
        end_user=f"user-{i % 3}",
        created_at=T0 + timedelta(minutes=i),
        adapter=None,
    )


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_each_kind_of_feedback_becomes_the_rows_the_contract_names():
    rows = [
        row(0, "capital of france?", "paris", rating=1),
        row(1, "capital of spain?", "rome", rating=-1),
        row(2, "capital of italy?", "madrid", rating=-1, correction="rome"),
        row(3, "colour of grass?", "blue", correction="green"),  # unrated correction
        row(4, "colour of snow?", "white"),  # no signal at all
    ]
    ex = build_examples(rows)
    prompt = [{"role": "user", "content": "capital of italy?"}]

    assert {
        "prompt": [{"role": "user", "content": "capital of france?"}],
        "completion": assistant("paris"),
    } in ex.sft
    assert {"prompt": prompt, "completion": assistant("rome")} in ex.sft  # the correction
    assert {"prompt": prompt, "chosen": assistant("rome"), "rejected": assistant("madrid")} in ex.dpo
    assert {"prompt": prompt, "completion": assistant("madrid"), "label": False} in ex.kto
    assert {"prompt": prompt, "completion": assistant("rome"), "label": True} in ex.kto
    # An unrated corrected answer is treated as disliked, but is not counted as a thumb.
    grass = [{"role": "user", "content": "colour of grass?"}]
    assert {"prompt": grass, "completion": assistant("blue"), "label": False} in ex.kto
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
    }


def test_same_prompt_up_and_down_answers_pair_up_without_a_quadratic_blowup():
    q = "capital of france?"
    rows = [row(i, q, "paris", rating=1) for i in range(3)]
    rows += [row(10 + i, q, wrong, rating=-1) for i, wrong in enumerate(["lyon", "nice", "rome", "oslo"])]
    rows += [row(20, q, "paris", rating=-1)]  # the same answer disliked by someone: no self-pair
    ex = build_examples(rows)
    rejected = [p["rejected"][0]["content"] for p in ex.dpo]
    assert all(p["chosen"] == assistant("paris") for p in ex.dpo)
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


def unpaired_thumbs(n: int) -> list[FeedbackRow]:
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
