"""`ratchet import` / `ratchet export` with OpenAI fine-tuning files (chat and preference), through
the real CLI against a real server: bad lines named by line number and skipped, a stopped import
resumes, a second import stores nothing new, and the export gives back the file's rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from formats import finetuning
from tests.fixtures.finetuning import (
    CHAT_BAD,
    PREFERENCE_BAD,
    chat_rows,
    preference_rows,
    write_with_bad_lines,
)
from tests.fixtures.server import RatchetProcess
from tests.test_import_export import ratchet, run


def exported(server: RatchetProcess, key: str, project: str, fmt: str, out: Path) -> list[dict[str, Any]]:
    run(server, key, "export", "--project", project, "--format", fmt, "-o", str(out))
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def weighted(row: dict[str, Any]) -> dict[str, Any]:
    """A chat row as an export writes it back: every assistant turn weighted, the answer 1 unless
    weighted 0, earlier turns 0 unless weighted 1."""
    *prompt, answer = row["messages"]
    messages = [{**m, "weight": m.get("weight", 0)} if m["role"] == "assistant" else m for m in prompt]
    return {**row, "messages": [*messages, {**answer, "weight": answer.get("weight", 1)}]}


def skipped_lines(stderr: str, path: Path) -> list[int]:
    return [
        int(line.split(":")[1])
        for line in stderr.splitlines()
        if line.startswith(f"{path}:") and "skipped" in line
    ]


def test_chat_file_imports_by_line_resumes_is_idempotent_and_round_trips(
    ratchet_server: RatchetProcess, tmp_path: Path
) -> None:
    key = ratchet_server.create_project("ft-chat")
    rows = chat_rows(300)
    path = tmp_path / "train.jsonl"
    bad = write_with_bad_lines(path, rows, CHAT_BAD)
    # stop at the first bad line: everything before it is stored, progress saved
    proc = ratchet(ratchet_server, key, "import", str(path), "--stop-on-error", "--batch", "40")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and f":{bad[0]}:" in err
    # run again (auto-detected format): resumes at that line, skips and names each bad line
    proc = ratchet(ratchet_server, key, "import", str(path), "--batch", "40")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1  # bad lines were skipped
    assert "format openai-chat" in out and f"resumed at line {bad[0] - 1}" in out
    assert skipped_lines(err, path) == bad
    assert "weight` is 0 or 1" in err and "only assistant messages carry a `weight`" in err
    # everything once: a third import (from the start) stores nothing new
    proc = ratchet(ratchet_server, key, "import", str(path), "--format", "openai-chat", "--restart")
    out, _ = proc.communicate(timeout=300)
    assert " 0 new logs, 300 already there" in out
    # the answer is liked unless weighted 0
    with ratchet_server.client(key) as c:
        stats = c.get("/v1/projects/ft-chat/stats").json()
    assert stats["logs"] == 300
    assert stats["thumbs_up"] == sum(1 for r in rows if r["messages"][-1].get("weight", 1) == 1)
    assert exported(ratchet_server, key, "ft-chat", "openai-chat", tmp_path / "out.jsonl") == [
        weighted(r) for r in rows
    ]


def test_preference_file_is_logs_with_preferences_and_round_trips(
    ratchet_server: RatchetProcess, tmp_path: Path
) -> None:
    key = ratchet_server.create_project("ft-pref")
    rows = preference_rows(200)
    path = tmp_path / "dpo.jsonl"
    bad = write_with_bad_lines(path, rows, PREFERENCE_BAD, every=61)
    proc = ratchet(ratchet_server, key, "import", str(path))
    out, err = proc.communicate(timeout=300)
    assert "format openai-preference" in out and "200 new logs" in out and "200 feedback" in out
    assert skipped_lines(err, path) == bad
    assert "tool calls cannot be one" in err
    with ratchet_server.client(key) as c:
        stats = c.get("/v1/projects/ft-pref/stats").json()
    assert (stats["thumbs_down"], stats["corrections"]) == (200, 200)
    assert exported(ratchet_server, key, "ft-pref", "openai-preference", tmp_path / "out.jsonl") == rows
    # the same logs as a chat file: each corrected answer becomes the target
    chat = exported(ratchet_server, key, "ft-pref", "openai-chat", tmp_path / "chat.jsonl")
    assert [r["messages"][-1] for r in chat] == [{**r["preferred_output"][0], "weight": 1} for r in rows]


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 1},
                ]
            },
            "openai-chat",
        ),
        (
            {
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "parallel_tool_calls": True,
            },
            "openai-chat",
        ),
        (
            {"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []},
            "openai-preference",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            None,
        ),  # also Ratchet's own
        (
            {
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rating": 1,
            },
            None,
        ),
    ],
)
def test_detection_only_where_unambiguous(row: dict[str, Any], fmt: str | None) -> None:
    assert finetuning.detect(json.dumps(row).encode()) == fmt


def test_chat_line_keeps_weights_and_rates_the_answer() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "weight": 0},
        ]
    }
    line = finetuning.chat_line(json.dumps(row).encode())
    assert line.rating is None  # the answer is weighted 0: stored, never a positive example
    assert line.metadata == {"openai_fine_tuning": {"weights": {"1": 0, "3": 0}}}
    assert all("weight" not in m for m in line.messages or [])
    assert finetuning.chat_row(line) == row
