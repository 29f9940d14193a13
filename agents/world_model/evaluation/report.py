"""The Markdown report of ``opsworld evaluate-forecast`` (``forecast.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from agents.world_model.evaluation.scoring import FORECASTERS, VIOLATION_FORECASTERS
from agents.world_model.forecast import METRICS, UNITS

TABLE_STEPS: tuple[int, ...] = (1, 5, 10, 20)
"""Horizon steps shown in the Markdown tables."""


def _f(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def markdown(agg: dict[str, Any], header: Mapping[str, Any], horizon: int) -> str:
    """The Markdown report: settings, MAE/CRPS tables, coverage, skill, Brier, plots."""
    steps = [h for h in TABLE_STEPS if h <= horizon]
    lines = [
        f"# Forecasts on suite `{header['suite']}`, topology `{header['topology']}`",
        "",
        f"Model `{header['model']}` ({header['model_summary']}). {header['episodes']} episodes "
        f"({header['entries']} entries x behaviours {header['behaviours']} x {header['seeds']} "
        f"seed(s)), {agg['origins']} forecast origins (every {header['every']} steps after "
        f"{header['warmup']} steps of history), horizon {horizon} steps of "
        f"{header['dt_s']:.0f} s, {header['n_samples']} sampled futures per forecast; "
        f"{header['wall_s']:.0f} s wall.",
        "",
        "Forecasters: `model` (world model, raw), `model_cal` (same draws, anchored towards "
        "the last observation and spread-calibrated, both fitted on TRAIN episodes), "
        "`persistence` (last value), `seasonal` (season: the traffic period "
        "when the history covers it, else the last 5 minutes repeated); naive uncertainty "
        "from TRAIN residual quantiles. MAE of the median; CRPS of the sample distribution; "
        "means over origins and services, raw units.",
        "",
    ]
    for m in METRICS:
        lines += [
            f"## `{m}` ({UNITS[m]})",
            "",
            "| forecaster | "
            + " | ".join(f"MAE h={h}" for h in steps)
            + " | "
            + " | ".join(f"CRPS h={h}" for h in steps)
            + " | cov80 | cov90 |",
            "|---|" + "---:|" * (2 * len(steps) + 2),
        ]
        for f in FORECASTERS:
            ps = agg["per_step"][f][m]
            ov = agg["overall"][f][m]
            lines.append(
                f"| `{f}` | "
                + " | ".join(_f(ps["mae"][h - 1]) for h in steps)
                + " | "
                + " | ".join(_f(ps["crps"][h - 1]) for h in steps)
                + f" | {_f(ov['coverage80'], 2)} | {_f(ov['coverage90'], 2)} |"
            )
        sk = agg["skill"][m]
        lines += [
            "",
            "MAE skill vs the better naive forecast (positive: better than it): `model` "
            f"{100 * sk['mae_skill_model_last']:.0f}% at h={horizon}, "
            f"{100 * sk['mae_skill_model_mean']:.0f}% averaged over h=1..{horizon}; "
            f"`model_cal` {100 * sk['mae_skill_model_cal_last']:.0f}% at h={horizon}, "
            f"{100 * sk['mae_skill_model_cal_mean']:.0f}% averaged.",
            "",
        ]
    v = agg["violation"]
    lines += [
        "## SLO violation within the horizon",
        "",
        f"Base rate {v['base_rate']:.3f} over {v['n']} origins.",
        "",
        "| forecaster | Brier | Brier skill vs climatology |",
        "|---|---:|---:|",
    ]
    for f in VIOLATION_FORECASTERS:
        lines.append(
            f"| `{f}` | {_f(v[f]['brier'])} | {_f(v[f]['brier_skill_vs_climatology'], 2)} |"
        )
    lines += [
        "",
        "`model_cal`: the model's probability Platt-scaled on TRAIN episodes; "
        "`naive`: the TRAIN frequency of a violation within the horizon given whether the "
        "current step violates; `climatology`: the TRAIN base rate.",
        "",
        "![MAE](mae.png)",
        "",
        "![CRPS](crps.png)",
        "",
        "![coverage](coverage.png)",
        "",
        "![reliability](reliability.png)",
        "",
    ]
    return "\n".join(lines)
