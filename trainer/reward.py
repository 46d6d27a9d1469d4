"""A reward model learned from the thumbs, trained beside the adapter, and scoring answers with it.

What it is: the base model with a LoRA and a scalar head (`AutoModelForSequenceClassification`,
one label), trained with TRL's `RewardTrainer` as it is (Bradley-Terry loss on preference pairs)
on the training split only. The offline gate (evals) uses it as a judge, but only after it agrees
with the holdout's own thumbs; that calibration is computed in evals, not here.

Which pairs the feedback gives (`build_pairs`), every thumb used at least once:

- a correction                -> (prompt + correction) preferred over (prompt + the original answer)
- a thumbs-down answer        -> paired with a thumbs-up answer to the same prompt (and tools) when
                                 there is one, else with a thumbs-up answer to another prompt
                                 (cycled, seeded)
- thumbs-up answers left over -> paired with thumbs-down answers the same way

Training data is honest here as for the adapter (`trainer.dataset.answer_problem`): an answer cut
by length, interrupted, ended by an upstream error, or empty is never a liked answer, though it
may be a rejected one. Completions rows (a prompt that is text, not chat) are left out and counted:
the reward model judges chat answers.

Pairs across prompts are what make the scalar an absolute "would users like this answer" score:
the pairwise logistic loss over (liked, disliked) pairs is the usual surrogate of the AUC the gate
calibrates it by; same-prompt pairs alone are rare in thumbs data (15% in shared/notes/training.md).

Rendering: each side of a pair is the conversation with its answer as the last assistant message,
messages and tools prepared as vLLM prepares them (`formats.rendering`, through
`trainer.tokens.Renderer`), tokenized by the chat template, and handed to RewardTrainer as token ids.
A conversation longer than `max_length` keeps its last `max_length` tokens (the head reads the last
token, so the answer's end stays). A pair with a tool call is left out (`tool_calls_not_rendered`)
when the base model's template cannot render tool calls; one the template refuses is left out too
(`template_error`). Scoring renders and cuts the same way.

The directory it writes appears all at once (temporary sibling, fsync, rename) and holds the PEFT
files (LoRA + the head, saved as `modules_to_save`) and `manifest.json`
(`formats.reward.RewardManifest`), whose version and kind scoring checks before loading.

Scoring (`python -m trainer score DIR --input items.jsonl --output scores.jsonl`, the files of
`formats.reward`) returns one float per answer: higher means users would like it more.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec

from formats.chat import Tool
from formats.log import Message
from formats.reward import (
    SCORE_PROTOCOL_VERSION,
    RewardManifest,
    RewardManifestError,
    ScoreItem,
    ScoreLine,
    ScoreRequest,
    ScoreResponse,
    decode_reward_manifest,
)
from formats.snapshot import SnapshotRow
from trainer.dataset import answer_problem
from trainer.errors import BaseModelError, NotEnoughSignalError, OutputExistsError, TrainerError
from trainer.progress import Progress
from trainer.spec import RewardModelSpec, RunSpec

REWARD_FILES = ("adapter_config.json", "adapter_model.safetensors", "manifest.json")


class RewardModelError(TrainerError):
    """A reward model directory is missing, incomplete or of another schema, or its input is bad."""


@dataclass(frozen=True)
class RatedAnswer:
    """One answer with what its user said about it: the narrow input of `build_pairs`. `liked` and
    `disliked` already apply the honesty rule (an answer with a problem is never liked)."""

    prompt: list[Message]
    tools: list[Tool] | None
    answer: Message
    liked: bool
    disliked: bool
    correction: str | None


@dataclass
class RatedAnswers:
    """The rows' rated answers, and the rows left out by reason."""

    answers: list[RatedAnswer]
    left_out: Counter[str] = field(default_factory=Counter)


