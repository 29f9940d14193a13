"""Benchmark suite ``scale``: evaluation throughput serial, on the local pool and on Ray.

``opsworld bench scale`` runs the same holdout evaluation (``scale.policy`` on every entry of
``scale.suite`` x ``seeds`` replicates, fluid fidelity: the tasks of ``opsworld evaluate``,
:mod:`agents.evaluation.fanout`) five ways in one process, in ``repeats`` rounds (each
round runs every way once, starting one way later than the one before, so that a change of
the machine's load does not always hit the same way); each figure is the best round's:

* ``serial``: in this process (:func:`agents.parallel.serial_map`);
* ``local_1``, ``local_2``: a spawned process pool of 1 and 2 workers
  (:func:`agents.parallel.pool_map`), pool start-up included (every call starts its pool);
* ``ray_1``, ``ray_2``: Ray tasks, at most 1 and 2 in flight, on a local Ray started once
  with 2 CPUs (its start-up, ``ray_init_s``, is reported apart: a process pays it once).

Figures, all from steady-state rates (``<way>_runs_per_s``, :func:`steady_rate`: every
worker's first run left out, the others over the span they took in the workers, so neither
the start-up of a pool or of Ray's worker processes nor first-run imports are in it; the
start-up, from the call to the first run's start, is ``<way>_startup_s``, and the wall-clock
rates are in the details): parallel
efficiency at 2 workers (``rps_2 / (2 x rps_serial)``) for the pool
and for Ray (target >= 0.9); Ray's overhead against the local pool at 2 workers
(``1 - rps_ray_2 / rps_local_2``, target <= 0.10); per-task overhead at one worker
(``1 / rps_1 - 1 / rps_serial``) and of a no-op task (``noop_tasks`` calls of ``abs``,
wall / calls). Details: the bytes one task, the shared object and one result take
when pickled (what goes through the object store), the scores of every way (identical, or
the benchmark fails) and the load average before and after (other processes on the machine
lower every parallel figure).
"""

from __future__ import annotations

import math
import os
import pickle
import time
from typing import Any

from rich.console import Console

from agents.bench.config import BenchConfig
from agents.evaluation.evaluate import resolve_policy
from agents.evaluation.fanout import EvalShared, EvalTask, eval_task, plan
from agents.evaluation.suite import RunScore
from agents.parallel import Backend, ensure_ray, pool_map, serial_map
from agents.run_config import RunConfigError as ConfigError
from envs.scenarios.suites import SuiteError, load_suite

WAYS: tuple[tuple[str, Backend | None, int], ...] = (
    ("serial", None, 1),
    ("local_1", Backend.local, 1),
    ("local_2", Backend.local, 2),
    ("ray_1", Backend.ray, 1),
    ("ray_2", Backend.ray, 2),
)
"""(name, backend, workers) of every way, in the order they run (None: in process)."""


def timed_task(shared: EvalShared, task: EvalTask) -> tuple[int, float, float, RunScore]:
    """:func:`~agents.evaluation.fanout.eval_task` with its process, start and end time."""
    start = time.time()
    run = eval_task(shared, task)
    return os.getpid(), start, time.time(), run


def steady_rate(timed: list[tuple[int, float, float, Any]]) -> float:
    """Runs per second while the workers were warm.

    Each worker process's first run is left out (it imports and builds what later runs
    reuse); the others are counted over the span from the first one's start to the last
    one's end, as the workers' clocks saw them, so neither pool or worker start-up nor the
    collection of results is in the rate. NaN when every run was a first one.
    """
    firsts: dict[int, float] = {}
    for pid, start, _, _ in timed:
        firsts[pid] = min(start, firsts.get(pid, math.inf))
    warm = [(s, e) for pid, s, e, _ in timed if s > firsts[pid]]
    if not warm:
        return math.nan
    return len(warm) / (max(e for _, e in warm) - min(s for s, _ in warm))


