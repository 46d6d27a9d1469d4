"""Snapshot export from a real DuckDB file written by the service's own writer (capture's own row
builder, so every log is normalised as in production), read back with the contract's reader."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest

from formats.log import Message
from formats.snapshot import ARROW_SCHEMA, SnapshotRow, iter_rows, read_manifest
from service.capture import Capture, log_row
from service.config import SnapshotSettings
from service.domain import LogIn
from service.metrics import Metrics
from service.pipeline import too_little_signal
from service.store.db import Database
from service.store.snapshot import export_snapshot
from service.store.writer import GroupCommitWriter
from tests.fixtures.rows import chat_log, completion_log, feedback_row

T0 = datetime(2026, 11, 1)
NOW = datetime(2026, 11, 20)
_encode = msgspec.json.encode


class Feed:
    """Writes logs and feedback through the real group-commit writer."""

    def __init__(self, db: Database) -> None:
        self.writer = GroupCommitWriter(db, Metrics(), max_batch_rows=1000, max_queue_rows=100_000)
        self.writer.start()
        self.n = 0

    def next_id(self) -> tuple[str, datetime]:
        self.n += 1
        return f"log-{self.n:05d}", T0 + timedelta(minutes=self.n)

    def add(
        self,
        prompt: str,
        answer: str,
        *,
        user: str | None,
        rating: int | None = 1,
        correction: str | None = None,
    ) -> str:
        log_id, at = self.next_id()
        log = chat_log(log_id, [{"role": "user", "content": prompt}], answer, created_at=at, end_user=user,
                       adapter="p@v1")  # fmt: skip
        return self.add_log(log, user=user, rating=rating, correction=correction)

    def add_log(self, log: LogIn, *, user: str | None = None, **feedback: Any) -> str:
        """Store `log` (its id and time are set here) and one feedback row (`rating` +1 unless given)."""
        log_id, at = self.next_id()
        log = msgspec.structs.replace(log, id=log_id, created_at=at, end_user=user)
        self.writer.write_sync("logs", [Capture.log_row("p", log, log_id, at, "api")])
        self.feedback(log_id, at, user=user, **feedback)
        return log_id

    def feedback(self, log_id: str, at: datetime, *, user: str | None = None, **fields: Any) -> None:
        fields.setdefault("rating", 1)
        row = feedback_row("p", log_id, at, end_user=user or "", fid=f"fb-{log_id}-{user}", **fields)
        self.writer.write_sync("feedback", [row])


def chat(messages: list[dict[str, Any]], answer: str | dict[str, Any] = "ok", **request: Any) -> LogIn:
    return chat_log("x", messages, answer, request_extra=request or None)


def pair(request: dict[str, Any], response: dict[str, Any], **fields: Any) -> LogIn:
    return LogIn(
        id="x", request=msgspec.Raw(_encode(request)), response=msgspec.Raw(_encode(response)), **fields
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "r.duckdb")
    yield database
    database.close()


@pytest.fixture
def feed(db: Database) -> Iterator[Feed]:
    f = Feed(db)
    yield f
    f.writer.stop()


def snapshot(db: Database, feed: Feed, out: Path, settings: SnapshotSettings | None = None) -> Any:
    feed.writer.stop()
    return export_snapshot(db, "p", out, settings or SETTINGS, now=NOW)


def rows(out: Path) -> list[SnapshotRow]:
    return [*iter_rows(out / "train.parquet"), *iter_rows(out / "holdout.parquet")]


def by_log(out: Path) -> dict[str, SnapshotRow]:
    return {r.log_id: r for r in rows(out)}


SETTINGS = SnapshotSettings(holdout_fraction=0.2, max_user_share=0.2, min_user_cap=5)


def test_columns_split_and_manifest(db: Database, feed: Feed, tmp_path: Path) -> None:
    ids = [feed.add(f"question {i}", f"answer {i}", user=f"u{i % 10}") for i in range(50)]
    out = tmp_path / "snap"
    manifest = snapshot(db, feed, out)
    assert pq.read_schema(out / "train.parquet").names == ARROW_SCHEMA.names
    train, holdout = list(iter_rows(out / "train.parquet")), list(iter_rows(out / "holdout.parquet"))
    assert train[0].prompt == [Message(role="user", content="question 0")]
    assert (train[0].completion, train[0].rating, train[0].adapter) == (
        Message(role="assistant", content="answer 0"), 1, "p@v1",
    )  # fmt: skip
    # The holdout is the newest 20%, never trained on.
    assert [r.log_id for r in holdout] == ids[40:]
    assert [r.log_id for r in train] == ids[:40]
    assert max(r.created_at for r in train) < min(r.created_at for r in holdout)
    assert read_manifest(out).sha256 == manifest.sha256  # every file matches its sha256
    assert (manifest.stats.train_rows, manifest.stats.holdout_rows, manifest.stats.split) == (40, 10, "time")
    assert not list(tmp_path.glob(".snap*")), "temporary directory left behind"


def test_part_list_content_trains(db: Database, feed: Feed, tmp_path: Path) -> None:
    """Failure 1: a part-list user message used to break every later run in the trainer."""
    log_id = feed.add_log(
        chat(
            [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}],
            "Paris.",
        ),
        user="a",
    )
    snapshot(db, feed, tmp_path / "snap")
    row = by_log(tmp_path / "snap")[log_id]
    assert row.prompt == [Message(role="user", content="What is the capital of France?")]
    assert row.completion == Message(role="assistant", content="Paris.") and row.rating == 1


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


@pytest.mark.parametrize("call_content", [None, ""])
def test_a_tool_call_conversation_keeps_its_calls_results_and_tools(
    db: Database, feed: Feed, tmp_path: Path, call_content: str | None
) -> None:
    """Failure 2: with `content: null` the row broke every run; with `""` the calls were dropped."""
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": call_content, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, cloudy"},
    ]
    answered = feed.add_log(
        chat(messages, "18C and cloudy.", tools=[WEATHER_TOOL], tool_choice="auto"), user="a"
    )
    calling = feed.add_log(
        chat(
            messages[:1], {"role": "assistant", "content": None, "tool_calls": [CALL]}, tools=[WEATHER_TOOL]
        ),
        user="b",
    )
    snapshot(db, feed, tmp_path / "snap")
    found = by_log(tmp_path / "snap")
    row = found[answered]
    assert [m.role for m in row.prompt] == ["user", "assistant", "tool"]
    assert row.prompt[1].tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert row.prompt[2].tool_call_id == "call_1" and row.prompt[2].content == "18C, cloudy"
    assert row.tools[0].function.name == "get_weather" and row.tool_choice == "auto"
    assert row.completion.content == "18C and cloudy." and row.problem is None
    call = found[calling].completion  # a tool-call answer trains as a tool call
    assert call.content is None and call.tool_calls[0].id == "call_1" and found[calling].problem is None


def test_pii_is_redacted_in_decoded_strings_and_the_files_stay_valid_json(
    db: Database, feed: Feed, tmp_path: Path
) -> None:
    """Failure 3: regexes over JSON text broke the JSON ("\\[REDACTED]") and missed what followed \\n or \\t."""
    secrets = {
        "Please update my details.\njane.doe@example.com": "jane.doe@example.com",
        "My card:\n4111 1111 1111 1111\nphone:\n555-123-4567": "4111 1111 1111 1111|555-123-4567",
        "key:\tsk-abcdefghijklmnopqrstu": "sk-abcdefghijklmnopqrstu",
        "IBAN DE89 3704 0044 0532 0130 00, from 192.168.1.20": "DE89 3704 0044 0532 0130 00|192.168.1.20",
        "ruf mich an: +49 30 12345678 oder +44 20 7946 0958": "+49 30 12345678|+44 20 7946 0958",
        "ssn 536-90-4399 and ipv6 2001:db8::8a2e:370:7334": "536-90-4399|2001:db8::8a2e:370:7334",
        "aws AKIAIOSFODNN7EXAMPLE": "AKIAIOSFODNN7EXAMPLE",
    }
    for i, text in enumerate(secrets):
        feed.add(f"q{i}: {text}", f"sure: {text}", user=f"u{i}", correction=f"fixed {text}")
    tool_call = {"id": "c1", "type": "function",
                 "function": {"name": "send", "arguments": '{"to": "jane.doe@example.com", "note": "line\\nbob@example.org"}'}}  # fmt: skip
    tooled = feed.add_log(
        chat([{"role": "user", "content": "mail her"}, {"role": "assistant", "content": None, "tool_calls": [tool_call]},
              {"role": "tool", "tool_call_id": "c1", "content": '{"sent_to": "jane.doe@example.com"}'}], "done"),
        user="t",
    )  # fmt: skip
    feed.add("what is 2026-11-24 plus 1000 days? version 1.2.3", "a date", user="dates")
    out = tmp_path / "snap"
    manifest = snapshot(db, feed, out)
    raw = (
        pq.read_table(out / "train.parquet").to_pylist() + pq.read_table(out / "holdout.parquet").to_pylist()
    )
    for record in raw:  # every structured column is valid JSON
        for column in ("prompt", "completion", "tools"):
            if record[column] is not None:
                json.loads(record[column])
    text = json.dumps(raw, default=str)
    for needles in secrets.values():
        for needle in needles.split("|"):
            assert json.dumps(needle)[1:-1] not in text, needle
    assert "2026-11-24 plus 1000 days? version 1.2.3" in text, "dates and versions are not PII"
    assert manifest.stats.pii_scrubbed_rows == len(secrets) + 1
    row = by_log(out)[tooled]
    arguments = json.loads(row.prompt[1].tool_calls[0].function.arguments)
    assert arguments == {"to": "[REDACTED]", "note": "line\n[REDACTED]"}
    assert json.loads(row.prompt[2].content) == {"sent_to": "[REDACTED]"}
    corrections = [r.correction for r in rows(out) if r.correction]
    assert corrections and all("[REDACTED]" in c for c in corrections)


def test_scrubbing_can_be_switched_off(db: Database, feed: Feed, tmp_path: Path) -> None:
    feed.add("mail jane.doe@example.com", "ok", user="a")
    settings = SnapshotSettings(holdout_fraction=0.2, min_user_cap=5, scrub_pii=False)
    manifest = snapshot(db, feed, tmp_path / "snap", settings)
    assert rows(tmp_path / "snap")[0].prompt[0].content == "mail jane.doe@example.com"
    assert manifest.stats.pii_scrubbed_rows == 0


def test_extra_patterns_are_redacted(db: Database, feed: Feed, tmp_path: Path) -> None:
    feed.add("my customer number is CUST-48213", "ok", user="a")
    settings = SnapshotSettings(holdout_fraction=0.2, min_user_cap=5, extra_pii_patterns=(r"CUST-\d+",))
    snapshot(db, feed, tmp_path / "snap", settings)
    assert rows(tmp_path / "snap")[0].prompt[0].content == "my customer number is [REDACTED]"


def test_feedback_on_choice_1_trains_choice_1(db: Database, feed: Feed, tmp_path: Path) -> None:
    """Failure 6 at the snapshot: the answer trained is the one the feedback names."""
    response = {"choices": [
        {"index": 0, "message": {"role": "assistant", "content": "alpha"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "beta"}, "finish_reason": "stop"},
    ]}  # fmt: skip
    request = {"messages": [{"role": "user", "content": "pick"}], "n": 2}
    second = feed.add_log(pair(request, response), user="a", choice=1, rating=1)
    first = feed.add_log(
        pair(request | {"messages": [{"role": "user", "content": "again"}]}, response), user="b"
    )
    missing = feed.add_log(pair(request | {"messages": [{"role": "user", "content": "?"}]}, response), user="c",
                           choice=5, rating=-1)  # fmt: skip
    manifest = snapshot(db, feed, tmp_path / "snap")
    found = by_log(tmp_path / "snap")
    assert (found[second].completion.content, found[second].choice) == ("beta", 1)
    assert (found[first].completion.content, found[first].choice) == ("alpha", 0)
    assert missing not in found and manifest.stats.quarantined == {"no_such_choice": 1}


def test_answers_that_must_not_be_positive_carry_their_problem(
    db: Database, feed: Feed, tmp_path: Path
) -> None:
    """Failures 5 and 7: an empty answer, one cut by length, an interrupted stream and a stream that
    ended in an error event are kept (they can be rejected examples) but say why they are no target."""
    asked = iter(range(100))

    def ask() -> dict[str, Any]:  # a prompt of its own each: none is dropped for sharing the holdout's
        return {"messages": [{"role": "user", "content": f"tell me {next(asked)}"}]}

    def answer(content: str, finish: str = "stop", **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        return {"choices": [choice], **extra}

    logs = {
        "empty": feed.add_log(pair(ask(), answer("")), user="a"),
        "length": feed.add_log(pair(ask(), answer("It was a dark and", "length")), user="b"),
        "interrupted": feed.add_log(
            pair(ask(), answer("Once upon"), metadata={"interrupted": True}), user="c"
        ),
        "upstream_error": feed.add_log(
            pair(ask(), answer("Hal", None, error={"message": "engine died"})), user="d"
        ),
        None: feed.add_log(pair(ask(), answer("A fine answer.")), user="e"),
    }
    snapshot(db, feed, tmp_path / "snap")
    found = by_log(tmp_path / "snap")
    assert {problem: found[log_id].problem for problem, log_id in logs.items()} == {p: p for p in logs}
    assert all(found[log_id].rating == 1 for log_id in logs.values())


def test_rows_that_cannot_train_are_quarantined_by_reason_and_the_rest_goes_on(
    db: Database, feed: Feed, tmp_path: Path
) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    feed.add_log(
        chat([{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]), user="a"
    )
    feed.add_log(
        pair({"prompt": [1, 2, 3]}, {"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}),
        user="b",
    )
    legacy = {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}
    feed.add_log(chat([{"role": "user", "content": "call f"}], legacy), user="c")
    log_id, at = feed.next_id()  # a gateway answer the shape module could not read, stored all the same
    feed.writer.write_sync("logs", [log_row("p", log_id, at, at, "gateway", None, "{}", '{"odd": 1}', None)])
    feed.feedback(log_id, at, user="d")
    corrupt = feed.add("fine until its answers column broke", "x", user="e")
    good = [feed.add(f"good {i}", f"answer {i}", user=f"g{i}") for i in range(10)]
    feed.writer.stop()
    with db.transaction() as cur:  # a typed column that no longer decodes (written by some older bug)
        cur.execute('UPDATE logs SET answers = \'[{"index": "zero"}]\' WHERE id = ?', [corrupt])
    manifest = export_snapshot(db, "p", tmp_path / "snap", SETTINGS, now=NOW)
    assert manifest.stats.quarantined == {
        "legacy_function_call": 1, "media_prompt": 1, "shape_error": 1, "token_prompt": 1, "unreadable_json": 1,
    }  # fmt: skip
    assert sorted(r.log_id for r in rows(tmp_path / "snap")) == good
    on_disk = read_manifest(tmp_path / "snap").stats
    assert on_disk.quarantined == manifest.stats.quarantined and on_disk.joined_rows == 15


def test_completions_logs_train_on_their_prompt_text(db: Database, feed: Feed, tmp_path: Path) -> None:
    log_id = feed.add_log(completion_log("x", "Once upon a time", " there was a cat."), user="a")
    snapshot(db, feed, tmp_path / "snap")
    row = by_log(tmp_path / "snap")[log_id]
    assert (row.prompt, row.completion.content, row.is_chat) == (
        "Once upon a time",
        " there was a cat.",
        False,
    )


def test_identical_examples_count_once(db: Database, feed: Feed, tmp_path: Path) -> None:
    for i in range(40):  # 40 accounts posting the same thumb for the same answer
        feed.add("spam prompt", "spam answer", user=f"bot{i}")
    for i in range(10):
        feed.add(f"real {i}", f"answer {i}", user=f"real{i}")
    manifest = snapshot(db, feed, tmp_path / "snap")
    assert manifest.stats.dropped_duplicates == 39
    assert manifest.stats.train_rows + manifest.stats.holdout_rows == 11


def test_one_user_cannot_supply_more_than_their_share(db: Database, feed: Feed, tmp_path: Path) -> None:
    for i in range(100):
        feed.add(f"loud {i}", f"answer {i}", user="loud")
    for i in range(60):
        feed.add(f"quiet {i}", f"answer {i}", user=f"q{i % 20}")
    manifest = snapshot(db, feed, tmp_path / "snap")
    # 20% of what is kept, not of what came in: 32 of 160 would have left "loud" 32 of 92 rows
    # (35%). 15 of 75 is 20%.
    assert manifest.stats.user_cap == 15
    kept = rows(tmp_path / "snap")
    assert sum(r.end_user == "loud" for r in kept) == 15
    assert manifest.stats.dropped_user_cap == 85
    assert manifest.stats.largest_user_share == 15 / len(kept) == 0.2


def test_a_user_flooding_just_before_the_cut_cannot_fill_the_holdout(
    db: Database, feed: Feed, tmp_path: Path
) -> None:
    for i in range(80):
        feed.add(f"quiet {i}", f"answer {i}", user=f"q{i % 20}")
    for i in range(100):  # newest: the holdout is cut from these
        feed.add(f"loud {i}", f"answer {i}", user="loud")
    manifest = snapshot(db, feed, tmp_path / "snap")
    stats = manifest.stats
    holdout = list(iter_rows(tmp_path / "snap" / "holdout.parquet"))
    loud = sum(r.end_user == "loud" for r in holdout)
    # the newest 20% of the kept rows, all the loud user's, but capped: quiet users' rows fill it
    assert stats.holdout_user_cap == 4 and loud == 4, stats
    assert len(holdout) == math.ceil(0.2 * (80 + stats.user_cap)), stats
    train = list(iter_rows(tmp_path / "snap" / "train.parquet"))
    assert sum(r.end_user == "loud" for r in train) == stats.user_cap - 4  # the rest stays trainable


def test_a_prompt_in_the_holdout_is_not_trained_on(db: Database, feed: Feed, tmp_path: Path) -> None:
    for i in range(20):
        feed.add(f"prompt {i % 10}", f"answer {i}", user=f"u{i}", rating=1 if i % 2 else -1)
    manifest = snapshot(db, feed, tmp_path / "snap")
    train = {_encode(r.prompt) for r in iter_rows(tmp_path / "snap" / "train.parquet")}
    holdout = {_encode(r.prompt) for r in iter_rows(tmp_path / "snap" / "holdout.parquet")}
    assert holdout and not train & holdout
    assert (manifest.stats.split, manifest.stats.dropped_prompt_in_holdout) == ("time", 4)


def test_fixed_prompts_split_by_prompt_groups(db: Database, feed: Feed, tmp_path: Path) -> None:
    """Failure 9: 200 logs over 5 FAQ prompts left `dropped_prompt_in_holdout 160, train_rows 0`."""
    for i in range(200):
        feed.add(f"FAQ button {i % 5}", f"answer {i}", user=f"u{i % 40}", rating=1 if i % 3 else -1)
    out = tmp_path / "snap"
    manifest = snapshot(db, feed, out)
    stats = manifest.stats
    assert (stats.split, stats.train_rows, stats.holdout_rows, stats.dropped_prompt_in_holdout) == (
        "prompt_groups", 160, 40, 0,
    )  # fmt: skip
    train = {r.prompt[0].content for r in iter_rows(out / "train.parquet")}
    holdout = {r.prompt[0].content for r in iter_rows(out / "holdout.parquet")}
    assert holdout == {"FAQ button 4"}, "the newest prompt is held out whole"
    assert len(train) == 4 and not train & holdout


def test_one_fixed_prompt_fails_with_the_numbers(db: Database, feed: Feed, tmp_path: Path) -> None:
    """Nothing can be held out without training on it: the run's error says why, with the numbers."""
    for i in range(50):
        feed.add("the only button", f"answer {i}", user=f"u{i % 10}")
    stats = snapshot(db, feed, tmp_path / "snap").stats
    assert (stats.split, stats.train_rows, stats.holdout_rows, stats.dropped_prompt_in_holdout) == (
        "time",
        0,
        10,
        40,
    )
    message = too_little_signal(stats, 32)
    assert message.startswith("too little signal: 0 training rows, 32 needed (50 rows with feedback;")
    assert "40 sharing a prompt with the holdout" in message and "10 held out, split by time" in message


