"""Erasing one end user with 10,000 logs from a 1M-log project: how long, and what it does to ingest.

Builds, through the store (`service.store.db.Database`, no server running), a project of `--logs`
chat logs of ~1 KB (60% rated) in which `--targets` end users have 10,000 logs each, spread over the
whole history; cuts one training snapshot of the newest `--snapshot-logs` logs as a run would (so
each erasure also finds and deletes a snapshot that holds the person); then starts `ratchet serve`
on it (scheduler off: its signal check would add its own stalls) and, while single-log ingest runs
at a fixed rate, erases the targets one after another:

    baseline window (ingest only) -> erasure of one person (ingest goes on) -> next ...

Prints each erasure's seconds and rows, and ingest p99 during erasures as a ratio to ingest p99
in the baseline windows of the same run (requests sent in each window, and how many were sent: a
client paced to its share of the rate sends late, at once, when the server is slow).

    .venv/bin/python bench/erasure.py [--logs 1000000] [--targets 3] [--rate 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from service.auth import OWNER_SCOPES, mint_key  # noqa: E402
from service.config import SnapshotSettings  # noqa: E402
from service.domain import Project  # noqa: E402
from service.store.db import Database, register_log_key  # noqa: E402
from service.store.queries import Queries  # noqa: E402
from service.store.runs import RunRecord, Runs  # noqa: E402
from service.store.serving import Serving  # noqa: E402
from service.store.snapshot import export_snapshot  # noqa: E402
from tests.fixtures.server import RatchetProcess  # noqa: E402

PROJECT = "big"
T0 = datetime(2026, 1, 1)
SYSTEM = "You are the support assistant of a shop. Answer briefly and politely, in the user's language. " * 4
ANSWER = "Your order ships in two days; you will get a tracking link by e-mail once it leaves. " * 4
# Log i belongs to target k when i % 100 == TARGET_SLOTS[k]: 1% of the logs each, over all history.
TARGET_SLOTS = (7, 37, 67, 97)

LOGS_SQL = """
INSERT INTO logs (project, id, created_at, received_at, source, adapter, request, response, latency_ms,
                  prompt_tokens, completion_tokens, end_user, metadata)
SELECT $project, 'l-' || i, $t0 + to_seconds(i), $t0 + to_seconds(i), 'api', $project || '@v1',
       json_object('model', $project, 'messages', json_array(
           json_object('role', 'system', 'content', $system),
           json_object('role', 'user', 'content', 'Where is my order ' || i || '? ref ' || md5(i::VARCHAR)))),
       json_object('id', 'x', 'choices', json_array(json_object('index', 0, 'finish_reason', 'stop',
           'message', json_object('role', 'assistant', 'content', $answer || ' #' || i)))),
       120.0, 180, 90,
       CASE WHEN list_contains($slots, i % 100) THEN 'target-' || (i % 100) ELSE 'u' || (i % 997) END,
       NULL
FROM range($start, $stop) t(i)
"""
FEEDBACK_SQL = """
INSERT INTO feedback (project, log_id, end_user, id, created_at, received_at, rating, score, correction,
                      comment, metadata, log_key)
SELECT $project, 'l-' || i, CASE WHEN list_contains($slots, i % 100) THEN 'target-' || (i % 100) ELSE 'u' || (i % 997) END,
       'f-' || i, $t0 + to_seconds(i + 5), $t0 + to_seconds(i + 5), CASE WHEN i % 7 < 4 THEN 1 ELSE -1 END,
       NULL, CASE WHEN i % 20 = 0 THEN 'It ships tomorrow.' END, NULL, NULL, ratchet_log_key($project, 'l-' || i)
