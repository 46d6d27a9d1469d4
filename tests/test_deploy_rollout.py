"""The rollout lifecycle as pure transitions: what serves, what to load and unload, what each
adapter version becomes."""

from __future__ import annotations

import pytest

from deploy.rollout import (
    BudgetTooSmall,
    Rollout,
    RolloutConflict,
    StateChange,
    fail_load,
    keep_loaded,
    make_room,
    promote,
    rollback,
    set_fraction,
    start_canary,
)

ON_BASE = Rollout(project="shop", champion="tiny")
SERVING = Rollout(project="shop", champion="shop@v2", previous="shop@v1")


def test_a_full_cycle_canary_promote_then_the_next_canary_rolled_back() -> None:
    started = start_canary(SERVING, "shop@v3", fraction=0.1, now=100.0, reason="offline gate passed")
    assert started.kind == "canary_started"
    assert started.after == Rollout(
        project="shop", champion="shop@v2", previous="shop@v1", candidate="shop@v3", fraction=0.1,
        canary_started_at=100.0,
    )  # fmt: skip
    assert (started.load, started.unload, started.changes) == (
        ("shop@v3",),
        (),
        (StateChange("shop@v3", "canary"),),
    )
    assert started.after.adapters() == {"shop@v1", "shop@v2", "shop@v3"}

    ramped = set_fraction(started.after, 0.3, now=150.0, reason="ramp")
    assert ramped.after.fraction == 0.3 and ramped.after.canary_started_at == 100.0

    promoted = promote(ramped.after, now=200.0, reason="online gate: better")
    assert promoted.after == Rollout(project="shop", champion="shop@v3", previous="shop@v2")
    assert promoted.changes == (StateChange("shop@v3", "champion"), StateChange("shop@v2", "retired"))
    assert promoted.unload == ("shop@v1",)  # the champion before last goes; v2 stays for rollback

    next_canary = start_canary(promoted.after, "shop@v4", fraction=0.1, now=300.0, reason="r")
    rolled = rollback(next_canary.after, now=400.0, reason="online gate: worse")
    assert rolled.kind == "rolled_back"
    assert rolled.after == promoted.after
    assert (rolled.changes, rolled.unload) == ((StateChange("shop@v4", "rejected"),), ("shop@v4",))


def test_the_first_promotion_from_the_base_model_keeps_the_base_as_rollback_target() -> None:
    promoted = promote(
        start_canary(ON_BASE, "shop@v1", fraction=0.5, now=0, reason="r").after, now=1, reason="r"
    )
    assert promoted.after == Rollout(project="shop", champion="shop@v1", previous="tiny")
    assert promoted.changes == (StateChange("shop@v1", "champion"),)
    assert promoted.unload == ()
    back = rollback(promoted.after, now=2, reason="manual")
    assert back.kind == "champion_rolled_back"
    assert back.after == ON_BASE
    assert (back.changes, back.load, back.unload) == ((StateChange("shop@v1", "retired"),), (), ("shop@v1",))


def test_rolling_back_the_champion_restores_the_previous_one() -> None:
    back = rollback(SERVING, now=1, reason="manual", adapter="shop@v2")
    assert back.after == Rollout(project="shop", champion="shop@v1")
    assert back.changes == (StateChange("shop@v1", "champion"), StateChange("shop@v2", "retired"))
    assert (back.load, back.unload) == (("shop@v1",), ("shop@v2",))
    with pytest.raises(RolloutConflict, match="no previous champion"):
        rollback(back.after, now=2, reason="manual")


