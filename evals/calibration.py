"""Does a judge agree with the users? Calibration on the holdout's own thumbs, with intervals.

A judge (a reward model learned from thumbs, or an LLM) may decide a promotion only once it
agrees with held-out feedback it never saw, well enough and on enough of it; otherwise it is
reported as a diagnostic. Two measures, one per kind of judge:

- A scoring judge (the reward model) scores every held-out rated answer: its **AUC** against the
  thumbs is the chance it scores a random liked answer above a random disliked one (0.5 = chance,
  whatever the base rate). Point value by scikit-learn's `roc_auc_score`; its interval by a
  stratified percentile bootstrap (liked and disliked answers resampled separately, so every
  resample has both), each resample's AUC from SciPy's Mann-Whitney U (U / (n_liked * n_disliked)
  is the AUC, ties counting half, as `roc_auc_score` counts them).
- A pairwise judge is shown held-out pairs where users said which answer is better (a correction
  over the answer it corrected, a liked over a disliked answer to the same prompt), in both
  orders, as it is asked when it gates. **Agreement** is the share of verdicts naming the answer
  users preferred; **Cohen's kappa** (scikit-learn) corrects it for chance, so a judge that always
  says "A" (position bias) scores 0 although it agrees half the time. Interval: percentile
  bootstrap over pairs (both orders of a pair stay together).

Eligibility: AUC lower bound >= `min_auc_low` on >= `min_ratings` ratings; kappa lower bound >=
`min_kappa_low` on >= `min_pairs` pairs. AUC 0.65 and kappa 0.3 mean the same thing on balanced
pairs: 65% of pairs ordered as users order them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
import numpy as np


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class CalibrationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """When a judge counts as calibrated, and how its interval is computed."""

    min_ratings: Annotated[
        int,
        _doc("A reward model needs at least this many held-out thumbs to be calibrated."),
        msgspec.Meta(ge=2),
    ] = 50
    min_auc_low: Annotated[
        float,
        _doc("Lowest accepted lower bound of the reward model's AUC against held-out thumbs."),
        msgspec.Meta(ge=0.5, le=1),
    ] = 0.65
    min_pairs: Annotated[
        int, _doc("A pairwise judge needs at least this many held-out preference pairs."), msgspec.Meta(ge=1)
    ] = 30
    min_kappa_low: Annotated[
        float,
        _doc("Lowest accepted lower bound of a pairwise judge's Cohen's kappa with the users."),
        msgspec.Meta(ge=0, le=1),
    ] = 0.3
    level: Annotated[
        float, _doc("Confidence level of the two-sided intervals."), msgspec.Meta(gt=0, lt=1)
    ] = 0.95
    resamples: Annotated[int, _doc("Bootstrap resamples."), msgspec.Meta(ge=100)] = 2000
    seed: int = 0


DEFAULT_CALIBRATION = CalibrationConfig()


class AucCalibration(msgspec.Struct, frozen=True, kw_only=True, tag="auc", tag_field="kind"):
    """A scoring judge against held-out thumbs."""

    ratings: int
    liked: int
    base_rate: float | None
    """Share of thumbs-up among the ratings: what always saying "liked" would get right."""
    auc: float | None
    low: float | None
    high: float | None
    level: float
    eligible: bool
    why: str


class AgreementCalibration(msgspec.Struct, frozen=True, kw_only=True, tag="agreement", tag_field="kind"):
    """A pairwise judge's verdicts on held-out preference pairs, against the users' preference."""

    pairs: int
    verdicts: int
    agreement: float | None
    agreement_low: float | None
    agreement_high: float | None
    kappa: float | None
    kappa_low: float | None
    kappa_high: float | None
    ties: int
    level: float
    eligible: bool
    why: str


Calibration = AucCalibration | AgreementCalibration


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(np.round(values, 12), [tail, 1 - tail])
    return float(low), float(high)


def calibrate_scores(
    scores: Sequence[float], liked: Sequence[bool], config: CalibrationConfig = DEFAULT_CALIBRATION
) -> AucCalibration:
    """AUC of `scores` against the thumbs (`liked[i]` for answer i), its interval and eligibility."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(liked, dtype=bool)
    n, n_pos = len(s), int(y.sum())
    n_neg = n - n_pos
    base_rate = n_pos / n if n else None
    if n_pos == 0 or n_neg == 0:
        why = f"not calibrated: {n} held-out ratings with {n_pos} thumbs-up and {n_neg} thumbs-down; both are needed"
        return AucCalibration(
            ratings=n, liked=n_pos, base_rate=base_rate, auc=None, low=None, high=None,
            level=config.level, eligible=False, why=why,
        )  # fmt: skip
    auc = float(roc_auc_score(y, s))
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(config.seed)
    u = mannwhitneyu(
        pos[rng.integers(0, n_pos, size=(config.resamples, n_pos))],
        neg[rng.integers(0, n_neg, size=(config.resamples, n_neg))],
        axis=1,
        method="asymptotic",
    ).statistic
    low, high = _interval(np.asarray(u) / (n_pos * n_neg), config.level)
    figures = f"AUC {auc:.3f} [{config.level:.0%} CI {low:.3f}, {high:.3f}] on {n} held-out ratings (base rate {base_rate:.2f} liked)"
    if n < config.min_ratings:
        eligible, why = False, f"not calibrated: {figures}; {config.min_ratings} ratings needed"
    elif low < config.min_auc_low:
        eligible, why = False, f"not calibrated: {figures}; lower bound below {config.min_auc_low:.2f}"
    else:
        eligible, why = True, f"calibrated: {figures}; lower bound >= {config.min_auc_low:.2f}"
    return AucCalibration(
        ratings=n, liked=n_pos, base_rate=base_rate, auc=auc, low=low, high=high,
        level=config.level, eligible=eligible, why=why,
    )  # fmt: skip