def rated_answers(rows: Sequence[SnapshotRow]) -> RatedAnswers:
    """The snapshot rows as `RatedAnswer`s, in time order (the one place that reads `SnapshotRow`
    for the reward model). Left out, counted: completions rows (`completions_prompt`), rows with
    no thumb and no correction (`unrated`); thumbs-up on an answer with a problem count as
    `not_liked_<problem>` (the row stays, for its correction)."""
    out = RatedAnswers(answers=[])
    for row in sorted(rows, key=lambda r: (r.created_at, r.log_id)):
        if not isinstance(row.prompt, list) or not row.prompt:
            out.left_out["completions_prompt"] += 1
            continue
        text = (row.completion.content or "").strip()
        correction = row.correction if row.correction and row.correction.strip() != text else None
        if row.rating not in (1, -1) and correction is None:
            out.left_out["unrated"] += 1
            continue
        problem = answer_problem(row)
        if row.rating == 1 and problem is not None:
            out.left_out[f"not_liked_{problem}"] += 1
        out.answers.append(
            RatedAnswer(
                prompt=row.prompt,
                tools=row.tools,
                answer=row.completion,
                liked=row.rating == 1 and problem is None,
                disliked=row.rating == -1,
                correction=correction,
            )
        )
    return out


@dataclass(frozen=True)
class Side:
    """One side of a preference pair: a conversation and the answer to it."""

    prompt: list[Message]
    tools: list[Tool] | None
    answer: Message


@dataclass
class RewardPairs:
    """Preference pairs (chosen, rejected), with counts by origin."""

    pairs: list[tuple[Side, Side]]
    corrections: int = 0
    same_prompt: int = 0
    cross_prompt: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    left_out: Counter[str] = field(default_factory=Counter)
    """Rows (before pairing) and pairs (when rendering) left out, by reason."""

    def counts(self) -> dict[str, Any]:
        return {
            "pairs": len(self.pairs),
            "correction_pairs": self.corrections,
            "same_prompt_pairs": self.same_prompt,
            "cross_prompt_pairs": self.cross_prompt,
            "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down,
            "left_out": dict(sorted(self.left_out.items())),
        }


_encode = msgspec.json.encode


def _side(r: RatedAnswer, answer: Message | None = None) -> Side:
    return Side(prompt=r.prompt, tools=r.tools, answer=answer or r.answer)


def _same(a: Message, b: Message) -> bool:
    return (a.content or "").strip() == (b.content or "").strip() and _encode(a.tool_calls) == _encode(
        b.tool_calls
    )


def build_pairs(rated: RatedAnswers | Sequence[RatedAnswer], *, seed: int = 0) -> RewardPairs:
    """Preference pairs from thumbs and corrections (module docstring); deterministic for a seed.

    An answer liked by one user and disliked by another to the same prompt is not paired with itself.
    """
    answers = rated.answers if isinstance(rated, RatedAnswers) else list(rated)
    out = RewardPairs(pairs=[])
    if isinstance(rated, RatedAnswers):
        out.left_out.update(rated.left_out)
    liked: list[RatedAnswer] = []
    disliked: list[RatedAnswer] = []
    for r in answers:
        if r.correction is not None:
            wanted = Message(role="assistant", content=r.correction)
            out.pairs.append((_side(r, wanted), _side(r)))
            out.corrections += 1
        if r.liked:
            liked.append(r)
        elif r.disliked:
            disliked.append(r)
    out.thumbs_up, out.thumbs_down = len(liked), len(disliked)
    if not liked or not disliked:
        return out
    key = lambda r: _encode([r.prompt, r.tools])  # noqa: E731
    liked_by_prompt: dict[bytes, list[RatedAnswer]] = defaultdict(list)
    for r in liked:
        liked_by_prompt[key(r)].append(r)
    rng = random.Random(f"reward-pairs:{seed}")
    pool = list(liked)
    rng.shuffle(pool)
    used: set[int] = set()
    cursor = 0
    same_cursor: dict[bytes, int] = defaultdict(int)
    for down in disliked:
        k = key(down)
        same = [u for u in liked_by_prompt.get(k, []) if not _same(u.answer, down.answer)]
        if same:
            up = same[same_cursor[k] % len(same)]
            same_cursor[k] += 1
            out.same_prompt += 1
        else:
            up = pool[cursor % len(pool)]
            cursor += 1
            out.cross_prompt += 1
        used.add(id(up))
        out.pairs.append((_side(up), _side(down)))
    for up in (u for u in liked if id(u) not in used):
        down = disliked[rng.randrange(len(disliked))]
        out.cross_prompt += 1
        out.pairs.append((_side(up), _side(down)))
    return out


