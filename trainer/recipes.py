"""The training recipes: SFT, DPO and KTO with TRL's trainers as they are, on a LoRA adapter.

Each recipe reads like a lab notebook: load the base (and parent adapter), build the dataset,
configure TRL, train, save the adapter, return metrics. What they share (CPU settings, the
per-method defaults, the LoRA shape) is spelled out once below.

The settings that matter on CPU (shared/notes/training.md): `use_cpu`, no bf16/fp16 (TRL turns
bf16 on by default), no gradient checkpointing (TRL turns it on by default), `report_to="none"`,
`dataloader_num_workers=0`. On a GPU host (and under `accelerate launch`) the same code runs on
the accelerator; `bf16` comes from the spec.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import msgspec
import torch
from datasets import Dataset, Features, Json, List, Value
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

from formats.run import StepEvent
from trainer.dataset import Example, Examples
from trainer.errors import BaseModelError
from trainer.lora_targets import resolve_target_modules
from trainer.progress import Progress
from trainer.spec import RunSpec

# Re-measured on the tiny model (tests/test_trainer_training.py); see shared/notes/training.md.
DEFAULT_LEARNING_RATE = {"sft": 1e-3, "dpo": 5e-4, "kto": 5e-4}
DEFAULT_BETA = {"dpo": 0.1, "kto": 1.0}

# What an adapter directory holds besides manifest.json. TRL also saves the tokenizer, its
# training arguments and, when continuing a parent, a frozen "ref" copy: none of that is served.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class StepEvents(TrainerCallback):
    """Turns the Trainer's log calls into `step` progress events (loss plus what the method logs).

    With validation, the Trainer logs the evaluation (`eval_loss`, ...) after the step's training
    figures: the step's event is sent again with them added, so the last event has both."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.last: StepEvent | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        figures = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
        if "loss" in logs:
            named = {k: figures.pop(k, None) for k in ("loss", "epoch", "learning_rate")}
            self.last = StepEvent(step=state.global_step, total_steps=state.max_steps, **named, logs=figures)
        elif "eval_loss" in logs and self.last is not None and self.last.step == state.global_step:
            figures.pop("epoch", None)
            self.last = msgspec.structs.replace(self.last, logs={**self.last.logs, **figures})
        else:
            return
        self.progress.send(self.last)


@dataclass(frozen=True)
class Job:
    """One recipe's inputs: the spec, the examples, where to save, who listens to progress."""

    spec: RunSpec
    examples: Examples
    save_dir: Path
    callbacks: list[TrainerCallback]
    validation: Examples | None = None
    """Fitted examples of the holdout to compute the loss on (`RunSpec.validation`), if any."""

    def eval_dataset(self, method: str) -> Dataset | None:
        """The validation examples of `method` as a dataset; None without any."""
        examples = self.validation.of(method) if self.validation is not None else []
        return _dataset(examples, self.spec.seed) if examples else None


def hyperparameters(spec: RunSpec, method: str, examples: Examples, limit: int) -> dict:
    """The resolved settings a method trains with (spec values, then per-method defaults).

    `max_length` is the longest fitted example of the method (TRL truncates nothing: the prompts
    were fitted into `limit`, `max_length_limit`, by `trainer.tokens`)."""
    optim = spec.optim
    lengths = [e.length for e in examples.of(method)]
    hp = {
        "learning_rate": optim.learning_rate or DEFAULT_LEARNING_RATE[method],
        "max_steps": optim.max_steps,
        "epochs": optim.epochs if optim.max_steps is None else None,
        "batch_size": optim.batch_size,
        "gradient_accumulation_steps": optim.gradient_accumulation_steps,
        "max_length": max(lengths, default=limit),
        "max_length_limit": limit,
        "warmup_steps": optim.warmup_steps,
        "lr_scheduler": optim.lr_scheduler,
        "weight_decay": optim.weight_decay,
        "max_grad_norm": optim.max_grad_norm,
        "seed": spec.seed,
        "bf16": spec.bf16,
        "torch_threads": spec.torch_threads,
    }
    if method in DEFAULT_BETA:
        hp["beta"] = optim.beta or DEFAULT_BETA[method]
    if method == "dpo":
        hp["loss_type"] = list(optim.dpo_loss_type)
    if method == "kto":
        # Balance the labels (training.md): liked rows weigh n_down / n_up, disliked rows 1.
        hp["desirable_weight"] = optim.kto_desirable_weight or round(
            examples.kto_undesirable / examples.kto_desirable, 4
        )
    return hp


