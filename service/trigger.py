"""When new feedback starts a training run: counts in, a decision out.

The check costs O(new feedback), not O(history): it counts only feedback received after the
previous run started (that run's snapshot already held everything older), and the count is a
`received_at > since` filter that DuckDB answers from the row groups' min/max statistics, since
rows arrive in `received_at` order (measured in bench/scale.py and the README's scaling section). `decide_run` is pure, so the
scheduler's rule is tested without a scheduler or a clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from service.config import TrainingSettings
from service.domain import NewSignal
from service.store.runs import ACTIVE, RunRecord


class RunDecision(msgspec.Struct, frozen=True):
    """Whether to start a run now, and why (or why not)."""

    start: bool
    reason: str


def decide_run(
    now: datetime, signal: NewSignal, previous: RunRecord | None, policy: TrainingSettings
) -> RunDecision:
    """Start a run only when the previous one has ended, its cooldown has passed, and the signal
    newer than it crosses every threshold. A bulk import therefore starts one run, then at most
    one per `run_cooldown_seconds` after each ends, however fast its rows arrive."""
    if previous is not None:
        if previous.state in ACTIVE:
            return RunDecision(False, f"run {previous.id} is still {previous.state}")
        ended = previous.finished_at or previous.updated_at
        wait = timedelta(seconds=policy.run_cooldown_seconds) - (now - ended)
        if wait > timedelta(0):
            return RunDecision(False, f"run {previous.id} ended at {ended:%H:%M:%S}; cooling down {wait}")
    if signal.rated < policy.min_new_ratings:
        return RunDecision(False, f"{signal.rated} new ratings of {policy.min_new_ratings} needed")
    if signal.corrections < policy.min_new_corrections:
        return RunDecision(
            False, f"{signal.corrections} new corrections of {policy.min_new_corrections} needed"
        )
    if signal.minority_share < policy.min_minority_share:
        return RunDecision(
            False,
            f"the rarer thumb is {signal.minority_share:.1%} of the new ones, "
            f"{policy.min_minority_share:.1%} needed",
        )
    return RunDecision(True, f"{signal.rated} new ratings, {signal.corrections} new corrections")
