"""agents.parallel.parallel_map: item order, worker-count independence, errors."""

from __future__ import annotations

import functools
import math
import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.parallel import Backend, parallel_map, pool_map, ray_init_kwargs


@given(st.lists(st.integers(-1000, 1000), max_size=30))
@settings(max_examples=50, deadline=None)
def test_serial_equals_map(xs: list[int]) -> None:
    assert parallel_map(operator.neg, xs, workers=1) == [-x for x in xs]


def test_results_identical_for_any_worker_count() -> None:
    items = list(range(12))
    fn = functools.partial(operator.mul, 7)
    serial = parallel_map(fn, items, workers=1)
    assert serial == [7 * i for i in items]
    assert parallel_map(fn, items, workers=2) == serial
    assert parallel_map(fn, items, workers=5) == serial  # more workers than cores


def test_on_result_sees_every_index_once() -> None:
    seen: dict[int, int] = {}
    out = parallel_map(abs, [-3, 1, -2], workers=2, on_result=seen.__setitem__)
    assert out == [3, 1, 2]
    assert seen == {0: 3, 1: 1, 2: 2}
    serial_seen: list[tuple[int, int]] = []
    parallel_map(abs, [-3, 1], on_result=lambda i, r: serial_seen.append((i, r)))
    assert serial_seen == [(0, 3), (1, 1)]  # serial: item order


def test_first_failure_is_raised() -> None:
    with pytest.raises(ValueError, match="math domain error"):
        parallel_map(math.sqrt, [4.0, -1.0, 9.0], workers=2)
    with pytest.raises(ValueError, match="math domain error"):
        parallel_map(math.sqrt, [4.0, -1.0], workers=1)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="workers=0"):
        parallel_map(abs, [1], workers=0)
    with pytest.raises(ValueError, match="workers=True"):
        parallel_map(abs, [1], workers=True)
    with pytest.raises(ValueError, match=r"backend='dask'.*\['local', 'ray'\]"):
        parallel_map(abs, [1], backend="dask")
    with pytest.raises(TypeError, match="module-level function"):
        parallel_map(lambda x: x, [1, 2], workers=2)
    # a lambda is fine serially and for one item (no pool)
    assert parallel_map(lambda x: x + 1, [1], workers=4) == [2]
    assert parallel_map(lambda x: x + 1, [], workers=4) == []
    assert Backend("local") is Backend.local
    # workers=1 never starts Ray: serial in this process, a lambda included
    assert parallel_map(lambda x: x * 2, [1, 2, 3], workers=1, backend="ray") == [2, 4, 6]


def test_shared_object_reaches_every_task_of_the_local_pool() -> None:
    shared = ("a", "b", "c", "d")
    assert parallel_map(operator.getitem, [3, 0, 2], workers=2, shared=shared) == ["d", "a", "c"]
    assert parallel_map(operator.getitem, [3, 0, 2], workers=1, shared=shared) == ["d", "a", "c"]
    # one worker through the pool (what the scale benchmark measures) gives the same
    assert pool_map(operator.getitem, [1, 2], 1, shared=shared) == ["b", "c"]


def test_ray_init_arguments_local_and_cluster() -> None:
    local = ray_init_kwargs(3)
    assert local["num_cpus"] == 3 and local["include_dashboard"] is False
    assert local["_node_ip_address"] == "127.0.0.1"
    assert ray_init_kwargs(3, "auto") == {"address": "auto", "log_to_driver": False}


def test_episode_collection_is_identical_for_one_or_two_workers() -> None:
    """World-model collection through parallel_map: the worker count changes nothing."""
    import numpy as np

    from agents.world_model.data import collect
    from envs.scenarios.suites import load_suite

    entry = load_suite("train").on_topology("chain3").subset(first=1).entries[0]
    kw = {"behaviours": ("static", "hpa"), "replicates": (0,), "progress": False}
    one = collect([entry], workers=1, **kw)  # type: ignore[arg-type]
    two = collect([entry], workers=2, **kw)  # type: ignore[arg-type]
    assert [(m.entry, m.behaviour, m.seed) for m in one.meta] == [
        (m.entry, m.behaviour, m.seed) for m in two.meta
    ]
    for a, b in zip(one.episodes, two.episodes, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
