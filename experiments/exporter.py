"""``opsworld exporter``: the simulator as a live cluster behind a Prometheus ``/metrics``.

``opsworld exporter scenario=boutique port=9108 speed=1`` runs the scenario in wall-clock
time (``speed`` simulated seconds per wall second) under a controller (``policy=hpa`` by
default: the Kubernetes HPA, as on a real cluster) and serves ``http://127.0.0.1:9108/metrics``
under kube-state-metrics, cAdvisor and HTTP-service names (:mod:`envs.live.exporter`,
``docs/live.md``). Faults of the scenario play out as the simulation reaches them. It runs
until Ctrl-C, or for ``duration_s`` wall seconds when given; after the horizon the last frame
stays on show.

The Hydra entry point only calls :func:`run_exporter`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from envs.live.exporter import ExporterServer, LiveSimulation, serve
from envs.scenarios.loader import ScenarioError, load_scenario
from envs.sim.simulator import Simulator
from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError, structured_config
from experiments.simulate import Fidelity, PolicyConfig, check_policy, make_policy
from experiments.simulate import register_configs as register_policies


@dataclass
class ExporterConfig:
    """Schema of ``configs/exporter.yaml``; a wrong key or type fails at start.

    Attributes:
        scenario: Built-in scenario name or a YAML path.
        fidelity: ``fluid`` or ``request``; None keeps the scenario's.
        seed: Overrides the scenario's seed when given.
        horizon_s: Overrides the scenario's horizon (simulated seconds) when given.
        policy: The controller of the simulated cluster (config group ``policy``).
        host: Address to bind (loopback unless told otherwise).
        port: TCP port of ``/metrics`` (0 = any free port, printed at start).
        speed: Simulated seconds per wall second (> 0).
        namespace: The ``namespace`` label of every series.
        duration_s: Stop after this many wall seconds; None runs until Ctrl-C.
        scenario_overrides: Nested scenario overrides, e.g.
            ``scenario_overrides.scrape_interval_s=5``.
    """

    scenario: str = "boutique"
    fidelity: Fidelity | None = None
    seed: int | None = None
    horizon_s: float | None = None
    policy: PolicyConfig = MISSING
    host: str = "127.0.0.1"
    port: int = 9108
    speed: float = 1.0
    namespace: str = "opsworld"
    duration_s: float | None = None
    scenario_overrides: dict[str, Any] = field(default_factory=dict)


SCHEMA = ExporterConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def start_exporter(cfg: DictConfig | ExporterConfig | Mapping[str, Any]) -> ExporterServer:
    """Validate ``cfg``, build the simulation and start serving; returns the running server.

    Raises:
        ConfigError: For a bad scenario, policy, speed or port, naming the field.
    """
    conf = structured_config(ExporterConfig, cfg, "exporter")
    if not conf.speed > 0:
        raise ConfigError(f"speed={conf.speed}: must be > 0 (simulated seconds per wall second)")
    if not 0 <= conf.port <= 65535:
        raise ConfigError(f"port={conf.port}: must be in 0..65535 (0 = any free port)")
    check_policy(conf.policy)
    overrides: dict[str, Any] = dict(conf.scenario_overrides)
    for key in ("fidelity", "seed", "horizon_s"):
        value = getattr(conf, key)
        if value is not None:
            overrides[key] = value.value if isinstance(value, Fidelity) else value
    try:
        scenario = load_scenario(conf.scenario, overrides)
    except ScenarioError as err:
        raise ConfigError(f"scenario={conf.scenario}: {err}") from None
    live = LiveSimulation(
        Simulator(scenario), make_policy(conf.policy, scenario), conf.speed, conf.namespace
    )
    try:
        return serve(live, conf.host, conf.port)
    except OSError as err:
        raise ConfigError(f"port={conf.port} on host={conf.host}: cannot bind ({err})") from None


def run_exporter(
    cfg: DictConfig | ExporterConfig | Mapping[str, Any],
    say: Callable[[str], Any] = print,
) -> None:
    """Start the exporter, announce its URL, and serve until Ctrl-C or ``duration_s``."""
    server = start_exporter(cfg)
    conf = structured_config(ExporterConfig, cfg, "exporter")
    sc = server.live.sim.scenario
    say(
        f"opsworld exporter: {sc.name} ({sc.fidelity}, seed {sc.seed}) at speed {conf.speed:g}, "
        f"metrics on {server.url}/metrics"
    )
    deadline = None if conf.duration_s is None else time.monotonic() + conf.duration_s
    try:
        while deadline is None or time.monotonic() < deadline:
            if server.live.error is not None:
                raise server.live.error
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent; call before composing)."""
    register_policies()
    ConfigStore.instance().store(name="exporter_schema", node=ExporterConfig)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="exporter")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run_exporter(cfg)
    except ConfigError as err:
        print(f"opsworld exporter: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def main() -> None:
    """Console entry: register the schemas, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()
