"""One figure per fault kind: its symptom signature, under no-op and under its mitigation.

Run: ``.venv/bin/python -m experiments.incident_plots [--out docs/img/incidents]
[--fidelity fluid] [--only pod_crash,telemetry]``.

For every entry of :data:`DEMOS` (one per fault kind; one per mode for ``misconfiguration``)
the demo's scenario runs once per :class:`Variant`: first under no-op
(:class:`agents.policy.StaticPolicy`), then with the documented mitigation taken by a
:class:`ScriptedPolicy` at a fixed time (some demos add a third line, e.g. the retry storm's
trigger alone). Each figure (``<out>/<name>.png``) stacks:

1. the entry's error rate, with the allowed error rate dashed;
2. the entry's p99 latency (log scale), with the SLO dashed;
3. ready replicas of the affected service;
4. the demo's own panels (memory for a leak, restarts for a crash loop, rps for a flash
   crowd, ...).

The fault's onset is a red dashed vertical line, the cause's scheduled end (``duration_s``)
a grey one, each mitigation action a green dotted one. Missing values are gaps, never zeros.
Telemetry faults, which change only what is observed, get their own figure
(:func:`plot_telemetry`): the four modes one after another, observed gauges against the
ground truth of the same seed without the fault.

``docs/incidents.md`` shows these figures and documents every kind.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from agents.policy import ScriptedPolicy, StaticPolicy
from agents.rollout import rollout
from envs.core.actions import Action, DrainNode, Restart, Rollback, Scale, ShedLoad
from envs.core.policy import Policy
from envs.core.telemetry import Telemetry
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.sim.simulator import SimResult, Simulator

COMMAND = "python -m experiments.incident_plots"
ONSET_S = 120.0
"""Onset of every demo's fault."""
HEADROOM = {
    "topology.services.api.replicas.initial": 4,
    "topology.services.db.replicas.initial": 4,
}
"""chain3 with twice the api and db pods (a 3x flash crowd then overloads only the frontend)."""
FULL_CLUSTER = {"cluster.node_cpu": 1.5}
"""Three 1.5-core nodes: chain3's six pods fill them, leaving no room for a replacement."""


@dataclass(frozen=True)
class Variant:
    """One line of a figure: a policy script and what differs from the demo's scenario.

    Attributes:
        label: Legend text.
        script: Decision time (s) -> actions; empty means the static no-op policy.
        overrides: Extra dotted-key scenario overrides for this run only.
        faults: Replaces the demo's faults for this run (None: keep them).
    """

    label: str
    script: Mapping[float, Sequence[Action]] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    faults: tuple[Mapping[str, Any], ...] | None = None


@dataclass(frozen=True)
class Panel:
    """A kind-specific panel: one gauge of one service (``service=None``: a cluster gauge)."""

    field: str
    service: str | None
    label: str
    log: bool = False


NOOP = Variant("no-op (static policy)")


@dataclass(frozen=True)
class Demo:
    """One figure: a fault on a scenario, run once per variant.

    Attributes:
        name: File stem of the PNG.
        kind: The fault kind it shows.
        title: Figure title.
        faults: Fault specs (``at_s`` included), as in a scenario file.
        service: The affected service (ready-replica panel).
        panels: The kind-specific panels.
        variants: No-op first, then the mitigation (and any other comparison).
        scenario: Built-in scenario name.
        horizon_s: Simulated seconds per run.
        overrides: Dotted-key scenario overrides for every run.
    """

    name: str
    kind: str
    title: str
    faults: tuple[Mapping[str, Any], ...]
    service: str
    panels: tuple[Panel, ...]
    variants: tuple[Variant, ...]
    scenario: str = "chain3"
    horizon_s: float = 600.0
    overrides: Mapping[str, Any] = field(default_factory=dict)


def _fault(kind: str, **spec: Any) -> dict[str, Any]:
    return {"kind": kind, "at_s": ONSET_S, **spec}


