"""The lake tier: old logs move to Hive-partitioned Parquet files and every reader still sees them.

In-process on a real DuckDB file (written by the service's own writer): a snapshot and an export
read the same rows before and after the move; a move cut short at each step is finished or undone
by the next start. Real server processes: an archived log is returned, exported, snapshotted,
counted when feedback arrives later, and erased (no archive file holds the person afterwards); a
`kill -9` while a large move runs loses no log and counts none twice. A log id re-sent after its
log was archived is a duplicate on every ingest path, and a point read opens only the file that
holds the log (the archive's id look-up, service/store/archive_index.py)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow.parquet as pq
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from formats.snapshot import iter_rows
from service.capture import Capture
from service.config import SnapshotSettings
from service.errors import ArchiveUnavailable, NotFound, StoreUnavailable
from service.metrics import Metrics
from service.store.archive import Archive
from service.store.db import Database
from service.store.erasure import Erasures
from service.store.export import LogExport
from service.store.queries import Queries
from service.store.snapshot import export_snapshot
from service.store.writer import GroupCommitWriter
from tests.fixtures.otel import recording_provider
from tests.fixtures.rows import chat_log
from tests.fixtures.server import RatchetProcess, wait_for
from tests.test_erasure import PERSON, SECRET, cut_snapshot, everything_in_store, files_holding, person_log
from tests.test_import_export import run as run_cli
from tests.test_otlp_traces import exporter, semconv_span
from tests.test_snapshot import NOW, T0, Feed

SETTINGS = SnapshotSettings(scrub_pii=False, holdout_fraction=0.25, min_user_cap=1000)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "r.duckdb")
    yield database
    database.close()


def fill(db: Database, n: int = 60) -> Feed:
    """`n` rated logs, one a minute from 2026-11-01 (so over a day boundary), 4 end users."""
    feed = Feed(db)
    for i in range(n):
        feed.add(f"question {i}", f"answer {i}", user=f"u{i % 4}", rating=1 if i % 3 else -1)
        feed.n += 20  # ~40 minutes between logs: 60 logs span two days
    feed.writer.stop()
    return feed


def hot_logs(db: Database) -> int:
    with db.reading() as cur:
        return int(cur.execute("SELECT count(*) FROM logs").fetchone()[0])


def snapshot_rows(db: Database, out: Path, archive: Archive | None) -> list[tuple[Any, ...]]:
    manifest = export_snapshot(db, "p", out, SETTINGS, now=NOW, archive=archive)
    rows = [
        (name, r.log_id, r.rating, r.end_user, json.dumps(r.prompt, default=str), r.created_at)
        for name in ("train.parquet", "holdout.parquet")
        for r in iter_rows(out / name)
    ]
    assert len(rows) == manifest.stats.train_rows + manifest.stats.holdout_rows
    return sorted(rows)


def export_lines(db: Database, archive: Archive | None) -> list[str]:
    export = LogExport(db, "p", "jsonl", archive=archive)
    return sorted(b"".join(export).decode().splitlines())


def archive_all(archive: Archive, cutoff: datetime = NOW) -> int:
    return sum(archive.move_day("p", day, cutoff, NOW).rows for day in archive.days_before("p", cutoff))


def test_snapshot_and_export_read_archived_logs_as_they_read_hot_ones(db: Database, tmp_path: Path) -> None:
    fill(db)
    archive = Archive(db, str(tmp_path / "lake"), file_rows=25, delete_batch_rows=7)
    before_snapshot = snapshot_rows(db, tmp_path / "s1", archive)
    before_export = export_lines(db, archive)
    assert len(before_snapshot) == 60 and len(before_export) == 60

    # Half the history first (a cutoff inside the second day), then the rest.
    first = archive_all(archive, datetime(2026, 11, 1, 20))
    assert 0 < first < 60 and hot_logs(db) == 60 - first
    assert snapshot_rows(db, tmp_path / "s2", archive) == before_snapshot
    assert export_lines(db, archive) == before_export
    assert archive_all(archive) == 60 - first
    assert hot_logs(db) == 0

    assert snapshot_rows(db, tmp_path / "s3", archive) == before_snapshot
    assert export_lines(db, archive) == before_export
    files = sorted(
        p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*.parquet")
    )
    assert files and all(
        re.fullmatch(r"project=p/day=2026-11-0[12]/\d{12}-[0-9a-f]{8}\.parquet", f) for f in files
    )
    # The standard lake layout: a plain DuckDB reads it as one table, partitioned by project and day.
    lake = duckdb.sql(
        f"SELECT project, count(*), count(DISTINCT id) FROM read_parquet('{tmp_path}/lake/**/*.parquet',"
        " hive_partitioning = true) GROUP BY project"
    ).fetchall()
    assert lake == [("p", 60, 60)]
    # Without the archive the readers see only the (now empty) table: the rows really moved.
    assert export_lines(db, None) == []


def test_a_move_killed_before_its_commit_is_undone_and_after_it_finished(
    db: Database, tmp_path: Path
) -> None:
    fill(db, 30)
    archive = Archive(db, str(tmp_path / "lake"), file_rows=100, delete_batch_rows=4)
    day = archive.days_before("p", NOW)[0]
    expected = export_lines(db, archive)

    # Killed after the file was written, before it was listed: invisible, then deleted.
    orphan = archive._write_chunk("p", day, NOW)
    assert orphan is not None and (tmp_path / "lake" / orphan.path).exists()
    assert export_lines(db, archive) == expected
    assert Archive(db, str(tmp_path / "lake")).recover() == 1
    assert not (tmp_path / "lake" / orphan.path).exists()
    assert hot_logs(db) == 30 and export_lines(db, archive) == expected

    # Killed after the commit, one delete batch in: every log counted once, then the move finished.
    file = archive._write_chunk("p", day, NOW)
    assert file is not None
    archive._list(file, NOW)
    with db.transaction() as cur:
        cur.execute("DELETE FROM logs WHERE id IN (SELECT id FROM logs ORDER BY id LIMIT 4)")
    assert export_lines(db, archive) == expected
    with db.reading() as cur:
        archive.shadow_logs(cur, "p")
        assert cur.execute("SELECT count(*), count(DISTINCT id) FROM logs").fetchone() == (30, 30)
    assert Archive(db, str(tmp_path / "lake")).recover() == 1
    with db.reading() as cur:
        assert [f.state for f in archive.files(cur)] == ["done"]
    assert export_lines(db, archive) == expected
    assert hot_logs(db) == 30 - file.rows


def test_the_id_look_up_reads_only_the_file_holding_the_log_and_follows_moves_erasure_and_kills(
    db: Database, tmp_path: Path
) -> None:
    """Every other archive file made unreadable: a point read and the writer's duplicate check
    still answer (they open only the file the look-up names; an id not archived opens none)."""
    fill(db)
    lake = tmp_path / "lake"
    archive = Archive(db, str(lake), file_rows=25, delete_batch_rows=7)
    day = archive.days_before("p", NOW)[0]
    # Killed after the commit, before any delete: the re-opened archive's look-up has the file.
    file = archive._write_chunk("p", day, NOW)
    assert file is not None
    archive._list(file, NOW)
    with db.reading() as cur:
        ids = [i for (i,) in cur.execute(f"SELECT id FROM {archive.source([file])}").fetchall()]
    restarted = Archive(db, str(lake), file_rows=25)
    assert restarted.archived("p", [*ids, "log-99999"]) == set(ids)
    assert restarted.recover() == 1 and archive_all(restarted) == 60 - len(ids)
    archive = Archive(db, str(lake), file_rows=25, delete_batch_rows=7)
    with db.reading() as cur:
        files = archive.files(cur)
    assert len(files) >= 3 and sum(f.rows for f in files) == 60 and hot_logs(db) == 0

    wanted = ids[3]
    for other in files:
        if other.path != file.path:
            (lake / other.path).rename(lake / f"{other.path}.away")
    queries = Queries(db, archive)
    assert queries.get_log("p", wanted).id == wanted
    with pytest.raises(NotFound):
        queries.get_log("p", "log-99999")
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=100, max_queue_rows=1000, archive=archive)
    writer.start()
    try:  # re-sent: a duplicate, not a second row; a new id beside it is stored
        assert writer.write_sync("logs", [log_row(wanted), log_row("log-fresh"), log_row(wanted)]) == [
            False,
            True,
            False,
        ]
    finally:
        writer.stop()
    assert hot_logs(db) == 1
    for other in files:
        if other.path != file.path:
            (lake / f"{other.path}.away").rename(lake / other.path)

    # The file holding the log gone too: a point read names it (503), ingest goes on and the
    # look-up alone keeps the re-sent id a duplicate.
    (lake / file.path).rename(lake / f"{file.path}.away")
    with pytest.raises(ArchiveUnavailable, match=re.escape(file.path)):
        queries.get_log("p", wanted)
    writer = GroupCommitWriter(db, Metrics(), max_batch_rows=100, max_queue_rows=1000, archive=archive)
    writer.start()
    try:
        assert writer.write_sync("logs", [log_row(wanted), log_row("log-fresh-2")]) == [False, True]
    finally:
        writer.stop()
    with pytest.raises(StoreUnavailable, match=re.escape(file.path)):  # a 503, not a 500
        export_lines(db, archive)
    (lake / f"{file.path}.away").rename(lake / file.path)

    # Erasure rewrites the files; the look-up follows, in memory and as stored in the manifest.
    def archived_users() -> dict[str, str]:
        with db.reading() as cur:
            return dict(
                cur.execute(f"SELECT id, end_user FROM {archive.source(archive.files(cur))}").fetchall()
            )

    gone = [i for i, user in archived_users().items() if user == "u1"]
    erasures = Erasures(db, tmp_path / "runs", 10, archive)
    erased = erasures.erase_end_user("p", "u1", NOW, "test")
    erasures.finish(erased.job)
    users = archived_users()
    assert len(gone) == 15 and len(users) == 45 and not set(gone) & set(users)
    for look_up in (archive, Archive(db, str(lake))):
        assert look_up.archived("p", [*gone, *users]) == set(users)
        assert look_up.index.size() == 45
    assert Queries(db, archive).get_log("p", next(iter(users))).id == next(iter(users))
    with pytest.raises(NotFound):
        Queries(db, archive).get_log("p", gone[0])


def log_row(log_id: str) -> Any:
    log = chat_log(log_id, [{"role": "user", "content": "again"}], "same id", created_at=NOW, end_user="u9")
    return Capture.log_row("p", log, log_id, NOW, "api")


def test_late_feedback_and_evaluations_find_their_archived_log(db: Database, tmp_path: Path) -> None:
    """The version that answered an archived log (for the feedback metrics' `adapter` label) and
    the log an OTLP evaluation names by span alone are found in the archive, as in the table."""
    fill(db, n=8)
    otel = [chat_log(f"span-log-{i}", [{"role": "user", "content": f"q{i}"}], f"a{i}", created_at=NOW,
                     end_user=f"u{i}", adapter=f"p@v{5 + i}", metadata={"otel": {"trace_id": f"t{i}", "span_id": f"s{i}"}})
            for i in range(2)]  # fmt: skip
    feed = Feed(db)
    feed.writer.write_sync("logs", [Capture.log_row("p", log, log.id, T0, "otlp") for log in otel])
    feed.writer.stop()
    archive = Archive(db, str(tmp_path / "lake"), file_rows=5)
    queries = Queries(db, archive)
    with db.reading() as cur:
        hot_ids = [
            i for (i,) in cur.execute("SELECT id FROM logs WHERE source = 'api' ORDER BY id").fetchall()
        ]
    wanted = [hot_ids[0], "span-log-1", "log-99999"]
    spans = [("t0", "s0"), ("t1", "s1"), ("t1", "s0"), ("t9", "s9")]
    hot = (queries.log_adapters("p", wanted), queries.logs_of_spans("p", spans))
    assert hot == (
        {hot_ids[0]: "p@v1", "span-log-1": "p@v6"},
        {("t0", "s0"): ("span-log-0", "u0"), ("t1", "s1"): ("span-log-1", "u1")},
    )
    assert archive_all(archive, datetime(2030, 1, 1)) == 10 and hot_logs(db) == 0
    assert (queries.log_adapters("p", wanted), queries.logs_of_spans("p", spans)) == hot


def test_erasure_and_retention_rewrite_the_archive_files(db: Database, tmp_path: Path) -> None:
    fill(db)  # 60 logs from 2026-11-01 00:00, 22 minutes apart; end users u0-u3
    archive = Archive(db, str(tmp_path / "lake"), file_rows=25, delete_batch_rows=7)
    assert archive_all(archive) == 60 and hot_logs(db) == 0
    erasures = Erasures(db, tmp_path / "runs", 10, archive)

    erased = erasures.erase_end_user("p", "u1", NOW, "test")
    assert (erased.logs, erased.feedback) == (15, 15)
    erasures.finish(erased.job)
    lines = export_lines(db, archive)
    assert len(lines) == 45 and not any('"u1"' in line for line in lines)
    assert "'u1'" not in archived_text(tmp_path / "lake") and "'u2'" in archived_text(tmp_path / "lake")

    cutoff = datetime(2026, 11, 1, 10)
    expired = erasures.expire("p", cutoff, NOW)
    assert 0 < expired.logs < 45
    erasures.finish(expired.job)
    with db.reading() as cur:
        archive.shadow_logs(cur, "p")
        logs, oldest = cur.execute("SELECT count(*), min(received_at) FROM logs").fetchone()
        (feedback,) = cur.execute("SELECT count(*) FROM feedback").fetchone()
    assert (logs, feedback) == (45 - expired.logs, 45 - expired.logs) and oldest >= cutoff
    with db.reading() as cur:
        listed = archive.files(cur)
    assert sum(f.rows for f in listed) == logs
    stored = sorted(
        p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*.parquet*")
    )
    assert stored == sorted(f.path for f in listed)  # the old versions of rewritten files are gone


def metric(server: RatchetProcess, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def archived_text(root: Path) -> str:
    """Every value of every archive file, decoded (zstd hides text from a byte search)."""
    return "\n".join(str(pq.read_table(p).to_pylist()) for p in sorted(root.rglob("*.parquet")))


def test_archived_logs_are_read_exported_snapshotted_counted_and_erased(start_ratchet: Any) -> None:
    # Everything received before now moves, checked every second.
    server = start_ratchet(env={"RATCHET_ARCHIVE__AFTER_DAYS": "0", "RATCHET_ARCHIVE__INTERVAL_SECONDS": "1"})
    c = server.client(server.create_project("lake"))
    logs = [person_log(f"z-{i}", PERSON, f"{SECRET} question {i}") for i in range(30)]
    logs += [person_log(f"a-{i}", "ann", f"ann question {i}") for i in range(30)]
    assert c.post("/v1/logs", json={"logs": logs}).status_code == 202
    feedback = [{"log_id": f"z-{i}", "end_user": PERSON, "rating": 1 if i % 3 else -1} for i in range(30)]
    feedback += [{"log_id": f"a-{i}", "end_user": "ann", "rating": 1 if i % 4 else -1} for i in range(20)]
    feedback += [{"log_id": "z-1", "end_user": "ann", "rating": 1}]  # someone else's, on the person's log
    assert c.post("/v1/feedback", json={"feedback": feedback}).status_code == 202
    wait_for(lambda: metric(server, "ratchet_archive_rows_total") >= 60, 30, "the logs to be archived")
    root = server.data_dir / "archive"
    assert SECRET in archived_text(root) and list(root.glob("project=lake/day=*/*.parquet"))

    got = c.get("/v1/logs/z-3")
    assert got.status_code == 200, got.text
    assert got.json()["request"]["messages"][0]["content"] == f"{SECRET} question 3"
    assert [f["rating"] for f in got.json()["feedback"]] == [-1]
    assert c.get("/v1/projects/lake/stats").json()["logs"] == 60
    export = c.get("/v1/projects/lake/export")
    assert export.headers["x-ratchet-rows"] == "61" and SECRET in export.text
    run = cut_snapshot(c, "lake")
    snapshot = server.data_dir / "runs" / run / "snapshot"
    trained = [r.log_id for name in ("train.parquet", "holdout.parquet") for r in iter_rows(snapshot / name)]
    assert any(i.startswith("z-") for i in trained) and any(i.startswith("a-") for i in trained)

    # Feedback after archiving attaches to the archived logs and is new signal.
    stats = c.get("/v1/projects/lake/stats").json()
    assert stats["new_rated_since_last_run"] == 0
    late = [{"log_id": f"a-{i}", "end_user": "ann", "rating": -1} for i in range(20, 30)]
    assert c.post("/v1/feedback", json={"feedback": late}).status_code == 202
    stats = c.get("/v1/projects/lake/stats").json()
    assert (stats["new_rated_since_last_run"], stats["orphan_feedback"]) == (10, 0)
    assert [f["rating"] for f in c.get("/v1/logs/a-25").json()["feedback"]] == [-1]

    r = c.delete(f"/v1/projects/lake/end-users/{PERSON}")
    assert r.status_code == 200, r.text
    assert (r.json()["logs_deleted"], r.json()["feedback_deleted"]) == (30, 31)
    assert r.json()["snapshots_deleted"] == [run]
    assert c.get("/v1/logs/z-3").status_code == 404
    assert c.get("/v1/logs/a-3").status_code == 200
    assert c.get("/v1/projects/lake/stats").json()["logs"] == 30
    for fmt in ("jsonl", "parquet"):
        body = c.get("/v1/projects/lake/export", params={"format": fmt}).content
        assert SECRET.encode() not in body and PERSON.encode() not in body
    text = archived_text(root)
    assert "ann question 3" in text  # the others' logs are still archived
    assert SECRET not in text and PERSON not in text
    server.stop()
    assert not files_holding(server.data_dir, SECRET) and not files_holding(server.data_dir, PERSON)
    stored = everything_in_store(server.data_dir / "ratchet.duckdb")
    assert SECRET not in stored and PERSON not in stored


def test_an_archived_log_id_sent_again_is_a_duplicate_on_every_ingest_path(
    start_ratchet: Any, tmp_path: Path
) -> None:
    """Single and batch POST, a gateway replica's shipping, `ratchet import` and OTLP spans: each
    stores a log once; once archived, the same id again is `duplicate` (before the look-up it was
    stored a second time), and an erased archived log's id is new again."""
    server = start_ratchet(env={"RATCHET_ARCHIVE__AFTER_DAYS": "0", "RATCHET_ARCHIVE__INTERVAL_SECONDS": "1"})
    key = server.create_project("dup")
    c = server.client(key)
    logs = [person_log(f"d-{i}", "gone" if i == 5 else "u", f"question {i}") for i in range(6)]
    assert c.post("/v1/logs", json={"logs": logs}).json()["accepted"] == 6
    provider, memory = recording_provider()
    semconv_span(provider.get_tracer("t"), "chatcmpl-dup-otlp")
    spans = memory.get_finished_spans()
    assert exporter(server, key).export(spans) is SpanExportResult.SUCCESS
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": f"a{i}"},
                    ],
                    "created_at": "2026-10-01T12:00:00Z",
                }
            )
            + "\n"
            for i in range(3)
        )
    )
    out, _ = run_cli(server, key, "import", str(chats))
    assert "3 new logs, 0 already there" in out, out
    wait_for(lambda: metric(server, "ratchet_archive_rows_total") >= 10, 30, "the logs to be archived")
    with server.client() as admin:
        assert admin.get("/v1/projects/dup/stats").json()["logs"] == 10

        assert c.post("/v1/logs", json=logs[0]).json()["results"][0]["status"] == "duplicate"
        batch = c.post("/v1/logs", json={"logs": [logs[1], person_log("d-new", "u", "new"), logs[2]]}).json()
        assert [r["status"] for r in batch["results"]] == ["duplicate", "accepted", "duplicate"]
        shipped = admin.post(
            "/v1/logs", params={"project": "dup", "source": "gateway"}, json={"logs": logs[3:5]}
        )
        assert [r["status"] for r in shipped.json()["results"]] == ["duplicate", "duplicate"], shipped.text
        out, _ = run_cli(server, key, "import", str(chats))
        assert "0 new logs, 3 already there" in out, out
        logged = otlp_spans(server, "logged")
        assert exporter(server, key).export(spans) is SpanExportResult.SUCCESS
        assert otlp_spans(server, "logged") == logged

        assert admin.get("/v1/projects/dup/stats").json()["logs"] == 11
        exported = [json.loads(line)["id"] for line in c.get("/v1/projects/dup/export").text.splitlines()]
        assert len(exported) == len(set(exported)) == 11
        assert c.get("/v1/logs/d-4").json()["request"]["messages"][0]["content"] == "question 4"

        # Erased from its archive file: gone from the look-up too, so the id is new again.
        assert c.delete("/v1/projects/dup/end-users/gone").json()["logs_deleted"] == 1
        assert c.get("/v1/logs/d-5").status_code == 404
        again = c.post("/v1/logs", json={"logs": [logs[5], logs[4]]}).json()
        assert [r["status"] for r in again["results"]] == ["accepted", "duplicate"]