def _trl_args(job: Job, hp: dict, evaluate: bool = False) -> dict:
    """TrainingArguments shared by every TRL config: the run's schedule plus the CPU settings;
    `evaluate`: on the validation examples at every logging step (and once more at the end)."""
    return {
        "output_dir": str(job.save_dir),
        "learning_rate": hp["learning_rate"],
        "max_steps": hp["max_steps"] or -1,
        "num_train_epochs": hp["epochs"] or 1.0,
        "per_device_train_batch_size": hp["batch_size"],
        "gradient_accumulation_steps": hp["gradient_accumulation_steps"],
        "max_length": hp["max_length"],
        "warmup_steps": hp["warmup_steps"],
        "lr_scheduler_type": hp["lr_scheduler"],
        "weight_decay": hp["weight_decay"],
        "max_grad_norm": hp["max_grad_norm"],
        "seed": hp["seed"],
        "data_seed": hp["seed"],
        "logging_steps": job.spec.optim.logging_steps,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": hp["bf16"],
        "fp16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "steps" if evaluate else "no",
        "eval_steps": job.spec.optim.logging_steps,
        "per_device_eval_batch_size": hp["batch_size"],
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False,  # every LoRA weight is used; the check costs a pass
    }


def _reference_once(hp: dict, rows: int) -> dict:
    """TRL's `precompute_ref_log_probs`, on when the run visits its examples more than once: the
    reference model's log-probs (KTO: of the KL pairs too) are then computed in one pass before
    training instead of at every visit. They are the same numbers (the reference is frozen and
    LoRA dropout does not touch it), and a KTO step drops two of its four forward passes. A run that
    sees each example at most once would only pay for examples it never reaches. Measured on the
    demo's first KTO run (149 rows, 60 steps of 16, a loaded 2-core machine): the training loop took
    13.6 s instead of 17.2 s on bare questions, and 2.2 s instead of 4.5 s a step behind the app's
    ~250-token system prompt, with the same final loss."""
    if hp["max_steps"]:
        visits = hp["max_steps"] * hp["batch_size"] * hp["gradient_accumulation_steps"]
    else:
        visits = (hp["epochs"] or 1.0) * rows
    return {"precompute_ref_log_probs": visits > rows, "precompute_ref_batch_size": hp["batch_size"]}


def _lora(spec: RunSpec, model) -> LoraConfig | None:
    """A fresh adapter's shape, or None when continuing a parent (it keeps its own shape).

    The targets are resolved for the model's architecture (`trainer.lora_targets`): "all-linear"
    becomes the sorted short names of the linear layers vLLM can apply LoRA to (Phi-3's fused
    `qkv_proj`, Llama's `q_proj`...); named ones must be such layers, else `LoraTargetError`.
    """
    if spec.parent_adapter:
        return None
    return LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=resolve_target_modules(model, spec.lora.target_modules),
        task_type="CAUSAL_LM",
    )


def load_tokenizer(spec: RunSpec):
    """The base model's tokenizer (and chat template), from local files only. Raises BaseModelError."""
    try:
        return AutoTokenizer.from_pretrained(spec.base_model, local_files_only=True)
    except Exception as exc:
        raise BaseModelError(f"cannot load the tokenizer of base model {spec.base_model}: {exc}") from exc


def load_model(spec: RunSpec):
    """The base model in float32 and its tokenizer, from local files only; with the parent adapter
    loaded trainable when the spec continues one. Raises BaseModelError when they cannot be loaded."""
    tokenizer = load_tokenizer(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.base_model, local_files_only=True, dtype=torch.float32
        )
    except Exception as exc:  # whatever the cause (missing shard, corrupt weights), it is the base model's
        raise BaseModelError(f"cannot load base model {spec.base_model}: {exc}") from exc
    if spec.parent_adapter:
        try:
            model = PeftModel.from_pretrained(model, spec.parent_adapter, is_trainable=True)
        except Exception as exc:
            raise BaseModelError(f"cannot load parent adapter {spec.parent_adapter}: {exc}") from exc
    return model, tokenizer


def _dataset(examples: list[Example], seed: int) -> Dataset:
    """The fitted examples as a TRL dataset: conversational (messages) or standard (text).

    Each message is stored as a JSON object (`datasets.Json`): Arrow would otherwise merge every
    row's messages into one struct type, padding a tool call's arguments with every other call's
    keys as nulls. `tools` is JSON text, which TRL decodes before `apply_chat_template`."""
    datasets.disable_progress_bars()  # one bar per preprocessing pass only clutters the run's log
    rows = [e.trl for e in examples]
    columns = {name: Value("string") for name in rows[0] if name != "label"}
    if isinstance(rows[0]["prompt"], list):
        columns = {name: List(Json()) for name in columns}
        columns["tools"] = Value("string")
    if "label" in rows[0]:
        columns["label"] = Value("bool")
    # Shuffled here, once, with the run's seed: KTO samples sequentially, so the input order is
    # the batch order, and it must not be "all thumbs-up first".
    return Dataset.from_list(rows, features=Features(columns)).shuffle(seed=seed)


