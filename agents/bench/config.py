"""Schema of ``opsworld bench``: the suites and their sizes (``configs/bench.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from agents.bench.shadow_config import ShadowSuiteConfig


class BenchSuite(StrEnum):
    """Benchmark suites (``opsworld bench <suite>``)."""

    sim = "sim"
    incidents = "incidents"
    world_model = "world_model"
    serve = "serve"
    shadow = "shadow"
    scale = "scale"


@dataclass
class SimSizes:
    """Workload sizes of the ``sim`` suite (one set for full runs, one for ``quick=true``).

    Attributes:
        fluid_sim_s: Simulated seconds per fluid repeat (86400 = one day).
        fluid_wall_budget_s: A fluid repeat stops after this much wall time.
        mmc_customers: Customers in the M/M/c runs (bare SimPy and request level).
        boutique_request_horizon_s: Simulated seconds of boutique at request level.
        batched_steps: Vector steps per repeat of the batched env (240 = one hour).
    """

    fluid_sim_s: float = 86400.0
    fluid_wall_budget_s: float = 10.0
    mmc_customers: int = 500_000
    boutique_request_horizon_s: float = 120.0
    batched_steps: int = 240


@dataclass
class SimTargets:
    """Targets the figures are checked against."""

    fluid_steps_per_s: float = 10_000.0
    request_level_vs_bare_ratio: float = 0.8
    batched_fluid_varying_steps_per_s: float = 20_000.0


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
        batched_envs: Sub-env counts ``N`` of the batched env
            (:class:`envs.gym.batched.BatchedAutoscaleEnv`) timed on the first fluid scenario
            with varying traffic; the last gives the headline ``batched_fluid_varying_*``.
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
    batched_envs: list[int] = field(default_factory=lambda: [64, 256])
    full: SimSizes = field(default_factory=SimSizes)
    quick: SimSizes = field(
        default_factory=lambda: SimSizes(
            fluid_sim_s=3600.0,
            fluid_wall_budget_s=1.0,
            mmc_customers=5_000,
            boutique_request_horizon_s=15.0,
            batched_steps=8,
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
        warmup: Untimed updates of each model before the first timed round.
        updates: Timed updates per model in each round (interleaved).
        rounds: Timed rounds; each gives its own CPU-time ratio, and the headline
            ``cpu_speedup`` is their median, with the smallest and largest beside it
            (the suite's own spread; ``repeats`` of the bench is not used).
    """

    batch: int = 16
    seq_len: int = 64
    warmup: int = 2
    updates: int = 15
    rounds: int = 3


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
        target_speedup: Ours must train at least this many times faster than the reference,
            in CPU time per update (``cpu_speedup``: the wall-clock ratio moves with the
            machine's load, the CPU-time one much less).
    """

    sizes: list[str] = field(default_factory=lambda: ["tiny", "small"])
    scenario: str = "boutique"
    threads: int = 1
    full: WorldModelSizes = field(default_factory=WorldModelSizes)
    quick: WorldModelSizes = field(
        default_factory=lambda: WorldModelSizes(batch=4, seq_len=8, warmup=1, updates=2, rounds=2)
    )
    target_speedup: float = 2.0


@dataclass
class ServeSizes:
    """Workload sizes of the ``serve`` suite.

    Attributes:
        rates: Request rates (requests/s) of the open-loop load, one run each.
        duration_s: Seconds of load per rate.
        frames: Telemetry frames of a holdout incident the requests cycle through.
        in_process_repeats: Passes over the frames for the in-process latency.
    """

    rates: list[float] = field(default_factory=lambda: [100.0, 500.0, 1000.0])
    duration_s: float = 10.0
    frames: int = 200
    in_process_repeats: int = 5


@dataclass
class ServeSuiteConfig:
    """Settings of the ``serve`` suite (the policy server under load).

    Attributes:
        ppo_run: A trained PPO run dir to export (None: a short run, default network).
        dreamer_run: A trained Dreamer run dir (None: a short run, tiny preset).
        connections: Keep-alive connections of the load generator.
        streams: Streams the requests spread over (each request one new frame).
        full: Sizes of a full run.
        quick: Sizes with ``quick=true`` (seconds; for tests).
        target_p99_ms: PPO on ONNX at the highest rate must have p99 at most this.
        target_model_share: ... and at the lowest rate the network at most this share of the
            request time.
    """

    ppo_run: str | None = None
    dreamer_run: str | None = None
    connections: int = 32
    streams: int = 64
    full: ServeSizes = field(default_factory=ServeSizes)
    quick: ServeSizes = field(
        default_factory=lambda: ServeSizes(
            rates=[50.0], duration_s=1.0, frames=20, in_process_repeats=1
        )
    )
    target_p99_ms: float = 2.0
    target_model_share: float = 0.05


@dataclass
class ScaleSizes:
    """Workload sizes of the ``scale`` suite.

    Attributes:
        entries: Run the first this many entries of the suite (0: all).
        seeds: Replicates per entry.
    """

    entries: int = 0
    seeds: int = 1


@dataclass
class ScaleSuiteConfig:
    """Settings of the ``scale`` suite (``agents/bench/scale.py``).

    Attributes:
        suite: Scenario suite evaluated.
        policy: Built-in policy evaluated.
        noop_tasks: No-op tasks timed for the per-task overhead.
        full: Sizes of a full run.
        quick: Sizes with ``quick=true``.
        target_efficiency: Parallel efficiency at 2 workers must reach this.
        target_ray_overhead: Ray's throughput deficit vs the local pool at 2 workers, at most.
    """

    suite: str = "holdout"
    policy: str = "hpa"
    noop_tasks: int = 200
    full: ScaleSizes = field(default_factory=ScaleSizes)
    quick: ScaleSizes = field(default_factory=lambda: ScaleSizes(entries=8, seeds=1))
    target_efficiency: float = 0.9
    target_ray_overhead: float = 0.10


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
        serve: Settings of the ``serve`` suite.
        shadow: Settings of the ``shadow`` suite.
        scale: Settings of the ``scale`` suite.
    """

    suite: BenchSuite = BenchSuite.sim
    quick: bool = False
    repeats: int = 3
    seed: int = 0
    results_dir: str = "experiments/results"
    sim: SimSuiteConfig = field(default_factory=SimSuiteConfig)
    incidents: IncidentsSuiteConfig = field(default_factory=IncidentsSuiteConfig)
    world_model: WorldModelSuiteConfig = field(default_factory=WorldModelSuiteConfig)
    serve: ServeSuiteConfig = field(default_factory=ServeSuiteConfig)
    shadow: ShadowSuiteConfig = field(default_factory=ShadowSuiteConfig)
    scale: ScaleSuiteConfig = field(default_factory=ScaleSuiteConfig)
