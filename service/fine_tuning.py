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
  `project@vN`: the job's `fine_tuned_model`.
- **No gate, no canary.** OpenAI hands back a model that the caller then chooses to use; so does
  Ratchet. A job's version is loaded into vLLM and answers the gateway when a request names it
  (`model: "project@vN"`); it routes no traffic of the project's alias and never replaces what
  the project serves by default. To make it the project's default, promote it as any version
  (`POST /v1/adapters/{name}/promote`).
- Job status is read from its run: pending/snapshot -> `validating_files`, training -> `running`,
  then `succeeded`, `cancelled` or `failed` (with the run's error). Cancel is the run's cancel.
  One run per project at a time: a job created while another run is going is refused (409).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
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
from formats.logfile import LogLine
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
from service.capture import utcnow
from service.errors import InvalidFile, InvalidInput, NotFound
from service.importer import parse_line, read_line
from service.pipeline import JOB_TRIGGER, JobPlan
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
_METHODS = {"supervised": ("sft", "openai-chat"), "dpo": ("dpo", "openai-preference")}


def _lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
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


def resolve(request: JobCreate, rows: int) -> tuple[str, Hyperparameters, dict[str, Any]]:
    """The job's method type, its hyperparameters as applied (`auto` resolved) and the run spec
    overrides they make."""
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
    trainer_method = _METHODS[method_type][0]
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
    optim: dict[str, Any] = {
        "max_steps": None, "epochs": float(applied.n_epochs), "batch_size": applied.batch_size,
        "learning_rate": BASE_LEARNING_RATE[trainer_method] * float(applied.learning_rate_multiplier),
    }  # fmt: skip
    if beta not in (None, "auto"):
        optim["beta"] = beta
    spec = {
        "method": trainer_method, "optim": optim, "seed": request.seed or 0, "min_examples": 1,
        "reward_model": None, "parent_adapter": None,
    }  # fmt: skip
    return method_type, applied, spec


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
    """Files and jobs of one server (the domain behind `service/api/fine_tuning.py`). Blocking
    methods read the store; call them off the event loop."""

    def __init__(self, runtime: Runtime, store: FineTuningStore) -> None:
        self.rt = runtime
        self.store = store

    # --- files

    def upload(self, project: str, filename: str, purpose: str, raw: bytes) -> FileObject:
        """Check, keep and list a file (blocking). `InvalidInput` for another purpose,
        `InvalidFile` naming its bad lines."""
        if purpose != PURPOSE:
            raise InvalidInput(f"purpose {purpose!r}: Ratchet keeps files for `fine-tune` only", "purpose")
        fmt, rows = check_file(raw)
        file_id = f"file-{secrets.token_hex(12)}"
        directory = Path(self.rt.settings.data_dir).resolve() / "projects" / project / "files"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{file_id}.jsonl"
        with open(path, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        stored = StoredFile(
            id=file_id, project=project, purpose=purpose, filename=filename or "file.jsonl", bytes=len(raw),
            format=fmt, lines=rows, sha256=hashlib.sha256(raw).hexdigest(), path=str(path), created_at=utcnow(),
        )  # fmt: skip
        try:
            self.store.add_file(stored)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return file_object(stored)

    def delete(self, project: str, file_id: str) -> None:
        """Unlist a file and delete its content (jobs that trained on it keep their snapshots)."""
        stored = self.store.delete_file(project, file_id)
        Path(stored.path).unlink(missing_ok=True)

    def content(self, project: str, file_id: str) -> bytes:
        return Path(self.store.file(project, file_id).path).read_bytes()

    # --- jobs

    async def create(self, project: str, request: JobCreate) -> Job:
        """Start a job: its files are checked against the method, then its run starts.
        `InvalidInput` naming the field, `Conflict` while the project has a run going."""
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
        method_type, applied, spec = resolve(request, training.lines)
        wanted = _METHODS[method_type][1]
        for field, file in (("training_file", training), ("validation_file", validation)):
            if file is not None and file.format != wanted:
                raise InvalidInput(
                    f"{field} {file.id} is a {file.format} file; a {method_type} job needs {wanted} rows "
                    f"({'input / preferred_output / non_preferred_output' if method_type == 'dpo' else 'messages'})",
                    field,
                )
        if not self.rt.project_settings.effective(project).vllm.base_model:
            raise InvalidInput("the server has no base model to fine-tune: set vllm.base_model", "model")
        now = utcnow()

        def snapshot(out: Path) -> SnapshotManifest:
            return write_snapshot(project, training, validation, out, now)

        assert self.rt.pipeline is not None
        run = await self.rt.pipeline.start(project, JOB_TRIGGER, JobPlan(snapshot, spec))
        job = StoredJob(
            id=f"ftjob-{secrets.token_hex(12)}", project=project, run_id=run.id, request=request,
            hyperparameters=applied, created_at=now,
        )  # fmt: skip
        await asyncio.to_thread(self.store.add_job, job)
        return self.view(job, run)

    def _file(self, project: str, file_id: str, field: str) -> StoredFile:
        try:
            return self.store.file(project, file_id)
        except NotFound as exc:
            raise InvalidInput(exc.message, field) from exc

    def job(self, project: str, job_id: str) -> Job:
        stored = self.store.job(project, job_id)
        return self.view(stored, self.rt.runs.get(stored.run_id))

    def jobs(self, project: str, after: str | None, limit: int) -> tuple[list[Job], bool]:
        """A page of jobs, newest first, and whether there are more."""
        stored = self.store.jobs(project, after=after, limit=limit + 1)
        return [self.view(j, self.rt.runs.get(j.run_id)) for j in stored[:limit]], len(stored) > limit

    async def cancel(self, project: str, job_id: str) -> Job:
        """The run's cancel: `Conflict` once the job has ended."""
        stored = await asyncio.to_thread(self.store.job, project, job_id)
        assert self.rt.pipeline is not None
        run = await self.rt.pipeline.cancel(stored.run_id)
        return self.view(stored, run)

    def events(self, project: str, job_id: str, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
        """The job's events, newest first (OpenAI's order), and whether there are more."""
        stored = self.store.job(project, job_id)
        run = self.rt.runs.get(stored.run_id)
        events: list[JobEvent] = []
        for i, (at, kind, detail) in enumerate(self.store.run_events(stored.run_id)):
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
            events.insert(at, JobEvent(
                id=f"ftevent-{stored.id[6:]}-metrics", level="info",
                created_at=events[at - 1].created_at if at else _seconds(run.updated_at) or 0,
                message=f"Step {progress.step}: training loss={progress.loss}", type="metrics",
                data={"step": progress.step, "train_loss": progress.loss},
            ))  # fmt: skip
        events.reverse()
        if after is not None:
            ids = [e.id for e in events]
            if after not in ids:
                raise NotFound(f"no event {after!r} of job {job_id}")
            events = events[ids.index(after) + 1 :]
        return events[:limit], len(events) > limit

    def view(self, stored: StoredJob, run: RunRecord) -> Job:
        """The job as OpenAI shows it, its state read from its run."""
        request = stored.request
        status: JobStatus = _STATUS.get(run.state, "failed")
        method_type = request.method.type if request.method is not None else "supervised"
        hp = stored.hyperparameters
        shown = {k: v for k, v in msgspec.to_builtins(hp).items() if v is not None}
        metrics = run.stats.training.metrics if run.stats.training is not None else {}
        last = metrics.get("last_log")
        tokens = last.get("num_tokens") if isinstance(last, dict) else None  # TRL's count, SFT only
        return Job(
            id=stored.id, created_at=_seconds(stored.created_at) or 0, model=request.model,
            training_file=request.training_file, validation_file=request.validation_file, status=status,
            hyperparameters=hp, method={"type": method_type, method_type: {"hyperparameters": shown}},
            seed=request.seed or 0, user_provided_suffix=request.suffix, metadata=request.metadata,
            integrations=request.integrations,
            fine_tuned_model=run.stats.adapter if status == "succeeded" else None,
            finished_at=_seconds(run.finished_at), trained_tokens=int(tokens) if tokens is not None else None,
            error=JobError(code=f"run_{run.state}", message=run.error or run.state)
            if status == "failed" else None,
        )  # fmt: skip


def file_object(stored: StoredFile) -> FileObject:
    return FileObject(
        id=stored.id, bytes=stored.bytes, created_at=_seconds(stored.created_at) or 0,
        filename=stored.filename, purpose=stored.purpose,
    )  # fmt: skip
