"""Training of the world model: Adam, gradient clipping, a loud finite check, exact resume.

:meth:`WorldModelTrainer.step` takes one numpy batch (``[B, T, ...]`` arrays, the keys of
:data:`~agents.world_model.model.BATCH_KEYS`), computes the loss terms, and **before** the
optimizer touches anything checks that every term, the total and the gradient norm are
finite; if not it raises :class:`NonFiniteError` naming the term(s), the step and the
batch's min / max / NaN / inf counts per key, and leaves weights, optimizer and step count
as they were. :meth:`WorldModelTrainer.step_with_states` does the same and also hands back
the batch's posterior States (detached), for callers that start from them (Dreamer).

Checkpoints (:meth:`WorldModelTrainer.save`) are ``torch.save`` dicts of tensors and
primitives only, read back with ``weights_only=True``: model, optimizer, step count, the
trainer's torch generator (latent sampling) and the global torch RNG state, the config and
the observation layout. The replay's numpy generator is saved with the replay
(:meth:`~agents.world_model.replay.Replay.save`); saving both and loading both continues
training bit-for-bit as if it had not stopped (tests/test_world_model.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.world_model.config import ObsLayout, WorldModelConfig
from agents.world_model.model import BATCH_KEYS, WorldModel
from agents.world_model.rssm import States

CHECKPOINT_FORMAT = "opsworld.world_model/1"


class NonFiniteError(RuntimeError):
    """A loss term or the gradient norm was NaN or infinite; no update was made.

    Attributes:
        step: Trainer step at which it happened (updates done before it).
        terms: Names of the offending terms (``dec``, ``rew``, ..., ``loss``, ``grad_norm``).
        values: Their values.
        batch_stats: Per batch key: ``min``, ``max``, ``nan`` and ``inf`` counts.
    """

    def __init__(
        self,
        step: int,
        terms: list[str],
        values: dict[str, float],
        batch_stats: dict[str, dict[str, float]],
    ) -> None:
        self.step = step
        self.terms = terms
        self.values = values
        self.batch_stats = batch_stats
        stats = "; ".join(
            f"{k}: min {s['min']:.4g} max {s['max']:.4g} nan {int(s['nan'])} inf {int(s['inf'])}"
            for k, s in batch_stats.items()
        )
        vals = ", ".join(f"{k}={v}" for k, v in values.items())
        super().__init__(
            f"non-finite world-model {', '.join(terms)} at step {step} ({vals}); no update made. "
            f"Batch: {stats}"
        )


def batch_stats(batch: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``min``/``max`` over the finite entries and ``nan``/``inf`` counts per key."""
    out = {}
    for k, v in batch.items():
        a = np.asarray(v, dtype=np.float64)
        finite = a[np.isfinite(a)]
        out[k] = {
            "min": float(finite.min()) if finite.size else float("nan"),
            "max": float(finite.max()) if finite.size else float("nan"),
            "nan": float(np.isnan(a).sum()),
            "inf": float(np.isinf(a).sum()),
        }
    return out


