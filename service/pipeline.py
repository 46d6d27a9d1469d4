"""The run state machine: snapshot -> training -> evaluating -> canary -> promoted | rejected |
rolled_back | failed | cancelled. One run per project at a time; every transition is an event and a metric.

`rejected` is a gate that said no (the candidate is marked rejected); an evaluation that could not
give a verdict (vLLM or the judge down, a golden file missing) is `failed` with the reason, and
its candidate stays a `candidate`, for a retry.

The trainer runs as `python -m trainer run SPEC.json` where the project's launcher puts it (a
subprocess, `accelerate launch`, a Ray job: `service.launchers`), and its progress lines update
the run as they come. The spec, the lines, the adapter's manifest and
the run's stats are the Structs of `formats.run` and `formats.manifest`. A crash, timeout or bad output of the trainer fails the run with
the reason and leaves serving untouched. The canary's end is decided by `monitor_canaries`, a
scheduler job, from live thumbs.

Nothing here touches the database on the event loop: every read and write of runs and adapters
goes through `asyncio.to_thread` (a write waits for the writer's checkpoint, a second or more on a
large file, and every request would wait with it).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

from evals import (
    AgreementCalibration,
    AucCalibration,
    CalibrationConfig,
    EvalConfig,
    EvalError,
    FeedbackGateConfig,
    Report,
    ScorerProcess,
    TrainerRewardModel,
    arun,
)
from formats.manifest import ManifestError, SchemaVersionError, read_manifest
from formats.run import (
    DoneEvent,
    EvalSummary,
    RunSpec,
    RunSpecError,
    ScorerSummary,
    StepEvent,
    TrainerEvent,
)
from formats.snapshot import SnapshotManifest, SnapshotStats
from service.clock import utcnow
from service.config import FeedbackGateSettings, Settings
from service.domain import GateConfig
from service.errors import AdapterLoadFailed, Conflict, RatchetError
from service.gate_config import evidence, golden_file
from service.launchers import launch_training
from service.metrics import Metrics
from service.project_settings import ProjectSettingsBook
from service.rollouts import Rollouts
from service.store.gate_configs import GateConfigs
from service.store.queries import Queries
from service.store.runs import ACTIVE, RunRecord, Runs, RunState
from service.store.serving import Serving
from service.trainer_process import TrainerFailed
from service.trigger import RunDecision, decide_run

log = logging.getLogger("ratchet.pipeline")

REWARD_DIR = "reward_model"
SCORER_IDLE_SECONDS = 900.0
"""The reward-model scorer process is ended after this long without an evaluation."""
"""The reward model's directory in a run's directory (the learned judge of its evaluation)."""


JOB_TRIGGER = "fine_tuning_job"
"""The trigger of a fine-tuning job's run (`Pipeline.start` with a `JobPlan`)."""


class JobPlan(msgspec.Struct, frozen=True):
    """What a fine-tuning job's run is given (`service.fine_tuning`): `write_snapshot(dir)` writes
    the job's files as a snapshot there (blocking) and returns its manifest; `spec` goes over the
    run spec (method, optimiser settings, seed); `keep_results(run)` (blocking) keeps the job's
    result files from the trained run's stats, before the run is marked succeeded."""

    write_snapshot: Callable[[Path], SnapshotManifest]
    spec: dict[str, Any]
    keep_results: Callable[[RunRecord], None] | None = None


class JobQueue(Protocol):
    """Fine-tuning jobs waiting for their project to be free (`service.fine_tuning.FineTuning`).
    They go before the scheduler's own runs: a project with a queued job gets that job's run, not
    a signal or cron run, and a run's end starts the next queued job at once."""

    def waiting(self, project: str) -> bool:
        """Whether the project has a queued job (blocking: reads the store)."""
        ...

    async def start_next(self, project: str) -> RunRecord | None:
        """Start the project's oldest queued job; None if there is none or the project is busy."""
        ...


class RunFailed(RatchetError):
    """A stage could not complete; the run fails with this message."""


