"""Feedback keyed by a 64-bit hash of its log (migration 016) against the primary key it replaced.

Builds two feedback tables of `--rows` rows with the same data, the shape `bench/feedback_checkpoint.py`
gives them (random `chatcmpl-` log ids, 40 end users, ~60% thumbs up, 5% corrections): `before`,
the schema of migrations 001-015 (PRIMARY KEY (project, log_id, end_user) and `feedback_log_id`)
written by the writer as of `main` (`git show main:service/store/writer.py`, loaded as a module:
`INSERT ... ON CONFLICT DO UPDATE`), and `after`, this tree's schema and writer (one index on
`log_key`; merge in Python, DELETE + INSERT). Then, in alternating rounds, the same 500-item flushes
on both (80% items on new logs, 20% changed thumbs on stored rows) through `write_sync`, a
CHECKPOINT after each round, and point reads of a log's feedback (`FEEDBACK_BY_LOG_ID`, as of main
and now). Prints medians and after/before ratios. Timings on a shared machine are noisy: read
the ratios, measured side by side in one run.

    .venv/bin/python bench/feedback_key.py --rows 1000000 [--rounds 3] [--flushes 20] [--dir /tmp/fb-key]

Measured 2026-12-02 on the 2-core machine, shared with two test runs (load ~4: absolute times are
inflated, the ratios are side by side), `--rows 1000000`, 3 rounds of 20 flushes; both writers
answered every item alike and stored identical rows:

                                   before      after   after/before
        build (fill+checkpoint)     24.5 s     18.3 s    0.75x
        flush median              722.2 ms    74.4 ms   0.10x
        flush p90                1272.0 ms   108.8 ms   0.09x
        checkpoint median         520.1 ms   255.6 ms   0.49x
        point read median           4.4 ms     3.4 ms   0.77x
        file                      351.8 MiB  147.0 MiB  0.42x
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

import duckdb
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.metrics import Metrics  # noqa: E402
from service.store import db as store_db  # noqa: E402
from service.store.archive_index import log_keys  # noqa: E402
from service.store.db import Database  # noqa: E402
from service.store.queries import FEEDBACK_BY_LOG_ID  # noqa: E402
from service.store.rows import FEEDBACK_SCHEMA, FeedbackRow  # noqa: E402
from service.store.writer import GroupCommitWriter  # noqa: E402

# `FEEDBACK_BY_LOG_ID` as of main (migration 010's index on log_id).
OLD_FEEDBACK_BY_LOG_ID = """
WITH hit AS MATERIALIZED (
    SELECT id, log_id, end_user, created_at, rating, score, correction, comment, choice, regenerated,
        regenerated_log_id, edited, copied, events, received_at, project
    FROM feedback WHERE log_id = $1
)
SELECT id, log_id, end_user, created_at, rating, score, correction, comment, choice, regenerated,
    regenerated_log_id, edited, copied, events, received_at FROM hit
WHERE project = $2 ORDER BY received_at, end_user
"""

_ROWS = """
SELECT 'big' AS project, 'chatcmpl-' || md5('log' || i) AS log_id, 'user-' || (i % 40) AS end_user,
    'fb-' || md5('fb' || i) AS id, TIMESTAMP '2026-11-01' + INTERVAL (i) SECOND AS created_at,
    TIMESTAMP '2026-11-01' + INTERVAL (i) SECOND AS received_at,
    (CASE WHEN hash(i, 1) % 100 < 62 THEN 1 ELSE -1 END)::TINYINT AS rating, NULL::DOUBLE AS score,
    CASE WHEN hash(i, 2) % 100 < 5 THEN 'A corrected answer, about as long as the ones people write.' END
        AS correction,
    CASE WHEN hash(i, 3) % 100 < 10 THEN 'too long' END AS comment, NULL::JSON AS metadata, 0::SMALLINT AS choice,
    ['rating'] AS fields, ['fb-' || md5('fb' || i)] AS item_ids, TIMESTAMP '2026-11-01' + INTERVAL (i) SECOND AS rating_at,
    NULL::TIMESTAMP AS correction_at, NULL::BOOLEAN AS regenerated, NULL::VARCHAR AS regenerated_log_id,
    NULL::VARCHAR AS edited, NULL::BOOLEAN AS copied, NULL::VARCHAR[] AS events, false AS attributed
