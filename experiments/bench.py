"""``opsworld bench <suite>``: benchmarks with committed results.

``opsworld bench sim`` (suite ``sim``) measures the simulator's speed, prints one JSON object
and writes ``<results_dir>/sim_bench.json`` and ``<results_dir>/sim_bench.md`` (with
``quick=true``: ``sim_bench_quick.*``, so a smoke run never overwrites the committed
numbers). Figures (rates are the best of ``repeats`` runs of the same seeded workload):

* ``fluid_steps_per_s`` / ``fluid_sim_seconds_per_wall_second`` (boutique) and
  ``mesh40_fluid_steps_per_s`` / ``mesh40_fluid_sim_seconds_per_wall_second``: fluid engine,
  static policy (no actions), 15 s decision steps: ``Simulator.reset()`` (not timed), then
  ``Simulator.step([])`` until the horizon (one simulated day) or the wall budget;
* ``fluid_varying_traffic_steps_per_s``: boutique again with diurnal and noisy traffic, so
  no segment can reuse the previous one's solution (the constant-traffic figure above
  benefits from that reuse);
* ``request_level_requests_per_s``: request-level engine on an M/M/c scenario (one service,
  Poisson arrivals, exponential service, no timeouts, retries or drops; ``c = pods x
  concurrency``), requests counted from the telemetry counters of the last frame;
* ``request_level_boutique_requests_per_s``: attempts at all services per wall second on
  boutique at request level;
* ``bare_simpy_requests_per_s``: the same M/M/c queue as a plain SimPy program in the
  idiomatic style (a source process spawning one process per customer that requests a
  ``simpy.Resource(capacity=c)``, holds an exponential service time and releases), same
  ``c``, utilisation and number of customers;
* ``request_level_vs_bare_ratio``: request level / bare SimPy.

``opsworld bench incidents`` (suite ``incidents``) times the incident suite runner
(``experiments/suite_runner.py``): the static policy over every entry of the ``holdout``
suite x 3 seeds on 2 worker processes (``quick=true``: 4 entries x 1 seed), and writes
``incidents_bench[_quick].json`` / ``.md`` with the wall time, runs, runs per second, the
target (wall time <= 120 s) and the aggregate score table (``docs/scoring.md``).

Suites live in :data:`SUITES` (name -> function); add one there and in ``BenchSuite``. A
suite returns ``figures`` and ``targets`` (met when the figure is at least the target, or
at most it for names in ``lower_is_better``), ``details``, and optionally ``method`` (the
line saying how figures were measured) and ``markdown`` (extra sections for the page).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import simpy
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from agents.policy import StaticPolicy
from envs.core.policy import Policy
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Diurnal, Noise, Scenario
from envs.scenarios.suites import SuiteError, load_suite
from envs.sim import validation
from envs.sim.simulator import Simulator
from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError
from experiments.suite_runner import RunScore, run_suite


class BenchSuite(StrEnum):
    """Benchmark suites (``opsworld bench <suite>``)."""

    sim = "sim"
    incidents = "incidents"
    world_model = "world_model"


@dataclass
class SimSizes:
    """Workload sizes of the ``sim`` suite (one set for full runs, one for ``quick=true``).

    Attributes:
        fluid_sim_s: Simulated seconds per fluid repeat (86400 = one day).
        fluid_wall_budget_s: A fluid repeat stops after this much wall time.
        mmc_customers: Customers in the M/M/c runs (bare SimPy and request level).
        boutique_request_horizon_s: Simulated seconds of boutique at request level.
    """

    fluid_sim_s: float = 86400.0
    fluid_wall_budget_s: float = 10.0
    mmc_customers: int = 500_000
    boutique_request_horizon_s: float = 120.0


@dataclass
class SimTargets:
    """Targets the figures are checked against."""

    fluid_steps_per_s: float = 10_000.0
    request_level_vs_bare_ratio: float = 0.8


@dataclass
class SimSuiteConfig:
    """Settings of the ``sim`` suite.

    Attributes:
        fluid_scenarios: Built-ins timed at fluid fidelity; the first gives the headline
            ``fluid_*`` figures, the others ``<name>_fluid_*``.
        decision_interval_s: Length of one fluid decision step.
        request_scenario: Built-in timed at request level (all attempts counted).
        mmc_servers: ``c``, the number of servers of the M/M/c queue.
        mmc_pods: Pods of the request-level M/M/c service; ``mmc_servers / mmc_pods`` is the
            per-pod concurrency.
        mmc_rho: Utilisation ``lambda / (c mu)``.
        mmc_mean_service_s: ``1 / mu``.
        full: Sizes of a full run (``make bench``).
        quick: Sizes with ``quick=true`` (seconds; for tests).
        targets: Pass/miss thresholds.
    """

    fluid_scenarios: list[str] = field(default_factory=lambda: ["boutique", "mesh40"])
    decision_interval_s: float = 15.0
    request_scenario: str = "boutique"
    mmc_servers: int = 8
    mmc_pods: int = 2
    mmc_rho: float = 0.8
    mmc_mean_service_s: float = 0.02
    full: SimSizes = field(default_factory=SimSizes)
    quick: SimSizes = field(
        default_factory=lambda: SimSizes(
            fluid_sim_s=3600.0,
            fluid_wall_budget_s=1.0,
            mmc_customers=5_000,
            boutique_request_horizon_s=15.0,
        )
    )
    targets: SimTargets = field(default_factory=SimTargets)


@dataclass
class IncidentSizes:
    """Workload sizes of the ``incidents`` suite.

    Attributes:
        entries: Run the first this many entries of the suite (0: all).
        seeds: Replicates per entry (replicate indices ``0 .. seeds-1``).
    """

    entries: int = 0
    seeds: int = 3


@dataclass
class IncidentsSuiteConfig:
    """Settings of the ``incidents`` suite.

    Attributes:
        suite: Scenario suite to run (``configs/suites/<suite>.yaml``, or a path).
        policy: Policy to run (a key of :data:`POLICIES`).
        workers: Worker processes (1: in-process).
        fidelity: Simulator fidelity.
        full: Sizes of a full run.
        quick: Sizes with ``quick=true`` (seconds; for tests).
        target_wall_s: A full run must take at most this many wall seconds.
    """

    suite: str = "holdout"
    policy: str = "static"
    workers: int = 2
    fidelity: str = "fluid"
    full: IncidentSizes = field(default_factory=IncidentSizes)
    quick: IncidentSizes = field(default_factory=lambda: IncidentSizes(entries=4, seeds=1))
    target_wall_s: float = 120.0


@dataclass
class WorldModelSizes:
    """Workload sizes of the ``world_model`` suite.

    Attributes:
        batch: Sequences per batch.
        seq_len: Steps per sequence.
        warmup: Untimed updates before each timed run.
        updates: Timed updates per model (interleaved; ``repeats`` is not used).
    """

    batch: int = 16
    seq_len: int = 64
    warmup: int = 2
    updates: int = 15


@dataclass
class WorldModelSuiteConfig:
    """Settings of the ``world_model`` suite (training throughput of the world model).

    Attributes:
        sizes: World-model size presets to time (``tiny``, ``small``); the first gives the
            headline figures, the others ``<size>_*``.
        scenario: Built-in scenario whose services fix the observation and action sizes.
        threads: ``torch.set_num_threads`` for both models.
        full: Sizes of a full run.
        quick: Sizes with ``quick=true`` (seconds; for tests).
        target_speedup: Ours must train at least this many times faster than the reference.
    """

    sizes: list[str] = field(default_factory=lambda: ["tiny", "small"])
    scenario: str = "boutique"
    threads: int = 1
    full: WorldModelSizes = field(default_factory=WorldModelSizes)
    quick: WorldModelSizes = field(
        default_factory=lambda: WorldModelSizes(batch=4, seq_len=8, warmup=1, updates=2)
    )
    target_speedup: float = 2.0


@dataclass
class BenchConfig:
    """Schema of ``configs/bench.yaml``.

    Attributes:
        suite: Which suite to run (``opsworld bench sim`` sets ``suite=sim``).
        quick: Small sizes (seconds); results go to ``<suite>_bench_quick.*``.
        repeats: Rates are the best of this many repeats.
        seed: Seed of every benchmark workload.
        results_dir: Folder for ``<suite>_bench.json`` and ``.md`` (relative to the cwd).
        sim: Settings of the ``sim`` suite.
        incidents: Settings of the ``incidents`` suite.
        world_model: Settings of the ``world_model`` suite.
    """

    suite: BenchSuite = BenchSuite.sim
    quick: bool = False
    repeats: int = 3
    seed: int = 0
    results_dir: str = "experiments/results"
    sim: SimSuiteConfig = field(default_factory=SimSuiteConfig)
    incidents: IncidentsSuiteConfig = field(default_factory=IncidentsSuiteConfig)
    world_model: WorldModelSuiteConfig = field(default_factory=WorldModelSuiteConfig)


SCHEMA = BenchConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


def to_config(cfg: DictConfig | BenchConfig | dict[str, Any]) -> BenchConfig:
    """Validate a composed config (or a plain mapping) against :class:`BenchConfig`."""
    if isinstance(cfg, BenchConfig):
        return cfg
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(BenchConfig), cfg))
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad bench config: {err}") from None
    assert isinstance(obj, BenchConfig)
    if obj.repeats < 1:
        raise ConfigError(f"repeats={obj.repeats}: must be >= 1")
    return obj


# --------------------------------------------------------------------------- measurements


@dataclass
class Timing:
    """Best-of-repeats result of one measurement."""

    rate: float
    """Units per wall second, best repeat."""
    units: float
    """Units (steps, requests) done in the best repeat."""
    wall_s: float
    """Wall seconds of the best repeat."""
    all_rates: list[float]


def best_of(repeats: int, run: Callable[[], tuple[float, float]]) -> Timing:
    """Call ``run() -> (units, wall_s)`` ``repeats`` times; keep the highest rate."""
    results = [run() for _ in range(repeats)]
    rates = [u / w if w > 0 else math.inf for u, w in results]
    k = int(np.argmax(rates))
    return Timing(rates[k], results[k][0], results[k][1], rates)


def time_fluid(scenario: Scenario, wall_budget_s: float) -> tuple[float, float]:
    """Decision steps done and wall seconds: ``reset()`` untimed, then ``step([])`` loops."""
    sim = Simulator(scenario)
    sim.reset()
    steps = 0
    start = time.perf_counter()
    deadline = start + wall_budget_s
    while not sim.done:
        sim.step([])
        steps += 1
        if (steps & 15) == 0 and time.perf_counter() > deadline:
            break
    return float(steps), time.perf_counter() - start


def time_request_level(scenario: Scenario) -> tuple[float, float]:
    """Attempts arrived at all services (last frame's counters) and wall seconds."""
    sim = Simulator(scenario)
    last = sim.reset()
    start = time.perf_counter()
    while not sim.done:
        frames = sim.step([])
        if frames:
            last = frames[-1]
    wall = time.perf_counter() - start
    return float(last.counter("arrived").sum()), wall


def mmc_scenario(
    servers: int,
    pods: int,
    rho: float,
    mean_service_s: float,
    customers: int,
    seed: int,
    decision_interval_s: float = 15.0,
) -> Scenario:
    """The validation M/M/c scenario (:func:`envs.sim.validation.mmc_scenario`).

    Its horizon (whole decision intervals) holds about ``customers`` arrivals.
    """
    if servers % pods:
        raise ConfigError(
            f"sim.mmc_servers={servers} is not a multiple of sim.mmc_pods={pods}; "
            "c = pods x concurrency must be whole"
        )
    lam = rho * servers / mean_service_s
    horizon = decision_interval_s * max(1, math.ceil(customers / lam / decision_interval_s))
    return validation.mmc_scenario(
        rho,
        servers=servers,
        mean_service_s=mean_service_s,
        pods=pods,
        horizon_s=horizon,
        seed=seed,
        fidelity="request",
    ).model_copy(update={"decision_interval_s": decision_interval_s})


def bare_simpy_mmc(
    servers: int, rho: float, mean_service_s: float, customers: int, seed: int
) -> tuple[float, float, float]:
    """Plain-SimPy M/M/c, written the idiomatic way. Returns (customers, wall s, mean W)."""
    rng = random.Random(seed)
    mu = 1.0 / mean_service_s
    lam = rho * servers * mu
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=servers)
    response: list[float] = []

    def customer(env: simpy.Environment) -> Generator[simpy.Event, Any, None]:
        arrive = env.now
        with server.request() as req:
            yield req
            yield env.timeout(rng.expovariate(mu))
        response.append(env.now - arrive)

    def source(env: simpy.Environment) -> Generator[simpy.Event, Any, None]:
        for _ in range(customers):
            env.process(customer(env))
            yield env.timeout(rng.expovariate(lam))

    start = time.perf_counter()
    env.process(source(env))
    env.run()
    wall = time.perf_counter() - start
    return float(len(response)), wall, float(np.mean(response))


