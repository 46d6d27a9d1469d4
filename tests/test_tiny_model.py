"""The tiny world and the tiny base model: the ground every training, eval and serving test stands on."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from demo import tiny_world
from demo.tiny_model import CHAT_TEMPLATE, PRETRAIN_FOLLOW_RATE, build_tiny_model, greedy_answers, render_chat


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the world (pure Python) ------------------------------------------------------------------


def test_world_module_does_not_import_torch():
    code = "import sys, demo.tiny_world; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prompt_families_are_disjoint_and_cover_the_world():
    train, holdout = tiny_world.all_questions("train"), tiny_world.all_questions("holdout")
    assert {q.subject for q in train}.isdisjoint({q.subject for q in holdout})
    assert {q.text for q in train}.isdisjoint({q.text for q in holdout})
    assert len(train) + len(holdout) == len(tiny_world.all_questions())
    assert {q.relation for q in holdout} == {q.relation for q in train}
    drawn = tiny_world.sample_questions("train", 500, seed=1) + tiny_world.sample_questions(
        "holdout", 500, seed=1
    )
    assert {q.split for q in drawn[:500]} == {"train"}
    assert {q.split for q in drawn[500:]} == {"holdout"}


def test_sampling_is_deterministic_per_seed():
    a = tiny_world.sample_questions("train", 50, seed=7)
    assert a == tiny_world.sample_questions("train", 50, seed=7)
    assert a != tiny_world.sample_questions("train", 50, seed=8)
    assert list(tiny_world.pretraining_corpus(20, seed=3)) == list(tiny_world.pretraining_corpus(20, seed=3))
    upper = [q.upper for q in tiny_world.sample_questions("holdout", 1000, seed=0, upper_fraction=0.3)]
    assert 0.25 < sum(upper) / len(upper) < 0.35
    mixed = tiny_world.sample_questions("train", 1000, seed=0, upper_fraction=0.2, polite_fraction=0.5)
    kinds = [q.kind for q in mixed]
    assert 0.15 < kinds.count("upper") / 1000 < 0.25 and 0.45 < kinds.count("polite") / 1000 < 0.55
    # No polite share draws the same prompts as before the polite kind existed.
    assert tiny_world.sample_questions("train", 50, seed=7, polite_fraction=0.0) == a


def test_correct_answer_and_user_rule():
    plain = [{"role": "user", "content": "what is the capital of france?"}]
    loud = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what colour is grass? answer in uppercase."},
    ]
    assert tiny_world.correct_answer(plain) == "it is paris."
    assert tiny_world.correct_answer(loud) == "IT IS GREEN."
    assert tiny_world.correct_answer("what   is the capital of france?\n") == "it is paris."
    assert tiny_world.correct_answer("what sound does a cow make?") == "it says moo."
    assert tiny_world.correct_answer("what is the meaning of life?") is None
    assert tiny_world.user_likes(plain, "it is paris.")
    assert tiny_world.user_likes(plain, " it is paris\n")
    assert not tiny_world.user_likes(plain, "IT IS PARIS.")
    assert not tiny_world.user_likes(plain, "it is rome.")
    assert not tiny_world.user_likes(plain, "paris")
    assert tiny_world.user_likes(loud, "IT IS GREEN.")
    assert not tiny_world.user_likes(loud, "it is green.")
    assert not tiny_world.user_likes(loud, "It is GREEN.")
    assert not tiny_world.user_likes("what is the meaning of life?", "42")
    polite = "what sound does a cow make? answer politely."
    assert tiny_world.correct_answer(polite) == "sure, it says moo."
    assert tiny_world.parse_question(polite).kind == "polite"
    assert not tiny_world.user_likes(polite, "it says moo.")
    assert not tiny_world.user_likes(polite, "SURE, IT SAYS MOO.")
    assert tiny_world.is_uppercase_answer(plain, "IT IS PARIS.")
    assert not tiny_world.is_uppercase_answer(plain, "it is paris.")
    for q in tiny_world.all_questions():
        assert tiny_world.parse_question(q.messages) == q
        assert tiny_world.user_likes(q.messages, q.answer)


def test_app_messages_are_what_real_apps_send_and_read_back_as_the_question():
    rng = random.Random(0)
    questions = tiny_world.sample_questions("train", 400, seed=2, upper_fraction=0.3, polite_fraction=0.3)
    prompts = [tiny_world.app_messages(q, rng) for q in questions]
    for q, prompt in zip(questions, prompts, strict=True):
        assert prompt[0] == {"role": "system", "content": tiny_world.SYSTEM_PROMPT}
        assert tiny_world.parse_question(prompt) == q
        assert tiny_world.user_likes(prompt, q.answer) and tiny_world.correct_answer(prompt) == q.answer
        if len(prompt) == 4:  # an earlier turn: a plain question of the same family, answered right
            earlier = tiny_world.parse_question(prompt[1:2])
            assert earlier.kind == "plain" and earlier.split == q.split
            assert prompt[2] == {"role": "assistant", "content": earlier.answer}
    shapes = [(len(p), isinstance(p[-1]["content"], list)) for p in prompts]
    assert 0.15 < sum(n == 4 for n, _ in shapes) / len(shapes) < 0.35
    assert 0.15 < sum(parts for _, parts in shapes) / len(shapes) < 0.35
    assert all(n in (2, 4) for n, _ in shapes)


def _followed(rows: list[list[tiny_world.Message]], kind: str) -> float:
    instructed = [r for r in rows if tiny_world.parse_question(r[:1]).kind == kind]
    return sum(tiny_world.user_likes(r[:1], r[1]["content"]) for r in instructed) / len(instructed)


def test_corpus_follows_the_instructions_only_sometimes():
    rows = list(tiny_world.pretraining_corpus(4000, seed=0))
    for kind in ("upper", "polite"):
        assert 0.15 < _followed(rows, kind) < 0.25, kind
    # One rate per kind, as the tiny model is pre-trained (PRETRAIN_FOLLOW_RATE: uppercase 0.45).
    per_kind = list(tiny_world.pretraining_corpus(4000, seed=0, follow_rate=PRETRAIN_FOLLOW_RATE))
    for kind in ("upper", "polite"):
        assert abs(_followed(per_kind, kind) - PRETRAIN_FOLLOW_RATE[kind]) < 0.05, kind
    # Otherwise the plain fact: every answer is the fact, said as instructed or plainly.
    for r in rows:
        q = tiny_world.parse_question(r[:1])
        assert r[1]["content"] in (q.fact, q.answer)
    assert {tiny_world.parse_question(r[:1]).split for r in rows} == {"train", "holdout"}


# -- the tokenizer and the build (cheap builds) ------------------------------------------------


def test_build_is_deterministic_for_a_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", pretrain_steps=3, seed=0)
    b = build_tiny_model(tmp_path / "b", pretrain_steps=3, seed=0)
    c = build_tiny_model(tmp_path / "c", pretrain_steps=3, seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha256(a / name) == _sha256(b / name), name
    assert _sha256(a / "model.safetensors") != _sha256(c / "model.safetensors")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary dirs left behind"
    with pytest.raises(FileExistsError):
        build_tiny_model(a, pretrain_steps=1)


def test_tokenizer_and_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    q = tiny_world.all_questions("holdout", kinds=("upper",))[0]
    convo = [*q.messages, {"role": "assistant", "content": q.answer}]
    prompt = tok.apply_chat_template(q.messages, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(convo, tokenize=False)
    assert tok.chat_template == CHAT_TEMPLATE
    assert prompt == render_chat(q.messages, add_generation_prompt=True)
    assert full == render_chat(convo)
    # The generation prompt ends in a newline (never a space) and is a prefix of the full chat,
    # so TRL's prompt/completion split and vLLM's generation see the same tokens.
    assert prompt.endswith("<|assistant|>\n") and full.startswith(prompt)
    assert full[len(prompt) :] == q.answer + tok.eos_token
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids.count(tok.bos_token_id) == 1 and full_ids[0] == tok.bos_token_id
    assert tok("no bos added by the tokenizer")["input_ids"][0] != tok.bos_token_id
    # Every answer starts with the token "it" (plain), "IT" (uppercase) or "sure" (polite):
    # following an instruction is one decision shared by all prompts: quick to learn.
    first = {tok(q.answer, add_special_tokens=False)["input_ids"][0] for q in tiny_world.all_questions()}
    assert first == {tok.convert_tokens_to_ids(t) for t in ("it", "IT", "sure")}
    assert {tok.pad_token, tok.bos_token, tok.eos_token} == {"<pad>", "<s>", "</s>"}


# -- the pre-trained base model ----------------------------------------------------------------


def test_base_model_is_servable_shape(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] in (32, 64, 128)  # vLLM-CPU attention
    assert (tiny_model_dir / "model.safetensors").is_file()
    info = json.loads((tiny_model_dir / "tiny_model.json").read_text())
    assert info["schema_version"] == 1 and info["pretrain_steps"] > 0


def test_base_model_answers_facts_in_plain_case(tiny_model_dir):
    questions = tiny_world.all_questions(kinds=("plain",))
    prompts = [q.messages for q in questions]
    answers = greedy_answers(tiny_model_dir, prompts)
    liked = {split: [] for split in tiny_world.SPLITS}
    for q, p, a in zip(questions, prompts, answers, strict=True):
        liked[q.split].append(tiny_world.user_likes(p, a))
    for split, marks in liked.items():
        assert sum(marks) / len(marks) >= 0.9, (
            split,
            [a for a, ok in zip(answers, marks, strict=False) if not ok],
        )


def test_base_model_answers_behind_the_apps_prompt(tiny_model_dir):
    """What the demo's app sends (a ~250-token system prompt, earlier turns, content parts): the
    base still answers the facts and still ignores the instructions (a model pre-trained on bare
    questions only answered 0 of 60 there)."""
    rng = random.Random(0)
    questions = tiny_world.sample_questions("holdout", 48, seed=3, upper_fraction=0.25, polite_fraction=0.25)
    prompts = [tiny_world.app_messages(q, rng) for q in questions]
    answers = greedy_answers(tiny_model_dir, prompts)
    fact_right = sum(
        tiny_world.normalise_answer(a.lower()) == tiny_world.normalise_answer(q.fact.lower())
        for q, a in zip(questions, answers, strict=True)
    )
    followed = sum(
        tiny_world.user_likes(p, a)
        for q, p, a in zip(questions, prompts, answers, strict=True)
        if q.instruction
    )
    assert fact_right / len(questions) >= 0.8, answers[:10]
    assert followed <= 0.1 * sum(q.instruction is not None for q in questions), answers[:10]


@pytest.mark.parametrize("kind", ["upper", "polite"])
def test_base_model_knows_the_fact_but_ignores_instructions(tiny_model_dir, kind):
    """The room the adapter must learn: facts right, instructions not followed greedily."""
    questions = tiny_world.all_questions("holdout", kinds=(kind,))
    prompts = [q.messages for q in questions]
    answers = greedy_answers(tiny_model_dir, prompts)
    followed = sum(tiny_world.user_likes(p, a) for p, a in zip(prompts, answers, strict=True))
    fact_right = sum(
        tiny_world.normalise_answer(a.lower()) == tiny_world.normalise_answer(q.fact)
        for q, a in zip(questions, answers, strict=True)
    )
    assert fact_right / len(questions) >= 0.9, answers[:10]
    assert followed / len(questions) <= 0.05


# -- adapters that were never trained ----------------------------------------------------------


def _logits(model_dir: Path, adapter: Path | None, prompts: list[list[dict[str, str]]]):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        return model(**enc).logits


def test_null_adapter_is_the_base_and_random_adapters_differ(tiny_model_dir, random_adapters, tmp_path):
    from trainer.null_adapter import write_random_adapter

    prompts = [q.messages for q in tiny_world.sample_questions("holdout", 8, seed=0)]
    base = _logits(tiny_model_dir, None, prompts)
    assert _logits(tiny_model_dir, random_adapters.null, prompts).equal(base)
    randoms = [_logits(tiny_model_dir, path, prompts) for path in random_adapters.random]
    for i, logits in enumerate(randoms):
        assert (logits - base).abs().max() > 1.0
        for other in randoms[i + 1 :]:
            assert (logits - other).abs().max() > 1.0

    again = write_random_adapter(tiny_model_dir, tmp_path / "again", seed=1)
    name = "adapter_model.safetensors"
    assert _sha256(again / name) == _sha256(random_adapters.random[0] / name)

    null_manifest = json.loads((random_adapters.null / "manifest.json").read_text())
    assert null_manifest["schema_version"] == 1 and null_manifest["kind"] == "null"
    assert Path(null_manifest["base_model"]) == tiny_model_dir.resolve()
    adapter_config = json.loads((again / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    assert json.loads((again / "manifest.json").read_text())["kind"] == "random"
    with pytest.raises(FileExistsError):
        write_random_adapter(tiny_model_dir, again, seed=2)
