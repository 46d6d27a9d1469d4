"""OpenAI's fine-tuning API backed by Ratchet's runs: an app moving off OpenAI changes `base_url`
and the model name, nothing else.

- **Files** (`purpose: fine-tune`): an OpenAI fine-tuning file, chat (supervised) or preference
  (DPO), checked line by line with the importer's own rules (`service.importer.parse_line`:
  `formats.finetuning` then the server's log checks) before it is kept; a bad file is refused
  whole (`InvalidFile`, 400) naming each bad line and what to fix. The content is written and
  fsynced under `<data_dir>/projects/<project>/files/` before its row is committed, so a listed
  file is always there, and a project's deletion takes it.
- **Jobs**: a job is a run (`Pipeline.start` with a `JobPlan`): the training file becomes the
  run's snapshot (`train.parquet`; the validation file, if any, `holdout.parquet`), the trainer
  trains the job's method (`supervised` -> sft, `dpo` -> dpo) from the project's base model with
  the job's hyperparameters, and the adapter is registered as the project's next version
  `project@vN`. The job's `fine_tuned_model` is that name, or with a `suffix`
  `project:suffix@vN`, as OpenAI puts the suffix in the model's name (`ft:base:org:suffix:id`):
  the gateway answers to both names (`served_name`), with the same adapter. A suffix is OpenAI's
  (at most 64 characters) made of letters, digits, `.`, `_` and `-` (`:` and `@` delimit the name).
- **No gate, no canary.** OpenAI hands back a model that the caller then chooses to use; so does
  Ratchet. A job's version is loaded into vLLM and answers the gateway when a request names it
  (`model: "project@vN"`); it routes no traffic of the project's alias and never replaces what
  the project serves by default. To make it the project's default, promote it as any version
  (`POST /v1/adapters/{name}/promote`).
- **Queued, as on OpenAI.** One run per project at a time: a job created while its project has a
  run going (a job's, the scheduler's, or one in canary) is stored `queued`, without a run, and
  gets one when the project is free, oldest job first: at the end of the run before it
  (`Pipeline._finish`), at start-up (queued jobs survive a restart: they are rows), and at the
  latest at the next signal check. Queued jobs go before the scheduler's own runs: a project with
  a queued job gets no signal or cron run until its queue is empty (the signal is not lost: a
  job's run does not consume it, `Pipeline.signal_decision`). Cancelling a queued job cancels it
  without a run.
- Job status is read from its run: pending/snapshot -> `validating_files`, training -> `running`,
  then `succeeded`, `cancelled` or `failed` (with the run's error); without a run, `queued` or
  `cancelled`. Cancel is the run's cancel. A queued job whose file was deleted before its run
  started fails, naming the file.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq

from formats.chat import ChatMessage
from formats.finetuning import detect
from formats.log import Message, text_message
from formats.logfile import UTF8_BOM, LogLine
from formats.openai_jobs import (
    FileObject,
    Hyperparameters,
    Job,
    JobCreate,
    JobError,
    JobEvent,
    JobStatus,
)
from formats.snapshot import (
    FILES,
    MANIFEST,
    SNAPSHOT_SCHEMA_VERSION,
    SnapshotFile,
    SnapshotManifest,
    SnapshotRow,
    SnapshotStats,
    file_sha256,
    rows_to_table,
    snapshot_sha256,
)
from service.clock import utcnow
from service.errors import Conflict, InvalidFile, InvalidInput, NotFound
from service.importer import parse_line, read_line
from service.pipeline import JOB_TRIGGER, JobPlan, RunFailed
from service.runtime import Runtime
from service.store.fine_tuning import FineTuningStore, StoredFile, StoredJob
from service.store.runs import RunRecord

PURPOSE = "fine-tune"
MAX_REPORTED_LINES = 20
"""Bad lines named in a refused file's error (the count of all of them is given too)."""
DEFAULT_EPOCHS = 3
DEFAULT_BATCH_SIZE = 16
BASE_LEARNING_RATE = {"sft": 1e-3, "dpo": 5e-4}
"""The trainer's default learning rates (trainer/spec.py `OptimSpec.learning_rate`), which
`learning_rate_multiplier` scales."""
SUFFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A job's `suffix`: OpenAI's length, in characters a model name can carry between `:` and `@`."""
_METHODS = {"supervised": ("sft", "openai-chat"), "dpo": ("dpo", "openai-preference")}


def _lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    for lineno, line in enumerate(raw.removeprefix(UTF8_BOM).split(b"\n"), start=1):
        if line.strip():
            yield lineno, line


def file_format(raw: bytes) -> str:
    """`openai-preference` when the first row is a preference row, else `openai-chat` (a row of
    only `messages` is a chat row here: the files API takes OpenAI's formats only)."""
    first = next((line for _, line in _lines(raw)), b"")
    return "openai-preference" if detect(first) == "openai-preference" else "openai-chat"


def check_file(raw: bytes) -> tuple[str, int]:
    """The file's format and row count; `InvalidFile` naming the bad lines (each line is checked
    as `ratchet import` checks it) when any is bad, or when the file has no rows."""
    fmt = file_format(raw)
    problems: list[dict[str, Any]] = []
    rows = 0
    for lineno, line in _lines(raw):
        rows += 1
        try:
            parse_line(line, lineno, fmt)
        except InvalidInput as exc:
            problems.append({"line": lineno, "message": exc.message})
    if rows == 0:
        raise InvalidFile(
            "the file has no rows: one JSON object per line, in OpenAI's fine-tuning format", "file"
        )
    if problems:
        named = "; ".join(p["message"] for p in problems[:MAX_REPORTED_LINES])
        more = (
            f" (and {len(problems) - MAX_REPORTED_LINES} more)" if len(problems) > MAX_REPORTED_LINES else ""
        )
        kind = "preference (DPO)" if fmt == "openai-preference" else "chat (supervised)"
        raise InvalidFile(
            f"{len(problems)} of {rows} lines are not valid OpenAI fine-tuning {kind} rows{more}: {named}. "
            "Fix those lines and upload the file again",
            "file",
            detail=problems[:MAX_REPORTED_LINES],
        )
    return fmt, rows


def _message(m: dict[str, Any]) -> Message:
    return text_message(msgspec.convert(m, ChatMessage))


def _snapshot_row(line: LogLine, log_id: str, at: datetime) -> SnapshotRow | None:
    """A file row as a snapshot row; None for one nothing is learned from (`weight: 0`)."""
    if line.rating is None and line.correction is None:
        return None
    messages = line.messages or []
    return SnapshotRow(
        log_id=log_id, prompt=[_message(m) for m in messages[:-1]], completion=_message(messages[-1]),
        created_at=at, tools=line.tools, rating=line.rating, correction=line.correction,
    )  # fmt: skip


def write_snapshot(
    project: str, training: StoredFile, validation: StoredFile | None, out_dir: Path, now: datetime
) -> SnapshotManifest:
    """The job's files as a snapshot in `out_dir` (replaced): the training file's rows are
    `train.parquet`, the validation file's `holdout.parquet` (empty without one). Rows with
    nothing to learn (an answer of `weight: 0`) are counted as quarantined `weight_0`."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    skipped = 0
    files: dict[str, SnapshotFile] = {}
    for name, source in zip(FILES, (training, validation), strict=True):
        rows: list[SnapshotRow] = []
        if source is not None:
            raw = Path(source.path).read_bytes()
            for lineno, line in _lines(raw):
                row = _snapshot_row(read_line(line, lineno, source.format).line, f"{source.id}:{lineno}", now)
                if row is None:
                    skipped += 1
                else:
                    rows.append(row)
        pq.write_table(rows_to_table(rows), tmp / name, compression="zstd")
        files[name] = SnapshotFile(rows=len(rows), sha256=file_sha256(tmp / name))
    stats = SnapshotStats(
        joined_rows=files[FILES[0]].rows + files[FILES[1]].rows + skipped,
        quarantined={"weight_0": skipped} if skipped else {},
        train_rows=files[FILES[0]].rows,
        holdout_rows=files[FILES[1]].rows,
    )
    manifest = SnapshotManifest(
        schema_version=SNAPSHOT_SCHEMA_VERSION, project=project, created_at=now, files=files,
        sha256=snapshot_sha256(files), stats=stats,
    )  # fmt: skip
    (tmp / MANIFEST).write_bytes(msgspec.json.encode(manifest))
    if out_dir.exists():
        for child in out_dir.iterdir():
            child.unlink()
        out_dir.rmdir()
    os.replace(tmp, out_dir)
    return manifest


def resolve(request: JobCreate, rows: int) -> tuple[str, Hyperparameters]:
    """The job's method type and its hyperparameters as applied (`auto` resolved)."""
    method_type = request.method.type if request.method is not None else "supervised"
    given: Any = request.hyperparameters
    if request.method is not None:
        section = getattr(request.method, method_type)
        if section is not None:
            given = section.hyperparameters
        if request.hyperparameters is not None and section is not None:
            raise InvalidInput(
                "give the hyperparameters in `method`, not also at the top level", "hyperparameters"
            )
        if request.method.type == "supervised" and request.method.dpo is not None:
            raise InvalidInput("`method.dpo` given for a supervised job", "method.dpo")
        if request.method.type == "dpo" and request.method.supervised is not None:
            raise InvalidInput("`method.supervised` given for a DPO job", "method.supervised")
    n_epochs = getattr(given, "n_epochs", "auto")
    batch_size = getattr(given, "batch_size", "auto")
    multiplier = getattr(given, "learning_rate_multiplier", "auto")
    beta = getattr(given, "beta", "auto") if method_type == "dpo" else None
    applied = Hyperparameters(
        n_epochs=DEFAULT_EPOCHS if n_epochs == "auto" else n_epochs,
        batch_size=min(DEFAULT_BATCH_SIZE, max(rows, 1)) if batch_size == "auto" else batch_size,
        learning_rate_multiplier=1.0 if multiplier == "auto" else multiplier,
        beta=beta,
    )
    return method_type, applied


def job_spec(method_type: str, applied: Hyperparameters, seed: int, validation: bool) -> dict[str, Any]:
    """The run spec overrides a job's applied hyperparameters make; `validation`: the loss on the
    validation file's rows (the snapshot's holdout) is computed at every logged step."""
    trainer_method = _METHODS[method_type][0]
    optim: dict[str, Any] = {
        "max_steps": None, "epochs": float(applied.n_epochs), "batch_size": applied.batch_size,
        "learning_rate": BASE_LEARNING_RATE[trainer_method] * float(applied.learning_rate_multiplier),
    }  # fmt: skip
    if applied.beta not in (None, "auto"):
        optim["beta"] = applied.beta
    return {
        "method": trainer_method, "optim": optim, "seed": seed, "min_examples": 1,
        "reward_model": None, "parent_adapter": None, "validation": validation,
    }  # fmt: skip


RESULTS_PURPOSE = "fine-tune-results"
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
"""OpenAI's result file (`step_metrics.csv`): one row per logged step. Ratchet's figures: TRL's
training `loss` and `mean_token_accuracy` (SFT only) of the step, and `eval_loss` and
`eval_mean_token_accuracy` on the validation file, when the job has one and evaluated that step."""
_RESULT_SOURCES = ("step", "loss", "mean_token_accuracy", "eval_loss", "eval_mean_token_accuracy")


def results_csv(history: list[dict[str, Any]]) -> bytes:
    """The result file's content from the trainer's per-step `history`; a figure a step has not
    is left empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in history:
        writer.writerow(["" if row.get(k) is None else row[k] for k in _RESULT_SOURCES])
    return out.getvalue().encode()


_STATUS: dict[str, JobStatus] = {
    "pending": "validating_files", "snapshot": "validating_files", "training": "running",
    "evaluating": "running", "canary": "running", "succeeded": "succeeded", "cancelled": "cancelled",
}  # fmt: skip
_EVENT_TEXT = {
    "run_started": ("info", "Created fine-tuning job"),
    "run_snapshot": ("info", "Validating training file"),
    "run_training": ("info", "Fine-tuning job started"),
    "adapter_registered": ("info", "New fine-tuned model created"),
    "run_succeeded": ("info", "The job has successfully completed"),
    "run_cancelled": ("info", "The job was cancelled"),
    "run_failed": ("error", "The job failed"),
}


def _seconds(at: datetime | None) -> int | None:
    """Unix seconds of a stored (naive UTC) time."""
    return None if at is None else int(at.replace(tzinfo=UTC).timestamp())


class FineTuning:
    """Files and jobs of one server (the domain behind `service/api/fine_tuning.py`), and the
    pipeline's queue of jobs (`service.pipeline.JobQueue`): one per server (`Runtime.fine_tuning`).
    Blocking methods read the store; call them off the event loop."""

    def __init__(self, runtime: Runtime, store: FineTuningStore) -> None:
        self.rt = runtime
        self.store = store
        # Per project: a job is started, or cancelled while queued, by one coroutine at a time.
        self._locks: dict[str, asyncio.Lock] = {}
        self._aliases: dict[str, str] = {}  # project:suffix@vN -> project@vN, once checked

    # --- files

    def upload(self, project: str, filename: str, purpose: str, raw: bytes) -> FileObject:
        """Check, keep and list a file (blocking). `InvalidInput` for another purpose,
        `InvalidFile` naming its bad lines."""
        if purpose != PURPOSE:
            raise InvalidInput(f"purpose {purpose!r}: Ratchet keeps files for `fine-tune` only", "purpose")
        fmt, rows = check_file(raw)
        stored = self._write_file(project, purpose, filename or "file.jsonl", fmt, raw, rows)
        try:
            self.store.add_file(stored)
        except BaseException:
            Path(stored.path).unlink(missing_ok=True)
            raise
        return file_object(stored)

    def _write_file(
        self, project: str, purpose: str, filename: str, fmt: str, raw: bytes, rows: int
    ) -> StoredFile:
        """Write a file's content (fsynced) under the project's directory; the caller lists it."""
        file_id = f"file-{secrets.token_hex(12)}"
        directory = Path(self.rt.settings.data_dir).resolve() / "projects" / project / "files"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{file_id}.{'csv' if fmt == 'csv' else 'jsonl'}"
        with open(path, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        return StoredFile(
            id=file_id, project=project, purpose=purpose, filename=filename, bytes=len(raw), format=fmt,
            lines=rows, sha256=hashlib.sha256(raw).hexdigest(), path=str(path), created_at=utcnow(),
        )  # fmt: skip

    def delete(self, project: str, file_id: str) -> None:
        """Unlist a file and delete its content (jobs that trained on it keep their snapshots)."""
        stored = self.store.delete_file(project, file_id)
        Path(stored.path).unlink(missing_ok=True)

    def content(self, project: str, file_id: str) -> tuple[bytes, str]:
        """A file's content and media type (a job's result file is CSV, an upload JSON lines)."""
        stored = self.store.file(project, file_id)
        return Path(stored.path).read_bytes(), "text/csv" if stored.format == "csv" else "application/jsonl"

    # --- jobs

    async def create(self, project: str, request: JobCreate) -> Job:
        """Store a job, its files checked against its method, and start its run, or queue it
        behind the project's run and earlier queued jobs. `InvalidInput` naming the field."""
        if request.model not in (project, self.rt.project_settings.effective(project).vllm.base_served_name):
            raise InvalidInput(
                f"`model` {request.model!r}: name the project ({project!r}), the model alias your app "
                "calls; training starts from its base model",
                "model",
            )
        training = await asyncio.to_thread(self._file, project, request.training_file, "training_file")
        validation = None
        if request.validation_file is not None:
            validation = await asyncio.to_thread(
                self._file, project, request.validation_file, "validation_file"
            )
        method_type, applied = resolve(request, training.lines)
        wanted = _METHODS[method_type][1]
        for field, file in (("training_file", training), ("validation_file", validation)):
            if file is not None and file.format != wanted:
                raise InvalidInput(
                    f"{field} {file.id} is a {file.format} file; a {method_type} job needs {wanted} rows "
                    f"({'input / preferred_output / non_preferred_output' if method_type == 'dpo' else 'messages'})",
                    field,
                )
        if request.suffix is not None and not SUFFIX.fullmatch(request.suffix):
            raise InvalidInput(
                f"`suffix` {request.suffix!r}: use letters, digits, `.`, `_` and `-` only (it becomes part "
                "of the model's name, project:suffix@vN)",
                "suffix",
            )
        if not self.rt.project_settings.effective(project).vllm.base_model:
            raise InvalidInput("the server has no base model to fine-tune: set vllm.base_model", "model")
        job = StoredJob(
            id=f"ftjob-{secrets.token_hex(12)}", project=project, run_id=None, request=request,
            hyperparameters=applied, created_at=utcnow(),
        )  # fmt: skip
        await asyncio.to_thread(self.store.add_job, job)
        await self.start_next(project)  # this job, if the project is free and nothing queued before it
        return await asyncio.to_thread(self.job, project, job.id)

    async def served_name(self, model: str) -> str:
        """The version (`project@vN`) a fine-tuned model's name (`project:suffix@vN`) names.
        `NotFound` unless a job of the project with that suffix trained that version."""
        if (known := self._aliases.get(model)) is not None:
            return known
        head, _, version = model.partition("@")
        project, _, suffix = head.partition(":")
        served = f"{project}@{version}"
        if await asyncio.to_thread(self.store.version_suffix, project, served) != suffix:
            raise NotFound(
                f"model {model!r} does not exist: a fine-tuning job's model is named as its "
                "`fine_tuned_model` says (GET /v1/fine_tuning/jobs)"
            )
        self._aliases[model] = served  # a version's suffix never changes
        return served

    # --- the queue (`service.pipeline.JobQueue`)

    def waiting(self, project: str) -> bool:
        return self.store.next_queued(project) is not None

    async def start_next(self, project: str) -> RunRecord | None:
        """Start the run of the project's oldest queued job; None when there is none, or the
        project has a run going (the job stays queued), or is being deleted (its runs are stopped
        first: their end must not start the queue)."""
        async with self._locks.setdefault(project, asyncio.Lock()):
            if project not in self.rt.projects:
                return None
            job = await asyncio.to_thread(self.store.next_queued, project)
            if job is None:
                return None
            assert self.rt.pipeline is not None
            try:
                run = await self.rt.pipeline.start(project, JOB_TRIGGER, self.plan(job))
            except Conflict:
                return None
            # A crash before this line leaves the run to be failed by recovery and the job queued.
            await asyncio.to_thread(self.store.set_run, job.id, run.id)
            return run

    async def start_queued(self) -> list[str]:
        """At start-up: start every free project's oldest queued job. Returns the runs' ids."""
        started = []
        for project in await asyncio.to_thread(self.store.queued_projects):
            if (run := await self.start_next(project)) is not None:
                started.append(run.id)
        return started

    def plan(self, job: StoredJob) -> JobPlan:
        """What the job's run is given: its files as the snapshot (read when the run starts) and
        its hyperparameters, as applied when it was created, as the spec."""
        request = job.request
        method_type = request.method.type if request.method is not None else "supervised"

        def snapshot(out: Path) -> SnapshotManifest:
            training = self._kept(job, request.training_file, "training_file")
            validation = None
            if request.validation_file is not None:
                validation = self._kept(job, request.validation_file, "validation_file")
            return write_snapshot(job.project, training, validation, out, job.created_at)

        spec = job_spec(
            method_type, job.hyperparameters, request.seed or 0, request.validation_file is not None
        )
        return JobPlan(snapshot, spec, keep_results=lambda run: self._keep_results(job, run))

    def _keep_results(self, job: StoredJob, run: RunRecord) -> None:
        """Keep the trained job's metrics as its result file (`results_csv`)."""
        metrics = run.stats.training.metrics if run.stats.training is not None else {}
        raw = results_csv(metrics.get("history") or [])
        stored = self._write_file(job.project, RESULTS_PURPOSE, "step_metrics.csv", "csv", raw,
                                  raw.count(b"\n") - 1)  # fmt: skip
        try:
            self.store.add_result_file(job.id, stored)
        except BaseException:
            Path(stored.path).unlink(missing_ok=True)
            raise

    def _kept(self, job: StoredJob, file_id: str, field: str) -> StoredFile:
        try:
            return self.store.file(job.project, file_id)
        except NotFound:
            raise RunFailed(
                f"{field} {file_id} was deleted before job {job.id} started: upload it again and "
                "create a new job"
            ) from None

    def _file(self, project: str, file_id: str, field: str) -> StoredFile:
        try:
            return self.store.file(project, file_id)
        except NotFound as exc:
            raise InvalidInput(exc.message, field) from exc

    def _run(self, stored: StoredJob) -> RunRecord | None:
        return None if stored.run_id is None else self.rt.runs.get(stored.run_id)

    def job(self, project: str, job_id: str) -> Job:
        stored = self.store.job(project, job_id)
        return self.view(stored, self._run(stored))

    def jobs(self, project: str, after: str | None, limit: int) -> tuple[list[Job], bool]:
        """A page of jobs, newest first, and whether there are more."""
        stored = self.store.jobs(project, after=after, limit=limit + 1)
        return [self.view(j, self._run(j)) for j in stored[:limit]], len(stored) > limit

    async def cancel(self, project: str, job_id: str) -> Job:
        """A queued job is cancelled without a run; a started one by its run's cancel.
        `Conflict` once the job has ended."""
        async with self._locks.setdefault(project, asyncio.Lock()):  # not while it is being started
            stored = await asyncio.to_thread(self.store.job, project, job_id)
            if stored.run_id is None:
                if not await asyncio.to_thread(self.store.cancel_queued, job_id, utcnow()):
                    raise Conflict(f"job {job_id} has already been cancelled")
                return await asyncio.to_thread(self.job, project, job_id)
        assert self.rt.pipeline is not None
        run = await self.rt.pipeline.cancel(stored.run_id)
        return self.view(stored, run)

    def events(self, project: str, job_id: str, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
        """The job's events, newest first (OpenAI's order), and whether there are more."""
        stored = self.store.job(project, job_id)
        run = self._run(stored)
        events = self._queue_events(stored) if run is None else self._run_events(stored, run)
        events.reverse()
        if after is not None:
            ids = [e.id for e in events]
            if after not in ids:
                raise NotFound(f"no event {after!r} of job {job_id}")
            events = events[ids.index(after) + 1 :]
        return events[:limit], len(events) > limit

    def _run_events(self, stored: StoredJob, run: RunRecord) -> list[JobEvent]:
        """A job's run's events and its last training step's figures, oldest first."""
        events: list[JobEvent] = []
        for i, (at, kind, detail) in enumerate(self.store.run_events(run.id)):
            level, text = _EVENT_TEXT.get(kind, ("info", kind.replace("_", " ")))
            if kind == "run_failed" and detail.get("error"):
                text = f"{text}: {detail['error']}"
            if kind == "adapter_registered":
                text = f"{text}: {detail.get('adapter')}"
            events.append(JobEvent(id=f"ftevent-{stored.id[6:]}-{i}", created_at=_seconds(at) or 0,
                                   level=level, message=text, data=detail or None))  # fmt: skip
        progress = run.stats.progress
        if progress is not None:  # training's last step, after its start
            at = next((i + 1 for i, e in enumerate(events) if e.message == _EVENT_TEXT["run_training"][1]), 0)
            data = {"step": progress.step, "total_steps": progress.total_steps, "train_loss": progress.loss,
                    "train_mean_token_accuracy": progress.logs.get("mean_token_accuracy"),
                    "valid_loss": progress.logs.get("eval_loss"),
                    "valid_mean_token_accuracy": progress.logs.get("eval_mean_token_accuracy")}  # fmt: skip
            message = f"Step {progress.step}/{progress.total_steps}: training loss={progress.loss}"
            if data["valid_loss"] is not None:
                message += f", validation loss={data['valid_loss']}"
            events.insert(at, JobEvent(
                id=f"ftevent-{stored.id[6:]}-metrics", level="info",
                created_at=events[at - 1].created_at if at else _seconds(run.updated_at) or 0,
                message=message, type="metrics", data={k: v for k, v in data.items() if v is not None},
            ))  # fmt: skip
        return events

    @staticmethod
    def _queue_events(stored: StoredJob) -> list[JobEvent]:
        """A job without a run: created, queued, and cancelled if it was; oldest first."""
        at = _seconds(stored.created_at) or 0
        events = [
            JobEvent(id=f"ftevent-{stored.id[6:]}-q0", created_at=at, level="info", message="Created fine-tuning job"),
            JobEvent(id=f"ftevent-{stored.id[6:]}-q1", created_at=at, level="info",
                     message="Job queued: it starts when the project's current run ends"),
        ]  # fmt: skip
        if stored.cancelled_at is not None:
            events.append(JobEvent(id=f"ftevent-{stored.id[6:]}-q2", created_at=_seconds(stored.cancelled_at) or 0,
                                   level="info", message=_EVENT_TEXT["run_cancelled"][1]))  # fmt: skip
        return events

    def view(self, stored: StoredJob, run: RunRecord | None) -> Job:
        """The job as OpenAI shows it, its state read from its run (`queued` until it has one)."""
        request = stored.request
        method_type = request.method.type if request.method is not None else "supervised"
        hp = stored.hyperparameters
        shown = {k: v for k, v in msgspec.to_builtins(hp).items() if v is not None}
        common: dict[str, Any] = dict(
            id=stored.id, created_at=_seconds(stored.created_at) or 0, model=request.model,
            training_file=request.training_file, validation_file=request.validation_file,
            hyperparameters=hp, method={"type": method_type, method_type: {"hyperparameters": shown}},
            seed=request.seed or 0, user_provided_suffix=request.suffix, metadata=request.metadata,
            integrations=request.integrations,
        )  # fmt: skip
        if run is None:
            status: JobStatus = "queued" if stored.cancelled_at is None else "cancelled"
            return Job(**common, status=status, finished_at=_seconds(stored.cancelled_at))
        status = _STATUS.get(run.state, "failed")
        metrics = run.stats.training.metrics if run.stats.training is not None else {}
        last = metrics.get("last_log")
        tokens = last.get("num_tokens") if isinstance(last, dict) else None  # TRL's count, SFT only
        return Job(
            **common, status=status,
            fine_tuned_model=model_name(run.stats.adapter, request.suffix) if status == "succeeded" else None,
            finished_at=_seconds(run.finished_at), trained_tokens=int(tokens) if tokens is not None else None,
            result_files=[stored.result_file] if stored.result_file else [],
            error=JobError(code=f"run_{run.state}", message=run.error or run.state)
            if status == "failed" else None,
        )  # fmt: skip


def model_name(served_name: str | None, suffix: str | None) -> str | None:
    """A job's `fine_tuned_model`: its version's name, with the suffix before the version."""
    if served_name is None or not suffix:
        return served_name
    project, _, version = served_name.partition("@")
    return f"{project}:{suffix}@{version}"


def file_object(stored: StoredFile) -> FileObject:
    return FileObject(
        id=stored.id, bytes=stored.bytes, created_at=_seconds(stored.created_at) or 0,
        filename=stored.filename, purpose=stored.purpose,
    )  # fmt: skip
