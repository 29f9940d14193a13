"""The folder ``opsworld fit-world-model`` writes, and :func:`load_fit` that reads it back.

Layout (names relative to the folder): ``checkpoint.pt`` (trainer checkpoint), ``spec.json``
(format ``opsworld.fit_world_model/1``: topology, services, encoder spec, action features,
world-model config, :func:`model_code_digest`, the forecast files and the training budget),
``metrics.csv``, ``summary.json``, ``config.yaml`` and :data:`FORECAST_DIR`/ with the
forecast extras (:mod:`agents.world_model.fit.extras`). Nothing in it is unpickled on load.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.run_config import RunConfigError
from agents.world_model.forecast import Calibration, NaiveForecaster, NaiveViolation
from agents.world_model.graph import BoundGraphModel, TopologyGraph
from agents.world_model.model import WorldModel
from agents.world_model.trainer import load_model
from envs.scenarios.schema import Topology

SPEC_FORMAT = "opsworld.fit_world_model/1"
"""``spec.json``'s ``format``."""
FORECAST_DIR = "forecast"
"""Sub-folder of a fit run with the forecast extras."""
MODEL_CODE: tuple[str, ...] = ("config", "math", "nets", "rssm", "fused", "model", "graph")
"""Modules of ``agents/world_model`` whose source defines what a checkpoint's weights mean."""


def model_code_digest() -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of each :data:`MODEL_CODE` module's source.

    A checkpoint loads into any model with the same parameter shapes, even after a change
    that gives the weights another meaning (e.g. a new GRU gate layout); comparing these
    digests at load time catches that.
    """
    folder = Path(__file__).resolve().parent.parent  # agents/world_model
    out = {}
    for name in MODEL_CODE:
        path = folder / f"{name}.py"
        if path.exists():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


@dataclass(frozen=True)
class FittedModel:
    """What ``opsworld fit-world-model`` wrote, loaded (:func:`load_fit`).

    Attributes:
        path: The run folder.
        spec: ``spec.json``.
        model: The world model (eval mode).
        calibration: The spread calibration.
        persistence: The persistence forecaster.
        seasonal: The seasonal-naive forecaster.
        violation: The naive violation model.
    """

    path: Path
    spec: dict[str, Any]
    model: WorldModel | BoundGraphModel
    calibration: Calibration
    persistence: NaiveForecaster
    seasonal: NaiveForecaster
    violation: NaiveViolation

    def model_for(self, topology: Topology) -> WorldModel | BoundGraphModel:
        """The world model on ``topology`` (an :class:`envs.scenarios.schema.Topology`).

        A ``wm.arch=graph`` model puts its weights on that topology's call graph, whichever
        it is (trained on it or not); a flat model runs only on the services it was fitted
        on.

        Raises:
            RunConfigError: A flat model and another topology.
        """
        if isinstance(self.model, BoundGraphModel):
            return self.model.bind(TopologyGraph.from_topology(topology))
        mine = list(self.spec.get("services", []))
        theirs = [s.name for s in topology.services]
        if mine != theirs:
            raise RunConfigError(
                f"model={self.path}: a flat world model fitted on {self.spec.get('topology')} "
                f"cannot forecast {topology.name}; fit one with wm.arch=graph"
            )
        return self.model


def load_fit(path: str | Path) -> FittedModel:
    """Load a ``fit-world-model`` run folder (no pickles: ``weights_only`` torch, npz, JSON).

    Raises:
        RunConfigError: When ``path`` is not such a folder (naming the missing files), or a
            file in it is damaged or truncated.
    """
    path = Path(path)
    spec_path = path / "spec.json"
    if not spec_path.exists():
        raise RunConfigError(
            f"model={path}: not an 'opsworld fit-world-model' folder (no spec.json)"
        )
    spec = json.loads(spec_path.read_text())
    files = {k: path / v for k, v in spec["forecast"].items() if isinstance(v, str)}
    missing = [str(p) for p in [path / spec["checkpoint"], *files.values()] if not p.exists()]
    if missing:
        raise RunConfigError(f"model={path}: missing {', '.join(missing)}")
    saved, now = spec.get("model_code", {}), model_code_digest()
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        warnings.warn(
            f"model={path}: agents/world_model/{{{','.join(changed)}}}.py changed since this "
            "model was fitted; its weights may mean something else now (refit it)",
            stacklevel=2,
        )
    try:
        return FittedModel(
            path,
            spec,
            load_model(path / spec["checkpoint"]),
            Calibration.from_json(files["calibration"].read_text()),
            NaiveForecaster.load(files["persistence"]),
            NaiveForecaster.load(files["seasonal"]),
            NaiveViolation(**json.loads(files["violation"].read_text())),
        )
    except Exception as err:  # a truncated or damaged file raises anything
        raise RunConfigError(
            f"model={path}: a file is damaged or truncated ({type(err).__name__}: "
            f"{str(err)[:200]}); refit with 'opsworld fit-world-model'"
        ) from None
