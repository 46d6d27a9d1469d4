"""The lake tier's effect: the DuckDB file, snapshot, export and point reads before and after
every log moved to the Parquet archive.

Fills a fresh DuckDB file through the service's own writer with `bench/snapshot.py`'s realistic
chat logs (~60% rated), then measures on the hot file; moves everything to the archive (the job's
own `Archive.move_day`, default file and delete-batch sizes) and measures again. Sizes are after
a CHECKPOINT: the file (DuckDB keeps freed blocks for reuse, so it does not shrink on its own) and
its used blocks. Then the cost of the archive's id look-up on ingest (the writer asks it on every
flush, so a re-sent archived id is a duplicate): the look-up for a batch of 500 new ids and of 500
archived ones (those read their file to confirm), and new logs through the writer with the look-up
against without it, in alternating rounds. Timings on a shared machine are noisy: read the ratios.

    .venv/bin/python bench/archive.py [--rated 60000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.snapshot import fill  # noqa: E402
from service.capture import Capture  # noqa: E402
from service.config import SnapshotSettings  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.store.archive import Archive  # noqa: E402
from service.store.db import Database  # noqa: E402
from service.store.export import LogExport  # noqa: E402
from service.store.queries import Queries  # noqa: E402
from service.store.snapshot import export_snapshot  # noqa: E402
from service.store.writer import GroupCommitWriter  # noqa: E402
from tests.fixtures.rows import chat_log  # noqa: E402

NOW = datetime(2030, 1, 1)


def sizes(db: Database, path: Path) -> str:
    with db.transaction() as cur:
        cur.execute("CHECKPOINT")
    with db.reading() as cur:
        block, total, used = cur.execute(
            "SELECT block_size, total_blocks, used_blocks FROM pragma_database_size()"
        ).fetchone()
    return f"file {path.stat().st_size / 2**20:.0f} MiB ({used * block / 2**20:.0f} MiB in used blocks of {total * block / 2**20:.0f})"


def measure(db: Database, archive: Archive, out: Path, ids: list[str], label: str) -> dict[str, float]:
    started = time.perf_counter()
    manifest = export_snapshot(
        db, "big", out / label, SnapshotSettings(scrub_pii=False), now=NOW, archive=archive
    )
    snap = time.perf_counter() - started
    started = time.perf_counter()
    export = LogExport(db, "big", "jsonl", archive=archive)
    exported = sum(len(chunk) for chunk in export)
    exp = time.perf_counter() - started
    queries = Queries(db, archive)
    reads = []
    for log_id in ids:
        started = time.perf_counter()
        queries.get_log("big", log_id)
        reads.append(time.perf_counter() - started)
    result = {
        "snapshot_s": snap,
        "train_rows": manifest.stats.train_rows,
        "export_s": exp,
        "export_mb": exported / 2**20,
        "get_log_p50_ms": 1000 * statistics.median(reads),
    }
    print(label, {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, flush=True)
    return result


def look_up(db: Database, archive: Archive, logs: int) -> None:
    """The id look-up's cost on ingest (module docstring)."""
    rnd = random.Random(5)
    held = archive.index.size()
    print(f"look-up: {held} archived ids held, ~{held * 12 / 2**20:.1f} MiB")
    for label, make in (
        ("new", lambda: f"new-{rnd.getrandbits(64):x}"),
        ("archived", lambda: f"log-{rnd.randint(1, logs)}"),
    ):
        took = []
        for _ in range(15):
            ids = [make() for _ in range(500)]
            started = time.perf_counter()
            found = archive.archived("big", ids)
            took.append(time.perf_counter() - started)
        assert (label == "new") == (not found)
        print(f"look-up of 500 {label} ids: p50 {1000 * statistics.median(took):.2f} ms")
    writers = {
        name: GroupCommitWriter(db, Metrics(), max_batch_rows=500, max_queue_rows=10_000, archive=arch)
        for name, arch in (("with look-up", archive), ("without", None))
    }
    for w in writers.values():
        w.start()
    rates: dict[str, list[float]] = {name: [] for name in writers}
    n = 0
    try:
        for _ in range(5):
            for name, w in writers.items():
                rows = []
                for _ in range(4000):
                    n += 1
                    log = chat_log(f"fresh-{n}", [{"role": "user", "content": f"question {n}"}], "answer")
                    rows.append(Capture.log_row("big", log, f"fresh-{n}", NOW, "api"))
                started = time.perf_counter()
                for lo in range(0, len(rows), 500):
                    assert all(w.write_sync("logs", rows[lo : lo + 500]))
                rates[name].append(len(rows) / (time.perf_counter() - started))
    finally:
        for w in writers.values():
            w.stop()
    with_, without = (statistics.median(rates[k]) for k in writers)
    print(f"new logs through the writer, 500 a flush: {with_:,.0f}/s with the look-up, {without:,.0f}/s"
          f" without: {with_ / without:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rated", type=int, default=60_000, help="feedback rows to generate (~1.6 logs each)"
    )
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ratchet-archive-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    db_path = work / "ratchet.duckdb"
    started = time.perf_counter()
    logs, feedback = fill(db_path, args.rated)
    print(
        f"filled {logs} logs, {feedback} feedback rows in {time.perf_counter() - started:.1f} s", flush=True
    )
    db = Database(db_path)
    try:
        archive = Archive(db, str(work / "archive"))
        ids = [f"log-{random.Random(3).randint(1, logs)}" for _ in range(15)]
        print("hot:", sizes(db, db_path), flush=True)
        hot = measure(db, archive, work, ids, "hot")
        started = time.perf_counter()
        moved = sum(archive.move_day("big", day, NOW, NOW).rows for day in archive.days_before("big", NOW))
        took = time.perf_counter() - started
        lake = sum(p.stat().st_size for p in (work / "archive").rglob("*.parquet"))
        print(
            f"archived {moved} logs in {took:.1f} s ({moved / took:.0f} logs/s); archive {lake / 2**20:.0f} MiB"
        )
        print("after:", sizes(db, db_path), flush=True)
        cold = measure(db, archive, work, ids, "archived")
        for key in ("snapshot_s", "export_s", "get_log_p50_ms"):
            print(f"{key}: archived / hot = {cold[key] / hot[key]:.2f}x")
        look_up(db, archive, logs)
    finally:
        db.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