def erlang_c_response(servers: int, rho: float, mean_service_s: float) -> float:
    """Mean response time ``W = C(c, a) / (c mu - lambda) + 1 / mu`` of an M/M/c queue."""
    c, mu = servers, 1.0 / mean_service_s
    a = rho * c
    term = a**c / math.factorial(c) / (1 - rho)
    p_wait = term / (sum(a**k / math.factorial(k) for k in range(c)) + term)
    return p_wait / (c * mu - rho * c * mu) + 1 / mu


def run_sim_suite(conf: BenchConfig, log: Console) -> dict[str, Any]:
    """Measure the ``sim`` suite; returns figures, targets and parameters."""
    s = conf.sim
    sizes = s.quick if conf.quick else s.full
    figures: dict[str, float] = {}
    details: dict[str, Any] = {}

    for k, name in enumerate(s.fluid_scenarios):
        sc = load_scenario(
            name,
            {
                "fidelity": "fluid",
                "seed": conf.seed,
                "horizon_s": sizes.fluid_sim_s,
                "decision_interval_s": s.decision_interval_s,
            },
        )
        log.print(f"fluid {name}: up to {sizes.fluid_sim_s:g} sim s x {conf.repeats}")
        t = best_of(conf.repeats, partial(time_fluid, sc, sizes.fluid_wall_budget_s))
        prefix = "fluid" if k == 0 else f"{name}_fluid"
        figures[f"{prefix}_steps_per_s"] = t.rate
        figures[f"{prefix}_sim_seconds_per_wall_second"] = t.rate * s.decision_interval_s
        details[f"{prefix}"] = {
            "scenario": name,
            "services": len(sc.service_names),
            "steps": t.units,
            "wall_s": t.wall_s,
            "rates": t.all_rates,
        }
        if k == 0:
            # the same scenario with traffic that changes every second (diurnal + noise):
            # no segment repeats the last, so every step solves the fixed point afresh
            varying = sc.model_copy(
                update={
                    "traffic": sc.traffic.model_copy(
                        update={
                            "diurnal": Diurnal(amplitude=0.5),
                            "noise": Noise(cv=0.1, tau_s=60.0),
                        }
                    )
                }
            )
            log.print(f"fluid {name} with diurnal + noise traffic")
            tv = best_of(conf.repeats, partial(time_fluid, varying, sizes.fluid_wall_budget_s))
            figures["fluid_varying_traffic_steps_per_s"] = tv.rate
            details["fluid_varying_traffic"] = {
                "scenario": name,
                "traffic": "diurnal amplitude 0.5 + noise cv 0.1, tau 60 s",
                "steps": tv.units,
                "wall_s": tv.wall_s,
                "rates": tv.all_rates,
            }

    n = sizes.mmc_customers
    log.print(f"bare SimPy M/M/{s.mmc_servers}: {n} customers x {conf.repeats}")
    bare_w: list[float] = []

    def bare() -> tuple[float, float]:
        served, wall, w = bare_simpy_mmc(
            s.mmc_servers, s.mmc_rho, s.mmc_mean_service_s, n, conf.seed
        )
        bare_w.append(w)
        return served, wall

    tb = best_of(conf.repeats, bare)
    figures["bare_simpy_requests_per_s"] = tb.rate

    mmc = mmc_scenario(
        s.mmc_servers,
        s.mmc_pods,
        s.mmc_rho,
        s.mmc_mean_service_s,
        n,
        conf.seed,
        s.decision_interval_s,
    )
    log.print(f"request level M/M/{s.mmc_servers}: {mmc.horizon_s:g} sim s x {conf.repeats}")
    tr = best_of(conf.repeats, lambda: time_request_level(mmc))
    figures["request_level_requests_per_s"] = tr.rate

    bsc = load_scenario(
        s.request_scenario,
        {"fidelity": "request", "seed": conf.seed, "horizon_s": sizes.boutique_request_horizon_s},
    )
    log.print(f"request level {s.request_scenario}: {bsc.horizon_s:g} sim s x {conf.repeats}")
    tbo = best_of(conf.repeats, lambda: time_request_level(bsc))
    figures["request_level_boutique_requests_per_s"] = tbo.rate
    figures["request_level_vs_bare_ratio"] = tr.rate / tb.rate

    details["mmc"] = {
        "c": s.mmc_servers,
        "pods": s.mmc_pods,
        "concurrency": s.mmc_servers // s.mmc_pods,
        "rho": s.mmc_rho,
        "mean_service_s": s.mmc_mean_service_s,
        "arrival_rps": s.mmc_rho * s.mmc_servers / s.mmc_mean_service_s,
        "customers": n,
        "request_level_horizon_s": mmc.horizon_s,
        "request_level_requests": tr.units,
        "request_level_rates": tr.all_rates,
        "bare_rates": tb.all_rates,
        "bare_mean_response_s": float(np.mean(bare_w)),
        "erlang_c_mean_response_s": erlang_c_response(
            s.mmc_servers, s.mmc_rho, s.mmc_mean_service_s
        ),
    }
    details["request_level_boutique"] = {
        "scenario": s.request_scenario,
        "horizon_s": bsc.horizon_s,
        "attempts": tbo.units,
        "wall_s": tbo.wall_s,
        "rates": tbo.all_rates,
    }
    targets = {
        "fluid_steps_per_s": s.targets.fluid_steps_per_s,
        "request_level_vs_bare_ratio": s.targets.request_level_vs_bare_ratio,
    }
    return {"figures": figures, "targets": targets, "details": details}