DEMOS: tuple[Demo, ...] = (
    Demo(
        "pod_crash",
        "pod_crash",
        "Crash loop: both api pods crash 5 s after every start (CrashLoopBackOff)",
        (_fault("pod_crash", service="api", pods=2, crash_loop=True, run_s=5.0),),
        "api",
        (Panel("restarts", "api", "api restarts\n(cumulative)"),),
        (NOOP, Variant("Restart(api) at 300 s", {300: [Restart("api")]})),
    ),
    Demo(
        "memory_leak",
        "memory_leak",
        "Memory leak: a new api version leaks 8 MB/s per pod until OOM-killed",
        (_fault("memory_leak", service="api", leak_mb_per_s=8.0),),
        "api",
        (
            Panel("memory_usage_mb", "api", "api memory\n(MB, ready pods)"),
            Panel("oom_kills", "api", "api OOM kills\n(cumulative)"),
        ),
        (NOOP, Variant("Rollback(api) at 360 s", {360: [Rollback("api")]})),
    ),
    Demo(
        "cpu_hog",
        "cpu_hog",
        "CPU hog: node 0 (a frontend and an api pod) serves 4x slower",
        (_fault("cpu_hog", node=0, slowdown=4.0),),
        "api",
        (Panel("cpu_util", "api", "api CPU\nutilisation"),),
        (NOOP, Variant("DrainNode(0) at 300 s", {300: [DrainNode(0)]})),
    ),
    Demo(
        "bad_deploy",
        "bad_deploy",
        "Bad deploy: api version 1 fails 30% of its attempts",
        (_fault("bad_deploy", service="api", error_rate=0.3),),
        "api",
        (
            Panel("error_rate", "api", "api error rate"),
            Panel("deploy_version", "api", "api deploy\nversion"),
        ),
        (NOOP, Variant("Rollback(api) at 300 s", {300: [Rollback("api")]})),
    ),
    Demo(
        "slow_dependency",
        "slow_dependency",
        "Slow dependency: the api (the frontend's dependency) serves 3x slower",
        (_fault("slow_dependency", service="api", latency_factor=3.0),),
        "api",
        (
            Panel("p99", "api", "api p99 (s)", log=True),
            Panel("cpu_util", "api", "api CPU\nutilisation"),
        ),
        (NOOP, Variant("Scale(api, 8) at 300 s", {300: [Scale("api", 8)]})),
    ),
    Demo(
        "retry_storm",
        "retry_storm",
        "Retry storm: api clients retry 4x at 0.1 s; a 30 s 5x slowdown tips it over",
        (_fault("retry_storm", service="api", trigger_s=30.0),),
        "api",
        (Panel("rps", "api", "api attempts/s\n(retries included)"),),
        (
            NOOP,
            Variant(
                "ShedLoad(0.9) at 300 s, ShedLoad(0) at 345 s",
                {300: [ShedLoad(0.9)], 345: [ShedLoad(0.0)]},
            ),
            Variant(
                "trigger alone, no-op (slow_dependency 5x for 30 s)",
                faults=(
                    _fault("slow_dependency", service="api", latency_factor=5.0, duration_s=30.0),
                ),
            ),
        ),
    ),
    Demo(
        "node_failure",
        "node_failure",
        "Node failure in a full cluster: node 0 (a frontend and an api pod) dies",
        (_fault("node_failure", node=0),),
        "api",
        (
            Panel("replicas_pending", "api", "api pods\npending"),
            Panel("nodes_ready", None, "nodes ready"),
        ),
        (
            Variant("no-op, no cluster autoscaler"),
            Variant(
                "no-op, cluster autoscaler on (adds a node)",
                overrides={"cluster.autoscaler": {"enabled": True}},
            ),
            Variant(
                "no-op, spare capacity (default 8-core nodes)", overrides={"cluster.node_cpu": 8.0}
            ),
        ),
        overrides=FULL_CLUSTER,
    ),
    Demo(
        "network",
        "network",
        "Network fault: frontend -> api calls lose 30% and gain 50 ms",
        (_fault("network", src="frontend", dst="api", loss=0.3, delay_s=0.05),),
        "frontend",
        (Panel("error_rate", "api", "api error rate\n(lost calls)"),),
        (NOOP, Variant("Restart(frontend) at 300 s", {300: [Restart("frontend")]})),
    ),
    Demo(
        "misconfiguration_scale_to_zero",
        "misconfiguration",
        "Misconfiguration (scale_to_zero): api replicas set to 0",
        (_fault("misconfiguration", service="api", mode="scale_to_zero"),),
        "api",
        (Panel("replicas_desired", "api", "api desired\nreplicas"),),
        (NOOP, Variant("Scale(api, 2) at 300 s", {300: [Scale("api", 2)]})),
    ),
    Demo(
        "misconfiguration_memory_limit",
        "misconfiguration",
        "Misconfiguration (memory_limit): api memory limit at 0.3x normal use",
        (_fault("misconfiguration", service="api", mode="memory_limit", factor=0.3),),
        "api",
        (
            Panel("oom_kills", "api", "api OOM kills\n(cumulative)"),
            Panel("p99", "api", "api p99 (s)", log=True),
        ),
        (NOOP, Variant("Rollback(api) at 300 s", {300: [Rollback("api")]})),
    ),
    Demo(
        "misconfiguration_cpu_limit",
        "misconfiguration",
        "Misconfiguration (cpu_limit): api CPU limit at 0.3x its request",
        (_fault("misconfiguration", service="api", mode="cpu_limit", factor=0.3),),
        "api",
        (Panel("cpu_util", "api", "api CPU\nutilisation"),),
        (NOOP, Variant("Rollback(api) at 300 s", {300: [Rollback("api")]})),
    ),
    Demo(
        "flash_crowd",
        "flash_crowd",
        "Flash crowd: 3x traffic within 30 s for 4 min (chain3, api and db at 4 pods)",
        (_fault("flash_crowd", factor=3.0, ramp_s=30.0, duration_s=240.0),),
        "frontend",
        (
            Panel("rps", "frontend", "entry rps\n(req/s)"),
            Panel("backlog", "frontend", "frontend\nbacklog"),
        ),
        (NOOP, Variant("Scale(frontend, 6) at 180 s", {180: [Scale("frontend", 6)]})),
        overrides=HEADROOM,
    ),
)
"""Every figure but the telemetry one, in the order of ``docs/incidents.md``."""

