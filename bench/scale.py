"""Ratchet as the data grows: ingest, stalls, point reads, checkpoints and stop time per size.

For each size on the command line it fills one data directory up to that many logs, then
measures a real `ratchet serve` on it:

1. the older logs are written in-process through the same capture path and group-commit writer
   the server uses (fast, and right whatever columns capture fills); the newest `--http` logs of
   each size and their feedback come through the real batch API, 6 concurrent 500-log requests.
   With `--archived N`, the oldest N logs of the last size go straight into the archive instead
   (the lake tier, `service/store/archive.py`): Parquet files of `archive.file_rows` logs, one per
   past day, listed in the manifest with their id hashes as the archive job lists its own, their
   feedback through capture and the writer (feedback stays in the DuckDB file). Their texts come
   from a pool of `--pool` realistic logs (new ids and times each), since generating 9M distinct
   ones in Python would take hours here; the server runs with the archive on (`after_days` 30);
2. single-log POSTs at a fixed rate (8 clients, `--rate` req/s in all) while, one after the other,
   nothing, `GET /stats`, a Parquet export, the scheduler's signal check (every 5 s) and a run's
   snapshot stage run; the POST latency counts the requests sent while the operation ran;
3. `GET /v1/logs/{id}` for random ids, the server's own loop-lag probe, the writer's checkpoint
   pauses, the WAL's largest size, SIGTERM to exit, file sizes.

Logs are realistic chat: one of 12 system prompts, 1-3 user turns (earlier assistant turns
included), text drawn from 4,000 generated sentences plus names and numbers (~1.6 KB of JSON),
40 end users, ~60% rated (62% up), ~5% corrected. Client and server share the machine: compare
figures from the same run; after the table of figures comes one of ratios against baselines from
this run (the first size, or idle at the same size). Snapshot and export RSS are the server's peak
VmRSS during them.

    .venv/bin/python bench/scale.py 100000 1000000 [--http 100000] [--data /tmp/ratchet-scale]
                                   [--max-train-examples 20000] [--archived 9000000]
                                   [--memory-limit-mib 2048]

Goals at 10M logs (issue 14): loop stall <= 50 ms; single-log POST p99 <= 50 ms during every
background operation; snapshot RSS <= 2 GB; export RSS <= 1 GB; point read <= 10 ms; stop <=
10 s; ingest logs/s within 15% of the 0.1M figure.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import math
import os
import random
import re
import shutil
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import httpx
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.fixtures.server import RatchetProcess  # noqa: E402

PROJECT = "big"
USERS = 40
T0 = datetime(2026, 1, 1)
_VOCABULARY = (
    "the of and to in is for that with on as by at from this be are was it or an not which have has but they "
    "their can more all one about when into so what will who up out some would there time than other also new "
    "like only these first two over most how may very after between many where year before through back much "
    "well under any even such then them each make used could because people work three way long still same "
    "while those good should never own order account refund shipping invoice password error update install "
    "device battery screen network payment delivery address policy warranty subscription plan upgrade cancel"
)
WORDS = _VOCABULARY.split()
NAMES = [
    "Ana",
    "Bo",
    "Chen",
    "Dara",
    "Eli",
    "Farah",
    "Gus",
    "Hana",
    "Ivo",
    "Jun",
    "Kai",
    "Lena",
    "Mo",
    "Noor",
]


class Texts:
    """A seeded pool of sentences and the builders of one realistic log and its feedback."""

    def __init__(self, seed: int) -> None:
        rnd = random.Random(seed)
        self.sentences = [
            " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 16))).capitalize() + "."
            for _ in range(4000)
        ]
        self.systems = [
            f"You are the assistant of shop number {i}. Be concise, friendly and exact; answer in plain text "
            f"and never invent order numbers. Escalate refunds above {100 * (i + 1)} euros to a human."
            for i in range(12)
        ]

    def _say(self, rnd: random.Random, lo: int, hi: int) -> str:
        parts = [rnd.choice(self.sentences) for _ in range(rnd.randint(lo, hi))]
        parts.insert(rnd.randrange(len(parts) + 1), f"{rnd.choice(NAMES)} {rnd.randint(1000, 99999)}.")
        return " ".join(parts)

    def log(self, i: int) -> dict[str, Any]:
        rnd = random.Random(i)
        messages = [{"role": "system", "content": self.systems[i % 12]}]
        for turn in range(rnd.randint(1, 3)):
            if turn:
                messages.append({"role": "assistant", "content": self._say(rnd, 2, 4)})
            messages.append({"role": "user", "content": self._say(rnd, 1, 3)})
        answer = self._say(rnd, 3, 7)
        prompt_tokens, completion_tokens = sum(len(m["content"]) for m in messages) // 4, len(answer) // 4
        return {
            "id": f"chatcmpl-{uuid.UUID(int=rnd.getrandbits(128)).hex}",
            "created_at": (T0 + timedelta(milliseconds=50 * i)).isoformat() + "Z",
            "end_user": f"user{rnd.randrange(USERS)}",
            "request": {"model": PROJECT, "messages": messages, "temperature": 0.7},
            "response": {
                "id": "chatcmpl-x", "object": "chat.completion", "model": PROJECT,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            },
            "latency_ms": 200 + rnd.random() * 800, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        }  # fmt: skip

    def feedback(self, log: dict[str, Any], i: int) -> dict[str, Any] | None:
        rnd = random.Random(-i - 1)
        if rnd.random() >= 0.6:
            return None
        item: dict[str, Any] = {
            "log_id": log["id"],
            "end_user": log["end_user"],
            "rating": 1 if rnd.random() < 0.62 else -1,
        }
        if rnd.random() < 0.083:  # 5% of all logs
            item["correction"] = self._say(rnd, 2, 5)
        return item


# --- loading


def bulk_load(data: Path, texts: Texts, start: int, stop: int) -> str:
    """Logs [start, stop) and their feedback straight through capture and the writer, in-process.
    Returns the project's API key (made on first use, kept in `data/bench-key`)."""
    from service.app import build_runtime
    from service.config import Settings
    from service.domain import FeedbackIn, LogIn, ProjectIn
    from service.projects import create_project

    runtime = build_runtime(Settings(data_dir=str(data), scheduler_enabled=False))
    key_file = data / "bench-key"
    if not key_file.exists():
        key_file.write_text(create_project(runtime, ProjectIn(name=PROJECT)).api_key)
    runtime.writer.start()
    log_in, fb_in = msgspec.json.Decoder(LogIn), msgspec.json.Decoder(FeedbackIn)

    async def batch(lo: int, hi: int) -> None:
        logs = [texts.log(i) for i in range(lo, hi)]
        items = [log_in.decode(msgspec.json.encode(g)) for g in logs]
        await runtime.capture.write_logs(PROJECT, items)
        fb = [f for i, g in zip(range(lo, hi), logs, strict=True) if (f := texts.feedback(g, i))]
        if fb:
            await runtime.capture.write_feedback(PROJECT, [fb_in.decode(msgspec.json.encode(f)) for f in fb])

    async def run() -> None:
        step, started = 1000, time.perf_counter()
        for lo in range(start, stop, 4 * step):
            await asyncio.gather(
                *(batch(a, min(a + step, stop)) for a in range(lo, min(lo + 4 * step, stop), step))
            )
            if (lo - start) % 200_000 == 0 and lo > start:
                print(
                    f"  bulk {lo:,} logs, {(lo - start) / (time.perf_counter() - started):,.0f}/s", flush=True
                )

    try:
        asyncio.run(run())
    finally:
        runtime.writer.stop()
        runtime.db.close()
    return key_file.read_text()


