"""Scenario schema: the one validated description of a simulated cluster.

A scenario is plain data (YAML or a dict). :class:`Scenario` validates it with pydantic, so
an unknown key or a bad value fails at start with the dotted path of the field and what is
expected there. Units are SI: seconds, cores, megabytes, requests per second, currency units
per hour.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from envs.kube.config import HPAConfig
from envs.kube.hpa import HPAController

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    """Base: unknown keys are errors, models are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Strict):
    """A positive random duration given by its mean and coefficient of variation.

    ``cv == 0`` is deterministic, ``cv == 1`` with ``kind: gamma`` is exponential.
    """

    mean: PositiveFloat
    cv: NonNegFloat = 1.0
    kind: Literal["gamma", "lognormal"] = "gamma"


class PodSpec(_Strict):
    """What one pod of a service asks for and how it serves requests."""

    cpu_request: PositiveFloat = 0.5
    """CPU cores requested per pod (the HPA's denominator and the scheduler's size)."""
    cpu_full_load: PositiveFloat | None = None
    """Cores a pod uses with every worker slot busy; defaults to ``cpu_request``."""
    cpu_idle: NonNegFloat = 0.01
    """Cores a ready pod uses with no request in service."""
    memory_request_mb: PositiveFloat = 256.0
    memory_limit_mb: PositiveFloat = 512.0
    memory_base_mb: PositiveFloat = 128.0
    """Resident memory of an idle pod."""
    memory_per_request_mb: NonNegFloat = 1.0
    """Extra memory per request in service or queued on the pod."""
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 4
    """Worker slots per pod. A slot is held only for the service's own processing
    (``service_time``); the attempt releases it before making its downstream calls, which
    it then awaits without holding a worker (an asynchronous server)."""
    queue_per_pod: Annotated[int, Field(ge=0)] = 64
    """Requests that may wait per ready pod; arrivals beyond this are dropped (HTTP 503)."""
    service_time: Distribution = Distribution(mean=0.02, cv=1.0)
    """Own processing time per request, excluding waiting and downstream calls."""
    timeout_s: PositiveFloat | None = None
    """Callers of this service give up on an attempt after this long (None: never)."""
    retries: Annotated[int, Field(ge=0, le=50)] = 0
    """Extra attempts a caller makes after a failed attempt."""
    retry_backoff_s: NonNegFloat = 0.05
    """Delay before retry k (k = 0, 1, ...) is ``retry_backoff_s * 2**k``."""
    startup: Distribution = Distribution(mean=20.0, cv=0.25)
    """Time from scheduled to ready (image pull, start, readiness probe)."""
    termination_grace_s: NonNegFloat = 5.0
    error_rate: Fraction = 0.0
    """Probability that an attempt fails inside the service itself (application errors)."""

    @property
    def full_load_cores(self) -> float:
        """Cores used at full concurrency."""
        return self.cpu_full_load if self.cpu_full_load is not None else self.cpu_request

    @model_validator(mode="after")
    def _memory_fits(self) -> PodSpec:
        if self.memory_limit_mb < self.memory_request_mb:
            raise ValueError(
                f"memory_limit_mb ({self.memory_limit_mb}) is below memory_request_mb "
                f"({self.memory_request_mb}); raise the limit or lower the request"
            )
        return self


class Replicas(_Strict):
    """Replica counts of a service's deployment."""

    initial: Annotated[int, Field(ge=0)] = 2
    min: Annotated[int, Field(ge=0)] = 1
    max: Annotated[int, Field(ge=1)] = 20

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if not self.min <= self.max:
            raise ValueError(f"replicas.min ({self.min}) must be <= replicas.max ({self.max})")
        if not self.min <= self.initial <= self.max:
            raise ValueError(
                f"replicas.initial ({self.initial}) must lie in [min, max] = "
                f"[{self.min}, {self.max}]"
            )
        return self


