"""A reward model learned from the thumbs, trained beside the adapter, and scoring answers with it.

What it is: the base model with a LoRA and a scalar head (`AutoModelForSequenceClassification`,
one label), trained with TRL's `RewardTrainer` as it is (Bradley-Terry loss on preference pairs)
on the training split only. The offline gate (evals) uses it as a judge, but only after it agrees
with the holdout's own thumbs; that calibration is computed in evals, not here.

Which pairs the feedback gives (`build_pairs`), every thumb used at least once:

- a correction                -> (prompt + correction) preferred over (prompt + the original answer)
- a thumbs-down answer        -> paired with a thumbs-up answer to the same prompt when there is one,
                                 else with a thumbs-up answer to another prompt (cycled, seeded)
- thumbs-up answers left over -> paired with thumbs-down answers the same way

Pairs across prompts are what make the scalar an absolute "would users like this answer" score:
the pairwise logistic loss over (liked, disliked) pairs is the usual surrogate of the AUC the gate
calibrates it by; same-prompt pairs alone are rare in thumbs data (15% in shared/notes/training.md).

The directory it writes appears all at once (temporary sibling, fsync, rename) and holds the PEFT
files (LoRA + the head, saved as `modules_to_save`) and `manifest.json` with `"kind":
"reward_model"` and `schema_version` (`REWARD_SCHEMA_VERSION`), which `score_answers` checks.

Scoring (`python -m trainer score DIR --input items.jsonl --output scores.jsonl`) renders each
conversation with the chat template exactly as RewardTrainer did in training (the answer as the
last assistant message) and returns one float per answer: higher means users would like it more.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from trainer.errors import BaseModelError, NotEnoughSignalError, OutputExistsError, TrainerError
from trainer.progress import Progress
from trainer.snapshot import FeedbackRow
from trainer.spec import RewardModelSpec, RunSpec

REWARD_SCHEMA_VERSION = 1
REWARD_KIND = "reward_model"
REWARD_FILES = ("adapter_config.json", "adapter_model.safetensors", "manifest.json")


class RewardModelError(TrainerError):
    """A reward model directory is missing, incomplete or of another schema, or its input is bad."""


@dataclass(frozen=True)
class RatedAnswer:
    """One answer with what its user said about it: the narrow input of `build_pairs`."""

    prompt: list[dict[str, Any]]
    answer: str
    rating: int | None
    correction: str | None


def rated_answers(rows: Sequence[FeedbackRow]) -> list[RatedAnswer]:
    """The snapshot rows as `RatedAnswer`s, in time order (the one place that reads `FeedbackRow`)."""
    ordered = sorted(rows, key=lambda r: (r.created_at, r.log_id))
    return [RatedAnswer(r.prompt, r.completion, r.rating, r.correction) for r in ordered]


@dataclass
class RewardPairs:
    """Preference pairs in TRL's conversational implicit-prompt format, with counts by origin."""

    pairs: list[dict[str, list[dict[str, Any]]]]
    corrections: int = 0
    same_prompt: int = 0
    cross_prompt: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "pairs": len(self.pairs),
            "correction_pairs": self.corrections,
            "same_prompt_pairs": self.same_prompt,
            "cross_prompt_pairs": self.cross_prompt,
            "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down,
        }


def _conversation(prompt: list[dict[str, Any]], answer: str) -> list[dict[str, Any]]:
    return [*prompt, {"role": "assistant", "content": answer}]


def build_pairs(rated: Sequence[RatedAnswer], *, seed: int = 0) -> RewardPairs:
    """Preference pairs from thumbs and corrections (module docstring); deterministic for a seed.

    An empty or unchanged correction corrects nothing; an answer liked by one user and disliked by
    another to the same prompt is not paired with itself.
    """
    out = RewardPairs(pairs=[])
    liked: list[RatedAnswer] = []
    disliked: list[RatedAnswer] = []
    for r in rated:
        correction = r.correction if r.correction and r.correction.strip() != r.answer.strip() else None
        if correction is not None:
            out.pairs.append(
                {"chosen": _conversation(r.prompt, correction), "rejected": _conversation(r.prompt, r.answer)}
            )
            out.corrections += 1
        if r.rating == 1:
            liked.append(r)
        elif r.rating == -1:
            disliked.append(r)
    out.thumbs_up, out.thumbs_down = len(liked), len(disliked)
    if not liked or not disliked:
        return out
    key = lambda r: json.dumps(r.prompt, sort_keys=True)  # noqa: E731
    liked_by_prompt: dict[str, list[RatedAnswer]] = defaultdict(list)
    for r in liked:
        liked_by_prompt[key(r)].append(r)
    rng = random.Random(f"reward-pairs:{seed}")
    pool = list(liked)
    rng.shuffle(pool)
    used: set[int] = set()
    cursor = 0
    same_cursor: dict[str, int] = defaultdict(int)
    for down in disliked:
        k = key(down)
        same = [u for u in liked_by_prompt.get(k, []) if u.answer.strip() != down.answer.strip()]
        if same:
            up = same[same_cursor[k] % len(same)]
            same_cursor[k] += 1
            out.same_prompt += 1
        else:
            up = pool[cursor % len(pool)]
            cursor += 1
            out.cross_prompt += 1
        used.add(id(up))
        out.pairs.append(
            {
                "chosen": _conversation(up.prompt, up.answer),
                "rejected": _conversation(down.prompt, down.answer),
            }
        )
    for up in (u for u in liked if id(u) not in used):
        down = disliked[rng.randrange(len(disliked))]
        out.cross_prompt += 1
        out.pairs.append(
            {
                "chosen": _conversation(up.prompt, up.answer),
                "rejected": _conversation(down.prompt, down.answer),
            }
        )
    return out