def archived_id(i: int) -> str:
    """The id of log `i` when it was generated straight into the archive."""
    return f"chatcmpl-{hashlib.md5(str(i).encode()).hexdigest()}"


_POOL: dict[str, Any] = {}


def _archive_file(args: tuple[int, int, int, int, str, int, str]) -> tuple[str, int, bytes, bytes]:
    """One worker: logs [lo, hi) as one archive file `rel` under `root` (the archive job's columns,
    sorted by id, row groups of its size), received on `day`. Returns (rel, rows, id hashes, the
    feedback rows as Arrow IPC)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from service.capture import Capture, feedback_patch
    from service.domain import FeedbackIn, LogIn
    from service.store import archive as lake
    from service.store.archive_index import id_hashes
    from service.store.rows import FEEDBACK_SCHEMA, LOG_SCHEMA
    from service.store.writer import _to_arrow

    seed, lo, hi, pool_size, root, first_key, day = args
    if not _POOL:  # realistic logs and their feedback as the writer's rows, once per worker
        texts, log_in, fb_in = Texts(seed), msgspec.json.Decoder(LogIn), msgspec.json.Decoder(FeedbackIn)
        logs, feedback = [], []
        for j in range(pool_size):
            g = texts.log(j)
            logs.append(Capture.log_row(PROJECT, log_in.decode(msgspec.json.encode(g)), g["id"], T0, "api"))
            if (fb := texts.feedback(g, j)) is not None:
                item = fb_in.decode(msgspec.json.encode(fb))
                feedback.append((j, feedback_patch(PROJECT, item, "x", T0, attributed=False)))
        _POOL["logs"] = _to_arrow(logs, LOG_SCHEMA)
        _POOL["feedback"] = feedback
    n = hi - lo
    start = datetime.fromisoformat(day)
    ids = [archived_id(i) for i in range(lo, hi)]
    at = np.datetime64(start, "us") + (np.arange(n) * (86_400_000_000 // max(n, 1))).astype("timedelta64[us]")
    table = _POOL["logs"].take(pa.array([i % pool_size for i in range(lo, hi)]))
    table = table.set_column(1, "id", pa.array(ids))
    table = table.set_column(
        2, "created_at", pa.array(at - np.timedelta64(1, "s")).cast(LOG_SCHEMA.field("created_at").type)
    )
    table = table.set_column(3, "received_at", pa.array(at).cast(LOG_SCHEMA.field("received_at").type))
    table = table.sort_by("id")
    columns = [
        pa.chunked_array([c.storage for c in table[c].chunks]) if c in lake._JSON else table[c]
        for c in lake._FILE_COLUMNS
    ]
    keys = pa.array(np.arange(first_key, first_key + n, dtype=np.int64))
    out = pa.Table.from_arrays([keys, *columns], names=[lake.KEY, *lake._FILE_COLUMNS])
    rel = f"project={PROJECT}/day={start.date().isoformat()}/{-first_key >> 32:012d}-{os.urandom(4).hex()}.parquet"
    Path(root, rel).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(out, f"{root}/{rel}", row_group_size=lake._ROW_GROUP, compression="zstd")
    rows = []
    base = lo - lo % pool_size
    for cycle in range(base, hi, pool_size):
        for j, fb in _POOL["feedback"]:
            if lo <= cycle + j < hi:
                k = cycle + j - lo
                when = at[k].astype(datetime) + timedelta(minutes=5)
                fid = f"fb-{k + lo}"
                rows.append(fb._replace(log_id=ids[k], id=fid, item_ids=[fid], created_at=when, received_at=when,
                                        rating_at=when if fb.rating_at else None,
                                        correction_at=when if fb.correction_at else None))  # fmt: skip
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, FEEDBACK_SCHEMA) as ipc:
        ipc.write_table(_to_arrow(rows, FEEDBACK_SCHEMA))
    return rel, n, id_hashes(ids).tobytes(), sink.getvalue().to_pybytes()


def archive_load(data: Path, seed: int, start: int, stop: int, file_rows: int, pool_size: int) -> None:
    """Logs [start, stop) straight into the archive (see the module docstring), the newest file
    received 31 days ago, and their feedback straight into the `feedback` table."""
    import pyarrow as pa

    from service.app import build_runtime
    from service.config import DatabaseSettings, Settings
    from service.domain import ProjectIn
    from service.projects import create_project
    from service.store.db import register_log_key

    database = DatabaseSettings(memory_limit_mib=2048)
    runtime = build_runtime(Settings(data_dir=str(data), scheduler_enabled=False, database=database))
    key_file = data / "bench-key"
    if not key_file.exists():
        key_file.write_text(create_project(runtime, ProjectIn(name=PROJECT)).api_key)
    assert runtime.archive is not None
    root = runtime.archive.root
    n_files = math.ceil((stop - start) / file_rows)
    newest = datetime.combine(datetime.utcnow().date(), datetime.min.time()) - timedelta(days=31)
    with runtime.db.reading() as cur:
        seqs = [
            s for (s,) in cur.execute(f"SELECT nextval('archive_file_seq') FROM range({n_files})").fetchall()
        ]
    specs = [
        (seed, start + f * file_rows, min(stop, start + (f + 1) * file_rows), pool_size, root,
         -(int(seqs[f]) << 32), (newest - timedelta(days=n_files - 1 - f)).isoformat())
        for f in range(n_files)
    ]  # fmt: skip
    started, done = time.perf_counter(), 0
    try:
        with Pool(2) as pool:
            for spec, (rel, rows, hashes, feedback) in zip(
                specs, pool.imap(_archive_file, specs), strict=True
            ):
                pending_feedback = pa.ipc.open_stream(feedback).read_all()
                with runtime.db.transaction() as cur:
                    cur.execute(
                        "INSERT INTO archive_files (path, project, day, rows, first_key, state, created_at, id_hashes)"
                        " VALUES (?, ?, ?, ?, ?, 'done', now()::TIMESTAMP, ?)",
                        [rel, PROJECT, datetime.fromisoformat(spec[6]).date(), rows, spec[5], hashes],
                    )
                    cur.register("pending_feedback", pending_feedback)
                    register_log_key(cur)
                    cur.execute(
                        "INSERT INTO feedback BY NAME"
                        " SELECT *, ratchet_log_key(project, log_id) AS log_key FROM pending_feedback"
                    )
                    cur.remove_function("ratchet_log_key")
                    cur.unregister("pending_feedback")
                done += rows
                print(
                    f"  archived {done:,} logs, {done / (time.perf_counter() - started):,.0f}/s", flush=True
                )
    finally:
        runtime.db.close()


def _post_chunk(args: tuple[str, str, int, int, int]) -> list[tuple[float, int]]:
    """One client process: 3 threads posting 500-log batches of [lo, hi), then their feedback."""
    url, key, lo, hi, seed = args
    texts = Texts(seed)
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}

    def send(a: int) -> tuple[float, int]:
        logs = [texts.log(i) for i in range(a, min(a + 500, hi))]
        fb = [f for i, g in zip(range(a, a + len(logs)), logs, strict=True) if (f := texts.feedback(g, i))]
        with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
            t = time.perf_counter()
            for _ in range(20):
                r = c.post("/v1/logs", content=msgspec.json.encode({"logs": logs}))
                if r.status_code != 429:
                    break
                time.sleep(1)
            took = time.perf_counter() - t
            assert r.status_code == 202, r.text[:200]
            r = c.post("/v1/feedback", content=msgspec.json.encode({"feedback": fb}))
            assert r.status_code in (202, 429), r.text[:200]
        return took, len(logs)

    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(send, range(lo, hi, 500)))


def http_load(
    server: RatchetProcess, key: str, start: int, stop: int, seed: int, windows: int = 4
) -> dict[str, Any]:
    """Logs [start, stop) through the batch API (2 processes x 3 threads); logs/s per window."""
    rates, latencies = [], []
    edges = [start + (stop - start) * k // windows for k in range(windows + 1)]
    with Pool(2) as pool:
        for lo, hi in itertools.pairwise(edges):
            mid = lo + (hi - lo) // 1000 * 500
            t = time.perf_counter()
            parts = pool.map(
                _post_chunk, [(server.url, key, lo, mid, seed), (server.url, key, mid, hi, seed)]
            )
            rates.append((hi - lo) / (time.perf_counter() - t))
            latencies += [took for part in parts for took, _ in part]
    latencies.sort()
    return {"rates": rates, "batch_p50": _q(latencies, 0.5), "batch_p99": _q(latencies, 0.99)}


# --- measuring


class Sampler(threading.Thread):
    """Samples the server's RSS and the WAL's size every 0.1 s."""

    def __init__(self, server: RatchetProcess) -> None:
        super().__init__(daemon=True)
        self.server, self.rss, self.wal, self.running = server, 0, 0, True

    def run(self) -> None:
        wal = self.server.data_dir / "ratchet.duckdb.wal"
        while self.running:
            self.rss = max(self.rss, _rss(self.server))
            self.wal = max(self.wal, wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.1)

    def reset(self) -> None:
        self.rss = _rss(self.server)


def _rss(server: RatchetProcess) -> int:
    try:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()  # type: ignore[union-attr]
    except OSError:
        return 0
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]


def paced_posts(
    server: RatchetProcess, key: str, rate: float, stop: threading.Event, out: list[tuple[float, float]]
) -> None:
    """8 clients sending one log per request, `rate` req/s in all: (sent at, seconds) per request."""

    def client(c: int) -> None:
        with server.client(key, timeout=60) as api:
            n, every = 0, 8 / rate
            nxt = time.perf_counter()
            while not stop.is_set():
                body = {"request": {"messages": [{"role": "user", "content": f"probe {c} {n}"}]},
                        "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}}  # fmt: skip
                t = time.perf_counter()
                api.post("/v1/logs", json=body)
                out.append((t, time.perf_counter() - t))
                n += 1
                nxt += every
                time.sleep(max(0.0, nxt - time.perf_counter()))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def during(server: RatchetProcess, key: str, rate: float, sampler: Sampler, op: Any) -> dict[str, Any]:
    """Run `op()` with paced single-log POSTs around it: op seconds, POST p50/p99/max while it
    ran, the server's peak RSS meanwhile."""
    stop, posts = threading.Event(), []  # type: ignore[var-annotated]
    poster = threading.Thread(target=paced_posts, args=(server, key, rate, stop, posts))
    poster.start()
    time.sleep(2)
    sampler.reset()
    loop_before = {h: histogram(server, h) for h in LOOP_HISTOGRAMS}
    t0 = time.perf_counter()
    error = None
    try:
        op()
    except httpx.HTTPStatusError as exc:  # e.g. 503 over the memory limit: a figure, not the end
        error = f"{exc.response.status_code} {exc.response.read()[:120].decode(errors='replace')}"
    t1 = time.perf_counter()
    time.sleep(1)
    stop.set()
    poster.join()
    loop = {
        h: _highest_bucket(_minus(histogram(server, h), loop_before[h])) if loop_before[h] else None
        for h in LOOP_HISTOGRAMS
    }
    inside = sorted(d for at, d in posts if t0 <= at <= t1)
    return {"seconds": t1 - t0, "p50": _q(inside, 0.5), "p99": _q(inside, 0.99), "max": max(inside, default=0.0),
            "n": len(inside), "rss": sampler.rss, "loop": loop, "error": error}  # fmt: skip


