"""Exports carry verdicts as users gave them (QA pass on export/import): whose feedback a line is,
no line for a withdrawn verdict, no blank text taken for a correction, and OpenAI fine-tuning files
that train only on what a snapshot would (quarantined logs and empty answers left out, `weight`
on every assistant turn, 0 for an answer with a problem, a refusal kept as OpenAI writes it)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from service.capture import Capture
from service.importer import parse_line
from service.store.db import Database
from service.store.export import ExportFormat, LogExport, default_filename
from service.store.given_text import WHITESPACE
from service.store.rows import WITHDRAW, FeedbackRow
from service.store.snapshot import export_snapshot
from tests.fixtures.server import RatchetProcess
from tests.test_import_export import ratchet, run
from tests.test_snapshot import NOW, SETTINGS, Feed, by_log, chat, pair

AT = datetime(2026, 11, 2)
ASK = [{"role": "user", "content": "Is it raining?"}]


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


def exported(db: Database, fmt: ExportFormat) -> list[dict[str, Any]]:
    """The project's export in `fmt`, each line (or Parquet row) as a dict."""
    data = b"".join(LogExport(db, "p", fmt))
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist() if data else []
    return [json.loads(line) for line in data.decode().splitlines()]


def withdraw(feed: Feed, log_id: str, user: str) -> None:
    """The patch `DELETE /v1/feedback/{id}` writes (`Capture.withdraw_feedback`)."""
    patch = FeedbackRow("p", log_id, user, f"w-{log_id}-{user}", AT, AT,
                        None, None, None, None, None, 0, [WITHDRAW], [])  # fmt: skip
    feed.writer.write_sync("feedback", [patch])


def answer(message: dict[str, Any], finish: str | None = "stop", **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}], **extra}