def _step_events(progress: Progress):
    """A callback turning the Trainer's log calls into `reward_step` events (`step` is the adapter's)."""
    from transformers import TrainerCallback

    class RewardStepEvents(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and state.is_world_process_zero:
                fields = {k: v for k, v in logs.items() if isinstance(v, int | float)}
                progress.emit("reward_step", step=state.global_step, total_steps=state.max_steps, **fields)

    return RewardStepEvents()


def train_reward_model(
    spec: RunSpec, rows: Sequence[FeedbackRow], *, snapshot_sha256: str, progress: Progress
) -> Path:
    """Train the reward model `spec.reward_model` describes on `rows` (the training split) and
    publish its directory. Raises `NotEnoughSignalError` (fewer than `min_pairs` pairs: nothing
    written), `OutputExistsError`, `BaseModelError`."""
    rspec = spec.reward_model
    assert rspec is not None
    started = time.monotonic()
    out = Path(rspec.output_dir)
    if out.exists():
        raise OutputExistsError(f"reward model directory {out} already exists; pick a new one")
    pairs = build_pairs(rated_answers(rows), seed=spec.seed)
    if len(pairs.pairs) < rspec.min_pairs:
        raise NotEnoughSignalError(
            f"too little signal for a reward model: {len(pairs.pairs)} preference pairs "
            f"({pairs.thumbs_up} thumbs-up, {pairs.thumbs_down} thumbs-down, {pairs.corrections} corrections), "
            f"need {rspec.min_pairs}"
        )

    import torch
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from trainer.run import _fsync_dir, _fsync_tree, is_main_process

    disable_progress_bars()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.base_model, local_files_only=True)
    except Exception as exc:
        raise BaseModelError(f"cannot load the tokenizer of {spec.base_model}: {exc}") from exc
    hp = _hyperparameters(spec, rspec)
    partial = out.parent / f".{out.name}.partial-{re.sub(r'[^A-Za-z0-9._-]', '_', spec.run_id)}"
    main = is_main_process()
    if main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    progress.emit("reward_start", total_steps=rspec.max_steps, **pairs.counts())
    try:
        config = RewardConfig(
            output_dir=str(partial),
            model_init_kwargs={"local_files_only": True, "dtype": "float32"},
            learning_rate=rspec.learning_rate,
            max_steps=rspec.max_steps,
            per_device_train_batch_size=rspec.batch_size,
            max_length=rspec.max_length,
            seed=spec.seed,
            data_seed=spec.seed,
            logging_steps=spec.optim.logging_steps,
            use_cpu=not torch.cuda.is_available(),
            bf16=spec.bf16,
            fp16=False,
            gradient_checkpointing=False,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = RewardTrainer(
            model=spec.base_model,
            args=config,
            train_dataset=Dataset.from_list(pairs.pairs).shuffle(seed=spec.seed),
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=spec.lora.r,
                lora_alpha=spec.lora.alpha,
                lora_dropout=spec.lora.dropout,
                target_modules=_target_modules(spec),
                task_type="SEQ_CLS",
            ),
            callbacks=[_step_events(progress)],
        )
        result = trainer.train()
        trainer.save_model(str(partial))
        if main:
            for path in partial.iterdir():
                if path.name not in REWARD_FILES:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                else:
                    path.chmod(0o644)
            last = next((log for log in reversed(trainer.state.log_history) if "loss" in log), {})
            manifest = {
                "schema_version": REWARD_SCHEMA_VERSION,
                "kind": REWARD_KIND,
                "run_id": spec.run_id,
                "base_model": spec.base_model,
                "snapshot_sha256": snapshot_sha256,
                "trained_on": "train split only; the holdout is left for calibration",
                "examples": pairs.counts(),
                "hyperparameters": hp,
                "max_length": rspec.max_length,
                "pad_token_id": tokenizer.pad_token_id,
                "metrics": {
                    "steps": result.global_step,
                    "train_loss": result.training_loss,
                    "train_runtime_s": result.metrics.get("train_runtime"),
                    "last_log": {k: v for k, v in last.items() if isinstance(v, int | float)},
                },
                "wall_time_s": round(time.monotonic() - started, 3),
                "created_at": datetime.now(UTC).isoformat(),
            }
            (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
            _fsync_tree(partial)
            if out.exists():
                raise OutputExistsError(
                    f"reward model directory {out} appeared during training; not overwritten"
                )
            os.replace(partial, out)
            _fsync_dir(out.parent)
    except BaseException:
        if main:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _hyperparameters(spec: RunSpec, rspec: RewardModelSpec) -> dict[str, Any]:
    return {
        "learning_rate": rspec.learning_rate,
        "max_steps": rspec.max_steps,
        "batch_size": rspec.batch_size,
        "seed": spec.seed,
        "lora": {"r": spec.lora.r, "alpha": spec.lora.alpha, "dropout": spec.lora.dropout},
    }


def _target_modules(spec: RunSpec) -> list[str] | str:
    # PEFT's "all-linear" keeps the classification head out of LoRA (it is trained whole, as
    # modules_to_save); explicit names are passed as they are.
    targets = list(spec.lora.target_modules)
    return "all-linear" if targets == ["all-linear"] else targets


# --- scoring


class ScoreItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One line of the scoring input: a conversation and the answer to score."""

    id: str
    messages: list[dict[str, Any]]
    answer: str


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The reward model's manifest, after checking kind and schema version; `RewardModelError` if not one."""
    path = Path(directory) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RewardModelError(
            f"{directory} is no reward model directory: cannot read {path.name} ({exc})"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != REWARD_KIND:
        raise RewardModelError(f"{path} is not a reward model manifest (kind {manifest.get('kind')!r})")
    if manifest.get("schema_version") != REWARD_SCHEMA_VERSION:
        raise RewardModelError(
            f"{path} has schema_version {manifest.get('schema_version')!r}; this trainer reads {REWARD_SCHEMA_VERSION}"
        )
    return manifest


class RewardScorer:
    """A loaded reward model: `score(items)` -> one float per item (higher = users would like it more)."""

    def __init__(self, directory: str | Path, *, base_model: str | None = None, threads: int = 1) -> None:
        self.manifest = read_manifest(directory)  # before the heavy imports: a wrong directory fails fast

        import torch

        # One thread, as for training (shared/notes/training.md): on a busy 2-core box two threads
        # scored 200 answers in 68 s instead of 5 s, and loading took 67 s.
        torch.set_num_threads(threads)
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        base = base_model or self.manifest["base_model"]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=1, local_files_only=True, dtype=torch.float32
            )
        except Exception as exc:
            raise BaseModelError(f"cannot load base model {base} for the reward model: {exc}") from exc
        pad = self.manifest["pad_token_id"]
        model.config.pad_token_id = pad
        self.pad_token_id = pad
        self.max_length = int(self.manifest["max_length"])
        self.model = PeftModel.from_pretrained(model, str(directory)).eval()
        self._torch = torch

    def _ids(self, item: ScoreItem) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            _conversation(item.messages, item.answer), tokenize=True, return_dict=True
        )["input_ids"]
        return list(ids[-self.max_length :])  # the head reads the last token: keep the answer's end

    def score(self, items: Sequence[ScoreItem], *, batch_size: int = 16) -> list[float]:
        torch = self._torch
        scores: list[float] = []
        for start in range(0, len(items), batch_size):
            batch = [self._ids(item) for item in items[start : start + batch_size]]
            width = max(len(ids) for ids in batch)
            # Right padding, as RewardTrainer's collator pads: the model finds the last real token by pad id.
            input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, ids in enumerate(batch):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                mask[i, : len(ids)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, 0]
            scores.extend(float(x) for x in logits)
        return scores


def read_items(path: str | Path) -> list[ScoreItem]:
    """Scoring input: JSONL, one `ScoreItem` per line; `RewardModelError` names the bad line."""
    decoder = msgspec.json.Decoder(ScoreItem)
    items = []
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise RewardModelError(f"cannot read scoring input {path}: {exc.strerror or exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(decoder.decode(line))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise RewardModelError(f"scoring input {path} line {number}: {exc}") from exc
    return items


def score_file(
    directory: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = 16,
    threads: int = 1,
) -> int:
    """Score every item of `input_path`, write `{"id", "score"}` lines to `output_path` (all at once,
    by rename) in input order; returns the number scored."""
    read_manifest(directory)
    items = read_items(input_path)
    scorer = RewardScorer(directory, threads=threads)
    scores = scorer.score(items, batch_size=batch_size)
    out = Path(output_path)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("wb") as f:
        for item, value in zip(items, scores, strict=True):
            f.write(msgspec.json.encode({"id": item.id, "score": value}) + b"\n")
    os.replace(tmp, out)
    return len(items)
