"""Why a training run refused to start or stopped: one exception per cause.

The CLI turns each into a one-line `{"event":"error"}` and a non-zero exit; messages name the
file or field at fault and say what to do next.
"""

from __future__ import annotations


class TrainerError(Exception):
    """A run that cannot go on because of its inputs (not a bug in the trainer)."""


class SpecError(TrainerError):
    """SPEC.json is missing, not JSON, has unknown fields or values out of range."""


class SnapshotError(TrainerError):
    """The snapshot directory is missing, incomplete, corrupt or of another schema."""


class BaseModelError(TrainerError):
    """The base model or parent adapter directory is missing or cannot be loaded."""


class OutputExistsError(TrainerError):
    """The output adapter directory already exists; adapter versions are never overwritten."""


class NotEnoughSignalError(TrainerError):
    """The snapshot holds too few examples for the requested (or any) method."""


class NoTrainableTokensError(NotEnoughSignalError):
    """Every example of the method was left out when fitted into the token budget: zero answer
    tokens would be trained on."""
