"""Snapshot and export cost: time per 10k rows and peak memory, with and without PII scrubbing.

Fills a fresh DuckDB file through the service's own writer with realistic chat logs (one of 12
system prompts of ~1.2 KB on every request, 1-3 user turns of varied text with a name and a
number, ~3% carrying an e-mail or phone number, 40 end users, ~60% rated, ~5% corrected), then
runs, each in its own process so that peak RSS is its own: the snapshot without scrubbing, the
snapshot with scrubbing, and a streamed JSONL export. Prints the time per 10k rows and the
process's peak RSS (VmHWM) beside its RSS before the operation (imports, an open database).

    .venv/bin/python bench/snapshot.py [--rated 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORD_POOL = (
    "order account refund shipping delivery invoice password login subscription plan upgrade cancel "
    "address payment card discount coupon warranty return exchange size colour stock tracking parcel "
    "weekend tomorrow morning evening quickly please thanks hello help issue problem question answer"
)
WORDS = WORD_POOL.split()
NAMES = ["Alice", "Bob", "Chen", "Dana", "Eve", "Farid", "Grace", "Hiro", "Ines", "Jon"]
SYSTEM = [
    f"You are the support assistant of shop {i}. " + " ".join(random.Random(i).choices(WORDS, k=180))
    for i in range(12)
]


def sentence(rnd: random.Random) -> str:
    text = " ".join(rnd.choices(WORDS, k=rnd.randint(8, 30)))
    text = f"{rnd.choice(NAMES)} here, {text} {rnd.randint(1, 999)}"
    roll = rnd.random()
    if roll < 0.015:
        text += f" mail me at {rnd.choice(NAMES).lower()}{rnd.randint(1, 99)}@example.com"
    elif roll < 0.03:
        text += f" call +1 415-555-{rnd.randint(0, 9999):04d}"
    return text


def fill(db_path: Path, rated: int, seed: int = 7) -> tuple[int, int]:
    from service.capture import Capture
    from service.metrics import Metrics
    from service.store.db import Database
    from service.store.writer import GroupCommitWriter
    from tests.fixtures.rows import chat_log, feedback_row

    rnd = random.Random(seed)
    db = Database(db_path)
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=2000, max_queue_rows=200_000)
    writer.start()
    t0 = datetime(2026, 1, 1)
    logs = feedback = n = 0
    while feedback < rated:
        log_rows, fb_rows = [], []
        for _ in range(2000):
            n += 1
            at = t0 + timedelta(seconds=n)
            user = f"u{rnd.randrange(40)}"
            messages = [{"role": "system", "content": rnd.choice(SYSTEM)}]
            for _turn in range(rnd.randint(1, 3)):
                messages.append({"role": "user", "content": sentence(rnd)})
                messages.append({"role": "assistant", "content": sentence(rnd)})
            answer = messages.pop()["content"]
            log = chat_log(f"log-{n}", messages, answer, created_at=at, end_user=user)
            log_rows.append(Capture.log_row("big", log, f"log-{n}", at, "api"))
            if rnd.random() < 0.6:
                correction = sentence(rnd) if rnd.random() < 0.08 else None
                fb_rows.append(feedback_row("big", f"log-{n}", at, end_user=user, fid=f"f{n}",
                                            rating=1 if rnd.random() < 0.62 else -1, correction=correction))  # fmt: skip
        writer.write_sync("logs", log_rows)
        writer.write_sync("feedback", fb_rows)
        logs += len(log_rows)
        feedback += len(fb_rows)
    writer.stop()
    db.close()
    return logs, feedback


def _rss_mb(field: str) -> int:
    """VmRSS or VmHWM (peak) of this process in MB. Not ru_maxrss: Linux carries that over exec,
    so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(db_path: Path, what: str) -> dict[str, object]:
    """Run one operation in this (fresh) process; return its time and memory."""
    from service.config import SnapshotSettings
    from service.pii import scrubber_for
    from service.store.db import Database
    from service.store.export import export_logs
    from service.store.snapshot import export_snapshot

    db = Database(db_path)
    settings = SnapshotSettings(scrub_pii=what == "snapshot+scrub")
    if settings.scrub_pii:
        scrubber_for(settings)  # Presidio's import and set-up, outside the timing
    before = _rss_mb("VmRSS")
    out = db_path.parent / "out"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    if what == "export":
        rows = export_logs(db, "big", db_path.parent / "export.jsonl", "jsonl")
        extra: dict[str, object] = {}
    else:
        manifest = export_snapshot(db, "big", out, settings, now=datetime(2030, 1, 1))
        rows = manifest.stats.train_rows + manifest.stats.holdout_rows
        extra = {"joined": manifest.stats.joined_rows, "pii_rows": manifest.stats.pii_scrubbed_rows}
        if settings.scrub_pii:
            extra["scrubber"] = scrubber_for(settings).stats
    seconds = time.perf_counter() - started
    peak = _rss_mb("VmHWM")
    db.close()
    return {"what": what, "rows": rows, "seconds": round(seconds, 2), "rss_before_mb": before,
            "rss_peak_mb": peak, **extra}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rated", type=int, default=100_000, help="feedback rows to generate")
    parser.add_argument("--keep", type=Path, help="reuse/keep the database in this directory")
    parser.add_argument("--measure", choices=("snapshot", "snapshot+scrub", "export"), help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.db, args.measure)))
        return
    directory = args.keep or Path(tempfile.mkdtemp(prefix="ratchet-bench-snapshot-"))
    directory.mkdir(parents=True, exist_ok=True)
    db_path = directory / "bench.duckdb"
    try:
        if not db_path.exists():
            started = time.perf_counter()
            logs, rated = fill(db_path, args.rated)
            print(f"filled {logs} logs, {rated} rated, in {time.perf_counter() - started:.0f} s; "
                  f"file {db_path.stat().st_size >> 20} MiB")  # fmt: skip
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        for what in ("snapshot", "snapshot+scrub", "export"):
            out = subprocess.run(
                [sys.executable, __file__, "--measure", what, "--db", str(db_path)],
                capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            per_10k = result["seconds"] / max(1, int(result["rows"])) * 10_000  # type: ignore[call-overload]
            print(f"{what:15s} {result['rows']:>8} rows {result['seconds']:>7.1f} s  {per_10k:5.2f} s/10k rows  "
                  f"RSS {result['rss_before_mb']} -> {result['rss_peak_mb']} MB  "
                  + " ".join(f"{k}={v}" for k, v in result.items() if k in ("joined", "pii_rows", "scrubber")))  # fmt: skip
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
