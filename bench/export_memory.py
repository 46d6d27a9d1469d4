"""Where an export's memory goes: peak RSS of its first pass (`service/store/export.py` `_CHOOSE`).

The export chooses its rows in one query (every log of the project joined with its feedback,
sorted by row id, into a temporary table) before it reads any text in batches. This runs that
pass alone, in a fresh process per variant, on an existing data directory (one `bench/scale.py`
filled; the archive included), samples the process's VmRSS every 50 ms, reads the first, middle
and last `--batches` batches the way the export does, and prints peak RSS, the pass's time and a
digest of the rows read (equal digests: the variants export the same bytes):

- `answers`: the pass as it was, testing `l.answers IS NULL` for a log the shape module could not
  read: the baseline;
- `endpoint`: today's `_CHOOSE`, testing `l.endpoint IS NULL` (set together with `answers`);
- `narrow`: also leaves the feedback's fields out of the pass (only the feedback row id), and
  reads them per batch by row id: measured, not shipped (a batch's feedback row ids may spread
  over the whole table when feedback arrives long after its logs).

    .venv/bin/python bench/export_memory.py --data /tmp/ratchet-scale --project big [--batches 30]

Measured 2026-12-01 on the 2-core machine shared with other jobs, on the 4.8M-log data dir of
`bench/scale.py` (342k logs in the DuckDB file, 4.5M archived, 2.9M feedback rows), DuckDB memory
limit 5,900 MiB: `answers` 13.5 s, peak 3.86 GB; `endpoint` 11.0 s, 2.01 GB; `narrow` 5.4 s,
1.30 GB; all three the same digest. DuckDB's own `duckdb_memory()` held 0.9 GB after the pass:
the rest of the peak is the scan's and the join's working memory (reading every answer of 4.8M
logs, carrying the feedback's text through the hash join and the sort). `SET threads = 1` changed
nothing (4.12 GB). This script's own run on the same data dir (migration 016 applied, 4.88M logs,
load 8 from other jobs): `answers` 31.0 s, 4.26 GB; `endpoint` 20.9 s, 2.36 GB (0.55x); `narrow`
12.7 s, 1.63 GB (0.38x), its 30 batch reads 24.4 s against 16.6 s; one digest.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

VARIANTS = ("answers", "endpoint", "narrow")

# `{verdict}`, `{correction}`, `{edited}`: filled from service.store.export's (`run_variant`).
_NARROW_CHOOSE = """
CREATE OR REPLACE TEMP TABLE export_rows AS
SELECT l.rowid AS log_rowid, l.endpoint IS NULL AS unreadable, f.rowid AS feedback_rowid
FROM logs l LEFT JOIN feedback f ON f.project = l.project AND f.log_id = l.id AND {verdict}
WHERE l.project = $project AND l.created_at >= $since AND l.created_at < $until
ORDER BY log_rowid
"""
_NARROW_READ = """
SELECT coalesce(f.choice, 0), f.rating, f.score, {correction}, f.comment,
       f.regenerated, f.regenerated_log_id, {edited}, f.copied, f.events,
       nullif(l.end_user, ''), f.end_user,
       l.id, l.created_at, l.adapter, l.metadata, l.endpoint, l.messages, l.tools, l.tool_choice,
       l.response_format, l.answers,
       CASE WHEN l.quarantine IN ('media_prompt', 'token_prompt') THEN l.request END,
       l.response->>'$.error.message'
FROM export_rows k JOIN logs l ON l.rowid = k.log_rowid
LEFT JOIN feedback f ON f.rowid = k.feedback_rowid
WHERE NOT k.unreadable AND k.log_rowid >= $lo AND k.log_rowid < $hi AND l.rowid >= $lo AND l.rowid < $hi
ORDER BY k.log_rowid, f.end_user NULLS FIRST
"""


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) << 10 for line in fh if line.startswith("VmRSS"))


def run_variant(variant: str, data: Path, project: str, memory_mib: int, batches: int) -> None:
    """One variant in this process; prints one line."""
    from service.store import export
    from service.store.archive import Archive
    from service.store.db import Database, rowid_ranges
    from service.store.given_text import given_text

    db = Database(data / "ratchet.duckdb", memory_limit_mib=memory_mib, temp_directory=data / "tmp")
    archive = Archive(db, str(data / "archive"), file_rows=100_000, delete_batch_rows=10_000)
    choose, read = {
        "answers": (export._CHOOSE.replace("l.endpoint IS NULL", "l.answers IS NULL"), export._READ),
        "endpoint": (export._CHOOSE, export._READ),
        "narrow": (
            _NARROW_CHOOSE.format(verdict=export._VERDICT),
            _NARROW_READ.format(correction=given_text("f.correction"), edited=given_text("f.edited")),
        ),
    }[variant]
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    cur = db.cursor()
    started = time.perf_counter()
    cur.execute("BEGIN TRANSACTION")
    archive.shadow_logs(cur, project)
    cur.execute(choose, {"project": project, "since": datetime.min, "until": datetime.max})
    chose = time.perf_counter() - started
    ranges = rowid_ranges(cur, "export_rows", 2048)
    third = max(1, batches // 3)
    middle = len(ranges) // 2
    picks = ranges[:third] + ranges[middle : middle + third] + ranges[-third:]
    digest = hashlib.sha256()
    started = time.perf_counter()
    for lo, hi in picks:
        digest.update(repr(cur.execute(read, {"lo": lo, "hi": hi}).fetchall()).encode())
    read_s = time.perf_counter() - started
    done.set()
    cur.execute("ROLLBACK")
    db.close()
    print(
        f"{variant:9} choose {chose:6.1f} s | {len(picks)} batch reads {read_s:5.1f} s | peak RSS"
        f" {peak[0] / 2**30:5.2f} GB (start {base / 2**30:.2f}) | digest {digest.hexdigest()[:12]}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="a Ratchet data dir (not in use)")
    parser.add_argument("--project", default="big")
    parser.add_argument("--memory-mib", type=int, default=5900, help="database.memory_limit_mib")
    parser.add_argument("--batches", type=int, default=30, help="batches read after the pass")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    if args.variant:
        run_variant(args.variant, args.data, args.project, args.memory_mib, args.batches)
        return
    peaks = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant, *sys.argv[1:]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print(out, end="", flush=True)
        peaks[variant] = float(out.split("peak RSS")[1].split("GB")[0])
    print(
        "\npeak RSS / the answers pass's: "
        + ", ".join(f"{v} {peaks[v] / peaks['answers']:.2f}x" for v in VARIANTS)
    )


if __name__ == "__main__":
    main()