Verdict = Literal["A", "B", "TIE"]


def agreement_and_kappa(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed agreement and Cohen's kappa of each k x k confusion matrix in `confusion` (shape
    (m, k, k)); kappa 0 where chance agreement is 1 (one category only)."""
    n = confusion.sum(axis=(1, 2))
    observed = np.trace(confusion, axis1=1, axis2=2) / n
    expected = (confusion.sum(axis=2) * confusion.sum(axis=1)).sum(axis=1) / n**2
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(expected < 1, (observed - expected) / np.where(expected < 1, 1 - expected, 1), 0.0)
    return observed, kappa


def calibrate_verdicts(
    truth: Sequence[Literal["A", "B"]],
    verdicts: Sequence[Verdict],
    pair_ids: Sequence[int],
    config: CalibrationConfig = DEFAULT_CALIBRATION,
) -> AgreementCalibration:
    """Agreement and Cohen's kappa of a pairwise judge's `verdicts` with the users' `truth` (which
    position held the answer users preferred), one entry per presentation; `pair_ids` groups the
    presentations of one pair for the bootstrap."""
    from sklearn.metrics import cohen_kappa_score

    t = np.asarray(truth, dtype=object)
    v = np.asarray(verdicts, dtype=object)
    ids = np.asarray(pair_ids)
    pairs = len(set(ids.tolist()))
    ties = int((v == "TIE").sum())
    if pairs == 0:
        return AgreementCalibration(
            pairs=0, verdicts=0, agreement=None, agreement_low=None, agreement_high=None, kappa=None,
            kappa_low=None, kappa_high=None, ties=0, level=config.level, eligible=False,
            why="not calibrated: the holdout has no preference pairs (corrections, or liked and disliked answers to one prompt)",
        )  # fmt: skip
    labels = ["A", "B", "TIE"]
    kappa = float(cohen_kappa_score(t, v, labels=labels))
    kappa = 0.0 if np.isnan(kappa) else kappa  # one category only: no agreement beyond chance
    agreement = float((t == v).mean())
    # Bootstrap over pairs: each pair's 3x3 confusion counts, summed over resampled pairs; kappa of
    # each resample from its confusion matrix (the formula cohen_kappa_score computes above).
    code = {label: i for i, label in enumerate(labels)}
    cells = np.array([code[a] * 3 + code[b] for a, b in zip(t, v, strict=True)])
    _, group = np.unique(ids, return_inverse=True)
    per_pair = np.zeros((pairs, 9))
    np.add.at(per_pair, (group, cells), 1)
    rng = np.random.default_rng(config.seed)
    confusion = per_pair[rng.integers(0, pairs, size=(config.resamples, pairs))].sum(axis=1).reshape(-1, 3, 3)
    observed, kappas = agreement_and_kappa(confusion)
    a_low, a_high = _interval(observed, config.level)
    k_low, k_high = _interval(kappas, config.level)
    figures = (
        f"agreement {agreement:.2f} [{a_low:.2f}, {a_high:.2f}], Cohen's kappa {kappa:.2f} "
        f"[{config.level:.0%} CI {k_low:.2f}, {k_high:.2f}] on {pairs} held-out pairs ({len(t)} verdicts, {ties} ties)"
    )
    if pairs < config.min_pairs:
        eligible, why = False, f"not calibrated: {figures}; {config.min_pairs} pairs needed"
    elif k_low < config.min_kappa_low:
        eligible, why = (
            False,
            f"not calibrated: {figures}; kappa lower bound below {config.min_kappa_low:.2f}",
        )
    else:
        eligible, why = True, f"calibrated: {figures}; kappa lower bound >= {config.min_kappa_low:.2f}"
    return AgreementCalibration(
        pairs=pairs, verdicts=len(t), agreement=agreement, agreement_low=a_low, agreement_high=a_high,
        kappa=kappa, kappa_low=k_low, kappa_high=k_high, ties=ties, level=config.level,
        eligible=eligible, why=why,
    )  # fmt: skip
