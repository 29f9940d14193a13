"""Scoring any :class:`~agents.world_model.forecast.forecaster.Forecaster` on a suite split.

:func:`collect_histories` runs (or reads from a cache) the episodes of a suite split on one
topology under behaviours x replicates; the episodes do not depend on any forecaster, so they
are collected once. :func:`score_forecaster` forecasts every origin of every episode with one
forecaster and keeps, per suite entry (behaviours and replicates summed), the sums of
:data:`~agents.world_model.evaluation.metrics.STATS` per metric, window and table step, and
the violation-probability sums (Brier and reliability bins); :func:`run_record` is the small
JSON one scored run becomes (``experiments/results/forecast/records/*.json``). The tables and
intervals are made from those records alone (:mod:`~agents.world_model.evaluation.summary`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.world_model.evaluation.metrics import (
    N_BINS,
    STATS,
    WINDOWS,
    reliability_sums,
    score_sums,
    window_masks,
)
from agents.world_model.forecast.forecaster import EpisodeHistory, Forecaster
from agents.world_model.forecast.naive import NaiveViolation
from agents.world_model.forecast.types import METRICS

STEPS: tuple[int, ...] = (1, 4, 10, 20)
"""Horizon steps (1-based) a run record keeps: 15 s, 1, 2.5 and 5 minutes."""
FAN_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
"""Quantiles of the fan charts."""


def collect_histories(
    suite: str,
    topology: str,
    behaviours: Sequence[str],
    replicates: int,
    cache: str | Path | None = None,
    fidelity: str = "fluid",
    limit: int | None = None,
) -> list[EpisodeHistory]:
    """The episodes of ``suite`` (e.g. ``train:fit``, ``holdout``) on ``topology``.

    Entry-major, then behaviour, then replicate ``k`` (seed ``entry.run_seed(k)``). With
    ``cache`` (a folder) the recorded arrays are read from / written to
    ``<cache>/<suite>_<topology>_<behaviours>_<replicates>.npz``.
    """
    from agents.world_model.data import run_episode
    from envs.scenarios.suites import load_suite

    entries = [e for e in load_suite(suite).entries if e.scenario.topology.name == topology]
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise ValueError(f"suite {suite!r} has no entry on topology {topology!r}")
    keys = [(e, b, k) for e in entries for b in behaviours for k in range(replicates)]
    path = None
    arrays: dict[str, np.ndarray] = {}
    if cache is not None:
        tag = f"{suite.replace(':', '-')}_{topology}_{'-'.join(behaviours)}_{replicates}"
        path = Path(cache) / f"{tag}{'' if limit is None else f'_limit{limit}'}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as d:
                arrays = {k: np.asarray(d[k]) for k in d.files}
    out, fresh = [], {}
    for e, b, k in keys:
        key = f"{e.id}|{b}|{k}"
        if f"{key}/obs" in arrays:
            ep = {n: arrays[f"{key}/{n}"] for n in ("obs", "action", "violation")}
        else:
            ep = run_episode(e.scenario, b, e.run_seed(k), fidelity)
            fresh.update({f"{key}/{n}": np.asarray(ep[n]) for n in ("obs", "action", "violation")})
        out.append(
            EpisodeHistory.from_episode(ep, e.scenario, entry=e.id, behaviour=b, replicate=k)
        )
    if path is not None and fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{**arrays, **fresh})  # type: ignore[arg-type]
    return out


def _origins(ep: EpisodeHistory, horizon: int, warmup: int, every: int) -> np.ndarray:
    return np.arange(warmup, ep.n_rows - horizon, every, dtype=int)


def _fan(ep: EpisodeHistory, forecaster: Forecaster, horizon: int) -> dict[str, Any]:
    """Fan-chart data of one episode: p99 quantiles from 3 origins around the first onset.

    The service is the one whose p99 changes most (in its own scale) after the onset.
    """
    dt = ep.dt_s
    onset = int(min(f.at_s for f in ep.scenario.faults) / dt) if ep.scenario.faults else 40
    origins = np.clip(
        np.array([onset - 8, onset + 2, onset + 12]), 20, ep.n_rows - horizon - 1
    ).astype(int)
    y = ep.series["p99"]
    lo, hi = max(0, onset - 40), min(ep.n_rows, onset + 40)
    with np.errstate(invalid="ignore"):
        before = np.nanmedian(y[max(0, onset - 20) : onset + 1], 0)
        jump = np.nanmax(np.abs(y[onset:hi] - before), 0) / (np.nanstd(y[lo : onset + 1], 0) + 1e-3)
    s = int(np.nanargmax(np.nan_to_num(jump, nan=-1.0)))
    d = forecaster.predict(ep, origins).samples["p99"][..., s]  # [B, N, H]
    q = np.quantile(d, FAN_QUANTILES, axis=1)  # [Q, B, H]
    return {
        "entry": ep.entry,
        "behaviour": ep.behaviour,
        "replicate": ep.replicate,
        "service": ep.services[s],
        "dt_s": dt,
        "onset_row": onset,
        "rows": [lo, hi],
        "truth": [None if np.isnan(v) else round(float(v), 5) for v in y[lo:hi, s]],
        "origins": origins.tolist(),
        "quantiles": list(FAN_QUANTILES),
        "fan": np.round(np.moveaxis(q, 0, 1), 5).tolist(),  # [B, Q, H]
    }


def score_forecaster(
    forecaster: Forecaster,
    episodes: Sequence[EpisodeHistory],
    *,
    warmup: int = 20,
    every: int = 8,
    fan: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``forecaster`` at origins ``warmup, warmup + every, ...`` of every episode.

    Returns:
        ``{"entries": {entry: {"metrics": {metric: [W][len(STEPS)][K]}, "violation":
        {...}}}, "fan": ..., "origins": ..., "predict_s": ...}``; the violation sums hold per
        window the count, the Brier sum (``sum (p - o)^2``), the outcomes and the
        reliability bins (``[N_BINS][count, sum p, sum o]``), or None when the forecaster
        gives no probability.
    """
    h = forecaster.horizon
    steps = [s - 1 for s in STEPS if s <= h]
    entries: dict[str, Any] = {}
    predict_s, n_origins = 0.0, 0
    for i, ep in enumerate(episodes):
        origins = _origins(ep, h, warmup, every)
        if origins.size == 0:
            continue
        t0 = time.perf_counter()
        draws = forecaster.predict(ep, origins)
        predict_s += time.perf_counter() - t0
        n_origins += origins.size
        masks = window_masks(ep.scenario, origins, h)
        idx = origins[:, None] + np.arange(1, h + 1)[None, :]
        rec = entries.setdefault(
            ep.entry,
            {
                "metrics": {m: np.zeros((len(WINDOWS), len(steps), len(STATS))) for m in METRICS},
                "violation": None,
                "episodes": 0,
            },
        )
        rec["episodes"] += 1
        for m in METRICS:
            sums = score_sums(m, draws.samples[m], ep.series[m][idx], ep.series[m], masks)
            rec["metrics"][m] += sums[:, steps]
        if draws.p_violation is not None:
            outcome = NaiveViolation.outcomes(ep.violation, origins, h)
            p = np.clip(np.asarray(draws.p_violation, np.float64), 0.0, 1.0)
            v = rec["violation"] or {
                w: {"n": 0.0, "brier_sum": 0.0, "events": 0.0, "bins": np.zeros((N_BINS, 3))}
                for w in WINDOWS
            }
            for w in WINDOWS:
                sel = masks[w]
                v[w]["n"] += float(sel.sum())
                v[w]["brier_sum"] += float(np.sum((p[sel] - outcome[sel]) ** 2))
                v[w]["events"] += float(outcome[sel].sum())
                v[w]["bins"] += reliability_sums(p[sel], outcome[sel])
            rec["violation"] = v
        if progress:
            print(f"  {forecaster.name}: {i + 1}/{len(episodes)} {ep.entry}", flush=True)
    return {
        "entries": _jsonable(entries),
        "fan": fan_data(forecaster, episodes) if fan else None,
        "origins": n_origins,
        "episodes": len(episodes),
        "predict_s": round(predict_s, 2),
    }