TELEMETRY_MODES: tuple[tuple[str, float], ...] = (
    ("gap", 120.0),
    ("delay", 300.0),
    ("noise", 480.0),
    ("missing_service", 660.0),
)
"""Telemetry fault modes and their onsets in the telemetry figure (each lasts 90 s)."""
TELEMETRY_DURATION_S = 90.0


# ------------------------------------------------------------------------------ running


def scenario_for(demo: Demo, variant: Variant, fidelity: str, seed: int = 0) -> Scenario:
    """The validated scenario of one variant of ``demo``."""
    faults = variant.faults if variant.faults is not None else demo.faults
    over: dict[str, Any] = {
        "horizon_s": demo.horizon_s,
        "fidelity": fidelity,
        "seed": seed,
        "faults": [dict(f) for f in faults],
        **demo.overrides,
        **variant.overrides,
    }
    return load_scenario(demo.scenario, over)


def run_variant(demo: Demo, variant: Variant, fidelity: str, seed: int = 0) -> SimResult:
    """Simulate one variant of ``demo`` to its horizon."""
    policy: Policy = ScriptedPolicy(variant.script) if variant.script else StaticPolicy()
    return rollout(Simulator(scenario_for(demo, variant, fidelity, seed)), policy)


def _series(frames: Sequence[Telemetry], field_name: str, service: str | None) -> np.ndarray:
    """One gauge over the run, NaN where missing (``service=None``: a cluster gauge)."""
    if service is None:
        return np.array([f.cluster_value(field_name) for f in frames])
    i = frames[0].services.index(service)
    return np.array([f[field_name][i] if f.observed(field_name)[i] else np.nan for f in frames])


# ------------------------------------------------------------------------------ drawing


