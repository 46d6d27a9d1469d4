"""The online gate counts each end user's first `max_ratings_per_user` thumbs: one user flooding
the canary with thumbs-down cannot roll it back alone (real DuckDB, the service's own runtime)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec

from deploy.rollout import Rollout
from service.app import build_runtime
from service.capture import Capture
from service.config import Settings
from service.domain import LogIn
from tests.fixtures.rows import feedback_row

REQUEST = msgspec.Raw(b'{"prompt": "q"}')
RESPONSE = msgspec.Raw(b'{"choices": [{"text": "a"}]}')


def test_a_flooding_user_counts_only_up_to_the_cap(tmp_path: Path) -> None:
    runtime = build_runtime(Settings(data_dir=str(tmp_path / "data")))
    runtime.project_settings.set(
        "capped", {"online_gate": {"min_ratings": 20, "max_ratings_per_user": 5}}, ""
    )
    runtime.project_settings.set(
        "uncapped", {"online_gate": {"min_ratings": 20, "max_ratings_per_user": 1000}}, ""
    )
    started = datetime(2026, 11, 1)
    logs, feedback = [], []

    def rate(project: str, arm: str, log_id: str, user: str, rating: int) -> None:
        item = LogIn(request=REQUEST, response=RESPONSE, adapter=f"{project}@{arm}")
        logs.append(Capture.log_row(project, item, log_id, started, "api"))
        feedback.append(feedback_row(project, log_id, started, end_user=user, rating=rating))

    for project in ("capped", "uncapped"):
        for i in range(60):  # honest users: the canary is liked, the champion a third of the time
            rate(project, "v2", f"{project}-c{i}", f"u{i}", 1)
            rate(project, "v1", f"{project}-m{i}", f"w{i}", 1 if i % 3 == 0 else -1)
        for i in range(120):  # one user floods the canary with thumbs-down
            rate(project, "v2", f"{project}-flood{i}", "flooder", -1)
        runtime.rollouts.routing[project] = Rollout(
            project=project, champion=f"{project}@v1", candidate=f"{project}@v2", fraction=0.5,
            canary_started_at=started.replace(tzinfo=UTC).timestamp() - 1,
        )  # fmt: skip
    runtime.writer.start()
    try:
        runtime.writer.write_sync("logs", logs)
        runtime.writer.write_sync("feedback", feedback)
        counts = runtime.serving.arm_counts("capped", "capped@v2", started, per_user=5)
        now = started.replace(tzinfo=UTC).timestamp() + 3600
        verdicts = {p: runtime.rollouts.online_verdict(p, now) for p in ("capped", "uncapped")}
    finally:
        runtime.writer.stop()
        runtime.db.close()
    assert (counts.up, counts.down) == (60, 5)
    assert verdicts["capped"].outcome == "promote", verdicts["capped"]
    assert verdicts["uncapped"].outcome != "promote", verdicts["uncapped"]
