"""Point reads use an index: DuckDB's plan for a log and its feedback is an index scan, and the
project filter that follows it still keeps projects apart."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from service.app import build_runtime
from service.capture import Capture
from service.config import Settings
from service.errors import NotFound
from service.store.archive_index import log_keys
from service.store.queries import FEEDBACK_BY_LOG_ID, LOG_BY_ID
from tests.fixtures.rows import completion_log, feedback_row

NOW = datetime(2026, 11, 1)


def test_a_log_and_its_feedback_are_read_through_an_index_and_stay_in_their_project(tmp_path: Path) -> None:
    runtime = build_runtime(Settings(data_dir=str(tmp_path)))
    runtime.writer.start()

    async def fill() -> None:
        for project in ("a", "b"):  # the same ids in two projects
            logs = [
                Capture.log_row(project, completion_log(f"l{i}", f"{project} {i}", "x"), f"l{i}", NOW, "api")
                for i in range(5000)
            ]  # fmt: skip
            await runtime.writer.write("logs", logs)
            feedback = [feedback_row(project, f"l{i}", NOW, end_user=f"u{i % 7}", fid=f"f{i}", rating=1)
                        for i in range(5000)]  # fmt: skip
            await runtime.writer.write("feedback", feedback)

    try:
        asyncio.run(fill())
        with runtime.db.reading() as cur:
            for sql, params in (
                (LOG_BY_ID, ["l123", "a"]),
                (FEEDBACK_BY_LOG_ID, ["l123", "a", *log_keys([("a", "l123")])]),
            ):
                plan = cur.execute(f"EXPLAIN ANALYZE {sql}", params).fetchall()[0][1]
                assert "Index Scan" in plan and "Sequential Scan" not in plan, plan
        log = runtime.queries.get_log("b", "l123")
        assert (log.project, log.request, [f.end_user for f in log.feedback]) == (
            "b",
            {"prompt": "b 123"},
            ["u4"],
        )
        with pytest.raises(NotFound):
            runtime.queries.get_log("c", "l123")
    finally:
        runtime.writer.stop()
        runtime.db.close()
