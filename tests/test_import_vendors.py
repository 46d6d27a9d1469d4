"""`ratchet import` of Langfuse, Helicone, LangSmith and OpenPipe exports, through the real CLI
against a real server: each file written to the vendor's published format (tests/fixtures/
vendor_exports.py), a feedback file joined where the vendor exports two, auto-detected, bad lines
named by line number and skipped, what `ratchet export` gives back equal to what the rows held, and
a second import storing nothing new."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.importer import detect_format
from tests.fixtures import vendor_exports as vendors
from tests.fixtures.finetuning import write_with_bad_lines
from tests.fixtures.server import RatchetProcess
from tests.test_import_export import ratchet, run
from tests.test_import_openai_files import skipped_lines

FEEDBACK_FIELDS = ("rating", "score", "correction", "comment")


def imported(server: RatchetProcess, key: str, *args: str) -> tuple[str, str]:
    proc = ratchet(server, key, "import", *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1), err
    return out, err


def stored(server: RatchetProcess, key: str, project: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    out = tmp_path / f"{project}-export.jsonl"
    run(server, key, "export", "--project", project, "-o", str(out))
    return {line["id"]: line for line in map(json.loads, out.read_text(encoding="utf-8").splitlines())}


def view(line: dict[str, Any]) -> dict[str, Any]:
    """What the fixture's expectations speak of, from an exported line."""
    keys = ("messages", "prompt", "completion", "end_user", *FEEDBACK_FIELDS)
    return {k: line[k] for k in keys if line.get(k) is not None}


def stored_counts(server: RatchetProcess, key: str, project: str) -> dict[str, Any]:
    """The project's stats without what a training run changes: the shared server's scheduler may
    start one on the imported signal at any time (seen under load, 2026-12-03)."""
    with server.client(key) as c:
        stats = c.get(f"/v1/projects/{project}/stats").json()
    return {k: v for k, v in stats.items() if k != "last_run_at" and not k.endswith("_since_last_run")}


def assert_reimport_stores_nothing(server: RatchetProcess, key: str, project: str, *args: str) -> None:
    before = stored_counts(server, key, project)
    out, _ = imported(server, key, *args, "--restart")
    assert " 0 new logs," in out and " 0 feedback (" in out, out
    assert stored_counts(server, key, project) == before


def test_helicone_export(ratchet_server: RatchetProcess, tmp_path: Path) -> None:
    key = ratchet_server.create_project("hc")
    rows, expected = vendors.helicone_rows(300)
    path = tmp_path / "helicone.jsonl"
    bad = write_with_bad_lines(path, rows, vendors.HELICONE_BAD, every=71)
    assert detect_format(path) == "helicone"
    out, err = imported(ratchet_server, key, str(path), "--batch", "64")
    assert "format helicone" in out and "300 new logs" in out, out
    assert skipped_lines(err, path) == bad
    assert "export with `--include-body`" in err and "Rate limit reached" in err
    got = stored(ratchet_server, key, "hc", tmp_path)
    assert {i: view(got[i]) for i in expected} == expected
    assert got[rows[1]["request_id"]]["metadata"]["helicone"]["request_properties"] == {
        "Helicone-Property-App": "support"
    }
    assert_reimport_stores_nothing(ratchet_server, key, "hc", str(path), "--format", "helicone")


def test_langfuse_observations_with_scores(ratchet_server: RatchetProcess, tmp_path: Path) -> None:
    key = ratchet_server.create_project("lf")
    rows, scores, expected = vendors.langfuse_rows(200)
    path, scores_path = tmp_path / "observations.jsonl", tmp_path / "scores.jsonl"
    bad = write_with_bad_lines(path, rows, vendors.LANGFUSE_BAD, every=101)
    bad_scores = write_with_bad_lines(scores_path, scores, vendors.SCORES_BAD, every=29)
    assert detect_format(path) == "langfuse"
    out, err = imported(ratchet_server, key, str(path), "--feedback", str(scores_path))
    spans_and_events = sum(1 for r in rows if r["type"] != "GENERATION")
    assert "format langfuse" in out and "200 new logs" in out, out
    assert f"{spans_and_events} rows not model calls skipped" in out
    assert "1 feedback items matched no row" in out  # the orphan score
    assert skipped_lines(err, path) == bad
    assert skipped_lines(err, scores_path) == bad_scores[:2]  # the orphan is valid, not skipped
    assert "rescale it" in err and "context length exceeded" in err
    got = stored(ratchet_server, key, "lf", tmp_path)
    assert {i: view(got[i]) for i in expected} == expected
    assert any(i.startswith("otel-") for i in expected) and any(not i.startswith("otel-") for i in expected)
    assert_reimport_stores_nothing(ratchet_server, key, "lf", str(path), "--feedback", str(scores_path))


