"""Does filtering verdicts slow exports? The export's two queries before and after, in one run.

The export now joins only feedback rows that hold a verdict (a withdrawn one is no line), reads a
correction or edited text only when it is not blank (`service.store.given_text`), marks the logs
an OpenAI file leaves out (`quarantined`) and reads the log's own end user beside the feedback's.
This fills a fresh DuckDB file through the service's own writer (`--logs` chat logs of 1-3 turns,
~60% with feedback, ~5% of those corrected, 1 in 10 liked by a second user, 2% withdrawn, 1%
with a blank correction stored as old rows were), then times the export's pass as `LogExport`
runs it (choose the rows in one read transaction, then read every batch of 2,048 rows' text):
`before` with the queries as they were (copied below), `after` with `service.store.export`'s,
alternating, `--repeat` times each, and prints the medians and after/before.

    .venv/bin/python bench/export_verdicts.py [--logs 300000] [--repeat 5]

Measured 2026-12-01 on the shared 2-core machine (load 2.4 from other jobs), `--logs 300000
--repeat 5`: 197,796 feedback rows; before 2.09 s (317,810 rows read), after 1.99 s (317,491: a
withdrawn second verdict is no line), after/before 0.95x: the filtering costs nothing measurable
(the runs spread 1.87-2.19 s).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# service/store/export.py before the verdict filtering (commit 466301f).
_BEFORE_CHOOSE = """
CREATE OR REPLACE TEMP TABLE export_rows AS
SELECT l.rowid AS log_rowid, l.endpoint IS NULL AS unreadable, f.end_user AS feedback_user,
       coalesce(f.choice, 0) AS choice, f.rating, f.score, f.correction, f.comment,
       f.regenerated, f.regenerated_log_id, f.edited, f.copied, f.events,
       nullif(coalesce(nullif(f.end_user, ''), l.end_user), '') AS end_user
FROM logs l LEFT JOIN feedback f ON f.project = l.project AND f.log_id = l.id
WHERE l.project = $project AND l.created_at >= $since AND l.created_at < $until
ORDER BY log_rowid
"""
_BEFORE_READ = """
SELECT k.choice, k.rating, k.score, k.correction, k.comment,
       k.regenerated, k.regenerated_log_id, k.edited, k.copied, k.events, k.end_user,
       l.id, l.created_at, l.adapter, l.metadata, l.endpoint, l.messages, l.tools, l.tool_choice,
       l.response_format, l.answers,
       CASE WHEN l.quarantine IN ('media_prompt', 'token_prompt') THEN l.request END,
       l.response->>'$.error.message'
FROM export_rows k JOIN logs l ON l.rowid = k.log_rowid
WHERE NOT k.unreadable AND k.log_rowid >= $lo AND k.log_rowid < $hi AND l.rowid >= $lo AND l.rowid < $hi
ORDER BY k.log_rowid, k.feedback_user NULLS FIRST
"""


def fill(db_path: Path, n_logs: int, seed: int = 11) -> int:
    """Write `n_logs` logs and their feedback; return the feedback rows written."""
    from service.capture import Capture
    from service.metrics import Metrics
    from service.store.db import Database
    from service.store.rows import WITHDRAW
    from service.store.writer import GroupCommitWriter
    from tests.fixtures.rows import chat_log, feedback_row

    rnd = random.Random(seed)
    words = [
        "order",
        "refund",
        "shipping",
        "invoice",
        "password",
        "login",
        "plan",
        "upgrade",
        "address",
        "payment",
        "rain",
        "sunny",
    ]
    db = Database(db_path)
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=5000, max_queue_rows=200_000)
    writer.start()
    t0 = datetime(2026, 1, 1)
    written = 0
    for start in range(0, n_logs, 5000):
        logs, feedback, withdrawn = [], [], []
        for n in range(start, min(start + 5000, n_logs)):
            at, user = t0 + timedelta(seconds=n), f"u{rnd.randrange(50)}"
            messages = []
            for _turn in range(rnd.randint(1, 3)):
                messages.append(
                    {"role": "user", "content": " ".join(rnd.choices(words, k=rnd.randint(5, 25)))}
                )
                messages.append(
                    {"role": "assistant", "content": " ".join(rnd.choices(words, k=rnd.randint(5, 40)))}
                )
            answer = messages.pop()["content"]
            logs.append(Capture.log_row("big", chat_log(f"l{n}", messages, answer, created_at=at, end_user=user),
                                        f"l{n}", at, "api"))  # fmt: skip
            if rnd.random() < 0.6:
                roll = rnd.random()
                correction = " \n" if roll < 0.01 else ("Better: " + answer if roll < 0.06 else None)
                feedback.append(feedback_row("big", f"l{n}", at, end_user=user, fid=f"f{n}",
                                             rating=1 if rnd.random() < 0.6 else -1, correction=correction))  # fmt: skip
                if rnd.random() < 0.1:
                    feedback.append(
                        feedback_row("big", f"l{n}", at, end_user="second", fid=f"s{n}", rating=1)
                    )
                if rnd.random() < 0.02:
                    withdrawn.append(feedback[-1]._replace(id=f"w{n}", fields=[WITHDRAW], item_ids=[f"w{n}"]))
        writer.write_sync("logs", logs)
        writer.write_sync("feedback", feedback)
        writer.write_sync("feedback", withdrawn)
        written += len(feedback)
    writer.stop()
    db.close()
    return written


def export_pass(db_path: Path, choose: str, read: str) -> tuple[float, int]:
    """Seconds for the pass (choose, then read every batch) and the rows it read."""
    from service.store.db import Database, rowid_ranges

    db = Database(db_path)
    cur = db.cursor()
    started = time.perf_counter()
    cur.execute("BEGIN TRANSACTION")
    cur.execute(choose, {"project": "big", "since": datetime.min, "until": datetime.max})
    rows = 0
    for lo, hi in rowid_ranges(cur, "export_rows", 2048):
        rows += len(cur.execute(read, {"lo": lo, "hi": hi}).fetchall())
    cur.execute("ROLLBACK")
    seconds = time.perf_counter() - started
    cur.close()
    db.close()
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logs", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from service.store import export

    with tempfile.TemporaryDirectory(prefix="ratchet-bench-") as tmp:
        db_path = Path(tmp) / "ratchet.duckdb"
        started = time.perf_counter()
        feedback = fill(db_path, args.logs)
        print(f"filled {args.logs} logs, {feedback} feedback rows in {time.perf_counter() - started:.1f} s")
        variants = {"before": (_BEFORE_CHOOSE, _BEFORE_READ), "after": (export._CHOOSE, export._READ)}
        export_pass(db_path, *variants["before"])  # warm the file cache once
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, (choose, read) in variants.items():
                seconds, rows = export_pass(db_path, choose, read)
                times[name].append(seconds)
                print(f"  {name:6} {seconds:6.2f} s  {rows} rows", flush=True)
        before, after = (statistics.median(times[name]) for name in ("before", "after"))
        print(f"median: before {before:.2f} s, after {after:.2f} s; after/before {after / before:.2f}x")


if __name__ == "__main__":
    main()