FROM range({n}) t(i)
"""


def main_writer() -> ModuleType:
    """`service/store/writer.py` as of `main`, as a module of its own."""
    source = subprocess.run(
        ["git", "show", "main:service/store/writer.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    spec = importlib.util.spec_from_loader("main_writer", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, "main:service/store/writer.py", "exec"), module.__dict__)
    return module


def open_db(path: Path, before: bool) -> Database:
    """The file with main's migrations (001-015) or this tree's; no checkpoint inside a round."""
    shipped = store_db.migrations
    if before:
        store_db.migrations = lambda: [m for m in shipped() if m[0] < 16]
    try:
        return Database(path, checkpoint_wal_mib=100_000)
    finally:
        store_db.migrations = shipped


def build(scratch: Path, rows: int) -> dict[str, float]:
    """Both files with the same `rows` feedback rows; seconds each took to fill and checkpoint."""
    data = scratch / "rows.parquet"
    duckdb.sql(f"COPY ({_ROWS.format(n=rows)}) TO '{data}' (FORMAT parquet)")
    took = {}
    for side in ("before", "after"):
        started = time.perf_counter()
        db = open_db(scratch / f"{side}.duckdb", side == "before")
        with db.transaction() as cur:
            if side == "before":
                cur.execute(
                    f"INSERT INTO feedback ({', '.join(FEEDBACK_SCHEMA.names)}) SELECT * FROM '{data}'"
                )
            else:
                table = duckdb.sql(f"SELECT * FROM '{data}'").arrow()
                if isinstance(table, pa.RecordBatchReader):
                    table = table.read_all()
                keys = log_keys(zip(table["project"].to_pylist(), table["log_id"].to_pylist(), strict=True))
                keyed = table.append_column("log_key", pa.array(keys, type=pa.uint64()))  # noqa: F841
                cur.execute(
                    f"INSERT INTO feedback ({', '.join(FEEDBACK_SCHEMA.names)}, log_key) SELECT * FROM keyed"
                )
        with db.reading() as cur:
            cur.execute("CHECKPOINT")
        db.close()
        took[side] = time.perf_counter() - started
        print(f"built {side}: {took[side]:.1f} s", flush=True)
    return took


def workload(scratch: Path, flushes: int, rng: random.Random) -> list[list[FeedbackRow]]:
    """`flushes` batches of 500 patches: 400 on new logs, 100 changing a stored row's thumb."""
    stored = duckdb.sql(
        f"SELECT log_id, end_user, rating FROM '{scratch / 'rows.parquet'}' USING SAMPLE {flushes * 100} ROWS"
    ).fetchall()
    rng.shuffle(stored)
    at = datetime(2026, 12, 1)
    batches = []
    for b in range(flushes):
        items = []
        for i in range(500):
            fid = f"fb-{uuid.UUID(int=rng.getrandbits(128)).hex}"
            t = at + timedelta(milliseconds=b * 500 + i)
            if i % 5 == 4:
                log_id, end_user, rating = stored.pop()
                rating = -rating
            else:
                log_id, end_user = f"chatcmpl-{uuid.UUID(int=rng.getrandbits(128)).hex}", f"user-{i % 40}"
                rating = 1 if rng.random() < 0.62 else -1
            values = (rating, None, None, None, None, 0, ["rating"], [fid], t)
            items.append(FeedbackRow("big", log_id, end_user, fid, t, t, *values))
        rng.shuffle(items)
        batches.append(items)
    return batches


