"""Building the eval set from a snapshot's holdout and a golden JSONL file; and the gate's rules."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evals import EvalInputError, load_golden, load_holdout, paired_bootstrap
from evals.decision import Evidence, decide
from formats.log import Message
from formats.snapshot import SnapshotRow, rows_to_table

T0 = datetime(2026, 11, 20)


def holdout_row(
    i: int,
    prompt: str,
    completion: str | Message,
    rating: int | None,
    correction: str | None = None,
    **fields,
) -> SnapshotRow:
    return SnapshotRow(
        log_id=f"log-{i}",
        prompt=[Message(role="user", content=prompt)],
        completion=completion
        if isinstance(completion, Message)
        else Message(role="assistant", content=completion),
        rating=rating,
        correction=correction,
        end_user="u",
        created_at=T0 + timedelta(minutes=i),
        adapter="p@v0",
        **fields,
    )


def write_holdout(path, rows):
    """A holdout.parquet as the snapshot writes it (formats.snapshot, schema_version 2)."""
    pq.write_table(rows_to_table(rows), path)
    return path


def test_holdout_groups_rows_by_prompt_with_preferred_and_rejected_answers(tmp_path):
    path = write_holdout(
        tmp_path / "holdout.parquet",
        [
            holdout_row(0, "capital of peru?", "lima", 1),
            holdout_row(1, "capital of peru?", "cairo", -1),
            holdout_row(2, "capital of peru?", "lima", 1),  # same answer twice: kept once
            holdout_row(3, "colour of snow?", "black", -1, correction="white"),
            holdout_row(4, "opposite of up?", "down", None),  # no feedback: the prompt still counts
            holdout_row(5, "sound of a duck?", "quack", 1),
            holdout_row(6, "sound of a duck?", "quack", -1),  # users disagree: dropped from both
        ],
    )
    examples = load_holdout(path)
    by_prompt = {e.messages[0]["content"]: e for e in examples}
    assert [e.messages[0]["content"] for e in examples] == [
        "capital of peru?",
        "colour of snow?",
        "opposite of up?",
        "sound of a duck?",
    ]
    peru = by_prompt["capital of peru?"]
    assert (peru.preferred, peru.rejected, peru.log_ids) == (["lima"], ["cairo"], ["log-0", "log-1", "log-2"])
    snow = by_prompt["colour of snow?"]
    assert (snow.preferred, snow.rejected) == (["white"], ["black"])
    assert by_prompt["sound of a duck?"].preferred == by_prompt["sound of a duck?"].rejected == []
    assert all(e.source == "holdout" and e.id.startswith("h-") for e in examples)
    assert load_holdout(path) == examples  # deterministic ids and order


def test_holdout_is_sampled_with_a_seed_beyond_max_examples(tmp_path):
    rows = [holdout_row(i, f"question {i}?", "a", 1) for i in range(50)]
    path = write_holdout(tmp_path / "h.parquet", rows)
    a, b = load_holdout(path, max_examples=10, seed=1), load_holdout(path, max_examples=10, seed=1)
    assert len(a) == 10 and a == b
    assert a != load_holdout(path, max_examples=10, seed=2)


def test_holdout_errors_say_what_is_wrong_and_a_bad_row_costs_only_itself(tmp_path):
    with pytest.raises(EvalInputError, match="not a readable Parquet file"):
        load_holdout(tmp_path / "missing.parquet")
    table = rows_to_table([holdout_row(0, "q", "a", 1), holdout_row(1, "r", "b", 1)])
    pq.write_table(table.drop_columns(["completion"]), tmp_path / "a.parquet")
    with pytest.raises(EvalInputError, match="lacks column"):
        load_holdout(tmp_path / "a.parquet")
    prompts = table.column("prompt").to_pylist()
    prompts[0] = "not json"
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt", pa.array(prompts))
    pq.write_table(table, tmp_path / "b.parquet")
    assert [e.messages for e in load_holdout(tmp_path / "b.parquet")] == [[{"role": "user", "content": "r"}]]


def test_holdout_replays_the_request_tools_and_is_honest_about_answers(tmp_path):
    from formats.chat import FunctionCall, FunctionDefinition, Tool, ToolCall

    weather = [Tool(function=FunctionDefinition(name="get_weather", parameters={"type": "object"}))]
    call = ToolCall(id="c1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
    fmt = {"type": "json_object"}
    completion_row = SnapshotRow(
        log_id="log-completion",
        prompt="Once upon a time",
        completion=Message(role="assistant", content=" a fox."),
        created_at=T0,
        rating=1,
    )
    path = write_holdout(
        tmp_path / "holdout.parquet",
        [
            holdout_row(0, "weather?", Message(role="assistant", tool_calls=[call]), 1, tools=weather),
            holdout_row(1, "weather?", "It is sunny.", -1, tools=weather, tool_choice="auto"),
            holdout_row(2, "weather?", "Sunny", 1, tools=weather, tool_choice="auto"),
            holdout_row(3, "json please", '{"a": 1', 1, problem="length", response_format=fmt),
            holdout_row(4, "json please", '{"a": 2}', -1, response_format=fmt),
            holdout_row(5, "weather?", "no tools here", 1),  # the same messages without tools: another prompt
            completion_row,
        ],
    )
    examples = load_holdout(path)
    assert len(examples) == 4  # the completions prompt cannot be replayed as chat
    tool_only, auto, json_prompt, plain = examples
    assert tool_only.tools == [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    assert (tool_only.tool_choice, tool_only.preferred, tool_only.rejected) == (None, [], [])  # no text
    assert (auto.tool_choice, auto.preferred, auto.rejected) == ("auto", ["Sunny"], ["It is sunny."])
    # A thumbs-up on an answer cut by max_tokens is no evidence of what users want.
    assert json_prompt.response_format == fmt and json_prompt.preferred == []
    assert json_prompt.rejected == ['{"a": 2}']
    assert (plain.tools, plain.preferred) == (None, ["no tools here"])


def test_holdout_messages_are_sent_as_a_client_sends_them(tmp_path):
    from formats.chat import FunctionCall, ToolCall

    call = ToolCall(id="c1", function=FunctionCall(name="get_weather", arguments={"city": "Paris"}))
    row = holdout_row(0, "weather?", "Sunny", 1)
    row.prompt = [
        Message(role="developer", content="Be brief."),
        Message(role="user", content="weather?", name="jane"),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", content="18C", tool_call_id="c1"),
    ]
    (example,) = load_holdout(write_holdout(tmp_path / "h.parquet", [row]))
    assert example.messages == [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "weather?", "name": "jane"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "18C", "tool_call_id": "c1"},
    ]
    assert example.prompt_text == "Be brief.\nweather?\n\n18C"


def test_golden_jsonl(tmp_path):
    path = tmp_path / "golden.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"id": "peru", "prompt": "capital of peru?", "reference": "lima"}),
                "",
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "be brief"},
                            {"role": "user", "content": "hi"},
                        ],
                        "checks": [{"name": "short", "max_words": 5}],
                        "match": "casefold",
                    }
                ),
            ]
        )
    )
    peru, second = load_golden(path)
    assert (peru.id, peru.source, peru.reference, peru.messages) == (
        "peru",
        "golden",
        "lima",
        [{"role": "user", "content": "capital of peru?"}],
    )
    assert second.id == "g-3" and second.checks[0].max_words == 5 and second.match == "casefold"


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ({"prompt": "q"}, "reference"),
        ({"reference": "a"}, "exactly one of 'prompt' or 'messages'"),
        ({"prompt": "q", "reference": "a", "refrence": "b"}, "refrence"),
        ({"prompt": "q", "reference": "a", "match": "fuzzy"}, "match"),
        ({"prompt": "q", "checks": [{"name": "x", "must_match": "("}]}, "not a valid regex"),
    ],
)
def test_golden_errors_name_the_line(tmp_path, line, error):
    path = tmp_path / "golden.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "reference": "a"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(EvalInputError, match="line 2") as info:
        load_golden(path)
    assert error in str(info.value)


# --- the gate ------------------------------------------------------------------------------------


def ev(name: str, role: str, diffs: list[float], tolerance: float = 0.0) -> Evidence:
    return Evidence(
        name=name, role=role, tolerance=tolerance, stats=paired_bootstrap(diffs) if diffs else None
    )


BETTER = [1.0] * 30 + [0.0] * 20
SAME = [0.0] * 50


def test_gate_promotes_on_a_primary_improvement_with_guards_holding():
    d = decide(
        [ev("users", "primary", BETTER), ev("golden", "guard", SAME, 0.02), ev("agree", "diagnostic", SAME)],
        min_samples=30,
    )
    assert d.promote
    assert [r.scorer for r in d.reasons] == ["users", "golden", "agree"]
    assert "lower bound > 0" in d.reasons[0].message and "diagnostic only" in d.reasons[2].message


def test_gate_refuses_without_an_improvement_or_with_a_regression():
    assert not decide([ev("users", "primary", SAME)], min_samples=30).promote
    regressed = decide(
        [ev("users", "primary", BETTER), ev("golden", "guard", [-1.0] * 10 + [0.0] * 40, 0.02)],
        min_samples=30,
    )
    assert not regressed.promote
    assert [r.ok for r in regressed.reasons] == [True, False]
    assert "regressed" in regressed.reasons[1].message


def test_guard_tolerates_a_drop_within_tolerance():
    small_drop = [-1.0] + [0.0] * 999  # 0.1 points: well within 2 points
    assert decide(
        [ev("users", "primary", BETTER), ev("golden", "guard", small_drop, 0.02)], min_samples=30
    ).promote


def test_every_primary_must_pass():
    assert not decide([ev("users", "primary", BETTER), ev("judge", "primary", SAME)], min_samples=30).promote


def test_too_few_samples_never_promote():
    d = decide([ev("users", "primary", [1.0] * 10)], min_samples=30)
    assert not d.promote and "10 examples scored, fewer than the 30" in d.reasons[0].message
    assert not decide([ev("users", "primary", [])], min_samples=1).promote


def test_diagnostics_alone_never_promote():
    d = decide([ev("agree", "diagnostic", BETTER)], min_samples=1)
    assert not d.promote and "no primary scorer" in d.reasons[-1].message


def test_failed_evaluation_never_promotes():
    d = decide([ev("users", "primary", BETTER)], min_samples=1, error="judge down")
    assert not d.promote and d.reasons[0].message == "evaluation failed: judge down"
