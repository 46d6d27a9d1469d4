"""The files and lines of one training run, as both sides read them: the service writes SPEC.json
and reads the trainer's progress lines; the trainer reads SPEC.json and writes the lines; the
service stores what each stage found as `RunStats`, which the API, the CLI and the demo read.

SPEC.json (`RunSpec`): everything one training run is told. Unknown fields are an error (a typo
must not silently fall back to a default). Relative paths are taken from the trainer's working
directory, as for any command (the service starts the trainer in its own working directory and
may write paths relative to it, e.g. under `./data`).

Defaults come from shared/notes/training.md and were re-measured on the tiny model: TRL's own
defaults (lr 1e-6 for DPO/KTO) move nothing at LoRA scale, 1e-3 collapses DPO/KTO, and plain DPO
hurts prompts whose rejected answers were fine, hence the SFT term in `dpo_loss_type`. Two differ
from the note: batch 16 (KTO at batch 8 learned the rule on 0-53% of held-out prompts in 60-150
steps, at 16 on 83%) and KTO beta 1.0 (at 0.5 it garbled held-out answers, "CAAK" for "CAIRO").

Example (every other field has a default):

    {"run_id": "r-20261121-01", "base_model": "/models/tiny", "snapshot_dir": "runs/r-20261121-01",
     "output_dir": "adapters/support@v4", "parent_version": "support@v3", "method": "auto"}

Progress (`TrainerEvent`): one JSON object per line on the trainer's stdout, tagged by `event`:
`start`, `step` (every `logging_steps`), then `done` or `error`. A reader skips lines it cannot
decode (a library printing to stdout) and ignores fields it does not know.

Every versioned format is checked by its reader (`formats.versioned`): a newer one is refused
naming the file (or record) and both versions.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from formats.snapshot import SnapshotStats
from formats.versioned import SchemaVersionError, check_version

SPEC_SCHEMA_VERSION = 1
STATS_SCHEMA_VERSION = 1

Method = Literal["auto", "sft", "dpo", "kto"]


class RunSpecError(ValueError):
    """SPEC.json is missing, not JSON, has unknown fields or values out of range."""


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


Positive = Annotated[float, msgspec.Meta(gt=0)]


class LoraSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The LoRA adapter's shape. Ignored when continuing from a parent adapter (its shape is kept)."""

    r: Annotated[
        int, _doc("LoRA rank. Must not exceed the server's --max-lora-rank."), msgspec.Meta(ge=1, le=256)
    ] = 8
    alpha: Annotated[int, _doc("LoRA scaling numerator (scale = alpha / r)."), msgspec.Meta(ge=1)] = 16
    dropout: Annotated[float, _doc("Dropout on the LoRA input."), msgspec.Meta(ge=0, lt=1)] = 0.0
    target_modules: Annotated[
        tuple[str, ...],
        _doc('Module names to adapt, or ["all-linear"] for every linear layer except the output head.'),
        msgspec.Meta(min_length=1),
    ] = ("all-linear",)


class OptimSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Optimiser and loss settings. `null` means the per-method default named in each description."""

    learning_rate: Annotated[
        Positive | None, _doc("AdamW learning rate. Default per method: sft 1e-3, dpo 5e-4, kto 5e-4.")
    ] = None
    beta: Annotated[
        Positive | None,
        _doc("DPO/KTO deviation from the reference (higher stays closer). Default: dpo 0.1, kto 1.0."),
    ] = None
    max_steps: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("Optimiser steps to take. null: train `epochs` passes."),
    ] = 100
    epochs: Annotated[
        float, _doc("Passes over the examples; used only when max_steps is null."), msgspec.Meta(gt=0)
    ] = 1.0
    batch_size: Annotated[
        int,
        _doc("Examples per device per step (KTO needs several: its KL term is estimated per batch)."),
        msgspec.Meta(ge=1),
    ] = 16
    gradient_accumulation_steps: Annotated[
        int, _doc("Micro-batches summed into one optimiser step."), msgspec.Meta(ge=1)
    ] = 1
    max_length: Annotated[
        int,
        _doc(
            "Most tokens of prompt + answer an example may have (the base model's context bounds it too). "
            "Training uses the longest example's length up to this; a longer prompt loses its oldest "
            "turns (then its system message), and an answer that still does not fit is dropped and counted."
        ),
        msgspec.Meta(ge=8),
    ] = 2048
    warmup_steps: Annotated[
        float, _doc("Linear warm-up: steps, or a fraction of all steps when below 1."), msgspec.Meta(ge=0)
    ] = 0
    lr_scheduler: Annotated[str, _doc("transformers scheduler name: linear, cosine, constant, ...")] = (
        "linear"
    )
    weight_decay: Annotated[float, _doc("AdamW weight decay."), msgspec.Meta(ge=0)] = 0.0
    max_grad_norm: Annotated[float, _doc("Gradient clipping norm."), msgspec.Meta(gt=0)] = 1.0
    dpo_loss_type: Annotated[
        tuple[str, ...],
        _doc('TRL DPO loss terms, summed. ["sigmoid","sft"] keeps the chosen answers likely (no collapse).'),
        msgspec.Meta(min_length=1),
    ] = ("sigmoid", "sft")
    kto_desirable_weight: Annotated[
        Positive | None, _doc("KTO weight of thumbs-up rows. null: n_down / n_up, which balances the labels.")
    ] = None
    logging_steps: Annotated[int, _doc("Steps between progress events on stdout."), msgspec.Meta(ge=1)] = 1


class RewardModelSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A reward model trained beside the adapter, on the same training split's feedback: the base
    model with a LoRA and a scalar head (TRL's RewardTrainer on preference pairs built from thumbs
    and corrections, `trainer/reward.py`). The offline gate may use it as a judge once it agrees
    with the holdout's own thumbs. Its LoRA shape is `lora` of the run."""

    output_dir: Annotated[
        str, _doc("Reward model directory to create. Must not exist; it appears only once complete.")
    ]
    learning_rate: Annotated[Positive, _doc("AdamW learning rate.")] = 1e-3
    max_steps: Annotated[int, _doc("Optimiser steps to take."), msgspec.Meta(ge=1)] = 100
    batch_size: Annotated[int, _doc("Preference pairs per device per step."), msgspec.Meta(ge=1)] = 16
    max_length: Annotated[
        int,
        _doc(
            "Longest tokenised conversation; longer pairs are left out of training, longer answers scored from their end."
        ),
        msgspec.Meta(ge=8),
    ] = 256
    min_pairs: Annotated[
        int,
        _doc("Fewest preference pairs to train on; fewer skips the reward model (the adapter still trains)."),
        msgspec.Meta(ge=1),
    ] = 32


class RunSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One training run: inputs, method, settings and where the adapter goes."""

    schema_version: Annotated[int, _doc("Version of this spec format; this trainer reads 1.")] = (
        SPEC_SCHEMA_VERSION
    )
    run_id: Annotated[
        str, _doc("The service's run id, recorded in the adapter manifest."), msgspec.Meta(min_length=1)
    ]
    base_model: Annotated[
        str, _doc("Directory of the base model and tokenizer (transformers format). Never downloaded.")
    ]
    snapshot_dir: Annotated[
        str,
        _doc(
            "Snapshot directory: train.parquet, holdout.parquet, manifest.json (the holdout is read "
            "only for `validation`)."
        ),
    ]
    output_dir: Annotated[
        str, _doc("Adapter directory to create. Must not exist; it appears only once complete.")
    ]
    parent_adapter: Annotated[
        str | None, _doc("Adapter directory to continue training from (its LoRA shape is kept). null: fresh.")
    ] = None
    parent_version: Annotated[
        str | None, _doc('Served name of the parent, e.g. "support@v3", recorded as lineage.')
    ] = None
    method: Annotated[
        Method,
        _doc("sft, dpo or kto; auto picks from the signal in the snapshot and records why."),
    ] = "auto"
    seed: Annotated[int, _doc("Seed for initialisation, shuffling and dropout: same seed, same adapter.")] = 0
    min_examples: Annotated[
        int,
        _doc("Fewest training examples (rows for SFT/KTO, pairs for DPO) accepted; fewer is an error."),
        msgspec.Meta(ge=1),
    ] = 32
    auto_min_pair_share: Annotated[
        float,
        _doc("auto: choose DPO when at least this share of rated answers sits in a preference pair."),
        msgspec.Meta(gt=0, le=1),
    ] = 0.5
    lora: Annotated[LoraSpec, _doc("LoRA adapter shape.")] = LoraSpec()
    optim: Annotated[OptimSpec, _doc("Optimiser and loss settings.")] = OptimSpec()
    torch_threads: Annotated[
        int,
        _doc("torch intra-op threads per process (1 is fastest on a shared 2-core box)."),
        msgspec.Meta(ge=1),
    ] = 1
    bf16: Annotated[bool, _doc("bfloat16 mixed precision (GPU hosts). Keep false on CPU.")] = False
    reward_model: Annotated[
        RewardModelSpec | None,
        _doc("Also train a reward model on the same feedback, for the offline gate. null: none."),
    ] = None
    validation: Annotated[
        bool,
        _doc(
            "Also compute the loss on holdout.parquet's examples of the method (a fine-tuning job's "
            "validation file) every logging step and at the end: step events carry `logs.eval_loss`, "
            "the metrics `eval_loss` and a per-step `history`."
        ),
    ] = False

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        """Read and validate SPEC.json; relative paths become absolute from the working directory.

        Raises `RunSpecError` naming the file and the offending field, `SchemaVersionError` for a
        spec of a newer version.
        """
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise RunSpecError(f"cannot read run spec {path}: {exc.strerror or exc}") from exc
        return cls.decode(raw, str(path)).resolved(Path.cwd())

    @classmethod
    def decode(cls, raw: bytes, what: str = "run spec") -> RunSpec:
        """A spec from JSON text, version first. `what` names it in errors."""
        try:
            check_version(raw, f"run spec {what}", SPEC_SCHEMA_VERSION)
            return msgspec.json.decode(raw, type=cls)
        except msgspec.ValidationError as exc:
            raise RunSpecError(f"invalid run spec {what}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise RunSpecError(f"run spec {what} is not valid JSON: {exc}") from exc

    def resolved(self, root: Path) -> RunSpec:
        """The same spec with every path made absolute relative to `root`."""

        def absolute(p: str | None) -> str | None:
            return None if p is None else str((root / p).resolve())

        return msgspec.structs.replace(
            self,
            base_model=absolute(self.base_model),
            snapshot_dir=absolute(self.snapshot_dir),
            output_dir=absolute(self.output_dir),
            parent_adapter=absolute(self.parent_adapter),
            reward_model=None
            if self.reward_model is None
            else msgspec.structs.replace(
                self.reward_model, output_dir=absolute(self.reward_model.output_dir)
            ),
        )


# --- a run's place at the shared artifact location (`launcher.artifacts_url`)

ARTIFACT_SNAPSHOT, ARTIFACT_PARENT = "snapshot", "parent"
ARTIFACT_ADAPTER, ARTIFACT_REWARD_MODEL = "adapter", "reward_model"
"""The directories of a run's place `URL/`: the service puts the snapshot and the parent adapter
there (`service.launchers`), the trainer (`trainer.artifacts`) puts back the adapter and the reward
model; the spec there (`URL/spec.json`) names them by these relative paths."""


# --- the trainer's progress lines


class StartEvent(msgspec.Struct, tag="start", tag_field="event", kw_only=True):
    """The inputs are checked and training begins."""

    run_id: str
    method: str
    why: str
    examples: int
    total_steps: int | None = None
    counts: dict[str, Any] = {}
    max_length: int | None = None


class StepEvent(msgspec.Struct, tag="step", tag_field="event", kw_only=True):
    """Every `logging_steps` optimiser steps: where training is. `logs` holds the other figures
    the method logs (e.g. `rewards/chosen`, `grad_norm`)."""

    step: int
    total_steps: int
    loss: float | None = None
    epoch: float | None = None
    learning_rate: float | None = None
    logs: dict[str, float | None] = {}


class RewardOutcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The reward model trained beside the adapter: its directory, or why it was skipped."""

    dir: str | None = None
    wall_time_s: float | None = None
    skipped: str | None = None


class DoneEvent(msgspec.Struct, tag="done", tag_field="event", kw_only=True):
    """The adapter directory is complete and in place."""

    adapter_dir: str
    method: str | None = None
    metrics: dict[str, Any] = {}
    wall_time_s: float | None = None
    adapter_wall_time_s: float | None = None
    prepare_wall_time_s: float | None = None
    """Of `adapter_wall_time_s`, the part before the method's recipe starts: reading the snapshot,
    importing torch and TRL, fitting the training (and validation) examples to the tokenizer. The
    rest, beyond `metrics.train_runtime_s`, is loading the model, TRL's own preprocessing and saving
    the adapter (an e2e run's training stage once took 159 s where TRL trained 37 s, 2026-12-03, and
    nothing said where the rest went)."""
    reward_model: RewardOutcome | None = None


class ErrorEvent(msgspec.Struct, tag="error", tag_field="event", kw_only=True):
    """The run stopped: `kind` is the trainer's exception class (SpecError, SnapshotError, ...)."""

    message: str
    kind: str


TrainerEvent = StartEvent | StepEvent | DoneEvent | ErrorEvent
_event_decoder = msgspec.json.Decoder(TrainerEvent)


def decode_event(line: bytes) -> TrainerEvent | None:
    """One progress line, or None for a line that is none of these events (a library's print,
    the reward model's own `reward_*` events)."""
    try:
        return _event_decoder.decode(line)
    except msgspec.DecodeError:
        return None


# --- what each stage of a run found


