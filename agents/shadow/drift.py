"""Input drift: the Population Stability Index of live features against the training reference.

The reference is the bundle manifest's ``feature_reference`` (:func:`agents.bundle_export.
feature_reference`): per observation key, the running mean and standard deviation of the
*encoded* observations the policy was trained on (``VecNormalize``'s statistics). With only
two moments, the reference distribution of a feature is taken as normal: its ten bins are
the deciles of ``N(mean, std)`` (each expected to hold 10 %), and the live window's share in
each bin is compared with them:

``PSI = sum_b (live_b - ref_b) * ln(live_b / ref_b)`` (shares floored at ``1e-4``).

Usual reading: below 0.1 stable, 0.1-0.25 some shift, above 0.25 a real shift. But PSI
compares two populations, and a live window of a steady cluster (minutes of nearly constant
load) is a narrow slice of what training covered: it lands in one or two bins and reads high
(up to ~8.3, all in one bin) with nothing wrong. So ``retrain_recommended`` does not follow
PSI: it is raised when some feature's live mean lies more than ``shift_threshold`` (3)
training standard deviations from the training mean (``mean_shift``, in std units), i.e. the
policy is being fed inputs it has not seen, over a window of at least ``min_samples`` ticks.

Features are the encoder's per-service values (reported per field name, the largest value
over the services) and its cluster values; missing values are left out of the live window
(never counted as zero); features with no spread in training (``std < 1e-6``, e.g. a
constant) are skipped. A normal approximation of a skewed feature inflates its PSI somewhat
on top.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from envs.core.telemetry import Telemetry

DECILES = norm.ppf(np.linspace(0.1, 0.9, 9))
"""Standard-normal deciles: the inner bin edges of a reference ``N(0, 1)``."""
FLOOR = 1e-4


def psi(live: np.ndarray, mean: float, std: float) -> float:
    """PSI of samples ``live`` against ``N(mean, std)`` split at its deciles."""
    edges = mean + std * DECILES
    counts = np.bincount(np.searchsorted(edges, live, side="right"), minlength=10)
    share = np.maximum(counts / max(len(live), 1), FLOOR)
    ref = 0.1
    return float(np.sum((share - ref) * np.log(share / ref)))


@dataclass
class _Feature:
    name: str  # field name (several services share one)
    index: int  # position in the encoded vector
    mean: float
    std: float


class DriftMonitor:
    """Keeps a window of live encoded features and their PSI against the reference.

    Args:
        encoder: The bundle's :class:`~envs.gym.encoder.ObsEncoder`.
        reference: The manifest's ``feature_reference``.
        window: Ticks kept.
        min_samples: Ticks needed before any PSI is reported.
        shift_threshold: Live-mean shift (training stds) above which retraining is
            recommended.

    Raises:
        ValueError: A reference whose sizes do not match the encoder.
    """

    def __init__(
        self,
        encoder: Any,
        reference: dict[str, Any],
        window: int = 240,
        min_samples: int = 20,
        shift_threshold: float = 3.0,
    ) -> None:
        if window < min_samples or min_samples < 1:
            raise ValueError(f"drift needs window >= min_samples >= 1; got {window}, {min_samples}")
        self.encoder = encoder
        self.window = window
        self.min_samples = min_samples
        self.shift_threshold = shift_threshold
        s = encoder.n_services
        fields = list(encoder.service_features)
        cfields = list(encoder.cluster_features)
        names = [f for _ in range(s) for f in fields] + cfields
        if "obs" in reference:  # Box layout: values (S x F), cluster, time, masks
            means, stds = reference["obs"]["mean"], reference["obs"]["std"]
            if len(means) != encoder.size:
                raise ValueError(
                    f"feature_reference.obs has {len(means)} entries; the encoder makes "
                    f"{encoder.size}"
                )
            pairs = list(zip(means[: len(names)], stds[: len(names)], strict=True))
        else:  # Dict layout: service_values and cluster keys
            sv = reference.get("service_values", {})
            cl = reference.get("cluster", {})
            pairs = list(zip(sv.get("mean", []), sv.get("std", []), strict=True))
            pairs += list(zip(cl.get("mean", []), cl.get("std", []), strict=True))
            if len(pairs) != len(names):
                raise ValueError(
                    f"feature_reference service_values+cluster have {len(pairs)} entries; "
                    f"the encoder makes {len(names)}"
                )
        self.features = [
            _Feature(n, i, float(m), float(sd))
            for i, (n, (m, sd)) in enumerate(zip(names, pairs, strict=True))
            if sd >= 1e-6 and math.isfinite(m)
        ]
        self._values: deque[np.ndarray] = deque(maxlen=window)
        self._masks: deque[np.ndarray] = deque(maxlen=window)
        self._n_values = len(names)

    def observe(self, frame: Telemetry) -> None:
        """Add a frame's encoded features (and which were observed) to the window."""
        d = self.encoder.encode_dict(frame)
        values = np.concatenate([d["service_values"].ravel(), d["cluster"]])
        mask = np.concatenate([d["mask"].ravel(), d["cluster_mask"]]) > 0.5
        self._values.append(values.astype(np.float64))
        self._masks.append(mask)

    @property
    def samples(self) -> int:
        """Ticks in the window."""
        return len(self._values)

    def scores(self) -> tuple[dict[str, float], dict[str, float]] | None:
        """``(psi, mean_shift)`` per feature name (largest over services), or None early."""
        if len(self._values) < self.min_samples:
            return None
        values = np.stack(self._values)
        masks = np.stack(self._masks)
        psis: dict[str, float] = {}
        shifts: dict[str, float] = {}
        for f in self.features:
            live = values[masks[:, f.index], f.index]
            if len(live) < self.min_samples:
                continue
            p = round(psi(live, f.mean, f.std), 6)
            z = round(abs(float(live.mean()) - f.mean) / f.std, 6)
            psis[f.name] = max(psis.get(f.name, 0.0), p)
            shifts[f.name] = max(shifts.get(f.name, 0.0), z)
        return psis, shifts

    def psi_by_feature(self) -> dict[str, float] | None:
        """Largest PSI per feature name over the window (None before ``min_samples``)."""
        got = self.scores()
        return None if got is None else got[0]

    def report(self) -> dict[str, Any] | None:
        """The drift record (see the module docstring), or None before enough samples.

        Keys: ``psi``, ``mean_shift``, ``retrain_recommended``, ``threshold`` (the shift
        threshold), ``samples``.
        """
        got = self.scores()
        if got is None:
            return None
        psis, shifts = got
        worst = max(shifts.values(), default=0.0)
        return {
            "psi": psis,
            "mean_shift": shifts,
            "retrain_recommended": worst > self.shift_threshold,
            "threshold": self.shift_threshold,
            "samples": self.samples,
        }
