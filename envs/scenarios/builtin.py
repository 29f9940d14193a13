"""Built-in scenarios: ``chain3``, ``boutique`` and ``mesh40``.

Each is returned as a raw dict (``builtin_scenario(name)``) and validated later by
:class:`envs.scenarios.schema.Scenario`; :func:`envs.scenarios.loader.load_scenario` does both.
All three run one hour (``horizon_s = 3600``), scrape and decide every 15 s, use seed 0 and
the fluid engine, have constant traffic (no noise) so that utilisation is known, and put an
SLO on the entry service.

They are calibrated with :func:`offered_load` (a worker slot is held for the service's own
processing only, as both engines model it): at the default ``base_rps`` and the initial
replicas, every service's offered load lies in ``[0.3, 0.6]``. Rates are kept moderate (at
most about 5000 attempts per second in all) so that the request-level engine runs a
simulated minute in seconds. Internal calls time out after at least ten normal mean
response times, with 1-2 retries; the entry has no timeout. The entry SLO's p99 is about
three times the normal p99 (fluid engine, initial replicas, constant traffic).

* ``chain3``: ``frontend -> api -> db``.
* ``boutique``: the call graph of Google's Online Boutique demo (11 services) with a browsing
  heavy user mix.
* ``mesh40``: a 40-service layered DAG drawn once by a fixed-seed generator (the same forever).

``docs/scenarios.md`` draws the call graphs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from envs.scenarios.schema import Scenario

BUILTIN_SCENARIOS: tuple[str, ...] = ("chain3", "boutique", "mesh40")
"""Names accepted by :func:`builtin_scenario`."""

TARGET_LOAD = 0.45
"""Offered load the built-ins are calibrated to (each service lands in ``[0.3, 0.6]``)."""

_COMMON: dict[str, Any] = {
    "horizon_s": 3600.0,
    "scrape_interval_s": 15.0,
    "decision_interval_s": 15.0,
    "seed": 0,
    "fidelity": "fluid",
}


def builtin_scenario(name: str) -> dict[str, Any]:
    """Raw dict of a built-in scenario (a fresh copy: callers may change it).

    Args:
        name: One of :data:`BUILTIN_SCENARIOS`.

    Returns:
        A plain dict that ``Scenario.model_validate`` accepts.

    Raises:
        ValueError: For an unknown name; the message lists the built-ins.
    """
    builders: dict[str, Callable[[], dict[str, Any]]] = {
        "chain3": _chain3,
        "boutique": _boutique,
        "mesh40": _mesh40,
    }
    if name not in builders:
        raise ValueError(
            f"unknown built-in scenario {name!r}; the built-ins are {list(BUILTIN_SCENARIOS)} "
            "(or give a path to a scenario YAML file)"
        )
    return copy.deepcopy(builders[name]())


def offered_load(scenario: Scenario, rps: float | None = None) -> dict[str, float]:
    """Queueing-free utilisation of each service at the initial replicas.

    ``load = arrival rate * mean own service time / (replicas.initial * concurrency)``: a
    worker slot is held for the service's own processing only, downstream calls are made
    after it is released (asynchronous servers, as both engines model them). The arrival
    rate is that of :func:`flow_rates` (no timeouts, retries or errors). This is
    :func:`envs.sim.validation.utilisation` by service name.

    A service with no initial replicas but some traffic has load ``inf`` (0 without traffic).

    Args:
        scenario: A validated scenario.
        rps: External rate at the entry; ``scenario.traffic.base_rps`` when None.

    Returns:
        Offered load by service name, in the order of ``topology.services``.
    """
    lam = flow_rates(scenario, rps)
    out: dict[str, float] = {}
    for s in scenario.topology.services:
        slots = s.replicas.initial * s.pod.concurrency
        busy = lam[s.name] * s.pod.service_time.mean
        out[s.name] = busy / slots if slots > 0 else (math.inf if busy > 0 else 0.0)
    return out


def flow_rates(scenario: Scenario, rps: float | None = None) -> dict[str, float]:
    """Attempt arrival rate (1/s) at each service, with no timeouts, retries or errors.

    The entry gets ``rps`` (default ``traffic.base_rps``); any other service gets the sum
    over its callers of ``caller's rate * probability * calls``. So the sum of the rates is
    the number of attempts per second the engines simulate.

    Args:
        scenario: A validated scenario.
        rps: External rate at the entry; ``scenario.traffic.base_rps`` when None.

    Returns:
        Arrival rate by service name, in the order of ``topology.services``.
    """
    topo = scenario.topology
    names = [s.name for s in topo.services]
    lam = dict.fromkeys(names, 0.0)
    lam[topo.entry] = float(scenario.traffic.base_rps if rps is None else rps)
    out_edges: dict[str, list[tuple[str, float]]] = {n: [] for n in names}
    for e in topo.edges:
        out_edges[e.src].append((e.dst, e.probability * e.calls))
    for i in topo.topological_order():  # callers before callees
        for dst, visits in out_edges[names[i]]:
            lam[dst] += lam[names[i]] * visits
    return lam


def describe(scenario: Scenario) -> str:
    """The call graph as text: services in call order with their flow numbers and callees.

    One block per service, in the order of ``topology.services``::

        frontend  300.0 rps, 5 ms, 2 pods x 2 slots, load 0.38
          -> api       p=1 calls=1

    Rates and loads are those of :func:`flow_rates` and :func:`offered_load` at
    ``traffic.base_rps``; ``ms`` is the mean own service time. ``docs/scenarios.md``
    shows this for every built-in (a test checks they agree).

    Args:
        scenario: A validated scenario.

    Returns:
        Multi-line text without a trailing newline.
    """
    topo = scenario.topology
    lam = flow_rates(scenario)
    load = offered_load(scenario)
    width = max(len(n) for n in scenario.service_names)
    lines = []
    for s in topo.services:
        pods = f"{s.replicas.initial} pod{'s' if s.replicas.initial != 1 else ''}"
        lines.append(
            f"{s.name:<{width}}  {lam[s.name]:.1f} rps, {s.pod.service_time.mean * 1000:g} ms, "
            f"{pods} x {s.pod.concurrency} slot{'s' if s.pod.concurrency != 1 else ''}, "
            f"load {load[s.name]:.2f}"
        )
        for e in topo.edges:
            if e.src == s.name:
                lines.append(f"  -> {e.dst:<{width}}  p={e.probability:g} calls={e.calls:g}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# helpers


def _svc(
    name: str,
    service_ms: float,
    concurrency: int,
    replicas: int,
    cpu: float,
    memory_mb: float = 256.0,
    timeout_s: float | None = None,
    retries: int = 0,
    cv: float = 1.0,
) -> dict[str, Any]:
    """Raw service dict with the knobs the built-ins vary."""
    pod: dict[str, Any] = {
        "cpu_request": cpu,
        "memory_request_mb": memory_mb,
        "memory_limit_mb": 2 * memory_mb,
        "memory_base_mb": memory_mb / 2,
        "concurrency": concurrency,
        "service_time": {"mean": service_ms / 1000.0, "cv": cv},
    }
    if timeout_s is not None:
        pod["timeout_s"] = timeout_s
        pod["retries"] = retries
    return {
        "name": name,
        "pod": pod,
        "replicas": {"initial": replicas, "min": 1, "max": max(20, 2 * replicas)},
    }


def _edge(src: str, dst: str, probability: float = 1.0, calls: float = 1.0) -> dict[str, Any]:
    return {"src": src, "dst": dst, "probability": probability, "calls": calls}


def _services(rows: tuple[tuple[Any, ...], ...]) -> list[dict[str, Any]]:
    """Service dicts from rows ``(name, ms, concurrency, replicas, cpu, mem, timeout, retries)``."""
    return [
        _svc(n, ms, concurrency=c, replicas=r, cpu=cpu, memory_mb=mem, timeout_s=to, retries=k)
        for n, ms, c, r, cpu, mem, to, k in rows
    ]


# --------------------------------------------------------------------------------------------
# chain3

# Mean own service time (ms), concurrency (worker slots per pod, each held for the own
# processing only), initial replicas, CPU request (cores), memory request (MB), timeout
# callers apply (s; None: no timeout) and retries callers make.
# fmt: off
_CHAIN3 = (
    # name       ms    conc  repl  cpu  mem_mb  timeout  retries
    ("frontend", 5.0,  2,    2,    0.5, 256.0,  None,    0),
    ("api",      12.0, 4,    2,    0.5, 256.0,  0.3,     1),
    ("db",       10.0, 3,    2,    1.0, 1024.0, 0.2,     2),
)
# fmt: on


def _chain3() -> dict[str, Any]:
    return {
        "name": "chain3",
        "description": (
            "Three services in a chain, frontend -> api -> db; constant 300 rps; "
            "offered load about 0.4-0.5 everywhere."
        ),
        "topology": {
            "name": "chain3",
            "entry": "frontend",
            "services": _services(_CHAIN3),
            "edges": [_edge("frontend", "api"), _edge("api", "db")],
        },
        "traffic": {"base_rps": 300.0},
        # Normal frontend p99 is about 80 ms (mean 28 ms).
        "slos": {"frontend": {"p99_latency_s": 0.25, "error_rate": 0.01}},
        **_COMMON,
    }


# --------------------------------------------------------------------------------------------
# boutique

# fmt: off
_BOUTIQUE = (
    # name                    ms    conc  repl  cpu   mem_mb  timeout  retries
    ("frontend",              12.0, 2,    3,    0.5,  256.0,  None,    0),
    ("adservice",             5.0,  2,    1,    0.5,  512.0,  0.2,     1),
    ("recommendationservice", 12.0, 2,    2,    0.5,  512.0,  0.4,     1),
    ("productcatalogservice", 3.0,  2,    2,    0.25, 256.0,  0.2,     2),
    ("cartservice",           5.0,  2,    1,    0.25, 512.0,  0.3,     1),
    ("redis-cart",            1.2,  1,    1,    0.25, 1024.0, 0.1,     2),
    ("shippingservice",       8.0,  2,    1,    0.25, 256.0,  0.3,     1),
    ("currencyservice",       2.0,  2,    2,    0.25, 256.0,  0.1,     2),
    ("checkoutservice",       40.0, 2,    1,    0.5,  256.0,  3.0,     1),
    ("paymentservice",        80.0, 4,    1,    0.25, 256.0,  1.5,     1),
    ("emailservice",          70.0, 4,    1,    0.25, 256.0,  1.0,     1),
)
# Per frontend request (a page view), most are browsing: every page converts prices (3
# currency calls) and lists products (1.5 catalog calls); 60% show an ad, half show
# recommendations, half the cart, 20% quote shipping, 8% place an order. An order reads and
# empties the cart, reads its products, quotes and ships, converts, charges and mails.
# Payment and email stand for external systems (I/O bound: slow, several calls in flight).
# At 250 page views per second orders come at 20/s, so checkout, payment and email get one
# pod each; redis is single-threaded (one slot). The frontend, the largest pool, is the
# busiest: scaled up (``envs.sim.validation.at_utilisation``) the small pools stay well
# below it, where both engines agree.
_BOUTIQUE_EDGES = (
    # src                     dst                      probability  calls
    ("frontend",              "currencyservice",       1.0,         3.0),
    ("frontend",              "productcatalogservice", 1.0,         1.5),
    ("frontend",              "adservice",             0.6,         1.0),
    ("frontend",              "recommendationservice", 0.5,         1.0),
    ("frontend",              "cartservice",           0.5,         1.0),
    ("frontend",              "shippingservice",       0.2,         1.0),
    ("frontend",              "checkoutservice",       0.08,        1.0),
    ("recommendationservice", "productcatalogservice", 1.0,         1.0),
    ("cartservice",           "redis-cart",            1.0,         2.0),
    ("checkoutservice",       "cartservice",           1.0,         2.0),
    ("checkoutservice",       "productcatalogservice", 1.0,         2.0),
    ("checkoutservice",       "shippingservice",       1.0,         2.0),
    ("checkoutservice",       "currencyservice",       1.0,         3.0),
    ("checkoutservice",       "paymentservice",        1.0,         1.0),
    ("checkoutservice",       "emailservice",          1.0,         1.0),
)
# fmt: on


def _boutique() -> dict[str, Any]:
    return {
        "name": "boutique",
        "description": (
            "Google's Online Boutique call graph (11 services) under a browsing-heavy user "
            "mix; constant 250 page views per second; offered load about 0.4-0.5 everywhere."
        ),
        "topology": {
            "name": "boutique",
            "entry": "frontend",
            "services": _services(_BOUTIQUE),
            "edges": [_edge(*row) for row in _BOUTIQUE_EDGES],
        },
        "traffic": {"base_rps": 250.0},
        # Normal frontend p99 is about 370 ms (fluid; 440 ms at request level; mean 62 ms),
        # set by the 8% of page views that place an order (checkout takes about 250 ms).
        "slos": {"frontend": {"p99_latency_s": 1.0, "error_rate": 0.01}},
        **_COMMON,
    }


# --------------------------------------------------------------------------------------------
# mesh40

_MESH_SEED = 40
_MESH_LAYERS = (1, 4, 8, 12, 15)
"""Services per layer, entry first: 40 in all."""
_MESH_SERVICE_MS = ((1.0, 5.0), (1.0, 5.0), (2.0, 10.0), (5.0, 20.0), (5.0, 20.0))
"""Range of mean service times per layer, ms: light routers on top, heavy backends below."""
_MESH_RPS = 100.0
"""Default rate at the gateway: about 4900 attempts per second in all."""
_MESH_MIN_LOAD = 0.35
"""Offered load a service gets at least: one with too little traffic is made slower."""
_MESH_MAX_CONCURRENCY = 4
"""Worker slots per pod at most: a busier service gets more pods."""
_MESH_TIMEOUT_FACTOR = 25.0
"""Timeout on calls to a service: this times its queueing-free response time (0.1 s steps)."""
_MESH_SLO_P99_S = 3.0
"""Entry p99 objective: about three times the normal p99 (fluid engine, initial replicas)."""


def _mesh40() -> dict[str, Any]:
    """A layered random DAG, drawn with a fixed seed and calibrated to ``TARGET_LOAD``.

    Every service above the last layer calls 1-4 services in lower layers (the next layer
    70% of the time) and every service below the entry has a caller in the layer above.
    Probabilities 0.2-1 (1 from the gateway), calls 1 (2 one time in ten), mean service
    times 1-20 ms (cv 1) growing with depth. At the default rate (``_MESH_RPS``) each
    service gets the worker slots that give an offered load nearest 0.45 (at most 4 a pod,
    on the fewest pods; one slot at least); a service whose load would still be below
    ``_MESH_MIN_LOAD`` (too little traffic for even one slot, or a little more than one
    slot takes) is made slower until it reaches it. Calls to a service time out after 25
    of its queueing-free response times (own service plus every call), with one retry.
    """
    rng = np.random.default_rng(_MESH_SEED)
    layers: list[list[str]] = [
        ["gateway"] if li == 0 else [f"l{li}-svc{j:02d}" for j in range(size)]
        for li, size in enumerate(_MESH_LAYERS)
    ]
    names = [n for layer in layers for n in layer]
    callees: dict[str, list[str]] = {n: [] for n in names}
    # First every service below the entry gets one caller in the layer right above ...
    for li, nxt in enumerate(layers[1:]):
        for m in nxt:
            room = [n for n in layers[li] if len(callees[n]) < 4]
            callees[room[int(rng.integers(len(room)))]].append(m)
    # ... then each caller draws up to 1-4 callees, from the next layer 70% of the time.
    for li, layer in enumerate(layers[:-1]):
        deeper = [m for lj in range(li + 2, len(layers)) for m in layers[lj]]
        for n in layer:
            k = int(rng.integers(1, 5))
            while len(callees[n]) < k:
                pool = layers[li + 1] if (not deeper or rng.random() < 0.7) else deeper
                pool = [m for m in pool if m not in callees[n]]
                if pool:
                    callees[n].append(pool[int(rng.integers(len(pool)))])
    edges = []
    for src in names:
        for dst in callees[src]:
            p = 1.0 if src == "gateway" else round(float(rng.uniform(0.2, 1.0)), 2)
            calls = 2.0 if rng.random() < 0.1 else 1.0
            edges.append(_edge(src, dst, p, calls))
    drawn_ms = {
        n: round(float(rng.uniform(*_MESH_SERVICE_MS[li])), 1)
        for li, layer in enumerate(layers)
        for n in layer
    }

    # Calibrate: slots first, then service times (enough work everywhere), then timeouts.
    probe = {
        "topology": {
            "entry": "gateway",
            "services": [_svc(n, 1.0, 1, 1, 0.25) for n in names],
            "edges": edges,
        },
        "traffic": {"base_rps": _MESH_RPS},
    }
    lam = flow_rates(Scenario.model_validate(probe))
    service_ms: dict[str, float] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for n in names:
        sizes[n] = _size(lam[n] * drawn_ms[n] / 1000.0)
        slots = sizes[n][0] * sizes[n][1]
        least_ms = 1000.0 * _MESH_MIN_LOAD * slots / lam[n]  # service time giving the floor
        service_ms[n] = max(drawn_ms[n], math.ceil(10.0 * least_ms) / 10.0)
    if max(service_ms.values()) > _MESH_SERVICE_MS[-1][1]:  # pragma: no cover
        raise ValueError("mesh40: a service gets too little traffic to calibrate")
    response_s = dict.fromkeys(names, 0.0)  # queueing-free: own service plus every call
    for n in reversed(names):  # layers are in call order, so callees come first
        response_s[n] = service_ms[n] / 1000.0 + sum(
            e["probability"] * e["calls"] * response_s[e["dst"]] for e in edges if e["src"] == n
        )
    services = []
    for n in names:
        replicas, conc = sizes[n]
        timeout = math.ceil(_MESH_TIMEOUT_FACTOR * response_s[n] * 10.0) / 10.0
        cpu = 0.25 if conc <= 2 else 0.5
        services.append(_svc(n, service_ms[n], conc, replicas, cpu, timeout_s=timeout, retries=1))
    for key in ("timeout_s", "retries"):  # nobody but the outside world calls the gateway
        services[0]["pod"].pop(key)
    return {
        "name": "mesh40",
        "description": (
            "A 40-service layered call graph (gateway and four layers) drawn by a fixed-seed "
            f"generator; constant {_MESH_RPS:g} rps; offered load about 0.35-0.55 everywhere."
        ),
        "topology": {"name": "mesh40", "entry": "gateway", "services": services, "edges": edges},
        "cluster": {"nodes": 5},
        "traffic": {"base_rps": _MESH_RPS},
        "slos": {"gateway": {"p99_latency_s": _MESH_SLO_P99_S, "error_rate": 0.01}},
        **_COMMON,
    }


def _size(busy: float) -> tuple[int, int]:
    """Replicas and concurrency for ``busy`` busy slots at an offered load near 0.45.

    The number of slots with the load nearest ``TARGET_LOAD`` (at least one), on the fewest
    pods of at most ``_MESH_MAX_CONCURRENCY`` slots, the concurrency rounded up or down
    whichever lands nearer.
    """
    near = max(1, math.floor(busy / TARGET_LOAD))
    slots = min((near, near + 1), key=lambda n: abs(busy / n - TARGET_LOAD))
    replicas = math.ceil(slots / _MESH_MAX_CONCURRENCY)
    conc = min(
        (max(1, slots // replicas), math.ceil(slots / replicas)),
        key=lambda c: abs(busy / (replicas * c) - TARGET_LOAD),
    )
    return replicas, conc
