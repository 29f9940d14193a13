"""Request-level engine: every request is a SimPy process walking the call graph.

The ground truth. Each service has one pool of worker slots (ready pods x concurrency) fed
by one FIFO queue, which is what a least-request load balancer in front of the pods
approximates. An attempt holds its slot for its own processing only; it then makes its
downstream calls one after another without holding a worker (asynchronous servers, as the
Go and Node.js services of the Online Boutique demo are). An application error answers at
once and calls nothing. A caller gives up on an attempt after the callee's ``timeout_s`` and
retries up to ``retries`` times with exponential backoff; a server keeps working on an
attempt its caller gave up on (wasted work, as real servers do), which is what lets retry
storms outlive their trigger.

Every attempt is counted exactly once, when its caller learns its fate: completed, failed
(timeout, application error, failed downstream call, lost with its pod) or dropped (no
ready pod, or the queue is full). Latency is recorded for completed and failed attempts.

``in_flight`` is not derived from those counters: the engine counts the attempt generators
alive (incremented when one starts, decremented when it ends, whatever the path) and, apart,
the ones still running after their caller gave up; in flight is the first minus the second.
So ``arrived = completed + failed + dropped + in_flight`` is a checked invariant, not a
definition, and a counter that counts an attempt twice (or never) breaks it.
"""

from __future__ import annotations

from collections.abc import Generator
from functools import partial
from typing import Any

import numpy as np
import simpy

from envs.core.telemetry import LATENCY_BUCKETS_S
from envs.scenarios.schema import Distribution, Scenario
from envs.sim.engine import DataPlaneReading, Engine

_BLOCK = 4096
_BOUNDS = np.array(LATENCY_BUCKETS_S)


class SlotPool(simpy.Resource):
    """A :class:`simpy.Resource` whose capacity follows the ready pods."""

    def __init__(self, env: simpy.Environment, capacity: int) -> None:
        super().__init__(env, capacity=max(capacity, 1))
        self._capacity = capacity

    def set_capacity(self, capacity: int) -> None:
        """Change the number of slots; waiting requests are admitted if it grew."""
        grew = capacity > self._capacity
        self._capacity = capacity
        if grew:
            self._trigger_put(None)

    def flush(self) -> None:
        """Fail every queued request (its process sees :class:`_Flushed`)."""
        queued = list(self.put_queue)
        self.put_queue.clear()
        for req in queued:
            req.fail(_Flushed())


class _Flushed(Exception):
    """Thrown into attempts that were queued at a service whose last pod went away."""


