"""The run pipeline: signal triggers, single flight, restart safety, and the gate rejecting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from demo import tiny_world
from service.app import build_pipeline, build_runtime
from service.capture import Capture
from service.config import Settings, TrainingSettings
from tests.fixtures.rows import chat_log, feedback_row
from tests.fixtures.server import RatchetProcess, wait_for


def rated_rows(project: str, n: int, up_share: float) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    now = datetime(2026, 11, 1)
    logs, feedback = [], []
    for i, q in enumerate(tiny_world.sample_questions("train", n, seed=3)):
        log = chat_log(f"l{i}", q.messages, q.fact)
        logs.append(Capture.log_row(project, log, f"l{i}", now, "api"))
        rating = 1 if i < n * up_share else -1
        feedback.append(
            feedback_row(project, f"l{i}", now, end_user=f"u{i % 30}", fid=f"f{i}", rating=rating)
        )
    return logs, feedback


def test_signal_check_respects_thresholds_and_runs_one_at_a_time(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=str(tmp_path),
        training=TrainingSettings(min_new_ratings=50, min_minority_share=0.1, min_train_rows=10_000),
    )
    runtime = build_runtime(settings)
    runtime.queries.create_project(*_project("quiet"))
    runtime.queries.create_project(*_project("busy"))
    runtime.projects |= {"quiet", "busy"}
    pipeline = build_pipeline(runtime)
    runtime.writer.start()

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        logs, fb = rated_rows("busy", 60, up_share=0.5)
        await runtime.writer.write("logs", logs)
        await runtime.writer.write("feedback", fb)
        quiet_logs, quiet_fb = rated_rows("quiet", 30, up_share=0.5)  # below the threshold
        await runtime.writer.write("logs", quiet_logs)
        await runtime.writer.write("feedback", quiet_fb)
        first = await pipeline.check_signal(datetime(2026, 11, 2))
        second = await pipeline.check_signal(datetime(2026, 11, 2))  # the run is still going
        await asyncio.gather(*pipeline._tasks.values())
        third = await pipeline.check_signal(datetime(2026, 11, 3))  # signal was consumed by the run
        return first, second, third

    try:
        first, second, third = asyncio.run(scenario())
    finally:
        runtime.writer.stop()
    assert len(first) == 1 and second == [] and third == []
    run = runtime.runs.get(first[0])
    assert (run.project, run.trigger, run.state) == ("busy", "signal", "failed")
    assert "too little signal" in (run.error or "")
    assert run.stats.snapshot is not None and run.stats.snapshot.joined_rows == 60
    kinds = [e.kind for e in runtime.serving.events("busy")]
    assert kinds[::-1] == ["run_started", "run_snapshot", "run_failed"]


def _project(name: str) -> Any:
    from service.auth import mint_key
    from service.domain import Project

    now = datetime(2026, 11, 1)
    return Project(name, "", now), mint_key(name, now)[1]


@pytest.fixture
def loop_server(tmp_path: Path, vllm_server: Any, tiny_model_dir: Path) -> Iterator[RatchetProcess]:
    data = tmp_path / "data"
    env = {
        "RATCHET_VLLM__URLS": f'["{vllm_server.base_url}"]',
        "RATCHET_VLLM__BASE_SERVED_NAME": vllm_server.model_name,
        "RATCHET_VLLM__BASE_MODEL": str(tiny_model_dir),
        "RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "3600",  # runs are started by hand here
        "RATCHET_TRAINING__MIN_TRAIN_ROWS": "16",
        "RATCHET_TRAINING__EVAL_MAX_EXAMPLES": "40",
        "RATCHET_TRAINING__SPEC_OVERRIDES": '{"method": "sft", "min_examples": 8, "optim": {"max_steps": 2}}',
        # The reward model trains and joins the gate as in production, in 5 steps instead of 50:
        # what it learns is tests/test_trainer_reward.py's, not this test's.
        "RATCHET_FEEDBACK_GATE__REWARD_MAX_STEPS": "5",
    }
    server = RatchetProcess(data, env=env)
    yield server
    server.stop()


def test_kill_during_training_then_a_run_no_better_is_rejected(loop_server: RatchetProcess) -> None:
    server = loop_server.start()
    key = server.create_project("loop")
    api = server.client(key)
    rules = {"role": "primary", "rules": [{"name": "upper", "when_prompt_matches": "(?i)uppercase",
                                           "must_match": "^[^a-z]*[A-Z][^a-z]*$"}]}  # fmt: skip
    assert api.put("/v1/projects/loop/gate", json={"rules": rules, "min_samples": 5}).json()["version"] == 1
    logs, feedback = [], []
    for i, q in enumerate(tiny_world.sample_questions("train", 120, seed=5, upper_fraction=0.5)):
        answer = q.fact  # the base's habit: plain case; users wanted uppercase when they asked
        logs.append({"id": f"l{i}", "end_user": f"u{i % 20}", "request": {"messages": q.messages},
                     "response": {"choices": [{"message": {"role": "assistant", "content": answer}}]}})  # fmt: skip
        liked = tiny_world.user_likes(q.messages, answer)
        feedback.append({"log_id": f"l{i}", "end_user": f"u{i % 20}", "rating": 1 if liked else -1,
                         **({} if liked else {"correction": q.answer})})  # fmt: skip
    assert api.post("/v1/logs", json={"logs": logs}).status_code == 202
    assert api.post("/v1/feedback", json={"feedback": feedback}).status_code == 202
    wait_for(lambda: api.get("/v1/projects/loop/rollout").json()["champion"] == "loop@v0", 120, "version 0")

    def ask() -> httpx.Response:
        return api.post("/v1/chat/completions", json={"model": "loop", "max_tokens": 4,
                                                       "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip

    assert ask().status_code == 200
    run_id = api.post("/v1/projects/loop/runs").json()["id"]
    assert api.post("/v1/projects/loop/runs").status_code == 409  # single flight
    wait_for(lambda: api.get(f"/v1/runs/{run_id}").json()["state"] == "training", 120, "training to start")
    server.kill()
    server.start()
    # Ready once the serving adapters are loaded again; until then the gateway answers 503.
    wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 120, "ready after the restart")
    run = api.get(f"/v1/runs/{run_id}").json()
    assert run["state"] == "failed" and "restart" in run["error"]
    r = ask()
    assert r.status_code == 200, r.text  # serving survived, v0 reloaded or still there

    second = api.post("/v1/projects/loop/runs").json()["id"]
    done = wait_for(
        lambda: (r := api.get(f"/v1/runs/{second}").json())["state"] not in
        ("pending", "snapshot", "training", "evaluating") and r,
        600, "the second run to finish",
    )  # fmt: skip
    assert done["state"] == "rejected", done
    assert done["stats"]["eval"]["promote"] is False
    progress = done["stats"]["progress"]  # where training ended, not the last step written in passing
    assert progress["step"] == progress["total_steps"], progress
    assert api.get("/v1/projects/loop/rollout").json()["champion"] == "loop@v0"
    markdown = api.get(f"/v1/runs/{second}/report")
    assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
    heading = markdown.text.splitlines()[0]
    assert heading.endswith("— **DO NOT PROMOTE**"), heading  # the gate's own verdict, not a failure
    assert adapter_state(api, done["stats"]["adapter"]) == "rejected"
    # The hand-written rules joined by the feedback evidence; each scorer says whether it could decide.
    gate = done["stats"]["eval"]
    assert gate["gate_config_version"] == 1 and gate["evidence"].startswith("rules (primary), joined by")
    assert {"rules", "references", "degenerate_answers"} <= gate["scorers"].keys(), gate
    assert all(s["eligibility"] for s in gate["scorers"].values()), gate
    report = api.get(f"/v1/runs/{second}/report.json").json()
    assert [r["name"] for r in report["results"]] == list(gate["scorers"])
    # The reward model trained in the trainer process beside the adapter, and judged on the holdout.
    reward = done["stats"]["training"]["reward_model"]
    assert "wall_time_s" in reward or "skipped" in reward, reward
    print("adapter", done["stats"]["training"]["adapter_wall_time_s"], "s; reward model", reward)
    # Label order in the exposition is the library's (sorted in some versions): compare label sets.
    samples = {
        (s.name, tuple(sorted(s.labels.items())))
        for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
        for s in family.samples
    }
    assert ("ratchet_gate_scorer_eligible", (("project", "loop"), ("scorer", "references"))) in samples
    if "wall_time_s" in reward:
        assert "learned_judge" in gate["scorers"], gate
        calibration = gate["scorers"]["learned_judge"]["calibration"]
        if calibration is not None and calibration["auc"] is not None:
            labels = (("measure", "auc"), ("project", "loop"), ("scorer", "learned_judge"))
            assert ("ratchet_gate_judge_calibration", labels) in samples
    assert ask().status_code == 200

    # An evaluation that cannot give a verdict fails the run; it is not a "no". Here vLLM refuses
    # every generation (more tokens than the model allows). (A judge that is down is not asked
    # when both versions answer alike, as an adapter trained 2 steps may: no failure to show.)
    config = {"rules": rules, "min_samples": 5, "generation": {"max_tokens": 1_000_000}}
    assert api.put("/v1/projects/loop/gate", json=config).json()["version"] == 2
    third = api.post("/v1/projects/loop/runs").json()["id"]
    failed = wait_for(
        lambda: (r := api.get(f"/v1/runs/{third}").json())["state"] in FINISHED and r, 600, "run 3"
    )
    assert failed["state"] == "failed", failed
    assert failed["error"].startswith("evaluation failed: vLLM at ") and ": 400 " in failed["error"], failed
    assert adapter_state(api, failed["stats"]["adapter"]) == "candidate"  # kept for a retry
    assert metric(server, "ratchet_runs_total", project="loop", outcome="failed") == 1
    assert metric(server, "ratchet_runs_total", project="loop", outcome="rejected") == 1
    assert metric(server, "ratchet_gate_decisions_total", project="loop", decision="reject") == 1
    assert api.get("/v1/projects/loop/rollout").json()["champion"] == "loop@v0"
    assert ask().status_code == 200

    # A run cancelled while it trains: its trainer is stopped, serving is untouched.
    fourth = api.post("/v1/projects/loop/runs").json()["id"]
    wait_for(lambda: trainer_running(fourth), 120, "run 4's trainer to start")
    r = api.post(f"/v1/runs/{fourth}/cancel")
    assert (r.status_code, r.json()["state"]) == (200, "cancelled"), r.text
    assert not trainer_running(fourth)
    assert not (server.data_dir / "adapters" / "loop" / fourth).exists()
    assert api.get(f"/v1/runs/{fourth}").json()["state"] == "cancelled"
    assert metric(server, "ratchet_runs_total", project="loop", outcome="cancelled") == 1
    r = api.post(f"/v1/runs/{fourth}/cancel")
    assert r.status_code == 409 and "cancelled" in r.json()["message"], r.text
    r = api.post(f"/v1/runs/{second}/cancel")
    assert r.status_code == 409 and "rejected" in r.json()["message"], r.text
    assert api.get("/v1/projects/loop/rollout").json()["champion"] == "loop@v0"
    assert ask().status_code == 200


def trainer_running(run_id: str) -> bool:
    """Whether a `python -m trainer run .../<run_id>/spec.json` process is alive."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"trainer" in cmdline and any(f"/{run_id}/spec.json".encode() in part for part in cmdline):
            try:
                return (proc / "stat").read_text().split(") ")[1][0] != "Z"
            except OSError:
                continue
    return False


FINISHED = ("promoted", "rejected", "rolled_back", "failed", "cancelled")


def adapter_state(api: httpx.Client, served_name: str) -> str:
    return next(a["state"] for a in api.get("/v1/adapters").json() if a["served_name"] == served_name)


def metric(server: RatchetProcess, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{wanted}}} in /metrics")