class WorldModelTrainer:
    """Trains a :class:`WorldModel` on numpy batches.

    Args:
        model: The model (its parameters are updated in place).
        cfg: Optimiser settings (``lr``, ``eps``, ``grad_clip``, ``threads``); default
            ``model.cfg``.
        seed: Seed of the trainer's torch generator (latent sampling in the loss).
    """

    def __init__(
        self, model: WorldModel, cfg: WorldModelConfig | None = None, seed: int = 0
    ) -> None:
        self.model = model
        self.cfg = cfg if cfg is not None else model.cfg
        torch.set_num_threads(self.cfg.threads)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.cfg.lr, eps=self.cfg.eps)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0

    def _tensors(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; needs {list(BATCH_KEYS)}")
        return {k: torch.as_tensor(np.asarray(batch[k]), dtype=torch.float32) for k in BATCH_KEYS}

    def step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One update on ``batch``; returns metrics (``wm/*``, incl. ``wm/grad_norm``).

        As :meth:`step_with_states` without the posterior.

        Raises:
            NonFiniteError: A loss term, the total or the gradient norm is not finite
                (nothing is updated).
        """
        return self.step_with_states(batch)[0]

    def step_with_states(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, float], States]:
        """One update on ``batch``; returns the metrics and the batch's posterior States.

        The States are those the loss was computed on (the model before this update),
        detached: a caller that needs the posterior of the batch (Dreamer's imagination
        starts) does not have to filter the batch again.

        Raises:
            NonFiniteError: A loss term, the total or the gradient norm is not finite
                (nothing is updated).
        """
        model = self.model
        model.train()
        tensors = self._tensors(batch)
        terms, metrics, states = model.loss_terms(tensors, self.generator)
        scales = model.scales()
        total = torch.stack([scales[k] * v for k, v in terms.items()]).sum()
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["loss"] = float(total.detach())
        bad = [k for k, v in values.items() if not np.isfinite(v)]
        if bad:
            raise NonFiniteError(self.steps, bad, values, batch_stats(batch))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(
                self.steps, ["grad_norm"], {"grad_norm": float(norm)}, batch_stats(batch)
            )
        self.optimizer.step()
        self.steps += 1
        out = {f"wm/{k}": v for k, v in values.items()}
        out.update(metrics)
        out["wm/grad_norm"] = float(norm)
        out["wm/step"] = float(self.steps)
        return out, states.detach()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs (tensors and primitives only)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "steps": self.steps,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": self.model.cfg.model_dump(),
            "layout": _layout_dict(self.model.layout),
            "action_size": self.model.action_size,
            **({"graph": graph.to_dict()} if (graph := getattr(self.model, "graph", None)) else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a checkpoint of another model shape."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a world-model checkpoint (format {state.get('format')!r})")
        mine = self.model.cfg.model_dump()
        saved = saved_config(state["config"])
        diff = sorted(k for k in mine if k != "threads" and saved[k] != mine[k])
        # a graph model's weights fit every layout; a flat one's only its own
        other_layout = state["layout"] != _layout_dict(self.model.layout)
        if diff or (other_layout and mine.get("arch") != "graph"):
            raise ValueError(
                f"checkpoint config differs in {diff or ['layout']}; build the model with "
                "load_model(path) or the same config"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.steps = int(state["steps"])

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (``torch.save``; loadable with ``weights_only=True``)."""
        torch.save(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Read a checkpoint written by :meth:`save`."""
        self.load_state_dict(torch.load(path, weights_only=True))


def saved_config(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the fields it predates at their defaults.

    Fields added to :class:`WorldModelConfig` later (e.g. ``overshoot``) default to "off",
    so a checkpoint written before them means the same with the defaults filled in.
    """
    defaults = {k: f.default for k, f in WorldModelConfig.model_fields.items() if k not in config}
    return {**defaults, **config}


def _layout_dict(layout: ObsLayout) -> dict[str, Any]:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(layout).items()
    }


def load_model(path: str | Path) -> Any:
    """The model of a trainer checkpoint, rebuilt from its saved config and layout (eval mode).

    A ``wm.arch=graph`` checkpoint gives a
    :class:`~agents.world_model.graph.BoundGraphModel` on the topology it was saved with
    (``.bind(graph)`` puts the same weights on another).
    """
    state = torch.load(path, weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a world-model checkpoint")
    cfg = WorldModelConfig(**saved_config(state["config"]))
    if cfg.arch == "graph":
        from agents.world_model.graph import GraphWorldModel, TopologyGraph

        lay = state["layout"]
        core = GraphWorldModel(cfg, tuple(lay["service_features"]), tuple(lay["cluster_features"]))
        bound = core.bind(TopologyGraph.from_dict(state["graph"]))
        bound.load_state_dict(state["model"])
        return bound.eval()
    lay = state["layout"]
    layout = ObsLayout(
        lay["n_services"],
        lay["n_service_features"],
        lay["n_cluster_features"],
        tuple(lay["service_features"]),
        tuple(lay["cluster_features"]),
    )
    model = WorldModel(layout, int(state["action_size"]), WorldModelConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.eval()
