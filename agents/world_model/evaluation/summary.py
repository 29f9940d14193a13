"""Tables with 95 % intervals from the per-run records of :mod:`.bench`.

Records of one (suite, topology) are grouped by forecaster; a forecaster has one record per
training seed (deterministic baselines: one). Every figure is a ratio of sums over suite
entries and seeds (MASE = sum of scaled errors / their count, coverage = hits / truths,
Brier = sum of squared errors / origins), and its 95 % interval is a percentile bootstrap
(:data:`N_BOOT` resamples, fixed seed) that resamples entries with replacement and, for each
forecaster, seeds with replacement; one resample of entries is shared by all forecasters,
so differences and skills are paired. With entries of several topologies pooled, entries are
resampled within each topology (stratified).

Skill of forecaster f = ``1 - MASE_f / MASE_best`` with ``best`` the baseline of the lowest
MASE on the same data (metric, window, step): the hardest comparator, chosen with
hindsight, which can only lower the skill.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

N_BOOT = 1000
"""Bootstrap resamples."""
BASELINES: tuple[str, ...] = ("persistence", "seasonal", "drift", "ets", "arima", "lightgbm")
"""Forecasters that count as baselines (the skill's comparators)."""


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``*.json`` record under ``folder``, sorted by file name."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).rglob("*.json"))]


class Table:
    """Sums of one (suite, topology or several) as arrays, per forecaster.

    Attributes:
        entries: Entry ids (rows), in order; ``strata``: their topology.
        metric_sums: Forecaster -> ``[seeds, entries, metrics, W, steps, K]``.
        viol_sums: Forecaster -> ``[seeds, entries, W, 3]`` (n, Brier sum, events) or absent.
        bins: Forecaster -> ``[seeds, W, N_BINS, 3]`` reliability bins pooled over entries.
        left_out: Entries left out because some forecaster (or one of its seeds) has no
            score on them: every figure is over the entries all forecasters share, so that
            the comparisons stay paired.
    """

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            raise ValueError("no run records")
        first = records[0]
        self.metrics: list[str] = first["metrics"]
        self.windows: list[str] = first["windows"]
        self.steps: list[int] = first["steps"]
        self.stats: list[str] = first["stats"]
        keys = sorted({(r["topology"], e) for r in records for e in r["entries"]})
        self.entries = [e for _, e in keys]
        self.strata = [t for t, _ in keys]
        self.metric_sums: dict[str, np.ndarray] = {}
        self.viol_sums: dict[str, np.ndarray] = {}
        self.bins: dict[str, np.ndarray] = {}
        self.seeds: dict[str, list[int]] = {}
        by_f: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for r in records:
            by_f.setdefault(r["forecaster"], {}).setdefault(int(r["seed"]), []).append(r)
        shape = (len(self.metrics), len(self.windows), len(self.steps), len(self.stats))
        common = np.ones(len(keys), bool)
        for f, seeds in by_f.items():
            ms, vs, bs, ok_v = [], [], [], True
            for _, recs in sorted(seeds.items()):
                m = np.zeros((len(self.entries), *shape))
                v = np.zeros((len(self.entries), len(self.windows), 3))
                b = np.zeros((len(self.entries), len(self.windows), 10, 3))
                seen = np.zeros(len(keys), bool)
                for r in recs:
                    for e, rec in r["entries"].items():
                        i = keys.index((r["topology"], e))
                        seen[i] = True
                        m[i] = [rec["metrics"][k] for k in self.metrics]
                        if rec["violation"] is None:
                            ok_v = False
                            continue
                        for w, name in enumerate(self.windows):
                            x = rec["violation"][name]
                            v[i, w] = (x["n"], x["brier_sum"], x["events"])
                            b[i, w] += np.asarray(x["bins"])
                common &= seen
                ms.append(m)
                vs.append(v)
                bs.append(b)
            self.metric_sums[f] = np.stack(ms)
            self.seeds[f] = sorted(seeds)
            if ok_v:
                self.viol_sums[f] = np.stack(vs)
                self.bins[f] = np.stack(bs)
        keep = np.flatnonzero(common)
        self.left_out = [e for i, e in enumerate(self.entries) if not common[i]]
        self.entries = [self.entries[i] for i in keep]
        self.strata = [self.strata[i] for i in keep]
        for f in self.metric_sums:
            self.metric_sums[f] = self.metric_sums[f][:, keep]
        for f in self.viol_sums:
            self.viol_sums[f] = self.viol_sums[f][:, keep]
            self.bins[f] = self.bins[f][:, keep].sum(1)  # [seeds, W, N_BINS, 3]

    @property
    def forecasters(self) -> list[str]:
        """Forecaster names: the baselines in :data:`BASELINES` order, then the others."""
        names = list(self.metric_sums)
        return [b for b in BASELINES if b in names] + sorted(n for n in names if n not in BASELINES)

    def resamples(
        self, n_boot: int = N_BOOT, seed: int = 0
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``([n_boot, E] entry indices (stratified), {forecaster: [n_boot, seeds]})``."""
        rng = np.random.default_rng(seed)
        strata = np.asarray(self.strata)
        cols = []
        for s in sorted(set(self.strata)):
            idx = np.flatnonzero(strata == s)
            cols.append(idx[rng.integers(0, idx.size, (n_boot, idx.size))])
        ent = np.concatenate(cols, 1)
        seeds = {
            f: rng.integers(0, a.shape[0], (n_boot, a.shape[0]))
            for f, a in self.metric_sums.items()
        }
        return ent, seeds

    def ratio(
        self,
        f: str,
        metric: str,
        window: str,
        step: int,
        num: str,
        den: str,
        ent: np.ndarray | None = None,
        seeds: np.ndarray | None = None,
    ) -> np.ndarray:
        """``sum num / sum den`` over entries and seeds (per resample when given)."""
        a = self.metric_sums[f][
            :, :, self.metrics.index(metric), self.windows.index(window), self.steps.index(step)
        ]  # [seeds, E, K]
        x, y = a[..., self.stats.index(num)], a[..., self.stats.index(den)]
        if ent is None:
            return np.asarray(x.sum() / y.sum() if y.sum() > 0 else np.nan)
        assert seeds is not None
        # [n_boot, seeds_drawn, E_drawn]
        xs = x[seeds[:, :, None], ent[:, None, :]].sum((1, 2))
        ys = y[seeds[:, :, None], ent[:, None, :]].sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.where(ys > 0, xs / ys, np.nan))

    def brier(
        self, f: str, window: str, ent: np.ndarray | None = None, seeds: np.ndarray | None = None
    ) -> np.ndarray:
        """Brier score (per resample when given)."""
        a = self.viol_sums[f][:, :, self.windows.index(window)]  # [seeds, E, 3]
        if ent is None:
            return np.asarray(a[..., 1].sum() / a[..., 0].sum() if a[..., 0].sum() else np.nan)
        assert seeds is not None
        xs = a[..., 1][seeds[:, :, None], ent[:, None, :]].sum((1, 2))
        ys = a[..., 0][seeds[:, :, None], ent[:, None, :]].sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.where(ys > 0, xs / ys, np.nan))


def interval(x: np.ndarray) -> tuple[float, float]:
    """Central 95 % of bootstrap values (non-finite ones left out)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(x, (0.025, 0.975))
    return float(lo), float(hi)


def summarize(table: Table, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Every figure of the report with its 95 % interval.

    Returns:
        ``{"mase"|"crps"|"mae"|"cov80"|"cov90": {window: {metric: {step: {f: [est, lo, hi]}}}},
        "skill": {window: {metric: {step: {"best": name, f: [est, lo, hi]}}}},
        "brier": {window: {f: [est, lo, hi]}}, "events": {window: [events, n]},
        "reliability": {f: [[mean p, freq, count] per bin]}, "flat": {metric: share}}``.
    """
    ent, seeds = table.resamples(n_boot)
    specs = {
        "mase": ("ase", "n_ase"),
        "mae": ("ae", "n"),
        "crps": ("crps", "n"),
        "cov80": ("in80", "n"),
        "cov90": ("in90", "n"),
    }
    out: dict[str, Any] = {k: {} for k in (*specs, "skill", "brier")}
    fs = table.forecasters
    for w in table.windows:
        for k in (*specs, "skill"):
            out[k][w] = {}
        for m in table.metrics:
            for k in (*specs, "skill"):
                out[k][w][m] = {}
            for st in table.steps:
                boots = {}
                for k, (num, den) in specs.items():
                    cell = {}
                    for f in fs:
                        est = float(table.ratio(f, m, w, st, num, den))
                        bs = table.ratio(f, m, w, st, num, den, ent, seeds[f])
                        cell[f] = [est, *interval(bs)]
                        if k == "mase":
                            boots[f] = bs
                    out[k][w][m][str(st)] = cell
                mase = out["mase"][w][m][str(st)]
                base = [b for b in BASELINES if b in mase and mase[b][0] > 0]  # NaN: False
                sk: dict[str, Any] = {"best": None}
                if base:
                    best = min(base, key=lambda b: mase[b][0])
                    sk["best"] = best
                    for f in fs:
                        with np.errstate(invalid="ignore", divide="ignore"):
                            s_b = 1.0 - boots[f] / boots[best]
                        sk[f] = [1.0 - mase[f][0] / mase[best][0], *interval(s_b)]
                out["skill"][w][m][str(st)] = sk
        out["brier"][w] = {
            f: [float(table.brier(f, w)), *interval(table.brier(f, w, ent, seeds[f]))]
            for f in fs
            if f in table.viol_sums
        }
    any_v = next(iter(table.viol_sums.values()), None)
    out["events"] = (
        {
            w: [float(any_v[0, :, i, 2].sum()), float(any_v[0, :, i, 0].sum())]
            for i, w in enumerate(table.windows)
        }
        if any_v is not None
        else {}
    )
    out["reliability"] = {}
    for f, b in table.bins.items():
        pooled = b.sum(0)[table.windows.index("all")]  # [bins, 3]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["reliability"][f] = [
                [
                    float(c[1] / c[0]) if c[0] else None,
                    float(c[2] / c[0]) if c[0] else None,
                    float(c[0]),
                ]
                for c in pooled
            ]
    first = table.forecasters[0]
    a = table.metric_sums[first][0]  # [E, metrics, W, steps, K]
    out["flat"] = {
        m: float(
            1.0
            - a[:, i, 0, -1, table.stats.index("n_ase")].sum()
            / max(a[:, i, 0, -1, table.stats.index("n")].sum(), 1)
        )
        for i, m in enumerate(table.metrics)
    }
    out["entries"] = len(table.entries)
    out["left_out"] = list(table.left_out)
    out["seeds"] = {f: table.seeds[f] for f in fs}
    return out
