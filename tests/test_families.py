"""Tiny models of every family: their chat templates behave like the published ones, LoRA targets
fit each architecture, and adapters vLLM would refuse are refused before loading.

No vLLM here (tests/test_vllm_families.py serves them): transformers, PEFT and the templates only.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import msgspec
import pytest
from jinja2.exceptions import TemplateError

from demo.tiny_families import FAMILIES
from demo.tiny_model import FAMILY_NAMES
from deploy.adapter_dir import InvalidAdapter, check_adapter_dir
from tests.fixtures.families import A1, Q1, Q2, RESULT, SYSTEM, TOOLS
from tests.fixtures.families import CALL as FIXTURE_CALL
from trainer.lora_targets import LoraTargetError

# The fixture's call with its arguments as a dict: templates are handed that (vLLM parses them).
CALL = {
    **FIXTURE_CALL,
    "tool_calls": [
        {**FIXTURE_CALL["tool_calls"][0], "function": {"name": "lookup", "arguments": {"q": "france"}}}
    ],
}


def tokenizer(family_model, family: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(family_model(family))


def render(tok, messages, **kwargs) -> str:
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


# -- the builds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_builds_with_its_own_architecture(family_model, family):
    import transformers

    directory = family_model(family)
    config = json.loads((directory / "config.json").read_text())
    info = json.loads((directory / "tiny_model.json").read_text())
    assert info["family"] == family or (family == "llama" and "family" not in info)
    if family != "llama":
        expected = getattr(transformers, FAMILIES[family].config_class).model_type
        assert config["model_type"] == expected
        assert info["pretrain_steps"] == 40
    assert config.get("head_dim", config["hidden_size"] // config["num_attention_heads"]) == 32
    tok = tokenizer(family_model, family)
    # Control tokens are single special tokens: never split, never merged with text.
    for token in (tok.eos_token, tok.pad_token, *(FAMILIES[family].control if family != "llama" else ())):
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1, token
    stops = json.loads((directory / "generation_config.json").read_text())["eos_token_id"]
    assert tok.eos_token_id in (stops if isinstance(stops, list) else [stops])


def test_an_unknown_family_is_refused(tmp_path):
    from demo.tiny_model import build_tiny_model

    with pytest.raises(ValueError, match="unknown model family 'gpt2'"):
        build_tiny_model(tmp_path / "x", family="gpt2")


# -- each template behaves like the family's published one ---------------------------------------


def test_qwen2_adds_its_default_system_prompt_and_renders_tools(family_model):
    tok = tokenizer(family_model, "qwen2")
    prompt = render(tok, [Q1], add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert prompt.endswith(
        "<|im_start|>user\nwhat is the capital of france?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(tok, [SYSTEM, Q1]).startswith("<|im_start|>system\nbe brief.<|im_end|>\n")
    with_tools = render(tok, [SYSTEM, Q1, CALL, RESULT], tools=TOOLS, add_generation_prompt=True)
    assert "be brief.\n\n# Tools" in with_tools and json.dumps(TOOLS[0]) in with_tools
    assert (
        '<tool_call>\n{"name": "lookup", "arguments": {"q": "france"}}\n</tool_call><|im_end|>' in with_tools
    )
    assert "<|im_start|>user\n<tool_response>\nparis\n</tool_response><|im_end|>" in with_tools
    # Arguments are rendered with tojson: a JSON string (as OpenAI sends it) is quoted again.
    as_string = {
        **CALL,
        "tool_calls": [
            {**CALL["tool_calls"][0], "function": {"name": "lookup", "arguments": '{"q": "france"}'}}
        ],
    }
    assert '"arguments": "{\\"q\\": \\"france\\"}"' in render(tok, [Q1, as_string], tools=TOOLS)


def test_qwen3_opens_a_thinking_block_in_the_final_answer_only(family_model):
    tok = tokenizer(family_model, "qwen3")
    assert render(tok, [Q1], add_generation_prompt=True) == (
        "<|im_start|>user\nwhat is the capital of france?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(tok, [Q1], add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    final = render(tok, [Q1, A1])
    assert final.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nit is paris.<|im_end|>\n")
    thought = {**A1, "reasoning_content": "france's capital."}
    assert "<think>\nfrance's capital.\n</think>\n\nit is paris." in render(tok, [Q1, thought])
    # An earlier turn loses its thinking: history is rendered as plain answers.
    history = render(tok, [Q1, thought, Q2], add_generation_prompt=True)
    assert "france's capital" not in history and "<|im_start|>assistant\nit is paris.<|im_end|>" in history
    assert "<tool_call>" in render(tok, [Q1, CALL, RESULT], tools=TOOLS, add_generation_prompt=True)


def test_gemma_folds_the_system_prompt_and_insists_on_alternation(family_model):
    tok = tokenizer(family_model, "gemma")
    assert render(tok, [SYSTEM, Q1, A1, Q2], add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nbe brief.\n\nwhat is the capital of france?<end_of_turn>\n"
        "<start_of_turn>model\nit is paris.<end_of_turn>\n"
        "<start_of_turn>user\nwhat colour is grass?<end_of_turn>\n<start_of_turn>model\n"
    )
    for bad in ([Q1, Q2], [A1], [SYSTEM, SYSTEM, Q1]):
        with pytest.raises(TemplateError, match="must alternate"):
            render(tok, bad)
    parts = {"role": "user", "content": [{"type": "text", "text": " a "}, {"type": "text", "text": "b"}]}
    assert "<start_of_turn>user\nab<end_of_turn>" in render(tok, [parts])
    assert "lookup" not in render(tok, [Q1], tools=TOOLS)  # Gemma's template does not render tools


def test_mistral_puts_the_system_prompt_in_the_last_user_turn_only(family_model):
    tok = tokenizer(family_model, "mistral")
    assert render(tok, [SYSTEM, Q1, A1, Q2]) == (
        "<s>[INST] what is the capital of france?[/INST] it is paris.</s>[INST] be brief.\n\nwhat colour is grass?[/INST]"
    )
    # Rendered with its answer, the prompt has lost its system prompt: the trap for training.
    assert "be brief" not in render(tok, [SYSTEM, Q1, A1])
    for bad in ([Q1, Q2], [A1], [SYSTEM, SYSTEM, Q1]):
        with pytest.raises(TemplateError, match=r"alternate|Only user and assistant"):
            render(tok, bad)
    tools = render(tok, [Q1, CALL, RESULT, A1, Q2], tools=TOOLS)
    assert tools.index("[AVAILABLE_TOOLS]") > tools.index("[TOOL_RESULTS]")  # before the last user turn
    assert '[TOOL_CALLS] [{"name": "lookup", "arguments": {"q": "france"}, "id": "abcdefghi"}]</s>' in tools
    long_id = {**CALL, "tool_calls": [{**CALL["tool_calls"][0], "id": "call_123456789"}]}
    with pytest.raises(TemplateError, match="length 9"):
        render(tok, [Q1, long_id], tools=TOOLS)


def test_phi3_drops_roles_it_does_not_know_and_ends_a_conversation_with_eos(family_model):
    tok = tokenizer(family_model, "phi3")
    assert render(tok, [SYSTEM, Q1], add_generation_prompt=True) == (
        "<|system|>\nbe brief.<|end|>\n<|user|>\nwhat is the capital of france?<|end|>\n<|assistant|>\n"
    )
    assert render(tok, [Q1, A1]).endswith("<|assistant|>\nit is paris.<|end|>\n<|endoftext|>")
    # Roles it does not know (tool results) vanish, and tools are not rendered.
    assert render(tok, [Q1, RESULT], add_generation_prompt=True) == render(
        tok, [Q1], add_generation_prompt=True
    )
    assert "lookup" not in render(tok, [Q1], tools=TOOLS)


# -- LoRA targets per architecture ---------------------------------------------------------------

DEFAULT_TARGETS = {family: ["q_proj", "v_proj"] for family in FAMILY_NAMES} | {
    "phi3": ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_null_adapter_fits_each_architecture_and_is_the_base(family_model, family, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.null_adapter import write_null_adapter

    base = family_model(family)
    adapter = write_null_adapter(base, tmp_path / "v0")
    assert (
        json.loads((adapter / "adapter_config.json").read_text())["target_modules"] == DEFAULT_TARGETS[family]
    )
    ids = torch.tensor([[1, 5, 9, 14, 20, 30]])
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
        assert PeftModel.from_pretrained(model, adapter).eval()(input_ids=ids).logits.equal(expected)
    # Named targets are checked against the architecture.
    every = write_null_adapter(base, tmp_path / "all", target_modules=["all-linear"])
    linear = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] if family == "phi3" else None
    targets = json.loads((every / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(
        linear or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_targets_a_phi3_model_lacks_are_refused_with_the_ones_it_has(family_model, tmp_path):
    from trainer.null_adapter import write_null_adapter

    with pytest.raises(LoraTargetError, match=r"no linear layer named \['q_proj', 'v_proj'\].*'qkv_proj'"):
        write_null_adapter(family_model("phi3"), tmp_path / "v0", target_modules=["q_proj", "v_proj"])
    with pytest.raises(LoraTargetError, match="lm_head"):
        write_null_adapter(family_model("qwen2"), tmp_path / "v0", target_modules=["q_proj", "lm_head"])
    assert not (tmp_path / "v0").exists()


# -- adapters vLLM would refuse are refused before loading ---------------------------------------


def test_an_adapter_for_layers_the_base_lacks_is_refused_before_loading(family_model, tmp_path):
    from trainer.null_adapter import write_null_adapter

    root = tmp_path / "adapters"
    llama_adapter = write_null_adapter(family_model("llama"), root / "llama-v0")
    # Without a served base, the base the adapter names is the reference: this one is consistent.
    assert check_adapter_dir(llama_adapter, root=root, max_rank=16).target_modules == ("q_proj", "v_proj")
    for family, message in [
        # Phi-3 has qkv_proj, not q_proj/v_proj.
        ("phi3", r"adapts \['q_proj', 'v_proj'\].*does not have.*'qkv_proj'"),
        # Same layer names, other shapes (Mistral has 2 key-value heads: v_proj is 128 -> 64).
        ("mistral", r"v_proj is adapted as 128 -> 128 features.* 128 -> 64"),
    ]:
        # The Llama adapter, mislabelled as trained on the other family's base.
        mislabelled = shutil.copytree(llama_adapter, root / f"as-{family}")
        config = json.loads((mislabelled / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(family_model(family))
        (mislabelled / "adapter_config.json").write_text(json.dumps(config))
        for served in (str(family_model(family)), None):
            with pytest.raises(InvalidAdapter, match=message):
                check_adapter_dir(mislabelled, root=root, max_rank=16, base_model=served)
    phi = write_null_adapter(family_model("phi3"), root / "phi-v0")
    assert check_adapter_dir(phi, root=root, max_rank=16, base_model=str(family_model("phi3"))).rank == 8


def test_the_service_refuses_an_adapter_trained_on_another_base_before_any_replica_sees_it(
    family_model, tmp_path
):
    """The production wiring (`service.app.build_runtime`): the replicas' URL is a closed port, so
    only a refusal before contacting them gives this error."""
    import asyncio

    from deploy.adapters import AdapterLoadFailed
    from service.app import build_runtime
    from service.config import Settings, VllmSettings
    from trainer.null_adapter import write_null_adapter

    vllm = VllmSettings(urls=("http://127.0.0.1:9",), base_model=str(family_model("llama")))
    runtime = build_runtime(Settings(data_dir=str(tmp_path / "data"), vllm=vllm))
    adapter = write_null_adapter(family_model("qwen2"), runtime.settings.adapters_dir / "p" / "v1")

    async def load() -> None:
        try:
            await runtime.fleets.of("p").load("p@v1", adapter)
        finally:
            await runtime.fleets.aclose()

    try:
        with pytest.raises(
            AdapterLoadFailed, match=r"trained on base model .*tiny-qwen2.*but the servers run"
        ):
            asyncio.run(load())
    finally:
        runtime.db.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"lora_bias": True}, "lora_bias"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
        ({"layer_replication": [[0, 1]]}, "layer_replication"),
        ({"use_dora": True}, "DoRA"),
    ],
)
def test_peft_features_vllm_does_not_implement_are_refused(family_model, tmp_path, config, message):
    from trainer.null_adapter import write_null_adapter

    adapter = write_null_adapter(family_model("llama"), tmp_path / "a" / "v0")
    settings = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**settings, **config}))
    with pytest.raises(InvalidAdapter, match=message):
        check_adapter_dir(adapter, root=tmp_path / "a", max_rank=16)


def test_an_adapter_trained_with_other_layer_names_is_refused(family_model, tmp_path):
    """A model dir whose weights were renamed stands for "another architecture": the check reads
    the base's safetensors header, not its config."""
    from safetensors.torch import load_file, save_file

    from trainer.null_adapter import write_null_adapter

    base = tmp_path / "renamed"
    shutil.copytree(family_model("llama"), base)
    weights = load_file(base / "model.safetensors")
    save_file({k.replace("q_proj", "query"): v for k, v in weights.items()}, base / "model.safetensors")
    adapter = write_null_adapter(base, tmp_path / "a" / "v0", target_modules=["v_proj"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj"]}))
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file(
        {k.replace("v_proj", "q_proj"): v for k, v in weights.items()}, adapter / "adapter_model.safetensors"
    )
    with pytest.raises(
        InvalidAdapter, match=r"adapts \['q_proj'\] \(2 modules, e.g. model.layers.0.self_attn.q_proj\)"
    ):
        check_adapter_dir(adapter, root=tmp_path / "a", max_rank=16, base_model=str(base))


# -- messages prepared as vLLM prepares them, and rows the template cannot render as served ------


def test_messages_are_prepared_as_vllm_prepares_them():
    from demo.tiny_families import GEMMA_TEMPLATE, QWEN2_TEMPLATE
    from formats.log import Message, normalize
    from formats.rendering import RenderError, content_format, template_messages, template_tools

    assert content_format(QWEN2_TEMPLATE) == "string" and content_format(GEMMA_TEMPLATE) == "openai"
    parts = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    developer = {"role": "developer", "content": "be brief.", "name": "ops", "extra": 1}
    call = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [{"id": "x", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
    }
    request = {
        "messages": [SYSTEM, developer, parts, call, {**A1, "reasoning_content": "dropped"}],
        "tools": [{"type": "function", "function": {"parameters": {}, "name": "f"}}],
    }
    log = normalize(json.dumps(request).encode(), json.dumps({"choices": [{"message": A1}]}).encode())
    assert template_messages(log.messages, QWEN2_TEMPLATE) == [
        {"role": "system", "content": "be brief.\n\nbe brief."},  # developer -> system, merged first
        {"role": "user", "content": "a\nb"},
        # vLLM's key order (Mistral's template prints it): id, function (arguments, name), type.
        {"role": "assistant", "content": "", "tool_calls": [{"id": "x", "function": {"arguments": {"a": 1}, "name": "f"}, "type": "function"}]},
        {"role": "assistant", "content": "it is paris."},
    ]  # fmt: skip
    assert template_tools(log.tools) == [
        {"type": "function", "function": {"name": "f", "description": None, "parameters": {}}}
    ]
    # A template that loops over contents gets lists of text parts; a tool result stays a string.
    gemma = template_messages(
        [Message(role="system", content="be brief."), *log.messages[2:3], Message(role="tool", content="t")],
        GEMMA_TEMPLATE,
    )
    assert gemma == [
        {"role": "system", "content": [{"type": "text", "text": "be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "a\nb"}]},  # joined at capture
        {"role": "tool", "content": "t"},
    ]
    bad = msgspec.convert(
        {**call, "tool_calls": [{"id": "y", "function": {"name": "f", "arguments": "[1, 2"}}]}, Message
    )
    assert template_messages([bad], QWEN2_TEMPLATE)[0]["tool_calls"] == [
        {"id": "y", "function": {"arguments": {}, "name": "f"}}  # no `type` sent, none given
    ]
    custom = msgspec.convert(
        {**call, "tool_calls": [{"id": "z", "type": "custom", "custom": {"name": "g"}}]}, Message
    )
    with pytest.raises(RenderError, match="only function calls render"):
        template_messages([custom], QWEN2_TEMPLATE)


def test_content_format_detection_agrees_with_vllms():
    from vllm.renderers.hf import _detect_content_format

    from demo.tiny_families import FAMILIES
    from demo.tiny_model import CHAT_TEMPLATE
    from formats.rendering import content_format
    from tests.fixtures.conformance import TOOL_TEMPLATE

    templates = [CHAT_TEMPLATE, TOOL_TEMPLATE, *(f.chat_template for f in FAMILIES.values())]
    templates += [
        "{% for m in messages[1:] %}{% for p in m['content'] | list %}{{ p.text }}{% endfor %}{% endfor %}",
        "{% set loop_messages = messages %}{% for m in loop_messages %}{% for p in m.content %}x{% endfor %}{% endfor %}",
        "{% for m in messages %}{% for c in m.tool_calls %}{{ c.id }}{% endfor %}{{ m.content }}{% endfor %}",
        "{% for m in messages %}{% set content = m.content %}{% for p in content %}x{% endfor %}{% endfor %}",
    ]  # fmt: skip
    for template in templates:
        assert content_format(template) == _detect_content_format(template, default="string"), template


@pytest.mark.parametrize(
    ("family", "dropped"),
    [
        ("llama", {}),
        ("qwen2", {}),
        ("qwen3", {}),
        ("gemma", {"template_error": 1}),
        ("phi3", {}),
        ("mistral", {"template_error": 1, "prompt_not_prefix": 2}),
    ],
)
def test_examples_the_template_cannot_render_as_served_are_dropped_and_counted(family_model, family, dropped):
    from formats.log import Message
    from trainer.dataset import Example, Examples
    from trainer.tokens import Renderer, fit_examples

    def messages(*dicts):
        return msgspec.convert(list(dicts), list[Message])

    answer, wrong = Message(role="assistant", content=A1["content"]), Message(role="assistant", content="no.")
    developer = {"role": "developer", "content": "be brief."}
    examples = Examples(
        sft=[Example("1", messages(Q1), None, {"completion": answer})],
        kto=[
            Example("2", messages(SYSTEM, Q1), None, {"completion": answer}, label=True),
            Example("4", messages(developer, Q1), None, {"completion": answer}, label=True),
        ],
        dpo=[Example("3", messages(Q2, Q1), None, {"chosen": answer, "rejected": wrong})],
    )
    fitted = fit_examples(examples, Renderer(tokenizer(family_model, family)), limit=512)
    counted = sum((fitted.dropped[kind] for kind in ("sft", "dpo", "kto")), Counter())
    assert counted == Counter(dropped)
    assert len(fitted.sft) + len(fitted.dpo) + len(fitted.kto) == 4 - sum(dropped.values())
    # Plain messages pass unchanged, except where the template wants content parts (Gemma's).
    parts = family == "gemma"
    assert fitted.sft[0].trl["prompt"][0]["content"] == (
        [{"type": "text", "text": Q1["content"]}] if parts else Q1["content"]
    )
    assert all(m["role"] != "developer" for e in fitted.kto for m in e.trl["prompt"])


@pytest.mark.slow
def test_a_run_naming_layers_the_architecture_lacks_fails_with_the_ones_it_has(tmp_path, family_model):
    from tests.fixtures.training import build_snapshot
    from tests.test_trainer_inputs import fails

    spec = {
        "run_id": "phi",
        "base_model": str(family_model("phi3")),
        "snapshot_dir": str(build_snapshot(tmp_path / "snap", n_train=120, n_holdout=20)),
        "output_dir": str(tmp_path / "out" / "phi@v1"),
        "lora": {"target_modules": ["q_proj", "v_proj"]},
    }
    message = "Phi3ForCausalLM has no linear layer named ['q_proj', 'v_proj']; its adaptable layers are"
    fails(tmp_path, spec, message, kind="LoraTargetError")
