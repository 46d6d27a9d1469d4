"""Snapshot export from a real DuckDB file written by the service's own writer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from service.capture import Capture
from service.config import SnapshotSettings
from service.metrics import Metrics
from service.store.db import Database
from service.store.snapshot import export_snapshot
from service.store.writer import GroupCommitWriter
from tests.fixtures.rows import chat_log, completion_log, feedback_row

T0 = datetime(2026, 11, 1)
NOW = datetime(2026, 11, 20)


class Feed:
    """Writes logs and feedback through the real group-commit writer."""

    def __init__(self, db: Database) -> None:
        self.writer = GroupCommitWriter(db, Metrics(), max_batch_rows=1000, max_queue_rows=100_000)
        self.writer.start()
        self.n = 0

    def add(
        self,
        prompt: str,
        answer: str,
        *,
        user: str | None,
        rating: int | None = 1,
        correction: str | None = None,
    ) -> str:
        self.n += 1
        log_id = f"log-{self.n:05d}"
        at = T0 + timedelta(minutes=self.n)
        log = chat_log(log_id, [{"role": "user", "content": prompt}], answer, created_at=at, end_user=user,
                       adapter="p@v1")  # fmt: skip
        self.writer.write_sync("logs", [Capture.log_row("p", log, log_id, at, "api")])
        fb = feedback_row("p", log_id, at, end_user=user or "", fid=f"fb-{self.n}", rating=rating,
                          correction=correction)  # fmt: skip
        self.writer.write_sync("feedback", [fb])
        return log_id


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "r.duckdb")
    yield database
    database.close()


def read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


SETTINGS = SnapshotSettings(holdout_fraction=0.2, max_user_share=0.2, min_user_cap=5)


def test_columns_split_and_manifest(db: Database, tmp_path: Path) -> None:
    feed = Feed(db)
    ids = [feed.add(f"question {i}", f"answer {i}", user=f"u{i % 10}") for i in range(50)]
    feed.writer.stop()
    out = tmp_path / "snap"
    manifest = export_snapshot(db, "p", out, SETTINGS, now=NOW)
    train, holdout = read(out / "train.parquet"), read(out / "holdout.parquet")
    assert list(train[0]) == [
        "log_id", "prompt_messages", "completion", "rating", "score", "correction", "end_user", "created_at", "adapter",
    ]  # fmt: skip
    assert json.loads(train[0]["prompt_messages"]) == [{"role": "user", "content": "question 0"}]
    assert (train[0]["completion"], train[0]["rating"], train[0]["adapter"]) == ("answer 0", 1, "p@v1")
    # The holdout is the newest 20%, never trained on.
    assert [r["log_id"] for r in holdout] == ids[40:]
    assert [r["log_id"] for r in train] == ids[:40]
    assert max(r["created_at"] for r in train) < min(r["created_at"] for r in holdout)
    on_disk = json.loads((out / "manifest.json").read_text())
    for name in ("train.parquet", "holdout.parquet"):
        assert on_disk["files"][name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert (manifest.stats.train_rows, manifest.stats.holdout_rows) == (40, 10)
    assert not list(tmp_path.glob(".snap*")), "temporary directory left behind"


def test_pii_is_scrubbed_everywhere_and_counted(db: Database, tmp_path: Path) -> None:
    feed = Feed(db)
    secrets = [
        "mail me at jane.doe@example.com",
        "call +1 415-555-0100 tonight",
        "card 4111 1111 1111 1111 exp 12/29",
        "key sk-abcdefghijklmnopqrstuvwx123",
    ]
    for i, s in enumerate(secrets * 5):
        feed.add(f"q{i}: {s}", f"sure, {s}", user=f"u{i}", correction=f"fixed {s}")
    feed.add("what is 2026-11-24 plus 1000 days?", "a date", user="dates")
    feed.writer.stop()
    manifest = export_snapshot(db, "p", tmp_path / "snap", SETTINGS, now=NOW)
    rows = read(tmp_path / "snap" / "train.parquet") + read(tmp_path / "snap" / "holdout.parquet")
    text = json.dumps(rows, default=str)
    for needle in ("jane.doe@example.com", "555-0100", "4111 1111", "sk-abcdefghijklmnop"):
        assert needle not in text
    assert text.count("[REDACTED]") >= 3 * 20
    assert manifest.stats.pii_scrubbed_rows == 20
    assert "2026-11-24 plus 1000" in text, "a date is not a phone number"


def test_identical_examples_count_once(db: Database, tmp_path: Path) -> None:
    feed = Feed(db)
    for i in range(40):  # 40 accounts posting the same thumb for the same answer
        feed.add("spam prompt", "spam answer", user=f"bot{i}")
    for i in range(10):
        feed.add(f"real {i}", f"answer {i}", user=f"real{i}")
    feed.writer.stop()
    manifest = export_snapshot(db, "p", tmp_path / "snap", SETTINGS, now=NOW)
    assert manifest.stats.dropped_duplicates == 39
    assert manifest.stats.train_rows + manifest.stats.holdout_rows == 11


def test_one_user_cannot_supply_more_than_their_share(db: Database, tmp_path: Path) -> None:
    feed = Feed(db)
    for i in range(100):
        feed.add(f"loud {i}", f"answer {i}", user="loud")
    for i in range(60):
        feed.add(f"quiet {i}", f"answer {i}", user=f"q{i % 20}")
    feed.writer.stop()
    manifest = export_snapshot(db, "p", tmp_path / "snap", SETTINGS, now=NOW)
    rows = read(tmp_path / "snap" / "train.parquet") + read(tmp_path / "snap" / "holdout.parquet")
    assert manifest.stats.user_cap == 32  # 20% of 160
    assert sum(r["end_user"] == "loud" for r in rows) == 32
    assert manifest.stats.dropped_user_cap == 68


def test_a_prompt_in_the_holdout_is_not_trained_on(db: Database, tmp_path: Path) -> None:
    feed = Feed(db)
    for i in range(20):
        feed.add(f"prompt {i % 10}", f"answer {i}", user=f"u{i}", rating=1 if i % 2 else -1)
    feed.writer.stop()
    manifest = export_snapshot(db, "p", tmp_path / "snap", SETTINGS, now=NOW)
    train = {r["prompt_messages"] for r in read(tmp_path / "snap" / "train.parquet")}
    holdout = {r["prompt_messages"] for r in read(tmp_path / "snap" / "holdout.parquet")}
    assert holdout and not train & holdout
    assert manifest.stats.dropped_prompt_in_holdout == 4


def test_logs_without_feedback_and_other_projects_stay_out(db: Database, tmp_path: Path) -> None:
    feed = Feed(db)
    feed.add("rated", "yes", user="a")
    log = completion_log("unrated", "x", "y", created_at=T0)
    feed.writer.write_sync("logs", [Capture.log_row("p", log, "unrated", T0, "api")])
    feed.writer.write_sync("logs", [Capture.log_row("other", log, "other-1", T0, "api")])
    feed.writer.write_sync("feedback", [feedback_row("other", "other-1", T0, fid="f", rating=1)])
    feed.writer.stop()
    manifest = export_snapshot(db, "p", tmp_path / "snap", SETTINGS, now=NOW)
    assert manifest.stats.joined_rows == 1
