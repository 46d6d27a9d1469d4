"""What the feedback table's indexes cost at every checkpoint, by kind of index (issue 14).

The writer checkpoints between flushes once the WAL passes `writer.checkpoint_wal_mib`; while it
does, no flush commits, so the pause is what single-log POSTs wait on. DuckDB writes an ART index
whole at a checkpoint that follows a change to its table, so an index on random keys costs time in
proportion to the table, not to what changed. This builds a feedback table of `--rows` rows with
the columns migrations 001 and 008 give it (random `chatcmpl-` log ids, 40 end users, the shape
`bench/scale.py` loads), once per kind of index, then per round inserts `--new` fresh rows in
500-row commits (ingest) and updates `--updated` old ones (thumbs changed), and times CHECKPOINT:

- `pk+log_id`: today's table, PRIMARY KEY (project, log_id, end_user) and `feedback_log_id`
  (migration 010): the baseline;
- `pk`: the primary key alone;
- `seq-art`: no key on the text columns; a unique index on a monotonic BIGINT (a surrogate key
  given in insert order);
- `none`: no index (zone maps only).

It prints, per kind, the median checkpoint pause, the file size, and the pause as a ratio of the
baseline's, measured in the same run. A fresh scratch directory per kind; nothing else is read.

    .venv/bin/python bench/feedback_checkpoint.py --rows 2900000 [--rounds 3] [--dir /tmp/fb-ckpt]

Measured 2026-12-01 on the 2-core machine, shared with other jobs (load 5-25), `--rows 2900000`
(the feedback rows of the 4.8M-log `bench/scale.py` data dir), 3 rounds, 0.95 GB peak RSS:

    kind        build      checkpoint median / max   file      pause vs pk+log_id
    pk+log_id   120.4 s    1.86 s / 4.63 s           1119 MiB  1.00x
    pk           71.0 s    0.63 s / 1.02 s            610 MiB  0.34x
    seq-art       9.0 s    0.30 s / 1.52 s            192 MiB  0.16x
    none         10.3 s    0.24 s / 1.55 s            169 MiB  0.13x

The same on a copy of that data dir's own 2.9M feedback rows (a scratch script, the first round
after a start: the ART is loaded and rewritten whole): pk+log_id 6.27 s, none 0.05 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import duckdb

KINDS = {
    "pk+log_id": (
        "ALTER TABLE feedback ADD PRIMARY KEY (project, log_id, end_user)",
        "CREATE INDEX feedback_log_id ON feedback (log_id)",
    ),
    "pk": ("ALTER TABLE feedback ADD PRIMARY KEY (project, log_id, end_user)",),
    "seq-art": ("CREATE UNIQUE INDEX feedback_seq ON feedback (seq)",),
    "none": (),
}

# The feedback columns after migration 008, and a monotonic `seq` (unused by the other kinds).
_COLUMNS = """
    project VARCHAR NOT NULL, log_id VARCHAR NOT NULL, end_user VARCHAR NOT NULL, id VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL, received_at TIMESTAMP NOT NULL, rating TINYINT, score DOUBLE,
    correction VARCHAR, comment VARCHAR, metadata JSON, fields VARCHAR[], item_ids VARCHAR[],
    rating_at TIMESTAMP, correction_at TIMESTAMP, choice INTEGER, seq BIGINT NOT NULL
"""


def _rows(first: int, n: int) -> str:
    """SQL for `n` feedback rows on fresh random log ids, `seq` from `first`: ~60% thumbs up,
    5% corrections, a comment now and then, as `bench/scale.py` rates its logs."""
    return f"""
    SELECT 'big', 'chatcmpl-' || uuid()::VARCHAR, 'user-' || (i % 40), 'fb-' || uuid()::VARCHAR,
        TIMESTAMP '2026-11-01' + INTERVAL (i) SECOND, TIMESTAMP '2026-11-01' + INTERVAL (i) SECOND,
        CASE WHEN random() < 0.62 THEN 1 ELSE -1 END, NULL,
        CASE WHEN random() < 0.05 THEN 'A corrected answer, about as long as the ones people write.' END,
        CASE WHEN random() < 0.1 THEN 'too long' END, NULL, ['rating'], ['fb-' || i],
        TIMESTAMP '2026-11-01' + INTERVAL (i) SECOND, NULL, NULL, {first} + i
    FROM range({n}) t(i)"""


def measure(kind: str, path: Path, rows: int, rounds: int, new: int, updated: int) -> dict[str, float]:
    """Build the table with `kind`'s indexes, then time `rounds` checkpoints; seconds and sizes."""
    con = duckdb.connect(str(path), config={"memory_limit": "2GB"})
    con.execute(f"CREATE TABLE feedback ({_COLUMNS})")
    started = time.perf_counter()
    for sql in KINDS[kind][:1]:  # a primary key must exist before the rows (ALTER cannot add one after)
        con.execute(sql)
    con.execute(f"INSERT INTO feedback {_rows(0, rows)}")
    for sql in KINDS[kind][1:]:
        con.execute(sql)
    con.execute("CHECKPOINT")
    built = time.perf_counter() - started
    pauses, seq = [], rows
    for _ in range(rounds):
        for _ in range(new // 500):  # ingest: 500-row commits of new feedback
            con.execute(f"INSERT INTO feedback {_rows(seq, 500)}")
            seq += 500
        con.execute(  # changed thumbs on older rows
            "UPDATE feedback SET rating = -rating WHERE seq IN (SELECT (random() * $n)::BIGINT FROM range($k))",
            {"n": rows, "k": updated},
        )
        started = time.perf_counter()
        con.execute("CHECKPOINT")
        pauses.append(time.perf_counter() - started)
    con.close()
    return {
        "built": built,
        "pause": statistics.median(pauses),
        "max": max(pauses),
        "mib": path.stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="feedback rows before the rounds")
    parser.add_argument("--rounds", type=int, default=3, help="checkpoints timed per kind")
    parser.add_argument("--new", type=int, default=20_000, help="new rows per round (500 per commit)")
    parser.add_argument("--updated", type=int, default=2_000, help="old rows updated per round")
    parser.add_argument(
        "--dir", type=Path, default=Path("/tmp/ratchet-feedback-checkpoint"), help="scratch (wiped)"
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    args = parser.parse_args()
    results = {}
    for kind in args.kinds:
        shutil.rmtree(args.dir, ignore_errors=True)
        args.dir.mkdir(parents=True)
        results[kind] = measure(
            kind, args.dir / "feedback.duckdb", args.rows, args.rounds, args.new, args.updated
        )
        r = results[kind]
        print(
            f"{kind:10} build {r['built']:6.1f} s | checkpoint median {r['pause']:6.2f} s, max {r['max']:6.2f} s"
            f" | file {r['mib']:7.0f} MiB",
            flush=True,
        )
    shutil.rmtree(args.dir, ignore_errors=True)
    base = results.get("pk+log_id")
    if base:
        print(
            f"\ncheckpoint pause / pk+log_id's ({args.rows:,} rows, +{args.new:,} new and {args.updated:,} updated)"
        )
        for kind, r in results.items():
            print(f"  {kind:10} {r['pause'] / base['pause']:.2f}x   file {r['mib'] / base['mib']:.2f}x")


if __name__ == "__main__":
    main()