def test_logs_without_feedback_and_other_projects_stay_out(db: Database, feed: Feed, tmp_path: Path) -> None:
    feed.add("rated", "yes", user="a")
    log = completion_log("unrated", "x", "y", created_at=T0)
    feed.writer.write_sync("logs", [Capture.log_row("p", log, "unrated", T0, "api")])
    feed.writer.write_sync("logs", [Capture.log_row("other", log, "other-1", T0, "api")])
    feed.writer.write_sync("feedback", [feedback_row("other", "other-1", T0, fid="f", rating=1)])
    manifest = snapshot(db, feed, tmp_path / "snap")
    assert manifest.stats.joined_rows == 1


def test_memory_follows_the_batch_not_the_history(db: Database, feed: Feed, tmp_path: Path) -> None:
    """Rows stream through in batches: many small row groups, every row once, order kept."""
    ids = [feed.add(f"question {i}", f"answer {i}", user=f"u{i % 50}") for i in range(300)]
    settings = SnapshotSettings(holdout_fraction=0.2, min_user_cap=50, batch_rows=16, scrub_pii=False)
    snapshot(db, feed, tmp_path / "snap", settings)
    train = pq.ParquetFile(tmp_path / "snap" / "train.parquet")
    assert train.metadata.num_row_groups >= 240 // 16
    assert [r.log_id for r in rows(tmp_path / "snap")] == ids