def otlp_spans(server: RatchetProcess, outcome: str) -> float:
    return metric(server, re.escape(f'ratchet_otlp_spans_total{{outcome="{outcome}"}}'))


def test_deleting_a_project_deletes_its_archive(start_ratchet: Any) -> None:
    server = start_ratchet(env={"RATCHET_ARCHIVE__AFTER_DAYS": "0", "RATCHET_ARCHIVE__INTERVAL_SECONDS": "1"})
    c = server.client(server.create_project("gone"))
    keep = server.client(server.create_project("kept"))
    logs = [person_log(f"g-{i}", "u", f"{SECRET} {i}") for i in range(10)]
    assert c.post("/v1/logs", json={"logs": logs}).status_code == 202
    assert keep.post("/v1/logs", json={"logs": [person_log("k-1", "u", "kept question")]}).status_code == 202
    wait_for(lambda: metric(server, "ratchet_archive_rows_total") >= 11, 30, "the logs to be archived")
    with server.client() as admin:
        assert admin.delete("/v1/projects/gone").status_code == 200
    root = server.data_dir / "archive"
    assert not (root / "project=gone").exists()
    assert SECRET not in archived_text(root) and "kept question" in archived_text(root)


def count_everywhere(data_dir: Path) -> tuple[int, int, int]:
    """(logs in the DuckDB file, logs in the files the manifest lists, distinct ids over both),
    with the server stopped."""
    db = Database(data_dir / "ratchet.duckdb")
    try:
        archive = Archive(db, str(data_dir / "archive"))
        with db.reading() as cur:
            (hot,) = cur.execute("SELECT count(*) FROM logs").fetchone()
            files = archive.files(cur)
            listed = sum(f.rows for f in files)
            archive.shadow_logs(cur)
            (distinct,) = cur.execute("SELECT count(DISTINCT id) FROM logs").fetchone()
        return int(hot), int(listed), int(distinct)
    finally:
        db.close()