def too_little_signal(stats: SnapshotStats, needed: int) -> str:
    """Why a snapshot left too few training rows, with the numbers of every step that removed some."""
    steps = []
    if stats.quarantined:
        reasons = ", ".join(
            f"{n} {reason}" for reason, n in sorted(stats.quarantined.items(), key=lambda kv: -kv[1])
        )
        steps.append(f"{sum(stats.quarantined.values())} quarantined ({reasons})")
    steps += [
        f"{n} {what}"
        for n, what in (
            (stats.dropped_duplicates, "duplicates"),
            (stats.dropped_user_cap, f"over the per-user cap of {stats.user_cap}"),
            (stats.dropped_prompt_in_holdout, "sharing a prompt with the holdout"),
            (stats.dropped_history, "older than the newest rows (snapshot.max_train_examples)"),
        )
        if n
    ]
    split = "by time" if stats.split == "time" else "by prompt (whole prompts held out)"
    if stats.joined_rows == 0:
        cause = "no rated, scored or corrected logs in the window"
    elif steps:
        cause = "removed: " + "; ".join(steps)
    else:
        cause = "nothing was removed: the project needs more feedback"
    return (
        f"too little signal: {stats.train_rows} training rows, {needed} needed "
        f"({stats.joined_rows} rows with feedback; {cause}; {stats.holdout_rows} held out, split {split})"
    )


def new_run_id(now: datetime) -> str:
    return f"run-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


SnapshotCutter = Callable[[str, Path], SnapshotManifest]
"""Cuts a snapshot of a project into a directory (blocking): `service.app.build_pipeline` gives
one that holds the project's data lock, so no snapshot copies rows an erasure is removing."""