COLOURS = ("tab:red", "tab:blue", "tab:orange", "tab:purple")
"""Line colour per variant: no-op red, the mitigation blue, a comparison line orange."""


def _minor_log_label(v: float, _pos: int | None = None) -> str:
    """Label minor log ticks at 2x and 5x a power of ten only, as plain numbers."""
    if v <= 0:
        return ""
    lead = round(v / 10 ** np.floor(np.log10(v)))
    return f"{v:g}" if lead in (2, 5) else ""


def _log_axis(ax: Axes) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(_minor_log_label))


def _mark_times(ax: Axes, demo: Demo, label: bool) -> None:
    """Onset (red dashed), scheduled end of the cause (grey), mitigations (green dotted)."""
    for f in demo.faults:
        ax.axvline(f["at_s"], color="red", ls="--", lw=1.2, label="onset" if label else None)
        end = f.get("duration_s")
        if end is not None:
            ax.axvline(
                f["at_s"] + end,
                color="grey",
                ls="--",
                lw=1.0,
                label="cause ends (duration_s)" if label else None,
            )
    times = sorted({t for v in demo.variants for t in v.script})
    for k, t in enumerate(times):
        ax.axvline(
            t, color="green", ls=":", lw=1.6, label="mitigation" if label and k == 0 else None
        )


