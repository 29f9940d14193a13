"""Timeline plot of one run: traffic, latency, errors, replicas and cost on a shared time axis.

:func:`plot_timeline` draws stacked panels on a matplotlib ``Figure`` rendered by the Agg canvas
(no display, no pyplot global state):

1. entry request rate (shaded: the scenario's traffic bursts, ramps included);
2. p99 latency per service, log scale; the entry service bold, SLO targets dashed;
3. error rate per service, with the entry's allowed error rate dashed;
4. ready replicas per service (solid) and desired replicas (dashed), with the policy's actions
   as labelled ticks (``kind service``: ``restart api``, ``scale db 4``);
5. cost: the node bill's rate (left axis), and on the right axis the cumulative node bill beside
   the cumulative *allocated* cost (the pods' share by CPU request, what the scores and the
   Pareto charts use).

Each fault of the run (``faults``: the simulator's records) is shaded on every panel from its
onset to the end of its cause (to the horizon when it never ended), in its own colour, and
named in the first panel's legend (``kind target``).

Missing values (NaN) are drawn as gaps, never as zeros. To stay readable with many services,
only the entry service and the ``top_k`` busiest other services (by mean CPU utilisation) get a
colour and a legend entry; the rest are thin grey lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from envs.core.actions import Action
from envs.core.telemetry import Telemetry
from envs.scenarios.schema import Scenario
from envs.sim.faults import FaultRecord

GREY = "#b0b0b0"
FAULT_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MAX_ACTION_LABELS = 24
"""Actions beyond this many get a tick but no text (the panel stays readable)."""


def action_label(action: Action) -> str:
    """Short text for one action: its kind and what it acts on (``scale db 4``)."""
    kind = action.kind
    service = getattr(action, "service", None)
    if kind == "scale":
        return f"scale {service} {getattr(action, 'replicas', '')}"
    if service is not None:
        return f"{kind} {service}"
    if kind == "shed_load":
        return f"shed {getattr(action, 'fraction', 0.0):g}"
    if kind == "drain_node":
        return f"drain node{getattr(action, 'node', '')}"
    return kind


def fault_spans(faults: Sequence[FaultRecord], horizon_s: float) -> list[tuple[float, float, str]]:
    """``(start_s, end_s, label)`` of every fault that started: onset to cause end."""
    spans = []
    for f in faults:
        if not f.started and f.end is None and f.onset >= horizon_s:
            continue
        end = horizon_s if f.end is None else min(f.end, horizon_s)
        spans.append((f.onset, max(end, f.onset), f"{f.kind} {f.target}"))
    return spans


def _time_unit(horizon_s: float) -> tuple[str, float]:
    """Axis unit and divisor for a run of ``horizon_s`` seconds."""
    if horizon_s <= 900:
        return "s", 1.0
    if horizon_s <= 6 * 3600:
        return "min", 60.0
    return "h", 3600.0


def _minor_log_label(v: float, _pos: int | None = None) -> str:
    """Label minor log ticks at 2x, 3x and 5x a power of ten only (plain numbers)."""
    if v <= 0:
        return ""
    lead = round(v / 10 ** np.floor(np.log10(v)))
    return f"{v:g}" if lead in (2, 3, 5) else ""


def _highlighted(frames: Sequence[Telemetry], entry: int, top_k: int) -> list[int]:
    """Entry first, then the ``top_k`` most loaded other services.

    Load is the mean CPU utilisation (busy services are the interesting ones); services
    without a utilisation reading rank by mean request rate after those with one.
    """
    util = np.stack([f["cpu_util"] for f in frames])  # (T, S)
    rps = np.stack([f["rps"] for f in frames])
    seen = np.isfinite(util).any(axis=0)
    with np.errstate(all="ignore"):
        mean_util = np.where(np.isfinite(util), util, 0.0).sum(axis=0) / np.maximum(
            np.isfinite(util).sum(axis=0), 1
        )
        mean_rps = np.where(np.isfinite(rps), rps, 0.0).mean(axis=0)
    # sort by (has utilisation, utilisation, rps), descending
    order = np.lexsort((-mean_rps, -mean_util, ~seen))
    rest = [int(i) for i in order if int(i) != entry]
    return [entry, *rest[:top_k]]


def _series(frames: Sequence[Telemetry], field: str) -> np.ndarray:
    """``(T, S)`` values of one service field, NaN where missing."""
    return np.stack([np.where(f.observed(field), f[field], np.nan) for f in frames])


def _per_service(
    ax: Axes,
    t: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    shown: list[int],
    colours: dict[int, str],
    entry: int,
    linestyle: str = "-",
    label: bool = True,
) -> None:
    """Grey thin lines for the background services, coloured labelled lines for ``shown``."""
    for i in range(y.shape[1]):
        if i not in colours:
            ax.plot(t, y[:, i], color=GREY, lw=0.6, ls=linestyle, alpha=0.7, zorder=1)
    for i in shown:
        ax.plot(
            t,
            y[:, i],
            color=colours[i],
            lw=2.2 if i == entry else 1.1,
            ls=linestyle,
            label=(names[i] + (" (entry)" if i == entry else "")) if label else None,
            zorder=3 if i == entry else 2,
        )


def plot_timeline(
    frames: Sequence[Telemetry],
    scenario: Scenario,
    path: str | Path,
    actions: Sequence[tuple[float, Action]] = (),
    top_k: int = 9,
    faults: Sequence[FaultRecord] = (),
) -> Path:
    """Draw the run's timeline as a PNG (see the module docstring for the panels).

    Args:
        frames: Frames of one run, in time order (at least one).
        scenario: The scenario that produced them (entry service, SLOs, bursts, name).
        path: Output PNG; its parent folder is created.
        actions: Optional ``(t, action)`` log; drawn as labelled ticks on the replica panel.
        top_k: Number of non-entry services given a colour and a label.
        faults: Optional fault records (``SimResult.faults``); each shaded from onset to the
            end of its cause.

    Returns:
        The path written.
    """
    if not frames:
        raise ValueError("plot_timeline: no frames to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(frames[0].services)
    entry = names.index(scenario.topology.entry)
    horizon = max(float(frames[-1].t), scenario.horizon_s)
    unit, div = _time_unit(horizon)
    t = np.array([f.t for f in frames]) / div

    shown = _highlighted(frames, entry, top_k)
    palette = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
    colours = {i: palette[k % len(palette)] for k, i in enumerate(shown)}
    hidden = len(names) - len(shown)

    fig = Figure(figsize=(12, 13))
    FigureCanvasAgg(fig)  # render with Agg; no pyplot, no global backend state
    axes = fig.subplots(5, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.4, 1, 1.2, 1]})
    ax_rps, ax_p99, ax_err, ax_rep, ax_cost = axes
    fig.suptitle(
        f"{scenario.name}: {scenario.fidelity} fidelity, seed {scenario.seed}, "
        f"{len(names)} services, horizon {scenario.horizon_s:g} s",
        fontsize=12,
    )

    for b in scenario.traffic.bursts:  # ramp up from at_s, hold to at_s + duration_s, ramp down
        end = b.at_s + b.duration_s + b.ramp_s
        for ax in axes:
            ax.axvspan(b.at_s / div, end / div, color="orange", alpha=0.08)

    for k, (start, end, label) in enumerate(fault_spans(faults, horizon)):
        colour = FAULT_COLOURS[k % len(FAULT_COLOURS)]
        for ax in axes:
            ax.axvspan(start / div, end / div, color=colour, alpha=0.10, lw=0)
            ax.axvline(start / div, color=colour, lw=0.8, alpha=0.6)
        ax_rps.plot([], [], color=colour, alpha=0.35, lw=6, label=f"fault: {label}")

    rps = _series(frames, "rps")
    ax_rps.plot(t, rps[:, entry], color=colours[entry], lw=1.8, label=f"{names[entry]} (entry)")
    ax_rps.set_ylabel("entry rps\n(req/s)")
    if scenario.traffic.bursts:
        ax_rps.plot([], [], color="orange", alpha=0.3, lw=6, label="traffic burst")
    ax_rps.set_ylim(bottom=0)

    p99 = _series(frames, "p99")
    _per_service(ax_p99, t, p99, names, shown, colours, entry)
    positive = p99[np.isfinite(p99) & (p99 > 0)]
    if positive.size:
        ax_p99.set_yscale("log")
        ax_p99.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_p99.yaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
    for svc, slo in scenario.effective_slos().items():
        i = names.index(svc)
        ax_p99.axhline(
            slo.p99_latency_s,
            color=colours.get(i, GREY),
            ls="--",
            lw=1.2,
            label=f"SLO p99 {svc} ({slo.p99_latency_s:g} s)",
        )
    ax_p99.set_ylabel("p99 latency (s)")

    err = _series(frames, "error_rate")
    _per_service(ax_err, t, err, names, shown, colours, entry, label=False)
    entry_slo = scenario.effective_slos().get(names[entry])
    if entry_slo is not None:
        ax_err.axhline(
            entry_slo.error_rate,
            color=colours[entry],
            ls="--",
            lw=1.2,
            label=f"allowed error rate {names[entry]} ({entry_slo.error_rate:g})",
        )
    ax_err.set_ylabel("error rate\n(failed+dropped)/finished")
    ax_err.plot([], [], color=GREY, lw=0, label="colours as in the latency panel")
    ax_err.set_ylim(bottom=0)

    ready = _series(frames, "replicas_ready")
    desired = _series(frames, "replicas_desired")
    _per_service(ax_rep, t, ready, names, shown, colours, entry, label=False)
    _per_service(ax_rep, t, desired, names, shown, colours, entry, linestyle="--", label=False)
    ax_rep.plot([], [], color="black", lw=1, label="ready")
    ax_rep.plot([], [], color="black", lw=1, ls="--", label="desired")
    if actions:
        at = np.array([a[0] for a in actions]) / div
        ax_rep.plot(at, np.zeros_like(at), "|", color="crimson", ms=10, label="actions")
        top = np.nanmax(np.concatenate([ready.ravel(), desired.ravel(), [1.0]]))
        for k, (when, action) in enumerate(actions[:MAX_ACTION_LABELS]):
            ax_rep.annotate(
                action_label(action),
                (when / div, 0.0),
                xytext=(2, 6 + 9 * (k % 4)),
                textcoords="offset points",
                rotation=0,
                fontsize=6,
                color="crimson",
                annotation_clip=True,
            )
        if len(actions) > MAX_ACTION_LABELS:
            ax_rep.plot(
                [], [], lw=0, label=f"(first {MAX_ACTION_LABELS} of {len(actions)} labelled)"
            )
        ax_rep.set_ylim(0, max(top * 1.15, 1.0))
    ax_rep.set_ylabel("replicas")
    ax_rep.set_ylim(bottom=0)

    rate = np.array([f.cluster_value("cost_rate_per_hour") for f in frames])
    total = np.array([f.cluster_value("cost_total") for f in frames])
    allocated = np.array([f.cluster_value("allocated_cost_total") for f in frames])
    ax_cost.plot(t, rate, color="tab:green", lw=1.5, label="node bill rate (/h)")
    ax_cost.set_ylabel("node bill rate\n(per hour)")
    ax_cost.set_ylim(bottom=0)
    ax_total = ax_cost.twinx()
    ax_total.plot(t, total, color="tab:purple", lw=1.5, label="cumulative node bill")
    ax_total.plot(
        t, allocated, color="tab:orange", lw=1.5, ls="-.", label="cumulative allocated cost"
    )
    ax_total.set_ylabel("cumulative cost")
    ax_total.set_ylim(bottom=0)
    ax_cost.set_xlabel(f"simulated time ({unit})")

    handles, labels = ax_p99.get_legend_handles_labels()
    if hidden > 0:
        handles.append(Line2D([], [], color=GREY, lw=0.6))
        labels.append(f"{hidden} other service{'s' if hidden > 1 else ''}")
    ax_p99.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
    )
    for ax in (ax_rps, ax_err, ax_rep):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    h1, l1 = ax_cost.get_legend_handles_labels()
    h2, l2 = ax_total.get_legend_handles_labels()
    ax_cost.legend(
        h1 + h2, l1 + l2, loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8, frameon=False
    )
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, horizon / div)

    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    return path