def test_the_training_set_is_the_newest_rows_plus_a_replay_of_older_ones(
    db: Database, feed: Feed, tmp_path: Path
) -> None:
    """Beyond `max_train_examples`, a snapshot holds the newest rows and a random sample of older
    ones: its size follows the bound, not the history; the holdout is still the newest slice."""
    ids = [feed.add(f"question {i}", f"answer {i}", user=f"u{i}") for i in range(300)]
    settings = SnapshotSettings(
        holdout_fraction=0.2, max_train_examples=80, replay_fraction=0.25, scrub_pii=False
    )
    feed.writer.stop()
    cuts = []
    for day in (20, 21):
        out = tmp_path / f"snap-{day}"
        manifest = export_snapshot(db, "p", out, settings, now=datetime(2026, 11, day))
        train = {r.log_id for r in iter_rows(out / "train.parquet")}
        holdout = [r.log_id for r in iter_rows(out / "holdout.parquet")]
        assert (manifest.stats.train_rows, manifest.stats.holdout_rows, manifest.stats.dropped_history) == (
            80,
            20,
            200,
        )
        assert holdout == ids[-20:]  # the newest slice, as without a bound
        assert set(ids[-80:-20]) <= train  # every newer training row...
        replayed = train - set(ids[-80:-20])
        assert len(replayed) == 20 and replayed <= set(ids[:220])  # ...and 20 of the 220 older ones
        cuts.append(replayed)
    assert cuts[0] != cuts[1]  # each run rehearses different old rows
    unbounded = export_snapshot(
        db, "p", tmp_path / "all", msgspec.structs.replace(settings, max_train_examples=0), now=NOW
    )
    assert (unbounded.stats.train_rows, unbounded.stats.holdout_rows, unbounded.stats.dropped_history) == (
        240,
        60,
        0,
    )
    assert "200 older than the newest rows" in too_little_signal(manifest.stats, 1000)