POLICIES: dict[str, Callable[[], Policy]] = {"static": StaticPolicy}
"""Policies the ``incidents`` suite can run, by name (module-level factories: picklable)."""


def run_incidents_suite(conf: BenchConfig, log: Console) -> dict[str, Any]:
    """Time :func:`~experiments.suite_runner.run_suite` on a scenario suite; scores too."""
    c = conf.incidents
    sizes = c.quick if conf.quick else c.full
    if c.policy not in POLICIES:
        raise ConfigError(f"incidents.policy={c.policy}: unknown policy; one of {sorted(POLICIES)}")
    if c.workers < 1 or sizes.seeds < 1 or sizes.entries < 0:
        raise ConfigError(
            "incidents: workers and seeds must be >= 1 and entries >= 0 (0: all), got "
            f"workers={c.workers}, seeds={sizes.seeds}, entries={sizes.entries}"
        )
    if c.fidelity not in ("fluid", "request"):
        raise ConfigError(f"incidents.fidelity={c.fidelity}: one of fluid, request")
    try:
        suite = load_suite(c.suite)
    except SuiteError as err:
        raise ConfigError(f"incidents.suite={c.suite}: {err}") from None
    if sizes.entries:
        suite = suite.subset(first=sizes.entries)
    total = len(suite) * sizes.seeds
    seeds = f"{sizes.seeds} seed{'s' if sizes.seeds != 1 else ''}"
    log.print(
        f"incidents: {c.policy} policy on {len(suite)} {suite.name} entries x {seeds} "
        f"= {total} runs, {c.workers} worker(s)"
    )

    def tick(done: int, n: int, run: RunScore) -> None:
        if done == n or done % 20 == 0:
            log.print(f"  {done}/{n} runs")

    result = run_suite(
        suite,
        POLICIES[c.policy],
        range(sizes.seeds),
        workers=c.workers,
        fidelity=c.fidelity,
        progress=tick,
        bootstrap_seed=conf.seed,
    )
    figures = {
        "wall_s": result.wall_s,
        "runs": float(len(result.runs)),
        "runs_per_s": result.runs_per_s,
    }
    targets = {} if conf.quick else {"wall_s": c.target_wall_s}
    as_dict = result.to_dict()
    details = {
        "suite": suite.name,
        "entries": len(suite),
        "seeds": sizes.seeds,
        "policy": result.policy,
        "workers": result.workers,
        "fidelity": c.fidelity,
        "summary": as_dict["summary"],
        "per_run": as_dict["per_run"],
    }
    method = (
        f"One timed run of the `{suite.name}` suite: {len(suite)} entries x {seeds}, "
        f"`{result.policy}` policy, {c.fidelity} fidelity, {result.workers} worker "
        "process(es), pool start-up included."
    )
    markdown = "\n".join(
        [
            "## Scores",
            "",
            "Aggregate over all runs: mean and interquartile mean (IQM) with seeded bootstrap "
            "95% CIs; n/a counts runs where the metric does not apply. Definitions: "
            "[docs/scoring.md](../../docs/scoring.md).",
            "",
            result.summary_markdown(),
            "",
            "Per entry (mean over seeds):",
            "",
            result.entries_markdown(),
        ]
    )
    return {
        "figures": figures,
        "targets": targets,
        "lower_is_better": ["wall_s"],
        "details": details,
        "method": method,
        "markdown": markdown,
    }


