"""The request-level engine's counters (``envs/sim/request.py``) by exact values.

Tiny scenarios with deterministic service times (``cv = 0``) and client requests started by
hand at chosen instants (the traffic source is switched off with ``base_rps = 0``), so every
attempt's fate and time is known on paper: which one is served, queued, dropped at a full
queue, timed out, retried after which backoff, failed by an application error, a lost pod or a
lossy network path. The counters (arrived, completed, failed, dropped), the attempts in flight
at chosen instants, the busy time, the queue lengths and the latency records (quantiles, mean,
histogram) are compared with those hand timelines. Times are multiples of 1/16 s, exact in
binary, so most comparisons are exact. The traffic source and the duration samplers are checked
against the random stream they draw from (exact) or by their moments (a few standard errors).

Each test runs a few simulated seconds (well under a second of CPU); the mutation runner
(``tests/mutation/run_mutation.py``, module ``request``) uses this file as its test subset.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any, Literal

import numpy as np
import pytest
import simpy

from envs.core.telemetry import LATENCY_BUCKETS_S
from envs.scenarios.schema import Distribution, Scenario
from envs.sim.request import _BLOCK, RequestEngine, SlotPool, _duration_sampler, _Sampler

FRONT, BACK = 0, 1
B = len(LATENCY_BUCKETS_S)


def _pod(mean: float, **kw: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "concurrency": 1,
        "service_time": {"mean": mean, "cv": 0.0},
        "queue_per_pod": 1,
        "startup": {"mean": 0.25, "cv": 0.0},
    }
    pod.update(kw)
    return pod


def _scenario(
    front: dict[str, Any] | None = None,
    back: dict[str, Any] | None = None,
    *,
    edge: dict[str, Any] | None = None,
    replicas: tuple[int, int] = (1, 1),
    base_rps: float = 0.0,
    horizon_s: float = 4.0,
    seed: int = 0,
) -> Scenario:
    """front -> back; front's own work 1/8 s, back's 1/4 s, one slot and one queue place each."""
    services = [
        {
            "name": "front",
            "pod": _pod(0.125, **(front or {})),
            "replicas": {"initial": replicas[0], "min": 0, "max": 4},
        },
        {
            "name": "back",
            "pod": _pod(0.25, **(back or {})),
            "replicas": {"initial": replicas[1], "min": 0, "max": 4},
        },
    ]
    return Scenario.model_validate(
        {
            "name": "tiny",
            "topology": {
                "name": "two",
                "entry": "front",
                "services": services,
                "edges": [{"src": "front", "dst": "back", **(edge or {})}],
            },
            "traffic": {"base_rps": base_rps},
            "horizon_s": horizon_s,
            "scrape_interval_s": 1.0,
            "decision_interval_s": 1.0,
            "actuation_delay_s": 0.0,
            "seed": seed,
        }
    )


def _engine(*args: Any, **kw: Any) -> RequestEngine:
    eng = RequestEngine(_scenario(*args, **kw))
    eng.start()
    return eng


def _clients(eng: RequestEngine, times: list[float], s: int = FRONT) -> None:
    """Start one client request at service ``s`` at each of ``times`` (sorted)."""

    def script() -> Generator[simpy.Event, Any, None]:
        for t in times:
            if t > eng.env.now:
                yield eng.env.timeout(t - eng.env.now)
            eng.env.process(eng._client(s))

    eng.env.process(script())


def _counters(eng: RequestEngine) -> list[list[int]]:
    """Per service ``[arrived, completed, failed, dropped]``."""
    return [
        [eng._arrived[s], eng._completed[s], eng._failed[s], eng._dropped[s]] for s in range(eng.n)
    ]


def _in_flight_at(eng: RequestEngine, times: list[float]) -> list[list[float]]:
    """Run to each of ``times``; the attempts in flight per service there."""
    out = []
    for t in times:
        eng.env.run(until=t)
        out.append(eng.live_in_flight().tolist())
    return out


def _hist(latencies: list[float]) -> list[float]:
    """Per-bucket counts, by the ``le`` rule: a latency goes to the first bound >= it."""
    out = [0.0] * B
    for x in latencies:
        out[next(i for i, b in enumerate(LATENCY_BUCKETS_S) if x <= b)] += 1
    return out


# ---------------------------------------------------------------- a hand timeline
def test_served_queued_and_dropped_attempts_by_a_hand_timeline() -> None:
    """Three clients at t = 0 on front (1 slot, 1 queue place): one served, one queued, one
    dropped; each served one calls back (1 slot, 1 place) once.

    #1: front 0 - 1/8, back 1/8 - 3/8, done 3/8.  #2: front 1/8 - 1/4, back queued behind #1,
    served 3/8 - 5/8, done 5/8.  #3: dropped at front at once.
    """
    eng = _engine()
    _clients(eng, [0.0, 0.0, 0.0])
    flights = _in_flight_at(eng, [0.0625, 0.1875, 0.3, 0.5, 0.7])
    assert flights == [[2, 0], [2, 1], [2, 2], [1, 1], [0, 0]]
    assert _counters(eng) == [[3, 2, 0, 1], [2, 2, 0, 0]]
    assert eng._lat == [[0.375, 0.625], [0.25, 0.375]]
    r = eng._read_data_plane()
    np.testing.assert_array_equal(r.counters, [[3, 2, 0, 1], [2, 2, 0, 0]])
    np.testing.assert_array_equal(r.in_flight, [0, 0])
    np.testing.assert_array_equal(r.backlog, [0, 0])
    np.testing.assert_array_equal(r.own_busy_s, [0.25, 0.5])  # each served attempt's own work
    # linear-interpolation quantiles of two values a < b: a + q (b - a)
    np.testing.assert_allclose(r.p50, [0.5, 0.3125], rtol=1e-12)
    np.testing.assert_allclose(r.p95, [0.375 + 0.95 * 0.25, 0.25 + 0.95 * 0.125], rtol=1e-12)
    np.testing.assert_allclose(r.p99, [0.375 + 0.99 * 0.25, 0.25 + 0.99 * 0.125], rtol=1e-12)
    np.testing.assert_array_equal(r.mean_latency, [0.5, 0.3125])
    # 0.25 and 0.5 are bucket bounds: a latency at a bound is counted in that bucket (le)
    np.testing.assert_array_equal(r.hist_delta, [_hist([0.375, 0.625]), _hist([0.25, 0.375])])
    assert r.hist_delta[BACK, LATENCY_BUCKETS_S.index(0.25)] == 1


def test_queue_lengths_and_a_second_read_of_an_idle_interval() -> None:
    """Backlog is the queue at the read; the next read has no latencies and no busy time."""
    eng = _engine()
    _clients(eng, [0.0, 0.0, 0.0])
    eng.env.run(until=0.0625)
    r = eng._read_data_plane()
    np.testing.assert_array_equal(r.backlog, [1, 0])
    np.testing.assert_array_equal(r.counters, [[3, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(r.in_flight, [2, 0])
    assert np.isnan(r.p50).all() and np.isnan(r.p99).all() and np.isnan(r.mean_latency).all()
    np.testing.assert_array_equal(r.hist_delta, np.zeros((2, B)))
    np.testing.assert_array_equal(r.own_busy_s, [0, 0])  # busy is booked when work ends
    eng.env.run(until=0.3)
    r = eng._read_data_plane()
    np.testing.assert_array_equal(r.backlog, [0, 1])
    np.testing.assert_array_equal(r.own_busy_s, [0.25, 0.0])
    np.testing.assert_array_equal(r.p50, [np.nan, np.nan])
    eng.env.run(until=1.0)
    r = eng._read_data_plane()
    np.testing.assert_array_equal(r.counters, [[3, 2, 0, 1], [2, 2, 0, 0]])
    np.testing.assert_array_equal(r.own_busy_s, [0.0, 0.5])
    np.testing.assert_array_equal(r.p50, [0.5, 0.3125])  # all four latencies came after 0.3
    r = eng._read_data_plane()  # nothing happened since
    np.testing.assert_array_equal(r.counters, [[3, 2, 0, 1], [2, 2, 0, 0]])
    assert np.isnan(r.p50).all() and np.isnan(r.p95).all() and np.isnan(r.mean_latency).all()
    np.testing.assert_array_equal(r.own_busy_s, [0, 0])
    np.testing.assert_array_equal(r.hist_delta, np.zeros((2, B)))
    _clients(eng, [1.5])  # a lone client: 1/4 + 3/8 at front, 1/4 at back
    eng.env.run(until=2.0)
    r = eng._read_data_plane()
    np.testing.assert_array_equal(r.counters, [[4, 3, 0, 1], [3, 3, 0, 0]])
    np.testing.assert_array_equal(r.p50, [0.375, 0.25])
    np.testing.assert_array_equal(r.p99, [0.375, 0.25])
    np.testing.assert_array_equal(r.hist_delta, [_hist([0.375]), _hist([0.25])])


def test_the_frames_hold_float_counters_and_in_flight() -> None:
    """As every engine's frames (the fluid level's counters are fractional): float64."""
    eng = _engine(edge={"probability": 0.0})
    _clients(eng, [0.0, 0.0, 0.0])
    frames = eng.advance([])
    assert frames[-1].counters.dtype == np.float64 and frames[-1].in_flight.dtype == np.float64
    np.testing.assert_array_equal(frames[-1].counters, [[3, 2, 0, 1], [0, 0, 0, 0]])
    r = eng._read_data_plane()
    assert r.counters.dtype == np.float64 and r.in_flight.dtype == np.float64


def test_a_full_queue_of_two_pods_drops_the_fifth_client() -> None:
    """Two pods of one slot and one queue place: 2 slots, 2 places; five at once, one drop."""
    eng = _engine(replicas=(2, 1), edge={"probability": 0.0})
    assert eng.pools[FRONT].capacity == 2 and eng._qcap == [2, 1]
    _clients(eng, [0.0] * 5)
    assert _in_flight_at(eng, [0.0625, 0.1875, 0.3]) == [[4, 0], [2, 0], [0, 0]]
    assert _counters(eng) == [[5, 4, 0, 1], [0, 0, 0, 0]]
    assert eng._lat[FRONT] == [0.125, 0.125, 0.25, 0.25]


def test_no_ready_pod_drops_at_once_and_the_caller_fails() -> None:
    eng = _engine(replicas=(1, 0))
    _clients(eng, [0.0, 0.5])
    assert _in_flight_at(eng, [0.0625, 0.15, 0.5625, 1.0]) == [[1, 0], [0, 0], [1, 0], [0, 0]]
    assert _counters(eng) == [[2, 0, 2, 0], [2, 0, 0, 2]]
    assert eng._lat == [[0.125, 0.125], []]  # a drop has no latency
    assert eng._alive == [0, 0]


# ---------------------------------------------------------------- timeouts and retries
def test_each_timeout_and_each_retry_is_counted_once() -> None:
    """back's callers give up after 3/16 s and retry once after 1/8 s; back needs 1/4 s.

    Attempt 1 at back: 1/8 - 3/8 in service, timed out at 5/16 (runs on, abandoned).
    Attempt 2: 7/16 - 11/16, timed out at 5/8. front's attempt fails at 5/8.
    """
    eng = _engine(back={"timeout_s": 0.1875, "retries": 1, "retry_backoff_s": 0.125})
    _clients(eng, [0.0])
    flights = _in_flight_at(eng, [0.25, 0.34375, 0.40625, 0.5, 0.65625, 0.75])
    assert flights == [[1, 1], [1, 0], [1, 0], [1, 1], [0, 0], [0, 0]]
    assert _counters(eng) == [[1, 0, 1, 0], [2, 0, 2, 0]]
    assert eng._lat == [[0.625], [0.1875, 0.1875]]
    assert eng._alive == [0, 0] and eng._abandoned == [0, 0] and not eng._expired
    # abandoned work still occupied the worker: both attempts' own time is busy time
    assert eng._own_busy == [0.125, 0.5]


def test_abandoned_attempts_are_alive_but_not_in_flight() -> None:
    eng = _engine(back={"timeout_s": 0.1875, "retries": 1, "retry_backoff_s": 0.125})
    _clients(eng, [0.0])
    eng.env.run(until=0.34375)  # attempt 1 timed out at 5/16, still in service
    assert eng._alive == [1, 1] and eng._abandoned == [0, 1]
    eng.env.run(until=0.40625)  # it ended at 3/8; the retry waits for its backoff
    assert eng._alive == [1, 0] and eng._abandoned == [0, 0]
    eng.env.run(until=0.65625)  # attempt 2 timed out at 5/8 and runs on to 11/16
    assert eng._alive == [0, 1] and eng._abandoned == [0, 1]
    assert eng.live_in_flight().tolist() == [0, 0]


def test_retries_after_drops_back_off_exponentially_and_then_succeed() -> None:
    """back has no queue place; two clients reach it at 1/8 (front has 2 slots).

    The second is dropped at 1/8, retried at 1/8 + 1/8 = 1/4 (still busy: dropped), then at
    1/4 + 2/8 = 1/2 (free): served 1/2 - 3/4.
    """
    eng = _engine(
        front={"concurrency": 2},
        back={"queue_per_pod": 0, "retries": 2, "retry_backoff_s": 0.125},
    )
    _clients(eng, [0.0, 0.0])
    eng.env.run(until=2.0)
    assert _counters(eng) == [[2, 2, 0, 0], [4, 2, 0, 2]]
    assert eng._lat == [[0.375, 0.75], [0.25, 0.25]]


def test_retries_run_out_after_the_last_drop() -> None:
    """As above with one retry: dropped at 1/8 and at 1/4, then the call fails."""
    eng = _engine(
        front={"concurrency": 2},
        back={"queue_per_pod": 0, "retries": 1, "retry_backoff_s": 0.125},
    )
    _clients(eng, [0.0, 0.0])
    eng.env.run(until=2.0)
    assert _counters(eng) == [[2, 1, 1, 0], [3, 1, 0, 2]]
    assert eng._lat == [[0.25, 0.375], [0.25]]


def test_a_zero_backoff_retries_at_once() -> None:
    eng = _engine(
        front={"concurrency": 2},
        back={"queue_per_pod": 0, "retries": 3, "retry_backoff_s": 0.0},
    )
    _clients(eng, [0.0, 0.0])
    eng.env.run(until=2.0)
    assert _counters(eng) == [[2, 1, 1, 0], [5, 1, 0, 4]]
    assert eng._lat == [[0.125, 0.375], [0.25]]


def test_set_call_policy_gives_callers_a_timeout_and_retries() -> None:
    """From no timeout to 1/8 s with two retries (backoff 1/16): three attempts time out.

    #1 1/8 (served 1/8 - 3/8), out at 1/4; #2 at 5/16 queued, out at 7/16 (served 3/8 - 5/8);
    #3 at 7/16 + 1/8 = 9/16 queued, out at 11/16 (served 5/8 - 7/8).
    """
    eng = _engine(back={"retry_backoff_s": 0.0625})
    eng.set_call_policy(BACK, 0.125, 2)
    _clients(eng, [0.0])
    # at 1/2 only #2 is alive at back, abandoned; at 19/32 #3 waits in the queue
    assert _in_flight_at(eng, [0.5, 0.59375, 0.75]) == [[1, 0], [1, 1], [0, 0]]
    assert eng._alive == [0, 1] and eng._abandoned == [0, 1]
    eng.env.run(until=1.0)
    assert _counters(eng) == [[1, 0, 1, 0], [3, 0, 3, 0]]
    assert eng._lat == [[0.6875], [0.125, 0.125, 0.125]]
    assert eng._own_busy == [0.125, 0.75]
    assert eng._alive == [0, 0] and eng._abandoned == [0, 0] and not eng._expired


def test_a_timeout_that_does_not_fire_changes_nothing() -> None:
    eng = _engine(back={"timeout_s": 0.5, "retries": 3})
    _clients(eng, [0.0])
    eng.env.run(until=1.0)
    assert _counters(eng) == [[1, 1, 0, 0], [1, 1, 0, 0]]
    assert eng._lat == [[0.375], [0.25]]
    assert eng._alive == [0, 0] and eng._abandoned == [0, 0] and not eng._expired


# ---------------------------------------------------------------- failures
def test_an_application_error_answers_at_once_and_calls_nothing() -> None:
    eng = _engine(front={"error_rate": 1.0})
    _clients(eng, [0.0, 0.0])
    eng.env.run(until=1.0)
    assert _counters(eng) == [[2, 0, 2, 0], [0, 0, 0, 0]]
    assert eng._lat == [[0.125, 0.25], []]
    assert eng._own_busy == [0.25, 0.0]


def test_a_failed_downstream_call_fails_the_caller_after_its_other_calls() -> None:
    """Two calls per front attempt; back always errs: both are made, front fails at 5/8."""
    eng = _engine(back={"error_rate": 1.0}, edge={"calls": 2.0})
    _clients(eng, [0.0])
    eng.env.run(until=1.0)
    assert _counters(eng) == [[1, 0, 1, 0], [2, 0, 2, 0]]
    assert eng._lat == [[0.625], [0.25, 0.25]]


def test_a_crashed_pod_fails_its_attempt_and_flushes_the_queue() -> None:
    """front: one pod, one slot, two queue places, 1/4 s of work; three clients at 0.

    The pod crashes at 1/16: the attempt in service ends at 1/4 as failed (its pod died
    under it), the two queued fail at once; a client at 1/8 finds no ready pod.
    """
    eng = _engine(front={"service_time": {"mean": 0.25, "cv": 0.0}, "queue_per_pod": 2})
    _clients(eng, [0.0, 0.0, 0.0, 0.125])

    def crash() -> Generator[simpy.Event, Any, None]:
        yield eng.env.timeout(0.0625)
        eng.cp.crash(eng.cp.ready_pods(FRONT)[0])

    eng.env.process(crash())
    assert _in_flight_at(eng, [0.03125, 0.09375, 0.1875, 0.3]) == [
        [3, 0],
        [1, 0],
        [1, 0],
        [0, 0],
    ]
    assert _counters(eng) == [[4, 0, 3, 1], [0, 0, 0, 0]]
    assert eng._lat == [[0.0625, 0.0625, 0.25], []]
    assert not eng._doomed


def test_pods_lost_dooms_that_share_of_the_attempts_in_service() -> None:
    """Two attempts in service on one pod of two slots; half of them lost: exactly one."""
    eng = _engine(front={"concurrency": 2}, edge={"probability": 0.0})
    _clients(eng, [0.0, 0.0])
    eng.env.run(until=0.0625)
    eng.pods_lost(FRONT, 0.5)
    assert len(eng._doomed) == 1
    eng.pods_lost(BACK, 1.0)  # nobody in service there: nothing to doom
    assert len(eng._doomed) == 1
    eng.env.run(until=1.0)
    assert _counters(eng) == [[2, 1, 1, 0], [0, 0, 0, 0]]
    assert eng._lat == [[0.125, 0.125], []]
    assert not eng._doomed


def test_pods_lost_rounds_a_fractional_share_at_random() -> None:
    """Three in service, a third lost each time: exactly one; 1/2 of three: one or two."""
    doomed = []
    for seed in range(40):
        eng = _engine(front={"concurrency": 3}, edge={"probability": 0.0}, seed=seed)
        _clients(eng, [0.0, 0.0, 0.0])
        eng.env.run(until=0.0625)
        eng.pods_lost(FRONT, 1 / 3)
        assert len(eng._doomed) == 1
        eng._doomed.clear()
        eng.pods_lost(FRONT, 1.0)  # all three, each once (drawn without replacement)
        assert len(eng._doomed) == 3
        eng._doomed.clear()
        eng.pods_lost(FRONT, 0.5)
        doomed.append(len(eng._doomed))
        eng.env.run(until=1.0)
        assert _counters(eng)[FRONT] == [3, 3 - doomed[-1], doomed[-1], 0]
    assert set(doomed) == {1, 2}
    assert 8 <= doomed.count(2) <= 32  # 1/2 each: 20 expected, sd 3.2


def test_new_ready_pods_admit_queued_attempts_at_once() -> None:
    """front: 1/4 s of work, one pod, 4 queue places, three clients at 0; a second pod is
    ready at 1/16: the first queued starts there (done 5/16), the next at 1/4 (done 1/2)."""
    eng = _engine(
        front={"service_time": {"mean": 0.25, "cv": 0.0}, "queue_per_pod": 4},
        edge={"probability": 0.0},
    )
    _clients(eng, [0.0, 0.0, 0.0])
    eng.env.run(until=0.0625)
    eng.cp.ready[FRONT] = 2
    eng.capacity_changed()
    assert eng.pools[FRONT].capacity == 2 and eng._qcap[FRONT] == 8
    eng.env.run(until=1.0)
    assert eng._lat[FRONT] == [0.25, 0.3125, 0.5]
    assert _counters(eng)[FRONT] == [3, 3, 0, 0]


def test_fewer_slots_keep_their_users_and_admit_no_more() -> None:
    """Two pods -> one at 1/16 (2 slots -> 1, 2 queue places -> 1): both in service finish at
    1/8, the two queued then start one after the other; a client at 3/32 finds it full."""
    eng = _engine(replicas=(2, 1), edge={"probability": 0.0})
    _clients(eng, [0.0] * 4 + [0.09375])
    eng.env.run(until=0.0625)
    eng.cp.ready[FRONT] = 1
    eng.capacity_changed()
    assert eng.pools[FRONT].capacity == 1 and eng._qcap[FRONT] == 1
    eng.env.run(until=1.0)
    assert eng._lat[FRONT] == [0.125, 0.125, 0.25, 0.375]
    assert _counters(eng)[FRONT] == [5, 4, 0, 1]


def test_slow_versions_stretch_the_work() -> None:
    eng = _engine()
    eng.cp.latency_factor[FRONT] = 2.0
    eng.capacity_changed()
    _clients(eng, [0.0])
    eng.env.run(until=1.0)
    assert eng._lat == [[0.5], [0.25]]
    assert eng._own_busy == [0.25, 0.25]


# ---------------------------------------------------------------- calls and network faults
def test_whole_and_fractional_calls_per_edge() -> None:
    """calls = 2: two sequential calls; calls = 1.5 with probability 1: 1 + Bernoulli(1/2);
    probability 1/2 with calls 1: Bernoulli(1/2). 400 clients each, 2 s apart (no overlap)."""
    eng = _engine(edge={"calls": 2.0})
    _clients(eng, [0.0])
    eng.env.run(until=1.0)
    assert _counters(eng) == [[1, 1, 0, 0], [2, 2, 0, 0]]
    assert eng._lat == [[0.625], [0.25, 0.25]]
    n = 400
    for edge, mean, sd in (
        ({"calls": 1.5}, 1.5, 0.5),
        ({"probability": 0.5}, 0.5, 0.5),
        ({"calls": 1.5, "probability": 0.5}, 0.75, math.sqrt(0.6875)),
    ):
        eng = _engine(edge=edge, horizon_s=1000.0)
        _clients(eng, [2.0 * i for i in range(n)])
        eng.env.run(until=2.0 * n)
        arrived = eng._arrived[BACK]
        assert abs(arrived - n * mean) <= 4 * sd * math.sqrt(n), (edge, arrived)
        assert _counters(eng) == [[n, n, 0, 0], [arrived, arrived, 0, 0]]
        whole = eng._lat[FRONT].count(0.125 + 0.25) + 2 * eng._lat[FRONT].count(0.625)
        assert whole == arrived  # each front latency tells how many calls it made


def _network_fault(eng: RequestEngine, share: float, loss: float, delay: float) -> None:
    eng.edge_faults[(FRONT, BACK)] = (loss, delay)
    eng.cp.bad_path_fraction[FRONT] = share
    eng.capacity_changed()


def test_a_lost_call_fails_at_the_callee_after_the_delay() -> None:
    eng = _engine()
    _network_fault(eng, share=1.0, loss=1.0, delay=0.0625)
    assert eng._edge_fault == [{BACK: (1.0, 1.0, 0.0625)}, {}]
    _clients(eng, [0.0])
    assert _in_flight_at(eng, [0.15, 1.0]) == [[1, 0], [0, 0]]
    assert _counters(eng) == [[1, 0, 1, 0], [1, 0, 1, 0]]
    assert eng._lat == [[0.1875], [0.0625]]


def test_a_delayed_call_is_served_after_the_delay() -> None:
    eng = _engine()
    _network_fault(eng, share=1.0, loss=0.0, delay=0.0625)
    _clients(eng, [0.0])
    assert _in_flight_at(eng, [0.15, 0.25, 1.0]) == [[1, 0], [1, 1], [0, 0]]
    assert _counters(eng) == [[1, 1, 0, 0], [1, 1, 0, 0]]
    assert eng._lat == [[0.4375], [0.25]]


def test_a_lost_call_without_delay_is_retried() -> None:
    eng = _engine(back={"retries": 2, "retry_backoff_s": 0.0625})
    _network_fault(eng, share=1.0, loss=1.0, delay=0.0)
    _clients(eng, [0.0])
    eng.env.run(until=1.0)
    assert _counters(eng) == [[1, 0, 1, 0], [3, 0, 3, 0]]
    assert eng._lat == [[0.125 + 0.0625 + 0.125], [0.0, 0.0, 0.0]]


def test_a_network_fault_on_no_share_of_the_paths_does_nothing() -> None:
    eng = _engine()
    _network_fault(eng, share=0.0, loss=1.0, delay=0.0625)
    assert eng._edge_fault == [{}, {}]
    _clients(eng, [0.0])
    eng.env.run(until=1.0)
    assert _counters(eng) == [[1, 1, 0, 0], [1, 1, 0, 0]]
    assert eng._lat == [[0.375], [0.25]]


def test_half_the_paths_lose_about_half_the_calls() -> None:
    eng = _engine(horizon_s=1000.0)
    _network_fault(eng, share=0.5, loss=1.0, delay=0.0)
    n = 400
    _clients(eng, [2.0 * i for i in range(n)])
    eng.env.run(until=2.0 * n)
    lost = eng._failed[BACK]
    assert abs(lost - n / 2) <= 4 * 0.5 * math.sqrt(n)
    assert _counters(eng) == [[n, n - lost, lost, 0], [n, n - lost, lost, 0]]


def test_a_drop_at_a_callee_with_a_timeout_fails_the_call_at_once() -> None:
    """back has no queue place and a timeout: the second call at 1/8 is dropped and its
    caller learns it at once (not at the timeout)."""
    eng = _engine(front={"concurrency": 2}, back={"queue_per_pod": 0, "timeout_s": 1.0})
    _clients(eng, [0.0, 0.0])
    assert _in_flight_at(eng, [0.1875, 2.0]) == [[1, 1], [0, 0]]
    assert _counters(eng) == [[2, 1, 1, 0], [2, 1, 0, 1]]
    assert eng._lat == [[0.125, 0.375], [0.25]]
    assert eng._alive == [0, 0] and eng._abandoned == [0, 0] and not eng._expired


@pytest.mark.parametrize("timeout", [None, 1.0])
def test_a_crash_at_the_callee_fails_the_waiting_callers(timeout: float | None) -> None:
    """Three front attempts call back (one slot, two queue places) at 1/8; back's pod
    crashes at 3/16: the two queued fail then (after 1/16 there), the one in service at 3/8;
    each caller learns it then, with or without a timeout of its own."""
    eng = _engine(front={"concurrency": 3}, back={"queue_per_pod": 2, "timeout_s": timeout})
    _clients(eng, [0.0, 0.0, 0.0])

    def crash() -> Generator[simpy.Event, Any, None]:
        yield eng.env.timeout(0.1875)
        eng.cp.crash(eng.cp.ready_pods(BACK)[0])

    eng.env.process(crash())
    assert _in_flight_at(eng, [0.15625, 0.25, 0.5]) == [[3, 3], [1, 1], [0, 0]]
    assert _counters(eng) == [[3, 0, 3, 0], [3, 0, 3, 0]]
    assert eng._lat == [[0.1875, 0.1875, 0.375], [0.0625, 0.0625, 0.25]]
    eng.env.run(until=2.0)
    assert _counters(eng) == [[3, 0, 3, 0], [3, 0, 3, 0]]
    assert eng._alive == [0, 0] and eng._abandoned == [0, 0] and not eng._expired


def _uniforms(seed: int) -> _Sampler:
    """The engine's uniform stream: its first draws when nothing else draws (no source
    traffic, deterministic work)."""
    data = np.random.default_rng(np.random.SeedSequence(seed).spawn(4)[2])
    return _Sampler(data, lambda r, n: r.random(n))


@pytest.mark.parametrize(
    "edge", [{"calls": 1.5, "probability": 0.75}, {"calls": 2.0}, {"probability": 1.0}]
)
def test_calls_and_errors_follow_the_uniform_stream_draw_by_draw(edge: dict[str, Any]) -> None:
    """A draw for the edge's probability (only below 1), one for a fractional extra call
    (only with a fraction), one per back attempt for its application error (only with an
    error rate): the counters follow the stream exactly. A failed call fails front after
    its other calls."""
    n = 60
    eng = _engine(back={"error_rate": 0.5}, edge=edge, horizon_s=1000.0, seed=11)
    _clients(eng, [2.0 * i for i in range(n)])
    eng.env.run(until=2.0 * n)
    u = _uniforms(11)
    prob, calls = edge.get("probability", 1.0), edge.get("calls", 1.0)
    front, back, lat = [n, 0, 0, 0], [0, 0, 0, 0], []
    for _ in range(n):
        k = 0
        if prob == 1.0 or u() < prob:
            k = int(calls) + (1 if calls % 1 and u() < calls % 1 else 0)
        errs = sum(u() < 0.5 for _ in range(k))
        back = [back[0] + k, back[1] + k - errs, back[2] + errs, 0]
        front[2 if errs else 1] += 1
        lat.append(0.125 + 0.25 * k)
    assert _counters(eng) == [front, back]
    assert eng._lat[FRONT] == lat
    assert 0 < back[2] < back[0]


def test_a_skipped_call_does_not_skip_the_next_edge() -> None:
    """front calls back with probability 1/2, then third always: third sees every client."""
    raw = _scenario(edge={"probability": 0.5}, horizon_s=1000.0).model_dump()
    raw["topology"]["services"].append({**raw["topology"]["services"][1], "name": "third"})
    raw["topology"]["edges"].append({"src": "front", "dst": "third"})
    eng = RequestEngine(Scenario.model_validate(raw))
    eng.start()
    n = 40
    _clients(eng, [2.0 * i for i in range(n)])
    eng.env.run(until=2.0 * n)
    assert _counters(eng)[2] == [n, n, 0, 0]
    assert 0 < eng._arrived[BACK] < n


def _call_at(eng: RequestEngine, t: float, s: int, path: tuple[float, float, float]) -> None:
    """At ``t``, call ``s`` as a caller would, through ``path`` (share, loss, delay)."""

    def script() -> Generator[simpy.Event, Any, None]:
        yield eng.env.timeout(t)
        eng.env.process(eng._call(s, path))

    eng.env.process(script())


def test_a_zero_backoff_retry_sees_the_instant_its_attempt_saw() -> None:
    """An attempt dropped at back at 3/8, the instant back's slot is freed but before the
    release is processed (a caller started at 3/8 runs first): its retry with no backoff is
    made in that same step and dropped too (a backoff of 0 is no wait, not a yield)."""
    eng = _engine(back={"queue_per_pod": 0, "retries": 1, "retry_backoff_s": 0.0})
    _clients(eng, [0.375], s=BACK)  # scheduled at 0: due before the slot's release at 3/8
    _clients(eng, [0.0])  # reaches back at 1/8, served 1/8 - 3/8
    eng.env.run(until=1.0)
    assert _counters(eng) == [[1, 1, 0, 0], [3, 1, 0, 2]]


def test_a_zero_delay_path_calls_in_the_same_step() -> None:
    """As above through a degraded path with no delay: the call is made in the same step."""
    eng = _engine(back={"queue_per_pod": 0})
    _call_at(eng, 0.375, BACK, (1.0, 0.0, 0.0))
    _clients(eng, [0.0])
    eng.env.run(until=1.0)
    assert _counters(eng) == [[1, 1, 0, 0], [2, 1, 0, 1]]


# ---------------------------------------------------------------- the traffic source
def _recorded_source(eng: RequestEngine) -> list[float]:
    """Replace the client process by one that records its start time and does nothing."""
    times: list[float] = []

    def client(s: int) -> Generator[simpy.Event, Any, None]:
        assert s == eng.entry
        times.append(eng.env.now)
        yield eng.env.timeout(0)

    eng._client = client  # type: ignore[method-assign]
    return times


def test_the_source_follows_the_rate_of_each_tick_and_stops_at_the_horizon() -> None:
    eng = RequestEngine(_scenario(horizon_s=3.0))
    eng.traffic.rates = np.array([400.0, 0.0, 800.0, 5000.0])
    times = _recorded_source(eng)
    eng.start()
    eng.env.run(until=5.0)
    per_tick = np.histogram(times, bins=[0, 1, 2, 3, 5])[0]
    assert abs(per_tick[0] - 400) <= 80 and per_tick[1] == 0 and abs(per_tick[2] - 800) <= 113
    assert per_tick[3] == 0
    assert eng.spawned == len(times) == sum(per_tick)
    assert times == sorted(times) and times[0] > 0


def test_the_source_draws_exponential_gaps_that_restart_at_each_tick() -> None:
    """The arrival times are rebuilt from the engine's own stream: gaps expo()/rate, a gap
    that crosses the tick's end discarded and the clock restarted there; ticks of 1/2 s, one
    of them at 1 request/s (a draw like any other), zero-rate ticks draw nothing."""
    eng = RequestEngine(_scenario(horizon_s=3.0))
    rates = [50.0, 0.0, 1.0, 40.0, 0.0, 20.0, 0.0]
    eng.traffic.rates = np.array(rates)
    eng.traffic.resolution_s = 0.5
    # the engine's data stream (the third child of the seed); the source's exponentials are
    # its first draws here (no shedding, deterministic work: nothing else draws)
    data = np.random.default_rng(np.random.SeedSequence(0).spawn(4)[2])
    ref = _Sampler(data, lambda r, n: r.standard_exponential(n))
    times = _recorded_source(eng)
    eng.start()
    eng.env.run(until=5.0)
    expected = []
    for tick, rate in enumerate(rates):
        t = tick * 0.5
        while rate > 0:
            nxt = t + ref() / rate
            if nxt >= (tick + 1) * 0.5:
                break
            t = nxt
            expected.append(t)
    # (the clock reaches t by timeouts of t - now: equal to the last bit or two)
    assert len(times) == len(expected)
    np.testing.assert_allclose(times, expected, rtol=1e-14)
    assert len(times) > 20 and max(times) > 2.5


def test_shed_requests_are_arrived_and_dropped_at_the_entry() -> None:
    eng = _engine(base_rps=400.0, horizon_s=2.0)
    eng.cp.serving.shed_fraction = 1.0
    eng.capacity_changed()
    eng.env.run(until=3.0)
    assert eng.spawned > 600
    assert _counters(eng) == [[eng.spawned, 0, 0, eng.spawned], [0, 0, 0, 0]]


def test_half_shed_drops_about_half_and_conserves_every_request() -> None:
    eng = _engine(
        base_rps=400.0,
        horizon_s=2.0,
        front={"service_time": {"mean": 0.001, "cv": 0.0}, "concurrency": 8},
        back={"service_time": {"mean": 0.001, "cv": 0.0}, "concurrency": 8},
    )
    eng.cp.serving.shed_fraction = 0.5
    eng.capacity_changed()
    eng.env.run(until=3.0)
    n = eng.spawned
    arrived, completed, failed, dropped = _counters(eng)[FRONT]
    assert arrived == n and failed == 0 and completed + dropped == n
    assert abs(dropped - n / 2) <= 4 * 0.5 * math.sqrt(n)
    assert _counters(eng)[BACK] == [completed, completed, 0, 0]


# ---------------------------------------------------------------- conservation and drains
def test_conservation_against_the_live_attempts_while_overloaded_then_a_drain() -> None:
    """Overloaded, with timeouts, retries and errors: arrived = completed + failed + dropped +
    in flight at every 1/32 s, in flight never negative; after the traffic stops every attempt
    ends (in flight 0, nothing alive, nothing abandoned) and the entry saw each spawned
    request at least once (its retries on top)."""
    eng = _engine(
        front={
            "service_time": {"mean": 0.01, "cv": 1.0},
            "concurrency": 2,
            "queue_per_pod": 8,
            "timeout_s": 0.2,
            "retries": 1,
            "retry_backoff_s": 0.01,
        },
        back={
            "service_time": {"mean": 0.03, "cv": 0.5},
            "concurrency": 2,
            "queue_per_pod": 4,
            "timeout_s": 0.05,
            "retries": 2,
            "retry_backoff_s": 0.01,
            "error_rate": 0.05,
        },
        edge={"calls": 1.5},
        base_rps=120.0,
        horizon_s=3.0,
        seed=7,
    )
    abandoned_seen = 0
    for i in range(1, 3 * 32 + 1):
        eng.env.run(until=i / 32)
        c = np.array(_counters(eng), dtype=float)
        live = eng.live_in_flight()
        np.testing.assert_array_equal(c[:, 0], c[:, 1:].sum(axis=1) + live)
        assert (live >= 0).all()
        abandoned_seen = max(abandoned_seen, sum(eng._abandoned))
    assert abandoned_seen > 0  # timed-out attempts ran on, and were not in flight
    eng.env.run(until=10.0)
    c = np.array(_counters(eng), dtype=float)
    assert eng._alive == [0, 0] and eng._abandoned == [0, 0] and not eng._expired
    np.testing.assert_array_equal(eng.live_in_flight(), [0, 0])
    np.testing.assert_array_equal(c[:, 0], c[:, 1:].sum(axis=1))
    assert (c[:, 2] > 0).all() and (c[:, 3] > 0).all()  # failures and drops happened
    assert c[FRONT, 0] > eng.spawned > 250  # front's callers retried too


def test_a_drain_without_retries_counts_each_spawned_request_once() -> None:
    eng = _engine(
        front={"service_time": {"mean": 0.004, "cv": 1.0}, "concurrency": 2},
        back={"service_time": {"mean": 0.008, "cv": 0.5}, "concurrency": 2, "queue_per_pod": 3},
        base_rps=150.0,
        horizon_s=2.0,
        seed=3,
    )
    eng.env.run(until=5.0)
    c = _counters(eng)
    assert c[FRONT][0] == eng.spawned > 200
    assert c[FRONT][0] == c[FRONT][1] + c[FRONT][2] + c[FRONT][3]
    assert c[BACK][0] == c[FRONT][1] + c[FRONT][2]  # each served front attempt calls once
    assert c[BACK][3] == c[FRONT][2] > 0  # a back drop is the only way front fails here
    assert c[BACK][0] == c[BACK][1] + c[BACK][3]
    np.testing.assert_array_equal(eng.live_in_flight(), [0, 0])


# ---------------------------------------------------------------- random durations
def test_the_sampler_hands_out_its_blocks_in_order() -> None:
    s = _Sampler(np.random.default_rng(5), lambda r, n: r.random(n))
    got = [s() for _ in range(_BLOCK + 10)]
    ref = np.random.default_rng(5)
    assert got == ref.random(_BLOCK).tolist() + ref.random(_BLOCK)[:10].tolist()


@pytest.mark.parametrize(
    ("kind", "cv", "skew"),
    [
        ("gamma", 0.5, 1.0),
        ("lognormal", 0.5, 3 * 0.5 + 0.5**3),
        ("gamma", 1.5, 3.0),
        ("gamma", 2.0, 4.0),
    ],
)
def test_duration_samplers_have_unit_mean_their_cv_and_their_shape(
    kind: Literal["gamma", "lognormal"], cv: float, skew: float
) -> None:
    """Mean 1, the cv asked for, and the shape's skewness (gamma 2 cv, lognormal 3 cv + cv^3)."""
    s = _duration_sampler(np.random.default_rng(1), Distribution(mean=0.3, cv=cv, kind=kind))
    assert s is not None
    x = np.array([s() for _ in range(50 * _BLOCK)])
    assert abs(x.mean() - 1.0) <= 4 * cv / math.sqrt(len(x))
    assert abs(x.std() / x.mean() - cv) <= 0.03 * cv
    z = (x - x.mean()) / x.std()
    assert abs(float((z**3).mean()) - skew) <= 0.08 * skew
    assert x.min() > 0