def test_manual_promotion_without_canary_names_the_version_and_must_load_it() -> None:
    promoted = promote(SERVING, now=1, reason="manual", adapter="shop@v5")
    assert promoted.after == Rollout(project="shop", champion="shop@v5", previous="shop@v2")
    assert (promoted.load, promoted.unload) == (("shop@v5",), ("shop@v1",))
    # Re-promoting the previous champion swaps the two, unloading nothing.
    swapped = promote(SERVING, now=1, reason="manual", adapter="shop@v1")
    assert swapped.after == Rollout(project="shop", champion="shop@v1", previous="shop@v2")
    assert swapped.unload == ()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: start_canary(SERVING, "other@v3", fraction=0.1, now=0, reason=""),
            "not a version of project shop",
        ),
        (lambda: start_canary(SERVING, "shop@v1", fraction=0.1, now=0, reason=""), "has been champion"),
        (lambda: start_canary(SERVING, "shop@v3", fraction=1.0, now=0, reason=""), "between 0 and 1"),
        (lambda: promote(SERVING, now=0, reason=""), "no canary"),
        (lambda: promote(SERVING, now=0, reason="", adapter="shop@v2"), "champion already"),
        (lambda: set_fraction(SERVING, 0.5, now=0, reason=""), "no canary"),
        (lambda: rollback(SERVING, now=0, reason="", adapter="shop@v7"), "neither"),
        (lambda: rollback(ON_BASE, now=0, reason=""), "no previous"),
    ],
)
def test_transitions_that_make_no_sense_now_are_refused(make, message: str) -> None:
    with pytest.raises(RolloutConflict, match=message):
        make()


def test_a_second_canary_or_promoting_another_version_during_a_canary_is_refused() -> None:
    canary = start_canary(SERVING, "shop@v3", fraction=0.1, now=0, reason="").after
    with pytest.raises(RolloutConflict, match="in canary already"):
        start_canary(canary, "shop@v4", fraction=0.1, now=0, reason="")
    with pytest.raises(RolloutConflict, match="shop@v3 is in canary"):
        promote(canary, now=0, reason="", adapter="shop@v4")
    with pytest.raises(RolloutConflict, match="shop@v3 is in canary"):
        rollback(canary, now=0, reason="", adapter="shop@v2")


def test_a_failed_load_marks_the_version_failed_and_leaves_serving_alone() -> None:
    failed = fail_load(SERVING, "shop@v3", now=5, reason="rank 32 above 16")
    assert failed.after == SERVING
    assert (failed.kind, failed.changes, failed.unload) == (
        "load_failed",
        (StateChange("shop@v3", "failed"),),
        (),
    )
    canary = start_canary(SERVING, "shop@v3", fraction=0.1, now=0, reason="").after
    assert fail_load(canary, "shop@v3", now=5, reason="drift").after == SERVING


def test_make_room_evicts_stale_then_previous_champions_never_what_serves() -> None:
    shop = Rollout(project="shop", champion="shop@v3", previous="shop@v2", candidate="shop@v4", fraction=0.1)
    blog = Rollout(project="blog", champion="blog@v7", previous="blog@v6")
    loaded = ["shop@v3", "shop@v2", "shop@v4", "blog@v7", "blog@v6", "blog@v5", "shop@v1"]
    assert make_room([shop, blog], loaded, max_loras=8) == ()
    assert make_room([shop, blog], loaded, max_loras=7) == ("shop@v1",)
    assert make_room([shop, blog], loaded, incoming=2, max_loras=7) == ("shop@v1", "blog@v5")
    assert make_room([shop, blog], loaded, incoming=3, max_loras=7) == ("shop@v1", "blog@v5", "shop@v2")
    with pytest.raises(BudgetTooSmall, match="raise max_loras"):
        make_room([shop, blog], loaded, incoming=1, max_loras=3)


def test_keep_loaded_holds_what_serves_then_the_newest_previous_champions() -> None:
    shop = Rollout(project="shop", champion="shop@v3", previous="shop@v2", candidate="shop@v4", fraction=0.1)
    blog = Rollout(project="blog", champion="blog@v7", previous="blog@v6")
    base = Rollout(project="new", champion="tiny")  # the base model is never an adapter to load
    serving = ("blog@v7", "shop@v3", "shop@v4")
    assert keep_loaded([shop, blog, base], max_loras=5) == (*serving, "blog@v6", "shop@v2")
    assert keep_loaded([shop, blog, base], max_loras=4) == (*serving, "blog@v6")
    assert keep_loaded([shop, blog], max_loras=3) == ("blog@v7", "shop@v3", "shop@v4")
    with pytest.raises(BudgetTooSmall, match="3 champions and candidates"):
        keep_loaded([shop, blog], max_loras=2)
