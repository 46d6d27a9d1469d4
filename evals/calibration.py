"""Does a judge agree with the users? Calibration on the holdout's own thumbs, with intervals.

A judge (a reward model learned from thumbs, or an LLM) may decide a promotion only once it
agrees with held-out feedback it never saw, well enough and on enough of it; otherwise it is
reported as a diagnostic. Two measures, one per kind of judge:

- A scoring judge (the reward model) scores both answers of every held-out preference pair (a
  correction over the answer it corrected, a liked over a disliked answer to the same prompt;
  `evals.feedback.RatedPair`): its **AUC within a prompt** is the share of pairs whose preferred
  answer it scores higher, ties counting half. This is the reward-model accuracy that TRL's
  RewardTrainer logs (1.16: chosen > rejected, a tie counted wrong) and RewardBench reports, and it
  asks what the judge is asked when it gates: which of two answers to one prompt users prefer. Its
  interval: percentile bootstrap over prompts (a prompt's pairs share answers). The AUC against
  every held-out thumb, prompts pooled (scikit-learn's `roc_auc_score`), is reported beside it and
  decides nothing: a reward model that reads only the question (easy questions liked, hard ones
  disliked) scores high there and 0.5 within a prompt, and as a primary scorer it vetoed candidates
  the references showed clearly better (e2e, 2026-12-02: pooled AUC 0.894 on 74 thumbs, candidate
  +0.042 [-0.000, +0.078] against references' +0.446 [+0.266, +0.617]).
- A pairwise judge is shown held-out pairs where users said which answer is better (a correction
  over the answer it corrected, a liked over a disliked answer to the same prompt), in both
  orders, as it is asked when it gates. **Agreement** is the share of verdicts naming the answer
  users preferred; **Cohen's kappa** (scikit-learn) corrects it for chance, so a judge that always
  says "A" (position bias) scores 0 although it agrees half the time. Interval: percentile
  bootstrap over prompts (both orders of all a prompt's pairs stay together).

Eligibility, on >= `min_pairs` held-out pairs of >= `min_prompts` prompts for either kind: AUC
lower bound >= `min_auc_low`; kappa lower bound >= `min_kappa_low`. AUC 0.65 and kappa 0.3 mean
the same thing on balanced pairs: 65% of pairs ordered as users order them. The prompt count is
what the interval rests on (it resamples prompts): a judge ordering pairs at chance, whose pairs
of one prompt share answers and so all go the same way, passed on 30 pairs in 51% of trials when
they came from 1 prompt, 13% from 3, 6% from 5 (an app with five FAQ buttons), 1% from 8 or 10,
none from 15 (300 trials each, 2026-12-03; `tests/test_evals_feedback.py`).
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
        _doc(
            "Ignored since 2026-12-02 (a reward model is calibrated on `min_pairs` held-out pairs, not on "
            "thumbs); accepted so that older configs still load."
        ),
        msgspec.Meta(ge=2),
    ] = 50
    min_auc_low: Annotated[
        float,
        _doc("Lowest accepted lower bound of the reward model's AUC on held-out preference pairs."),
        msgspec.Meta(ge=0.5, le=1),
    ] = 0.65
    min_pairs: Annotated[
        int, _doc("A judge needs at least this many held-out preference pairs."), msgspec.Meta(ge=1)
    ] = 30
    min_prompts: Annotated[
        int,
        _doc(
            "A judge's pairs must come from at least this many distinct prompts: the interval "
            "resamples prompts, and with fewer it is too narrow (module docstring)."
        ),
        msgspec.Meta(ge=1),
    ] = 10
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
    """A scoring judge on held-out preference pairs (module docstring)."""

    pairs: int
    ties: int
    """Pairs whose two answers the judge scored the same (each counts half)."""
    auc: float | None
    """Share of pairs whose preferred answer the judge scored higher, ties half; None without pairs."""
    low: float | None
    high: float | None
    ratings: int
    """Held-out thumbs on text answers, for the pooled AUC."""
    base_rate: float | None
    """Share of thumbs-up among the ratings: what always saying "liked" would get right."""
    pooled_auc: float | None
    """AUC against every held-out thumb, prompts pooled: reported, decides nothing."""
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


NO_PAIRS = (
    "not calibrated: the holdout has no preference pairs "
    "(corrections, or liked and disliked answers to one prompt)"
)


def calibrate_scores(
    preferred: Sequence[float],
    other: Sequence[float],
    prompts: Sequence[str],
    scores: Sequence[float] = (),
    liked: Sequence[bool] = (),
    config: CalibrationConfig = DEFAULT_CALIBRATION,
) -> AucCalibration:
    """A scoring judge's AUC within a prompt: `preferred[i]` and `other[i]` are its scores of pair
    i's answers (the one users preferred first), `prompts[i]` the prompt's key. The interval
    resamples prompts, not pairs: a prompt's pairs share answers (one greedy answer corrected by
    several users, a liked answer paired with each disliked one), so they are not independent.
    `scores` and `liked` (every held-out rated answer's score and thumb) give the pooled AUC,
    reported only. A score that is not finite (NaN, inf) makes the judge not calibrated."""
    from sklearn.metrics import roc_auc_score

    p = np.asarray(preferred, dtype=np.float64)
    o = np.asarray(other, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(liked, dtype=bool)
    n, n_pos = len(p), int(y.sum())
    base_rate = n_pos / len(y) if len(y) else None

    def result(eligible: bool, why: str, **figures: float | int | None) -> AucCalibration:
        fields = {"pairs": n, "ties": 0, "auc": None, "low": None, "high": None} | figures
        return AucCalibration(
            **fields, ratings=len(y), base_rate=base_rate, pooled_auc=pooled, level=config.level,
            eligible=eligible, why=why,
        )  # fmt: skip

    pooled = None
    if not (np.isfinite(p).all() and np.isfinite(o).all() and np.isfinite(s).all()):
        return result(False, "not calibrated: the judge gave scores that are not finite numbers (NaN or inf)")
    if 0 < n_pos < len(y):
        pooled = float(roc_auc_score(y, s))
    pooled_text = (
        f"; prompts pooled, AUC {pooled:.3f} on {len(y)} held-out thumbs "
        f"(base rate {base_rate:.2f} liked, reported only)"
        if pooled is not None
        else ""
    )
    if n == 0:
        return result(False, NO_PAIRS + pooled_text)
    # Each pair's credit: 1 ordered as users order it, 0.5 a tie, 0 the other way (np.sign of the
    # difference mapped to [0, 1]); the AUC is their mean. A resample draws prompts with
    # replacement and takes the credit of all their pairs over their number.
    credit = (np.sign(np.round(p - o, 12)) + 1) / 2
    ties = int((credit == 0.5).sum())
    auc = float(credit.mean())
    _, group = np.unique(np.asarray(prompts, dtype=object).astype(str), return_inverse=True)
    credit_per_prompt = np.bincount(group, weights=credit)
    pairs_per_prompt = np.bincount(group).astype(np.float64)
    rng = np.random.default_rng(config.seed)
    drawn = rng.integers(0, len(pairs_per_prompt), size=(config.resamples, len(pairs_per_prompt)))
    low, high = _interval(
        credit_per_prompt[drawn].sum(axis=1) / pairs_per_prompt[drawn].sum(axis=1), config.level
    )
    figures = (
        f"AUC within a prompt {auc:.3f} [{config.level:.0%} CI {low:.3f}, {high:.3f}] on {n} held-out "
        f"preference pairs of {len(pairs_per_prompt)} prompts ({ties} ties){pooled_text}"
    )
    if n < config.min_pairs:
        eligible, why = False, f"not calibrated: {figures}; {config.min_pairs} pairs needed"
    elif len(pairs_per_prompt) < config.min_prompts:
        eligible, why = False, f"not calibrated: {figures}; {_few_prompts(config)}"
    elif low < config.min_auc_low:
        eligible, why = False, f"not calibrated: {figures}; lower bound below {config.min_auc_low:.2f}"
    else:
        eligible, why = True, f"calibrated: {figures}; lower bound >= {config.min_auc_low:.2f}"
    return result(eligible, why, ties=ties, auc=auc, low=low, high=high)


def _few_prompts(config: CalibrationConfig) -> str:
    return (
        f"{config.min_prompts} prompts needed (the interval resamples prompts; with fewer it is too "
        "narrow: feedback on more distinct prompts is needed)"
    )


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
    *,
    prompts: Sequence[str] | None = None,
) -> AgreementCalibration:
    """Agreement and Cohen's kappa of a pairwise judge's `verdicts` with the users' `truth` (which
    position held the answer users preferred), one entry per presentation; `pair_ids` names each
    presentation's pair. The bootstrap resamples `prompts` (each presentation's prompt key: a
    prompt's pairs share answers, as in `calibrate_scores`), or pairs when not given."""
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
            why=NO_PAIRS,
        )  # fmt: skip
    labels = ["A", "B", "TIE"]
    kappa = float(cohen_kappa_score(t, v, labels=labels))
    kappa = 0.0 if np.isnan(kappa) else kappa  # one category only: no agreement beyond chance
    agreement = float((t == v).mean())
    # Bootstrap over prompts (or pairs): each one's 3x3 confusion counts, summed over the resampled
    # ones; kappa of each resample from its confusion matrix (the formula cohen_kappa_score
    # computes above).
    code = {label: i for i, label in enumerate(labels)}
    cells = np.array([code[a] * 3 + code[b] for a, b in zip(t, v, strict=True)])
    clusters = np.asarray(prompts, dtype=object).astype(str) if prompts is not None else ids
    _, group = np.unique(clusters, return_inverse=True)
    n_groups = int(group.max()) + 1
    per_group = np.zeros((n_groups, 9))
    np.add.at(per_group, (group, cells), 1)
    rng = np.random.default_rng(config.seed)
    drawn = rng.integers(0, n_groups, size=(config.resamples, n_groups))
    confusion = per_group[drawn].sum(axis=1).reshape(-1, 3, 3)
    observed, kappas = agreement_and_kappa(confusion)
    a_low, a_high = _interval(observed, config.level)
    k_low, k_high = _interval(kappas, config.level)
    figures = (
        f"agreement {agreement:.2f} [{a_low:.2f}, {a_high:.2f}], Cohen's kappa {kappa:.2f} "
        f"[{config.level:.0%} CI {k_low:.2f}, {k_high:.2f}] on {pairs} held-out pairs ({len(t)} verdicts, {ties} ties)"
    )
    if pairs < config.min_pairs:
        eligible, why = False, f"not calibrated: {figures}; {config.min_pairs} pairs needed"
    elif n_groups < config.min_prompts:
        # Without prompt keys each pair counts as a prompt of its own (the bootstrap resamples pairs).
        of = f"{n_groups} prompts" if prompts is not None else f"{n_groups} pairs, no prompt keys given"
        eligible, why = False, f"not calibrated: {figures} of {of}; {_few_prompts(config)}"
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