def test_exponential_durations_are_the_streams_standard_exponentials() -> None:
    s = _duration_sampler(np.random.default_rng(2), Distribution(mean=0.3, cv=1.0))
    assert s is not None
    got = [s() for _ in range(100)]
    assert got == np.random.default_rng(2).standard_exponential(_BLOCK)[:100].tolist()


def test_deterministic_durations_have_no_sampler() -> None:
    assert _duration_sampler(np.random.default_rng(0), Distribution(mean=0.3, cv=0.0)) is None
    d = Distribution(mean=0.3, cv=0.0, kind="lognormal")
    assert _duration_sampler(np.random.default_rng(0), d) is None


def test_random_service_times_scale_the_mean() -> None:
    """front with exponential work of mean 1/8: the own busy time of 2000 lone attempts."""
    eng = _engine(
        front={"service_time": {"mean": 0.125, "cv": 1.0}},
        edge={"probability": 0.0},
        horizon_s=5000.0,
    )
    n = 2000
    _clients(eng, [2.0 * i for i in range(n)])
    eng.env.run(until=2.0 * n)
    busy = eng._own_busy[FRONT]
    assert abs(busy / n - 0.125) <= 4 * 0.125 / math.sqrt(n)
    assert sum(eng._lat[FRONT]) == pytest.approx(busy, rel=1e-9)  # no waiting: latency = work


def test_a_slot_pool_starts_with_the_slots_asked_for() -> None:
    env = simpy.Environment()
    assert SlotPool(env, 3).capacity == 3
    assert SlotPool(env, 0).capacity == 0  # a pool without slots admits nobody
