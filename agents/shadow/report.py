"""The shadow report: what a shadow run recommended, next to what the cluster did.

``opsworld shadow-report audit=<file> out=<dir>`` (``experiments/shadow_report.py``) reads the
JSON Lines audit of an ``opsworld shadow`` run (one record per tick, schema
``opsworld.shadow.audit/1``) and writes three files to ``out``:

* ``report.html``: one self-contained page (plots as inline SVG, a few lines of inline script,
  no network, no external file);
* ``report.md``: the same tables in Markdown;
* ``summary.json``: the figures as plain data.

What it shows: recommended vs actual replicas per deployment over the window, the
would-have-acted list (tick, action, reason, guard verdict), the agreement rate (the
recommendation at a tick against the replicas at the same tick, and against those at the next
tick, which is what ``opsworld shadow`` exports as its agreement ratio), online
forecast accuracy (90 % interval coverage and MAE of the median, when the policy forecasts),
guard interventions by rule, missing telemetry and query errors, input drift (PSI per
feature, the retrain signal), tick latency, and, when the caller computed one, the
counterfactual (clearly labelled simulated).

This module only reads and renders. It never imports the simulator nor
:mod:`agents.evaluation`: the counterfactual (:mod:`agents.evaluation.counterfactual`) reaches
it as plain data (a mapping), so the shadow side keeps running without the simulator.

Reading is tolerant, as the schema asks: extra keys are ignored, optional keys may be absent,
a line that is not JSON or a record of another schema is skipped and counted (with its file
and line) rather than failing the report. Rotated files (``audit.jsonl.1``, ``.2``, ...) are
read with the current one and the records are put in time order.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

SCHEMA = "opsworld.shadow.audit/1"
"""The audit schema this report reads (``/work`` contract of the shadow loop and the report)."""

MAX_SERVICE_PANELS = 8
"""Replica panels drawn at most; with more services, those that disagree most are drawn."""

MAX_ACTED_ROWS = 500
"""Rows of the would-have-acted table in the page (the Markdown and JSON keep every row)."""

COVERAGE_NOMINAL = 0.90
"""Nominal coverage of the forecast interval ``[q05, q95]``."""

PSI_DRIFT = 0.2
"""PSI above which a feature is flagged as drifted when the audit gives no threshold (the usual
rule of thumb)."""

COLLAPSE_ROWS = 50
"""A would-have-acted table longer than this starts collapsed in the page."""


class AuditError(ValueError):
    """An audit that cannot be reported on; the message names the file and the fix."""


# ------------------------------------------------------------------------------------ reading


@dataclass
class Audit:
    """The records of one shadow run, in time order, and what could not be read.

    Attributes:
        files: The files read, oldest rotation first.
        records: Records of schema :data:`SCHEMA`, sorted by ``(t, tick)``.
        skipped: ``"file:line: why"`` for each line that was not a usable record.
    """

    files: list[Path]
    records: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)


def audit_files(path: str | Path) -> list[Path]:
    """The audit file and its rotations (``path.1``, ``path.2``, ...), oldest first.

    Raises:
        AuditError: When neither the file nor any rotation exists.
    """
    path = Path(path).expanduser()
    rotated: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        pattern = re.compile(re.escape(path.name) + r"\.(\d+)$")
        for p in path.parent.iterdir():
            m = pattern.match(p.name)
            if m and p.is_file():
                rotated.append((int(m.group(1)), p))
    files = [p for _, p in sorted(rotated, reverse=True)]  # .N is older than .N-1
    if path.is_file():
        files.append(path)
    if not files:
        raise AuditError(
            f"audit={path}: no such file (nor rotated {path.name}.1, ...); give the JSON Lines "
            "audit that 'opsworld shadow' wrote (its audit= option)"
        )
    return files


def read_audit(path: str | Path) -> Audit:
    """Read an audit and its rotations; see the module docstring for what is tolerated.

    Args:
        path: The current audit file (rotations beside it are found by name).

    Returns:
        The records in time order, duplicates (same tick and time) dropped.

    Raises:
        AuditError: No file, or no record of schema :data:`SCHEMA` in any of them.
    """
    files = audit_files(path)
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    seen: set[tuple[Any, Any]] = set()
    for f in files:
        with f.open(encoding="utf-8", errors="replace") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    skipped.append(f"{f.name}:{i}: not JSON ({err.msg})")
                    continue
                if not isinstance(rec, dict):
                    skipped.append(f"{f.name}:{i}: not a JSON object")
                    continue
                if rec.get("schema") != SCHEMA:
                    skipped.append(f"{f.name}:{i}: schema {rec.get('schema')!r}, not {SCHEMA!r}")
                    continue
                t = _num(rec.get("t"))
                if t is None:
                    skipped.append(f"{f.name}:{i}: no numeric 't'")
                    continue
                key = (rec.get("tick"), t)
                if key in seen:
                    continue
                seen.add(key)
                records.append(rec)
    if not records:
        detail = f" ({len(skipped)} lines skipped; first: {skipped[0]})" if skipped else ""
        raise AuditError(
            f"audit={path}: no record of schema {SCHEMA!r} in {[str(f) for f in files]}"
            f"{detail}; is this an 'opsworld shadow' audit?"
        )
    records.sort(key=lambda r: (float(r["t"]), _int(r.get("tick"), 0)))
    return Audit(files, records, skipped)


def _num(v: Any) -> float | None:
    """``v`` as a finite float, else None (null, NaN, strings and booleans are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _int(v: Any, default: int | None = None) -> int | None:
    f = _num(v)
    return default if f is None else round(f)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


# ----------------------------------------------------------------------------------- analysis


def action_text(action: Mapping[str, Any] | None) -> str:
    """Short text for an action dict (``scale frontend 4``, ``rollback api``, ``shed 0.2``)."""
    if not action:
        return "-"
    kind = str(action.get("kind", "?"))
    service = action.get("service")
    if kind == "scale":
        return f"scale {service} {action.get('replicas')}"
    if kind == "set_hpa_target":
        return f"set_hpa_target {service} {action.get('cpu_target')}%"
    if kind == "shed_load":
        return f"shed_load {action.get('fraction')}"
    if kind == "drain_node":
        return f"drain_node {action.get('node')}"
    return f"{kind} {service}" if service is not None else kind


def _same_action(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    return a is not None and b is not None and dict(a) == dict(b)


def would_have_acted(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every action the shadow policy (or its guard) would have taken, with the guard's verdict.

    One row per non-noop action: the guarded actions (verdict ``allowed``, or
    ``changed by <rule>`` / ``added by <rule>`` when an intervention produced it), then the raw
    actions that the guard removed (``blocked by <rule>``). ``reason`` joins the record's
    ``reasons`` and the intervention's own reason; ``fallback`` names the baseline used
    instead of the policy, if any.
    """
    rows: list[dict[str, Any]] = []
    for rec in records:
        interventions = [_dict(i) for i in _list(rec.get("interventions"))]
        reasons = "; ".join(str(r) for r in _list(rec.get("reasons")))
        base = {
            "tick": _int(rec.get("tick")),
            "t": float(rec["t"]),
            "wall_time": rec.get("wall_time"),
            "fallback": rec.get("fallback"),
        }
        for act in _list(rec.get("guarded_actions")):
            act = _dict(act)
            if not act or act.get("kind") == "noop":
                continue
            verdict, why = "allowed", ""
            for iv in interventions:
                if _same_action(iv.get("after"), act):
                    before = iv.get("before")
                    verdict = f"{'changed' if before else 'added'} by {iv.get('rule', '?')}"
                    if before:
                        verdict += f" (was {action_text(before)})"
                    why = str(iv.get("reason") or "")
                    break
            rows.append(
                {
                    **base,
                    "action": action_text(act),
                    "verdict": verdict,
                    "reason": "; ".join(x for x in (reasons, why) if x),
                }
            )
        for iv in interventions:
            before = _dict(iv.get("before"))
            if before and iv.get("after") is None and before.get("kind") != "noop":
                why = str(iv.get("reason") or "")
                rows.append(
                    {
                        **base,
                        "action": action_text(before),
                        "verdict": f"blocked by {iv.get('rule', '?')}",
                        "reason": "; ".join(x for x in (reasons, why) if x),
                    }
                )
    return rows


def _replica_series(
    records: Sequence[Mapping[str, Any]], key: str, services: Sequence[str]
) -> dict[str, list[float]]:
    """``{service: [value per tick]}`` of ``record[key][service]``; NaN where null/absent."""
    out: dict[str, list[float]] = {s: [] for s in services}
    for rec in records:
        d = _dict(rec.get(key))
        for s in services:
            v = _num(d.get(s))
            out[s].append(math.nan if v is None else v)
    return out


def agreement(
    recommended: Mapping[str, Sequence[float]], actual: Mapping[str, Sequence[float]]
) -> dict[str, Any]:
    """Agreement of recommended and actual replicas.

    A (tick, service) pair is compared when both values are known; it agrees when they are
    equal. ``rate`` is the share of compared pairs that agree, ``tick_rate`` the share of ticks
    (with at least one compared pair) on which every compared service agrees, ``by_service``
    each service's rate (None when never compared).
    """
    by_service: dict[str, float | None] = {}
    agree_pairs = total_pairs = 0
    n = max((len(v) for v in recommended.values()), default=0)
    tick_ok = [True] * n
    tick_seen = [False] * n
    for s, rec in recommended.items():
        act = actual.get(s, [])
        agree = total = 0
        for k, (r, a) in enumerate(zip(rec, act, strict=False)):
            if math.isnan(r) or math.isnan(a):
                continue
            total += 1
            tick_seen[k] = True
            if r == a:
                agree += 1
            else:
                tick_ok[k] = False
        by_service[s] = agree / total if total else None
        agree_pairs += agree
        total_pairs += total
    seen = sum(tick_seen)
    return {
        "rate": agree_pairs / total_pairs if total_pairs else None,
        "tick_rate": sum(o for o, s in zip(tick_ok, tick_seen, strict=True) if s) / seen
        if seen
        else None,
        "compared_pairs": total_pairs,
        "by_service": by_service,
    }


_FIELD_ALIASES = {"p99_s": "p99", "p50_s": "p50", "p95_s": "p95"}


def _realised(rec: Mapping[str, Any], service: str, name: str) -> float | None:
    """The value a forecast of ``name`` for ``service`` is scored against, from one record."""
    if name == "replicas":
        return _num(_dict(rec.get("actual_replicas")).get(service))
    tel = _dict(_dict(rec.get("telemetry")).get(service))
    for key in (name, _FIELD_ALIASES.get(name, name), f"{name}_s"):
        if key in tel:
            return _num(tel[key])
    return None


def forecast_accuracy(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Online accuracy of the policy's forecasts, or None when no record carries one.

    A forecast made at ``t`` for horizon ``h`` is scored against the record nearest
    ``t + h`` (within half the median tick interval); one with no such record yet (near the
    window's end) or whose realised value is missing is not scored. Per (service, quantity):
    ``coverage`` of ``[q05, q95]`` (nominal :data:`COVERAGE_NOMINAL`), ``mae`` of ``q50``,
    ``n`` scored; ``overall`` pools every pair.
    """
    if not any(isinstance(r.get("forecast"), dict) and r["forecast"] for r in records):
        return None
    ts = np.array([float(r["t"]) for r in records])
    step = float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0
    tol = step / 2 if step > 0 else 1e-6
    hits: dict[tuple[str, str], list[tuple[bool, float]]] = {}
    made = 0
    for rec in records:
        for service, quantities in _dict(rec.get("forecast")).items():
            for name, fc in _dict(quantities).items():
                fc = _dict(fc)
                q05, q50, q95 = (_num(fc.get(k)) for k in ("q05", "q50", "q95"))
                h = _num(fc.get("horizon_s"))
                if q05 is None or q50 is None or q95 is None or h is None:
                    continue
                made += 1
                target = float(rec["t"]) + h
                j = int(np.searchsorted(ts, target))
                best = min(
                    (k for k in (j - 1, j) if 0 <= k < len(ts)),
                    key=lambda k: abs(ts[k] - target),
                    default=None,
                )
                if best is None or abs(ts[best] - target) > tol:
                    continue
                y = _realised(records[best], str(service), str(name))
                if y is None:
                    continue
                hits.setdefault((str(service), str(name)), []).append(
                    (q05 <= y <= q95, abs(q50 - y))
                )
    rows: list[dict[str, Any]] = []
    covered_all = 0
    by_quantity: dict[str, list[int]] = {}  # quantity -> [covered, n]
    for (s, q), v in sorted(hits.items()):
        covered = sum(1 for c, _ in v if c)
        covered_all += covered
        cur = by_quantity.setdefault(q, [0, 0])
        cur[0] += covered
        cur[1] += len(v)
        rows.append(
            {
                "service": s,
                "quantity": q,
                "n": len(v),
                "coverage": covered / len(v),
                "mae": float(np.mean([e for _, e in v])),
            }
        )
    scored = sum(int(r["n"]) for r in rows)
    return {
        "forecasts": made,
        "scored": scored,
        "nominal_coverage": COVERAGE_NOMINAL,
        "overall_coverage": covered_all / scored if scored else None,
        "by_quantity_coverage": {q: c / n for q, (c, n) in sorted(by_quantity.items()) if n},
        "rows": rows,
    }


def missing_telemetry(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Missing telemetry: mean fraction, ticks with nothing observed, per-field counts, reasons."""
    fractions = [f for f in (_num(r.get("missing_fraction")) for r in records) if f is not None]
    fields: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    query_errors: Counter[str] = Counter()
    for rec in records:
        for service, missing in _dict(rec.get("missing")).items():
            for name, why in _dict(missing).items():
                fields[f"{service}/{name}"] += 1
                reasons[str(why)] += 1
        for qe in _list(rec.get("query_errors")):
            query_errors[str(_dict(qe).get("reason", qe))] += 1
    return {
        "mean_fraction": float(np.mean(fractions)) if fractions else None,
        "max_fraction": max(fractions) if fractions else None,
        "ticks_all_missing": sum(1 for f in fractions if f >= 1.0),
        "top_fields": fields.most_common(10),
        "top_reasons": reasons.most_common(10),
        "query_errors": sum(query_errors.values()),
        "top_query_errors": query_errors.most_common(10),
    }


def drift_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Drift per feature (last and max PSI) and the retrain signal; None without drift data.

    A feature is flagged as drifted when its last PSI exceeds the records' ``threshold`` (the
    shadow run's retrain threshold), or :data:`PSI_DRIFT` when the records carry none.
    """
    last: dict[str, float] = {}
    peak: dict[str, float] = {}
    retrain_ticks = 0
    threshold = PSI_DRIFT
    any_drift = False
    last_retrain = False
    for rec in records:
        d = rec.get("drift")
        if not isinstance(d, dict):
            continue
        any_drift = True
        for feat, v in _dict(d.get("psi")).items():
            f = _num(v)
            if f is None:
                continue
            last[str(feat)] = f
            peak[str(feat)] = max(f, peak.get(str(feat), -math.inf))
        last_retrain = bool(d.get("retrain_recommended"))
        threshold = _num(d.get("threshold")) or threshold
        retrain_ticks += last_retrain
    if not any_drift:
        return None
    return {
        "psi_last": dict(sorted(last.items(), key=lambda kv: -kv[1])),
        "psi_max": dict(sorted(peak.items(), key=lambda kv: -kv[1])),
        "drifted_features": sorted(k for k, v in last.items() if v > threshold),
        "retrain_recommended": last_retrain,
        "retrain_ticks": retrain_ticks,
        "psi_threshold": threshold,
    }


def analyse(audit: Audit) -> dict[str, Any]:
    """Every figure of the report as plain data (what ``summary.json`` holds, plus series).

    The ``series`` key holds per-tick arrays for the plots (``t`` relative to the first tick,
    recommended and actual replicas per service, missing fraction, latency); everything else
    is a summary figure.
    """
    recs = audit.records
    services: list[str] = []
    for rec in recs:
        for s in _list(rec.get("services")):
            if isinstance(s, str) and s not in services:
                services.append(s)
    t = [float(r["t"]) for r in recs]
    rec_rep = _replica_series(recs, "recommended_replicas", services)
    act_rep = _replica_series(recs, "actual_replicas", services)
    latency = [v for v in (_num(r.get("latency_s")) for r in recs) if v is not None]
    rules = Counter(
        str(_dict(iv).get("rule", "?")) for r in recs for iv in _list(r.get("interventions"))
    )
    fallbacks = Counter(str(r["fallback"]) for r in recs if r.get("fallback"))
    errors = Counter(str(r["error"]) for r in recs if r.get("error"))
    acted = would_have_acted(recs)
    steps = np.diff(t)
    return {
        "schema": SCHEMA,
        "files": [str(f) for f in audit.files],
        "skipped_lines": len(audit.skipped),
        "skipped_examples": audit.skipped[:5],
        "window": {
            "start": t[0],
            "end": t[-1],
            "duration_s": t[-1] - t[0],
            "ticks": len(recs),
            "interval_s": float(np.median(steps)) if len(steps) else None,
            "gaps": int(np.sum(steps > 1.5 * np.median(steps))) if len(steps) else 0,
            "start_wall_time": recs[0].get("wall_time"),
            "end_wall_time": recs[-1].get("wall_time"),
        },
        "modes": sorted({str(r.get("mode")) for r in recs}),
        "policies": sorted({str(r.get("policy")) for r in recs if r.get("policy")}),
        "bundle_shas": sorted({str(r["bundle_sha"]) for r in recs if r.get("bundle_sha")}),
        "model_versions": sorted({str(r["model_version"]) for r in recs if r.get("model_version")}),
        "services": services,
        "actuated_records": sum(1 for r in recs if r.get("actuated") is not False),
        "agreement": agreement(rec_rep, act_rep),
        "agreement_next_tick": agreement(
            {k: v[:-1] for k, v in rec_rep.items()}, {k: v[1:] for k, v in act_rep.items()}
        ),
        "would_have_acted": acted,
        "would_have_acted_count": len(acted),
        "would_have_acted_ticks": len({row["tick"] for row in acted}),
        "interventions_by_rule": dict(rules.most_common()),
        "fallbacks": dict(fallbacks.most_common()),
        "errors": dict(errors.most_common(10)),
        "error_ticks": sum(errors.values()),
        "missing": missing_telemetry(recs),
        "forecast": forecast_accuracy(recs),
        "drift": drift_summary(recs),
        "latency_s": {
            "p50": float(np.percentile(latency, 50)) if latency else None,
            "p99": float(np.percentile(latency, 99)) if latency else None,
            "max": max(latency) if latency else None,
        },
        "series": {
            "t": [x - t[0] for x in t],
            "recommended": rec_rep,
            "actual": act_rep,
            "missing_fraction": [
                math.nan if (v := _num(r.get("missing_fraction"))) is None else v for r in recs
            ],
        },
    }


# ---------------------------------------------------------------------------------- plotting


def _svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, no date: deterministic)."""
    buf = io.StringIO()
    with rc_context({"svg.hashsalt": "opsworld", "svg.fonttype": "none"}):
        FigureCanvasSVG(fig).print_svg(buf, metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _nan_list(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def replicas_svg(analysis: Mapping[str, Any]) -> str:
    """Recommended (step, blue) vs actual (step, black) replicas per service, minutes axis."""
    series = analysis["series"]
    t = np.asarray(series["t"]) / 60.0
    services = list(analysis["services"])
    rate = analysis["agreement"]["by_service"]
    if len(services) > MAX_SERVICE_PANELS:  # the ones that disagree most
        services = sorted(services, key=lambda s: (rate.get(s) is None, rate.get(s) or 0.0))
        services = services[:MAX_SERVICE_PANELS]
    n = max(1, len(services))
    fig = Figure(figsize=(9, 1.7 * n + 0.6))
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for ax, s in zip(axes, services, strict=False):
        ax.step(
            t, _nan_list(series["actual"][s]), where="post", color="black", lw=1.4, label="actual"
        )
        ax.step(
            t,
            _nan_list(series["recommended"][s]),
            where="post",
            color="#1f77b4",
            lw=1.4,
            ls="--",
            label="recommended",
        )
        r = rate.get(s)
        ax.set_ylabel("replicas", fontsize=8)
        ax.set_title(f"{s} (agreement {_pct(r)})", fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    if services:
        axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("minutes from the first tick")
    fig.tight_layout()
    return _svg(fig)


def missing_svg(analysis: Mapping[str, Any]) -> str:
    """Missing-telemetry fraction per tick."""
    series = analysis["series"]
    fig = Figure(figsize=(9, 2.0))
    ax = fig.subplots()
    ax.plot(np.asarray(series["t"]) / 60.0, _nan_list(series["missing_fraction"]), color="#d62728")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("missing fraction")
    ax.set_xlabel("minutes from the first tick")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _svg(fig)


def drift_svg(drift: Mapping[str, Any]) -> str:
    """PSI per feature (last value; the threshold dashed), the 15 largest."""
    items = list(drift["psi_last"].items())[:15]
    fig = Figure(figsize=(9, 0.35 * max(len(items), 1) + 1.0))
    ax = fig.subplots()
    names = [k for k, _ in items][::-1]
    vals = [v for _, v in items][::-1]
    colours = ["#d62728" if v > drift["psi_threshold"] else "#1f77b4" for v in vals]
    ax.barh(names, vals, color=colours)
    ax.axvline(drift["psi_threshold"], color="grey", ls="--", lw=1)
    ax.set_xlabel("PSI (last tick)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return _svg(fig)


def counterfactual_svg(cf: Mapping[str, Any]) -> str:
    """The counterfactual's series under both schedules (recommended dashed blue, actual black).

    Panels: the replayed entry request rate, the entry p99 (SLO dotted), the cumulative cost
    allocated to pods.
    """
    runs = cf["runs"]
    fig = Figure(figsize=(9, 5.4))
    ax0, ax1, ax2 = fig.subplots(3, 1, sharex=True)
    styles = {
        "recommended": ("#1f77b4", "--"),
        "actual": ("black", "-"),
        "policy": ("#2ca02c", ":"),
    }
    for name, run in runs.items():
        colour, ls = styles.get(name, ("grey", ":"))
        s = run["series"]
        tm = np.asarray(s["t"]) / 60.0
        ax0.plot(tm, _nan_list(s["entry_rps"]), color=colour, ls=ls, label=name)
        ax1.plot(tm, _nan_list(s["entry_p99_s"]), color=colour, ls=ls, label=name)
        ax2.plot(tm, _nan_list(s["allocated_cost"]), color=colour, ls=ls, label=name)
    slo = cf.get("entry_slo_p99_s")
    if slo:
        ax1.axhline(slo, color="#d62728", lw=1, ls=":", label="SLO p99")
    ax0.set_ylabel("entry req/s")
    ax0.set_title("SIMULATED counterfactual", fontsize=9, loc="left", color="#b45309")
    ax1.set_yscale("log")
    ax1.set_ylabel("entry p99 (s)")
    ax1.legend(fontsize=8, loc="upper right")
    ax2.set_ylabel("allocated cost")
    ax2.set_xlabel("minutes from the first tick (simulated)")
    for ax in (ax0, ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _svg(fig)


# --------------------------------------------------------------------------------- rendering


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}g}"
    return str(v)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    def cell(x: Any) -> str:
        return _fmt(x).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return out


def _headline(a: Mapping[str, Any]) -> list[tuple[str, str]]:
    w = a["window"]
    miss = a["missing"]
    lat = a["latency_s"]
    fc = a["forecast"]
    rows = [
        (
            "window",
            f"{w['ticks']} ticks over {w['duration_s'] / 60:.1f} min "
            f"(every {_fmt(w['interval_s'])} s; {w['gaps']} gaps)",
        ),
        ("mode / policy", f"{', '.join(a['modes'])} / {', '.join(a['policies']) or 'n/a'}"),
        ("bundle", ", ".join(s[:12] for s in a["bundle_shas"]) or "n/a"),
        (
            "agreement (replicas equal)",
            f"{_pct(a['agreement']['rate'])} of "
            f"{a['agreement']['compared_pairs']} (tick, service) pairs; "
            f"{_pct(a['agreement']['tick_rate'])} of ticks",
        ),
        (
            "agreement with the next tick",
            f"{_pct(a['agreement_next_tick']['rate'])} of "
            f"{a['agreement_next_tick']['compared_pairs']} pairs (recommendation at a tick vs "
            "the replicas the cluster had at the next one)",
        ),
        (
            "would have acted",
            f"{a['would_have_acted_count']} actions on {a['would_have_acted_ticks']} ticks",
        ),
        (
            "guard interventions",
            ", ".join(f"{k} {v}" for k, v in a["interventions_by_rule"].items()) or "none",
        ),
        ("fallbacks", ", ".join(f"{k} {v}" for k, v in a["fallbacks"].items()) or "none"),
        (
            "missing telemetry",
            f"mean {_pct(miss['mean_fraction'])}, {miss['ticks_all_missing']} "
            f"ticks all missing, {miss['query_errors']} query errors",
        ),
        (
            "forecast coverage (90% interval)",
            "no forecasts"
            if fc is None
            else f"{_pct(fc['overall_coverage'])} ({fc['scored']} scored)",
        ),
        ("tick latency p50 / p99", f"{_fmt(lat['p50'])} s / {_fmt(lat['p99'])} s"),
        ("errors", f"{a['error_ticks']} ticks"),
        ("actuated", f"{a['actuated_records']} records (must be 0)"),
    ]
    if a["drift"] is not None:
        d = a["drift"]
        rows.append(
            (
                "drift",
                f"{len(d['drifted_features'])} features with PSI > {d['psi_threshold']}; "
                f"retrain recommended: {'yes' if d['retrain_recommended'] else 'no'}",
            )
        )
    return rows


def _cf_rows(cf: Mapping[str, Any]) -> list[list[Any]]:
    return [
        [
            f"{name} ({run['policy']}, closed loop)" if run.get("policy") else name,
            run["slo_violation_min"],
            run.get("allocated_cost_total"),
            run["cost_total"],
            run["entry_error_rate"],
            run["entry_p99_mean_s"],
            run["scale_actions"],
        ]
        for name, run in cf["runs"].items()
    ]


CF_HEADER = (
    "schedule",
    "SLO-violation min",
    "allocated cost",
    "node bill",
    "entry error rate",
    "entry p99 mean (s)",
    "scale actions",
)


def render_markdown(a: Mapping[str, Any], cf: Mapping[str, Any] | None) -> str:
    """The report as Markdown (every would-have-acted row)."""
    lines = ["# Shadow report", ""]
    lines += _md_table(("", ""), _headline(a))
    lines += ["", "## Recommended vs actual replicas", ""]
    rate = a["agreement"]["by_service"]
    rec, act = a["series"]["recommended"], a["series"]["actual"]
    lines += _md_table(
        ("deployment", "agreement", "recommended mean", "actual mean"),
        ([s, _pct(rate[s]), _nanmean(rec[s]), _nanmean(act[s])] for s in a["services"]),
    )
    t0 = a["window"]["start"]
    lines += ["", f"## Would have acted ({a['would_have_acted_count']})", ""]
    if a["would_have_acted"]:
        lines += _md_table(
            ("tick", "min", "action", "guard verdict", "fallback", "reason"),
            (
                [
                    r["tick"],
                    f"{(r['t'] - t0) / 60:.2f}",
                    r["action"],
                    r["verdict"],
                    r["fallback"] or "",
                    r["reason"],
                ]
                for r in a["would_have_acted"]
            ),
        )
    else:
        lines.append("No action: the policy agreed with leaving the cluster as it was.")
    lines += ["", "## Guard interventions by rule", ""]
    lines += (
        _md_table(("rule", "count"), a["interventions_by_rule"].items())
        if a["interventions_by_rule"]
        else ["None."]
    )
    lines += ["", "## Online forecast accuracy", ""]
    fc = a["forecast"]
    if fc is None:
        lines.append("The policy made no forecasts.")
    else:
        lines.append(
            f"{fc['scored']} of {fc['forecasts']} forecasts scored; 90% interval coverage "
            f"{_pct(fc['overall_coverage'])} (nominal {_pct(fc['nominal_coverage'])})."
        )
        lines.append("")
        lines += _md_table(
            ("deployment", "quantity", "n", "coverage", "MAE of median"),
            (
                [r["service"], r["quantity"], r["n"], _pct(r["coverage"]), r["mae"]]
                for r in fc["rows"]
            ),
        )
    lines += ["", "## Missing telemetry", ""]
    miss = a["missing"]
    lines += (
        _md_table(("series", "ticks missing"), miss["top_fields"])
        if miss["top_fields"]
        else ["Nothing missing."]
    )
    if miss["top_reasons"]:
        lines += ["", *_md_table(("reason", "count"), miss["top_reasons"])]
    lines += ["", "## Drift", ""]
    d = a["drift"]
    if d is None:
        lines.append("No drift data in the audit.")
    else:
        lines.append(
            f"Retrain recommended: {'yes' if d['retrain_recommended'] else 'no'} "
            f"(on {d['retrain_ticks']} ticks)."
        )
        lines.append("")
        lines += _md_table(
            ("feature", "PSI last", "PSI max"),
            ([k, v, d["psi_max"].get(k)] for k, v in d["psi_last"].items()),
        )
    lines += ["", "## Counterfactual (SIMULATED)", ""]
    lines += _cf_markdown(cf)
    if a["skipped_lines"]:
        lines += ["", f"{a['skipped_lines']} audit lines skipped, e.g.:", ""]
        lines += [f"- {s}" for s in a["skipped_examples"]]
    lines += ["", f"Audit files: {', '.join(a['files'])}", ""]
    return "\n".join(lines)


def _cf_markdown(cf: Mapping[str, Any] | None) -> list[str]:
    if cf is None:
        return ["Not computed."]
    if cf.get("skipped"):
        return [f"Skipped: {cf['skipped']}"]
    out = [
        f"**Simulated, not observed.** {cf['description']}",
        "",
        *_md_table(CF_HEADER, _cf_rows(cf)),
    ]
    if cf.get("notes"):
        out += ["", *(f"- {n}" for n in cf["notes"])]
    return out


def _nanmean(v: Sequence[float]) -> float | None:
    arr = np.asarray(v, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else None


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f3f3f3}.sim{border:3px dashed #b45309;
padding:0 1em;background:#fffbeb}.sim h2{color:#b45309}.warn{color:#b91c1c;font-weight:bold}
svg{max-width:100%;height:auto}
"""

_SCRIPT = """
(function () {
  var box = document.getElementById("acted-filter");
  var rows = document.querySelectorAll("#acted tbody tr");
  function apply() {
    var on = box.checked;
    rows.forEach(function (r) {
      r.style.display = on && r.dataset.verdict === "allowed" ? "none" : "";
    });
  }
  if (box) { box.addEventListener("change", apply); apply(); }
  document.body.setAttribute("data-rendered", String(rows.length));
})();
"""


def _h(x: Any) -> str:
    return html.escape(_fmt(x))


def _html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], attrs: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(a: Mapping[str, Any], cf: Mapping[str, Any] | None) -> str:
    """The report as one self-contained HTML page (inline SVG plots, inline CSS and script)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>opsworld shadow report</title>",
        # Nothing may load from elsewhere: the page is an offline artifact.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Shadow report</h1>",
        "<p>What the shadow policy recommended next to what the cluster did. Shadow mode never "
        "acts: every figure below is observed, except the counterfactual section, which is "
        "<b>simulated</b>.</p>",
    ]
    if a["actuated_records"]:
        parts.append(
            f"<p class='warn'>{a['actuated_records']} audit records are not marked "
            "actuated=false.</p>"
        )
    parts.append(_html_table(("", ""), _headline(a)))
    parts.append("<h2>Recommended vs actual replicas</h2>")
    if len(a["services"]) > MAX_SERVICE_PANELS:
        parts.append(
            f"<p>{len(a['services'])} deployments; the {MAX_SERVICE_PANELS} with the lowest "
            "agreement are drawn, every one is in the table.</p>"
        )
    parts.append(replicas_svg(a))
    rate = a["agreement"]["by_service"]
    rec, act = a["series"]["recommended"], a["series"]["actual"]
    parts.append(
        _html_table(
            ("deployment", "agreement", "recommended mean", "actual mean"),
            ([s, _pct(rate[s]), _nanmean(rec[s]), _nanmean(act[s])] for s in a["services"]),
        )
    )
    parts.append(f"<h2>Would have acted ({a['would_have_acted_count']})</h2>")
    acted = a["would_have_acted"]
    t0 = a["window"]["start"]
    if acted:
        parts.append(
            "<label><input type='checkbox' id='acted-filter'> only actions the guard changed "
            "or blocked</label>"
        )
        rows = "".join(
            f"<tr data-verdict='{html.escape(r['verdict'], quote=True)}'>"
            + "".join(
                f"<td>{_h(c)}</td>"
                for c in (
                    r["tick"],
                    f"{(r['t'] - t0) / 60:.2f}",
                    r["action"],
                    r["verdict"],
                    r["fallback"] or "",
                    r["reason"],
                )
            )
            + "</tr>"
            for r in acted[:MAX_ACTED_ROWS]
        )
        head = "".join(
            f"<th>{h}</th>"
            for h in ("tick", "min", "action", "guard verdict", "fallback", "reason")
        )
        table = f"<table id='acted'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        if len(acted) > COLLAPSE_ROWS:
            shown = min(len(acted), MAX_ACTED_ROWS)
            table = f"<details><summary>show the {shown} rows</summary>{table}</details>"
        parts.append(table)
        if len(acted) > MAX_ACTED_ROWS:
            parts.append(f"<p>First {MAX_ACTED_ROWS} of {len(acted)}; all in report.md.</p>")
    else:
        parts.append("<p>No action: the policy agreed with leaving the cluster as it was.</p>")
    parts.append("<h2>Guard interventions by rule</h2>")
    parts.append(
        _html_table(("rule", "count"), a["interventions_by_rule"].items())
        if a["interventions_by_rule"]
        else "<p>None.</p>"
    )
    parts.append("<h2>Online forecast accuracy</h2>")
    fc = a["forecast"]
    if fc is None:
        parts.append("<p>The policy made no forecasts.</p>")
    else:
        parts.append(
            f"<p>{fc['scored']} of {fc['forecasts']} forecasts scored; 90% interval coverage "
            f"{_pct(fc['overall_coverage'])} (nominal {_pct(fc['nominal_coverage'])}).</p>"
        )
        parts.append(
            _html_table(
                ("deployment", "quantity", "n", "coverage", "MAE of median"),
                (
                    [r["service"], r["quantity"], r["n"], _pct(r["coverage"]), r["mae"]]
                    for r in fc["rows"]
                ),
            )
        )
    parts.append("<h2>Missing telemetry</h2>")
    parts.append(missing_svg(a))
    miss = a["missing"]
    if miss["top_fields"]:
        parts.append(_html_table(("series", "ticks missing"), miss["top_fields"]))
        parts.append(_html_table(("reason", "count"), miss["top_reasons"]))
    if miss["top_query_errors"]:
        parts.append(_html_table(("query error", "count"), miss["top_query_errors"]))
    parts.append("<h2>Drift</h2>")
    d = a["drift"]
    if d is None:
        parts.append("<p>No drift data in the audit.</p>")
    else:
        parts.append(
            f"<p>Retrain recommended: <b>{'yes' if d['retrain_recommended'] else 'no'}</b> "
            f"(on {d['retrain_ticks']} ticks).</p>"
        )
        if d["psi_last"]:
            parts.append(drift_svg(d))
    parts.append("<div class='sim'><h2>Counterfactual (SIMULATED)</h2>")
    if cf is None:
        parts.append("<p>Not computed.</p>")
    elif cf.get("skipped"):
        parts.append(f"<p>Skipped: {html.escape(str(cf['skipped']))}</p>")
    else:
        parts.append(f"<p><b>Simulated, not observed.</b> {html.escape(cf['description'])}</p>")
        parts.append(_html_table(CF_HEADER, _cf_rows(cf)))
        parts.append(counterfactual_svg(cf))
        if cf.get("notes"):
            parts.append(
                "<ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in cf["notes"]) + "</ul>"
            )
    parts.append("</div>")
    if a["skipped_lines"]:
        parts.append(
            f"<p>{a['skipped_lines']} audit lines skipped, e.g.: "
            + html.escape("; ".join(a["skipped_examples"]))
            + "</p>"
        )
    parts.append(f"<p><small>Audit files: {html.escape(', '.join(a['files']))}</small></p>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def summary(a: Mapping[str, Any], cf: Mapping[str, Any] | None) -> dict[str, Any]:
    """What ``summary.json`` holds: the analysis without per-tick series, and the counterfactual."""
    out = {k: v for k, v in a.items() if k != "series"}
    if cf is not None:
        out["counterfactual"] = {
            **{k: v for k, v in cf.items() if k != "runs"},
            "runs": {
                name: {k: v for k, v in run.items() if k != "series"}
                for name, run in cf.get("runs", {}).items()
            },
        }
    else:
        out["counterfactual"] = None
    return out


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(
    audit: Audit, out: str | Path, counterfactual: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Analyse ``audit`` and write ``report.html``, ``report.md`` and ``summary.json`` to ``out``.

    Args:
        audit: From :func:`read_audit`.
        out: Output folder (created).
        counterfactual: The simulated comparison as plain data
            (:func:`agents.evaluation.counterfactual.counterfactual`), or a mapping with a
            ``skipped`` reason, or None.

    Returns:
        The paths written, by name (``html``, ``md``, ``json``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    a = analyse(audit)
    paths = {"html": out / "report.html", "md": out / "report.md", "json": out / "summary.json"}
    paths["html"].write_text(render_html(a, counterfactual), encoding="utf-8")
    paths["md"].write_text(render_markdown(a, counterfactual), encoding="utf-8")
    paths["json"].write_text(
        json.dumps(_json_safe(summary(a, counterfactual)), indent=2, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    return paths