def plot_demo(demo: Demo, results: Sequence[SimResult], path: Path, fidelity: str) -> Path:
    """Draw one demo's figure (see the module docstring) to ``path``."""
    sc = results[0].scenario
    entry = sc.topology.entry
    slo = sc.effective_slos()[entry]
    n = 3 + len(demo.panels)
    fig = Figure(figsize=(10, 1.9 * n + 1.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharex=True)
    ax_err, ax_p99, ax_ready, *extra = axes
    for k, (variant, res) in enumerate(zip(demo.variants, results, strict=True)):
        t = np.array([f.t for f in res.frames])
        style = {"color": COLOURS[k % len(COLOURS)], "lw": 1.6, "alpha": 0.9}
        ax_err.plot(t, _series(res.frames, "error_rate", entry), label=variant.label, **style)
        ax_p99.plot(t, _series(res.frames, "p99", entry), **style)
        ax_ready.plot(t, _series(res.frames, "replicas_ready", demo.service), **style)
        for ax, panel in zip(extra, demo.panels, strict=True):
            ax.plot(t, _series(res.frames, panel.field, panel.service), **style)
    ax_err.axhline(slo.error_rate, color="black", ls="--", lw=1, label="SLO")
    ax_err.set_ylabel(f"{entry} (entry)\nerror rate")
    top = max(np.nanmax([np.nanmax(_series(r.frames, "error_rate", entry)) for r in results]), 0)
    ax_err.set_ylim(-0.02, max(1.1 * top, 5 * slo.error_rate))
    ax_p99.axhline(slo.p99_latency_s, color="black", ls="--", lw=1)
    _log_axis(ax_p99)
    ax_p99.set_ylabel(f"{entry} (entry)\np99 (s)")
    ax_ready.set_ylabel(f"{demo.service}\nready replicas")
    ax_ready.set_ylim(bottom=-0.2)
    for ax, panel in zip(extra, demo.panels, strict=True):
        ax.set_ylabel(panel.label)
        if panel.log:
            _log_axis(ax)
    for k, ax in enumerate(axes):
        _mark_times(ax, demo, label=k == 0)
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, demo.horizon_s)
    axes[-1].set_xlabel("simulated time (s)")
    ax_err.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(
        f"{demo.title}\n{sc.name}, {fidelity} fidelity, seed {sc.seed}; "
        f"`{COMMAND} --fidelity {fidelity}`",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def plot_telemetry(path: Path, fidelity: str, seed: int = 0) -> Path:
    """The four telemetry modes one after another, observed against the ground truth.

    One run carries every mode (:data:`TELEMETRY_MODES`, ``missing_service`` on the api);
    a second run of the same seed without faults is the ground truth: the cluster behaves
    identically, only the observed gauges differ.
    """
    horizon = 840.0
    faults = []
    for mode, at in TELEMETRY_MODES:
        spec: dict[str, Any] = {
            "kind": "telemetry",
            "mode": mode,
            "at_s": at,
            "duration_s": TELEMETRY_DURATION_S,
        }
        if mode == "missing_service":
            spec["service"] = "api"
        faults.append(spec)
    # a little traffic noise makes the delay visible: the frames no longer all look alike
    base = {
        "horizon_s": horizon,
        "fidelity": fidelity,
        "seed": seed,
        "traffic.noise": {"cv": 0.15, "tau_s": 30.0},
    }
    truth = rollout(Simulator(load_scenario("chain3", {**base, "faults": []})), StaticPolicy())
    seen = rollout(Simulator(load_scenario("chain3", {**base, "faults": faults})), StaticPolicy())
    t = np.array([f.t for f in seen.frames])
    panels = (
        ("rps", "frontend", "entry rps\n(req/s)"),
        ("p99", "frontend", "entry p99 (s)"),
        ("replicas_ready", "api", "api ready\nreplicas"),
        ("cpu_util", "api", "api CPU\nutilisation"),
    )
    fig = Figure(figsize=(10, 11))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels) + 1, 1, sharex=True)
    for ax, (name, svc, label) in zip(axes, panels, strict=False):
        ax.plot(
            t,
            _series(truth.frames, name, svc),
            color="black",
            lw=2.4,
            alpha=0.35,
            label="ground truth (same seed, no fault)",
        )
        ax.plot(
            t,
            _series(seen.frames, name, svc),
            color="tab:blue",
            lw=1.3,
            marker=".",
            label="observed",
        )
        ax.set_ylabel(label)
    observed = np.array([f.mask.mean() for f in seen.frames])
    counters_equal = all(
        np.array_equal(a.counters, b.counters)
        for a, b in zip(seen.frames, truth.frames, strict=True)
    )
    axes[-1].plot(t, observed, color="tab:blue", lw=1.3, marker=".")
    axes[-1].set_ylabel("share of gauges\nobserved (mask)")
    axes[-1].set_ylim(-0.05, 1.05)
    for ax in axes:
        for _mode, at in TELEMETRY_MODES:
            ax.axvspan(at, at + TELEMETRY_DURATION_S, color="orange", alpha=0.12)
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, horizon)
    top = axes[0]
    ymax = top.get_ylim()[1]
    for mode, at in TELEMETRY_MODES:
        top.text(at + 3, ymax, mode, va="top", fontsize=9)
    axes[-1].set_xlabel("simulated time (s)")
    axes[0].legend(loc="lower left", fontsize=8, frameon=False)
    fig.suptitle(
        "Telemetry faults (shaded: gap, delay 2 scrapes, noise cv 0.3, missing_service api); "
        f"counters identical to the truth: {counters_equal}\n"
        f"chain3 with traffic noise, {fidelity} fidelity, seed {seed}; "
        f"`{COMMAND} --fidelity {fidelity}`",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def make_figures(
    out: Path, fidelity: str = "fluid", only: Sequence[str] | None = None, seed: int = 0
) -> list[Path]:
    """Write the figures (all, or those whose name or kind is in ``only``); return the paths."""
    wanted = set(only) if only else None
    paths = []
    for demo in DEMOS:
        if wanted is not None and demo.name not in wanted and demo.kind not in wanted:
            continue
        t0 = time.perf_counter()
        results = [run_variant(demo, v, fidelity, seed) for v in demo.variants]
        paths.append(plot_demo(demo, results, out / f"{demo.name}.png", fidelity))
        print(f"{paths[-1]}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    if wanted is None or "telemetry" in wanted:
        paths.append(plot_telemetry(out / "telemetry.png", fidelity, seed))
        print(paths[-1], flush=True)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/incidents"))
    ap.add_argument("--fidelity", choices=("fluid", "request"), default="fluid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--only", default="", help="comma-separated figure names or fault kinds (default: all)"
    )
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    make_figures(args.out, args.fidelity, only, args.seed)


if __name__ == "__main__":
    main()