@pytest.mark.parametrize("kill_when", ["written", "listed"])
def test_kill_9_during_a_move_loses_nothing_and_counts_nothing_twice(
    start_ratchet: Any, tmp_path: Path, kill_when: str
) -> None:
    """A move of 3,000 logs whose deletes go one row per transaction (seconds), killed when its
    first file is being written (`.tmp`) or has appeared (the commit follows at once)."""
    data = tmp_path / "data"
    quiet = {"RATCHET_ARCHIVE__AFTER_DAYS": "0", "RATCHET_ARCHIVE__INTERVAL_SECONDS": "3600"}
    server = start_ratchet(env=quiet, data_dir=data)
    c = server.client(server.create_project("big"))
    for start in range(0, 3000, 1000):
        batch = [
            person_log(f"l-{i}", f"u{i % 7}", f"question {i} " + "x" * 400)
            for i in range(start, start + 1000)
        ]
        assert c.post("/v1/logs", json={"logs": batch}).status_code == 202
    server.stop()

    moving = {**quiet, "RATCHET_ARCHIVE__INTERVAL_SECONDS": "1", "RATCHET_ARCHIVE__FILE_ROWS": "1000",
              "RATCHET_ARCHIVE__DELETE_BATCH_ROWS": "1"}  # fmt: skip
    server = start_ratchet(env=moving, data_dir=data)
    pattern = "*.parquet.tmp" if kill_when == "written" else "*.parquet"
    deadline = time.monotonic() + 60
    while not list((data / "archive").rglob(pattern)):  # polled tightly: a .tmp lives ~0.1 s
        assert time.monotonic() < deadline, f"no {pattern} file appeared"
        time.sleep(0.002)
    server.kill()
    hot, listed, distinct = count_everywhere(data)
    assert distinct == 3000 and hot + listed >= 3000  # before recovery: every log somewhere

    server = start_ratchet(env=quiet, data_dir=data)
    assert "archive moves interrupted by the restart" in server.log_tail(100_000)
    c = server.client()
    assert c.get("/v1/projects/big/stats").json()["logs"] == 3000
    export = c.get("/v1/projects/big/export")
    ids = [json.loads(line)["id"] for line in export.text.splitlines()]
    assert len(ids) == len(set(ids)) == 3000
    # Re-sent, archived or not: each a duplicate (the look-up as the manifest left it).
    resent = [person_log(f"l-{i}", "u0", "again") for i in range(0, 3000, 7)]
    assert c.post("/v1/logs", params={"project": "big"}, json={"logs": resent}).json()["duplicates"] == len(
        resent
    )
    server.stop()
    hot, listed, distinct = count_everywhere(data)
    assert (hot + listed, distinct) == (3000, 3000)  # after recovery: each log in exactly one place
    stored = {
        p.relative_to(data / "archive").as_posix() for p in (data / "archive").rglob("*") if p.is_file()
    }
    assert len(stored) == listed // 1000 if listed else not stored  # no orphan or half file left
