"""The paired bootstrap and the gate, on inputs whose right answer is known."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evals import paired_bootstrap
from evals.decision import Evidence, decide


def test_no_difference_gives_a_zero_interval():
    s = paired_bootstrap([0.0] * 50)
    assert (s.mean, s.low, s.high) == (0.0, 0.0, 0.0)
    assert (s.win_rate, s.wins, s.ties, s.losses) == (0.5, 0, 50, 0)


def test_candidate_always_better_gives_a_positive_interval():
    s = paired_bootstrap([1.0] * 40)
    assert (s.mean, s.low, s.high, s.win_rate_low) == (1.0, 1.0, 1.0, 1.0)


def test_interval_matches_the_normal_approximation_for_a_known_mix():
    # 60 wins, 40 losses of size 1: mean 0.2, sd ~0.98, se ~0.098 -> 95% CI ~ [0.006, 0.394]
    d = [1.0] * 60 + [-1.0] * 40
    s = paired_bootstrap(d, resamples=20_000, seed=1)
    assert s.mean == pytest.approx(0.2)
    assert s.low == pytest.approx(0.2 - 1.96 * 0.098, abs=0.03)
    assert s.high == pytest.approx(0.2 + 1.96 * 0.098, abs=0.03)
    assert s.win_rate == pytest.approx(0.6)
    assert s.win_rate_low == pytest.approx(0.6 - 1.96 * 0.049, abs=0.015)


def test_seeded_and_reproducible():
    rng = random.Random(3)
    d = [rng.gauss(0, 1) for _ in range(30)]
    assert paired_bootstrap(d, seed=7) == paired_bootstrap(d, seed=7)
    assert paired_bootstrap(d, seed=7).low != paired_bootstrap(d, seed=8).low


def test_fractions_that_cancel_do_not_leave_float_noise_above_zero():
    # +1/3 and -1/3 in equal numbers: some resample means are "0" only up to rounding error.
    s = paired_bootstrap([1 / 3, -1 / 3] * 20 + [0.0] * 200, seed=0)
    assert s.low < 0 < s.high


def test_higher_level_gives_a_wider_interval():
    d = [1.0] * 30 + [-1.0] * 20 + [0.0] * 10
    narrow, wide = paired_bootstrap(d, level=0.8), paired_bootstrap(d, level=0.99)
    assert wide.low < narrow.low and wide.high > narrow.high


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]), min_size=1, max_size=60))
def test_interval_contains_the_mean(d):
    s = paired_bootstrap(d, resamples=500)
    assert s.low <= s.mean + 1e-9 and s.mean <= s.high + 1e-9
    assert s.win_rate_low <= s.win_rate <= s.win_rate_high + 1e-9


def test_false_promotion_rate_under_no_difference_is_at_most_five_percent():
    """Simulated 'candidate = incumbent' gates: pass/fail differences are pure noise around 0."""
    rng = random.Random(0)
    runs, promoted = 400, 0
    for i in range(runs):
        # Each prompt: both models pass independently with the same prompt-specific probability.
        diffs = []
        for _ in range(60):
            p = rng.random()
            diffs.append(float(rng.random() < p) - float(rng.random() < p))
        stats = paired_bootstrap(diffs, resamples=2000, seed=i)
        ev = [Evidence(name="users", role="primary", tolerance=0.0, stats=stats)]
        promoted += decide(ev, min_samples=30).promote
    rate = promoted / runs
    print(f"simulated false-promotion rate: {promoted}/{runs} = {rate:.3f}")
    assert rate <= 0.05


def test_gate_promotes_a_real_improvement_often():
    rng = random.Random(1)
    promoted = 0
    for i in range(100):
        diffs = [float(rng.random() < 0.8) - float(rng.random() < 0.5) for _ in range(60)]
        stats = paired_bootstrap(diffs, resamples=2000, seed=i)
        promoted += decide(
            [Evidence(name="u", role="primary", tolerance=0, stats=stats)], min_samples=30
        ).promote
    assert promoted >= 80  # power ~90% here (effect 0.3, se ~0.09)
