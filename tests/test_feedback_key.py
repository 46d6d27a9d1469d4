"""Feedback keyed by a 64-bit hash of its log (migration 016, issue 14): the migration keeps every
row and keys it as the writer does, the writer's merge in Python stores what the `ON CONFLICT`
merge stored before, logs whose keys collide stay apart, and point reads go through the index."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from service.capture import Capture
from service.metrics import Metrics
from service.store.archive_index import log_keys
from service.store.db import Database, migrations
from service.store.queries import FEEDBACK_BY_LOG_ID, Queries
from service.store.rows import FEEDBACK_SCHEMA, WITHDRAW, FeedbackRow
from service.store.writer import GroupCommitWriter
from tests.fixtures.rows import completion_log, feedback_row

T0 = datetime(2026, 11, 1)
T1 = T0 + timedelta(minutes=5)
_COLUMNS = ", ".join(FEEDBACK_SCHEMA.names)


def _writer(db: Database) -> GroupCommitWriter:
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=1000, max_queue_rows=10_000)
    writer.start()
    return writer


def _stored(db: Database) -> dict[tuple[str, str, str], FeedbackRow]:
    with db.reading() as cur:
        rows = cur.execute(f"SELECT {_COLUMNS} FROM feedback").fetchall()
    return {tuple(r[:3]): FeedbackRow(*r) for r in rows}  # type: ignore[misc]


def test_the_migration_keeps_every_row_and_keys_it_as_the_writer_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.duckdb"
    with monkeypatch.context() as m:  # a database as it was before 016
        m.setattr("service.store.db.migrations", lambda: [x for x in migrations() if x[0] < 16])
        old = Database(path)
        assert old.schema_version == 15
        with old.transaction() as cur:
            cur.execute(
                "INSERT INTO feedback (project, log_id, end_user, id, created_at, received_at, rating, score,"
                " correction, comment, metadata, choice, fields, item_ids, rating_at, events, attributed)"
                " SELECT 'p' || (i % 3), 'chatcmpl-' || (i // 3) || CASE WHEN i % 7 = 0 THEN ' é' ELSE '' END,"
                " 'u' || (i % 5), 'fb-' || i, TIMESTAMP '2026-11-01' + INTERVAL (i) SECOND,"
                " TIMESTAMP '2026-11-01' + INTERVAL (i) SECOND, CASE WHEN i % 2 = 0 THEN 1 ELSE -1 END, i / 10,"
                " CASE WHEN i % 11 = 0 THEN 'fixed' END, NULL, '{\"n\": 1}', i % 2, ['rating'], ['fb-' || i],"
                " TIMESTAMP '2026-11-01', CASE WHEN i % 4 = 0 THEN ['shared'] END, i % 3 = 0 FROM range(3000) t(i)"
            )
            before = cur.execute(f"SELECT {_COLUMNS} FROM feedback ORDER BY ALL").fetchall()
        old.close()

    db = Database(path)
    try:
        assert db.schema_version == migrations()[-1][0]
        with db.reading() as cur:
            after = cur.execute(f"SELECT {_COLUMNS}, log_key FROM feedback ORDER BY ALL").fetchall()
            indexes = cur.execute(
                "SELECT index_name FROM duckdb_indexes() WHERE table_name = 'feedback'"
            ).fetchall()
            keys = cur.execute(
                "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'feedback'"
                " AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
            ).fetchall()
        assert len(before) == 3000 and [r[:-1] for r in after] == before
        assert [r[-1] for r in after] == log_keys((r[0], r[1]) for r in after)
        assert indexes == [("feedback_log_key",)] and keys == []
    finally:
        db.close()


def test_a_flush_merges_onto_stored_rows_as_the_on_conflict_merge_did(tmp_path: Path) -> None:
    """Stored rows, then one flush of new, changed, duplicate and withdrawn items; the expected
    rows are written out by hand from the rules of `_merged_feedback_sql` (before 016)."""
    db = Database(tmp_path / "r.duckdb")
    writer = _writer(db)
    try:
        first = [
            feedback_row("p", "l1", T0, end_user="u", fid="a1", rating=1),
            feedback_row("p", "l2", T0, end_user="u", fid="b1", rating=1, comment="ok"),
            feedback_row("p", "l3", T0, end_user="u", fid="c1", rating=-1),
            feedback_row("p", "l4", T0, end_user="u", fid="d1", rating=1),
            feedback_row("p", "l5", T0, end_user="u", fid="e1", events=["shared"]),
        ]
        assert writer.write_sync("feedback", first) == [True] * 5
        withdraw = FeedbackRow("p", "l4", "u", "w", T1, T1, None, None, None, None, None, 0, [WITHDRAW], [])
        second = [
            feedback_row("p", "l9", T1, end_user="u", fid="n1", rating=1),  # new
            feedback_row("p", "l1", T1, end_user="u", fid="a2", rating=-1),  # changed thumb
            feedback_row("p", "l2", T1, end_user="u", fid="b1", rating=1, comment="ok"),  # retried id
            feedback_row("p", "l3", T1, end_user="u", fid="c2", rating=-1),  # says nothing new
            withdraw,
            feedback_row("p", "l5", T1, end_user="u", fid="e2", events=["copied"]),  # adds an event
            feedback_row("p", "l1", T1, end_user="u", fid="a3", comment="wrong"),  # on top of a2
            feedback_row("p", "l1", T1, end_user="u", fid="a4", comment="wrong"),  # a repeat in the flush
        ]
        assert writer.write_sync("feedback", second) == [True, True, False, False, True, True, True, False]
        rows = _stored(db)
    finally:
        writer.stop()
        db.close()

    def at(key: str) -> FeedbackRow:
        return rows[("p", key, "u")]

    assert len(rows) == 6
    assert at("l9") == second[0]
    l1 = at("l1")
    assert (l1.id, l1.rating, l1.comment, l1.rating_at, l1.received_at, l1.created_at) == (
        "a1",
        -1,
        "wrong",
        T1,
        T1,
        T1,
    )
    assert (l1.fields, l1.item_ids) == (["rating", "comment"], ["a1", "a2", "a3", "a4"])
    assert at("l2") == first[1]  # untouched, not even its ids
    l3 = at("l3")  # the same thumb: only the new id is remembered
    assert (l3.rating, l3.rating_at, l3.received_at, l3.fields, l3.item_ids) == (
        -1,
        T0,
        T0,
        ["rating"],
        ["c1", "c2"],
    )
    l4 = at("l4")  # withdrawn: every value cleared, `choice` kept
    assert (l4.rating, l4.rating_at, l4.received_at, l4.fields, l4.item_ids) == (
        None,
        T1,
        T1,
        [WITHDRAW],
        ["d1"],
    )
    assert (l4.choice, l4.attributed) == (0, False)
    l5 = at("l5")
    assert (l5.events, l5.received_at, l5.rating_at, l5.item_ids) == (
        ["copied", "shared"],
        T1,
        None,
        ["e1", "e2"],
    )


def test_the_last_sixteen_ids_are_remembered_and_a_retry_of_one_changes_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb")
    writer = _writer(db)
    try:
        for i in range(20):
            at = T0 + timedelta(seconds=i)
            assert writer.write_sync(
                "feedback", [feedback_row("p", "l", at, fid=f"f{i}", score=float(i))]
            ) == [True]
        retry = feedback_row("p", "l", T1, fid="f19", score=99.0)
        stale = feedback_row("p", "l", T1, fid="f0", score=99.0)  # forgotten: applies again
        assert writer.write_sync("feedback", [retry]) == [False]
        assert _stored(db)[("p", "l", "")].score == 19.0
        assert writer.write_sync("feedback", [stale]) == [True]
        row = _stored(db)[("p", "l", "")]
    finally:
        writer.stop()
        db.close()
    assert (row.score, row.item_ids) == (99.0, [f"f{i}" for i in range(5, 20)] + ["f0"])


def test_logs_whose_keys_collide_keep_their_own_feedback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def one_key(keys):  # every log shares one key
        return [7 for _ in keys]

    monkeypatch.setattr("service.store.writer.log_keys", one_key)
    monkeypatch.setattr("service.store.queries.log_keys", one_key)
    db = Database(tmp_path / "r.duckdb")
    writer = _writer(db)
    pairs = [("a", "l1"), ("a", "l2"), ("b", "l1")]
    try:
        logs = [Capture.log_row(p, completion_log(i, "q", "t"), i, T0, "api") for p, i in pairs]
        assert writer.write_sync("logs", logs) == [True] * 3
        for n, (p, i) in enumerate(pairs):
            assert writer.write_sync(
                "feedback", [feedback_row(p, i, T0, end_user="u", fid=f"f{n}", rating=1)]
            ) == [True]
        changed = feedback_row("a", "l2", T1, end_user="u", fid="g", rating=-1)
        assert writer.write_sync("feedback", [changed]) == [True]
        queries = Queries(db)
        seen = {(p, i): [(f.id, f.rating) for f in queries.get_log(p, i).feedback] for p, i in pairs}
        with db.reading() as cur:
            stored = cur.execute("SELECT DISTINCT log_key FROM feedback").fetchall()
    finally:
        writer.stop()
        db.close()
    assert stored == [(7,)]
    assert seen == {("a", "l1"): [("f0", 1)], ("a", "l2"): [("f1", -1)], ("b", "l1"): [("f2", 1)]}


def test_feedback_is_read_by_log_through_the_log_key_index(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb")
    writer = _writer(db)
    try:
        rows = [
            feedback_row("p", f"l{i}", T0, end_user=f"u{i % 3}", fid=f"f{i}", rating=1) for i in range(6000)
        ]
        writer.write_sync("feedback", rows)
        key = log_keys([("p", "l123")])[0]
        with db.reading() as cur:
            plan = cur.execute(f"EXPLAIN ANALYZE {FEEDBACK_BY_LOG_ID}", ["l123", "p", key]).fetchall()[0][1]
            assert "Index Scan" in plan and "Sequential Scan" not in plan and "log_key" in plan, plan
            # The writer's read of stored rows: an IN list of keys, through the same index.
            keys = ", ".join(map(str, log_keys([("p", f"l{i}") for i in range(0, 6000, 12)])))
            plan = cur.execute(
                f"EXPLAIN ANALYZE SELECT * FROM feedback WHERE log_key IN ({keys})"
            ).fetchall()[0][1]
            assert "Index Scan" in plan and "Sequential Scan" not in plan, plan
            with pytest.raises(duckdb.Error):  # the index is the one named in the migration
                cur.execute("CREATE INDEX feedback_log_key ON feedback (log_key)")
    finally:
        writer.stop()
        db.close()
