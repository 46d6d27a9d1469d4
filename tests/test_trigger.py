"""The new-signal rule: a pure decision from counts and the previous run, and the counts it uses."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

from service.app import build_runtime
from service.capture import Capture
from service.config import Settings, TrainingSettings
from service.domain import NewSignal
from service.store.rows import FeedbackRow
from service.store.runs import RunRecord
from service.trigger import decide_run
from tests.fixtures.rows import completion_log, feedback_row

POLICY = TrainingSettings(min_new_ratings=200, min_new_corrections=5, min_minority_share=0.1,
                          run_cooldown_seconds=600)  # fmt: skip
T0 = datetime(2026, 11, 1, 12)
ENOUGH = NewSignal(since=None, rated=300, up=200, down=100, corrections=10)


def run(state: str, started: datetime, finished: datetime | None = None) -> RunRecord:
    return RunRecord(id="run-1", project="p", trigger="signal", state=state, started_at=started,  # type: ignore[arg-type]
                     updated_at=finished or started, finished_at=finished)  # fmt: skip


def test_enough_new_signal_and_no_previous_run_starts_one() -> None:
    decision = decide_run(T0, ENOUGH, None, POLICY)
    assert decision.start, decision.reason


def test_each_threshold_holds_a_run_back() -> None:
    few = NewSignal(None, rated=199, up=150, down=49, corrections=10)
    no_corrections = NewSignal(None, rated=300, up=200, down=100, corrections=4)
    one_sided = NewSignal(None, rated=300, up=280, down=20, corrections=10)  # 6.7% < 10%
    for signal in (few, no_corrections, one_sided):
        decision = decide_run(T0, signal, None, POLICY)
        assert not decision.start, signal
    assert "rarer thumb" in decide_run(T0, one_sided, None, POLICY).reason


def test_a_bulk_import_starts_one_run_then_waits_for_it_and_its_cooldown() -> None:
    # A million new ratings pour in: the first check starts a run...
    flood = NewSignal(None, rated=1_000_000, up=600_000, down=400_000, corrections=50_000)
    assert decide_run(T0, flood, None, POLICY).start
    # ...later checks find it active, however much more arrived since it started,
    active = run("snapshot", T0)
    assert not decide_run(T0 + timedelta(minutes=5), flood, active, POLICY).start
    # then within its cooldown once it ended (failed here, as runs without a base model do),
    ended = run("failed", T0, finished=T0 + timedelta(minutes=6))
    assert not decide_run(T0 + timedelta(minutes=15), flood, ended, POLICY).start
    # and only then does signal newer than that run start the next one.
    assert decide_run(T0 + timedelta(minutes=16), flood, ended, POLICY).start
    quiet = NewSignal(T0, rated=10, up=5, down=5, corrections=0)
    assert not decide_run(T0 + timedelta(minutes=16), quiet, ended, POLICY).start


def test_new_signal_counts_only_feedback_received_after_the_cutoff_on_logs_that_exist(tmp_path: Path) -> None:
    runtime = build_runtime(Settings(data_dir=str(tmp_path)))
    runtime.writer.start()

    def feedback(
        log: str, user: str, at: datetime, rating: int | None, correction: str | None = None
    ) -> FeedbackRow:
        return feedback_row("p", log, at, end_user=user, fid=f"f-{log}-{user}-{at:%H%M}", rating=rating,
                            correction=correction)  # fmt: skip

    async def write(rows: list[FeedbackRow]) -> None:
        await runtime.writer.write("feedback", rows)

    def logs(ids: list[str], at: datetime) -> None:
        runtime.writer.write_sync(
            "logs", [Capture.log_row("p", completion_log(i, "q", "a"), i, at, "api") for i in ids]
        )

    try:
        old = T0 - timedelta(hours=1)
        logs([f"l{i}" for i in range(50)] + ["l100", "l101", "l102"], old)
        asyncio.run(write([feedback(f"l{i}", "u", old, 1) for i in range(50)]))
        asyncio.run(write([feedback("l100", "u", T0 + timedelta(minutes=1), -1, "better"),
                           feedback("l101", "u", T0 + timedelta(minutes=2), 1),
                           feedback("l102", "v", T0 + timedelta(minutes=3), None, "only a correction"),
                           feedback("l3", "u", T0 + timedelta(minutes=4), -1),  # a changed thumb counts again
                           feedback("l9", "other", T0 + timedelta(minutes=4), 1)]))  # fmt: skip
        assert runtime.queries.count_new_signal("p", T0) == NewSignal(
            T0, rated=4, up=2, down=2, corrections=2
        )
        assert runtime.queries.count_new_signal("p", None).rated == 53
        assert runtime.queries.count_new_signal("q", None) == NewSignal(None, 0, 0, 0, 0)
        # Feedback for a log that has not arrived waits: it counts once the log is stored, even
        # when the feedback itself came before the cutoff (issue 13: orphans are not signal).
        asyncio.run(
            write([feedback("late", "w", old, 1), feedback("late2", "w", T0 + timedelta(minutes=5), 1)])
        )
        assert runtime.queries.count_new_signal("p", T0).rated == 4
        logs(["late", "late2"], T0 + timedelta(minutes=6))
        assert runtime.queries.count_new_signal("p", T0) == NewSignal(
            T0, rated=6, up=4, down=2, corrections=2
        )
    finally:
        runtime.writer.stop()
        runtime.db.close()
