"""Benchmark suite ``sim``: simulator speed (fluid and request level) against bare SimPy."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import simpy
from rich.console import Console

from agents.bench.config import BenchConfig
from agents.run_config import RunConfigError as ConfigError
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Diurnal, Noise, Scenario
from envs.sim import validation
from envs.sim.simulator import Simulator

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


def time_batched(
    scenario: Scenario, n: int, steps: int, actions: str, seed: int
) -> tuple[float, float]:
    """Sub-env steps done and wall seconds of the batched vector env on one thread.

    ``reset`` is not timed; then ``steps`` vector steps (auto-resets included) with every
    sub-env keeping its replicas (``actions="keep"``, the scalar figure's no-op policy) or
    uniformly random actions (``"random"``: PPO's first rollouts), drawn before the clock
    starts.
    """
    from threadpoolctl import threadpool_limits

    from envs.gym.batched import BatchedAutoscaleEnv

    venv = BatchedAutoscaleEnv(n, scenario)
    venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    shape = (n, len(venv.services))
    if actions == "keep":
        plan = [np.full(shape, 2)] * steps
    else:
        plan = [rng.integers(0, 5, size=shape) for _ in range(steps)]
    with threadpool_limits(limits=1):
        start = time.perf_counter()
        for a in plan:
            venv.step(a)
        wall = time.perf_counter() - start
    return float(steps * n), wall


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
            # the batched vector env on the same varying traffic (issue 18): no-op actions
            # at every N, uniformly random ones (PPO's first rollouts) at the headline N
            batched = varying.model_copy(update={"horizon_s": 3600.0})
            head = s.batched_envs[-1]
            runs = [(n_envs, "keep", sizes.batched_steps) for n_envs in s.batched_envs]
            runs.append((head, "random", max(1, sizes.batched_steps // 6)))
            for n_envs, mode, steps in runs:
                log.print(f"batched fluid {name}, N={n_envs}, {mode} actions, {steps} steps")
                tb_ = best_of(
                    conf.repeats,
                    partial(time_batched, batched, n_envs, steps, mode, conf.seed),
                )
                key = f"batched_fluid_varying_n{n_envs}" + ("_random" if mode == "random" else "")
                figures[f"{key}_steps_per_s"] = tb_.rate
                details[key] = {
                    "scenario": name,
                    "traffic": "diurnal amplitude 0.5 + noise cv 0.1, tau 60 s",
                    "envs": n_envs,
                    "actions": mode,
                    "vector_steps": steps,
                    "sub_env_steps": tb_.units,
                    "wall_s": tb_.wall_s,
                    "rates": tb_.all_rates,
                    "threads": 1,
                }
            figures["batched_fluid_varying_steps_per_s"] = figures[
                f"batched_fluid_varying_n{head}_steps_per_s"
            ]

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
    if "batched_fluid_varying_steps_per_s" in figures:
        targets["batched_fluid_varying_steps_per_s"] = s.targets.batched_fluid_varying_steps_per_s
    return {"figures": figures, "targets": targets, "details": details}
