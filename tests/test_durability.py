"""An acknowledged event survives `kill -9` of the server, and is stored exactly once; an answered
gateway request is logged through a stop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fixtures.server import RatchetProcess
from tests.fixtures.upstream import StandIn
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
    rated = {row["id"] for row in rows if row.get("rating") == 1}  # an unrated line has no rating
    assert feedback_for <= rated, f"acknowledged feedback lost for {sorted(feedback_for - rated)[:3]}"
    assert withdrawn, "no withdrawal reached the server to prove anything"
    assert not withdrawn & rated, f"acknowledged withdrawals lost for {sorted(withdrawn & rated)[:3]}"


def _ask_until_stopped(server: RatchetProcess, key: str, answered: list[str], stop: threading.Event) -> None:
    body = {"model": "durable-gw", "messages": [{"role": "user", "content": "hi"}], "stand_in": "tool_call"}
    with server.client(key, timeout=10) as c:
        while not stop.is_set():
            try:
                r = c.post("/v1/chat/completions", json=body)
            except httpx.TransportError:
                return
            if r.status_code == 200:
                answered.append(r.json()["id"])


def test_every_answered_gateway_request_is_logged_once_through_a_stop(
    start_ratchet: Callable[..., RatchetProcess], tmp_path: Path
) -> None:
    """The gateway answers before its log is committed, and the writer lets those logs linger
    for company (`writer.linger_ms`): a stop (SIGTERM) in the middle of traffic still commits
    every answered request's log. A stand-in upstream answers (tests/fixtures/upstream.py)."""
    stand_in = StandIn().start()
    try:
        env = {"RATCHET_VLLM__URLS": f'["{stand_in.url}"]', "RATCHET_VLLM__BASE_SERVED_NAME": "tiny",
               "RATCHET_SCHEDULER_ENABLED": "false", "RATCHET_WRITER__LINGER_MS": "200"}  # fmt: skip
        data_dir = tmp_path / "gateway"
        server = start_ratchet(env=env, data_dir=data_dir)
        key = server.create_project("durable-gw")
        answered: list[str] = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=_ask_until_stopped, args=(server, key, answered, stop)) for _ in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5)
        server.stop()  # SIGTERM mid-traffic: requests in flight, logs lingering
        stop.set()
        for t in threads:
            t.join()
        server = start_ratchet(env=env, data_dir=data_dir)
        with server.client(key) as c:
            export = c.get("/v1/projects/durable-gw/export", params={"format": "jsonl"})
            rows = [json.loads(line) for line in export.text.splitlines()]
    finally:
        stand_in.stop()
    assert len(answered) > 20, "too little traffic reached the server to prove anything"
    stored = [row["id"] for row in rows]
    assert len(stored) == len(set(stored)), "a log was stored twice"
    missing = set(answered) - set(stored)
    assert not missing, f"{len(missing)} answered requests' logs lost, e.g. {sorted(missing)[:3]}"
