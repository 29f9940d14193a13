"""The world model's probabilistic forecast.

:func:`forecast` answers "given this history and this plan, what happens next?": it runs the
world model's posterior over the history (``model.observe``), then rolls the prior forward
under the planned action features ``n_samples`` times in one batch (``model.imagine``),
decodes each imagined state into the Gaussian of the value vector in symlog space, adds
observation noise drawn from that Gaussian (stratified over the samples:
:func:`stratified_normal`), maps the draws to raw units (``symexp``, then
clipped to each metric's support) and returns per-service quantiles of :data:`METRICS`
(``[H, S, Q]``) plus the probability of an SLO violation within the horizon::

    p_violation = mean over samples of 1 - prod_h (1 - violation_prob(state_h))

:func:`forecast_batch` does the same for many forecast origins of one episode at once (one
posterior pass, then all origins x samples imagined together); the evaluation uses it. Both
apply a :class:`~agents.world_model.forecast.calibration.Calibration` when given one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.world_model.forecast.calibration import Calibration
from agents.world_model.forecast.types import (
    METRICS,
    Forecast,
    ForecastModel,
    SampleForecast,
    clip_to_bounds,
    to_raw,
)
from agents.world_model.forecast_metrics import empirical_quantiles


def _carry_rows(carry: Any, index: Tensor) -> Any:
    """A carry (dataclass of ``[B, ...]`` tensors) restricted/repeated to rows ``index``."""
    return dataclasses.replace(
        carry,
        **{
            f.name: getattr(carry, f.name)[index]
            for f in dataclasses.fields(carry)
            if isinstance(getattr(carry, f.name), Tensor)
        },
    )


def _carry_cat(carries: Sequence[Any]) -> Any:
    """Concatenate carries along the batch axis."""
    first = carries[0]
    return dataclasses.replace(
        first,
        **{
            f.name: torch.cat([getattr(c, f.name) for c in carries], 0)
            for f in dataclasses.fields(first)
            if isinstance(getattr(first, f.name), Tensor)
        },
    )


def _value_index(layout: Any, n_services: int, metric: str) -> list[int]:
    return [layout.service_index(i, metric) for i in range(n_services)]


def stratified_normal(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal draws ``[B, N, ...]``, stratified along axis 1.

    For every ``(b, ...)`` the N values are the normal quantiles at ``(k + 0.5) / N``, in a
    random order (Latin hypercube sampling, McKay et al. 1979): each draw is still
    N(0, 1), but the N draws of a value are exactly symmetric about 0, so the observation
    noise adds no Monte-Carlo error to the draws' median (with iid noise the median of 32
    draws wanders by ~0.2 standard deviations, more than a one-step change of most series).
    """
    n = shape[1]
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    z = (torch.special.ndtri(levels)).to(dtype)
    order = torch.rand(shape, generator=generator).argsort(dim=1)
    return z[order]


@torch.no_grad()
def sample_futures(
    model: ForecastModel,
    carry: Any,
    planned: Tensor,
    n_samples: int,
    n_services: int,
    generator: torch.Generator,
) -> SampleForecast:
    """Imagine ``n_samples`` futures from each of B carries under ``planned`` ``[B, H, A]``.

    Returns uncalibrated raw draws of :data:`METRICS` ``[B, N, H, S]`` (observation noise
    included, clipped to :data:`SUPPORT`) and ``[B]`` violation probabilities.
    """
    b, h, _ = planned.shape
    rows = torch.arange(b).repeat_interleave(n_samples)  # origin b, sample n -> row b*N + n
    start = _carry_rows(carry, rows)
    states = model.imagine(start, planned[rows], generator=generator)
    feat = model.feat(states)  # [B*N, H, F]
    mean, std = model.decode(feat)  # [B*N, H, V] symlog
    noise = stratified_normal((b, n_samples, *mean.shape[1:]), generator, mean.dtype)
    noise = noise.reshape(mean.shape)
    z_all = (mean + std * noise).double().numpy().reshape(b, n_samples, h, -1)
    vp = model.violation_prob(feat).double()
    if vp.dim() == 3:
        vp = vp.squeeze(-1)
    assert vp.shape == (b * n_samples, h), (vp.shape, b, n_samples, h)
    p_any = 1.0 - torch.prod(1.0 - vp.clamp(0.0, 1.0), dim=1)
    p_violation = p_any.reshape(b, n_samples).mean(1).numpy()
    out: dict[str, np.ndarray] = {}
    for metric in METRICS:
        z = z_all[..., _value_index(model.layout, n_services, metric)]  # [B, N, H, S]
        out[metric] = to_raw(metric, z)
    return SampleForecast(out, np.clip(p_violation, 0.0, 1.0))


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


