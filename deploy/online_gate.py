"""The online gate: promote, roll back, or keep collecting, from live thumbs on the canary.

The rule is a two-sample sequential probability ratio test (Wald SPRT) on the thumbs-up rate of
canary traffic against *concurrent* champion traffic (the same hours, the same kind of users:
base rates drift, so a fixed historical rate would be the wrong yardstick). With the normal
approximation of the difference of the two rates, d = p_canary - p_champion, estimated as D with
variance V (pooled rate, both sample sizes), the log-likelihood ratio of "the canary is better
by `min_lift`" against "they are equal" is

    statistic = (min_lift * D - min_lift**2 / 2) / V

and `harm_statistic` is the same with -min_lift ("worse by min_lift" against "equal").
Promote when statistic >= log(1 / alpha); roll back when harm_statistic >= log(1 / rollback_alpha).

Why an SPRT and not a Bayesian beta-binomial rule: the pipeline looks at the counts again and
again while ratings arrive. Under "equal" the likelihood ratio is a martingale, so by Ville's
inequality the chance it *ever* reaches 1/alpha is at most alpha, however often it is looked at
— a false-promotion bound that holds for continuous monitoring. A posterior-probability rule
(e.g. P(p_canary > p_champion) > 0.95) has no such bound: its false-promotion rate grows with
the number of looks. The SPRT also needs the fewest ratings on average for a given error rate,
and its one knob, the smallest lift worth having, is one operators understand. A one-sample
version was checked in simulation (shared/notes/training.md: 0.60 vs 0.68, a true 0.70 accepted
91% after a median of 106 ratings, false promotion 1.5%).

Guards and bounds around it: nothing is decided on ratings until both arms have `min_ratings`;
an upstream error rate or a p95 latency clearly worse than the champion's rolls back at once
(users can't rate an answer they never got); when the canary reaches `max_ratings` or runs
`max_duration_seconds` without a verdict, it is rolled back — nothing stays unless live users
agree. A candidate that is exactly as good as the champion therefore keeps collecting until a
bound (it is never promoted early) and is then rolled back.

Pure functions over counts; `now` and `started_at` are epoch seconds passed in.
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec

from formats.run import GateDecision, OnlineOutcome, OnlineReason

__all__ = ["ArmCounts", "GateDecision", "GatePolicy", "decide"]


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class GatePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The online gate's settings."""

    min_lift: Annotated[
        float,
        _doc(
            "Smallest gain in thumbs-up rate worth promoting for (0.08 = 8 points); smaller needs more ratings."
        ),
        msgspec.Meta(gt=0, lt=1),
    ] = 0.08
    alpha: Annotated[
        float,
        _doc("Largest chance of promoting a canary that is no better than the champion."),
        msgspec.Meta(gt=0, lt=1),
    ] = 0.05
    rollback_alpha: Annotated[
        float,
        _doc("Largest chance of rolling back, on ratings, a canary that is as good as the champion."),
        msgspec.Meta(gt=0, lt=1),
    ] = 0.10
    min_ratings: Annotated[
        int, _doc("Rated answers each arm needs before ratings decide anything."), msgspec.Meta(ge=1)
    ] = 100
    max_ratings: Annotated[
        int, _doc("Canary ratings after which an undecided canary is rolled back."), msgspec.Meta(ge=1)
    ] = 2000
    max_ratings_per_user: Annotated[
        int,
        _doc(
            "Thumbs one end user adds to an arm's count (their first ones): one user flooding thumbs cannot "
            "decide a canary alone. Anonymous thumbs count one each."
        ),
        msgspec.Meta(ge=1),
    ] = 20
    max_duration_seconds: Annotated[
        float, _doc("Canary age after which an undecided canary is rolled back."), msgspec.Meta(gt=0)
    ] = 7 * 24 * 3600.0
    guard_min_requests: Annotated[
        int,
        _doc("Canary requests needed before the error-rate and latency guards apply."),
        msgspec.Meta(ge=1),
    ] = 50
    max_error_rate_increase: Annotated[
        float,
        _doc("Roll back when the canary's upstream error rate exceeds the champion's by more than this."),
        msgspec.Meta(ge=0, le=1),
    ] = 0.02
    max_latency_ratio: Annotated[
        float,
        _doc("Roll back when the canary's p95 latency exceeds the champion's by this factor."),
        msgspec.Meta(gt=1),
    ] = 1.5


class ArmCounts(msgspec.Struct, frozen=True, kw_only=True):
    """One arm's live numbers since the canary started: ratings (+1 / -1 thumbs), requests
    answered, upstream errors among them, and p95 latency in seconds (None: not measured)."""

    up: int
    down: int
    requests: int = 0
    upstream_errors: int = 0
    latency_p95_seconds: float | None = None
    latency_p95_lower_seconds: float | None = None
    """A one-sided lower confidence bound of `latency_p95_seconds`: the empirical quantile at
    `p95_lower_quantile(requests)` (None: the p95 itself is used)."""

    @property
    def ratings(self) -> int:
        return self.up + self.down