# --------------------------------------------------------------------------- world model


def synthetic_wm_batches(
    n: int, batch: int, seq_len: int, value_size: int, action_size: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """``n`` seeded random training batches with the data contract's keys and shapes.

    Values ~ N(0, 1) with 10% missing (mask 0, value 0), time features in [-1, 1], sparse
    actions, rewards ~ -|N(0, 1)|, 20% violations; ``is_first`` on row 0 and, in a quarter
    of the sequences, once more inside the sequence (an episode boundary).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = (rng.uniform(size=(batch, seq_len, value_size)) < 0.9).astype(np.float32)
        values = rng.normal(size=(batch, seq_len, value_size)).astype(np.float32) * mask
        time_f = rng.uniform(-1, 1, size=(batch, seq_len, 4)).astype(np.float32)
        action = rng.normal(size=(batch, seq_len, action_size)).astype(np.float32)
        action *= rng.uniform(size=action.shape) < 0.1
        is_first = np.zeros((batch, seq_len), np.float32)
        is_first[:, 0] = 1.0
        inner = rng.uniform(size=batch) < 0.25
        is_first[inner, rng.integers(1, seq_len, size=int(inner.sum()))] = 1.0
        out.append(
            {
                "obs": np.concatenate([values, time_f, mask], -1),
                "action": action,
                "reward": -np.abs(rng.normal(size=(batch, seq_len))).astype(np.float32),
                "cont": np.ones((batch, seq_len), np.float32),
                "is_first": is_first,
                "violation": (rng.uniform(size=(batch, seq_len)) < 0.2).astype(np.float32),
            }
        )
    return out


def reference_world_model(
    obs_size: int, value_size: int, action_size: int, cfg: Any
) -> Any:  # returns torch.nn.Module; torch is imported lazily (bench sim does not need it)
    """THE REFERENCE: a straightforward PyTorch RSSM world model, as tutorials and ports write it.

    Same sizes as :class:`agents.world_model.WorldModel` with ``cfg``.
    Per time step inside the Python loop: the reset mask, the input layer, ``nn.GRUCell``
    (dense), the prior MLP and the posterior layer with ``torch.distributions``
    (``OneHotCategoricalStraightThrough`` with 1% unimix, ``rsample``), the decoder
    (``Normal``), the reward (two-hot), continue and violation heads (``Bernoulli``) and
    the KL terms (``kl_divergence``, free bits); the encoder runs once before the loop.
    Same losses and scales as ours. Only the benchmark uses it.
    """
    import torch
    import torch.nn.functional as F
    from torch import distributions as td
    from torch import nn

    def mlp(inp: int, units: int, layers: int) -> list[nn.Module]:
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(inp if i == 0 else units, units), nn.RMSNorm(units), nn.SiLU()]
        return mods

    k, c, d, h, u = cfg.stoch, cfg.classes, cfg.deter, cfg.hidden, cfg.units
    feat_size = d + k * c
    bins = torch.linspace(-cfg.bin_limit, cfg.bin_limit, cfg.bins)

    def dist(logits: torch.Tensor) -> td.Distribution:
        probs = torch.softmax(logits, -1)
        probs = (1 - cfg.unimix) * probs + cfg.unimix / c
        return td.Independent(td.OneHotCategoricalStraightThrough(probs=probs), 1)

    def twohot(y: torch.Tensor) -> torch.Tensor:
        y = torch.sign(y) * torch.log1p(y.abs())
        y = y.clamp(-cfg.bin_limit, cfg.bin_limit)
        below = (bins <= y[..., None]).sum(-1) - 1
        below = below.clamp(0, cfg.bins - 2)
        w_above = (y - bins[below]) / (bins[below + 1] - bins[below])
        return (
            F.one_hot(below, cfg.bins) * (1 - w_above[..., None])
            + F.one_hot(below + 1, cfg.bins) * w_above[..., None]
        )

    class ReferenceWorldModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(*mlp(obs_size, u, cfg.enc_layers))
            self.img_in = nn.Sequential(*mlp(k * c + action_size, h, 1))
            self.gru = nn.GRUCell(h, d)
            self.prior = nn.Sequential(*mlp(d, h, cfg.img_layers), nn.Linear(h, k * c))
            self.post = nn.Sequential(*mlp(d + u, h, 1), nn.Linear(h, k * c))
            self.decoder = nn.Sequential(
                *mlp(feat_size, u, cfg.dec_layers), nn.Linear(u, 2 * value_size)
            )
            reward_out = nn.Linear(u, cfg.bins)
            nn.init.zeros_(reward_out.weight)  # zero-initialised as in DreamerV3
            nn.init.zeros_(reward_out.bias)
            self.reward = nn.Sequential(*mlp(feat_size, u, cfg.head_layers), reward_out)
            self.cont = nn.Sequential(*mlp(feat_size, u, cfg.head_layers), nn.Linear(u, 1))
            self.viol = nn.Sequential(*mlp(feat_size, u, cfg.head_layers), nn.Linear(u, 1))

        def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            obs, action = batch["obs"], batch["action"]
            b, t_len, _ = obs.shape
            embed = self.encoder(obs)
            deter = torch.zeros(b, d)
            stoch = torch.zeros(b, k, c)
            losses: dict[str, list[torch.Tensor]] = {
                n: [] for n in ("dec", "rew", "cont", "viol", "dyn", "rep")
            }
            for t in range(t_len):
                keep = 1.0 - batch["is_first"][:, t, None]
                deter, stoch = deter * keep, stoch * keep[..., None]
                act = action[:, t] * keep
                x = self.img_in(torch.cat([stoch.flatten(1), act], -1))
                deter = self.gru(x, deter)
                prior_logits = self.prior(deter).view(b, k, c)
                post_logits = self.post(torch.cat([deter, embed[:, t]], -1)).view(b, k, c)
                post = dist(post_logits)
                stoch = post.rsample()
                feat = torch.cat([deter, stoch.flatten(1)], -1)
                mean, raw_std = self.decoder(feat).chunk(2, -1)
                std = cfg.min_std + (cfg.max_std - cfg.min_std) * torch.sigmoid(raw_std + 2.0)
                target = obs[:, t, :value_size]
                mask = obs[:, t, obs_size - value_size :]
                nll = -td.Normal(mean, std).log_prob(target) * mask
                losses["dec"].append(nll.sum(-1))
                rew_logp = torch.log_softmax(self.reward(feat), -1)
                losses["rew"].append(-(twohot(batch["reward"][:, t]) * rew_logp).sum(-1))
                cont = td.Bernoulli(logits=self.cont(feat)[:, 0])
                losses["cont"].append(-cont.log_prob(batch["cont"][:, t]))
                viol = td.Bernoulli(logits=self.viol(feat)[:, 0])
                losses["viol"].append(-viol.log_prob(batch["violation"][:, t]))
                dyn = td.kl_divergence(dist(post_logits.detach()), dist(prior_logits))
                rep = td.kl_divergence(dist(post_logits), dist(prior_logits.detach()))
                losses["dyn"].append(torch.clamp(dyn, min=cfg.free_nats))
                losses["rep"].append(torch.clamp(rep, min=cfg.free_nats))
            scales = {
                "dec": 1.0,
                "rew": 1.0,
                "cont": 1.0,
                "viol": 1.0,
                "dyn": cfg.kl_dyn,
                "rep": cfg.kl_rep,
            }
            return sum(scales[n] * torch.stack(v).mean() for n, v in losses.items())

    return ReferenceWorldModel()


def time_interleaved(
    updates: dict[str, Callable[[dict[str, np.ndarray]], Any]],
    batches: list[dict[str, np.ndarray]],
    warmup: int,
    n: int,
) -> dict[str, dict[str, list[float]]]:
    """Time ``n`` calls of each ``update(batch)``, interleaved one by one.

    The order alternates every round, so that all see the same machine load; ``warmup``
    untimed calls each come first. Returns per name the ``wall`` and ``cpu`` (process
    time) seconds of every call.
    """
    names = list(updates)
    for i in range(warmup):
        for name in names:
            updates[name](batches[i % len(batches)])
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
    for i in range(n):
        batch = batches[(warmup + i) % len(batches)]
        for name in names if i % 2 == 0 else names[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            updates[name](batch)
            out[name]["wall"].append(time.perf_counter() - w0)
            out[name]["cpu"].append(time.process_time() - c0)
    return out


def run_world_model_suite(conf: BenchConfig, log: Console) -> dict[str, Any]:
    """Train ours and the reference RSSM on the same synthetic batches; updates per second."""
    import torch

    from agents.world_model import ObsLayout, WorldModel, WorldModelConfig, WorldModelTrainer
    from envs.gym.encoder import ActionEncoder, ObsEncoder

    c = conf.world_model
    sizes = c.quick if conf.quick else c.full
    bad = [s for s in c.sizes if s not in ("tiny", "small")]
    if bad or not c.sizes or c.threads < 1 or sizes.updates < 1 or sizes.warmup < 0:
        raise ConfigError(
            f"world_model: sizes must be a non-empty list of tiny/small, threads and updates "
            f">= 1, warmup >= 0 (got sizes={c.sizes}, threads={c.threads}, "
            f"updates={sizes.updates}, warmup={sizes.warmup})"
        )
    sc = load_scenario(c.scenario, {"seed": conf.seed})
    layout = ObsLayout.from_encoder(ObsEncoder(tuple(sc.service_names)))
    action_size = ActionEncoder(tuple(sc.service_names)).size
    steps = sizes.batch * sizes.seq_len
    batches = synthetic_wm_batches(
        4, sizes.batch, sizes.seq_len, layout.value_size, action_size, conf.seed
    )
    figures: dict[str, float] = {}
    targets: dict[str, float] = {}
    details: dict[str, Any] = {
        "scenario": c.scenario,
        "obs_size": layout.obs_size,
        "value_size": layout.value_size,
        "action_size": action_size,
        "batch": sizes.batch,
        "seq_len": sizes.seq_len,
        "env_steps_per_update": steps,
        "threads": c.threads,
        "torch": torch.__version__,
        "warmup": sizes.warmup,
        "updates": sizes.updates,
    }
    rows = []
    load_before = os.getloadavg()
    for k, size in enumerate(c.sizes):
        cfg = WorldModelConfig.preset(
            size, batch=sizes.batch, seq_len=sizes.seq_len, threads=c.threads
        )
        torch.manual_seed(conf.seed)
        ours = WorldModel(layout, action_size, cfg)
        trainer = WorldModelTrainer(ours, cfg, seed=conf.seed)  # sets the thread count
        ref = reference_world_model(layout.obs_size, layout.value_size, action_size, cfg)
        ref_opt = torch.optim.Adam(ref.parameters(), lr=cfg.lr, eps=cfg.eps)

        def ref_update(
            batch: dict[str, np.ndarray],
            ref: Any = ref,
            opt: Any = ref_opt,
            clip: float = cfg.grad_clip,
        ) -> float:
            loss = ref.loss({key: torch.as_tensor(v) for key, v in batch.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
            opt.step()
            return float(loss.detach())

        log.print(
            f"world model {size} (B={sizes.batch} x T={sizes.seq_len}, O={layout.obs_size}, "
            f"A={action_size}, {c.threads} thread(s)): {sizes.updates} updates each, "
            "ours and the reference interleaved"
        )
        times = time_interleaved(
            {"ours": trainer.step, "reference": ref_update}, batches, sizes.warmup, sizes.updates
        )
        prefix = "" if k == 0 else f"{size}_"
        rate = {n: 1.0 / float(np.median(t["wall"])) for n, t in times.items()}
        cpu_rate = {n: 1.0 / float(np.median(t["cpu"])) for n, t in times.items()}
        for n in ("ours", "reference"):
            figures[f"{prefix}{n}_updates_per_s"] = rate[n]
            figures[f"{prefix}{n}_env_steps_per_s"] = rate[n] * steps
        figures[f"{prefix}speedup"] = rate["ours"] / rate["reference"]
        for n in ("ours", "reference"):
            figures[f"{prefix}{n}_cpu_updates_per_s"] = cpu_rate[n]
        figures[f"{prefix}cpu_speedup"] = cpu_rate["ours"] / cpu_rate["reference"]
        if not conf.quick:
            targets[f"{prefix}speedup"] = c.target_speedup
        n_ours = int(sum(p.numel() for p in ours.parameters()))
        n_ref = int(sum(p.numel() for p in ref.parameters()))
        details[size] = {
            "config": cfg.model_dump(),
            "ours_params": n_ours,
            "reference_params": n_ref,
            "wall_s": {n: t["wall"] for n, t in times.items()},
            "cpu_s": {n: t["cpu"] for n, t in times.items()},
            "final_losses": {
                "ours": trainer.step(batches[0])["wm/loss"],
                "reference": ref_update(batches[0]),
            },
        }
        log.print(
            f"  ours {rate['ours']:.2f} updates/s, reference {rate['reference']:.2f} "
            f"(x{rate['ours'] / rate['reference']:.2f}; CPU time x"
            f"{cpu_rate['ours'] / cpu_rate['reference']:.2f})"
        )
        rows.append(
            f"| `{size}` (deter {cfg.deter}, hidden {cfg.hidden}, {cfg.stoch} x {cfg.classes}, "
            f"{cfg.gru_blocks} GRU blocks, units {cfg.units}) | {n_ours:,} | {n_ref:,} |"
        )
    load = (load_before[0], os.getloadavg()[0])
    details["load_average_1min"] = {"start": load[0], "end": load[1]}
    method = (
        f"Ours (`agents.world_model`, via `WorldModelTrainer.step`, finite checks included) "
        f"and the reference (a straightforward PyTorch RSSM written in `experiments/bench.py`) "
        f"train on the same {len(batches)} seeded synthetic batches of {sizes.batch} x "
        f"{sizes.seq_len} steps: obs {layout.obs_size} = 2 (S F + C) + 4 for `{c.scenario}` "
        f"(S = {len(sc.service_names)}), actions {action_size}; Adam, grad-norm clipping, "
        f"torch {torch.__version__}, {c.threads} CPU thread(s). An update = loss, backward, "
        f"clip, optimizer step. After {sizes.warmup} warm-up update(s) each, {sizes.updates} "
        "updates of each model are timed one by one, alternating between the two so both "
        "see the same machine load; rates are 1 / median wall time per update (`cpu_*`: 1 / "
        f"median process CPU time, insensitive to other load). env-steps/s = updates/s x {steps}. "
        f"Machine load (1-min load average) {load[0]:.1f} at the start, {load[1]:.1f} at the "
        f"end, on {os.cpu_count()} cores shared with other work: wall rates are below the CPU "
        "rates by that much."
    )
    markdown = "\n".join(
        [
            "## Models",
            "",
            "| size | parameters, ours | parameters, reference |",
            "|---|---:|---:|",
            *rows,
            "",
            "* **Ours**: block-diagonal GRU (DreamerV3); in the time loop only the recurrence "
            "(input layers of the previous state, GRU, posterior layer, straight-through "
            "draw), run as one autograd function with a hand-written backward through time "
            "(`agents/world_model/fused.py`); encoder, prior, decoder and heads batched over "
            "B x T; weight gradients of the loop as one matmul per weight.",
            "* **Reference**: `nn.GRUCell` (dense, hence more parameters at the same sizes); "
            "per step inside the loop: input layer, GRU, prior MLP, posterior layer, "
            "`torch.distributions` (`OneHotCategoricalStraightThrough` with 1% unimix, "
            "`Normal`, `Bernoulli`, `kl_divergence`), decoder and heads; the encoder batched. "
            "Same losses and scales.",
        ]
    )
    return {
        "figures": figures,
        "targets": targets,
        "details": details,
        "method": method,
        "markdown": markdown,
    }


SUITES: dict[str, Callable[[BenchConfig, Console], dict[str, Any]]] = {
    "sim": run_sim_suite,
    "incidents": run_incidents_suite,
    "world_model": run_world_model_suite,
}
"""Suite name -> function measuring it."""


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    """CPU model, cores, OS and the versions that matter for the figures."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "simpy": metadata.version("simpy"),
    }