def _save_adapter(trainer, save_dir: Path) -> None:
    """Save through the trainer (gathers weights under FSDP/DeepSpeed), then keep only the adapter."""
    trainer.save_model(str(save_dir))
    if not trainer.accelerator.is_main_process:
        return
    for path in save_dir.iterdir():
        if path.name not in ADAPTER_FILES:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            path.chmod(0o644)  # safetensors writes 0600; the server may run as another user
    # PEFT writes target_modules in set order, which changes with the hash seed: sort it, so the
    # same seed gives byte-identical adapter files in any process.
    config_path = save_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _metrics(trainer, result) -> dict:
    """What training reports: steps, mean loss, speed, the last logged values of the method, and
    the figures of every logged step (`history`, with the validation figures `eval_*` of that step
    when the run validates); with validation, the final `eval_loss` over every validation example."""
    last = next((log for log in reversed(trainer.state.log_history) if "loss" in log), {})
    validation = {}
    if trainer.eval_dataset is not None:
        validation["eval_loss"] = trainer.evaluate().get("eval_loss")
    history: dict[int, dict] = {}
    for log in trainer.state.log_history:
        if "loss" in log or "eval_loss" in log:
            row = history.setdefault(log["step"], {"step": log["step"]})
            row.update({k: v for k, v in log.items() if isinstance(v, int | float) and k != "epoch"})
    return {
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "epochs": result.metrics.get("epoch"),
        # What TRL kept after its own preprocessing: equal to the examples counted in the manifest
        # (fitting left nothing for TRL to drop or truncate).
        "examples_trained": len(trainer.train_dataset),
        "last_log": {k: v for k, v in last.items() if isinstance(v, int | float)},
        "history": list(history.values()),
        **validation,
    }


def train_sft(job: Job, hp: dict) -> dict:
    """Supervised fine-tuning on liked and corrected answers (loss on the answer tokens only)."""
    model, tokenizer = load_model(job.spec)
    dataset = _dataset(job.examples.sft, job.spec.seed)
    held = job.eval_dataset("sft")
    config = SFTConfig(**_trl_args(job, hp, held is not None))
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=held,
        processing_class=tokenizer,
        peft_config=_lora(job.spec, model),
        callbacks=job.callbacks,
    )
    result = trainer.train()
    _save_adapter(trainer, job.save_dir)
    return _metrics(trainer, result)


def train_dpo(job: Job, hp: dict) -> dict:
    """DPO on (chosen, rejected) pairs, plus an SFT term on the chosen answers so the model keeps
    answering (plain DPO collapsed the regression set in training.md). The reference is the base
    model, or the parent adapter when continuing (TRL keeps a frozen copy of it)."""
    model, tokenizer = load_model(job.spec)
    dataset = _dataset(job.examples.dpo, job.spec.seed)
    held = job.eval_dataset("dpo")
    config = DPOConfig(
        **_trl_args(job, hp, held is not None), **_reference_once(hp, len(dataset)),
        beta=hp["beta"], loss_type=hp["loss_type"],
    )  # fmt: skip
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=held,
        processing_class=tokenizer,
        peft_config=_lora(job.spec, model),
        callbacks=job.callbacks,
    )
    result = trainer.train()
    _save_adapter(trainer, job.save_dir)
    return _metrics(trainer, result)


def train_kto(job: Job, hp: dict) -> dict:
    """KTO on single thumbs (liked / disliked answers), so unpaired feedback is not wasted."""
    model, tokenizer = load_model(job.spec)
    dataset = _dataset(job.examples.kto, job.spec.seed)
    held = job.eval_dataset("kto")
    config = KTOConfig(
        **_trl_args(job, hp, held is not None), **_reference_once(hp, len(dataset)),
        beta=hp["beta"], desirable_weight=hp["desirable_weight"],
    )  # fmt: skip
    trainer = KTOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=held,
        processing_class=tokenizer,
        peft_config=_lora(job.spec, model),
        callbacks=job.callbacks,
    )
    result = trainer.train()
    _save_adapter(trainer, job.save_dir)
    return _metrics(trainer, result)


RECIPES: dict[str, Callable[[Job, dict], dict]] = {"sft": train_sft, "dpo": train_dpo, "kto": train_kto}