class ScorerSummary(msgspec.Struct, kw_only=True):
    """One scorer of the offline gate: its role, whether it could decide, and its difference."""

    role: str
    eligibility: str | None = None
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0
    calibration: dict[str, Any] | None = None


class EvalSummary(msgspec.Struct, kw_only=True):
    """The offline gate's verdict in short (the whole report: `GET /v1/runs/{id}/report.json`)."""

    promote: bool
    incumbent: str
    gate_config_version: int = 0
    evidence: str = ""
    reasons: list[str] = []
    scorers: dict[str, ScorerSummary] = {}
    wall_time_s: float = 0.0
    timings: dict[str, Any] = {}


OnlineOutcome = Literal["promote", "rollback", "continue"]
# Bounded reason codes: fit for a metric label or an event kind's detail.
OnlineReason = Literal[
    "better",
    "worse",
    "error_rate",
    "latency",
    "inconclusive_max_ratings",
    "inconclusive_max_duration",
    "below_min_ratings",
    "collecting",
]


class GateDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The online gate's verdict (`deploy.online_gate.decide`) and the numbers behind it.
    `statistic` is the promotion log-likelihood ratio (the online statistic to export as a
    metric; promote at `promote_at`), `harm_statistic` the rollback one (roll back at
    `rollback_at`); `lift` is canary rate minus champion rate."""

    outcome: OnlineOutcome
    reason: OnlineReason
    detail: str
    statistic: float
    harm_statistic: float
    promote_at: float
    rollback_at: float
    lift: float
    canary_rate: float
    champion_rate: float
    canary_ratings: int
    champion_ratings: int


class RunStats(msgspec.Struct, kw_only=True):
    """What each stage of a run found, as the service stores it and the API, CLI and demo read
    it. Each field is filled by one stage; a run that ended early lacks the later ones."""

    schema_version: int = STATS_SCHEMA_VERSION
    stage_seconds: dict[str, float] = {}
    """Seconds each stage took, by stage name (snapshot, training, evaluating)."""
    snapshot: SnapshotStats | None = None
    progress: StepEvent | None = None
    """The trainer's latest step (its last one once training ended)."""
    adapter: str | None = None
    """The version the run registered, e.g. `support@v4`."""
    training: DoneEvent | None = None
    eval: EvalSummary | None = None
    canary_started: float | None = None
    """Unix time the canary began."""
    online: GateDecision | None = None
    """The online gate's verdict that ended the canary."""
    load_deferred: str | None = None
    """A fine-tuning job's adapter that vLLM did not load at once: why (the first request naming
    it loads it)."""

    @classmethod
    def decode(cls, raw: bytes | str, what: str = "run stats") -> RunStats:
        """Stats from JSON, version first: `SchemaVersionError` naming `what` for a newer one
        (stored before this version's schema_version field: read as version 1)."""
        check_version(raw, what, STATS_SCHEMA_VERSION)
        return msgspec.json.decode(raw, type=cls)


RunStateName = Literal[
    "pending", "snapshot", "training", "evaluating", "canary",
    "promoted", "rejected", "rolled_back", "failed", "cancelled",
    "succeeded",  # a fine-tuning job's run: its adapter is loaded and addressable, not routed
]  # fmt: skip


class RunOut(msgspec.Struct, kw_only=True):
    """One run as the API shows it (`GET /v1/runs`, `GET /v1/runs/{id}`)."""

    id: str
    project: str
    trigger: str
    state: RunStateName
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    stats: RunStats = msgspec.field(default_factory=RunStats)


def runs_from_json(data: Any) -> list[RunOut]:
    """Runs as the API sent them (parsed JSON), each run's stats version checked first:
    `SchemaVersionError` naming the run for stats a newer server wrote."""
    for item in data:
        found = (item.get("stats") or {}).get("schema_version", 1)
        if not isinstance(found, int) or not 1 <= found <= STATS_SCHEMA_VERSION:
            raise SchemaVersionError(f"the stats of run {item.get('id')}", found, STATS_SCHEMA_VERSION)
    return msgspec.convert(data, list[RunOut])


__all__ = [
    "SPEC_SCHEMA_VERSION",
    "STATS_SCHEMA_VERSION",
    "DoneEvent",
    "ErrorEvent",
    "EvalSummary",
    "LoraSpec",
    "OptimSpec",
    "RewardModelSpec",
    "RewardOutcome",
    "RunOut",
    "RunSpec",
    "RunSpecError",
    "RunStats",
    "SchemaVersionError",
    "ScorerSummary",
    "StartEvent",
    "StepEvent",
    "TrainerEvent",
    "decode_event",
]  # fmt: skip
