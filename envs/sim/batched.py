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
* the pods and nodes: a pod table per row (state, service, creation order, node, ready
  time), the scalar scheduler (every pending pod, oldest first, to the least-allocated node
  with room), scale-ups and scale-downs service by service (not-ready pods deleted newest
  first, then ready ones, which keep their node for the grace period), and the start-up
  times drawn from the row's control-plane stream in the scalar control plane's order;
* the scrape: rates, errors, p50 and p99 (finished-weighted over the interval's segments),
  CPU, memory, replicas, backlog, SLO violation seconds, and the allocated cost.

What it leaves out, so that results differ from the scalar engine where these matter:

* **incidents**: only ``flash_crowd`` (a traffic change), ``slow_dependency`` (a service
  time change, from its onset to its end, a segment boundary at each), ``node_failure`` (the
  node's pods lost, replacements scheduled on the other nodes), ``cpu_hog`` (the pods on a
  node slower) and ``pod_crash`` without ``crash_loop`` (containers restarting under
  CrashLoopBackOff) are supported; any other fault kind raises
  :class:`UnsupportedScenarioError` naming it;
* **escape from retry-sustained overload** (the scalar engine's Kramers hazard): a row held
  in overload by retries alone stays there until its capacity is raised;
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
from envs.scenarios.schema import (
    FAULT_KINDS,
    CpuHogFault,
    NodeFailureFault,
    PodCrashFault,
    Scenario,
    SlowDependencyFault,
)
from envs.sim import queueing as q
from envs.sim.control.objects import BACKOFF_INITIAL_S, BACKOFF_MAX_S, BACKOFF_RESET_S
from envs.sim.faults import traffic_with_faults
from envs.sim.fluid import FIXED_POINT_RTOL, RHO_MAX, _backoff_mean, _depth, _mean_backlog
from envs.sim.traffic import TrafficModel

SUPPORTED_FAULTS: tuple[str, ...] = (
    "flash_crowd",
    "slow_dependency",
    "cpu_hog",
    "node_failure",
    "pod_crash",
)
"""Fault kinds the batched core simulates, as the scalar engine does: a flash crowd changes
the traffic, a slow dependency a service time, a node failure the capacity (its pods are
lost and replaced on the other nodes where they fit), a pod crash (without ``crash_loop``)
the capacity until the container restarts under CrashLoopBackOff, a CPU hog the service
time of the pods on its node."""
UNSUPPORTED_FAULTS: tuple[str, ...] = tuple(k for k in FAULT_KINDS if k not in SUPPORTED_FAULTS)

_EMPTY, _PENDING, _STARTING, _READY, _TERMINATING, _BACKOFF = 0, 1, 2, 3, 4, 5
_SLOW_START, _SLOW_STOP, _NODE_FAILS, _PODS_CRASH, _HOG_START, _HOG_STOP = 0, 1, 2, 3, 4, 5
"""Kinds of a fault event."""
"""States of a pod slot (``_EMPTY``: no pod)."""
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
        kinds: list[str] = sorted({f.kind for f in sc.faults if f.kind not in SUPPORTED_FAULTS})
        if any(isinstance(f, PodCrashFault) and f.crash_loop for f in sc.faults):
            kinds.append("pod_crash with crash_loop: true")
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
        if sc.traffic.resolution_s != base.traffic.resolution_s:
            raise UnsupportedScenarioError(
                f"scenario {sc.name!r}: traffic.resolution_s differs from {base.name!r}'s; the "
                "scenarios of one batch need one traffic tick"
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
        # every live pod plus those terminating (all deleted at one actuation, at most)
        self.slots = 2 * int(np.maximum(self.r_max, self.r_init).sum())
        self.node_cpu = float(sc.cluster.node_cpu)
        self._cpu_s = self.cpu_req[None, :, None] - 1e-9
        self._mem_s = self.mem_req[None, :, None] - 1e-9
        self.node_mem = float(sc.cluster.node_memory_mb)
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
        self.cost_per_node = cl.cost_per_node_hour
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
        self.starting = np.zeros((n, s_n), dtype=np.int64)
        self.pending = np.zeros((n, s_n), dtype=np.int64)
        self.backoff_n = np.zeros((n, s_n), dtype=np.int64)  # crashed, waiting to restart
        self.restarts = np.zeros((n, s_n), dtype=np.int64)
        self.term_until = np.full(n, np.inf)
        # the pod table: one slot per pod (state, service, uid, node, ready time, the order
        # of its termination), as the scalar control plane's pod objects
        self.p_state = np.zeros((n, k), dtype=np.int8)
        self.p_svc = np.zeros((n, k), dtype=np.int64)
        self.p_uid = np.zeros((n, k), dtype=np.int64)
        self.p_node = np.full((n, k), -1, dtype=np.int64)
        self.p_ready = np.full((n, k), np.inf)
        self.p_term = np.zeros((n, k), dtype=np.int64)
        self.p_started = np.zeros((n, k))  # when the container last became ready
        self.p_backoff = np.zeros((n, k))  # CrashLoopBackOff delay, seconds (0: none yet)
        self.p_restart = np.full((n, k), np.inf)  # when a crashed container restarts
        self.p_order = np.zeros((n, k), dtype=np.int64)  # order of its restart timer
        self.uid = np.zeros(n, dtype=np.int64)
        self.node_cpu_used = np.zeros((n, self.n_nodes))
        self.node_mem_used = np.zeros((n, self.n_nodes))
        self._changed = np.zeros((n, s_n), dtype=bool)
        self._target = np.zeros((n, s_n), dtype=np.int64)
        self._hi = 0  # pod slots at and beyond this one were never used
        self.core_s = np.zeros(n)  # requested core-seconds of bound pods
        self.pod_cost_s = np.zeros(n)  # pod surcharge, currency
        self.acct_t = np.zeros(n)
        self.violation_s = z()
        self.slowdown = np.ones((n, s_n))  # service slowdown (slow_dependency faults)
        self.fault_t = np.full((n, 1), np.inf)  # per row: fault events in time order
        self.fault_s = np.zeros((n, 1), dtype=np.int64)
        self.fault_x = np.ones((n, 1))
        self.fault_kind = np.zeros((n, 1), dtype=np.int64)
        self.fault_ptr = np.zeros(n, dtype=np.int64)
        self.node_alive = np.ones((n, self.n_nodes), dtype=bool)
        self.node_slow = np.ones((n, self.n_nodes))  # noisy-neighbour slowdown (cpu_hog)
        self.hogged = np.zeros(n, dtype=bool)  # a node of the row is slowed
        self.in_service = z()
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
        # the initial pods, in service order: each bound at once where a node has room
        # (and ready at t = 0), else pending
        self.desired[:] = self.r_init
        every = np.arange(n)
        for s in range(self.n_services):
            for _ in range(int(self.r_init[s])):
                slot = self._create(every, s)
                node = self._pick_node(every, s)
                fits = node >= 0
                self._bind(every[fits], slot[fits], s, node[fits])
                self.p_state[every[fits], slot[fits]] = _READY
                self.pending[fits, s] -= 1
                self.ready[fits, s] += 1
        self.base_cost_rate = np.maximum(self.allocated_cost_rate(), 1e-9)
        return self._scrape()

    def _fault_events(self, scenarios: Sequence[Scenario]) -> None:
        """Each row's fault events (slow dependencies, node failures) in the scalar order.

        By time; at one time, starts (timers set at ``t = 0``, in fault order) before stops
        (timers set at their fault's onset, earliest first).
        """
        per_row: list[list[tuple[float, int, int, float, int, int]]] = []
        for sc in scenarios:
            onset = {i: float(f.at_s) for i, f in enumerate(sc.faults)}
            # (time, stop?, fault, factor, target service or node, kind)
            ev: list[tuple[float, int, int, float, int, int]] = []
            for i, f in enumerate(sc.faults):
                if isinstance(f, SlowDependencyFault):
                    s = self.names.index(f.service)
                    x = float(f.latency_factor)
                    ev.append((float(f.at_s), 0, i, x, s, _SLOW_START))
                    if f.duration_s is not None:
                        end = float(f.at_s) + float(f.duration_s)
                        ev.append((end, 1, i, x, s, _SLOW_STOP))
                elif isinstance(f, NodeFailureFault):
                    ev.append((float(f.at_s), 0, i, 1.0, f.node, _NODE_FAILS))
                elif isinstance(f, CpuHogFault):
                    x = float(f.slowdown)
                    ev.append((float(f.at_s), 0, i, x, f.node, _HOG_START))
                    if f.duration_s is not None:
                        end = float(f.at_s) + float(f.duration_s)
                        ev.append((end, 1, i, x, f.node, _HOG_STOP))
                elif isinstance(f, PodCrashFault):
                    s = self.names.index(f.service)
                    ev.append((float(f.at_s), 0, i, float(f.pods), s, _PODS_CRASH))
            per_row.append(
                sorted(ev, key=lambda e: (e[0], e[1], onset[e[2]] if e[1] else 0.0, e[2]))
            )
        width = max(1, max(len(e) for e in per_row))
        n = self.n_rows
        self.fault_t = np.full((n, width + 1), np.inf)
        self.fault_s = np.zeros((n, width + 1), dtype=np.int64)
        self.fault_x = np.ones((n, width + 1))
        self.fault_kind = np.zeros((n, width + 1), dtype=np.int64)
        for r, ev in enumerate(per_row):
            for j, (t, _stop, _i, x, tgt, kind) in enumerate(ev):
                self.fault_t[r, j], self.fault_s[r, j], self.fault_x[r, j] = t, tgt, x
                self.fault_kind[r, j] = kind
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
            kind = self.fault_kind[rows, p]
            slow = (kind == _SLOW_START) | (kind == _SLOW_STOP)
            rs, ss, xs = rows[slow], s[slow], x[slow]
            cur = self.slowdown[rs, ss]
            self.slowdown[rs, ss] = np.where(kind[slow] == _SLOW_STOP, cur / xs, cur * xs)
            self.fault_ptr[rows] += 1
            hog = (kind == _HOG_START) | (kind == _HOG_STOP)
            rh, nh, xh = rows[hog], s[hog], x[hog]
            cur = self.node_slow[rh, nh]
            self.node_slow[rh, nh] = np.where(kind[hog] == _HOG_STOP, cur / xh, cur * xh)
            self.hogged[rh] = (self.node_slow[rh] != 1.0).any(axis=1)
            fails = kind == _NODE_FAILS
            for when in np.unique(now[fails]).tolist():
                at = fails & (now == when)
                self._fail_node(rows[at], s[at], when)
            crash = kind == _PODS_CRASH
            for when in np.unique(now[crash]).tolist():
                at = crash & (now == when)
                self._crash(rows[at], s[at], x[at].astype(np.int64), when)

    def _crash(self, rows: np.ndarray, svc: np.ndarray, pods: np.ndarray, now: float) -> None:
        """The first ``pods`` ready pods (uid order) of ``svc`` crash (the scalar ``crash``).

        The requests in service on each fail; it waits in CrashLoopBackOff (10 s doubling to
        300 s, reset after 600 s of running), then restarts at half the start-up time.
        """
        self._account(rows, now)
        hi = self._hi
        for j in range(int(pods.max(initial=0))):
            st = self.p_state[rows, :hi]
            mine = (st == _READY) & (self.p_svc[rows, :hi] == svc[:, None])
            key = np.where(mine, self.p_uid[rows, :hi], np.iinfo(np.int64).max)
            k = np.argmin(key, axis=1)
            ok = (j < pods) & mine[np.arange(rows.size), k]
            r, k, s = rows[ok], k[ok], svc[ok]
            if r.size == 0:
                break
            frac = 1.0 / np.maximum(self.ready[r, s], 1)
            gone = np.minimum(self.in_service[r, s] * frac, self.in_flight[r, s])
            self.in_flight[r, s] -= gone
            self.in_service[r, s] -= gone
            self.failed[r, s] += gone
            b = np.where(now - self.p_started[r, k] >= BACKOFF_RESET_S, 0.0, self.p_backoff[r, k])
            b = np.where(b == 0, BACKOFF_INITIAL_S, np.minimum(2 * b, BACKOFF_MAX_S))
            self.p_backoff[r, k] = b
            np.add.at(self.restarts, (r, s), 1)
            self.ready[r, s] -= 1
            self.backoff_n[r, s] += 1
            self.p_state[r, k] = _BACKOFF
            self.p_restart[r, k] = now + b
            self.p_order[r, k] = self.uid[r]  # restart timers fire in the order they were set
            self.uid[r] += 1

    def _restart(self, rows: np.ndarray, now: float) -> None:
        """Crashed containers of ``rows`` due now start again (half the start-up time)."""
        hi = self._hi
        due = (self.p_state[rows, :hi] == _BACKOFF) & (self.p_restart[rows, :hi] <= now)
        n_due = due.sum(axis=1)
        order = np.argsort(np.where(due, self.p_order[rows, :hi], np.iinfo(np.int64).max), axis=1)
        width = int(n_due.max(initial=0))
        pods = order[:, :width]
        take = np.arange(width) < n_due[:, None]
        svc = self.p_svc[rows[:, None], pods]
        delays = 0.5 * self._draws(rows, svc, n_due)  # exact: a power-of-two scale
        rr = np.broadcast_to(rows[:, None], pods.shape)[take]
        kk, ss = pods[take], svc[take]
        self.p_state[rr, kk] = _STARTING
        self.p_restart[rr, kk] = np.inf
        self.p_ready[rr, kk] = now + delays[take]
        np.subtract.at(self.backoff_n, (rr, ss), 1)
        np.add.at(self.starting, (rr, ss), 1)

    def _fail_node(self, rows: np.ndarray, node: np.ndarray, now: float) -> None:
        """The scalar control plane's ``fail_node`` on ``node[i]`` of each of ``rows``.

        The node's pods are lost (in uid order; the requests in service on a ready one
        fail), the node is gone, every service is reconciled (replacements scheduled on the
        other nodes), then the lost pods leave their node.
        """
        self._account(rows, now)
        alive = self.node_alive[rows, node]
        rows, node = rows[alive], node[alive]
        if rows.size == 0:
            return
        hi = self._hi
        st = self.p_state[rows, :hi]
        on = (self.p_node[rows, :hi] == node[:, None]) & (
            (st == _STARTING) | (st == _READY) | (st == _BACKOFF)
        )
        n_on = on.sum(axis=1)
        order = np.argsort(np.where(on, self.p_uid[rows, :hi], np.iinfo(np.int64).max), axis=1)
        lost: list[tuple[np.ndarray, np.ndarray]] = []
        for j in range(int(n_on.max(initial=0))):
            live = np.flatnonzero(j < n_on)
            r, k = rows[live], order[live, j]
            svc = self.p_svc[r, k]
            ready = self.p_state[r, k] == _READY
            rr, sr = r[ready], svc[ready]
            frac = 1.0 / np.maximum(self.ready[rr, sr], 1)
            gone = np.minimum(self.in_service[rr, sr] * frac, self.in_flight[rr, sr])
            self.in_flight[rr, sr] -= gone
            self.in_service[rr, sr] -= gone
            self.failed[rr, sr] += gone
            self.ready[rr, sr] -= 1
            was = self.p_state[r, k]
            self.starting[r, svc] -= was == _STARTING
            self.backoff_n[r, svc] -= was == _BACKOFF
            self.term[r, svc] += 1
            self.p_state[r, k] = _TERMINATING
            self.p_ready[r, k] = np.inf
            self.p_restart[r, k] = np.inf
            lost.append((r, k))
        self.node_alive[rows, node] = False
        for s in range(self.n_services):
            diff = self.desired[rows, s] - self._live(rows)[:, s]
            for j in range(int(diff.max(initial=0))):
                self._create(rows[diff > j], s)
            if (diff > 0).any():
                self._schedule(rows[diff > 0], now)
        for r, k in lost:  # their terminations finish at once (no grace for a lost pod)
            self._unbind(r, k)
            self._schedule(r, now)

    def _latency_factor(self, rows: np.ndarray, sel: slice | np.ndarray) -> np.ndarray:
        """The scalar serving effects' latency factor of ``rows`` (``(R, S)``).

        The mean node slowdown of each service's ready pods (1 with none) times the
        service's own slowdown.
        """
        lf = self.slowdown[sel]
        hog = self.hogged[rows]
        if not hog.any():
            return lf
        lf = lf.copy()
        h = rows[hog]
        hi = self._hi
        ready = self.p_state[h, :hi] == _READY
        r, k = np.nonzero(ready)
        total = np.zeros((h.size, self.n_services))
        np.add.at(total, (r, self.p_svc[h[r], k]), 1.0 * self.node_slow[h[r], self.p_node[h[r], k]])
        n = self.ready[h]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(n > 0, total / n, 1.0)
        lf[hog] = mean * self.slowdown[h]
        return lf

    # ------------------------------------------------------------------ pods
    def _create(self, rows: np.ndarray, s: int) -> np.ndarray:
        """A new pending pod of service ``s`` in each of ``rows``; returns their slots."""
        free = self.p_state[rows] == _EMPTY
        k = np.argmax(free, axis=1)
        if not free[np.arange(rows.size), k].all():  # pragma: no cover - slots sized for it
            raise RuntimeError("batched core: the pod table is full")
        self._hi = max(self._hi, int(k.max(initial=-1)) + 1)
        self.p_state[rows, k] = _PENDING
        self.p_svc[rows, k] = s
        self.p_uid[rows, k] = self.uid[rows]
        self.p_node[rows, k] = -1
        self.uid[rows] += 1
        self.pending[rows, s] += 1
        return k

    def _pick_node(self, rows: np.ndarray, s: int | np.ndarray) -> np.ndarray:
        """The scalar scheduler's node for a pod of ``s`` in each row (-1: none).

        The least-allocated (CPU) node with room for the pod's requests, the first such in
        node order.
        """
        cpu = self.cpu_req[s]
        mem = self.mem_req[s]
        if isinstance(s, np.ndarray):
            cpu, mem = cpu[:, None], mem[:, None]
        used_c, used_m = self.node_cpu_used[rows], self.node_mem_used[rows]
        fits = (self.node_cpu - used_c >= cpu - 1e-9) & (self.node_mem - used_m >= mem - 1e-9)
        fits &= self.node_alive[rows]
        score = np.where(fits, used_c / self.node_cpu, np.inf)
        best = np.argmin(score, axis=1)
        return np.where(fits.any(axis=1), best, -1)

    def _fits(self, rows: np.ndarray) -> np.ndarray:
        """``(R, S)``: whether a pod of each service fits on some node of each row now."""
        return (
            (self.node_cpu - self.node_cpu_used[rows][:, None, :] >= self._cpu_s)
            & (self.node_mem - self.node_mem_used[rows][:, None, :] >= self._mem_s)
            & self.node_alive[rows][:, None, :]
        ).any(axis=2)

    def _bind(self, rows: np.ndarray, k: np.ndarray, s: int | np.ndarray, node: np.ndarray) -> None:
        self.p_node[rows, k] = node
        self.node_cpu_used[rows, node] += self.cpu_req[s]
        self.node_mem_used[rows, node] += self.mem_req[s]

    def bound_cores(self) -> np.ndarray:
        """``(N,)`` CPU cores requested by the bound pods (ready, starting, terminating)."""
        return (self.ready + self.starting + self.term + self.backoff_n) @ self.cpu_req

    def allocated_cost_rate(self) -> np.ndarray:
        """``(N,)`` spend per hour attributed to the bound pods (their CPU requests)."""
        bound = self.ready + self.starting + self.term + self.backoff_n
        return bound @ self.cpu_req * self.core_price + bound @ self.pod_cost

    def _account(self, rows: np.ndarray, now: float) -> None:
        """Integrate the cost meters of ``rows`` up to ``now``."""
        if rows.size == 0:
            return
        bound = self.ready[rows] + self.starting[rows] + self.term[rows] + self.backoff_n[rows]
        span = now - self.acct_t[rows]
        self.core_s[rows] += (bound @ self.cpu_req) * span
        self.pod_cost_s[rows] += (bound @ self.pod_cost) * span / 3600.0
        self.acct_t[rows] = now

    def allocated_cost(self) -> np.ndarray:
        """``(N,)`` cumulative spend attributed to the pods (as the scalar billing)."""
        self._account(np.arange(self.n_rows), self.t)
        return self.core_s / 3600.0 * self.core_price + self.pod_cost_s

    def _schedule(self, rows: np.ndarray, now: float) -> None:
        """The scalar scheduler on ``rows``.

        Every pending pod, oldest first, is bound to the least-allocated node with room
        (skipped while none has) and started.
        """
        # cheap exits first: rows with a pending pod of a service that fits on some node
        waiting = self.pending[rows] > 0
        rows, waiting = rows[waiting.any(axis=1)], waiting[waiting.any(axis=1)]
        if rows.size == 0:
            return
        rows = rows[(waiting & self._fits(rows)).any(axis=1)]
        if rows.size == 0:
            return
        hi = self._hi
        pend = self.p_state[rows, :hi] == _PENDING
        n_pend = pend.sum(axis=1)
        self._account(rows, now)
        width = int(n_pend.max())
        uid = np.where(pend, self.p_uid[rows, :hi], np.iinfo(np.int64).max)
        order = np.argsort(uid, axis=1, kind="stable")[:, :width]
        valid = np.arange(width) < n_pend[:, None]
        svc_o = self.p_svc[rows[:, None], order]
        bound = np.zeros(order.shape, dtype=bool)
        ptr = np.zeros(rows.size, dtype=np.int64)
        live = np.arange(rows.size)
        while live.size:
            # binding only takes room: a service with no node to fit now never fits later in
            # this pass, so its pods are skipped (as the scalar scheduler skips them one by one)
            r = rows[live]
            fit = self._fits(r)
            cand = (
                valid[live]
                & (np.arange(width) >= ptr[live, None])
                & np.take_along_axis(fit, svc_o[live], axis=1)
            )
            has = cand.any(axis=1)
            live, r, cand = live[has], r[has], cand[has]
            if live.size == 0:
                break
            j = np.argmax(cand, axis=1)
            k = order[live, j]
            svc = svc_o[live, j]
            node = self._pick_node(r, svc)
            self._bind(r, k, svc, node)
            self.p_state[r, k] = _STARTING
            self.pending[r, svc] -= 1
            self.starting[r, svc] += 1
            bound[live, j] = True
            ptr[live] = j + 1
        if not bound.any():
            return
        # start-up times in bind order (= uid order), from each row's stream
        has = bound.any(axis=1)
        rows, order, bound = rows[has], order[has], bound[has]
        n_bind = bound.sum(axis=1)
        rank = np.argsort(~bound, axis=1, kind="stable")  # bound first, in uid order
        pods = np.take_along_axis(order, rank, axis=1)
        delays = self._draws(rows, self.p_svc[rows[:, None], pods], n_bind)
        take = np.arange(pods.shape[1]) < n_bind[:, None]
        rr = np.broadcast_to(rows[:, None], pods.shape)[take]
        self.p_ready[rr, pods[take]] = now + delays[take]

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

    def _live(self, rows: np.ndarray) -> np.ndarray:
        return self.ready[rows] + self.starting[rows] + self.pending[rows] + self.backoff_n[rows]

    def _actuate(self, rows: np.ndarray, now: float) -> None:
        """Scale ``rows`` to ``self.desired`` now.

        Service by service, as the scalar control plane carries out one ``Scale`` per changed
        service: create pods and schedule, or delete not-ready pods newest first, then ready
        ones newest first.

        Where a pod is deleted, the row's data plane must already be integrated to now.
        """
        self._account(rows, now)
        big = np.int64(1) << 40
        for s in range(self.n_services):
            r = rows[self._changed[rows, s]]
            if r.size == 0:
                continue
            diff = self.desired[r, s] - self._live(r)[:, s]
            for j in range(int(diff.max(initial=0))):
                self._create(r[diff > j], s)
            up = r[diff > 0]
            if up.size:
                self._schedule(up, now)
            for j in range(int((-diff).max(initial=0))):
                d = r[-diff > j]
                hi = self._hi
                st = self.p_state[d, :hi]
                mine = (self.p_svc[d, :hi] == s) & (st != _EMPTY) & (st != _TERMINATING)
                key = np.where(mine, (st != _READY) * big + self.p_uid[d, :hi], -1)
                k = np.argmax(key, axis=1)
                old = self.p_state[d, k]
                pend = old == _PENDING
                self.p_state[d[pend], k[pend]] = _EMPTY
                self.pending[d[pend], s] -= 1
                t = ~pend
                dt_, kt = d[t], k[t]
                self.ready[dt_, s] -= old[t] == _READY
                self.starting[dt_, s] -= old[t] == _STARTING
                self.backoff_n[dt_, s] -= old[t] == _BACKOFF
                self.p_restart[dt_, kt] = np.inf
                self.term[dt_, s] += 1
                self.p_state[dt_, kt] = _TERMINATING
                self.p_ready[dt_, kt] = np.inf
                self.p_term[dt_, kt] = self.uid[dt_]  # termination order (a fresh counter)
                self.uid[dt_] += 1
                self.term_until[dt_] = now + self.grace

    def _grace_over(self, rows: np.ndarray, now: float) -> None:
        """Terminating pods of ``rows`` leave their nodes, in termination order.

        After each, the scheduler runs (the scalar engine's ``_finish_termination``).
        """
        self._account(rows, now)
        self.term_until[rows] = np.inf
        hi = self._hi
        term = self.p_state[rows, :hi] == _TERMINATING
        waiting = self.pending[rows].any(axis=1)
        # rows with no pending pod: every terminating pod leaves at once (nothing to schedule)
        quiet = rows[~waiting]
        if quiet.size:
            r, k = np.nonzero(term[~waiting])
            self._unbind(quiet[r], k)
        rows, term = rows[waiting], term[waiting]
        n_term = term.sum(axis=1)
        order = np.argsort(np.where(term, self.p_term[rows, :hi], np.iinfo(np.int64).max), axis=1)
        for j in range(int(n_term.max(initial=0))):
            live = np.flatnonzero(j < n_term)
            r = rows[live]
            self._unbind(r, order[live, j])
            self._schedule(r, now)

    def _unbind(self, r: np.ndarray, k: np.ndarray) -> None:
        """Terminating pods ``(r, k)`` (one per row) leave their nodes and the table."""
        svc, node = self.p_svc[r, k], self.p_node[r, k]
        np.subtract.at(self.node_cpu_used, (r, node), self.cpu_req[svc])
        np.subtract.at(self.node_mem_used, (r, node), self.mem_req[svc])
        self.p_state[r, k] = _EMPTY
        self.p_node[r, k] = -1
        np.subtract.at(self.term, (r, svc), 1)

    def _become_ready(self, rows: np.ndarray, now: np.ndarray) -> None:
        hi = self._hi
        hit = (self.p_state[rows, :hi] == _STARTING) & (self.p_ready[rows, :hi] <= now[:, None])
        r, k = np.nonzero(hit)
        rr = rows[r]
        svc = self.p_svc[rr, k]
        np.add.at(self.ready, (rr, svc), 1)
        np.subtract.at(self.starting, (rr, svc), 1)
        self.p_state[rr, k] = _READY
        self.p_ready[rr, k] = np.inf
        self.p_started[rr, k] = now[r]

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
            # the Scale actions reach the control plane at ta (until then, a fault that
            # reconciles, such as a node failure, works towards the old counts)
            self._target = desired
            self._changed = np.asarray(desired != self.desired, dtype=bool)
            changed = np.asarray(self._changed.any(axis=1), dtype=bool)
            ta[changed] = t0 + self.delay
        # events in time order, each row on its own; the data plane is integrated up to an
        # event only where it changes serving capacity (as the scalar engine's hooks do)
        tau = np.full(n, t0)
        while True:
            nxt_ready = self.p_ready[:, : max(self._hi, 1)].min(axis=1)  # inf unless starting
            nxt_restart = self.p_restart[:, : max(self._hi, 1)].min(axis=1)
            nxt_fault = self._next_fault()
            nxt = np.minimum(np.minimum(nxt_ready, ta), np.minimum(self.term_until, nxt_fault))
            nxt = np.minimum(nxt, nxt_restart)
            todo = nxt < t_end
            if not todo.any():
                break
            is_ready = todo & (nxt_ready <= nxt)
            is_act = todo & (ta <= nxt)
            is_grace = todo & (self.term_until <= nxt)
            is_fault = todo & (nxt_fault <= nxt)
            is_restart = todo & (nxt_restart <= nxt)
            now = np.where(todo, nxt, tau)
            # actuation first (data plane integrated only where it deletes a pod)
            rows_act = np.flatnonzero(is_act)
            if rows_act.size:
                at = float(nxt[rows_act[0]])
                self.desired[rows_act] = np.where(
                    self._changed[rows_act], self._target[rows_act], self.desired[rows_act]
                )
                live = self._live(rows_act)
                deleting = rows_act[(self.desired[rows_act] < live).any(axis=1)]
                if deleting.size:  # before_change: bring the data plane up to now first
                    self._integrate(deleting, np.full(deleting.size, at))
                self._actuate(rows_act, at)
                ta[rows_act] = np.inf
            rows_ready = np.flatnonzero(is_ready)
            if rows_ready.size:
                self._integrate(rows_ready, now[rows_ready])
                self._become_ready(rows_ready, now[rows_ready])
            rows_fault = np.flatnonzero(is_fault)
            if rows_fault.size:  # the scalar engine's refresh: integrate, then change
                self._integrate(rows_fault, now[rows_fault])
                self._apply_faults(rows_fault, now[rows_fault])
            rows_restart = np.flatnonzero(is_restart)
            for when in np.unique(now[rows_restart]).tolist():
                self._restart(rows_restart[now[rows_restart] == when], when)
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
        m_all = self.m0 * self._latency_factor(rows, sel)
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
            self.in_service[sel] = np.minimum(served * m_all, c)
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
        v[..., F["replicas_pending"]] = self.pending
        v[..., F["replicas_starting"]] = self.starting
        v[..., F["restarts"]] = self.restarts
        v[..., F["oom_kills"]] = 0.0
        v[..., F["backlog"]] = self.lq
        v[..., F["in_flight"]] = self.in_flight
        v[..., F["deploy_version"]] = 0.0
        if dt > 0:
            with np.errstate(invalid="ignore"):
                bad = (v[..., F["p99"]] > self.slo_p99) | (err > self.slo_err)
            self.violation_s += np.where(bad, dt, 0.0)
        v[..., F["slo_violation_s"]] = np.where(np.isnan(self.slo_p99), np.nan, self.violation_s)
        pending = self.pending.sum(axis=1)
        bound = self.ready + self.starting + self.term + self.backoff_n
        cl = np.full((n, len(CLUSTER_INDEX)), np.nan)
        C = CLUSTER_INDEX
        alive = self.node_alive.sum(axis=1)
        cl[:, C["nodes_ready"]] = alive
        cl[:, C["nodes_provisioning"]] = 0.0
        cl[:, C["pods_unschedulable"]] = pending
        cl[:, C["cost_rate_per_hour"]] = alive * self.cost_per_node + bound @ self.pod_cost
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