def fan_data(forecaster: Forecaster, episodes: Sequence[EpisodeHistory]) -> dict[str, Any] | None:
    """Fan-chart data of the first episode with a fault (:func:`_fan`); None without one."""
    if not episodes:
        return None
    first = next((ep for ep in episodes if ep.scenario.faults), episodes[0])
    return _fan(first, forecaster, forecaster.horizon)


def _add(a: Any, b: Any) -> Any:
    """Elementwise sum of two nested JSON values of the same shape (None + x = x)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict):
        return {k: _add(a.get(k), b.get(k)) for k in {*a, *b}}
    if isinstance(a, list):
        return [_add(x, y) for x, y in zip(a, b, strict=True)]
    return a + b


def merge_scored(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One :func:`score_forecaster` result from several over disjoint episode sets."""
    out: dict[str, Any] = {"entries": {}, "fan": None, "origins": 0, "episodes": 0}
    predict_s = 0.0
    for p in parts:
        for e, rec in p["entries"].items():
            out["entries"][e] = _add(out["entries"].get(e), rec)
        out["origins"] += p["origins"]
        out["episodes"] += p["episodes"]
        predict_s += p["predict_s"]
        out["fan"] = out["fan"] or p["fan"]
    out["predict_s"] = round(predict_s, 2)
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return np.round(x, 6).tolist()
    return x


def run_record(
    forecaster: Forecaster,
    scored: dict[str, Any],
    *,
    suite: str,
    topology: str,
    seed: int,
    fit_s: float,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The per-run JSON: what was scored, how, and the sums of :func:`score_forecaster`."""
    import platform

    return {
        "forecaster": forecaster.name,
        "suite": suite,
        "topology": topology,
        "seed": seed,
        "horizon": forecaster.horizon,
        "steps": [s for s in STEPS if s <= forecaster.horizon],
        "windows": list(WINDOWS),
        "stats": list(STATS),
        "metrics": list(METRICS),
        "fit_s": round(fit_s, 2),
        "settings": settings,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        **scored,
    }