class Service(_Strict):
    """One microservice: a deployment of identical pods."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_\-]*$")]
    pod: PodSpec = PodSpec()
    replicas: Replicas = Replicas()
    cost_per_pod_hour: NonNegFloat = 0.0
    """Extra cost per pod-hour on top of the node cost (e.g. a licence); usually 0."""


class Edge(_Strict):
    """A call from ``src`` to ``dst`` made while ``src`` serves a request."""

    src: str
    dst: str
    probability: Fraction = 1.0
    """Probability that a request at ``src`` calls ``dst`` at all."""
    calls: Annotated[float, Field(gt=0, le=100)] = 1.0
    """Mean calls per request when it calls; the fractional part is a Bernoulli extra call."""


class Topology(_Strict):
    """Services and their call graph (a directed acyclic graph)."""

    name: str = "custom"
    entry: str
    """Service that receives external traffic."""
    services: Annotated[list[Service], Field(min_length=1)]
    edges: list[Edge] = []

    @model_validator(mode="after")
    def _graph(self) -> Topology:
        names = [s.name for s in self.services]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"topology.services: duplicate service names {dup}")
        known = set(names)
        if self.entry not in known:
            raise ValueError(f"topology.entry {self.entry!r} is not a service; one of {names}")
        for i, e in enumerate(self.edges):
            for end in ("src", "dst"):
                if getattr(e, end) not in known:
                    raise ValueError(
                        f"topology.edges.{i}.{end}: unknown service {getattr(e, end)!r}"
                    )
            if e.src == e.dst:
                raise ValueError(f"topology.edges.{i}: a service cannot call itself ({e.src})")
        pairs = [(e.src, e.dst) for e in self.edges]
        if len(set(pairs)) != len(pairs):
            raise ValueError("topology.edges: duplicate (src, dst) pairs; merge them")
        self.topological_order()  # raises on a cycle
        return self

    def topological_order(self) -> list[int]:
        """Service indices, callers before callees. Raises ``ValueError`` on a cycle."""
        index = {s.name: i for i, s in enumerate(self.services)}
        indeg = [0] * len(self.services)
        children: list[list[int]] = [[] for _ in self.services]
        for e in self.edges:
            children[index[e.src]].append(index[e.dst])
            indeg[index[e.dst]] += 1
        ready = [i for i, d in enumerate(indeg) if d == 0]
        order: list[int] = []
        while ready:
            i = ready.pop(0)
            order.append(i)
            for j in children[i]:
                indeg[j] -= 1
                if indeg[j] == 0:
                    ready.append(j)
        if len(order) != len(self.services):
            cyc = [self.services[i].name for i, d in enumerate(indeg) if d > 0]
            raise ValueError(f"topology.edges: the call graph has a cycle through {cyc}")
        return order


class ClusterAutoscaler(_Strict):
    """Adds nodes when pods stay pending; removes empty nodes after a while."""

    enabled: bool = True
    min_nodes: Annotated[int, Field(ge=0)] = 1
    max_nodes: Annotated[int, Field(ge=1)] = 20
    scale_up_delay_s: NonNegFloat = 10.0
    """How long a pod must be pending before a node is requested."""
    scale_down_unneeded_s: NonNegFloat = 600.0
    """How long a node must be empty before it is removed."""


class Cluster(_Strict):
    """Nodes that pods are scheduled onto."""

    nodes: Annotated[int, Field(ge=1, le=1000)] = 3
    node_cpu: PositiveFloat = 8.0
    node_memory_mb: PositiveFloat = 32768.0
    node_startup_s: NonNegFloat = 90.0
    cost_per_node_hour: NonNegFloat = 0.384
    """On-demand price of an 8-core, 32 GB node (about an m5.2xlarge)."""
    autoscaler: ClusterAutoscaler | None = None


class Autoscaling(_Strict):
    """Autoscalers of pods that the control plane runs itself (nodes: ``cluster.autoscaler``)."""

    hpa: HPAConfig | None = None
    """Horizontal Pod Autoscalers, one per scaled service (``envs.kube.config.HPAConfig``),
    reconciled every ``sync_period_s`` from the scraped telemetry; None: no HPA. Their CPU
    target changes with the ``SetHPATarget`` action."""


class Diurnal(_Strict):
    """Daily (and optionally weekly) sinusoidal multiplier ``1 + a*sin(...)``."""

    amplitude: Annotated[float, Field(ge=0, lt=1)] = 0.5
    period_s: PositiveFloat = 86400.0
    peak_s: float = 14 * 3600.0
    """Time of day (seconds from the start) of the daily peak."""
    weekly_amplitude: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weekly_peak_s: float = 2.5 * 86400.0


class Step(_Strict):
    """From ``at_s`` on, traffic is multiplied by ``factor``."""

    at_s: NonNegFloat
    factor: PositiveFloat


class Burst(_Strict):
    """A flash crowd: ramps to ``factor`` x in ``ramp_s``, holds, ramps back down."""

    at_s: NonNegFloat
    duration_s: PositiveFloat
    factor: PositiveFloat = 3.0
    ramp_s: NonNegFloat = 30.0


class Trend(_Strict):
    """Linear growth: multiplier ``1 + per_hour * t / 3600`` (floored at 0)."""

    per_hour: float = 0.0


class Noise(_Strict):
    """Multiplicative log-normal noise, an AR(1) process with correlation time ``tau_s``."""

    cv: Annotated[float, Field(ge=0, le=2)] = 0.1
    tau_s: NonNegFloat = 30.0


class Replay(_Strict):
    """Replay of a user CSV with columns ``t`` (seconds) and ``rps``; linear interpolation."""

    path: str
    scale: PositiveFloat = 1.0
    loop: bool = True


class Traffic(_Strict):
    """External request rate at the entry service, as a product of patterns.

    ``rps(t) = base(t) * diurnal(t) * steps(t) * bursts(t) * trend(t) * noise(t)`` where
    ``base`` is ``base_rps`` or the replayed CSV. The rate is piecewise constant over
    ``resolution_s``; arrivals are a Poisson process with that rate.
    """

    base_rps: NonNegFloat = 100.0
    diurnal: Diurnal | None = None
    steps: list[Step] = []
    bursts: list[Burst] = []
    trend: Trend | None = None
    noise: Noise | None = None
    replay: Replay | None = None
    resolution_s: PositiveFloat = 1.0


class SLO(_Strict):
    """Service-level objective of one service."""

    p99_latency_s: PositiveFloat = 0.5
    error_rate: Annotated[float, Field(gt=0, lt=1)] = 0.01
    """Allowed error fraction (the error budget); 0.01 is a 99% availability target."""


class _Fault(_Strict):
    """Common fields of every fault: when it starts and, optionally, how long it lasts."""

    at_s: NonNegFloat
    """Onset, seconds from the start."""
    duration_s: PositiveFloat | None = None
    """How long the cause lasts; None: until a mitigation removes it."""


class PodCrashFault(_Fault):
    """Pod crash, or crash loop.

    Containers of ``pods`` pods crash; with ``crash_loop`` they crash again ``run_s`` after
    every start (CrashLoopBackOff) until the pods are replaced (restart or rollback).
    """

    kind: Literal["pod_crash"] = "pod_crash"
    service: str
    pods: Annotated[int, Field(ge=1)] = 1
    crash_loop: bool = False
    run_s: PositiveFloat = 5.0


class MemoryLeakFault(_Fault):
    """Memory leak ending in OOM kills.

    A deploy of a version that leaks ``leak_mb_per_s`` per pod; pods are OOM-killed at
    their memory limit and restart, and leak again, until rolled back.
    """

    kind: Literal["memory_leak"] = "memory_leak"
    service: str
    leak_mb_per_s: PositiveFloat = 1.0


class CpuHogFault(_Fault):
    """CPU hog (noisy neighbour) on a node.

    A noisy neighbour on node ``node``: pods there serve ``slowdown`` x slower until moved
    off it (drain the node) or the hog stops.
    """

    kind: Literal["cpu_hog"] = "cpu_hog"
    node: Annotated[int, Field(ge=0)] = 0
    slowdown: Annotated[float, Field(gt=1)] = 3.0


class BadDeployFault(_Fault):
    """Bad deploy.

    A rolling update to a version with a higher error rate and/or latency; rollback ends
    it.
    """

    kind: Literal["bad_deploy"] = "bad_deploy"
    service: str
    error_rate: Fraction = 0.2
    latency_factor: Annotated[float, Field(ge=1)] = 1.0


class SlowDependencyFault(_Fault):
    """Slow dependency.

    ``service`` (a dependency, e.g. a database behind it) gets ``latency_factor`` x slower;
    its callers time out and retry. Scaling the slow service out restores its capacity.
    """

    kind: Literal["slow_dependency"] = "slow_dependency"
    service: str
    latency_factor: Annotated[float, Field(gt=1)] = 4.0


class RetryStormFault(_Fault):
    """Retry storm (metastable overload).

    Clients of ``service`` start retrying aggressively (``timeout_s``, ``retries``) and a
    ``trigger_s`` slowdown tips it into overload that outlives the trigger (metastable),
    until load is shed or capacity added.
    """

    kind: Literal["retry_storm"] = "retry_storm"
    service: str
    trigger_s: PositiveFloat = 60.0
    latency_factor: Annotated[float, Field(gt=1)] = 5.0
    timeout_s: PositiveFloat = 0.1
    retries: Annotated[int, Field(ge=1, le=50)] = 4


class NodeFailureFault(_Fault):
    """Node ``node`` dies: its pods are lost and rescheduled where capacity allows."""

    kind: Literal["node_failure"] = "node_failure"
    node: Annotated[int, Field(ge=0)] = 0


class NetworkFault(_Fault):
    """Network degradation between two services.

    Calls from ``src`` to ``dst`` are lost with probability ``loss`` and delayed by
    ``delay_s``; replacing ``src``'s pods (a restart) moves them off the bad path.
    """

    kind: Literal["network"] = "network"
    src: str
    dst: str
    loss: Fraction = 0.1
    delay_s: NonNegFloat = 0.05


class MisconfigurationFault(_Fault):
    """Misconfiguration pushed to a service.

    A bad config push. ``scale_to_zero``: replicas set to 0 (scale back up to end it);
    ``memory_limit``: memory limit at ``factor`` x normal use (OOM loop; rollback ends it);
    ``cpu_limit``: CPU limit at ``factor`` x the request (throttled; rollback ends it).
    """

    kind: Literal["misconfiguration"] = "misconfiguration"
    service: str
    mode: Literal["scale_to_zero", "memory_limit", "cpu_limit"] = "scale_to_zero"
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.3


class FlashCrowdFault(_Fault):
    """Traffic rises to ``factor`` x normal within ``ramp_s`` and stays for ``duration_s``."""

    kind: Literal["flash_crowd"] = "flash_crowd"
    factor: Annotated[float, Field(gt=1)] = 4.0
    ramp_s: NonNegFloat = 30.0
    duration_s: PositiveFloat | None = 900.0


class TelemetryFault(_Fault):
    """Telemetry fault.

    Observation faults (the cluster itself is fine). ``gap``: no scrape succeeds;
    ``delay``: metrics arrive ``delay_scrapes`` scrapes late; ``noise``: gauges carry
    multiplicative noise of ``noise_cv``; ``missing_service``: ``service``'s metrics vanish.
    """

    kind: Literal["telemetry"] = "telemetry"
    mode: Literal["gap", "delay", "noise", "missing_service"] = "gap"
    service: str | None = None
    delay_scrapes: Annotated[int, Field(ge=1, le=20)] = 2
    noise_cv: Annotated[float, Field(gt=0, le=2)] = 0.3
    duration_s: PositiveFloat | None = 300.0


Fault = Annotated[
    PodCrashFault
    | MemoryLeakFault
    | CpuHogFault
    | BadDeployFault
    | SlowDependencyFault
    | RetryStormFault
    | NodeFailureFault
    | NetworkFault
    | MisconfigurationFault
    | FlashCrowdFault
    | TelemetryFault,
    Field(discriminator="kind"),
]
FAULT_KINDS: tuple[str, ...] = (
    "pod_crash",
    "memory_leak",
    "cpu_hog",
    "bad_deploy",
    "slow_dependency",
    "retry_storm",
    "node_failure",
    "network",
    "misconfiguration",
    "flash_crowd",
    "telemetry",
)


TRAFFIC_TICK_BYTES = 112
"""Memory one traffic tick takes (``envs.sim.traffic.TrafficModel``: five float64 arrays and
two Python float lists of ``horizon_s / resolution_s`` entries)."""
TRAFFIC_MAX_BYTES = 2 * 1024**3
"""The most memory the traffic ticks may take: a finer ``resolution_s`` is refused."""


class Scenario(_Strict):
    """A complete, reproducible simulation: topology, cluster, traffic, timing, SLOs, seed."""

    name: str = "custom"
    description: str = ""
    topology: Topology
    cluster: Cluster = Cluster()
    traffic: Traffic = Traffic()
    horizon_s: PositiveFloat = 3600.0
    scrape_interval_s: PositiveFloat = 15.0
    decision_interval_s: PositiveFloat = 15.0
    actuation_delay_s: NonNegFloat = 2.0
    """Delay between a decision and the API server acting on it."""
    slos: dict[str, SLO] = {}
    """SLOs by service name; services not named have no SLO. Default: the entry service."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Run seed (``numpy`` seeds are non-negative)."""
    fidelity: Literal["fluid", "request"] = "fluid"
    faults: list[Fault] = []
    """Incidents injected into the run (``docs/incidents.md``); several may overlap."""
    autoscaling: Autoscaling = Autoscaling()
    """Pod autoscalers the control plane runs (``autoscaling.hpa``)."""

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        names = {s.name for s in self.topology.services}
        for k in self.slos:
            if k not in names:
                raise ValueError(f"slos.{k}: unknown service; one of {sorted(names)}")
        if self.decision_interval_s < self.scrape_interval_s - 1e-9:
            raise ValueError(
                "decision_interval_s must be >= scrape_interval_s "
                f"({self.decision_interval_s} < {self.scrape_interval_s})"
            )
        ratio = self.decision_interval_s / self.scrape_interval_s
        if abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(
                "decision_interval_s must be a whole multiple of scrape_interval_s "
                f"(got {self.decision_interval_s} and {self.scrape_interval_s})"
            )
        edges = {(e.src, e.dst) for e in self.topology.edges}
        for i, f in enumerate(self.faults):
            for attr in ("service", "src", "dst"):
                name = getattr(f, attr, None)
                if name is not None and name not in names:
                    raise ValueError(
                        f"faults.{i}.{attr}: unknown service {name!r}; one of {sorted(names)}"
                    )
            if isinstance(f, NetworkFault) and (f.src, f.dst) not in edges:
                raise ValueError(
                    f"faults.{i}: no call edge {f.src} -> {f.dst} in the topology; "
                    "a network fault degrades an existing call path"
                )
            node = getattr(f, "node", None)
            if node is not None and node >= self.cluster.nodes:
                raise ValueError(
                    f"faults.{i}.node: node {node} does not exist at the start "
                    f"(cluster.nodes = {self.cluster.nodes}; nodes are numbered from 0)"
                )
            if f.duration_s is not None and isinstance(
                f, MemoryLeakFault | BadDeployFault | MisconfigurationFault
            ):
                raise ValueError(
                    f"faults.{i}.duration_s: a {f.kind} lasts until it is undone (rolled back "
                    "or scaled back up), not for a set time; remove duration_s"
                )
            if isinstance(f, TelemetryFault) and f.mode == "missing_service" and not f.service:
                raise ValueError(f"faults.{i}.service: mode missing_service needs a service")
            if f.at_s >= self.horizon_s:
                raise ValueError(
                    f"faults.{i}.at_s ({f.at_s}) is not before the horizon ({self.horizon_s})"
                )
        hpa = self.autoscaling.hpa
        if hpa is not None:
            bounds = {s.name: (s.replicas.min, s.replicas.max) for s in self.topology.services}
            try:
                HPAController(hpa, list(bounds), bounds)
            except ValueError as err:
                raise ValueError(f"autoscaling.hpa: {err}") from None
        if self.horizon_s < self.decision_interval_s:
            raise ValueError(
                f"horizon_s ({self.horizon_s}) is shorter than one decision interval "
                f"({self.decision_interval_s})"
            )
        ticks = self.horizon_s / self.traffic.resolution_s + 1
        need = ticks * TRAFFIC_TICK_BYTES
        if need > TRAFFIC_MAX_BYTES:
            finest = self.horizon_s * TRAFFIC_TICK_BYTES / TRAFFIC_MAX_BYTES
            raise ValueError(
                f"traffic.resolution_s={self.traffic.resolution_s:g}: {ticks:.3g} traffic ticks "
                f"over horizon_s={self.horizon_s:g} would take about {need / 1024**3:,.1f} GiB "
                f"of memory (limit {TRAFFIC_MAX_BYTES / 1024**3:g} GiB); use resolution_s >= "
                f"{finest:.2g} (default 1.0)"
            )
        return self

    @property
    def service_names(self) -> list[str]:
        """Service names in topology order."""
        return [s.name for s in self.topology.services]

    def effective_slos(self) -> dict[str, SLO]:
        """The SLOs in force: those given, or a default SLO on the entry service."""
        return dict(self.slos) if self.slos else {self.topology.entry: SLO()}
