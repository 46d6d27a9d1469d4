"""What can go wrong in an evaluation, as specific exceptions.

Two families: `EvalInputError` is raised before any model is called (a bad holdout file, an
unreadable rule); everything else happens during the evaluation and ends up, by `evals.run`, as
a report with ``status == "failed"`` and a decision that does not promote.
"""

from __future__ import annotations


class EvalError(Exception):
    """Base of every error this package raises on purpose."""


class EvalInputError(EvalError, ValueError):
    """The eval set, rules or config cannot be used; nothing was evaluated. Fix the input.

    A ValueError too, so msgspec reports it with the path of the offending field when decoding.
    """


class ServerError(EvalError):
    """vLLM could not be reached, lacks a model, or refused a request."""


class JudgeError(EvalError):
    """The judge endpoint could not be reached or refused requests."""


class ScorerError(EvalError):
    """One example could not be scored (e.g. a judge answered something that is no verdict).

    Counted per scorer; the eval fails when a scorer's share of such errors is above what it
    tolerates (`Scorer.max_error_fraction`, 0 by default).
    """


class RewardModelError(EvalError):
    """The learned judge's reward model could not score (missing directory, the scoring process
    failed). The learned judge is then not eligible to decide; the evaluation goes on."""
