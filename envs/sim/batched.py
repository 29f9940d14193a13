"""A batched fluid core: ``N`` copies of one scenario family stepped in one vectorised pass.

:class:`BatchedFluid` keeps the state of ``N`` fluid simulations in numpy arrays of shape
``(N, S)`` (``S`` services) and advances all of them by one decision interval per
:meth:`BatchedFluid.advance`, so the per-call overhead of numpy, which dominates the scalar
engine on a handful of services (``docs/batched.md``), is paid once for ``N`` scenarios.

What it shares with the scalar fluid engine (:class:`envs.sim.fluid.FluidEngine`):

* the traffic: each row's :class:`~envs.sim.traffic.TrafficModel` is built from the same
  ``SeedSequence`` stream as the scalar engine's, so a row and a scalar run of the same
  scenario and seed see the same arrival rates;
* the per-segment fluid queue law, line by line (Jacobi sweeps over the call graph, the
  fluid backlog, Erlang-C with Allen-Cunneen, the gamma response-time law, timeouts,
  retries, drops), with each row's own sweep count and convergence test;
* the segment boundaries: a row's data plane is integrated up to every event that changes
  its serving capacity (a pod becoming ready, a scale-down deleting pods), as the scalar
  engine's ``before_change`` hook does, so a segment's mean arrival rate is the same;
* the pod start-up times, drawn from the row's control-plane stream in the order the scalar
  control plane draws them (pods bound in creation order);
* the scrape: rates, errors, p50 and p99 (finished-weighted over the interval's segments),
  CPU, memory, replicas, backlog, SLO violation seconds, and the allocated cost.

What it leaves out, so that results differ from the scalar engine where these matter:

* **incidents**: only ``flash_crowd`` (a traffic change) and ``slow_dependency`` (a service
  time change, from its onset to its end, a segment boundary at each) are supported; any
  other fault kind raises :class:`UnsupportedScenarioError` naming it;
* **escape from retry-sustained overload** (the scalar engine's Kramers hazard): a row held
  in overload by retries alone stays there until its capacity is raised;
* **the scheduler works on the cluster's total free CPU and memory**, not per node (no
  fragmentation), and pending pods bind oldest first only within one decision;
* no HPA, no cluster autoscaler, no rollouts (restart, rollback, deploy), no telemetry
  faults; the decision interval must equal the scrape interval, and
  ``actuation_delay_s + termination_grace_s`` must fit in one decision interval.

Only :data:`SUPPORTED_FAULTS` pass :func:`check_supported`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from envs.core.telemetry import CLUSTER_INDEX, FIELD_INDEX, SERVICE_FIELDS
from envs.scenarios.schema import FAULT_KINDS, Scenario, SlowDependencyFault
from envs.sim import queueing as q
from envs.sim.faults import traffic_with_faults
from envs.sim.fluid import FIXED_POINT_RTOL, RHO_MAX, _backoff_mean, _depth, _mean_backlog
from envs.sim.traffic import TrafficModel

SUPPORTED_FAULTS: tuple[str, ...] = ("flash_crowd", "slow_dependency")
"""Fault kinds the batched core simulates: a flash crowd changes the traffic, a slow
dependency the service time (both exactly as the scalar engine)."""
UNSUPPORTED_FAULTS: tuple[str, ...] = tuple(k for k in FAULT_KINDS if k not in SUPPORTED_FAULTS)

_EMPTY, _PENDING, _STARTING = 0, 1, 2
"""States of a not-ready pod slot."""
_DRAW_AHEAD = 64
"""Start-up times drawn ahead per row (when every service has the same distribution)."""


class UnsupportedScenarioError(ValueError):
    """The scenario uses something the batched core does not simulate (named in the message)."""


def _erlang_c(c: np.ndarray, a: np.ndarray, gammaln_c1: np.ndarray) -> np.ndarray:
    """:func:`envs.sim.queueing.erlang_c` with ``gammaln(c + 1)`` given (same operations)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logpmf = special.xlogy(c, a) - a - gammaln_c1
        cdf = special.pdtr(c, a)
        b = np.exp(logpmf) / cdf
    b = np.where(c <= 0, 1.0, np.where(a <= 0, 0.0, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = a / c
        out = b / (1.0 - rho * (1.0 - b))
    return np.where(a >= c, 1.0, np.clip(out, 0.0, 1.0))


def check_supported(scenarios: Sequence[Scenario]) -> None:
    """Raise :class:`UnsupportedScenarioError` unless the batched core can run ``scenarios``.

    They must share everything but ``traffic``, ``seed``, ``slos``, ``name``,
    ``description`` and flash-crowd faults (one topology, one cluster, one horizon).
    """
    if not scenarios:
        raise UnsupportedScenarioError("scenarios: give at least one scenario")
    base = scenarios[0]
    for sc in scenarios:
        kinds = sorted({f.kind for f in sc.faults if f.kind not in SUPPORTED_FAULTS})
        if kinds:
            raise UnsupportedScenarioError(
                f"scenario {sc.name!r}: fault kind(s) {kinds} are not simulated by the batched "
                f"fluid core (supported: {list(SUPPORTED_FAULTS)}); use the scalar env "
                "(envs.gym.envs) for these incidents"
            )
        if sc.fidelity != "fluid":
            raise UnsupportedScenarioError(
                f"scenario {sc.name!r}: fidelity={sc.fidelity!r}; the batched core is fluid only"
            )
        if sc.autoscaling.hpa is not None:
            raise UnsupportedScenarioError(
                f"scenario {sc.name!r}: autoscaling.hpa is set; the batched core runs no HPA "
                "(use the scalar HPATune env)"
            )
        if sc.cluster.autoscaler is not None and sc.cluster.autoscaler.enabled:
            raise UnsupportedScenarioError(
                f"scenario {sc.name!r}: cluster.autoscaler is enabled; the batched core has a "
                "fixed node pool (set cluster.autoscaler.enabled: false)"
            )
        if abs(sc.decision_interval_s - sc.scrape_interval_s) > 1e-9:
            raise UnsupportedScenarioError(
                f"scenario {sc.name!r}: decision_interval_s={sc.decision_interval_s:g} != "
                f"scrape_interval_s={sc.scrape_interval_s:g}; the batched core scrapes once "
                "per decision (set them equal)"
            )
        grace = {s.pod.termination_grace_s for s in sc.topology.services}
        if len(grace) > 1:
            raise UnsupportedScenarioError(
                f"scenario {sc.name!r}: pod.termination_grace_s differs between services "
                f"({sorted(grace)}); the batched core needs one value"
            )
        if sc.actuation_delay_s + max(grace) >= sc.decision_interval_s:
            raise UnsupportedScenarioError(
                f"scenario {sc.name!r}: actuation_delay_s + termination_grace_s = "
                f"{sc.actuation_delay_s + max(grace):g} s must be shorter than "
                f"decision_interval_s={sc.decision_interval_s:g}"
            )
        for field in ("topology", "cluster", "horizon_s", "decision_interval_s"):
            if getattr(sc, field) != getattr(base, field):
                raise UnsupportedScenarioError(
                    f"scenario {sc.name!r}: {field} differs from {base.name!r}'s; the "
                    "scenarios of one batch may differ only in traffic, seed, slos and "
                    "flash crowds"
                )
        if sc.actuation_delay_s != base.actuation_delay_s:
            raise UnsupportedScenarioError(
                f"scenario {sc.name!r}: actuation_delay_s differs from {base.name!r}'s"
            )


@dataclass
class BatchedFrame:
    """One scrape of every row: the :class:`~envs.core.telemetry.Telemetry` gauges, batched.

    ``values`` is ``(N, S, len(SERVICE_FIELDS))`` with NaN where a scalar frame has NaN
    (gauges the batched core does not compute, such as ``p95``, are NaN too);
    ``cluster`` is ``(N, len(CLUSTER_FIELDS))``.
    """

    t: float
    values: np.ndarray
    cluster: np.ndarray


class BatchedFluid:
    """``N`` fluid simulations of one scenario family; see the module docstring.

    Args:
        scenarios: The family (:func:`check_supported`); row ``i`` runs
            ``scenarios[index[i]]`` with its own seed after :meth:`reset`.
        n: Number of rows ``N``.
    """

    def __init__(self, scenarios: Sequence[Scenario], n: int) -> None:
        check_supported(scenarios)
        if n < 1:
            raise ValueError(f"n={n}: the batch needs at least one row")
        self.scenarios = list(scenarios)
        sc = self.scenarios[0]
        self.sc = sc
        self.n_rows = n
        specs = sc.topology.services
        self.names = tuple(sc.service_names)
        s_n = len(specs)
        self.n_services = s_n
        self.entry = self.names.index(sc.topology.entry)
        pod = [s.pod for s in specs]
        self.concurrency = np.array([p.concurrency for p in pod], dtype=np.float64)
        self.cpu_req = np.array([p.cpu_request for p in pod])
        self.cpu_idle = np.array([p.cpu_idle for p in pod])
        self.cpu_full = np.array([p.full_load_cores for p in pod])
        self.mem_req = np.array([p.memory_request_mb for p in pod])
        self.mem_base = np.array([p.memory_base_mb for p in pod])
        self.mem_per_req = np.array([p.memory_per_request_mb for p in pod])
        self.pod_cost = np.array([s.cost_per_pod_hour for s in specs])
        self.m0 = np.array([p.service_time.mean for p in pod])
        self.scv = np.array([p.service_time.cv**2 for p in pod])
        self.timeout = np.array([np.inf if p.timeout_s is None else p.timeout_s for p in pod])
        self.finite_timeout = np.isfinite(self.timeout)
        self.retries = np.array([p.retries for p in pod], dtype=np.float64)
        self.backoff = np.array([p.retry_backoff_s for p in pod])
        self.qpp = np.array([p.queue_per_pod for p in pod], dtype=np.float64)
        self.app_err = np.minimum(1.0, np.array([p.error_rate for p in pod], dtype=np.float64))
        self.startup = [p.startup for p in pod]
        self.grace = float(pod[0].termination_grace_s)
        self.r_min = np.array([s.replicas.min for s in specs], dtype=np.int64)
        self.r_max = np.array([s.replicas.max for s in specs], dtype=np.int64)
        self.r_init = np.array([s.replicas.initial for s in specs], dtype=np.int64)
        self.slots = int(max(self.r_max.max(), self.r_init.max()))
        index = {s.name: i for i, s in enumerate(specs)}
        p = np.zeros((s_n, s_n))
        calls = np.zeros((s_n, s_n))
        for e in sc.topology.edges:
            p[index[e.src], index[e.dst]] = e.probability
            calls[index[e.src], index[e.dst]] = e.calls
        nfloor = np.floor(calls)
        frac = calls - nfloor
        self.em = p * calls
        em2 = p * (nfloor**2 + 2 * nfloor * frac + frac)
        self.vm = em2 - self.em**2
        self.em_T = np.ascontiguousarray(self.em.T)
        self.vm_T = np.ascontiguousarray(self.vm.T)
        self.has_edges = bool(self.em.any())
        self.entry_vec = np.zeros(s_n)
        self.entry_vec[self.entry] = 1.0
        self.sweeps = _depth(sc) + 1
        src, dst = np.nonzero(self.em > 0)  # row-major: sorted by caller
        self._e_dst = dst
        self._e_p, self._e_n, self._e_frac = p[src, dst], nfloor[src, dst], frac[src, dst]
        self._e_callers, self._e_starts = np.unique(src, return_index=True)
        cl = sc.cluster
        self.n_nodes = cl.nodes
        self.cpu_total = cl.nodes * cl.node_cpu
        self.mem_total = cl.nodes * cl.node_memory_mb
        self.core_price = cl.cost_per_node_hour / cl.node_cpu
        self.node_cost_rate = cl.nodes * cl.cost_per_node_hour
        self.dt = float(sc.decision_interval_s)
        self.delay = float(sc.actuation_delay_s)
        self.horizon = float(sc.horizon_s)
        self.slo_p99 = np.full((n, s_n), np.nan)
        self.slo_err = np.full((n, s_n), np.nan)
        self.t = 0.0
        self._alloc(n)

    # ------------------------------------------------------------------ state
    def _alloc(self, n: int) -> None:
        s_n, k = self.n_services, self.slots

        def z() -> np.ndarray:
            return np.zeros((n, s_n))

        self.backlog, self.arrived, self.completed, self.failed = z(), z(), z(), z()
        self.dropped, self.in_flight, self.own_busy, self.lq = z(), z(), z(), z()
        self.f, self.drop, self.lam = z(), z(), z()
        self.d1 = np.tile(self.m0, (n, 1))
        self.d2 = np.tile(self.scv * self.m0**2, (n, 1))
        self.lam_ext_prev = np.zeros(n)
        self.ft = np.zeros(n)  # data plane integrated up to here
        self.ready = np.zeros((n, s_n), dtype=np.int64)
        self.desired = np.zeros((n, s_n), dtype=np.int64)
        self.term = np.zeros((n, s_n), dtype=np.int64)  # terminating (bound, not serving)
        self.term_until = np.full(n, np.inf)
        self.slot_state = np.zeros((n, s_n, k), dtype=np.int8)
        self.slot_seq = np.zeros((n, s_n, k), dtype=np.int64)
        self.slot_ready = np.full((n, s_n, k), np.inf)
        self.seq = np.zeros(n, dtype=np.int64)
        self.core_s = np.zeros(n)  # requested core-seconds of bound pods
        self.pod_cost_s = np.zeros(n)  # pod surcharge, currency
        self.acct_t = np.zeros(n)
        self.violation_s = z()
        self.slowdown = np.ones((n, s_n))  # service slowdown (slow_dependency faults)
        self.fault_t = np.full((n, 1), np.inf)  # per row: fault events in time order
        self.fault_s = np.zeros((n, 1), dtype=np.int64)
        self.fault_x = np.ones((n, 1))
        self.fault_div = np.zeros((n, 1), dtype=bool)
        self.fault_ptr = np.zeros(n, dtype=np.int64)
        self.prev_counters = np.zeros((n, s_n, 4))
        self.last_scrape = 0.0
        # per scrape interval: finished-weighted p50/p99 over the segments
        self.seg_n = np.zeros(n, dtype=np.int64)
        self.seg_w = z()
        self.seg_acc = np.zeros((n, 2, s_n))
        self.seg_last = np.full((n, 2, s_n), np.nan)
        self.seg_last_w = z()
        self.rates: list[np.ndarray] = [np.zeros(1)] * n
        self.cum = np.zeros((n, 2))
        self.rl = np.zeros((n, 1))
        self.res = float(self.sc.traffic.resolution_s)
        self.rngs: list[np.random.Generator] = [np.random.default_rng(0)] * n
        shared = all(d == self.startup[0] for d in self.startup)
        self._buf: np.ndarray | None = np.zeros((n, _DRAW_AHEAD)) if shared else None
        self._ptr = np.full(n, _DRAW_AHEAD, dtype=np.int64)  # empty: drawn at first use
        self.scenario_index = np.zeros(n, dtype=np.int64)

    def reset(self, seeds: Sequence[int], index: Sequence[int] | None = None) -> BatchedFrame:
        """Start every row afresh at ``t = 0``; returns the frame at ``t = 0``.

        Row ``i`` runs ``scenarios[index[i]]`` (0 when ``index`` is None) with seed
        ``seeds[i]``, its streams split from that seed as the scalar engine splits them.
        """
        n = self.n_rows
        if len(seeds) != n:
            raise ValueError(f"seeds: give one per row ({n}), got {len(seeds)}")
        idx = [0] * n if index is None else [int(i) for i in index]
        self._alloc(n)
        self.t = 0.0
        ticks = None
        cums: list[np.ndarray] = []
        for i, (seed, k) in enumerate(zip(seeds, idx, strict=True)):
            sc = self.scenarios[k]
            traffic_seq, control_seq, _data_seq, _fault_seq = np.random.SeedSequence(
                int(seed)
            ).spawn(4)
            tm = TrafficModel(
                traffic_with_faults(sc), sc.horizon_s, np.random.default_rng(traffic_seq)
            )
            if ticks is None:
                ticks = tm.n_ticks
            self.rates[i] = tm.rates
            # TrafficModel's own cumulative sum, recomputed the same way
            cums.append(np.concatenate(([0.0], np.cumsum(tm.rates * tm.resolution_s))))
            self.rngs[i] = np.random.default_rng(control_seq)
            slos = sc.effective_slos()
            self.slo_p99[i] = [slos[s].p99_latency_s if s in slos else np.nan for s in self.names]
            self.slo_err[i] = [slos[s].error_rate if s in slos else np.nan for s in self.names]
        self.scenario_index = np.array(idx, dtype=np.int64)
        self._fault_events([self.scenarios[k] for k in idx])
        self.rl = np.stack(self.rates)
        self.cum = np.stack(cums)
        self._last_tick = self.rl.shape[1] - 1
        # the initial pods: bound in service order where they fit, ready at t = 0
        self.desired[:] = self.r_init
        free_cpu = np.full(n, self.cpu_total)
        free_mem = np.full(n, self.mem_total)
        for s in range(self.n_services):
            for _ in range(int(self.r_init[s])):
                fits = (free_cpu >= self.cpu_req[s] - 1e-9) & (free_mem >= self.mem_req[s] - 1e-9)
                self.ready[fits, s] += 1
                free_cpu[fits] -= self.cpu_req[s]
                free_mem[fits] -= self.mem_req[s]
                pend = ~fits
                if pend.any():
                    self._new_slots(np.flatnonzero(pend), s, _PENDING)
        self.base_cost_rate = np.maximum(self.allocated_cost_rate(), 1e-9)
        return self._scrape()

    def _fault_events(self, scenarios: Sequence[Scenario]) -> None:
        """Each row's slow-dependency starts and stops, in the scalar engine's order.

        By time; at one time, starts (timers set at ``t = 0``, in fault order) before stops
        (timers set at their fault's onset, earliest first).
        """
        per_row: list[list[tuple[float, int, int, float, bool]]] = []
        for sc in scenarios:
            ev: list[tuple[float, int, int, float, bool]] = []
            for i, f in enumerate(sc.faults):
                if not isinstance(f, SlowDependencyFault):
                    continue
                s = self.names.index(f.service)
                x = float(f.latency_factor)
                ev.append((float(f.at_s), i, s, x, False))
                if f.duration_s is not None:
                    ev.append((float(f.at_s) + float(f.duration_s), i, s, x, True))
            onset = {i: float(f.at_s) for i, f in enumerate(sc.faults)}
            per_row.append(sorted(ev, key=lambda e: (e[0], e[4], onset[e[1]], e[1])))
        width = max(1, max(len(e) for e in per_row))
        n = self.n_rows
        self.fault_t = np.full((n, width + 1), np.inf)
        self.fault_s = np.zeros((n, width + 1), dtype=np.int64)
        self.fault_x = np.ones((n, width + 1))
        self.fault_div = np.zeros((n, width + 1), dtype=bool)
        for r, ev in enumerate(per_row):
            for j, (t, _i, s, x, div) in enumerate(ev):
                self.fault_t[r, j], self.fault_s[r, j] = t, s
                self.fault_x[r, j], self.fault_div[r, j] = x, div
        self.fault_ptr = np.zeros(n, dtype=np.int64)

    def _next_fault(self) -> np.ndarray:
        return self.fault_t[np.arange(self.n_rows), self.fault_ptr]

    def _apply_faults(self, rows: np.ndarray, now: np.ndarray) -> None:
        """Start or stop every fault of ``rows`` due at ``now`` (the row's time)."""
        while rows.size:
            p = self.fault_ptr[rows]
            due = self.fault_t[rows, p] <= now
            rows, now, p = rows[due], now[due], p[due]
            if rows.size == 0:
                return
            s, x = self.fault_s[rows, p], self.fault_x[rows, p]
            div = self.fault_div[rows, p]
            cur = self.slowdown[rows, s]
            self.slowdown[rows, s] = np.where(div, cur / x, cur * x)
            self.fault_ptr[rows] += 1

    # ------------------------------------------------------------------ pods
    def _new_slots(self, rows: np.ndarray, s: int, state: int) -> np.ndarray:
        """Put one pod of service ``s`` into a free slot of each of ``rows``; returns slots."""
        free = self.slot_state[rows, s] == _EMPTY
        k = np.argmax(free, axis=1)
        if not free[np.arange(rows.size), k].all():  # pragma: no cover - desired <= max
            raise RuntimeError("batched core: no free pod slot (more pods than replicas.max)")
        self.slot_state[rows, s, k] = state
        self.slot_seq[rows, s, k] = self.seq[rows]
        self.seq[rows] += 1
        return k

    def bound_cores(self) -> np.ndarray:
        """``(N,)`` CPU cores requested by the bound pods (ready, starting, terminating)."""
        starting = (self.slot_state == _STARTING).sum(axis=2)
        return (self.ready + starting + self.term) @ self.cpu_req

    def _bound_mem(self) -> np.ndarray:
        starting = (self.slot_state == _STARTING).sum(axis=2)
        return (self.ready + starting + self.term) @ self.mem_req

    def allocated_cost_rate(self) -> np.ndarray:
        """``(N,)`` spend per hour attributed to the bound pods (their CPU requests)."""
        starting = (self.slot_state == _STARTING).sum(axis=2)
        bound = self.ready + starting + self.term
        return bound @ self.cpu_req * self.core_price + bound @ self.pod_cost

    def _account(self, rows: np.ndarray, now: float) -> None:
        """Integrate the cost meters of ``rows`` up to ``now``."""
        if rows.size == 0:
            return
        starting = (self.slot_state[rows] == _STARTING).sum(axis=2)
        bound = self.ready[rows] + starting + self.term[rows]
        span = now - self.acct_t[rows]
        self.core_s[rows] += (bound @ self.cpu_req) * span
        self.pod_cost_s[rows] += (bound @ self.pod_cost) * span / 3600.0
        self.acct_t[rows] = now

    def allocated_cost(self) -> np.ndarray:
        """``(N,)`` cumulative spend attributed to the pods (as the scalar billing)."""
        self._account(np.arange(self.n_rows), self.t)
        return self.core_s / 3600.0 * self.core_price + self.pod_cost_s

    def _schedule(self, rows: np.ndarray, now: float) -> None:
        """Bind the pending pods of ``rows`` oldest first while they fit; start each one.

        The cluster's free CPU and memory are summed over its nodes, and binding stops at the
        first pod that does not fit (the scalar scheduler tries every node for every pending
        pod); both agree whenever every pending pod fits.
        """
        pend = self.slot_state[rows] == _PENDING
        has = pend.any(axis=(1, 2))
        if not has.all():
            rows, pend = rows[has], pend[has]
        if rows.size == 0:
            return
        self._account(rows, now)
        r_n = rows.size
        s_n, k_n = self.n_services, self.slots
        flat_pend = pend.reshape(r_n, s_n * k_n)
        n_pend = flat_pend.sum(axis=1)
        width = int(n_pend.max())
        seq = np.where(flat_pend, self.slot_seq[rows].reshape(r_n, -1), np.iinfo(np.int64).max)
        order = np.argsort(seq, axis=1, kind="stable")[:, :width]
        valid = np.arange(width) < n_pend[:, None]
        svc = order // k_n
        slot = order % k_n
        cpu = np.cumsum(np.where(valid, self.cpu_req[svc], 0.0), axis=1)
        mem = np.cumsum(np.where(valid, self.mem_req[svc], 0.0), axis=1)
        free_cpu = self.cpu_total - self.bound_cores()[rows]
        free_mem = self.mem_total - self._bound_mem()[rows]
        ok = valid & (cpu <= free_cpu[:, None] + 1e-9) & (mem <= free_mem[:, None] + 1e-9)
        ok = np.logical_and.accumulate(ok, axis=1)
        n_bind = ok.sum(axis=1)
        if not n_bind.any():
            return
        delays = self._draws(rows, svc, n_bind)
        rr = np.broadcast_to(rows[:, None], ok.shape)[ok]
        ss, kk = svc[ok], slot[ok]
        self.slot_state[rr, ss, kk] = _STARTING
        self.slot_ready[rr, ss, kk] = now + delays[ok]

    def _draws(self, rows: np.ndarray, svc: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Start-up times of the first ``n[r]`` pods ``svc[r]`` of each row, in order.

        Drawn from each row's control-plane stream as the scalar control plane draws them
        (one per pod, in bind order): from a buffer drawn ahead when every service has the
        same start-up distribution (an array draw gives the same numbers as one draw at a
        time), else one by one.
        """
        out = np.zeros(svc.shape)
        if self._buf is None:
            for r, row in enumerate(rows.tolist()):
                out[r, : n[r]] = self._draw(row, svc[r, : n[r]].tolist())
            return out
        ptr = self._ptr[rows]
        low = np.flatnonzero(ptr + n > self._buf.shape[1])
        for r in low.tolist():
            self._refill(int(rows[r]))
        ptr = self._ptr[rows]
        idx = np.minimum(ptr[:, None] + np.arange(svc.shape[1]), self._buf.shape[1] - 1)
        out = np.take_along_axis(self._buf[rows], idx, axis=1)
        self._ptr[rows] = ptr + n
        return out

    def _refill(self, row: int) -> None:
        """Move ``row``'s unused start-up draws to the front and draw the rest afresh."""
        assert self._buf is not None
        size = self._buf.shape[1]
        rest = self._buf[row, self._ptr[row] :].copy()
        self._buf[row, : rest.size] = rest
        self._buf[row, rest.size :] = self._draw(row, [0] * (size - rest.size))
        self._ptr[row] = 0

    def _draw(self, row: int, services: list[int]) -> np.ndarray:
        """Start-up times of pods of ``services`` (in bind order) from ``row``'s stream."""
        out = np.empty(len(services))
        rng = self.rngs[row]
        if len(set(services)) == 1 and len(services) > 1:
            d = self.startup[services[0]]
            if d.cv == 0:
                out[:] = d.mean
            elif d.kind == "gamma":
                shape = 1.0 / (d.cv * d.cv)
                out[:] = rng.gamma(shape, d.mean / shape, size=len(services))
            else:
                s2 = math.log1p(d.cv * d.cv)
                z = rng.normal(-s2 / 2, math.sqrt(s2), size=len(services)).tolist()
                out[:] = [d.mean * math.exp(x) for x in z]
            return out
        for j, s in enumerate(services):
            d = self.startup[s]
            if d.cv == 0:
                out[j] = d.mean
            elif d.kind == "lognormal":
                s2 = math.log1p(d.cv * d.cv)
                out[j] = d.mean * math.exp(rng.normal(-s2 / 2, math.sqrt(s2)))
            else:
                shape = 1.0 / (d.cv * d.cv)
                out[j] = rng.gamma(shape, d.mean / shape)
        return out

    def _actuate(self, rows: np.ndarray, now: float) -> None:
        """Scale ``rows`` to ``self.desired`` now.

        Where a pod is deleted, the row's data plane must already be integrated to now.
        """
        self._account(rows, now)
        st = self.slot_state[rows]
        live = self.ready[rows] + (st != _EMPTY).sum(axis=2)
        diff = self.desired[rows] - live
        # scale down: not-ready pods newest first, then ready ones (they terminate); a
        # starting pod is bound, so it terminates too
        over = np.maximum(-diff, 0)
        for j in range(int(over.max(initial=0))):
            r_i, s_i = np.nonzero(over > j)
            rr = rows[r_i]
            occ = self.slot_state[rr, s_i] != _EMPTY
            k = np.argmax(np.where(occ, self.slot_seq[rr, s_i], -1), axis=1)
            has = occ[np.arange(rr.size), k]
            was_starting = has & (self.slot_state[rr, s_i, k] == _STARTING)
            self.slot_state[rr[has], s_i[has], k[has]] = _EMPTY
            self.slot_ready[rr[has], s_i[has], k[has]] = np.inf
            self.ready[rr[~has], s_i[~has]] -= 1
            stops = was_starting | ~has
            self.term[rr[stops], s_i[stops]] += 1
            self.term_until[rr[stops]] = now + self.grace
        # scale up: new pending pods in service order, then the scheduler
        under = np.maximum(diff, 0)
        if under.any():
            for s in range(self.n_services):
                need = under[:, s]
                for j in range(int(need.max())):
                    self._new_slots(rows[need > j], s, _PENDING)
            self._schedule(rows[under.any(axis=1)], now)

    def _grace_over(self, rows: np.ndarray, now: float) -> None:
        """Terminating pods of ``rows`` leave their nodes; pending pods may bind now."""
        self._account(rows, now)
        self.term[rows] = 0
        self.term_until[rows] = np.inf
        self._schedule(rows, now)

    def _become_ready(self, rows: np.ndarray, now: np.ndarray) -> None:
        hit = (self.slot_state[rows] == _STARTING) & (self.slot_ready[rows] <= now)
        self.ready[rows] += hit.sum(axis=2)
        st = self.slot_state[rows]
        st[hit] = _EMPTY
        self.slot_state[rows] = st
        sr = self.slot_ready[rows]
        sr[hit] = np.inf
        self.slot_ready[rows] = sr

    # ------------------------------------------------------------------ stepping
    def advance(self, desired: np.ndarray | None) -> BatchedFrame:
        """Scale, run one decision interval, return the frame scraped at its end.

        ``desired``: ``(N, S)`` replicas, clipped to the bounds and applied after
        ``actuation_delay_s`` (None: no change).
        """
        t0 = self.t
        t_end = min(t0 + self.dt, self.horizon)
        n = self.n_rows
        ta = np.full(n, np.inf)
        if desired is not None:
            desired = np.clip(np.asarray(desired, dtype=np.int64), self.r_min, self.r_max)
            changed = (desired != self.desired).any(axis=1)
            self.desired = np.where(changed[:, None], desired, self.desired)
            ta[changed] = t0 + self.delay
        # events in time order, each row on its own; the data plane is integrated up to an
        # event only where it changes serving capacity (as the scalar engine's hooks do)
        tau = np.full(n, t0)
        while True:
            starting = self.slot_state == _STARTING
            nxt_ready = np.where(starting, self.slot_ready, np.inf).min(axis=(1, 2))
            nxt_fault = self._next_fault()
            nxt = np.minimum(np.minimum(nxt_ready, ta), np.minimum(self.term_until, nxt_fault))
            todo = nxt < t_end
            if not todo.any():
                break
            is_ready = todo & (nxt_ready <= nxt)
            is_act = todo & (ta <= nxt)
            is_grace = todo & (self.term_until <= nxt)
            is_fault = todo & (nxt_fault <= nxt)
            now = np.where(todo, nxt, tau)
            # actuation first (data plane integrated only where it deletes a pod)
            rows_act = np.flatnonzero(is_act)
            if rows_act.size:
                at = float(nxt[rows_act[0]])
                live = self.ready[rows_act] + (self.slot_state[rows_act] != _EMPTY).sum(axis=2)
                deleting = rows_act[(self.desired[rows_act] < live).any(axis=1)]
                if deleting.size:  # before_change: bring the data plane up to now first
                    self._integrate(deleting, np.full(deleting.size, at))
                self._actuate(rows_act, at)
                ta[rows_act] = np.inf
            rows_ready = np.flatnonzero(is_ready)
            if rows_ready.size:
                self._integrate(rows_ready, now[rows_ready])
                self._become_ready(rows_ready, now[rows_ready][:, None, None])
            rows_fault = np.flatnonzero(is_fault)
            if rows_fault.size:  # the scalar engine's refresh: integrate, then change
                self._integrate(rows_fault, now[rows_fault])
                self._apply_faults(rows_fault, now[rows_fault])
            rows_grace = np.flatnonzero(is_grace)
            for when in np.unique(now[rows_grace]).tolist():
                self._grace_over(rows_grace[now[rows_grace] == when], when)
            tau = now
        self.t = t_end
        self._integrate(np.arange(n), np.full(n, t_end))
        self._account(np.arange(n), t_end)
        return self._scrape()

    @property
    def done(self) -> bool:
        """True once the horizon is reached."""
        return self.t >= self.horizon - 1e-9

    # ------------------------------------------------------------------ the fluid law
    def _integral(self, rows: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        """Expected arrivals in ``[t0, t1)`` per row (:meth:`TrafficModel.integral`)."""
        inv = 1.0 / self.res
        last = self._last_tick
        k1 = np.clip((t1 * inv).astype(np.int64), 0, last)
        k0 = np.clip((t0 * inv).astype(np.int64), 0, last)
        rl0 = self.rl[rows, k0]
        rl1 = self.rl[rows, k1]
        same = rl0 * (t1 - t0)
        diff = (self.cum[rows, k1] - self.cum[rows, k0]) + (
            rl1 * (t1 - k1 * self.res) - rl0 * (t0 - k0 * self.res)
        )
        return np.where(k0 == k1, same, diff)

    def _integrate(self, rows: np.ndarray, t1: np.ndarray) -> None:
        """Advance the data plane of ``rows`` to ``t1`` (one segment each)."""
        t0 = self.ft[rows]
        dt = t1 - t0
        keep = dt > 1e-12
        if not keep.all():
            rows, t0, t1, dt = rows[keep], t0[keep], t1[keep], dt[keep]
        if rows.size == 0:
            return
        self.ft[rows] = t1
        self._segment(rows, t0, dt)

    def _segment(self, rows: np.ndarray, t0: np.ndarray, dt: np.ndarray) -> None:
        """The scalar engine's ``_segment`` for ``rows`` (no shedding, no network faults).

        The same floating-point operations in the same order, rearranged only where that
        cannot change a result: ``gammaincc(k, T / theta)`` is computed once for ``p_to``
        and ``d1`` (the scalar engine computes it twice), ``gammaln(c + 1)`` once per
        segment, ``np.where`` on "has pods" skipped where every service has pods, and rows
        whose fixed point has converged leave the sweep loop.
        """
        sel: slice | np.ndarray = slice(None) if rows.size == self.n_rows else rows
        offered = self._integral(rows, t0, t0 + dt)
        lam_ext = offered / dt
        ready = self.ready[sel].astype(np.float64)
        c = ready * self.concurrency
        qcap = ready * self.qpp
        m_all = self.m0 * self.slowdown[sel]
        r1 = self.retries + 1.0
        b0 = self.backlog[sel]
        has_pods = c > 0
        f, drop, lam = self.f[sel], self.drop[sel], self.lam[sel]
        d1, d2 = self.d1[sel], self.d2[sel]
        prev = self.lam_ext_prev[sel]
        sweeps = np.where(prev <= 0, 2 * self.sweeps, self.sweeps)
        scale = (prev > 0) & (lam_ext > 0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            lam = np.where(scale[:, None], lam * (lam_ext / prev)[:, None], lam)
        self.lam_ext_prev[sel] = lam_ext
        dt2 = dt[:, None]
        gl_c1 = special.gammaln(c + 1.0)  # Erlang-B's log(c!), fixed within the segment
        fin = self.finite_timeout
        all_fin = bool(fin.all())
        fcols = np.flatnonzero(fin)
        t_fin = self.timeout[fcols]
        one_m_err = 1.0 - self.app_err
        half_scv1 = 1.0 + self.scv
        own_var_all = self.scv * m_all * m_all
        last: dict[str, np.ndarray] = {}
        active: np.ndarray | None = None  # None: every row
        it = 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            while True:
                a = active
                if a is None:
                    fa, dra, la, d1a, d2a = f, drop, lam, d1, d2
                    ca, qa, b0a, hp, dta, glc = c, qcap, b0, has_pods, dt2, gl_c1
                    lea = lam_ext[:, None]
                    m, own_var = m_all, own_var_all
                else:
                    fa, dra, la, d1a, d2a = f[a], drop[a], lam[a], d1[a], d2[a]
                    ca, qa, b0a, hp, dta, glc = c[a], qcap[a], b0[a], has_pods[a], dt2[a], gl_c1[a]
                    lea = lam_ext[a, None]
                    m, own_var = m_all[a], own_var_all[a]
                allp = bool(hp.all())
                prev_lam, prev_d1 = la, d1a
                fc = np.minimum(fa, 1.0 - 1e-9)
                fc_r1 = fc**r1
                attempts = (1.0 - fc_r1) / (1.0 - fc)
                bo = _backoff_mean(fc, self.retries, self.backoff)
                call_mean = attempts * ((1.0 - dra) * d1a + 0.0) + bo
                call_var = attempts * d2a
                ok_own = (1.0 - dra) * one_m_err
                if self.has_edges:
                    down_mean = call_mean @ self.em_T
                    down_var = call_var @ self.em_T + (call_mean**2) @ self.vm_T
                    inflow = lea * self.entry_vec + (la * ok_own) @ self.em
                else:
                    down_mean = 0.0
                    down_var = 0.0
                    inflow = lea * self.entry_vec
                la = inflow * attempts
                mu = ca / m if allp else np.where(hp, ca / m, 0.0)
                net = la - mu
                grown = b0a + net * dta
                b1 = np.clip(grown, 0.0, qa)
                if allp:
                    dropped_amt = np.maximum(grown - qa, 0.0)
                    dra = np.where(la > 0, dropped_amt / (la * dta), 0.0)
                else:
                    dropped_amt = np.where(hp, np.maximum(grown - qa, 0.0), la * dta)
                    dra = np.where(la > 0, dropped_amt / (la * dta), np.where(hp, 0.0, 1.0))
                b_avg = _mean_backlog(b0a, net, qa, dta)  # type: ignore[arg-type]  # elementwise
                pos = hp & (b_avg > 0)
                if pos.any():
                    delay = np.where(pos, b_avg / mu, 0.0)
                    delay_var = np.where(pos, b_avg / (mu * mu), 0.0)
                else:
                    delay = np.zeros_like(b_avg)
                    delay_var = delay
                lam_adm = la * (1.0 - dra)
                load = np.minimum(lam_adm * m, RHO_MAX * ca)
                cw = _erlang_c(ca, load, glc)
                wq = np.where(
                    hp & (load > 0) & (b_avg <= 0),
                    cw * m / (ca - load) * half_scv1 / 2.0,
                    0.0,
                )
                var_wq = np.where(cw > 0, 2.0 * wq * wq / cw - wq * wq, 0.0)
                x_mean = delay + wq + m + down_mean
                x_var = delay_var + var_wq + own_var + down_var
                kk, th = q.gamma_shape_scale(x_mean, x_var)
                # P(R > T) and E[min(R, T)] of the gamma law, sharing gammaincc(k, T / theta)
                if all_fin:
                    k_f, th_f = kk, th
                else:
                    k_f, th_f = kk[:, fcols], th[:, fcols]
                xs = t_fin / th_f
                sf = special.gammaincc(k_f, xs)
                mm = k_f * th_f * special.gammainc(k_f + 1.0, xs) + t_fin * sf
                if all_fin:
                    p_to, d1a = sf, mm
                else:
                    p_to = np.zeros_like(kk)
                    p_to[:, fcols] = sf
                    d1a = x_mean.copy()
                    d1a[:, fcols] = mm
                if not allp:
                    p_to = np.where(hp, p_to, 1.0)
                    d1a = np.where(hp, d1a, np.where(fin, self.timeout, 0.0))
                d2a = x_var * (1.0 - p_to)
                if self.has_edges:
                    phi = fc_r1[:, self._e_dst]
                    g = (1.0 - self._e_p) + self._e_p * (1.0 - phi) ** self._e_n * (
                        1.0 - self._e_frac * phi
                    )
                    ds_ok = np.ones_like(fa)
                    ds_ok[:, self._e_callers] = np.multiply.reduceat(g, self._e_starts, axis=1)
                    fnd = p_to + (1.0 - p_to) * (1.0 - one_m_err * ds_ok)
                else:
                    fnd = p_to + (1.0 - p_to) * (1.0 - one_m_err * 1.0)
                fnd = 1.0 - (1.0 - fnd) * 1.0
                fa = dra + (1.0 - dra) * fnd
                vals = {
                    "lam_adm": lam_adm,
                    "mu": mu,
                    "b1": b1,
                    "b_avg": b_avg,
                    "delay": delay,
                    "dropped_amt": dropped_amt,
                    "wq": wq,
                    "k": kk,
                    "th": th,
                    "f_nd": fnd,
                }
                if a is None:
                    f, drop, lam, d1, d2 = fa, dra, la, d1a, d2a
                    last = vals  # fresh arrays of this sweep: later sweeps write into them
                else:
                    f[a], drop[a], lam[a], d1[a], d2[a] = fa, dra, la, d1a, d2a
                    for name, v in vals.items():
                        last[name][a] = v
                it += 1
                exact = (la == prev_lam).all(axis=1) & (d1a == prev_d1).all(axis=1)
                close = (np.abs(la - prev_lam) <= FIXED_POINT_RTOL * np.abs(la)).all(axis=1) & (
                    np.abs(d1a - prev_d1) <= FIXED_POINT_RTOL * np.abs(d1a)
                ).all(axis=1)
                todo = ~(exact | close) & (it < (sweeps if a is None else sweeps[a]))
                if not todo.any():
                    break
                active = np.flatnonzero(todo) if a is None else a[todo]
            lam_adm, mu, b1, b_avg = last["lam_adm"], last["mu"], last["b1"], last["b_avg"]
            delay, wq, f_nd = last["delay"], last["wq"], last["f_nd"]
            # commit the segment
            admitted = lam_adm * dt2
            self.arrived[sel] += lam * dt2
            self.dropped[sel] += last["dropped_amt"]
            target = np.where(
                b_avg > 0,
                np.minimum(lam_adm, mu) * np.maximum(d1 - delay, 0.0) + b1,
                lam_adm * d1,
            )
            cap_to = np.where(fin, lam_adm * self.timeout, np.inf)
            target = np.where(has_pods, np.minimum(target, cap_to), 0.0)
            in_flight0 = self.in_flight[sel]
            in_flight1 = np.clip(target, 0.0, in_flight0 + admitted)
            finished = in_flight0 + admitted - in_flight1
            f_fin = np.where(has_pods, f_nd, 1.0)
            self.failed[sel] += finished * f_fin
            self.completed[sel] += finished * (1.0 - f_fin)
            self.in_flight[sel] = in_flight1
            served = np.minimum(lam_adm, mu)
            self.own_busy[sel] += served * m_all * dt2
            self.lq[sel] = np.where(has_pods, np.minimum(lam_adm * wq, qcap), 0.0) + b1
            self.backlog[sel] = np.where(has_pods, b1, 0.0)
            self.f[sel], self.drop[sel], self.lam[sel] = f, drop, lam
            self.d1[sel], self.d2[sel] = d1, d2
            # the segment's latency law (no shift: the scalar engine's _Segment delay is 0)
            w = np.where(np.isfinite(finished), finished, 0.0)
            k, th = last["k"], last["th"]
            quants = np.stack(
                [np.minimum(q.gamma_quantile(z, k, th), self.timeout) for z in (0.5, 0.99)],
                axis=1,
            )
        self.seg_n[sel] += 1
        self.seg_acc[sel] += w[:, None, :] * quants
        self.seg_w[sel] += w
        self.seg_last[sel] = quants
        self.seg_last_w[sel] = w

    # ------------------------------------------------------------------ scrape
    def _scrape(self) -> BatchedFrame:
        n, s_n = self.n_rows, self.n_services
        now = self.t
        dt = now - self.last_scrape
        F = FIELD_INDEX
        v = np.full((n, s_n, len(SERVICE_FIELDS)), np.nan)
        counters = np.stack([self.arrived, self.completed, self.failed, self.dropped], axis=2)
        ready = self.ready.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = counters - self.prev_counters
            finished = d[..., 1] + d[..., 2] + d[..., 3]
            err = np.where(finished > 0, (d[..., 2] + d[..., 3]) / finished, np.nan)
            if dt > 0:
                v[..., F["rps"]] = d[..., 0] / dt
                v[..., F["throughput"]] = d[..., 1] / dt
                busy = self.own_busy / dt
                usage = ready * self.cpu_idle + busy * (self.cpu_full - self.cpu_idle) / (
                    self.concurrency
                )
                v[..., F["cpu_usage"]] = usage
                v[..., F["cpu_util"]] = np.where(ready > 0, usage / (ready * self.cpu_req), np.nan)
            v[..., F["error_rate"]] = err
            v[..., F["error_budget_burn"]] = err / self.slo_err
            one = (self.seg_n == 1)[:, None, None]
            avg = self.seg_acc / self.seg_w[:, None, :]
            single = np.where(self.seg_last_w[:, None, :] > 1e-9, self.seg_last, np.nan)
            multi = np.where(self.seg_w[:, None, :] > 1e-9, avg, np.nan)
            vals = np.where(one, single, multi)
        vals = np.where((self.seg_n == 0)[:, None, None], np.nan, vals)
        v[..., F["p50"]] = vals[:, 0]
        v[..., F["p99"]] = vals[:, 1]
        v[..., F["cpu_request"]] = ready * self.cpu_req
        v[..., F["memory_usage_mb"]] = np.where(
            ready > 0, ready * self.mem_base + self.mem_per_req * self.in_flight, np.nan
        )
        v[..., F["memory_request_mb"]] = ready * self.mem_req
        v[..., F["replicas_desired"]] = self.desired
        v[..., F["replicas_ready"]] = ready
        v[..., F["replicas_pending"]] = (self.slot_state == _PENDING).sum(axis=2)
        v[..., F["replicas_starting"]] = (self.slot_state == _STARTING).sum(axis=2)
        v[..., F["restarts"]] = 0.0
        v[..., F["oom_kills"]] = 0.0
        v[..., F["backlog"]] = self.lq
        v[..., F["in_flight"]] = self.in_flight
        v[..., F["deploy_version"]] = 0.0
        if dt > 0:
            with np.errstate(invalid="ignore"):
                bad = (v[..., F["p99"]] > self.slo_p99) | (err > self.slo_err)
            self.violation_s += np.where(bad, dt, 0.0)
        v[..., F["slo_violation_s"]] = np.where(np.isnan(self.slo_p99), np.nan, self.violation_s)
        pending = (self.slot_state == _PENDING).sum(axis=(1, 2))
        starting = (self.slot_state == _STARTING).sum(axis=2)
        bound = self.ready + starting + self.term
        cl = np.full((n, len(CLUSTER_INDEX)), np.nan)
        C = CLUSTER_INDEX
        cl[:, C["nodes_ready"]] = self.n_nodes
        cl[:, C["nodes_provisioning"]] = 0.0
        cl[:, C["pods_unschedulable"]] = pending
        cl[:, C["cost_rate_per_hour"]] = self.node_cost_rate + bound @ self.pod_cost
        cl[:, C["shed_fraction"]] = 0.0
        self._account(np.arange(n), now)
        cl[:, C["allocated_cost_total"]] = self.core_s / 3600.0 * self.core_price + self.pod_cost_s
        self.prev_counters = counters
        self.last_scrape = now
        self.own_busy = np.zeros((n, s_n))
        self.seg_n[:] = 0
        self.seg_w[:] = 0.0
        self.seg_acc[:] = 0.0
        return BatchedFrame(now, v, cl)