def decide(
    canary: ArmCounts, champion: ArmCounts, *, started_at: float, now: float, policy: GatePolicy
) -> GateDecision:
    """The online gate's verdict on the counts so far (see the module docstring)."""
    statistic, harm, lift = log_likelihood_ratios(canary, champion, policy.min_lift)
    promote_at, rollback_at = math.log(1 / policy.alpha), math.log(1 / policy.rollback_alpha)

    def verdict(outcome: OnlineOutcome, reason: OnlineReason, detail: str) -> GateDecision:
        return GateDecision(
            outcome=outcome,
            reason=reason,
            detail=detail,
            statistic=statistic,
            harm_statistic=harm,
            promote_at=promote_at,
            rollback_at=rollback_at,
            lift=lift,
            canary_rate=_rate(canary),
            champion_rate=_rate(champion),
            canary_ratings=canary.ratings,
            champion_ratings=champion.ratings,
        )

    guard = _guard(canary, champion, policy)
    if guard is not None:
        return verdict("rollback", *guard)
    counts = f"canary {canary.up}/{canary.ratings} up vs champion {champion.up}/{champion.ratings}"
    enough = min(canary.ratings, champion.ratings) >= policy.min_ratings
    if enough and statistic >= promote_at:
        return verdict(
            "promote", "better", f"{counts}: better by {lift:+.3f} (LLR {statistic:.2f} >= {promote_at:.2f})"
        )
    if enough and harm >= rollback_at:
        return verdict(
            "rollback", "worse", f"{counts}: worse by {lift:+.3f} (LLR {harm:.2f} >= {rollback_at:.2f})"
        )
    if canary.ratings >= policy.max_ratings:
        return verdict(
            "rollback",
            "inconclusive_max_ratings",
            f"{counts}: no verdict after {policy.max_ratings} canary ratings",
        )
    if now - started_at >= policy.max_duration_seconds:
        return verdict(
            "rollback",
            "inconclusive_max_duration",
            f"{counts}: no verdict after {policy.max_duration_seconds:.0f} s",
        )
    if not enough:
        return verdict(
            "continue", "below_min_ratings", f"{counts}: each arm needs {policy.min_ratings} ratings"
        )
    return verdict("continue", "collecting", f"{counts}: lift {lift:+.3f} not yet conclusive")


def log_likelihood_ratios(
    canary: ArmCounts, champion: ArmCounts, min_lift: float
) -> tuple[float, float, float]:
    """(better, worse, lift): the log-likelihood ratios of "canary better by `min_lift`" and
    "worse by `min_lift`", each against "equal", under the normal approximation; and the
    observed lift. The pooled rate is smoothed (+1 up, +1 down) so empty arms give finite numbers."""
    lift = _rate(canary) - _rate(champion)
    pooled = (canary.up + champion.up + 1) / (canary.ratings + champion.ratings + 2)
    variance = pooled * (1 - pooled) * (1 / max(canary.ratings, 1) + 1 / max(champion.ratings, 1))
    half = min_lift * min_lift / 2
    return (min_lift * lift - half) / variance, (-min_lift * lift - half) / variance, lift


def _rate(arm: ArmCounts) -> float:
    return arm.up / arm.ratings if arm.ratings else 0.0


LATENCY_Z = 3.09
"""One-sided z of the latency guard's bound: alpha 0.001, since the guard is looked at again and
again while the canary runs."""


def p95_lower_quantile(n: int) -> float:
    """The quantile level whose empirical value, over `n` latencies, is a lower confidence bound of
    their true p95: the order-statistic bound (the number of samples under the p95 is
    Binomial(n, 0.95)), by its normal approximation, `0.95 - z * sqrt(0.95 * 0.05 / n)`, at least
    0.5. At 69 canary requests that is the 87th percentile: a p95 read off 69 samples is their
    fourth slowest, and one noisy stretch of the machine rolled back a good canary in the
    end-to-end test (175 ms against 115 ms)."""
    if n <= 0:
        return 0.5
    return max(0.5, 0.95 - LATENCY_Z * math.sqrt(0.95 * 0.05 / n))


def _guard(canary: ArmCounts, champion: ArmCounts, policy: GatePolicy) -> tuple[OnlineReason, str] | None:
    if canary.requests < policy.guard_min_requests:
        return None
    canary_errors = canary.upstream_errors / canary.requests
    champion_errors = champion.upstream_errors / champion.requests if champion.requests else 0.0
    if canary_errors - champion_errors > policy.max_error_rate_increase:
        return (
            "error_rate",
            f"canary upstream error rate {canary_errors:.3f} vs champion {champion_errors:.3f} "
            f"(allowed +{policy.max_error_rate_increase:.3f})",
        )
    # The canary's p95 at its lower confidence bound: it has few requests, the champion many.
    slow = canary.latency_p95_lower_seconds
    slow = canary.latency_p95_seconds if slow is None else slow
    fast = champion.latency_p95_seconds
    if slow is not None and fast is not None and fast > 0 and slow / fast > policy.max_latency_ratio:
        p95 = canary.latency_p95_seconds or slow
        return (
            "latency",
            f"canary p95 latency {p95 * 1000:.0f} ms (at least {slow * 1000:.0f} ms at 99.9% confidence) vs "
            f"champion {fast * 1000:.0f} ms (allowed x{policy.max_latency_ratio:g})",
        )
    return None
