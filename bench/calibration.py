"""The learned judge's AUC calibration (`evals.calibration.calibrate_scores`) against the way it
computed its bootstrap before 2026-12-01 (SciPy's `mannwhitneyu` over every resampled array, the
point value by scikit-learn's `roc_auc_score`), measured in the same run on the same inputs.

Prints CPU milliseconds per calibration (process time: the machine is shared, wall time is noisy)
and the ratio, for holdouts of a few sizes, and checks both give the same interval.

    .venv/bin/python bench/calibration.py [--resamples 2000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.calibration import CalibrationConfig, _interval, calibrate_scores  # noqa: E402


def baseline(scores: np.ndarray, liked: np.ndarray, config: CalibrationConfig) -> tuple[float, float, float]:
    """The previous computation: (AUC, low, high)."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    pos, neg = scores[liked], scores[~liked]
    rng = np.random.default_rng(config.seed)
    u = mannwhitneyu(
        pos[rng.integers(0, len(pos), size=(config.resamples, len(pos)))],
        neg[rng.integers(0, len(neg), size=(config.resamples, len(neg)))],
        axis=1,
        method="asymptotic",
    ).statistic
    low, high = _interval(np.asarray(u) / (len(pos) * len(neg)), config.level)
    return float(roc_auc_score(liked, scores)), low, high


def cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # imports, caches
    started = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - started) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--resamples", type=int, default=2000, help="bootstrap resamples (the default config's)"
    )
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    config = CalibrationConfig(resamples=args.resamples, seed=0)
    print(f"{'ratings':>8}{'baseline ms':>13}{'now ms':>9}{'ratio':>8}")
    for n in (60, 160, 600, 2000):
        rng = np.random.default_rng(n)
        liked = rng.random(n) < 0.4
        scores = (rng.normal(size=n) + liked).round(2)  # rounded: ties, as a reward model's scores have
        now = calibrate_scores(scores.tolist(), liked.tolist(), config)
        auc, low, high = baseline(scores, liked, config)
        assert (now.low, now.high) == (low, high) and abs(now.auc - auc) < 1e-12, (now, auc, low, high)  # type: ignore[operator]
        before = cpu_ms(lambda s=scores, y=liked: baseline(s, y, config), args.repeat)
        after = cpu_ms(
            lambda s=scores, y=liked: calibrate_scores(s.tolist(), y.tolist(), config), args.repeat
        )
        print(f"{n:>8}{before:>13.1f}{after:>9.1f}{before / after:>7.1f}x")


if __name__ == "__main__":
    main()