def point_reads(db: Database, sql: str, ids: list[str], keyed: bool) -> float:
    """Median seconds of one log's feedback read by `sql`."""
    took = []
    with db.reading() as cur:
        for log_id in ids:
            params = [log_id, "big", *log_keys([("big", log_id)])] if keyed else [log_id, "big"]
            started = time.perf_counter()
            cur.execute(sql, params).fetchall()
            took.append(time.perf_counter() - started)
    return statistics.median(took)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="feedback rows before the rounds")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of flushes, a checkpoint after each")
    parser.add_argument("--flushes", type=int, default=20, help="500-item flushes per round")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ratchet-feedback-key"), help="scratch (wiped)")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    rng = random.Random(42)
    built = build(args.dir, args.rows)
    writers = {"before": main_writer().GroupCommitWriter, "after": GroupCommitWriter}
    batches = workload(args.dir, args.rounds * args.flushes, rng)
    dbs = {side: open_db(args.dir / f"{side}.duckdb", side == "before") for side in writers}
    flush: dict[str, list[float]] = {side: [] for side in writers}
    pause: dict[str, list[float]] = {side: [] for side in writers}
    changed: dict[str, list[list[bool]]] = {side: [] for side in writers}
    for r in range(args.rounds):
        for side, cls in writers.items():
            writer = cls(dbs[side], Metrics(), max_batch_rows=1000, max_queue_rows=100_000)
            writer.start()
            for items in batches[r * args.flushes : (r + 1) * args.flushes]:
                started = time.perf_counter()
                changed[side].append(writer.write_sync("feedback", items))
                flush[side].append(time.perf_counter() - started)
            writer.stop()
            with dbs[side].reading() as cur:
                started = time.perf_counter()
                cur.execute("CHECKPOINT")
                pause[side].append(time.perf_counter() - started)
        print(f"round {r + 1}: flush median " + ", ".join(
            f"{s} {statistics.median(flush[s][-args.flushes:]) * 1e3:.1f} ms" for s in writers), flush=True)  # fmt: skip
    assert changed["before"] == changed["after"], "the writers disagree on which items changed a row"
    ids = [row[0] for row in duckdb.sql(f"SELECT log_id FROM '{args.dir / 'rows.parquet'}' USING SAMPLE 200 ROWS").fetchall()]  # fmt: skip
    reads = {
        "before": point_reads(dbs["before"], OLD_FEEDBACK_BY_LOG_ID, ids, keyed=False),
        "after": point_reads(dbs["after"], FEEDBACK_BY_LOG_ID, ids, keyed=True),
    }
    everything = f"SELECT {', '.join(FEEDBACK_SCHEMA.names)} FROM feedback ORDER BY project, log_id, end_user"
    with dbs["before"].reading() as a, dbs["after"].reading() as b:
        same = a.sql(everything).to_arrow_table().equals(b.sql(everything).to_arrow_table())
    sizes = {side: (args.dir / f"{side}.duckdb").stat().st_size / 2**20 for side in writers}
    for db in dbs.values():
        db.close()
    print(f"\n{args.rows:,} rows, {args.rounds} x {args.flushes} flushes of 500 (400 new, 100 changed);"
          f" stored rows identical: {same}")  # fmt: skip
    print(f"    {'':22} {'before':>10} {'after':>10}   after/before")
    table = [
        ("build (fill+checkpoint)", built["before"], built["after"], "s"),
        ("flush median", statistics.median(flush["before"]), statistics.median(flush["after"]), "ms"),
        ("flush p90", _p90(flush["before"]), _p90(flush["after"]), "ms"),
        ("checkpoint median", statistics.median(pause["before"]), statistics.median(pause["after"]), "ms"),
        ("point read median", reads["before"], reads["after"], "ms"),
        ("file", sizes["before"], sizes["after"], "MiB"),
    ]
    for name, old, new, unit in table:
        scale = 1e3 if unit == "ms" else 1
        print(f"    {name:22} {old * scale:8.1f} {unit:3}{new * scale:7.1f} {unit:3} {new / old:5.2f}x")
    shutil.rmtree(args.dir, ignore_errors=True)


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


if __name__ == "__main__":
    main()
