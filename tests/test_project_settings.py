"""Per-project settings over HTTP: validated, recorded, and read by the parts they steer, so two
projects on one server can differ."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.models import SyntheticAdapters
from tests.fixtures.server import RatchetProcess, wait_for
from tests.test_api_capture import chat_log


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"training": {"min_new_ratings": 0}}, "training.min_new_ratings"),
        ({"training": {"method": "ppo"}}, "training.method"),
        ({"training": {"colour": 1}}, "training.colour"),
        ({"online_gate": {"alpha": 1.5}}, "online_gate.alpha"),
        ({"canary_fraction": 0}, "canary_fraction"),
        ({"retention_days": -3}, "retention_days"),
        ({"retention": 3}, "retention"),
        ({"base_model": "x" * 600}, "base_model"),
        ({"base_model": "/models/not-configured"}, "base_model"),
    ],
)
def test_a_bad_value_is_a_422_naming_the_field(ratchet_server: RatchetProcess, body: Any, field: str) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    r = ratchet_server.client(ratchet_server.create_project(name)).patch(
        f"/v1/projects/{name}/settings", json=body
    )
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (422, "invalid_input", field)


def test_overrides_merge_return_to_defaults_and_are_events(ratchet_server: RatchetProcess) -> None:
    c = ratchet_server.client(ratchet_server.create_project("tuned"))
    defaults = c.get("/v1/projects/tuned/settings").json()
    assert defaults["overrides"] == {} and defaults["effective"]["training"]["min_new_ratings"] == 200
    r = c.patch("/v1/projects/tuned/settings", json={"training": {"min_new_ratings": 50, "method": "dpo"},
                                                     "online_gate": {"min_lift": 0.2}, "retention_days": 30})  # fmt: skip
    assert r.status_code == 200, r.text
    r = c.patch("/v1/projects/tuned/settings", json={"training": {"method": None}, "canary_fraction": 0.05})
    got = r.json()
    assert got["overrides"] == {"training": {"min_new_ratings": 50}, "online_gate": {"min_lift": 0.2},
                                "retention_days": 30, "canary_fraction": 0.05}  # fmt: skip
    eff = got["effective"]
    assert (eff["training"]["min_new_ratings"], eff["training"]["method"], eff["online_gate"]["min_lift"]) == (
        50, "auto", 0.2,
    )  # fmt: skip
    assert (eff["online_gate"]["alpha"], eff["canary_fraction"], eff["retention_days"]) == (0.05, 0.05, 30)
    changes = [
        e["detail"]["changed"]
        for e in c.get("/v1/projects/tuned/events").json()
        if e["kind"] == "settings_changed"
    ]
    assert changes[0] == {
        "training.method": {"from": "dpo", "to": "auto"},
        "canary_fraction": {"from": 0.2, "to": 0.05},
    }
    assert changes[1]["training.min_new_ratings"] == {"from": 200, "to": 50}
    assert c.patch("/v1/projects/tuned/settings", json={}).status_code == 200
    assert len([e for e in c.get("/v1/projects/tuned/events").json() if e["kind"] == "settings_changed"]) == 2
    assert c.patch("/v1/projects/tuned/settings", json={"training": None}).json()["overrides"] == {
        "online_gate": {"min_lift": 0.2}, "retention_days": 30, "canary_fraction": 0.05,
    }  # fmt: skip


def _rate(c: httpx.Client, prefix: str, n: int) -> None:
    assert c.post("/v1/logs", json={"logs": [chat_log(f"{prefix}-{i}") for i in range(n)]}).status_code == 202
    fb = [{"log_id": f"{prefix}-{i}", "end_user": f"u{i}", "rating": 1 if i % 2 else -1} for i in range(n)]
    assert c.post("/v1/feedback", json={"feedback": fb}).status_code == 202


def test_two_projects_on_one_server_train_on_their_own_thresholds(start_ratchet: Any) -> None:
    server = start_ratchet(env={"RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "1"})
    eager = server.client(server.create_project("eager"))
    patient = server.client(server.create_project("patient"))
    settings = {"training": {"min_new_ratings": 10, "min_train_rows": 5000}}
    assert eager.patch("/v1/projects/eager/settings", json=settings).status_code == 200
    _rate(eager, "e", 20)
    _rate(patient, "p", 20)  # the same signal, but the global threshold of 200 ratings applies
    run = wait_for(lambda: eager.get("/v1/runs").json(), 30, "the signal check to start eager's run")[0]
    assert run["trigger"] == "signal"
    run = wait_for(
        lambda: (r := eager.get(f"/v1/runs/{run['id']}").json())["state"] == "failed" and r,
        30,
        "the run to end",
    )
    assert (
        run["error"].startswith("too little signal") and "5000 needed" in run["error"]
    )  # its own min_train_rows
    time.sleep(2)  # two more signal checks
    assert patient.get("/v1/runs").json() == []


@pytest.mark.slow
def test_two_projects_canary_at_their_own_fraction(
    tmp_path: Path, vllm_server: Any, tiny_model_dir: Path, random_adapters: SyntheticAdapters
) -> None:
    env = {
        "RATCHET_VLLM__URLS": f'["{vllm_server.base_url}"]',
        "RATCHET_VLLM__BASE_SERVED_NAME": vllm_server.model_name,
        "RATCHET_VLLM__BASE_MODEL": str(tiny_model_dir),
    }
    server = RatchetProcess(tmp_path / "data", env=env).start()
    admin = server.client(timeout=180)
    try:
        fractions = {"fa": 0.5, "fb": None}
        for project, fraction in fractions.items():
            server.create_project(project)
            wait_for(lambda p=project: admin.get(f"/v1/projects/{p}/rollout").json()["champion"] == f"{p}@v0",
                     240, f"{project}@v0")  # fmt: skip
            if fraction is not None:
                assert (
                    admin.patch(
                        f"/v1/projects/{project}/settings", json={"canary_fraction": fraction}
                    ).status_code
                    == 200
                )
        for i, project in enumerate(fractions):
            target = server.data_dir / "adapters" / project / "mine"
            shutil.copytree(random_adapters.random[i], target)
            r = admin.post(f"/v1/projects/{project}/adapters", json={"path": str(target), "canary": True})
            assert r.status_code == 201, r.text
        got = {p: admin.get(f"/v1/projects/{p}/rollout").json()["fraction"] for p in fractions}
        assert got == {"fa": 0.5, "fb": 0.2}
    finally:
        server.stop()
        vllm_server.unload_adapters(*fractions)


def test_the_online_gate_applies_each_projects_own_policy(tmp_path: Path) -> None:
    """The same live thumbs on two canaries: the project that asks for 100 ratings per arm keeps
    collecting, the one that asks for 10 promotes."""
    from datetime import UTC, datetime

    from deploy.rollout import Rollout
    from service.app import build_runtime
    from service.capture import Capture
    from service.config import Settings
    from tests.fixtures.rows import completion_log, feedback_row

    runtime = build_runtime(Settings(data_dir=str(tmp_path / "data")))
    runtime.project_settings.set("quick", {"online_gate": {"min_ratings": 10}}, "")
    started = datetime(2026, 11, 1)
    logs, feedback = [], []
    for project in ("quick", "slow"):
        for arm, up_every in (("v2", 1), ("v1", 3)):  # canary: all up; champion: a third up
            for i in range(30):
                log_id = f"{project}-{arm}-{i}"
                item = completion_log(log_id, "q", "a", adapter=f"{project}@{arm}")
                logs.append(Capture.log_row(project, item, log_id, started, "api"))
                rating = 1 if i % up_every == 0 else -1
                feedback.append(feedback_row(project, log_id, started, end_user=f"u{i}", rating=rating))
        runtime.rollouts.routing[project] = Rollout(
            project=project, champion=f"{project}@v1", candidate=f"{project}@v2", fraction=0.2,
            canary_started_at=started.replace(tzinfo=UTC).timestamp() - 1,
        )  # fmt: skip
    runtime.writer.start()
    try:
        runtime.writer.write_sync("logs", logs)
        runtime.writer.write_sync("feedback", feedback)
        now = started.replace(tzinfo=UTC).timestamp() + 3600
        verdicts = {p: runtime.rollouts.online_verdict(p, now) for p in ("quick", "slow")}
    finally:
        runtime.writer.stop()
        runtime.db.close()
    assert (verdicts["quick"].outcome, verdicts["slow"].reason) == ("promote", "below_min_ratings")