@torch.no_grad()
def forecast_batch(
    model: ForecastModel,
    obs: np.ndarray,
    action: np.ndarray,
    origins: Sequence[int] | np.ndarray,
    planned: np.ndarray,
    *,
    n_services: int,
    n_samples: int = 64,
    seed: int = 0,
    calibration: Calibration | None = None,
    bounds: Mapping[str, np.ndarray | Sequence[float]] | None = None,
) -> SampleForecast:
    """Forecasts from several origins of one episode (one posterior pass over it).

    Args:
        model: The world model.
        obs: ``[T, O]`` observations, row 0 the episode's first.
        action: ``[T, A]`` action features that led to each row (row 0: zeros).
        origins: Rows ``t`` to forecast from (the history is rows ``0..t``).
        planned: ``[len(origins), H, A]`` action features of steps ``t+1 .. t+H``.
        n_services: S.
        n_samples: Draws N per origin.
        seed: Seeds every draw (posterior, prior and observation noise).
        calibration: Optional :class:`Calibration` (anchoring and spread).
        bounds: Per-service upper bounds ``[S]`` by metric (e.g.
            :func:`~agents.world_model.forecast.types.physical_bounds`); the draws, after
            the calibration, are clipped to them on top of :data:`SUPPORT`.

    Returns:
        A :class:`SampleForecast` with ``[B, N, H, S]`` draws, each origin's decoded values
        and decoder error ``offset`` (``symlog(obs_t) - decode(posterior_t)``, 0 where
        missing).
    """
    t_len = obs.shape[0]
    assert action.shape[0] == t_len, (obs.shape, action.shape)
    assert planned.shape[0] == len(origins), (planned.shape, len(origins))
    if any(not 0 <= t < t_len for t in origins):
        raise ValueError(f"origins must lie in [0, {t_len}), got {list(origins)}")
    gen = torch.Generator().manual_seed(int(seed))
    is_first = torch.zeros(1, t_len)
    is_first[0, 0] = 1.0
    last = max(origins) + 1
    _, states = model.observe(
        _as_tensor(obs[:last])[None],
        _as_tensor(action[:last])[None],
        is_first[:, :last],
        model.initial(1),
        generator=gen,
    )
    carry = _carry_cat([states.carry(int(t)) for t in origins])
    sf = sample_futures(model, carry, _as_tensor(planned), n_samples, n_services, gen)
    lay = model.layout
    now = _as_tensor(obs[np.asarray(origins)])  # [B, O]
    mean_now, _ = model.decode(model.feat(carry))
    err = ((now[:, lay.values] - mean_now) * now[:, lay.mask]).double().numpy()  # [B, V]
    dec = mean_now.double().numpy()
    offset = {m: err[:, _value_index(lay, n_services, m)] for m in METRICS}
    decoded = {m: dec[:, _value_index(lay, n_services, m)] for m in METRICS}
    samples, p_violation = sf.samples, sf.p_violation
    if calibration is not None:
        samples = {
            m: calibration.apply_raw(m, x, offset[m], decoded[m]) for m, x in samples.items()
        }
        p_violation = calibration.apply_violation(p_violation)
    if bounds:
        samples = {m: clip_to_bounds(m, x, bounds.get(m)) for m, x in samples.items()}
    return SampleForecast(samples, p_violation, offset, decoded)