FROM range($start, $stop) t(i) WHERE i % 5 < 3
"""


def build(data_dir: Path, logs: int, targets: int, snapshot_logs: int) -> tuple[str, float, float]:
    """The data directory of a stopped server; returns the project key and seconds to load and snapshot."""
    started = time.monotonic()
    db = Database(data_dir / "ratchet.duckdb")
    secret, key = mint_key(PROJECT, T0, OWNER_SCOPES)
    Queries(db).create_project(Project(PROJECT, "", T0), key)
    slots = list(TARGET_SLOTS[:targets])
    params = {"project": PROJECT, "t0": T0, "system": SYSTEM, "answer": ANSWER, "slots": slots}
    for start in range(0, logs, 250_000):
        with db.transaction() as cur:
            window = {**params, "start": start, "stop": min(start + 250_000, logs)}
            cur.execute(LOGS_SQL, window)
            register_log_key(cur)
            cur.execute(FEEDBACK_SQL, {k: v for k, v in window.items() if k not in ("system", "answer")})
    with db.reading() as cur:
        cur.execute("CHECKPOINT")
    loaded = time.monotonic() - started
    started = time.monotonic()
    end = T0 + timedelta(seconds=logs + 10)
    run = RunRecord(
        id="run-bench", project=PROJECT, trigger="manual", state="failed", started_at=end, updated_at=end
    )
    export_snapshot(db, PROJECT, data_dir.resolve() / "runs" / run.id / "snapshot", SnapshotSettings(), now=end,
                    since=end - timedelta(seconds=snapshot_logs + 10))  # fmt: skip
    Runs(db, Serving(db)).create(run)
    db.close()
    return secret, loaded, time.monotonic() - started


class Probe:
    """`clients` threads posting one log each, paced to a total of `rate` requests/s (a client
    that falls behind sends at once); each request's latency from sending to the answer."""

    def __init__(self, url: str, key: str, rate: float, clients: int = 8) -> None:
        self.url, self.key, self.interval = url, key, clients / rate
        self.samples: list[tuple[float, float]] = []  # (sent, latency s)
        self.errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Probe:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self, n: int) -> None:
        due = time.monotonic() + n * self.interval / len(self._threads)
        with httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        ) as c:
            while not self._stop.is_set():
                time.sleep(max(0.0, due - time.monotonic()))
                body = {"id": f"probe-{uuid.uuid4().hex}", "end_user": f"probe-{n}",
                        "request": {"messages": [{"role": "user", "content": "Where is my order?"}]},
                        "response": {"choices": [{"message": {"role": "assistant", "content": ANSWER}}]}}  # fmt: skip
                sent = time.monotonic()
                status = c.post("/v1/logs", json=body).status_code
                self.samples.append((sent, time.monotonic() - sent))
                self.errors += status != 202
                due += self.interval

    def latencies(self, start: float, end: float) -> list[float]:
        return [lat for sent, lat in list(self.samples) if start <= sent < end]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logs", type=int, default=1_000_000)
    parser.add_argument("--targets", type=int, default=3, choices=range(1, len(TARGET_SLOTS) + 1))
    parser.add_argument("--snapshot-logs", type=int, default=50_000, help="newest logs in the run's snapshot")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="single-log ingest requests/s during the run"
    )
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        key, loaded_s, snapshot_s = build(data_dir, args.logs, args.targets, args.snapshot_logs)
        server = RatchetProcess(data_dir, env={"RATCHET_SCHEDULER_ENABLED": "false"}).start()
        rows = []
        windows: dict[str, list[tuple[float, float]]] = {"baseline": [], "during": []}
        try:
            owner = server.client(key, timeout=600)
            with Probe(server.url, key, args.rate) as probe:
                time.sleep(5)  # warm-up: connections, the first index touches
                for k in range(args.targets):
                    start = time.monotonic()
                    time.sleep(args.baseline_seconds)
                    windows["baseline"].append((start, time.monotonic()))
                    start = time.monotonic()
                    r = owner.delete(f"/v1/projects/{PROJECT}/end-users/target-{TARGET_SLOTS[k]}")
                    end = time.monotonic()
                    r.raise_for_status()
                    windows["during"].append((start, end))
                    rows.append((end - start, r.json()))
                time.sleep(2)  # requests due during the last erasure finish
            baseline = [lat for w in windows["baseline"] for lat in probe.latencies(*w)]
            during = [lat for w in windows["during"] for lat in probe.latencies(*w)]
            errors = probe.errors
            db_mb = sum(f.stat().st_size for f in data_dir.glob("ratchet.duckdb*")) / 1e6
        finally:
            server.stop()

    print(f"\nerasure bench: {args.logs:,} logs (~1 KB, 60% rated) in one project, {args.targets} end users of "
          f"10,000 logs each; load {loaded_s:.0f} s, snapshot of the newest {args.snapshot_logs:,} logs "
          f"{snapshot_s:.0f} s; database {db_mb:.0f} MB; {os.cpu_count()} cores, load average "
          f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after")  # fmt: skip
    print(f"{'erasure':<10}{'seconds':>9}{'logs':>8}{'feedback':>10}{'snapshots':>11}")
    for i, (seconds, out) in enumerate(rows):
        print(f"{i + 1:<10}{seconds:>9.2f}{out['logs_deleted']:>8}{out['feedback_deleted']:>10}"
              f"{len(out['snapshots_deleted']):>11}")  # fmt: skip
    print(f"single-log ingest paced to {args.rate:.0f} req/s; latency sent -> answered (ms):")
    for name, values, spans in (
        ("baseline", baseline, windows["baseline"]),
        ("during erasures", during, windows["during"]),
    ):
        rate = len(values) / sum(end - start for start, end in spans)
        print(f"  {name:<17} {rate:6.0f} req/s  n={len(values):<6} p50 {1000 * statistics.median(values):7.1f}  "
              f"p99 {1000 * p99(values):7.1f}  max {1000 * max(values):7.1f}")  # fmt: skip
    print(f"  p99 ratio (during / baseline): {p99(during) / p99(baseline):.2f}; non-202 answers: {errors}")


if __name__ == "__main__":
    main()