LOOP_HISTOGRAMS = ("ratchet_event_loop_lag_seconds", "ratchet_event_loop_blocked_seconds")


def histogram(server: RatchetProcess, name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets from /metrics (empty where the server has none)."""
    return _buckets(httpx.get(f"{server.url}/metrics", timeout=60).text, name)


def _buckets(text: str, name: str) -> list[tuple[float, float]]:
    return [
        (float(le), float(v)) for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    ]


def _minus(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]


def metrics(server: RatchetProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=60).text
    found: dict[str, float] = {}
    for name in ("ratchet_event_loop_lag_max_seconds", "ratchet_write_checkpoint_seconds_sum",
                 "ratchet_write_checkpoint_seconds_count"):  # fmt: skip
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        if m:
            found[name] = float(m.group(1))
    for hist in ("ratchet_event_loop_blocked_seconds", "ratchet_write_checkpoint_seconds"):
        buckets = _buckets(text, hist)
        if buckets:
            found[f"{hist}_max_le"] = _highest_bucket(buckets)
    return found


def _highest_bucket(buckets: list[tuple[float, float]]) -> float:
    """The upper bound of the highest histogram bucket anything landed in (cumulative counts)."""
    top, before = 0.0, 0.0
    for le, count in buckets:
        if count > before:
            top = le
        before = count
    return top


def measure(
    server: RatchetProcess,
    key: str,
    rate: float,
    ids: list[str],
    sampler: Sampler,
    export_seconds: float | None = None,
    snapshot_seconds: float | None = None,
) -> dict[str, Any]:
    """The operations of step 2 and the point reads of step 3. `export_seconds`: read the export
    for at most this long (its rate and peak RSS so far; a 10M-log export takes most of an hour
    here); `snapshot_seconds`: wait at most this long for the snapshot stage."""
    api = server.client(key, timeout=600)
    ops: dict[str, Any] = {}
    ops["idle"] = during(server, key, rate, sampler, lambda: time.sleep(5))
    ops["stats"] = during(
        server, key, rate, sampler, lambda: api.get(f"/v1/projects/{PROJECT}/stats").raise_for_status()
    )

    def export() -> None:
        started, read = time.perf_counter(), 0
        with api.stream("GET", f"/v1/projects/{PROJECT}/export", params={"format": "parquet"}) as r:
            if r.is_error:
                r.read()  # the error's body, for the table
            r.raise_for_status()
            ops["export_rows"] = int(r.headers["x-ratchet-rows"])
            for chunk in r.iter_bytes(1 << 20):
                read += len(chunk)
                if export_seconds is not None and time.perf_counter() - started > export_seconds:
                    ops["export_cut"] = read
                    break

    ops["export"] = during(server, key, rate, sampler, export)
    ops["signal check"] = during(server, key, rate, sampler, lambda: time.sleep(11))  # >= 2 ticks of 5 s

    def snapshot() -> None:
        started = time.perf_counter()
        run = api.post(f"/v1/projects/{PROJECT}/runs").raise_for_status().json()
        while api.get(f"/v1/runs/{run['id']}").json()["state"] in ("pending", "snapshot"):
            if snapshot_seconds is not None and time.perf_counter() - started > snapshot_seconds:
                ops["snapshot_cut"] = True
                return
            time.sleep(0.2)
        ops["snapshot_stage_s"] = (
            api.get(f"/v1/runs/{run['id']}").json()["stats"].get("stage_seconds", {}).get("snapshot")
        )

    ops["snapshot"] = during(server, key, rate, sampler, snapshot)
    print(f"  ops: { {k: v for k, v in ops.items()} }", flush=True)
    reads = []
    for log_id in random.Random(7).sample(ids, min(60, len(ids))):
        t = time.perf_counter()
        api.get(f"/v1/logs/{log_id}").raise_for_status()
        reads.append(time.perf_counter() - t)
    ops["get_log_p50"] = statistics.median(reads[10:])  # the first ones load the index
    api.close()
    return ops


def _q(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sizes", type=int, nargs="+", help="log counts to measure at, ascending")
    parser.add_argument("--http", type=int, default=100_000, help="newest logs of each size sent over HTTP")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="single-log POSTs per second during operations"
    )
    parser.add_argument(
        "--data", type=Path, default=Path("/tmp/ratchet-scale"), help="data directory (wiped)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--archived", type=int, default=0, help="oldest logs of the last size generated into the archive"
    )
    parser.add_argument("--pool", type=int, default=20_000, help="distinct texts of the archived logs")
    parser.add_argument("--file-rows", type=int, default=100_000, help="archive.file_rows")
    parser.add_argument(
        "--max-train-examples",
        type=int,
        default=None,
        help="snapshot.max_train_examples for the server (default: the setting's default)",
    )
    parser.add_argument(
        "--memory-limit-mib", type=int, default=2048, help="database.memory_limit_mib for the server"
    )
    parser.add_argument("--export-seconds", type=float, help="read each export for at most this long")
    parser.add_argument("--snapshot-seconds", type=float, help="wait at most this long for a snapshot stage")
    parser.add_argument(
        "--resume", type=int, nargs=3, metavar=("DONE", "ARCHIVED_FROM", "ARCHIVED_TO"),
        help="keep --data, which holds logs [0, DONE), those of [ARCHIVED_FROM, ARCHIVED_TO) archived",
    )  # fmt: skip
    args = parser.parse_args()
    texts, done, rows, archived = Texts(args.seed), 0, [], (0, 0)
    if args.resume:
        done, archived = args.resume[0], (args.resume[1], args.resume[2])
    else:
        shutil.rmtree(args.data, ignore_errors=True)
        args.data.mkdir(parents=True)
    env = {"RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "5",
           "RATCHET_TRAINING__MIN_NEW_RATINGS": "1000000000",  # the check runs its count, never starts a run
           "RATCHET_DATABASE__MEMORY_LIMIT_MIB": str(args.memory_limit_mib),
           "RATCHET_ARCHIVE__AFTER_DAYS": "30", "RATCHET_ARCHIVE__FILE_ROWS": str(args.file_rows)}  # fmt: skip
    if args.max_train_examples is not None:
        env["RATCHET_SNAPSHOT__MAX_TRAIN_EXAMPLES"] = str(args.max_train_examples)
    for size in args.sizes:
        print(f"== {size:,} logs  (load average {os.getloadavg()[0]:.1f})", flush=True)
        http_from = max(done, size - args.http)
        t = time.perf_counter()
        if args.archived and size == args.sizes[-1] and not args.resume:
            # The oldest logs into the archive, under ids of their own; the hot ones keep theirs.
            archived = (done, done + args.archived)
            archive_load(args.data, args.seed, *archived, args.file_rows, args.pool)
            print(f"  archive load of {args.archived:,} logs: {time.perf_counter() - t:.0f} s", flush=True)
            done = archived[1]
            http_from = max(done, size - args.http)
            t = time.perf_counter()
        key = (
            bulk_load(args.data, texts, done, http_from)
            if http_from > done or done == 0
            else (args.data / "bench-key").read_text()
        )
        print(f"  in-process load of {http_from - done:,} logs: {time.perf_counter() - t:.0f} s", flush=True)
        t = time.perf_counter()
        server = RatchetProcess(args.data, env=env).start(timeout=600)
        start_s = time.perf_counter() - t
        sampler = Sampler(server)
        sampler.start()
        try:
            before = metrics(server)
            load = http_load(server, key, http_from, size, args.seed)
            print(f"  HTTP load: {load}", flush=True)
            after = metrics(server)
            ckpts = after.get("ratchet_write_checkpoint_seconds_count", 0) - before.get(
                "ratchet_write_checkpoint_seconds_count", 0
            )
            ckpt_mean = (
                after.get("ratchet_write_checkpoint_seconds_sum", 0)
                - before.get("ratchet_write_checkpoint_seconds_sum", 0)
            ) / max(ckpts, 1)
            ids = [
                archived_id(i) if archived[0] <= i < archived[1] else texts.log(i)["id"]
                for i in random.Random(size).sample(range(size), 200)
            ]
            ops = measure(server, key, args.rate, ids, sampler, args.export_seconds, args.snapshot_seconds)
            final = metrics(server)
        finally:
            sampler.running = False
            t = time.perf_counter()
            server.stop()
            stop_s = time.perf_counter() - t
        files = {p.name: p.stat().st_size for p in args.data.glob("ratchet.duckdb*")}
        done = size
        rows.append((size, load, ckpts, ckpt_mean, ops, final, sampler.wal, stop_s, start_s, files))
        print_table(rows)


def print_table(rows: list[Any]) -> None:
    out = [
        "",
        "| | " + " | ".join(f"{r[0] / 1e6:g}M logs" for r in rows) + " |",
        "|---" * (len(rows) + 1) + "|",
    ]

    def row(label: str, cells: list[str]) -> None:
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    row(
        "ingest logs/s per window (HTTP, 6 x 500-log batches)",
        [", ".join(f"{x / 1e3:.1f}k" for x in r[1]["rates"]) for r in rows],
    )
    row("batch request p50 / p99", [f"{r[1]['batch_p50']:.2f} / {r[1]['batch_p99']:.2f} s" for r in rows])
    row("writer checkpoints during that load: count, mean pause", [f"{r[2]:.0f}, {r[3]:.2f} s" for r in rows])
    for op in ("idle", "stats", "export", "signal check", "snapshot"):
        row(f"single-log POST p50 / p99 / max during {op} (op time; loop lag / blocked, bucket bounds)",
            [f"{o['p50'] * 1e3:.0f} / {o['p99'] * 1e3:.0f} / {o['max'] * 1e3:.0f} ms ({o['seconds']:.1f} s; "
             + " / ".join(f"<= {o['loop'][h] * 1e3:.0f} ms" if o["loop"].get(h) is not None else "-"
                          for h in LOOP_HISTOGRAMS) + ")" + (f" FAILED: {o['error']}" if o.get("error") else "")
             for o in (r[4][op] for r in rows)])  # fmt: skip
    row(
        "snapshot stage (run stats), peak server RSS",
        [f"{r[4].get('snapshot_stage_s')} s, {r[4]['snapshot']['rss'] / 1e9:.2f} GB" for r in rows],
    )
    row(
        "parquet export, peak server RSS",
        [f"{r[4]['export']['seconds']:.1f} s, {r[4]['export']['rss'] / 1e9:.2f} GB" for r in rows],
    )
    row("longest event-loop lag (wall) / blocked (<= bucket)",
        [f"{r[5].get('ratchet_event_loop_lag_max_seconds', float('nan')) * 1e3:.0f} ms / "
         f"{r[5].get('ratchet_event_loop_blocked_seconds_max_le', float('nan')) * 1e3:.0f} ms" for r in rows])  # fmt: skip
    row("GET /v1/logs/{id} p50", [f"{r[4]['get_log_p50'] * 1e3:.1f} ms" for r in rows])
    row("WAL max", [_mb(r[6]) for r in rows])
    row(
        "start (process to /healthz) / stop (SIGTERM to exit)", [f"{r[8]:.1f} s / {r[7]:.1f} s" for r in rows]
    )
    row(
        "files after stop",
        [
            ", ".join(f"{k.removeprefix('ratchet.duckdb') or 'db'} {_mb(v)}" for k, v in r[9].items())
            for r in rows
        ],
    )
    print("\n".join(out), flush=True)
    print_ratios(rows)


def print_ratios(rows: list[Any]) -> None:
    """The same figures as ratios against baselines measured in this run: the first size for what
    should not grow with the data, the same size at idle for what an operation adds. Timings on a
    shared machine drift between runs; these ratios are what to compare."""
    first = rows[0]
    out = [
        "",
        f"Ratios (baseline: {first[0] / 1e6:g}M logs, or idle at the same size)",
        "",
        "| | " + " | ".join(f"{r[0] / 1e6:g}M logs" for r in rows) + " | goal |",
        "|---" * (len(rows) + 2) + "|",
    ]

    def row(label: str, values: list[float | None], goal: str) -> None:
        cells = ["-" if v is None or math.isnan(v) else f"{v:.2f}x" for v in values]
        out.append(f"| {label} | " + " | ".join(cells) + f" | {goal} |")

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    base_ingest = statistics.mean(first[1]["rates"])
    row(
        "ingest logs/s / first size's",
        [ratio(statistics.mean(r[1]["rates"]), base_ingest) for r in rows],
        ">= 0.85x",
    )
    for op in ("stats", "export", "signal check", "snapshot"):
        row(f"single-log POST p99 during {op} / idle p99", [ratio(r[4][op]["p99"], r[4]["idle"]["p99"]) for r in rows],
            "<= 50 ms absolute")  # fmt: skip
    for op in ("snapshot", "export"):
        row(f"peak server RSS during {op} / idle RSS", [ratio(r[4][op]["rss"], r[4]["idle"]["rss"]) for r in rows],
            "flat across sizes")  # fmt: skip
    row("snapshot stage time / first size's", [ratio(r[4].get("snapshot_stage_s"), first[4].get("snapshot_stage_s"))
                                              for r in rows], "grows with new data, not history")  # fmt: skip
    row("GET /v1/logs/{id} p50 / first size's", [ratio(r[4]["get_log_p50"], first[4]["get_log_p50"]) for r in rows],
        "flat (<= 10 ms absolute)")  # fmt: skip
    row("stop time / first size's", [ratio(r[7], first[7]) for r in rows], "<= 10 s absolute")
    print("\n".join(out), flush=True)


if __name__ == "__main__":
    main()