def side_ids(renderer: Any, side: Side, max_length: int) -> list[int]:
    """Token ids of a conversation and its answer, cut to its last `max_length` tokens (module
    docstring). Raises what the template or `formats.rendering` raise for one it cannot render."""
    return renderer.conversation_ids(side.prompt, side.tools, side.answer)[-max_length:]


def tokenized_pairs(pairs: RewardPairs, renderer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """The pairs as RewardTrainer's pre-tokenized rows (`chosen_ids`, `rejected_ids`); pairs that
    cannot be rendered are left out and counted in `pairs.left_out`."""
    rows = []
    for chosen, rejected in pairs.pairs:
        uses_tools = any(
            m.tool_calls or m.role == "tool" for s in (chosen, rejected) for m in (*s.prompt, s.answer)
        )
        if uses_tools and not renderer.renders_tools:
            pairs.left_out["tool_calls_not_rendered"] += 1
            continue
        try:
            rows.append(
                {
                    "chosen_ids": side_ids(renderer, chosen, max_length),
                    "rejected_ids": side_ids(renderer, rejected, max_length),
                }
            )
        except Exception:  # RenderError, jinja's TemplateError: this pair only
            pairs.left_out["template_error"] += 1
    return rows


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
    spec: RunSpec, rows: Sequence[SnapshotRow], *, snapshot_sha256: str, progress: Progress
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
        raise NotEnoughSignalError(_too_little(pairs, len(pairs.pairs), rspec.min_pairs))

    import torch
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    from trainer.recipes import load_tokenizer
    from trainer.run import _fsync_dir, _fsync_tree, is_main_process
    from trainer.tokens import Renderer

    disable_progress_bars()
    tokenizer = load_tokenizer(spec)
    rows_ids = tokenized_pairs(pairs, Renderer(tokenizer), rspec.max_length)
    if len(rows_ids) < rspec.min_pairs:
        raise NotEnoughSignalError(_too_little(pairs, len(rows_ids), rspec.min_pairs))
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
            train_dataset=Dataset.from_list(rows_ids).shuffle(seed=spec.seed),
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
            manifest = RewardManifest(
                run_id=spec.run_id,
                base_model=spec.base_model,
                snapshot_sha256=snapshot_sha256,
                examples={**pairs.counts(), "trained_pairs": len(rows_ids)},
                hyperparameters=hp,
                max_length=rspec.max_length,
                pad_token_id=tokenizer.pad_token_id,
                metrics={
                    "steps": result.global_step,
                    "train_loss": result.training_loss,
                    "train_runtime_s": result.metrics.get("train_runtime"),
                    "last_log": {k: v for k, v in last.items() if isinstance(v, int | float)},
                },
                wall_time_s=round(time.monotonic() - started, 3),
                created_at=datetime.now(UTC).isoformat(),
            )
            (partial / "manifest.json").write_bytes(manifest.encode())
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


def _too_little(pairs: RewardPairs, usable: int, needed: int) -> str:
    left_out = ", ".join(f"{reason} {n}" for reason, n in sorted(pairs.left_out.items()))
    return (
        f"too little signal for a reward model: {usable} usable preference pairs "
        f"({pairs.thumbs_up} thumbs-up, {pairs.thumbs_down} thumbs-down, {pairs.corrections} corrections"
        f"{'; left out: ' + left_out if left_out else ''}), need {needed}"
    )


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


def read_manifest(directory: str | Path) -> RewardManifest:
    """The reward model's manifest, version and kind checked first; `RewardModelError` if the
    directory holds no reward model (another manifest, a newer one, none)."""
    path = Path(directory) / "manifest.json"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RewardModelError(
            f"{directory} is no reward model directory: cannot read {path.name} ({exc})"
        ) from exc
    try:
        return decode_reward_manifest(raw, str(path))
    except RewardManifestError as exc:
        raise RewardModelError(str(exc)) from exc


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

        base = base_model or self.manifest.base_model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=1, local_files_only=True, dtype=torch.float32
            )
        except Exception as exc:
            raise BaseModelError(f"cannot load base model {base} for the reward model: {exc}") from exc
        pad = self.manifest.pad_token_id
        model.config.pad_token_id = pad
        self.pad_token_id = pad
        self.max_length = self.manifest.max_length
        self.model = PeftModel.from_pretrained(model, str(directory)).eval()
        from trainer.tokens import Renderer

        self.renderer = Renderer(self.tokenizer)
        self._torch = torch

    def _ids(self, item: ScoreItem) -> list[int]:
        answer = Message(role="assistant", content=item.answer)
        try:
            return side_ids(self.renderer, Side(item.messages, item.tools, answer), self.max_length)
        except Exception as exc:  # RenderError, TemplateError: this item cannot be rendered at all
            raise RewardModelError(f"scoring item {item.id!r} cannot be rendered: {exc}") from exc

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
    """Scoring input: JSONL, one `formats.reward.ScoreItem` per line; `RewardModelError` names the bad line."""
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
            f.write(msgspec.json.encode(ScoreLine(id=item.id, score=value)) + b"\n")
    os.replace(tmp, out)
    return len(items)


