"""The trainer reads exactly what the service's snapshot export writes (a real DuckDB file, the
service's own writer and export), and turns it into the examples the contract names."""

from __future__ import annotations

import json
from pathlib import Path

from formats.log import Message
from service.store.db import Database
from service.store.snapshot import export_snapshot
from tests.test_snapshot import NOW, SETTINGS, Feed  # the service's writer, as its own tests drive it
from trainer.dataset import build_examples, choose_method
from trainer.snapshot import read_snapshot


def test_trainer_reads_the_service_export(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb")
    try:
        feed = Feed(db)
        for i in range(40):
            feed.add(f"question {i}?", f"answer {i}", user=f"u{i % 10}", rating=1 if i % 2 else -1)
        for i in range(10):
            feed.add(f"fix {i}?", "wrong", user=f"u{i}", rating=-1, correction=f"right {i}")
        feed.add("unrated?", "maybe", user="u0", rating=None, correction="surely")
        feed.writer.stop()
        manifest = export_snapshot(db, "p", tmp_path / "snap", SETTINGS, now=NOW)
    finally:
        db.close()

    snapshot = read_snapshot(tmp_path / "snap")
    assert (
        snapshot.sha256
        == manifest.sha256
        == json.loads((tmp_path / "snap" / "manifest.json").read_text())["sha256"]
    )
    assert (len(snapshot.train), snapshot.holdout_rows, snapshot.unreadable) == (
        manifest.stats.train_rows,
        manifest.stats.holdout_rows,
        0,
    )
    first = snapshot.train[0]
    assert first.prompt == [Message(role="user", content="question 0?")]
    assert (first.completion, first.rating, first.adapter) == (
        Message(role="assistant", content="answer 0"),
        -1,
        "p@v1",
    )

    examples = build_examples(snapshot.train)
    counts = examples.counts()
    assert counts["thumbs_up"] + counts["thumbs_down"] == sum(r.rating is not None for r in snapshot.train)
    assert counts["corrections"] == sum(r.correction is not None for r in snapshot.train)
    assert counts["dpo_pairs"] == counts["corrections"]  # every question is asked once: no same-prompt pairs
    assert choose_method(examples, "auto", min_examples=8, min_pair_share=0.5).method == "kto"
