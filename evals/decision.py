"""The gate: promote only on evidence that the candidate is better and nothing guarded regressed.

- Every ``primary`` scorer must have scored at least `min_samples` examples and the lower bound of
  its mean difference's CI must be above 0. Requiring all of them (an intersection-union test)
  keeps the false-promotion rate at or below one scorer's error rate, with no correction needed.
- Every ``guard`` scorer's lower bound must be at or above -tolerance (a guard that scored nothing
  is noted, and does not block).
- ``diagnostic`` scorers never decide. No primary scorer, or a failed evaluation: no promotion.

Evidence from the holdout's feedback enters the same way: a judge that is not calibrated, or a
reference scorer with too few prompts, arrives here as a diagnostic, and its reason says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from evals.statistics import PairedStats


class Reason(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the decision's account: which scorer, whether it allowed promotion, and why."""

    scorer: str | None
    role: str | None
    ok: bool
    """False blocks promotion. Diagnostics are always ok: they never decide."""
    message: str


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Whether to promote, with a reason per scorer (and for a failed evaluation, the failure)."""

    promote: bool
    reasons: list[Reason]


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """What the decision needs to know about one scorer."""

    name: str
    role: str
    tolerance: float
    stats: PairedStats | None
    eligibility: str = ""
    """Why the scorer may or may not decide (quoted for diagnostics)."""
    summary: str = ""
    """A one-line account quoted when the scorer blocks (e.g. which kind of answer regressed)."""


def fmt_ci(stats: PairedStats) -> str:
    """'+0.120 [95% CI +0.050, +0.190]'."""
    return f"{stats.mean:+.3f} [{stats.level:.0%} CI {stats.low:+.3f}, {stats.high:+.3f}]"


def decide(evidence: Sequence[Evidence], *, min_samples: int, error: str | None = None) -> Decision:
    """Apply the gate (module docstring) to per-scorer evidence; `error` fails it outright."""
    if error is not None:
        return Decision(
            promote=False,
            reasons=[Reason(scorer=None, role=None, ok=False, message=f"evaluation failed: {error}")],
        )
    reasons = []
    for e in evidence:
        s = e.stats
        if e.role == "diagnostic":
            shown = fmt_ci(s) if s else "no examples"
            why = f" ({e.eligibility})" if e.eligibility.startswith("not ") else ""
            reasons.append(
                Reason(
                    scorer=e.name,
                    role=e.role,
                    ok=True,
                    message=f"diagnostic only, does not decide{why}: {shown}",
                )
            )
        elif e.role == "primary":
            if s is None or s.n < min_samples:
                got = s.n if s else 0
                msg = f"{got} examples scored, fewer than the {min_samples} needed to show an improvement"
                reasons.append(Reason(scorer=e.name, role=e.role, ok=False, message=msg))
            elif s.low > 0:
                reasons.append(
                    Reason(
                        scorer=e.name, role=e.role, ok=True, message=f"better: {fmt_ci(s)}, lower bound > 0"
                    )
                )
            else:
                msg = f"not shown better: {fmt_ci(s)}, lower bound <= 0"
                reasons.append(Reason(scorer=e.name, role=e.role, ok=False, message=msg))
        elif s is None:
            reasons.append(
                Reason(scorer=e.name, role=e.role, ok=True, message="guard had no examples to check")
            )
        elif s.low >= -e.tolerance:
            msg = f"no regression beyond {e.tolerance:.3f}: {fmt_ci(s)}"
            reasons.append(Reason(scorer=e.name, role=e.role, ok=True, message=msg))
        else:
            msg = f"regressed: {fmt_ci(s)}, lower bound below -{e.tolerance:.3f}"
            msg += f" ({e.summary})" if e.summary else ""
            reasons.append(Reason(scorer=e.name, role=e.role, ok=False, message=msg))
    if not any(e.role == "primary" for e in evidence):
        reasons.append(
            Reason(
                scorer=None,
                role=None,
                ok=False,
                message="no primary scorer could decide: configure a judge, rules with role 'primary' or a "
                "user preference, or collect held-out corrections and thumbs for the feedback evidence",
            )
        )
    return Decision(promote=all(r.ok for r in reasons), reasons=reasons)