def serve_scores(requests: IO[bytes], responses: IO[bytes], *, batch_size: int = 16, threads: int = 1) -> int:
    """Answer `formats.reward.ScoreRequest` lines from `requests` with `ScoreResponse` lines on
    `responses` (flushed after each) until `requests` ends; returns how many were answered.

    torch, transformers and peft are imported before the first request is read. The reward model
    last asked for stays loaded (a request for another directory loads that one instead); a
    request with no items only loads it. A request that cannot be served (a bad line, another protocol version, a directory
    that is no reward model, an item that cannot be rendered) gets an error response and the loop
    goes on; only the end of input, or a signal, ends it.
    """
    # The heavy imports first, before any request: a scorer started ahead of time (the service
    # starts one when a run begins training) is ready when the evaluation asks.
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(threads)
    loaded: tuple[str, RewardScorer] | None = None
    answered = 0
    decoder = msgspec.json.Decoder(ScoreRequest)
    for line in requests:
        if not line.strip():
            continue
        started = time.monotonic()
        request_id = -1
        try:
            head = msgspec.json.decode(line)
            if isinstance(head, dict) and isinstance(head.get("id"), int):
                request_id = head["id"]
            version = head.get("schema_version") if isinstance(head, dict) else None
            if version != SCORE_PROTOCOL_VERSION:
                raise RewardModelError(
                    f"score request schema_version {version!r}; this trainer speaks {SCORE_PROTOCOL_VERSION}"
                )
            request = decoder.decode(line)
            if loaded is None or loaded[0] != request.reward_model:
                loaded = None  # the previous model is freed before the next one loads
                loaded = (request.reward_model, RewardScorer(request.reward_model, threads=threads))
            scores = loaded[1].score(request.items, batch_size=batch_size)
            response = ScoreResponse(
                schema_version=SCORE_PROTOCOL_VERSION, id=request_id, scores=scores,
                wall_time_s=round(time.monotonic() - started, 3),
            )  # fmt: skip
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            response = _failed(request_id, f"bad score request: {exc}", "RequestError")
        except TrainerError as exc:
            response = _failed(request_id, str(exc), type(exc).__name__)
        except Exception as exc:  # reported to the caller; the next request may work
            response = _failed(request_id, f"{type(exc).__name__}: {exc}", "InternalError")
        responses.write(msgspec.json.encode(response) + b"\n")
        responses.flush()
        answered += 1
    return answered


def _failed(request_id: int, message: str, kind: str) -> ScoreResponse:
    return ScoreResponse(schema_version=SCORE_PROTOCOL_VERSION, id=request_id, error=message, kind=kind)
