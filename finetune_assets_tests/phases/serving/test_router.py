"""The A/B router: its split matches the weights within a binomial interval, and users stick to a variant."""

import random

import pytest

from finetune_assets.phases.evaluation.stats import wilson_interval
from finetune_assets.phases.serving.router import Router, parse_weights


@pytest.mark.parametrize("challenger_share", [0.5, 0.1, 0.25])
def test_a_seeded_run_of_1000_users_splits_within_the_interval_of_the_weights(challenger_share):
    router = Router({"champion": 1 - challenger_share, "challenger": challenger_share})
    rng = random.Random(7)
    users = [f"user-{rng.getrandbits(64):016x}" for _ in range(1000)]
    picks = [router.pick(u) for u in users]
    share = wilson_interval(picks.count("challenger"), len(picks))
    assert share.low <= challenger_share <= share.high, share


def test_requests_without_a_user_are_split_by_the_seeded_draw():
    picks = [Router({"a": 0.7, "b": 0.3}, seed=3).pick() for _ in range(1)]
    router = Router({"a": 0.7, "b": 0.3}, seed=3)
    draws = [router.pick() for _ in range(1000)]
    share = wilson_interval(draws.count("b"), 1000)
    assert share.low <= 0.3 <= share.high
    assert draws[:1] == picks  # the same seed, the same draws
    assert draws != [Router({"a": 0.7, "b": 0.3}, seed=4).pick() for _ in range(1000)]


def test_a_user_sticks_to_one_variant_and_salts_split_independently():
    router = Router({"a": 0.5, "b": 0.5})
    users = [f"u{i}" for i in range(200)]
    first = {u: router.pick(u) for u in users}
    assert all(router.pick(u) == first[u] for u in users for _ in range(3))
    other = Router({"a": 0.5, "b": 0.5}, salt="another experiment")
    agree = sum(other.pick(u) == first[u] for u in users) / len(users)
    assert 0.35 < agree < 0.65  # an unrelated split, not the same one


def test_zero_weight_gets_nothing_and_bad_weights_are_refused():
    router = Router({"champion": 1.0, "challenger": 0.0})
    assert {router.pick(f"u{i}") for i in range(500)} == {"champion"}
    with pytest.raises(ValueError, match="sum to more than 0"):
        Router({"a": 0.0})
    with pytest.raises(ValueError, match=">= 0"):
        Router({"a": 1.0, "b": -0.5})
    with pytest.raises(ValueError, match="at least one"):
        Router({})
    assert parse_weights("0.9,0.1", ["m", "c"]) == {"m": 0.9, "c": 0.1}
    with pytest.raises(ValueError, match="2 values for 3 variants"):
        parse_weights("0.9,0.1", ["m", "c", "d"])
    with pytest.raises(ValueError, match="comma-separated numbers"):
        parse_weights("0.9;0.1", ["m", "c"])
