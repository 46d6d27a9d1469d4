"""The export's first pass (`service/store/export.py` `_CHOOSE`) chooses rows from narrow columns:
it must not read the logs' text, which is what made an export of 4.8M logs peak at 3.9 GB
(bench/export_memory.py), and it still leaves out, and counts, a log capture could not read."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from service.capture import Capture, log_row
from service.metrics import Metrics
from service.store.db import Database
from service.store.export import _CHOOSE, LogExport
from service.store.writer import GroupCommitWriter
from tests.fixtures.rows import chat_log, feedback_row

NOW = datetime(2026, 11, 1)
TEXT = ("answers", "messages", "request", "response", "tools")


def test_the_choose_pass_reads_no_log_text_and_still_skips_an_unreadable_log(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb")
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=100, max_queue_rows=1000)
    writer.start()
    readable = Capture.log_row(
        "p", chat_log("ok", [{"role": "user", "content": "hi"}], "hello"), "ok", NOW, "api"
    )
    unreadable = log_row("p", "bad", NOW, NOW, "gateway", None, '{"x": 1}', '{"y": 2}', None)  # shape_error
    writer.write_sync("logs", [readable, unreadable])
    writer.write_sync("feedback", [feedback_row("p", "ok", NOW, end_user="u", rating=1)])
    writer.stop()
    params = {"project": "p", "since": datetime.min, "until": datetime.max}
    with db.reading() as cur:
        plan = "\n".join(row[1] for row in cur.execute(f"EXPLAIN {_CHOOSE}", params).fetchall())
    scanned = plan[plan.index("Table: logs") :] if "Table: logs" in plan else plan
    assert not [c for c in TEXT if c in scanned], plan

    export = LogExport(db, "p", "jsonl")
    lines = [json.loads(line) for line in b"".join(export).decode().splitlines()]
    assert (export.rows, export.skipped, [(x["id"], x["rating"], x["feedback_end_user"]) for x in lines]) == (
        1,
        1,
        [("ok", 1, "u")],
    )
    db.close()
