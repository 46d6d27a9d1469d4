"""One training run, from SPEC.json to an adapter directory that appears all at once.

Order of work: check every input (spec, base model, parent, snapshot, enough signal) before the
heavy libraries are imported, so a bad run fails in about a second; then check the LoRA targets
against the base's architecture (`trainer.lora_targets`, on the meta device), render and fit the
examples with the base model's tokenizer (`trainer.tokens`: what cannot train is dropped and
counted, and a run left with no answer tokens fails saying so) and choose the method on what
remains; then train in a hidden sibling `.<name>.partial-<run_id>` of the output directory, write
`manifest.json`, fsync and `os.replace` it into place. A failed run removes its partial directory: no half-written adapter
ever sits where the service looks for one.

Multi-GPU: every process runs this same function under `accelerate launch`; only the main one
writes progress, the manifest and does the rename.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from formats.manifest import MANIFEST, AdapterManifest, LoraShape, SnapshotRef
from formats.run import DoneEvent, RewardOutcome, StartEvent
from trainer.dataset import KINDS, Examples, build_examples, choose_method
from trainer.errors import BaseModelError, NotEnoughSignalError, NoTrainableTokensError, OutputExistsError
from trainer.progress import Progress
from trainer.snapshot import Snapshot, read_snapshot
from trainer.spec import RunSpec

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow")


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 of `accelerate launch` / torchrun."""
    return os.environ.get("RANK", "0") == "0"


def check_paths(spec: RunSpec) -> None:
    """The base model and parent adapter exist and the output does not. Raises a TrainerError."""
    base = Path(spec.base_model)
    if not (base / "config.json").is_file():
        raise BaseModelError(f"base model directory {base} does not exist or has no config.json")
    if spec.parent_adapter and not (Path(spec.parent_adapter) / "adapter_config.json").is_file():
        raise BaseModelError(
            f"parent adapter {spec.parent_adapter} does not exist or has no adapter_config.json"
        )
    if Path(spec.output_dir).exists():
        raise OutputExistsError(
            f"output directory {spec.output_dir} already exists; adapter versions are immutable, pick a new one"
        )
    if spec.reward_model and Path(spec.reward_model.output_dir).exists():
        raise OutputExistsError(f"reward model directory {spec.reward_model.output_dir} already exists")


