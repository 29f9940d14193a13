"""Dreamer's training clocks (Ratio, Every) by hand and as invariants."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.dreamer.config import DreamerAgentConfig
from agents.dreamer.driver import Clocks, Every, Ratio


def test_ratio_carries_the_fraction_over() -> None:
    r = Ratio(0.25)
    assert [r(1) for _ in range(8)] == [0, 0, 0, 1, 0, 0, 0, 1]
    r = Ratio(2.5)
    assert [r(1), r(1), r(3)] == [2, 3, 7]
    assert r.owed == 0.5
    assert Ratio(0.0)(1000) == 0


@given(
    st.floats(0.0, 8.0, allow_nan=False),
    st.lists(st.integers(1, 4), min_size=1, max_size=200),
)
@settings(max_examples=100, deadline=None)
def test_ratio_pays_floor_of_ratio_times_steps(ratio: float, steps: list[int]) -> None:
    r = Ratio(ratio)
    paid = sum(r(k) for k in steps)
    # the running sum is float; it pays the whole part of ratio x steps up to rounding
    assert abs(paid - math.floor(ratio * sum(steps))) <= 1
    assert 0.0 <= r.owed < 1.0


def test_every_fires_at_or_past_due_and_skips_missed_periods() -> None:
    e = Every.start(4)
    assert [s for s in range(1, 14) if e(s)] == [4, 8, 12]
    e = Every.start(4)
    assert [e(3), e(9), e(11), e(12)] == [False, True, False, True]  # 9 skips the period at 8
    never = Every.start(0)
    assert not any(never(s) for s in range(100))


def test_clocks_round_trip_through_a_checkpoint() -> None:
    agent = DreamerAgentConfig(batch=4, seq_len=16, train_ratio=32.0, log_every=10)
    clocks = Clocks.of(agent, eval_freq=5, checkpoint_freq=0)
    assert clocks.train.ratio == 0.5 and clocks.eval.due == 5 and clocks.log.due == 10
    clocks.train(3)
    clocks.eval(7)
    again = Clocks.restore(clocks.state())
    assert again == clocks
    assert [again.train(1), again.eval(9), again.eval(10)] == [1, False, True]