def forecast(
    model: ForecastModel,
    obs: np.ndarray,
    action: np.ndarray,
    planned: np.ndarray,
    *,
    services: Sequence[str],
    n_samples: int = 64,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    slo_p99: float | Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    calibration: Calibration | None = None,
    keep_samples: bool = False,
    bounds: Mapping[str, np.ndarray | Sequence[float]] | None = None,
) -> Forecast:
    """Forecast H steps after the history under a planned action sequence.

    Args:
        model: A trained world model (:class:`ForecastModel`).
        obs: ``[T, O]`` history of encoded observations (``env.encoder.encode``), oldest
            first; row 0 starts the model's state (``is_first``).
        action: ``[T, A]`` action features that led to each history row (row 0: zeros).
        planned: ``[H, A]`` action features to take at the next H steps (ActionEncoder, or
            ``onehot(action) @ env.action_feature_matrix()``).
        services: The S service names, topology order.
        n_samples: Sampled futures (one batch).
        quantiles: Quantile levels to report, ascending in (0, 1).
        slo_p99: p99 SLO in seconds, one for all services or one per service (NaN: no SLO);
            when given, :attr:`Forecast.p_p99_over_slo` is filled.
        seed: Seeds every random draw.
        calibration: :class:`Calibration` to apply (e.g. the one stored with the model).
        keep_samples: Also return the raw draws.
        bounds: Per-service upper bounds ``[S]`` by metric (e.g.
            :func:`~agents.world_model.forecast.types.physical_bounds` of the scenario); the
            draws are clipped to them, on top of :data:`SUPPORT` (p99 and replicas >= 0, error
            rate in [0, 1]).

    Returns:
        A :class:`Forecast` (quantiles ``[H, S, Q]`` in raw units, ``p_violation``).
    """
    obs = np.asarray(obs, dtype=np.float32)
    action = np.asarray(action, dtype=np.float32)
    planned = np.asarray(planned, dtype=np.float32)
    if obs.ndim != 2 or action.ndim != 2 or planned.ndim != 2:
        raise ValueError(
            f"forecast: want obs [T, O], action [T, A], planned [H, A]; got {obs.shape}, "
            f"{action.shape}, {planned.shape}"
        )
    if planned.shape[1] != action.shape[1]:
        raise ValueError(
            f"planned has {planned.shape[1]} action features, history {action.shape[1]}"
        )
    levels = tuple(float(q) for q in quantiles)
    if list(levels) != sorted(levels) or not all(0.0 < q < 1.0 for q in levels):
        raise ValueError(f"quantiles must be ascending in (0, 1), got {levels}")
    n_svc = len(services)
    sf = forecast_batch(
        model,
        obs,
        action,
        [obs.shape[0] - 1],
        planned[None],
        n_services=n_svc,
        n_samples=n_samples,
        seed=seed,
        calibration=calibration,
        bounds=bounds,
    )
    draws = {m: v[0] for m, v in sf.samples.items()}  # [N, H, S]
    qs = {m: empirical_quantiles(np.moveaxis(v, 0, -1), levels) for m, v in draws.items()}
    p_slo = None
    if slo_p99 is not None:
        slo = np.broadcast_to(np.asarray(slo_p99, dtype=np.float64), (n_svc,))
        with np.errstate(invalid="ignore"):
            over = (draws["p99"] > slo[None, None, :]).any(axis=(1, 2))
        p_slo = float(over.mean())
    return Forecast(
        tuple(services),
        levels,
        qs["p99"],
        qs["rps"],
        qs["error_rate"],
        qs["replicas_ready"],
        float(sf.p_violation[0]),
        p_slo,
        draws if keep_samples else None,
    )


# --------------------------------------------------------------------------------------------