def run(spec: RunSpec, progress: Progress) -> Path:
    """Train the adapter the spec describes; return its directory. Raises a TrainerError on bad input."""
    started = time.monotonic()
    check_paths(spec)
    snapshot = read_snapshot(spec.snapshot_dir, holdout=spec.validation)
    built = build_examples(snapshot.train, unreadable=snapshot.unreadable, seed=spec.seed)
    # Too little signal even before measuring in tokens: fail now, before the heavy imports.
    choose_method(built, spec.method, spec.min_examples, spec.auto_min_pair_share)

    # Inputs are good: now pay for importing torch and TRL.
    import torch

    from trainer.lora_targets import base_target_modules
    from trainer.recipes import RECIPES, Job, StepEvents, hyperparameters, load_tokenizer
    from trainer.tokens import Renderer, fit_examples, model_context

    tokenizer = load_tokenizer(spec)
    if not spec.parent_adapter:  # a parent keeps its own targets
        base_target_modules(spec.base_model, spec.lora.target_modules)  # LoraTargetError before any work
    context = model_context(spec.base_model, tokenizer)
    limit = min(spec.optim.max_length, context) if context else spec.optim.max_length
    examples = fit_examples(built, Renderer(tokenizer), limit)
    check_trainable(built, examples, spec.method, limit, context)
    choice = choose_method(examples, spec.method, spec.min_examples, spec.auto_min_pair_share)

    torch.set_num_threads(spec.torch_threads)
    hp = hyperparameters(spec, choice.method, examples, limit)
    out = Path(spec.output_dir)
    partial = out.parent / f".{out.name}.partial-{re.sub(r'[^A-Za-z0-9._-]', '_', spec.run_id)}"
    main = is_main_process()
    if main:
        shutil.rmtree(partial, ignore_errors=True)  # left by a crashed attempt of the same run
        partial.mkdir(parents=True)
    progress.send(
        StartEvent(
            run_id=spec.run_id,
            method=choice.method,
            why=choice.why,
            examples=choice.examples,
            total_steps=spec.optim.max_steps,
            counts=examples.counts(),
            max_length=hp["max_length"],
        )
    )
    try:
        validation = None
        if snapshot.holdout:  # fitted as the training examples are, so the two losses compare
            held = build_examples(snapshot.holdout, seed=spec.seed)
            validation = fit_examples(held, Renderer(tokenizer), limit)
        job = Job(spec=spec, examples=examples, save_dir=partial, callbacks=[StepEvents(progress)],
                  validation=validation)  # fmt: skip
        prepare_s = round(time.monotonic() - started, 3)
        # Libraries print log dicts to stdout; stdout belongs to the progress events.
        with contextlib.redirect_stdout(sys.stderr):
            metrics = RECIPES[choice.method](job, hp)
        adapter_s = round(time.monotonic() - started, 3)
        # Beside the adapter, on every rank (RewardTrainer is distributed like the recipes), before
        # the adapter is published: a crash here leaves neither directory half-written.
        reward = _train_reward_model(spec, snapshot, progress) if spec.reward_model else None
        if main:
            manifest = AdapterManifest(
                kind="trained",
                run_id=spec.run_id,
                parent_version=spec.parent_version,
                parent_adapter=spec.parent_adapter,
                method=choice.method,
                method_requested=spec.method,
                method_why=choice.why,
                base_model=spec.base_model,
                snapshot_sha256=snapshot.sha256,
                snapshot=SnapshotRef(
                    dir=str(snapshot.path),
                    files={name: entry.sha256 for name, entry in snapshot.manifest.files.items()},
                    rows={
                        "train": len(snapshot.train) + snapshot.unreadable,
                        "holdout": snapshot.holdout_rows,
                    },
                ),
                examples=examples.counts(),
                hyperparameters=msgspec.to_builtins(hp, enc_hook=str),
                lora=_lora_shape(partial),
                libraries=_library_versions(),
                metrics=msgspec.to_builtins(metrics, enc_hook=str),
                wall_time_s=adapter_s,
                reward_model=None if reward is None else msgspec.to_builtins(reward),
                created_at=datetime.now(UTC).isoformat(),
            )
            (partial / MANIFEST).write_bytes(manifest.encode())
            _fsync_tree(partial)
            if out.exists():  # appeared while we trained: never overwrite a version
                raise OutputExistsError(f"output directory {out} appeared during training; not overwritten")
            os.replace(partial, out)
            _fsync_dir(out.parent)
    except BaseException:
        if main:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    progress.send(
        DoneEvent(
            adapter_dir=str(out),
            method=choice.method,
            metrics=metrics,
            wall_time_s=round(time.monotonic() - started, 3),
            adapter_wall_time_s=adapter_s,
            prepare_wall_time_s=prepare_s,
            reward_model=reward,
        )
    )
    return out


def _train_reward_model(spec: RunSpec, snapshot: Snapshot, progress: Progress) -> RewardOutcome:
    """Train the reward model beside the adapter; too little signal for one is reported, not fatal
    (the adapter is good without it: the gate then decides on other evidence)."""
    from trainer.reward import train_reward_model

    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            path = train_reward_model(
                spec, snapshot.train, snapshot_sha256=snapshot.sha256, progress=progress
            )
    except NotEnoughSignalError as exc:
        return RewardOutcome(skipped=str(exc))
    return RewardOutcome(dir=str(path), wall_time_s=round(time.monotonic() - started, 3))


def check_trainable(built: Examples, fitted: Examples, method: str, limit: int, context: int | None) -> None:
    """Raise NoTrainableTokensError when fitting left nothing to train on: no example of the
    requested method (any method for `auto`) kept, although the snapshot had some."""
    kinds = KINDS if method == "auto" else (method,)
    if any(fitted.of(k) for k in kinds) or not any(built.of(k) for k in kinds):
        return
    before = sum(len(built.of(k)) for k in kinds)
    reasons: Counter[str] = Counter()
    for k in kinds:
        reasons.update(fitted.dropped.get(k, {}))
    why = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
    budget = "optim.max_length"
    if context is not None:
        budget = f"the lesser of optim.max_length and the model's context ({context})"
    raise NoTrainableTokensError(
        f"no trainable answer tokens: all {before} {'/'.join(k.upper() for k in kinds)} examples were left "
        f"out when fitted into {limit} tokens, {budget} ({why}). too_long means the answer does not fit "
        "even with the prompt's oldest turns and its system message cut: raise optim.max_length (up to "
        "the model's context) or send shorter prompts; tool_calls_not_rendered means the base model's "
        "chat template cannot render tool calls"
    )


def _lora_shape(adapter_dir: Path) -> LoraShape:
    """The saved adapter's shape, read back from the file vLLM will read."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    keys = ("r", "lora_alpha", "lora_dropout", "target_modules", "peft_type")
    return msgspec.convert({k: config.get(k) for k in keys}, LoraShape)


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            with child.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)