class Pipeline:
    """Starts runs, drives them through their stages, and watches canaries.

    Its collaborators are named: the store's runs, adapters and gate configs, the rollouts that
    change what serves, the snapshot cutter, the metrics, and the settings (global and per
    project). `projects` is the live set of project names (the service adds and removes names)."""

    def __init__(
        self,
        *,
        settings: Settings,
        project_settings: ProjectSettingsBook,
        projects: Collection[str],
        runs: Runs,
        serving: Serving,
        queries: Queries,
        gate_configs: GateConfigs,
        rollouts: Rollouts,
        cut_snapshot: SnapshotCutter,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.project_settings = project_settings
        self.projects = projects
        self.runs = runs
        self.serving = serving
        self.queries = queries
        self.gate_configs = gate_configs
        self.rollouts = rollouts
        self.cut_snapshot = cut_snapshot
        self.metrics = metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.jobs: JobQueue | None = None
        """The fine-tuning job queue; set by `service.app.create_app` (it needs this pipeline)."""
        # One reward-model scorer for every evaluation, started when a run begins training: torch is
        # imported once, not per gate, and not while the gate waits (it was most of the learned
        # judge's cost: 110 of a 122 s gate on a loaded machine); ended when idle, and at shutdown.
        self.scorer = ScorerProcess(idle_s=SCORER_IDLE_SECONDS)

    # --- starting runs

    async def start(self, project: str, trigger: str, job: JobPlan | None = None) -> RunRecord:
        """Create a run and drive it in the background. `Conflict` while another run is active.
        With `job` (a fine-tuning job), the run trains on the job's snapshot and ends
        `succeeded` with its adapter loaded: no gate, no canary (`_drive_job`)."""
        now = utcnow()
        run = RunRecord(id=new_run_id(now), project=project, trigger=trigger, state="pending",
                        started_at=now, updated_at=now)  # fmt: skip
        await asyncio.to_thread(self.runs.create, run)
        self.metrics.runs_active.labels(project, "pending").inc()
        task = asyncio.get_running_loop().create_task(
            self._drive(run) if job is None else self._drive_job(run, job)
        )
        self._tasks[run.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run.id, None))
        return run

    async def check_signal(self, now: datetime) -> list[str]:
        """Start a run for every project whose signal since its last run calls for one
        (`service.trigger.decide_run`, on the project's own thresholds). Costs O(new feedback)
        per project, off the event loop."""
        started = []
        for project in sorted(self.projects):
            if await self._queued_job_started(project, started):
                continue
            decision = await asyncio.to_thread(self.signal_decision, project, now)
            if decision.start:
                started.append((await self.start(project, "signal")).id)
        return started

    def signal_decision(self, project: str, now: datetime) -> RunDecision:
        """What the new-signal check decides for `project` now (blocking: reads the store)."""
        # A fine-tuning job's run trained on its own file, not on the feedback: it neither
        # consumes the new signal nor starts a cooldown (only blocks while it is going).
        runs = self.runs.list(project, limit=50)
        previous = next((r for r in runs if r.trigger != JOB_TRIGGER or r.state in ACTIVE), None)
        signal = self.queries.count_new_signal(project, previous.started_at if previous else None)
        return decide_run(now, signal, previous, self.project_settings.effective(project).training)

    async def scheduled(self) -> None:
        """The cron trigger: a run for every idle project (its queued fine-tuning job instead, if
        it has one)."""
        for project in sorted(self.projects):
            if await self._queued_job_started(project, []):
                continue
            if not await asyncio.to_thread(self.runs.list, project, active_only=True):
                await self.start(project, "schedule")

    async def _queued_job_started(self, project: str, started: list[str]) -> bool:
        """True when the project has a queued fine-tuning job, which then goes first: its run is
        started if the project is free (its id added to `started`), and no scheduler run is."""
        if self.jobs is None or not await asyncio.to_thread(self.jobs.waiting, project):
            return False
        if (run := await self.jobs.start_next(project)) is not None:
            started.append(run.id)
        return True

    # --- the stages

    async def _drive(self, run: RunRecord) -> None:
        run_dir = self.settings.runs_dir / run.id
        try:
            snapshot = await self._stage(run, "snapshot", self._snapshot(run, run_dir))
            adapter = await self._stage(run, "training", self._train(run, run_dir, snapshot))
            promote = await self._stage(run, "evaluating", self._evaluate(run, run_dir, adapter))
            if not promote:
                await self.rollouts.discard(adapter, "offline gate: not better than the champion", run.id)
                await self._finish(run, "rejected")
                return
            await self.rollouts.start_canary(run.project, adapter, run.id)
            await self._update(run.id, state="canary", stats={"canary_started": time.time()})
            self._set_active(run.project, "evaluating", "canary")
        except Exception as exc:
            reason = exc.message if isinstance(exc, RatchetError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, RatchetError):
                log.exception("run %s failed", run.id)
            await self._finish(run, "failed", error=reason)

    async def _drive_job(self, run: RunRecord, job: JobPlan) -> None:
        """A fine-tuning job's run: its snapshot is the job's file, training uses the job's
        settings from the base model, and the adapter is loaded and addressable by its version
        name only. It goes through neither gate nor canary and routes no traffic: the caller asked
        for this model and chooses to use it; what the project serves by default is untouched."""
        run_dir = self.settings.runs_dir / run.id
        try:
            snapshot = run_dir / "snapshot"
            manifest = await self._stage(run, "snapshot", asyncio.to_thread(job.write_snapshot, snapshot))
            await self._update(run.id, stats={"snapshot": manifest.stats})
            adapter = await self._stage(
                run, "training", self._train(run, run_dir, snapshot, overrides=job.spec, fresh=True)
            )
            try:
                await self.rollouts.ensure_loaded(adapter)
            except AdapterLoadFailed as exc:  # trained and kept: the first request naming it loads it
                log.warning("job run %s: %s not loaded yet: %s", run.id, adapter, exc.message)
                await self._update(run.id, stats={"load_deferred": exc.message})
            if job.keep_results is not None:
                await asyncio.to_thread(job.keep_results, await asyncio.to_thread(self.runs.get, run.id))
            await self._finish(run, "succeeded")
        except Exception as exc:
            reason = exc.message if isinstance(exc, RatchetError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, RatchetError):
                log.exception("run %s failed", run.id)
            await self._finish(run, "failed", error=reason)

    async def _update(self, run_id: str, **changes: Any) -> RunRecord:
        return await asyncio.to_thread(self.runs.update, run_id, utcnow(), **changes)

    async def _stage(self, run: RunRecord, stage: str, work: Any) -> Any:
        previous = (await asyncio.to_thread(self.runs.get, run.id)).state
        await self._update(run.id, state=stage)
        self._set_active(run.project, previous, stage)
        started = time.monotonic()
        try:
            return await work
        finally:
            seconds = time.monotonic() - started
            self.metrics.run_stage_seconds.labels(run.project, stage).observe(seconds)
            durations = (await asyncio.to_thread(self.runs.get, run.id)).stats.stage_seconds
            await self._update(run.id, stats={"stage_seconds": {**durations, stage: round(seconds, 2)}})

    async def _snapshot(self, run: RunRecord, run_dir: Path) -> Path:
        out = run_dir / "snapshot"
        manifest = await asyncio.to_thread(self.cut_snapshot, run.project, out)
        await self._update(run.id, stats={"snapshot": manifest.stats})
        min_rows = self.project_settings.effective(run.project).training.min_train_rows
        if manifest.stats.train_rows < min_rows:
            raise RunFailed(too_little_signal(manifest.stats, min_rows))
        return out

    async def _train(
        self, run: RunRecord, run_dir: Path, snapshot: Path, *, overrides: dict[str, Any] | None = None,
        fresh: bool = False,
    ) -> str:  # fmt: skip
        """Train an adapter and register it. `overrides` go over the project's spec overrides;
        `fresh`: from the base model, not the champion."""
        settings = self.project_settings.effective(run.project)
        if not settings.vllm.base_model:
            raise RunFailed("no base model configured: set vllm.base_model (RATCHET_VLLM__BASE_MODEL)")
        await self.rollouts.ensure_base_version(run.project, run.id)
        champion = self.rollouts.current(run.project).champion
        parent = None
        if (
            not fresh
            and settings.training.continue_from_champion
            and champion != settings.vllm.base_served_name
        ):
            parent = await asyncio.to_thread(self.serving.adapter, champion)
        out = settings.adapters_dir / run.project / run.id
        spec = run_spec(
            settings, run_id=run.id, snapshot=snapshot, output=out, run_dir=run_dir, parent_version=champion,
            parent_adapter=parent.path if parent and parent.version > 0 else None, overrides=overrides,
        )  # fmt: skip
        if spec.reward_model is not None:
            # Its imports run while the adapter trains; the gate then finds it ready.
            await self.scorer.start()
        done = await self._run_trainer(run, settings, spec, run_dir)
        try:
            manifest = read_manifest(out)
        except (ManifestError, SchemaVersionError) as exc:
            raise RunFailed(f"the trainer's adapter manifest is unusable: {exc}") from exc
        if manifest is None:
            raise RunFailed(f"the trainer wrote no manifest.json in {out}")
        record = await asyncio.to_thread(
            self.rollouts.register, run.project, out, method=manifest.method or settings.training.method,
            parent_version=None if parent is None else parent.version, manifest=manifest, run_id=run.id,
        )  # fmt: skip
        await self._update(run.id, stats={"adapter": record.served_name, "training": done})
        return record.served_name

    async def _run_trainer(
        self, run: RunRecord, settings: Settings, spec: RunSpec, run_dir: Path
    ) -> DoneEvent:
        """Run the trainer with the project's launcher; its step events update the run (at most
        one write a second, and the last step once it ends, so a finished run shows where training
        ended). Returns its `done`."""
        last_write = 0.0
        pending: StepEvent | None = None  # the last step event not yet written

        async def on_event(event: TrainerEvent) -> None:
            nonlocal last_write, pending
            if isinstance(event, StepEvent):
                pending = event
                if time.monotonic() - last_write > 1.0:
                    last_write, pending = time.monotonic(), None
                    await self._update(run.id, stats={"progress": event})

        try:
            done = await launch_training(settings, spec, run_dir, project=run.project, on_event=on_event)
        except TrainerFailed as exc:
            raise RunFailed(exc.message) from exc
        finally:
            if pending is not None:
                await self._update(run.id, stats={"progress": pending})
        return done

    async def _evaluate(self, run: RunRecord, run_dir: Path, candidate: str) -> bool:
        """The offline gate: the project's gate config (hand-written scorers, `service.gate_config`)
        joined by the evidence from the holdout's feedback (`feedback_gate` settings), with the
        reward model the trainer wrote beside the adapter as the learned judge."""
        settings = self.project_settings.effective(run.project)
        incumbent = self.rollouts.current(run.project).champion
        await self.rollouts.ensure_loaded(candidate)
        stored = await asyncio.to_thread(self.gate_configs.current, run.project)
        gate = stored.config if stored is not None else GateConfig()
        reward_dir = run_dir / REWARD_DIR
        config = EvalConfig(
            vllm_url=list(settings.vllm.urls), vllm_api_key=settings.vllm.api_key, candidate=candidate,
            incumbent=incumbent, holdout=str(run_dir / "snapshot" / "holdout.parquet"),
            rules=gate.rules, golden=golden_file(gate.golden, run_dir) if gate.golden else None,
            judge=gate.judge, generation=gate.generation, min_samples=gate.min_samples, level=gate.level,
            feedback=feedback_config(settings.feedback_gate, reward_dir if reward_dir.is_dir() else None),
            max_examples=settings.training.eval_max_examples, seed=0,
            preference_agreement=settings.training.eval_preference_agreement,
        )  # fmt: skip
        started = time.monotonic()
        reward = config.feedback.reward_model if config.feedback is not None else None
        # The scorer starts and loads the reward model while vLLM answers the holdout.
        warming = None if reward is None else asyncio.get_running_loop().create_task(self.scorer.warm(reward))
        try:
            report = await arun(
                config,
                reward_model=None if reward is None else TrainerRewardModel(
                    reward, timeout_s=settings.feedback_gate.reward_timeout_seconds, scorer=self.scorer
                ),
            )  # fmt: skip
        except EvalError as exc:  # unusable inputs (a golden file that is not there), before any model
            raise RunFailed(
                f"evaluation failed: {exc}; the candidate {candidate} is kept for a retry"
            ) from exc
        finally:
            if warming is not None:  # done by now, unless the evaluation ended early
                warming.cancel()
                await asyncio.gather(warming, return_exceptions=True)
        gate_s = round(time.monotonic() - started, 2)
        markdown = report.to_markdown()
        (run_dir / "eval_report.md").write_text(markdown)
        await asyncio.to_thread(self.runs.save_report, run.id, run.project, candidate, incumbent,
                                report.promote, report.to_json(), markdown, utcnow())  # fmt: skip
        if report.status == "failed":  # vLLM or the judge failed: no verdict, not a gate that said no
            raise RunFailed(
                f"evaluation failed: {report.error}; the candidate {candidate} is kept for a retry"
            )
        self._export_metrics(run.project, report)
        summary = EvalSummary(
            promote=report.promote, incumbent=incumbent, gate_config_version=stored.version if stored else 0,
            evidence=evidence(gate, settings.feedback_gate), reasons=[r.message for r in report.decision.reasons],
            scorers={r.name: ScorerSummary(
                role=r.role, eligibility=r.eligibility, mean=r.stats.mean if r.stats else None,
                low=r.stats.low if r.stats else None, high=r.stats.high if r.stats else None,
                n=r.stats.n if r.stats else 0,
                calibration=msgspec.to_builtins(r.calibration) if r.calibration else None,
            ) for r in report.results},
            wall_time_s=gate_s, timings=msgspec.to_builtins(report.timings),
        )  # fmt: skip
        await self._update(run.id, stats={"eval": summary})
        return report.promote

    def _export_metrics(self, project: str, report: Report) -> None:
        """Each scorer's score difference, eligibility and (for a judge) calibration figures."""
        m = self.metrics
        for result in report.results:
            if result.stats is not None:
                m.eval_score.labels(project, result.name).set(result.stats.mean)
            if result.eligibility is not None:
                m.scorer_eligible.labels(project, result.name).set(float(result.role != "diagnostic"))
            cal = result.calibration
            if cal is not None:
                for measure, value in calibration_figures(cal).items():
                    if value is not None:
                        m.judge_calibration.labels(project, result.name, measure).set(float(value))
        m.gate_decisions.labels(project, "promote" if report.promote else "reject").inc()

    # --- the canary's end

    async def monitor_canaries(self, now: float) -> None:
        """Apply the online gate to every canary: promote, roll back, or keep collecting."""
        for project, rollout in list(self.rollouts.routing.items()):
            if rollout.candidate is None:
                continue
            decision = await asyncio.to_thread(self.rollouts.online_verdict, project, now)
            if decision is None or decision.outcome == "continue":
                continue
            active = await asyncio.to_thread(self.runs.list, project, active_only=True)
            run = next((r for r in active if r.state == "canary"), None)
            run_id = run.id if run else None
            online = {"online": decision}  # RunStats.online
            reason = f"{decision.reason}: {decision.detail}"  # the bounded code first, e.g. `error_rate: ...`
            if decision.outcome == "promote":
                await self.rollouts.promote(project, reason=reason, run_id=run_id, gate=True)
                if run:
                    await self._update(run.id, stats=online)
                    await self._finish(run, "promoted")
            else:
                await self.rollouts.rollback(
                    project, adapter=rollout.candidate, reason=reason, run_id=run_id, gate=True
                )
                if run:
                    await self._update(run.id, stats=online)
                    await self._finish(run, "rolled_back")

    # --- restart safety and housekeeping

    def recover(self) -> list[str]:
        """After a restart: fail runs caught mid-stage (serving never changed for them); a run in
        canary goes on if its canary still serves. Returns the ids of failed runs."""
        failed = []
        for run in self.runs.list(active_only=True, limit=1000):
            rollout = self.rollouts.current(run.project)
            if run.state == "canary" and rollout.candidate is not None:
                continue
            adapter = run.stats.adapter
            if adapter and adapter not in (rollout.candidate, rollout.champion):
                self.serving.set_adapter_state(adapter, "failed", utcnow())
            self.runs.update(
                run.id, utcnow(), state="failed",
                error=f"interrupted by a service restart during {run.state}; the next trigger starts a new run",
            )  # fmt: skip
            failed.append(run.id)
        return failed

    def prune(self) -> None:
        """Keep the newest `keep_runs` run directories per project (snapshots, specs, logs)."""
        keep = self.settings.training.keep_runs
        for project in self.projects:
            for run in self.runs.list(project, limit=10_000)[keep:]:
                if run.state not in ACTIVE:
                    shutil.rmtree(self.settings.runs_dir / run.id, ignore_errors=True)

    async def cancel(self, run_id: str) -> RunRecord:
        """Stop a run before its canary at an operator's request: its trainer gets SIGTERM, it
        ends `cancelled`, serving is untouched. `Conflict` naming the state for a run that has
        finished or is in canary (that one ends by rolling its adapter back), `NotFound`."""
        run = await asyncio.to_thread(self.runs.get, run_id)
        if run.state == "canary":
            adapter = run.stats.adapter
            raise Conflict(f"run {run_id} is in canary: end it with `ratchet adapters rollback {adapter}`")
        if run.state in ACTIVE and await self.abort(run_id, "cancelled on request", state="cancelled"):
            return await asyncio.to_thread(self.runs.get, run_id)
        run = await asyncio.to_thread(self.runs.get, run_id)
        if run.state in ACTIVE:  # not driven by this process (it is about to be failed by recovery)
            raise Conflict(f"run {run_id} is {run.state} but not running in this server")
        raise Conflict(f"run {run_id} has already finished: {run.state}")

    async def abort(self, run_id: str, reason: str, state: RunState = "failed") -> bool:
        """Stop a run that has not reached its canary (its trainer is stopped) and end it in
        `state` (failed) with `reason`; the adapter it registered, if any, is marked failed.
        False if it was not going."""
        task = self._tasks.get(run_id)
        run = await asyncio.to_thread(self.runs.get, run_id)
        if task is None or run.state not in ACTIVE or run.state == "canary":
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        run = await asyncio.to_thread(self.runs.get, run_id)
        adapter = run.stats.adapter
        rollout = self.rollouts.current(run.project)
        if adapter and adapter not in (rollout.candidate, rollout.champion):
            await asyncio.to_thread(self.serving.set_adapter_state, adapter, "failed", utcnow())
        if run.state in ACTIVE:
            await self._finish(run, state, error=reason)
        return True

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.scorer.aclose()

    async def _finish(self, run: RunRecord, state: RunState, error: str | None = None) -> None:
        """End a run; the project is free, so its next queued fine-tuning job starts."""
        current = (await asyncio.to_thread(self.runs.get, run.id)).state
        await self._update(run.id, state=state, error=error)
        self._set_active(run.project, current, None)
        self.metrics.runs.labels(run.project, state).inc()
        if self.jobs is not None:
            try:
                await self.jobs.start_next(run.project)
            except Exception:  # the job stays queued; the next signal check starts it
                log.exception("could not start the next queued job of %s", run.project)

    def _set_active(self, project: str, old: str | None, new: str | None) -> None:
        if old in ACTIVE:
            self.metrics.runs_active.labels(project, old).dec()
        if new is not None:
            self.metrics.runs_active.labels(project, new).inc()


