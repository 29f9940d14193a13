"""The tuned HPA's settings: the knobs ``python -m agents.baselines.tuned`` grid-searched.

The search itself (it runs the simulator under many settings) lives in
:mod:`agents.baselines.tuned`; what the environments and the control plane need, reading
the committed winner (``configs/policy/tuned_hpa.yaml``) and turning it into an
:class:`~envs.kube.config.HPAConfig`, lives here so that ``envs`` never imports ``agents``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from envs.kube.config import HPABehavior, HPAConfig, ScaleDownRules

CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "policy" / "tuned_hpa.yaml"
"""Where the winner is written (and read from)."""


@dataclass(frozen=True)
class TunedHPASettings:
    """The knobs of the tuned HPA.

    Attributes:
        target_cpu_utilization: HPA CPU utilisation target, percent.
        scale_down_stabilization_s: Scale-down stabilisation window, seconds.
    """

    target_cpu_utilization: int = 70
    scale_down_stabilization_s: int = 300

    def hpa_config(self) -> HPAConfig:
        """The :class:`HPAConfig` with these knobs (everything else Kubernetes' default)."""
        behavior = HPABehavior(
            scale_down=ScaleDownRules(stabilization_window_seconds=self.scale_down_stabilization_s)
        )
        return HPAConfig.cpu(self.target_cpu_utilization, behavior=behavior)


def load_settings(path: str | Path = CONFIG_PATH) -> TunedHPASettings:
    """Read the committed winner from ``configs/policy/tuned_hpa.yaml``.

    Raises:
        ValueError: Naming the file and the field when a knob is missing or not an int.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    values: dict[str, int] = {}
    for key in ("target_cpu_utilization", "scale_down_stabilization_s"):
        v = data.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{path}: {key} must be an integer, got {v!r}")
        values[key] = v
    return TunedHPASettings(**values)
