"""`ratchet import` (30k lines, progress bar, resumable, idempotent) and export round trips."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.fixtures.server import RatchetProcess
from tests.test_snapshot import CALL, WEATHER_TOOL

# 30 batches of 1000: the kill lands mid-file and the resume has most of it left. (It was 100k,
# 36 s against 8 s, and asserted nothing more: throughput is bench/ingest.py's, and the CLI streams
# the file whatever its size.)
LINES = 30_000
IMPLICIT = {"regenerated", "regenerated_log_id", "edited_text", "copied", "events"}


def ratchet(server: RatchetProcess, key: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "RATCHET_URL": server.url, "RATCHET_KEY": key}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(server: RatchetProcess, key: str, *args: str) -> tuple[str, str]:
    proc = ratchet(server, key, *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out, err


def write_chats(path: Path, n: int, *, implicit: bool = False) -> None:
    """`n` chats, a third rated, a tenth corrected; `implicit`: with regenerates, copies, edits and
    app events on some of them too (issue 13)."""
    with open(path, "w") as fh:
        for i in range(n):
            line = {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus one?"},
                    {"role": "assistant", "content": f"It is {i + 1}."},
                ],
                "end_user": f"u{i % 97}",
                "created_at": f"2026-10-{1 + i % 28:02d}T12:00:00Z",
            }
            if i % 3 == 0:
                line["rating"] = 1 if i % 2 else -1
            if i % 10 == 0:
                line["correction"] = f"{i + 1}"
            if implicit and i % 7 == 0:
                line |= {"regenerated": True, "regenerated_log_id": f"next-{i}"}
            if implicit and i % 11 == 0:
                line["copied"] = True
            if implicit and i % 13 == 0:
                line["edited_text"] = f"It is {i + 1}, edited."
            if implicit and i % 17 == 0:
                line["events"] = ["shared", "pinned"]
            fh.write(json.dumps(line) + "\n")


def test_import_30k_lines_resumes_after_a_kill_and_stores_each_once(
    ratchet_server: RatchetProcess, tmp_path: Path
) -> None:
    key = ratchet_server.create_project("bulk")
    path = tmp_path / "chats.jsonl"
    write_chats(path, LINES)
    progress = path.with_name(path.name + ".ratchet-import")

    first = ratchet(ratchet_server, key, "import", str(path), "--batch", "1000")
    while not progress.exists() and first.poll() is None:
        time.sleep(0.05)
    first.kill()  # interrupted part-way
    first.communicate()
    done_before = json.loads(progress.read_text())["line"]
    assert 0 < done_before < LINES

    out, err = run(ratchet_server, key, "import", str(path), "--batch", "1000")
    assert f"resumed at line {done_before}" in out
    assert "100%" in err and "import chats.jsonl" in err  # the progress bar
    assert not progress.exists()
    # Everything once: a re-import of the whole file is all duplicates, and no new signal.
    with ratchet_server.client(key) as c:
        new_rated = c.get("/v1/projects/bulk/stats").json()["new_rated_since_last_run"]
    out, _ = run(ratchet_server, key, "import", str(path), "--batch", "1000")
    with_feedback = sum(1 for i in range(LINES) if i % 3 == 0 or i % 10 == 0)
    assert (
        f"imported {LINES} lines: 0 new logs, {LINES} already there, 0 feedback ({with_feedback} unchanged)"
        in out
    )
    with ratchet_server.client(key) as c:
        # (A run the scheduler starts meanwhile may lower it; a re-count would raise it.)
        assert c.get("/v1/projects/bulk/stats").json()["new_rated_since_last_run"] <= new_rated
    out, _ = run(ratchet_server, key, "stats", "--project", "bulk")
    assert f"project bulk: {LINES} logs" in out
    with ratchet_server.client(key) as c:
        stats = c.get("/v1/projects/bulk/stats").json()
    assert stats["logs"] == LINES
    assert stats["rated_logs"] == len(range(0, LINES, 3))
    assert stats["corrections"] == len(range(0, LINES, 10))


def test_import_skips_bad_lines_by_file_line_number_or_stops_there(
    ratchet_server: RatchetProcess, tmp_path: Path
) -> None:
    key = ratchet_server.create_project("bad-lines")
    path = tmp_path / "mixed.jsonl"
    good = [
        {"id": f"g-{i}", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
         "rating": 1}
        for i in range(4)
    ]  # fmt: skip
    lines = [
        json.dumps(good[0]),
        "{not json",  # line 2
        json.dumps({**good[1], "rating": 5}),  # line 3: a value the server refuses
        json.dumps(good[1]),
        "",
        json.dumps({**good[2], "score": 4}),  # line 6
        json.dumps({**good[2], "messages": [{"role": "user", "content": "only a question"}]}),  # line 7
        json.dumps(good[2]),
        json.dumps({**good[3], "id": "has space"}),  # line 9: an id with a character ids may not hold
        json.dumps(good[3]),
        '{"id": "deep", "metadata": {"a": ' + "[" * 2000 + "]" * 2000 + "}}",  # line 11: too deep to decode
    ]
    path.write_text("\n".join(lines) + "\n")
    proc = ratchet(ratchet_server, key, "import", str(path), "--stop-on-error")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "mixed.jsonl:2: " in err, err
    progress = json.loads(path.with_name(path.name + ".ratchet-import").read_text())
    assert progress["line"] == 1  # everything before the bad line was sent and saved
    with ratchet_server.client(key) as c:
        assert c.get("/v1/logs/g-0").status_code == 200
    # Without the flag: the bad lines are skipped and named by line number; the rest are stored.
    proc = ratchet(ratchet_server, key, "import", str(path))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    skipped = [line.split(":")[1] for line in err.splitlines() if ": skipped: " in line]
    assert skipped == ["2", "3", "6", "7", "9", "11"], err
    assert "rating" in err and "score" in err and "needs the prompt and the answer" in err
    assert "nested too deeply" in err
    assert "3 new logs, 0 already there" in out and "6 bad lines skipped (resumed at line 1)" in out, out
    with ratchet_server.client(key) as c:
        stats = c.get("/v1/projects/bad-lines/stats").json()
    assert (stats["logs"], stats["thumbs_up"]) == (4, 4)


def test_export_round_trips_through_import(ratchet_server: RatchetProcess, tmp_path: Path) -> None:
    src_key = ratchet_server.create_project("roundtrip-a")
    dst_key = ratchet_server.create_project("roundtrip-b")
    chats = tmp_path / "chats.jsonl"
    write_chats(chats, 500, implicit=True)
    run(ratchet_server, src_key, "import", str(chats))

    exported = tmp_path / "a.jsonl"
    out, _ = run(ratchet_server, src_key, "export", "--project", "roundtrip-a", "-o", str(exported))
    assert out.strip() == f"wrote 500 rows to {exported}"
    run(ratchet_server, dst_key, "import", str(exported))
    again = tmp_path / "b.jsonl"
    run(ratchet_server, dst_key, "export", "--project", "roundtrip-b", "-o", str(again))
    assert exported.read_text() == again.read_text()
    # `-o -` writes the same lines to stdout (and says how many on stderr), not to a file named `-`.
    out, err = run(ratchet_server, dst_key, "export", "--project", "roundtrip-b", "-o", "-")
    assert out == again.read_text() and "wrote 500 rows to stdout" in err
    # Without -o, one default file per format: the OpenAI file does not overwrite the project's own.
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "export", "--project", "roundtrip-b", "--format", "openai-chat"],
        env={**os.environ, "RATCHET_URL": ratchet_server.url, "RATCHET_KEY": dst_key},
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and (tmp_path / "roundtrip-b.openai-chat.jsonl").exists(), proc.stderr
    assert not (tmp_path / "-").exists() and not (tmp_path / "roundtrip-b.jsonl").exists()

    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    zero = next(r for r in rows if r["messages"][0]["content"] == "What is 0 plus one?")
    assert zero["messages"][-1] == {"role": "assistant", "content": "It is 1."}
    assert (zero["rating"], zero["correction"], zero["end_user"]) == (-1, "1", "u0")
    # i = 0 had every implicit kind; i = 7 a regenerate only (issue 13: implicit kinds round-trip).
    assert (zero["regenerated"], zero["regenerated_log_id"], zero["copied"]) == (True, "next-0", True)
    assert (zero["edited_text"], sorted(zero["events"])) == ("It is 1, edited.", ["pinned", "shared"])
    seven = next(r for r in rows if r["messages"][0]["content"] == "What is 7 plus one?")
    assert {k for k in seven if k in IMPLICIT} == {"regenerated", "regenerated_log_id"}
    assert sum("copied" in r for r in rows) == len(range(0, 500, 11))

    window = tmp_path / "w.parquet"
    args = (
        "export",
        "--project",
        "roundtrip-a",
        "--format",
        "parquet",
        "--since",
        "2026-10-02",
        "--until",
        "2026-10-04",
    )
    run(ratchet_server, src_key, *args, "-o", str(window))
    table = pq.read_table(window)
    days = {d.day for d in table.column("created_at").to_pylist()} if table.num_rows else set()
    assert table.num_rows == len([i for i in range(500) if 2 <= 1 + i % 28 < 4]) and days <= {2, 3}
    # The API takes a date alone as the CLI does (its midnight UTC); other text is a 422 naming the field.
    with ratchet_server.client(src_key) as c:
        window_url = "/v1/projects/roundtrip-a/export?format=parquet"
        by_date = c.get(window_url, params={"since": "2026-10-02", "until": "2026-10-04T00:00:00Z"})
        assert by_date.headers["x-ratchet-rows"] == str(table.num_rows), by_date.text
        bad = c.get(window_url, params={"since": "last tuesday"})
        assert (bad.status_code, bad.json()["field"]) == (422, "since"), bad.text


def test_export_carries_tools_the_chosen_answer_and_scrubs_on_request(
    ratchet_server: RatchetProcess, tmp_path: Path
) -> None:
    """Export reads the typed columns: tool calls, tool results and `tools` are on the line, the
    answer is the one the feedback names, and `scrub=true` redacts PII in decoded strings (the
    lines stay valid JSON). Both formats stream, and both parse."""
    key = ratchet_server.create_project("export-shapes")
    tool_turns = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Weather in Paris? I am jane.doe@example.com"}],
        },
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"report": "18C", "by": "+44 20 7946 0958"}'},
    ]
    two = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
           for i, text in enumerate(["alpha", "beta"])]  # fmt: skip
    logs = [
        {"id": "tools", "request": {"messages": tool_turns, "tools": [WEATHER_TOOL]},
         "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": "18C."}, "finish_reason": "stop"}]}},
        {"id": "n2", "request": {"messages": [{"role": "user", "content": "pick"}], "n": 2}, "response": {"choices": two}},
        {"id": "cut", "request": {"messages": [{"role": "user", "content": "long?"}]},
         "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": "It was"}, "finish_reason": "length"}]}},
    ]  # fmt: skip
    feedback = [
        {"log_id": "n2", "end_user": "u1", "rating": 1, "choice": 1},
        {"log_id": "tools", "end_user": "u2", "rating": -1, "correction": "Mail jane.doe@example.com: 18C"},
    ]
    with ratchet_server.client(key) as c:
        assert c.post("/v1/logs", json={"logs": logs}).status_code == 202
        assert c.post("/v1/feedback", json={"feedback": feedback}).status_code == 202
        plain = c.get("/v1/projects/export-shapes/export")
        scrubbed = c.get("/v1/projects/export-shapes/export", params={"scrub": "true"})
        parquet = c.get("/v1/projects/export-shapes/export", params={"format": "parquet", "scrub": "true"})
    assert plain.headers["x-ratchet-rows"] == scrubbed.headers["x-ratchet-rows"] == "3"
    assert plain.headers["transfer-encoding"] == "chunked"  # streamed, not spooled
    lines = {line["id"]: line for line in map(json.loads, plain.text.splitlines())}
    tools = lines["tools"]
    assert tools["tools"] == [WEATHER_TOOL]
    assert tools["messages"][1]["tool_calls"] == [CALL] and tools["messages"][2]["tool_call_id"] == "call_1"
    assert tools["messages"][-1] == {"role": "assistant", "content": "18C."}
    assert (tools["rating"], tools["feedback_end_user"], tools.get("end_user")) == (-1, "u2", None)
    assert lines["n2"]["messages"][-1]["content"] == "beta", "the answer the feedback named (choice 1)"
    assert lines["cut"]["finish_reason"] == "length" and "rating" not in lines["cut"]

    clean = {line["id"]: line for line in map(json.loads, scrubbed.text.splitlines())}
    assert "jane.doe@example.com" not in scrubbed.text and "7946" not in scrubbed.text
    assert clean["tools"]["messages"][0]["content"] == "Weather in Paris? I am [REDACTED]"
    assert json.loads(clean["tools"]["messages"][2]["content"]) == {"report": "18C", "by": "[REDACTED]"}
    assert clean["tools"]["correction"] == "Mail [REDACTED]: 18C"
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == 3 and "jane.doe" not in json.dumps(table.to_pylist(), default=str)
    assert all(json.loads(m)[-1]["role"] == "assistant" for m in table.column("messages").to_pylist())
