"""Paired bootstrap confidence intervals over per-example differences.

Every scorer yields one difference per example (candidate minus incumbent, on the same prompt).
Resampling examples with replacement keeps each pair together, so what varies between prompts
(some are hard for both models) cancels out, and nothing is assumed about the distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

_CHUNK = 1000


class PairedStats(msgspec.Struct, frozen=True, kw_only=True):
    """Mean difference and win rate, each with a percentile-bootstrap CI at `level` (two-sided)."""

    n: int
    mean: float
    low: float
    high: float
    win_rate: float
    """Share of examples the candidate won, ties counting half (0.5 = no difference)."""
    win_rate_low: float
    win_rate_high: float
    wins: int
    ties: int
    losses: int
    level: float
    resamples: int


def paired_bootstrap(
    differences: Sequence[float], *, level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> PairedStats:
    """Seeded paired bootstrap of the mean difference and of the win rate.

    Same inputs and seed, same interval. Resample means are rounded to 12 decimals so that
    floating-point noise cannot turn "no difference" into a lower bound of 1e-17 > 0.
    """
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one difference")
    w = (np.sign(d) + 1) / 2
    rng = np.random.default_rng(seed)
    means, wins = np.empty(resamples), np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        stop = min(start + _CHUNK, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
        wins[start:stop] = w[idx].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(np.round(means, 12), [tail, 1 - tail])
    win_low, win_high = np.quantile(np.round(wins, 12), [tail, 1 - tail])
    return PairedStats(
        n=n,
        mean=float(round(d.mean(), 12)),
        low=float(low),
        high=float(high),
        win_rate=float(round(w.mean(), 12)),
        win_rate_low=float(win_low),
        win_rate_high=float(win_high),
        wins=int((d > 0).sum()),
        ties=int((d == 0).sum()),
        losses=int((d < 0).sum()),
        level=level,
        resamples=resamples,
    )
