"""Canary routing: stable, sticky, fraction-accurate, and never to a name that isn't served."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.rollout import Rollout
from deploy.routing import NoServableAdapter, bucket, route

CANARY = Rollout(project="shop", champion="shop@v1", previous="shop@v0", candidate="shop@v2", fraction=0.2)


def everything(name: str) -> bool:
    return True


@given(user=st.text(min_size=1, max_size=40), key=st.text(max_size=20), fraction=st.floats(0.01, 0.99))
def test_an_end_user_always_gets_the_same_side_whatever_the_request(
    user: str, key: str, fraction: float
) -> None:
    rollout = Rollout(project="shop", champion="shop@v1", candidate="shop@v2", fraction=fraction)
    first = route(rollout, end_user=user, request_key="a", servable=everything)
    again = route(rollout, end_user=user, request_key=key, servable=everything)
    assert first == again
    assert first.canary == (bucket("shop", f"user:{user}") < fraction)


@given(user=st.text(min_size=1, max_size=40), low=st.floats(0.0, 1.0), high=st.floats(0.0, 1.0))
def test_raising_the_fraction_only_adds_users_to_the_canary(user: str, low: float, high: float) -> None:
    low, high = sorted((low, high))
    at = {f: route(Rollout(project="p", champion="p@v1", candidate="p@v2", fraction=f), end_user=user,
                   request_key="k", servable=everything).canary for f in (low, high)}  # fmt: skip
    assert not at[low] or at[high]


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(0.02, 0.98), salt=st.text(max_size=8))
def test_the_canary_share_matches_the_fraction(fraction: float, salt: str) -> None:
    rollout = Rollout(project="shop", champion="shop@v1", candidate="shop@v2", fraction=fraction)
    n = 4000
    share = (
        sum(
            route(rollout, end_user=f"{salt}-user-{i}", request_key="", servable=everything).canary
            for i in range(n)
        )
        / n
    )
    # Binomial standard deviation is at most 0.0079 for n=4000: 5 sigma.
    assert abs(share - fraction) < 0.04


def test_the_same_user_is_split_independently_in_each_project() -> None:
    users = [f"u{i}" for i in range(2000)]
    a = {u for u in users if bucket("alpha", u) < 0.5}
    b = {u for u in users if bucket("beta", u) < 0.5}
    assert 0.4 < len(a & b) / len(a) < 0.6


def test_requests_without_an_end_user_split_on_the_request_key() -> None:
    sides = {
        route(CANARY, end_user=None, request_key=f"log-{i}", servable=everything).canary for i in range(200)
    }
    assert sides == {True, False}
    assert route(CANARY, end_user="", request_key="x", servable=everything) == route(
        CANARY, end_user=None, request_key="x", servable=everything
    )


def test_no_canary_means_everyone_gets_the_champion() -> None:
    serving = Rollout(project="shop", champion="shop@v1", previous="shop@v0")
    routes = [route(serving, end_user=f"u{i}", request_key="", servable=everything) for i in range(100)]
    assert {(r.served_name, r.canary, r.fallback) for r in routes} == {("shop@v1", False, False)}


def test_a_name_that_is_not_servable_is_never_chosen() -> None:
    canary_users = [u for u in (f"u{i}" for i in range(200)) if bucket("shop", f"user:{u}") < 0.2]
    without_candidate = {"shop@v1", "shop@v0"}.__contains__
    for user in canary_users:
        chosen = route(CANARY, end_user=user, request_key="", servable=without_candidate)
        assert (chosen.served_name, chosen.canary, chosen.fallback) == ("shop@v1", False, True)
    only_previous = {"shop@v0"}.__contains__
    assert route(CANARY, end_user="x", request_key="", servable=only_previous).served_name == "shop@v0"
    with pytest.raises(NoServableAdapter, match="shop"):
        route(CANARY, end_user="x", request_key="", servable=lambda name: False)
