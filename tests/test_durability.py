"""An acknowledged event survives `kill -9` of the server, and is stored exactly once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fixtures.server import RatchetProcess
from tests.test_api_capture import chat_log

CLIENTS = 4
ROUNDS = 3


def _send_until_dead(
    server: RatchetProcess, key: str, prefix: str, acked: list[str], stop: threading.Event
) -> None:
    with server.client(key, timeout=5) as c:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 5 == 0:  # a batch now and then, so both paths meet the kill
                ids = [f"{prefix}-{n}-{i}" for i in range(20)]
                body = {"logs": [chat_log(i) for i in ids]}
            else:
                ids = [f"{prefix}-{n}"]
                body = chat_log(ids[0])
            try:
                if c.post("/v1/logs", json=body).status_code == 202:
                    acked.extend(ids)
                    fb = {"log_id": ids[0], "rating": 1, "end_user": prefix}
                    r = c.post("/v1/feedback", json=fb)
                    if r.status_code == 202:
                        acked.append(f"fb:{ids[0]}")
                        # Now and then the user takes the thumb back: a withdrawal is a write too.
                        if n % 3 == 0:
                            fid = r.json()["results"][0]["id"]
                            acked.append(f"try:{ids[0]}")  # unacknowledged: may or may not be done
                            if c.delete(f"/v1/feedback/{fid}").status_code == 200:
                                acked.append(f"wd:{ids[0]}")
            except httpx.TransportError:
                return  # the server is gone; nothing more can be acknowledged


def test_acknowledged_events_survive_kill_9(
    start_ratchet: Callable[..., RatchetProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "durable"
    server = start_ratchet(data_dir=data_dir)
    key = server.create_project("durable")
    acked: list[str] = []
    for round_ in range(ROUNDS):
        stop = threading.Event()
        threads = [
            threading.Thread(target=_send_until_dead, args=(server, key, f"r{round_}c{i}", acked, stop))
            for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5)
        server.kill()  # mid-stream: requests are in flight
        stop.set()
        for t in threads:
            t.join()
        server = start_ratchet(data_dir=data_dir)

    log_ids = [a for a in acked if not a.startswith(("fb:", "wd:", "try:"))]
    withdrawn = {a.removeprefix("wd:") for a in acked if a.startswith("wd:")}
    tried = {a.removeprefix("try:") for a in acked if a.startswith("try:")}
    feedback_for = {a.removeprefix("fb:") for a in acked if a.startswith("fb:")} - tried
    assert len(log_ids) > 200, "too little traffic reached the server to prove anything"
    with server.client(key) as c:
        r = c.get("/v1/projects/durable/export", params={"format": "jsonl"})
    rows = [json.loads(line) for line in r.text.splitlines()]
    stored = [row["id"] for row in rows]
    assert len(stored) == len(set(stored)), "a log was stored twice"
    missing = set(log_ids) - set(stored)
    assert not missing, f"{len(missing)} acknowledged logs lost, e.g. {sorted(missing)[:3]}"
    rated = {row["id"] for row in rows if row["rating"] == 1}
    assert feedback_for <= rated, f"acknowledged feedback lost for {sorted(feedback_for - rated)[:3]}"
    assert withdrawn, "no withdrawal reached the server to prove anything"
    assert not withdrawn & rated, f"acknowledged withdrawals lost for {sorted(withdrawn & rated)[:3]}"