def run_scale_suite(conf: BenchConfig, log: Console) -> dict[str, Any]:
    """Time the evaluation serial, on the local pool and on Ray; see the module docstring."""
    c = conf.scale
    sizes = c.quick if conf.quick else c.full
    if sizes.seeds < 1 or sizes.entries < 0 or c.noop_tasks < 1:
        raise ConfigError(
            f"scale: seeds >= 1, entries >= 0 (0: all), noop_tasks >= 1; got seeds={sizes.seeds}"
            f", entries={sizes.entries}, noop_tasks={c.noop_tasks}"
        )
    try:
        suite = load_suite(c.suite)
    except SuiteError as err:
        raise ConfigError(f"scale.suite={c.suite}: {err}") from None
    if sizes.entries:
        suite = suite.subset(first=sizes.entries)
    spec = resolve_policy(c.policy, "scale.policy")
    shared, tasks = plan(suite, [spec], range(sizes.seeds), "fluid", Backend.ray)
    n = len(tasks)
    load_before = os.getloadavg()
    log.print(
        f"scale: {c.policy} on {len(suite)} {suite.name} entries x {sizes.seeds} seed(s) = {n} "
        f"runs, 5 ways; load average {load_before[0]:.2f}"
    )
    start = time.perf_counter()
    ensure_ray(2)
    ray_init_s = time.perf_counter() - start
    walls: dict[str, float] = {}
    steady: dict[str, float] = {}
    startup: dict[str, float] = {}
    scores: dict[str, list[dict[str, Any]]] = {}
    rounds: list[dict[str, float]] = []
    for r in range(conf.repeats):  # rounds; each starts one way later, to spread load drift
        this: dict[str, float] = {}
        for name, backend, workers in WAYS[r % len(WAYS) :] + WAYS[: r % len(WAYS)]:
            t0, called = time.perf_counter(), time.time()
            if backend is None:
                timed = serial_map(timed_task, tasks, shared=shared)
            else:
                timed = pool_map(timed_task, tasks, workers, backend=backend, shared=shared)
            wall = time.perf_counter() - t0
            this[name] = steady_rate(timed)
            if this[name] >= steady.get(name, -math.inf):  # keep the best round's figures
                steady[name], walls[name] = this[name], wall
                startup[name] = min(t[1] for t in timed) - called  # to the first run's start
            runs = [t[3] for t in timed]
            scores[f"{name}/{r}"] = [x.score.as_dict() for x in runs]
            log.print(
                f"  round {r + 1}, {name}: {wall:.2f} s ({n / wall:.2f} runs/s; steady "
                f"{this[name]:.2f} runs/s)"
            )
        rounds.append(this)
    identical = all(v == scores["serial/0"] for v in scores.values())
    if not identical:
        raise RuntimeError("scale: the ways gave different scores for the same runs")
    noop = {}
    for backend in (Backend.local, Backend.ray):
        t0 = time.perf_counter()
        pool_map(abs, list(range(c.noop_tasks)), 1, backend=backend)
        noop[backend.value] = (time.perf_counter() - t0) / c.noop_tasks
    load_after = os.getloadavg()
    rps = {name: n / wall for name, wall in walls.items()}
    figures = {f"{name}_runs_per_s": value for name, value in steady.items()}
    figures |= {
        "local_efficiency_2": steady["local_2"] / (2 * steady["serial"]),
        "ray_efficiency_2": steady["ray_2"] / (2 * steady["serial"]),
        "ray_overhead_vs_local_2": 1 - steady["ray_2"] / steady["local_2"],
        "local_task_overhead_ms": 1000 * (1 / steady["local_1"] - 1 / steady["serial"]),
        "ray_task_overhead_ms": 1000 * (1 / steady["ray_1"] - 1 / steady["serial"]),
        "local_noop_task_ms": 1000 * noop["local"],
        "ray_noop_task_ms": 1000 * noop["ray"],
        "local_2_startup_s": startup["local_2"],
        "ray_2_startup_s": startup["ray_2"],
        "ray_init_s": ray_init_s,
        "serial_run_s": 1 / steady["serial"],
    }
    targets = {
        "local_efficiency_2": c.target_efficiency,
        "ray_efficiency_2": c.target_efficiency,
        "ray_overhead_vs_local_2": c.target_ray_overhead,
    }
    bytes_ = {
        "task": len(pickle.dumps(tasks[0])),
        "shared": len(pickle.dumps(shared)),
        "result": len(pickle.dumps(runs[0])),
    }
    details = {
        "suite": suite.name,
        "entries": len(suite),
        "seeds": sizes.seeds,
        "runs": n,
        "policy": spec.label,
        "wall_s": walls,
        "wall_runs_per_s": rps,
        "startup_s": startup,
        "rounds_steady_runs_per_s": rounds,
        "identical_scores": identical,
        "pickled_bytes": bytes_,
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    method = (
        f"Best of {conf.repeats} rounds (each round runs every way once, starting one way "
        f"later than the round before) over the same {n} runs ({len(suite)} `{suite.name}` entries "
        f"x {sizes.seeds} seed(s), `{spec.label}` policy, fluid fidelity); first round: "
        + ", ".join(w[0] for w in WAYS)
        + ". Rates are steady-state (each worker's first run left out, the others over the "
        "span they took in the workers); start-up is `<way>_startup_s`, Ray's own start "
        "`ray_init_s`. "
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)} (other processes on the machine "
        "lower the parallel figures)."
    )
    markdown = "\n".join(
        [
            "## Per way",
            "",
            "| way | workers | wall s | runs/s (wall) | runs/s (steady) |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {name} | {workers} | {walls[name]:.2f} | {rps[name]:.3f} | {steady[name]:.3f} |"
                for name, _, workers in WAYS
            ),
            "",
            f"Every way gave identical scores: {identical}. Pickled sizes: one task "
            f"{bytes_['task']} B, the shared object (scenarios and policy) {bytes_['shared']} B "
            f"(sent once per worker), one result {bytes_['result']} B.",
        ]
    )
    return {
        "figures": figures,
        "targets": targets,
        "lower_is_better": ["ray_overhead_vs_local_2"],
        "details": details,
        "method": method,
        "markdown": markdown,
    }
