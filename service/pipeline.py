"""The run state machine: snapshot -> training -> evaluating -> canary -> promoted | rejected |
rolled_back | failed | cancelled. One run per project at a time; every transition is an event and a metric.

`rejected` is a gate that said no (the candidate is marked rejected); an evaluation that could not
give a verdict (vLLM or the judge down, a golden file missing) is `failed` with the reason, and
its candidate stays a `candidate`, for a retry.

The trainer runs as a subprocess (`python -m trainer run SPEC.json`) whose JSON progress lines
update the run as they come. A crash, timeout or bad output of the trainer fails the run with
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
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from evals import (
    AgreementCalibration,
    AucCalibration,
    CalibrationConfig,
    EvalConfig,
    EvalError,
    FeedbackGateConfig,
    Report,
    arun,
)
from formats.snapshot import SnapshotStats
from service.capture import utcnow
from service.config import FeedbackGateSettings
from service.domain import GateConfig
from service.errors import Conflict, RatchetError
from service.gate_config import evidence, golden_file
from service.runtime import Runtime
from service.store.runs import ACTIVE, RunRecord, RunState
from service.store.snapshot import export_snapshot
from service.trigger import RunDecision, decide_run

log = logging.getLogger("ratchet.pipeline")

REWARD_DIR = "reward_model"
"""The reward model's directory in a run's directory (the learned judge of its evaluation)."""


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


class Pipeline:
    """Starts runs, drives them through their stages, and watches canaries."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # --- starting runs

    async def start(self, project: str, trigger: str) -> RunRecord:
        """Create a run and drive it in the background. `Conflict` while another run is active."""
        now = utcnow()
        run = RunRecord(id=new_run_id(now), project=project, trigger=trigger, state="pending",
                        started_at=now, updated_at=now)  # fmt: skip
        await asyncio.to_thread(self.rt.runs.create, run)
        self.rt.metrics.runs_active.labels(project, "pending").inc()
        task = asyncio.get_running_loop().create_task(self._drive(run))
        self._tasks[run.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run.id, None))
        return run

    async def check_signal(self, now: datetime) -> list[str]:
        """Start a run for every project whose signal since its last run calls for one
        (`service.trigger.decide_run`, on the project's own thresholds). Costs O(new feedback)
        per project, off the event loop."""
        started = []
        for project in sorted(self.rt.projects):
            decision = await asyncio.to_thread(self.signal_decision, project, now)
            if decision.start:
                started.append((await self.start(project, "signal")).id)
        return started

    def signal_decision(self, project: str, now: datetime) -> RunDecision:
        """What the new-signal check decides for `project` now (blocking: reads the store)."""
        previous = next(iter(self.rt.runs.list(project, limit=1)), None)
        signal = self.rt.queries.count_new_signal(project, previous.started_at if previous else None)
        return decide_run(now, signal, previous, self.rt.project_settings.effective(project).training)

    async def scheduled(self) -> None:
        """The cron trigger: a run for every idle project."""
        for project in sorted(self.rt.projects):
            if not await asyncio.to_thread(self.rt.runs.list, project, active_only=True):
                await self.start(project, "schedule")

    # --- the stages

    async def _drive(self, run: RunRecord) -> None:
        run_dir = self.rt.settings.runs_dir / run.id
        try:
            snapshot = await self._stage(run, "snapshot", self._snapshot(run, run_dir))
            adapter = await self._stage(run, "training", self._train(run, run_dir, snapshot))
            promote = await self._stage(run, "evaluating", self._evaluate(run, run_dir, adapter))
            if not promote:
                await self.rt.rollouts.discard(adapter, "offline gate: not better than the champion", run.id)
                await self._finish(run, "rejected")
                return
            await self.rt.rollouts.start_canary(run.project, adapter, run.id)
            await self._update(run.id, state="canary", stats={"canary_started": time.time()})
            self._set_active(run.project, "evaluating", "canary")
        except Exception as exc:
            reason = exc.message if isinstance(exc, RatchetError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, RatchetError):
                log.exception("run %s failed", run.id)
            await self._finish(run, "failed", error=reason)

    async def _update(self, run_id: str, **changes: Any) -> RunRecord:
        return await asyncio.to_thread(self.rt.runs.update, run_id, utcnow(), **changes)

    async def _stage(self, run: RunRecord, stage: str, work: Any) -> Any:
        previous = (await asyncio.to_thread(self.rt.runs.get, run.id)).state
        await self._update(run.id, state=stage)
        self._set_active(run.project, previous, stage)
        started = time.monotonic()
        try:
            return await work
        finally:
            seconds = time.monotonic() - started
            self.rt.metrics.run_stage_seconds.labels(run.project, stage).observe(seconds)
            durations = (await asyncio.to_thread(self.rt.runs.get, run.id)).stats.get("stage_seconds", {})
            await self._update(run.id, stats={"stage_seconds": {**durations, stage: round(seconds, 2)}})

    async def _snapshot(self, run: RunRecord, run_dir: Path) -> Path:
        out = run_dir / "snapshot"

        def cut() -> Any:
            with self.rt.data_lock(run.project):  # never beside an erasure of the same project
                return export_snapshot(
                    self.rt.db,
                    run.project,
                    out,
                    self.rt.settings.snapshot,
                    now=utcnow(),
                    feedback=self.rt.settings.feedback,
                    archive=self.rt.archive,
                )

        manifest = await asyncio.to_thread(cut)
        await self._update(run.id, stats={"snapshot": msgspec.to_builtins(manifest.stats)})
        min_rows = self.rt.project_settings.effective(run.project).training.min_train_rows
        if manifest.stats.train_rows < min_rows:
            raise RunFailed(too_little_signal(manifest.stats, min_rows))
        return out

    async def _train(self, run: RunRecord, run_dir: Path, snapshot: Path) -> str:
        settings = self.rt.project_settings.effective(run.project)
        if not settings.vllm.base_model:
            raise RunFailed("no base model configured: set vllm.base_model (RATCHET_VLLM__BASE_MODEL)")
        await self.rt.rollouts.ensure_base_version(run.project, run.id)
        champion = self.rt.rollouts.current(run.project).champion
        parent = None
        if settings.training.continue_from_champion and champion != settings.vllm.base_served_name:
            parent = await asyncio.to_thread(self.rt.serving.adapter, champion)
        out = settings.adapters_dir / run.project / run.id
        feedback = settings.feedback_gate
        reward = None
        if feedback.enabled and feedback.learned_judge:
            # In the run's directory: read by this run's evaluation only, deleted with the run's
            # snapshot (erasure, retention, pruning), never served.
            reward = {"output_dir": str(run_dir / REWARD_DIR), "max_steps": feedback.reward_max_steps}
        spec = _merge(
            {
                "run_id": run.id, "reward_model": reward, "base_model": settings.vllm.base_model, "snapshot_dir": str(snapshot),
                "output_dir": str(out), "method": settings.training.method,
                "parent_adapter": parent.path if parent and parent.version > 0 else None,
                "parent_version": champion, "min_examples": settings.training.min_train_rows,
                "lora": {"r": min(8, settings.vllm.max_lora_rank)},
                "optim": {"max_length": min(settings.training.max_length,
                                            settings.vllm.max_model_len or settings.training.max_length)},
            },
            settings.training.spec_overrides,
        )  # fmt: skip
        spec_path = run_dir / "spec.json"
        spec_path.write_bytes(msgspec.json.encode(spec))
        done = await self._run_trainer(run, spec_path, run_dir / "trainer.log")
        manifest = msgspec.json.decode((out / "manifest.json").read_bytes())
        record = await asyncio.to_thread(
            self.rt.rollouts.register, run.project, out, method=str(manifest.get("method", settings.training.method)),
            parent_version=None if parent is None else parent.version,
            snapshot_sha256=manifest.get("snapshot_sha256"), manifest=manifest, run_id=run.id,
        )  # fmt: skip
        await self._update(run.id, stats={"adapter": record.served_name, "training": done})
        return record.served_name

    async def _run_trainer(self, run: RunRecord, spec_path: Path, log_path: Path) -> dict[str, Any]:
        """Run the trainer; its stdout JSON lines update the run. Returns its `done` event."""
        with open(log_path, "ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "trainer", "run", str(spec_path),
                stdout=asyncio.subprocess.PIPE, stderr=stderr, limit=1 << 20,
            )  # fmt: skip
            done: dict[str, Any] | None = None
            error: str | None = None
            last_write = 0.0
            step: dict[str, Any] | None = None  # the last step event not yet written
            try:
                async with asyncio.timeout(self.rt.settings.training.timeout_seconds):
                    assert proc.stdout is not None
                    async for raw in proc.stdout:
                        try:
                            event = msgspec.json.decode(raw)
                        except msgspec.DecodeError:
                            continue
                        kind = event.get("event") if isinstance(event, dict) else None
                        if kind == "step":
                            step = event
                            if time.monotonic() - last_write > 1.0:
                                last_write, step = time.monotonic(), None
                                await self._update(run.id, stats={"progress": event})
                        elif kind == "done":
                            done = event
                        elif kind == "error":
                            error = str(event.get("message"))
                    await proc.wait()
                if step is not None:  # the last step, so a finished run shows where training ended
                    await self._update(run.id, stats={"progress": step})
            except TimeoutError:
                await _stop(proc)
                raise RunFailed(
                    f"the trainer ran past {self.rt.settings.training.timeout_seconds:.0f}s and was stopped"
                ) from None
            except asyncio.CancelledError:
                await asyncio.shield(_stop(proc))
                raise
        if proc.returncode != 0 or done is None:
            tail = log_path.read_text(errors="replace")[-400:] if log_path.exists() else ""
            raise RunFailed(f"the trainer failed (exit {proc.returncode}): {error or tail}")
        return done

    async def _evaluate(self, run: RunRecord, run_dir: Path, candidate: str) -> bool:
        """The offline gate: the project's gate config (hand-written scorers, `service.gate_config`)
        joined by the evidence from the holdout's feedback (`feedback_gate` settings), with the
        reward model the trainer wrote beside the adapter as the learned judge."""
        settings = self.rt.project_settings.effective(run.project)
        incumbent = self.rt.rollouts.current(run.project).champion
        await self.rt.rollouts.ensure_loaded(candidate)
        stored = await asyncio.to_thread(self.rt.gate_configs.current, run.project)
        gate = stored.config if stored is not None else GateConfig()
        reward_dir = run_dir / REWARD_DIR
        config = EvalConfig(
            vllm_url=settings.vllm.urls[0], vllm_api_key=settings.vllm.api_key, candidate=candidate,
            incumbent=incumbent, holdout=str(run_dir / "snapshot" / "holdout.parquet"),
            rules=gate.rules, golden=golden_file(gate.golden, run_dir) if gate.golden else None,
            judge=gate.judge, generation=gate.generation, min_samples=gate.min_samples, level=gate.level,
            feedback=feedback_config(settings.feedback_gate, reward_dir if reward_dir.is_dir() else None),
            max_examples=settings.training.eval_max_examples, seed=0,
            preference_agreement=settings.training.eval_preference_agreement,
        )  # fmt: skip
        started = time.monotonic()
        try:
            report = await arun(config)
        except EvalError as exc:  # unusable inputs (a golden file that is not there), before any model
            raise RunFailed(
                f"evaluation failed: {exc}; the candidate {candidate} is kept for a retry"
            ) from exc
        gate_s = round(time.monotonic() - started, 2)
        markdown = report.to_markdown()
        (run_dir / "eval_report.md").write_text(markdown)
        await asyncio.to_thread(self.rt.runs.save_report, run.id, run.project, candidate, incumbent,
                                report.promote, report.to_json(), markdown, utcnow())  # fmt: skip
        if report.status == "failed":  # vLLM or the judge failed: no verdict, not a gate that said no
            raise RunFailed(
                f"evaluation failed: {report.error}; the candidate {candidate} is kept for a retry"
            )
        self._export_metrics(run.project, report)
        await self._update(run.id, stats={"eval": {
            "promote": report.promote, "incumbent": incumbent, "gate_config_version": stored.version if stored else 0,
            "evidence": evidence(gate, settings.feedback_gate),
            "reasons": [r.message for r in report.decision.reasons],
            "scorers": {r.name: {"role": r.role, "eligibility": r.eligibility,
                                 "mean": r.stats.mean if r.stats else None,
                                 "low": r.stats.low if r.stats else None, "high": r.stats.high if r.stats else None,
                                 "n": r.stats.n if r.stats else 0,
                                 "calibration": msgspec.to_builtins(r.calibration) if r.calibration else None}
                        for r in report.results},
            "wall_time_s": gate_s, "timings": msgspec.to_builtins(report.timings),
        }})  # fmt: skip
        return report.promote

    def _export_metrics(self, project: str, report: Report) -> None:
        """Each scorer's score difference, eligibility and (for a judge) calibration figures."""
        m = self.rt.metrics
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
        for project, rollout in list(self.rt.rollouts.routing.items()):
            if rollout.candidate is None:
                continue
            decision = await asyncio.to_thread(self.rt.rollouts.online_verdict, project, now)
            if decision is None or decision.outcome == "continue":
                continue
            active = await asyncio.to_thread(self.rt.runs.list, project, active_only=True)
            run = next((r for r in active if r.state == "canary"), None)
            run_id = run.id if run else None
            online = {"online": msgspec.to_builtins(decision)}
            reason = f"{decision.reason}: {decision.detail}"  # the bounded code first, e.g. `error_rate: ...`
            if decision.outcome == "promote":
                await self.rt.rollouts.promote(project, reason=reason, run_id=run_id, gate=True)
                if run:
                    await self._update(run.id, stats=online)
                    await self._finish(run, "promoted")
            else:
                await self.rt.rollouts.rollback(
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
        for run in self.rt.runs.list(active_only=True, limit=1000):
            rollout = self.rt.rollouts.current(run.project)
            if run.state == "canary" and rollout.candidate is not None:
                continue
            adapter = run.stats.get("adapter")
            if adapter and adapter not in (rollout.candidate, rollout.champion):
                self.rt.serving.set_adapter_state(adapter, "failed", utcnow())
            self.rt.runs.update(
                run.id, utcnow(), state="failed",
                error=f"interrupted by a service restart during {run.state}; the next trigger starts a new run",
            )  # fmt: skip
            failed.append(run.id)
        return failed

    def prune(self) -> None:
        """Keep the newest `keep_runs` run directories per project (snapshots, specs, logs)."""
        keep = self.rt.settings.training.keep_runs
        for project in self.rt.projects:
            for run in self.rt.runs.list(project, limit=10_000)[keep:]:
                if run.state not in ACTIVE:
                    shutil.rmtree(self.rt.settings.runs_dir / run.id, ignore_errors=True)

    async def cancel(self, run_id: str) -> RunRecord:
        """Stop a run before its canary at an operator's request: its trainer gets SIGTERM, it
        ends `cancelled`, serving is untouched. `Conflict` naming the state for a run that has
        finished or is in canary (that one ends by rolling its adapter back), `NotFound`."""
        run = await asyncio.to_thread(self.rt.runs.get, run_id)
        if run.state == "canary":
            adapter = run.stats.get("adapter")
            raise Conflict(f"run {run_id} is in canary: end it with `ratchet adapters rollback {adapter}`")
        if run.state in ACTIVE and await self.abort(run_id, "cancelled on request", state="cancelled"):
            return await asyncio.to_thread(self.rt.runs.get, run_id)
        run = await asyncio.to_thread(self.rt.runs.get, run_id)
        if run.state in ACTIVE:  # not driven by this process (it is about to be failed by recovery)
            raise Conflict(f"run {run_id} is {run.state} but not running in this server")
        raise Conflict(f"run {run_id} has already finished: {run.state}")

    async def abort(self, run_id: str, reason: str, state: RunState = "failed") -> bool:
        """Stop a run that has not reached its canary (its trainer is stopped) and end it in
        `state` (failed) with `reason`; the adapter it registered, if any, is marked failed.
        False if it was not going."""
        task = self._tasks.get(run_id)
        run = await asyncio.to_thread(self.rt.runs.get, run_id)
        if task is None or run.state not in ACTIVE or run.state == "canary":
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        run = await asyncio.to_thread(self.rt.runs.get, run_id)
        adapter = run.stats.get("adapter")
        rollout = self.rt.rollouts.current(run.project)
        if adapter and adapter not in (rollout.candidate, rollout.champion):
            await asyncio.to_thread(self.rt.serving.set_adapter_state, adapter, "failed", utcnow())
        if run.state in ACTIVE:
            await self._finish(run, state, error=reason)
        return True

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _finish(self, run: RunRecord, state: RunState, error: str | None = None) -> None:
        current = (await asyncio.to_thread(self.rt.runs.get, run.id)).state
        await self._update(run.id, state=state, error=error)
        self._set_active(run.project, current, None)
        self.rt.metrics.runs.labels(run.project, state).inc()

    def _set_active(self, project: str, old: str | None, new: str | None) -> None:
        if old in ACTIVE:
            self.rt.metrics.runs_active.labels(project, old).dec()
        if new is not None:
            self.rt.metrics.runs_active.labels(project, new).inc()


async def _stop(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM first: the trainer then removes its half-written adapter directory; SIGKILL after."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def calibration_figures(cal: AucCalibration | AgreementCalibration) -> dict[str, float | None]:
    """A judge's calibration on the held-out thumbs as named figures (the metric's `measure`)."""
    if isinstance(cal, AucCalibration):
        return {"auc": cal.auc, "auc_low": cal.low, "auc_high": cal.high, "ratings": cal.ratings,
                "base_rate": cal.base_rate}  # fmt: skip
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
            min_ratings=settings.min_ratings, min_auc_low=settings.min_auc_low,
            min_pairs=settings.min_pairs, min_kappa_low=settings.min_kappa_low,
        ),
    )  # fmt: skip
