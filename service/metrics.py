"""Every Prometheus metric Ratchet exports, in one place.

Naming follows Prometheus rules: `ratchet_<thing>_<unit>`, base units (seconds, bytes), `_total`
on counters. Labels come from bounded sets only: project names and adapter versions are bounded
by what an operator creates; user, prompt, log and run ids never become labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

# Write latency on this machine: a commit is ~0.4-3 ms, a checkpoint can stall for seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# Event-loop lag: anything over a few ms holds up every request the process serves.
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_RUN_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

INGEST_KINDS = ("log", "feedback")
INGEST_OUTCOMES = ("accepted", "duplicate", "rejected", "throttled")
RATINGS = ("up", "down", "none")
OTLP_SPAN_OUTCOMES = ("logged", "duplicate", "rejected", "dropped")
"""What `POST /v1/traces` did with a span: a GenAI inference stored as a new log, one already
stored, one it could not read (rejected, in the OTLP partial success), or a span of another kind
(acknowledged and dropped)."""
IMPLICIT_KINDS = ("regenerated", "edited", "copied", "event")
RUN_STAGES = ("snapshot", "training", "evaluating", "canary")
RUN_OUTCOMES = ("promoted", "rejected", "rolled_back", "failed", "cancelled")
GATE_DECISIONS = ("promote", "reject")
ONLINE_DECISIONS = ("promote", "rollback", "continue")


class Metrics:
    """The metric objects, registered on one registry (a fresh one per app in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # --- capture and store
        self.ingest_events = Counter(
            "ratchet_ingest_events_total",
            "Logs and feedback received, by kind and outcome (accepted, duplicate, rejected, throttled).",
            ["kind", "outcome"],
            registry=r,
        )
        self.write_batch_rows = Histogram(
            "ratchet_write_batch_rows",
            "Rows written per group-commit transaction.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.write_commit_seconds = Histogram(
            "ratchet_write_commit_seconds",
            "Time to write and commit one group-commit transaction.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_checkpoint_seconds = Histogram(
            "ratchet_write_checkpoint_seconds",
            "Time the group-commit writer spent checkpointing DuckDB (writes wait meanwhile).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_checkpoints_deferred = Counter(
            "ratchet_write_checkpoints_deferred_total",
            "Checkpoints the writer put off because a read that overlapped feedback updates was still open "
            "(DuckDB refuses them; the WAL grows until the read ends).",
            registry=r,
        )
        self.wal_bytes = Gauge("ratchet_wal_bytes", "Size of DuckDB's write-ahead log.", registry=r)
        self.writer_queue_rows = Gauge(
            "ratchet_writer_queue_rows", "Rows waiting for the group-commit writer.", registry=r
        )
        self.writer_errors = Counter(
            "ratchet_writer_errors_total",
            "Group-commit transactions that failed and were rolled back.",
            registry=r,
        )
        # --- archive (the lake tier)
        self.archive_rows = Counter(
            "ratchet_archive_rows_total",
            "Logs moved from the DuckDB file to the Parquet archive.",
            registry=r,
        )
        self.archive_files = Counter(
            "ratchet_archive_files_total", "Parquet files the archive job wrote.", registry=r
        )
        self.archive_seconds = Histogram(
            "ratchet_archive_seconds",
            "Duration of one archive job run (all projects).",
            buckets=(*_LATENCY_BUCKETS, 30.0, 60.0, 300.0, 900.0, 3600.0),
            registry=r,
        )
        self.archive_errors = Counter(
            "ratchet_archive_errors_total",
            "Archive job runs of a project that failed (retried next run).",
            registry=r,
        )
        self.feedback = Counter(
            "ratchet_feedback_total",
            "Feedback accepted, by project, adapter version that produced the answer (v3, base, none), and rating.",
            ["project", "adapter", "rating"],
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "ratchet_event_loop_lag_seconds",
            "How late the event loop woke a task that slept: a stall holds up every request (service.loop_lag).",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.event_loop_blocked = Histogram(
            "ratchet_event_loop_blocked_seconds",
            "The part of each event-loop lag not spent waiting for a CPU: the loop held by the process itself "
            "(a blocking call, or the GIL held by another thread).",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.event_loop_lag_max = Gauge(
            "ratchet_event_loop_lag_max_seconds",
            "Longest event-loop stall since the service started.",
            registry=r,
        )
        self.implicit_feedback = Counter(
            "ratchet_implicit_feedback_total",
            "Implicit feedback accepted, by project and kind (regenerated, edited, copied, event).",
            ["project", "kind"],
            registry=r,
        )
        self.otlp_spans = Counter(
            "ratchet_otlp_spans_total",
            "Spans received on POST /v1/traces, by outcome (logged, duplicate, rejected, dropped: not a GenAI inference).",
            ["outcome"],
            registry=r,
        )
        for outcome in OTLP_SPAN_OUTCOMES:
            self.otlp_spans.labels(outcome)
        # --- HTTP
        self.http_request_seconds = Histogram(
            "ratchet_http_request_seconds",
            "HTTP request latency by route template, method and status class.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._http_children: dict[tuple[str, str, str], Histogram] = {}
        # --- gateway
        self.gateway_request_seconds = Histogram(
            "ratchet_gateway_request_seconds",
            "Gateway latency (to the last byte) by project and adapter version.",
            ["project", "adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.gateway_upstream_errors = Counter(
            "ratchet_gateway_upstream_errors_total",
            "Gateway requests that vLLM failed or refused, by project, adapter and reason (unreachable, timeout, status, rejected, adapter_missing, not_servable, stream_error: a stream ended by an error event, broken or cut before [DONE]).",
            ["project", "adapter", "reason"],
            registry=r,
        )
        self.gateway_logs_unreadable = Counter(
            "ratchet_gateway_logs_unreadable_total",
            "Gateway answers the shape module could not read, by project: stored all the same, quarantined (shape_error), never trained on.",
            ["project"],
            registry=r,
        )
        self.gateway_tokens = Counter(
            "ratchet_gateway_tokens_total",
            "Tokens through the gateway by project, adapter and direction (prompt, completion).",
            ["project", "adapter", "direction"],
            registry=r,
        )
        # --- gateway replicas (`ratchet gateway`): their logs' way to the store
        self.gateway_spool_logs = Gauge(
            "ratchet_gateway_spool_logs",
            "Logs a gateway replica holds on disk that the store has not taken yet.",
            registry=r,
        )
        self.gateway_logs_shipped = Counter(
            "ratchet_gateway_logs_shipped_total",
            "Logs a gateway replica handed to the store, by outcome (delivered; duplicate: the store had it, a re-send; refused: the store rejected it, named in the replica's log).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("delivered", "duplicate", "refused"):
            self.gateway_logs_shipped.labels(outcome)
        self.gateway_store_up = Gauge(
            "ratchet_gateway_store_up",
            "1 when a gateway replica's last sync with the store succeeded, else 0 (it routes by the last state it got).",
            registry=r,
        )
        # --- runs and evaluation
        self.runs = Counter(
            "ratchet_runs_total",
            "Finished training runs by project and outcome (promoted, rejected, rolled_back, failed, cancelled).",
            ["project", "outcome"],
            registry=r,
        )
        self.run_stage_seconds = Histogram(
            "ratchet_run_stage_seconds",
            "Duration of each run stage (snapshot, training, evaluating, canary).",
            ["project", "stage"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.runs_active = Gauge(
            "ratchet_runs_active", "Runs in progress by project and state.", ["project", "state"], registry=r
        )
        self.eval_score = Gauge(
            "ratchet_eval_score_delta",
            "Latest offline eval: mean paired difference candidate minus incumbent, by scorer.",
            ["project", "scorer"],
            registry=r,
        )
        self.judge_calibration = Gauge(
            "ratchet_gate_judge_calibration",
            "Latest offline eval: how well a judge agrees with the holdout's feedback, by scorer and measure "
            "(auc, auc_low, auc_high: within a prompt, on preference pairs; pooled_auc, over every thumb; "
            "kappa, kappa_low, kappa_high, agreement, ratings, pairs, ties, base_rate).",
            ["project", "scorer", "measure"],
            registry=r,
        )
        self.scorer_eligible = Gauge(
            "ratchet_gate_scorer_eligible",
            "Latest offline eval: 1 if the scorer could decide (enough data, calibrated), else 0.",
            ["project", "scorer"],
            registry=r,
        )
        self.gate_decisions = Counter(
            "ratchet_gate_decisions_total",
            "Offline gate decisions by project and decision (promote, reject).",
            ["project", "decision"],
            registry=r,
        )
        # --- rollout
        self.canary_fraction = Gauge(
            "ratchet_canary_fraction",
            "Share of a project's traffic routed to its canary.",
            ["project"],
            registry=r,
        )
        self.online_statistic = Gauge(
            "ratchet_online_llr",
            "Online gate log-likelihood ratio of the canary (SPRT); crosses the bounds to decide.",
            ["project"],
            registry=r,
        )
        self.online_decisions = Counter(
            "ratchet_online_decisions_total",
            "Online gate outcomes by project and decision (promote, rollback); manual promotions and rollbacks are not counted.",
            ["project", "decision"],
            registry=r,
        )
        self.hot_swap_seconds = Histogram(
            "ratchet_hot_swap_seconds",
            "Time to load and verify an adapter on every replica.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.serving_version = Gauge(
            "ratchet_serving_version",
            "Adapter version serving each project as champion (0 = base model).",
            ["project"],
            registry=r,
        )
        self.project_base_model = Gauge(
            "ratchet_project_base_model_info",
            "1 for each project and the base model (vllm.models name) its adapters are trained on and served by.",
            ["project", "base_model"],
            registry=r,
        )
        ProcessCollector(registry=r)
        # Created up front (dashboards show zeros) and kept: `labels()` per request is a lock and
        # a tuple build on the ingest hot path.
        self.ingest_outcomes = {
            (kind, outcome): self.ingest_events.labels(kind, outcome)
            for kind in INGEST_KINDS
            for outcome in INGEST_OUTCOMES
        }

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one HTTP request's latency. Each series' child is looked up once: `labels()` on
        every request costs more than the observation."""
        key = (route, method, f"{status // 100}xx")
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http_request_seconds.labels(*key)
        child.observe(seconds)

    def set_base_model(self, project: str, base_model: str) -> None:
        """`ratchet_project_base_model_info`: the project's one base model."""
        for family in self.project_base_model.collect():
            for sample in family.samples:
                if sample.labels["project"] == project and sample.labels["base_model"] != base_model:
                    self.project_base_model.remove(project, sample.labels["base_model"])
        self.project_base_model.labels(project, base_model).set(1)

    def forget_project(self, project: str) -> None:
        """Remove every series labelled with a deleted project."""
        for metric in vars(self).values():
            names = getattr(metric, "_labelnames", ())
            if not isinstance(metric, MetricWrapperBase) or "project" not in names:
                continue
            series = {
                tuple(sample.labels[n] for n in names)
                for family in metric.collect()
                for sample in family.samples
                if sample.labels.get("project") == project
            }
            for values in series:
                metric.remove(*values)

    def init_project(self, project: str, base_model: str | None = None) -> None:
        """Create a project's label sets so dashboards show zeros before the first event, and
        name its base model."""
        if base_model is not None:
            self.set_base_model(project, base_model)
        for outcome in RUN_OUTCOMES:
            self.runs.labels(project, outcome)
        for decision in GATE_DECISIONS:
            self.gate_decisions.labels(project, decision)
        for decision in ONLINE_DECISIONS[:2]:
            self.online_decisions.labels(project, decision)
        for stage in RUN_STAGES:
            self.run_stage_seconds.labels(project, stage)
        self.canary_fraction.labels(project)
        self.gateway_logs_unreadable.labels(project)
        for kind in IMPLICIT_KINDS:
            self.implicit_feedback.labels(project, kind)