class _Sampler:
    """Pre-drawn blocks of random numbers, handed out one Python float at a time."""

    def __init__(self, rng: np.random.Generator, draw: Any) -> None:
        self._rng = rng
        self._draw = draw
        self._buf: list[float] = []
        self._i = 0

    def __call__(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._draw(self._rng, _BLOCK).tolist()
            self._i = 0
        x = self._buf[self._i]
        self._i += 1
        return x


def _duration_sampler(rng: np.random.Generator, d: Distribution) -> _Sampler | None:
    """Sampler of a unit-mean duration with ``d``'s shape; None when deterministic."""
    if d.cv == 0:
        return None
    if d.kind == "lognormal":
        s2 = float(np.log1p(d.cv**2))
        return _Sampler(rng, lambda r, n: np.exp(r.normal(-s2 / 2, np.sqrt(s2), n)))
    if d.cv == 1.0:
        return _Sampler(rng, lambda r, n: r.standard_exponential(n))
    shape = 1.0 / d.cv**2
    return _Sampler(rng, lambda r, n: r.standard_gamma(shape, n) / shape)


class RequestEngine(Engine):
    """Request-level data plane; see the module docstring."""

    fidelity = "request"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        specs = scenario.topology.services
        rng = self.data_rng
        self._uniform = _Sampler(rng, lambda r, n: r.random(n))
        self._expo = _Sampler(rng, lambda r, n: r.standard_exponential(n))
        self._svc_sampler = [_duration_sampler(rng, s.pod.service_time) for s in specs]
        self._svc_mean = [s.pod.service_time.mean for s in specs]
        self._timeout = [s.pod.timeout_s for s in specs]
        self._retries = [s.pod.retries for s in specs]
        self._backoff = [s.pod.retry_backoff_s for s in specs]
        self._qpp = [s.pod.queue_per_pod for s in specs]
        self._k = [s.pod.concurrency for s in specs]
        index = {s.name: i for i, s in enumerate(specs)}
        self._children: list[list[tuple[int, float, int, float]]] = [[] for _ in specs]
        for e in scenario.topology.edges:
            n_int = int(e.calls)
            self._children[index[e.src]].append(
                (index[e.dst], e.probability, n_int, e.calls - n_int)
            )
        n = self.n
        self.pools = [SlotPool(self.env, 0) for _ in range(n)]
        self._ready = [0] * n
        self._qcap = [0] * n
        self._lat_factor = [1.0] * n
        self._err = [0.0] * n
        self._shed = 0.0
        self._arrived = [0] * n
        self._completed = [0] * n
        self._failed = [0] * n
        self._dropped = [0] * n
        self._own_busy = [0.0] * n
        self._alive = [0] * n  # attempt generators started and not yet ended
        self._abandoned = [0] * n  # of those, the ones whose caller already gave up
        self._expired: set[int] = set()  # ids of ``done`` events a caller's timeout fired
        self._spawned = 0  # external requests the source created (shed ones included)
        self._lat: list[list[float]] = [[] for _ in range(n)]
        self._doomed: set[int] = set()
        self._edge_fault: list[dict[int, tuple[float, float, float]]] = [{} for _ in range(n)]

    # ------------------------------------------------------------------ hooks
    def before_change(self) -> None:
        """Nothing to integrate: the request level is event by event."""

    def capacity_changed(self) -> None:
        """Resize the slot pools to the ready pods."""
        cp = self.cp
        for s in range(self.n):
            ready = int(cp.ready[s])
            self._ready[s] = ready
            self._qcap[s] = ready * self._qpp[s]
            self.pools[s].set_capacity(ready * self._k[s])
            if ready == 0 and self.pools[s].put_queue:
                self.pools[s].flush()
            self._lat_factor[s] = float(cp.latency_factor[s])
            self._err[s] = float(cp.app_error[s])
        self._shed = cp.shed_fraction
        self._edge_fault = [{} for _ in range(self.n)]
        for (src, dst), (loss, delay) in self.edge_faults.items():
            share = float(cp.bad_path_fraction[src])
            if share > 0:
                self._edge_fault[src][dst] = (share, loss, delay)

    def set_call_policy(self, service: int, timeout_s: float | None, retries: int) -> None:
        """Callers of ``service`` use this timeout and retry count from now on."""
        self._timeout[service] = timeout_s
        self._retries[service] = retries

    def pods_lost(self, service: int, lost_fraction: float) -> None:
        """Doom a random ``lost_fraction`` of the attempts in service at ``service``."""
        users = self.pools[service].users
        x = len(users) * lost_fraction
        k = min(int(x) + (1 if self._uniform() < x - int(x) else 0), len(users))
        if k <= 0:
            return
        picks = self.data_rng.choice(len(users), size=k, replace=False)
        for i in sorted(int(p) for p in picks):
            self._doomed.add(id(users[i]))

    # ------------------------------------------------------------------ arrivals
    def _start_data_plane(self) -> None:
        self.env.process(self._source())

    def _source(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        rates = self.traffic.rates
        res = self.traffic.resolution_s
        horizon = self.sc.horizon_s
        expo = self._expo
        uniform = self._uniform
        entry = self.entry
        t = 0.0
        tick = 0
        n_ticks = len(rates)
        while t < horizon and tick < n_ticks:
            rate = float(rates[tick])
            tick_end = (tick + 1) * res
            if rate <= 0:
                t = tick_end
                tick += 1
                continue
            nxt = t + expo() / rate
            if nxt >= tick_end:  # memoryless: restart the clock at the next tick's rate
                t = tick_end
                tick += 1
                continue
            t = nxt
            if t > env.now:
                yield env.timeout(t - env.now)
            self._spawned += 1
            if self._shed > 0 and uniform() < self._shed:
                # shed at the ingress: a rejected user request, counted as dropped at the entry
                self._arrived[entry] += 1
                self._dropped[entry] += 1
                continue
            env.process(self._client(entry))

    def _client(self, s: int) -> Generator[simpy.Event, Any, None]:
        yield from self._call(s)

    # ------------------------------------------------------------------ calls
    def _call(
        self, s: int, path: tuple[float, float, float] | None = None
    ) -> Generator[simpy.Event, Any, bool]:
        """Call service ``s`` with its timeout and retries; True if an attempt succeeded.

        ``path`` is ``(share on the bad path, loss, delay)`` when a network fault degrades
        this call edge.
        """
        retries = self._retries[s]
        timeout = self._timeout[s]
        k = 0
        while True:
            lost = False
            if path is not None and self._uniform() < path[0]:
                if path[2] > 0:
                    yield self.env.timeout(path[2])
                lost = self._uniform() < path[1]
            if lost:  # lost on the way: a connection error at the callee
                self._arrived[s] += 1
                self._failed[s] += 1
                self._lat[s].append(path[2] if path is not None else 0.0)
                ok = False
            elif timeout is None:
                ok = yield from self._attempt(s, None)
            else:
                done = self.env.event()
                self.env.process(self._attempt(s, done))
                timer = self.env.timeout(timeout)
                timer.callbacks.append(partial(self._expire, done, s, self.env.now))
                ok = yield done
            if ok:
                return True
            if k >= retries:
                return False
            backoff = self._backoff[s] * (1 << k)
            k += 1
            if backoff > 0:
                yield self.env.timeout(backoff)

    def _expire(self, done: simpy.Event, s: int, t0: float, _timer: simpy.Event) -> None:
        """The caller's timeout fired: the attempt fails now if it has not finished."""
        if not done.triggered:
            self._abandoned[s] += 1  # the attempt's generator runs on (wasted work)
            self._expired.add(id(done))
            self._failed[s] += 1
            self._lat[s].append(self.env.now - t0)
            done.succeed(False)

    def _attempt(self, s: int, done: simpy.Event | None) -> Generator[simpy.Event, Any, bool]:
        """One attempt at service ``s``; reports through ``done`` when the caller may time out.

        Counted alive from the moment it takes a place in the pool's queue to its end
        (``try``/``finally``), independently of the arrived/completed/failed/dropped counters
        (an attempt dropped at once is never alive: it ends in the instant it starts).
        """
        env = self.env
        t0 = env.now
        self._arrived[s] += 1
        pool = self.pools[s]
        if self._ready[s] == 0 or (
            len(pool.users) >= pool._capacity and len(pool.queue) >= self._qcap[s]
        ):
            self._dropped[s] += 1
            if done is not None:
                done.succeed(False)
            return False
        self._alive[s] += 1
        try:
            req = pool.request()
            try:
                yield req
            except _Flushed:
                # every pod went away while the attempt queued: connection reset
                if done is None or not done.triggered:
                    self._failed[s] += 1
                    self._lat[s].append(env.now - t0)
                    if done is not None:
                        done.succeed(False)
                return False
            sampler = self._svc_sampler[s]
            own = self._svc_mean[s] * self._lat_factor[s]
            if sampler is not None:
                own *= sampler()
            yield env.timeout(own)
            self._own_busy[s] += own
            pool.release(req)
            ok = True
            if self._doomed and id(req) in self._doomed:
                self._doomed.discard(id(req))
                ok = False  # its pod died under it
            elif self._err[s] > 0 and self._uniform() < self._err[s]:
                ok = False  # application error: answers at once, calls nothing
            else:
                for child, prob, n_calls, frac in self._children[s]:
                    if prob < 1.0 and self._uniform() >= prob:
                        continue
                    calls = n_calls + (1 if frac > 0 and self._uniform() < frac else 0)
                    path = self._edge_fault[s].get(child) if self._edge_fault[s] else None
                    for _ in range(calls):
                        if not (yield from self._call(child, path)):
                            ok = False
            if done is None or not done.triggered:
                if ok:
                    self._completed[s] += 1
                else:
                    self._failed[s] += 1
                self._lat[s].append(env.now - t0)
                if done is not None:
                    done.succeed(ok)
            return ok
        finally:
            self._alive[s] -= 1
            if self._expired and done is not None and id(done) in self._expired:
                self._expired.discard(id(done))
                self._abandoned[s] -= 1

    # ------------------------------------------------------------------ scrape
    def live_in_flight(self) -> np.ndarray:
        """``(S,)`` attempts alive whose caller still waits, counted from the processes."""
        return np.array(self._alive, dtype=np.float64) - np.array(self._abandoned, dtype=np.float64)

    @property
    def spawned(self) -> int:
        """External requests the traffic source has created so far (shed ones included)."""
        return self._spawned

    def _read_data_plane(self) -> DataPlaneReading:
        n = self.n
        counters = np.array(
            [self._arrived, self._completed, self._failed, self._dropped], dtype=np.float64
        ).T
        in_flight = self.live_in_flight()
        p50 = np.full(n, np.nan)
        p95 = np.full(n, np.nan)
        p99 = np.full(n, np.nan)
        mean = np.full(n, np.nan)
        hist = np.zeros((n, len(_BOUNDS)))
        for s in range(n):
            lat = self._lat[s]
            if lat:
                a = np.asarray(lat)
                p50[s], p95[s], p99[s] = np.quantile(a, (0.5, 0.95, 0.99))
                mean[s] = a.mean()
                idx = np.searchsorted(_BOUNDS, a, side="left")
                hist[s] = np.bincount(idx, minlength=len(_BOUNDS))[: len(_BOUNDS)]
                self._lat[s] = []
        busy = np.array(self._own_busy)
        self._own_busy = [0.0] * n
        backlog = np.array([len(p.queue) for p in self.pools], dtype=np.float64)
        return DataPlaneReading(counters, in_flight, backlog, busy, p50, p95, p99, mean, hist)