def command_line(conf: BenchConfig) -> str:
    """The ``opsworld bench`` command that reproduces this run."""
    words = ["opsworld", "bench", conf.suite.value]
    if HydraConfig.initialized():
        words += [o for o in HydraConfig.get().overrides.task if not o.startswith("suite=")]
    elif conf.quick:
        words.append("quick=true")
    return " ".join(words)


def _fmt(v: float) -> str:
    return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.0f}"


def to_markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown page: figures with targets, command, date, machine."""
    m = report["machine"]
    lines = [
        f"# `{report['suite']}` benchmark" + (" (quick sizes)" if report["quick"] else ""),
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['os']}  ",
        f"Versions: Python {m['python']}, numpy {m['numpy']}, simpy {m['simpy']}",
        "",
        report.get("method")
        or f"Rates are the best of {report['repeats']} repeats, single process.",
        "",
        "| figure | value | target | status |",
        "|---|---:|---:|---|",
    ]
    lower = set(report.get("lower_is_better", []))
    for name, value in report["figures"].items():
        target = report["targets"].get(name)
        sign = "<= " if name in lower else ">= "
        status = report["status"].get(name, "")
        lines.append(
            f"| `{name}` | {_fmt(value)} | {sign + _fmt(target) if target is not None else ''} "
            f"| {status} |"
        )
    lines.append("")
    lines.append("Parameters and per-repeat rates: see the JSON file next to this one.")
    if report.get("markdown"):
        lines += ["", report["markdown"]]
    return "\n".join(lines) + "\n"


def bench(
    cfg: DictConfig | BenchConfig | dict[str, Any], log: Console | None = None
) -> dict[str, Any]:
    """Run one suite, write ``<suite>_bench[_quick].json`` and ``.md``; return the report.

    Args:
        cfg: A config composed from ``configs/bench.yaml`` (or anything :func:`to_config`
            accepts).
        log: Where progress lines go (default: stderr, so stdout carries only the JSON).
    """
    conf = to_config(cfg)
    log = log if log is not None else Console(stderr=True)
    suite = conf.suite.value
    if suite not in SUITES:
        raise ConfigError(f"suite={suite}: unknown suite; one of {sorted(SUITES)}")
    start = time.perf_counter()
    measured = SUITES[suite](conf, log)
    lower = set(measured.get("lower_is_better", []))
    status = {}
    for name, target in measured["targets"].items():
        value = measured["figures"][name]
        met = value <= target if name in lower else value >= target
        status[name] = "pass" if met else "miss"
    report: dict[str, Any] = {
        "suite": suite,
        "quick": conf.quick,
        "command": command_line(conf),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "repeats": conf.repeats,
        "figures": measured["figures"],
        "targets": measured["targets"],
        "status": status,
        "details": measured["details"],
        "bench_wall_s": time.perf_counter() - start,
    }
    for key in ("lower_is_better", "method"):
        if key in measured:
            report[key] = measured[key]
    out = Path(conf.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{suite}_bench" + ("_quick" if conf.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(to_markdown({**report, "markdown": measured.get("markdown")}))
    report["files"] = [str(out / f"{stem}.json"), str(out / f"{stem}.md")]
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bench")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        report = bench(cfg)
    except ConfigError as err:
        print(f"opsworld bench: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    print(json.dumps(report))


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