def run_spec(
    settings: Settings,
    *,
    run_id: str,
    snapshot: Path,
    output: Path,
    run_dir: Path,
    parent_version: str,
    parent_adapter: str | None,
    overrides: dict[str, Any] | None = None,
) -> RunSpec:
    """SPEC.json for a run: the project's settings, then `training.spec_overrides` merged over
    them, then `overrides` (a fine-tuning job's settings) over those. Checked here, so an override the trainer would refuse (a typo, a value out of range)
    fails the run before the trainer starts, naming the field."""
    feedback = settings.feedback_gate
    reward = None
    if feedback.enabled and feedback.learned_judge:
        # In the run's directory: read by this run's evaluation only, deleted with the run's
        # snapshot (erasure, retention, pruning), never served.
        reward = {"output_dir": str(run_dir / REWARD_DIR), "max_steps": feedback.reward_max_steps}
    fields = _merge(
        {
            "run_id": run_id, "reward_model": reward, "base_model": settings.vllm.base_model,
            "snapshot_dir": str(snapshot), "output_dir": str(output), "method": settings.training.method,
            "parent_adapter": parent_adapter, "parent_version": parent_version,
            "min_examples": settings.training.min_train_rows,
            "lora": {"r": min(8, settings.vllm.max_lora_rank)},
            "optim": {"max_length": min(settings.training.max_length,
                                        settings.vllm.max_model_len or settings.training.max_length)},
        },
        _merge(settings.training.spec_overrides, overrides or {}),
    )  # fmt: skip
    try:
        return RunSpec.decode(msgspec.json.encode(fields), "from training.spec_overrides and the settings")
    except (RunSpecError, SchemaVersionError) as exc:
        raise RunFailed(str(exc)) from exc


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def calibration_figures(cal: AucCalibration | AgreementCalibration) -> dict[str, float | None]:
    """A judge's calibration on the holdout's feedback as named figures (the metric's `measure`)."""
    if isinstance(cal, AucCalibration):
        return {"auc": cal.auc, "auc_low": cal.low, "auc_high": cal.high, "pairs": cal.pairs, "ties": cal.ties,
                "pooled_auc": cal.pooled_auc, "ratings": cal.ratings, "base_rate": cal.base_rate}  # fmt: skip
    return {"kappa": cal.kappa, "kappa_low": cal.kappa_low, "kappa_high": cal.kappa_high,
            "agreement": cal.agreement, "pairs": cal.pairs}  # fmt: skip


def feedback_config(settings: FeedbackGateSettings, reward_model: Path | None) -> FeedbackGateConfig:
    """The evaluation's feedback evidence from a project's `feedback_gate` settings; `reward_model`
    is the directory the trainer wrote (None: it was off, or had too little signal to train)."""
    return FeedbackGateConfig(
        enabled=settings.enabled,
        reward_model=str(reward_model) if reward_model is not None and settings.learned_judge else None,
        reward_timeout_s=settings.reward_timeout_seconds,
        forgetting_tolerance=settings.forgetting_tolerance,
        degenerate_tolerance=settings.degenerate_tolerance,
        calibration=CalibrationConfig(
            min_auc_low=settings.min_auc_low, min_pairs=settings.min_pairs,
            min_prompts=settings.min_prompts, min_kappa_low=settings.min_kappa_low,
        ),
    )  # fmt: skip
