"""The recipes' choices that need no training run to check."""

from __future__ import annotations

from trainer.recipes import _reference_once

DEMO = {"max_steps": 60, "batch_size": 16, "gradient_accumulation_steps": 1, "epochs": 1.0}


def test_reference_log_probs_are_computed_once_when_a_run_visits_its_examples_again() -> None:
    # The demo's first KTO run: 60 steps of 16 over 149 rows visits each about 6 times.
    assert _reference_once(DEMO, 149) == {"precompute_ref_log_probs": True, "precompute_ref_batch_size": 16}
    assert _reference_once({**DEMO, "max_steps": None, "epochs": 3.0}, 100)["precompute_ref_log_probs"]


def test_a_run_that_sees_each_example_at_most_once_keeps_computing_them_per_step() -> None:
    assert not _reference_once(DEMO, 960)["precompute_ref_log_probs"]  # exactly one visit each
    assert not _reference_once(DEMO, 5000)["precompute_ref_log_probs"]  # most never reached
    assert not _reference_once({**DEMO, "max_steps": None, "epochs": 1.0}, 100)["precompute_ref_log_probs"]