def test_langsmith_runs_with_feedback(ratchet_server: RatchetProcess, tmp_path: Path) -> None:
    key = ratchet_server.create_project("ls")
    rows, feedback, expected = vendors.langsmith_rows(200)
    path, feedback_path = tmp_path / "runs.jsonl", tmp_path / "feedback.jsonl"
    bad = write_with_bad_lines(path, rows, vendors.LANGSMITH_BAD, every=97)
    bad_feedback = write_with_bad_lines(feedback_path, feedback, vendors.FEEDBACK_BAD, every=41)
    assert detect_format(path) == "langsmith"
    # stop at the first bad run: the runs before it are stored with their feedback, progress saved
    proc = ratchet(
        ratchet_server, key, "import", str(path), "--feedback", str(feedback_path), "--stop-on-error"
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and f":{bad[0]}:" in err and "APIConnectionError" in err
    out, err = imported(ratchet_server, key, str(path), "--feedback", str(feedback_path), "--batch", "50")
    assert f"resumed at line {bad[0] - 1}" in out and "format langsmith" in out, out
    assert "matched no row" not in out  # the feedback of the runs before went with them
    assert (
        skipped_lines(err, path) == bad and skipped_lines(err, feedback_path) == bad_feedback
    )  # resumed at bad[0]
    assert "WeirdMessage" in err
    got = stored(ratchet_server, key, "ls", tmp_path)
    assert {i: view(got[i]) for i in expected} == expected
    with ratchet_server.client(key) as c:
        stats = c.get("/v1/projects/ls/stats").json()
    assert stats["corrections"] == sum(1 for e in expected.values() if "correction" in e) > 0
    assert_reimport_stores_nothing(ratchet_server, key, "ls", str(path), "--feedback", str(feedback_path))


def test_openpipe_dataset(ratchet_server: RatchetProcess, tmp_path: Path) -> None:
    key = ratchet_server.create_project("op")
    rows, expected = vendors.openpipe_rows(200)
    path = tmp_path / "dataset.jsonl"
    bad = write_with_bad_lines(path, rows, vendors.OPENPIPE_BAD, every=47)
    assert detect_format(path) == "openpipe"
    out, err = imported(ratchet_server, key, str(path))
    assert "format openpipe" in out and "200 new logs" in out, out
    assert skipped_lines(err, path) == bad
    got = sorted(
        stored(ratchet_server, key, "op", tmp_path).values(), key=lambda line: json.dumps(line["messages"])
    )
    want = sorted(expected.values(), key=lambda line: json.dumps(line["messages"]))
    assert [
        {**view(line), **({"metadata": line["metadata"]} if "metadata" in line else {})} for line in got
    ] == want
    assert_reimport_stores_nothing(ratchet_server, key, "op", str(path))


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"request_id": "r", "request_body": {}, "response_body": {}}, "helicone"),
        ({"id": "o", "traceId": "t", "type": "GENERATION", "input": "q"}, "langfuse"),
        ({"id": "r", "run_type": "llm", "inputs": {}}, "langsmith"),
        ({"messages": [], "split": "TRAIN"}, "openpipe"),
        ({"messages": [], "rejected_message": {}}, "openpipe"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "ratchet"),
    ],
)
def test_detection_only_where_unambiguous(tmp_path: Path, row: dict[str, Any], fmt: str) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text("\n" + json.dumps(row) + "\n")
    assert detect_format(path) == fmt


def test_a_feedback_file_needs_a_format_that_has_one(ratchet_server: RatchetProcess, tmp_path: Path) -> None:
    key = ratchet_server.create_project("op-fb")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(vendors.openpipe_rows(1)[0][0]) + "\n")
    proc = ratchet(ratchet_server, key, "import", str(path), "--feedback", str(path))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "takes no feedback file" in err