def say(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def test_a_withdrawn_verdict_is_no_feedback_line_in_any_format(db: Database, feed: Feed) -> None:
    both = feed.add_log(chat(ASK, "Yes."), user="a")  # a likes it
    feed.feedback(both, AT, user="b", rating=-1, correction="No, it is sunny.", comment="wrong")
    withdraw(feed, both, "b")  # ... and b took theirs back
    only = feed.add_log(chat([{"role": "user", "content": "Hi"}], "Hello."), user="c")
    withdraw(feed, only, "c")
    feed.writer.stop()

    lines = exported(db, "jsonl")
    assert [x["id"] for x in lines] == [both, only]
    assert [(x["id"], x.get("feedback_end_user"), x.get("rating")) for x in lines] == [
        (both, "a", 1),
        (only, None, None),  # the log is still exported, as one without feedback
    ]
    assert not any({"correction", "comment"} & line.keys() for line in lines)
    table = exported(db, "parquet")
    assert [(r["id"], r["feedback_end_user"], r["rating"]) for r in table] == [
        (both, "a", 1),
        (only, None, None),
    ]
    chat_rows = exported(db, "openai-chat")
    assert [r["messages"][-1]["weight"] for r in chat_rows] == [1, 0]
    assert exported(db, "openai-preference") == []


def test_a_blank_correction_or_edit_stored_before_validation_is_no_text_anywhere(
    db: Database, feed: Feed, tmp_path: Path
) -> None:
    """Old rows: capture refuses blank text now (commit af877c0), but what it stored before stays."""
    corrected = feed.add_log(chat(ASK, "Yes."), user="a", rating=-1, correction=" \n\t")
    edited = feed.add_log(chat([{"role": "user", "content": "Hi"}], "Hello."), user="b", rating=None,
                          edited="\u3000\u00a0")  # fmt: skip
    feed.writer.stop()

    export_snapshot(db, "p", tmp_path / "snap", SETTINGS, now=NOW)
    found = by_log(tmp_path / "snap")
    assert found[corrected].correction is None and found[corrected].rating == -1
    assert edited not in found  # a blank edit was its only signal: none
    lines = {x["id"]: x for x in exported(db, "jsonl")}
    assert "correction" not in lines[corrected] and lines[corrected]["rating"] == -1
    assert "edited_text" not in lines[edited] and "feedback_end_user" not in lines[edited]
    assert exported(db, "openai-preference") == []
    answers = [r["messages"][-1] for r in exported(db, "openai-chat")]
    assert answers == [{**say("Yes."), "weight": 0}, {**say("Hello."), "weight": 0}]


def test_whitespace_is_what_python_strips() -> None:
    """The SQL check and capture's `str.strip()` agree on what is blank."""
    assert set(WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert all(unicodedata.category(c) != "Zs" or c in WHITESPACE for c in map(chr, range(0x3001)))


def test_openai_files_leave_out_quarantined_logs_and_empty_answers_and_weight_every_turn(
    db: Database, feed: Feed
) -> None:
    earlier = [*ASK, say("Let me look."), {"role": "user", "content": "Well?"}]
    liked = feed.add_log(chat(earlier, "Yes, it is."), user="a")
    unrated = feed.add_log(
        chat([{"role": "user", "content": "And tomorrow?"}], "Dry."), user="b", rating=None
    )
    image = [{"type": "text", "text": "Rain here?"}, {"type": "image_url", "image_url": {"url": "data:,x"}}]
    media = feed.add_log(chat([{"role": "user", "content": image}], "Yes."), user="c")
    empty = feed.add_log(chat([{"role": "user", "content": "Say nothing"}], ""), user="d")
    fixed = feed.add_log(
        chat([{"role": "user", "content": "Say hi"}], ""), user="e", rating=-1, correction="Hi!"
    )
    feed.writer.stop()

    assert {x["id"] for x in exported(db, "jsonl")} == {liked, unrated, media, empty, fixed}  # all kept
    export = LogExport(db, "p", "openai-chat")
    rows = [json.loads(line) for line in b"".join(export).decode().splitlines()]
    assert [r["messages"] for r in rows] == [
        [*ASK, {**say("Let me look."), "weight": 0}, earlier[2], {**say("Yes, it is."), "weight": 1}],
        [{"role": "user", "content": "And tomorrow?"}, {**say("Dry."), "weight": 0}],
        [{"role": "user", "content": "Say hi"}, {**say("Hi!"), "weight": 1}],  # a correction replaces it
    ]
    assert (export.quarantined, export.skipped, export.unrepresentable) == (1, 1, 1)
    preference = exported(db, "openai-preference")
    assert preference == []  # the corrected answer was empty: OpenAI takes no empty output


def test_a_liked_answer_with_a_problem_is_never_a_trained_one(db: Database, feed: Feed) -> None:
    """As in snapshots (`trainer.dataset.answer_problem`): interrupted, ended by an upstream error,
    or cut by length, a thumbs-up does not make it an answer to learn."""
    ask = iter(range(10))

    def req() -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": f"Tell me a story {next(ask)}"}]}

    feed.add_log(pair(req(), answer(say("Once upon")), metadata={"interrupted": True}), user="a")
    feed.add_log(pair(req(), answer(say("Hal"), None, error={"message": "engine died"})), user="b")
    feed.add_log(pair(req(), answer(say("It was a dark and"), "length")), user="c")
    feed.add_log(pair(req(), answer(say("The end."))), user="d")
    feed.writer.stop()

    assert [x["rating"] for x in exported(db, "jsonl")] == [1, 1, 1, 1]
    assert [r["messages"][-1]["weight"] for r in exported(db, "openai-chat")] == [0, 0, 0, 1]


def test_a_refusal_is_exported_as_openai_writes_it_and_imports_back(db: Database, feed: Feed) -> None:
    refusal = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    feed.add_log(pair({"messages": ASK}, answer(refusal)), user="a", rating=-1)
    feed.writer.stop()

    (line,) = exported(db, "jsonl")
    assert line["messages"][-1] == refusal
    (row,) = exported(db, "openai-chat")
    assert row["messages"][-1] == {**refusal, "weight": 0}
    (parquet,) = exported(db, "parquet")
    assert json.loads(parquet["messages"])[-1] == refusal
    log, _ = parse_line(json.dumps(line).encode(), 1)  # the line imports as it was exported
    row_of = Capture.log_row("q", log, log.id, AT, "import")
    assert json.loads(row_of.answers)[0]["refusal"] == "I can't help with that."


def test_default_filename_is_one_file_per_format() -> None:
    assert [
        default_filename("demo", f) for f in ("jsonl", "parquet", "openai-chat", "openai-preference")
    ] == [
        "demo.jsonl",
        "demo.parquet",
        "demo.openai-chat.jsonl",
        "demo.openai-preference.jsonl",
    ]


def test_each_users_verdict_round_trips_and_an_import_without_feedback_warns(
    ratchet_server: RatchetProcess, tmp_path: Path
) -> None:
    """Through the service: feedback by the log's own user, by another and by an anonymous one on
    one log are three lines that import as three verdicts again; one withdrawn by
    `DELETE /v1/feedback/{id}` is no line; `ratchet import` of logs alone says it stored no feedback."""
    src = ratchet_server.create_project("verdicts-a")
    dst = ratchet_server.create_project("verdicts-b")
    log = {"id": "v1", "request": {"messages": ASK}, "response": answer(say("Yes.")), "end_user": "alice"}
    feedback = [
        {"log_id": "v1", "end_user": "alice", "rating": 1},
        {"log_id": "v1", "rating": -1, "comment": "anonymous"},
        {"log_id": "v1", "end_user": "bob", "rating": -1, "correction": "It is sunny."},
        {"log_id": "v1", "end_user": "carol", "rating": 1, "id": "fb-carol"},
    ]
    with ratchet_server.client(src) as c:
        assert c.post("/v1/logs", json=log).status_code == 202
        assert c.post("/v1/feedback", json={"feedback": feedback}).status_code == 202
        assert c.delete("/v1/feedback/fb-carol").json()["status"] == "withdrawn"
        first = c.get("/v1/projects/verdicts-a/export")
        chat_file = c.get("/v1/projects/verdicts-a/export", params={"format": "openai-chat"})
    lines = [json.loads(x) for x in first.text.splitlines()]
    assert [(x["end_user"], x["feedback_end_user"], x["rating"]) for x in lines] == [
        ("alice", "", -1),
        ("alice", "alice", 1),
        ("alice", "bob", -1),
    ]
    assert 'filename="verdicts-a.openai-chat.jsonl"' in chat_file.headers["content-disposition"]
    path = tmp_path / "a.jsonl"
    path.write_text(first.text)
    out, err = run(ratchet_server, dst, "import", str(path))
    assert "1 new logs" in out and "3 feedback" in out and "warning" not in err
    with ratchet_server.client(dst) as c:
        assert c.get("/v1/projects/verdicts-b/export").text == first.text

    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({k: v for k, v in x.items() if k in ("id", "messages")}) + "\n"
                            for x in lines[:1]).replace('"v1"', '"v2"'))  # fmt: skip
    out, err = run(ratchet_server, dst, "import", str(bare))
    assert "1 new logs" in out and "0 feedback" in out
    assert "warning: 1 logs stored but no feedback" in err and "--format" in err
    proc = ratchet(ratchet_server, dst, "import", str(bare))  # all already there: nothing stored, no warning
    assert "warning" not in proc.communicate(timeout=120)[1]
    # the CLI's default file comes from the store's own rule, not a copy of it
    env = {**os.environ, "RATCHET_URL": ratchet_server.url, "RATCHET_KEY": dst}
    proc2 = subprocess.run(
        [sys.executable, "-m", "service.cli", "export", "--project", "verdicts-b", "--format", "openai-preference"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc2.returncode == 0 and (tmp_path / default_filename("verdicts-b", "openai-preference")).exists()
