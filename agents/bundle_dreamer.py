"""Dreamer bundles: the world model and the actor behind one recurrent step, and its loader.

A Dreamer bundle (``kind: dreamer`` in ``manifest.json``) holds

* ``weights.safetensors``: the world model (encoder, RSSM, decoder and heads), the actor and
  the critic of a trained run (:class:`DreamerNets`, ``safetensors.torch.save_model``);
* ``rssm_step.onnx``: one decision step, :class:`DreamerStep`, with the recurrent state as
  explicit inputs and outputs::

      (obs [B, O], is_first [B], deter [B, D], stoch [B, K, C], prev_action [B, A],
       mask [B, sum(nvec)]) -> (action [B, dims] int64, deter_next [B, D],
                                stoch_next [B, K, C])

  the world model's posterior step from the previous carry, the observation and the
  features of the previous decision's actions (``is_first`` resets the carry first), then the
  actor's mode under the mask; no Python loop over time, weights inline (one file).

The manifest's ``recurrent_state`` lists those tensors (names, shapes, initial values), so a
client that runs ``rssm_step.onnx`` itself knows how to start and carry a stream.

:class:`DreamerBundlePolicy` acts exactly as :class:`agents.dreamer.policy.DreamerPolicy`
in its deterministic mode (the belief, the encoder, the codec's masks and decoding, the
action features fed to the next step), with onnxruntime (``backend="onnx"``) or torch; it
needs neither Stable-Baselines3 nor the simulator. Its world model also answers the
server's extension routes: :meth:`DreamerBundlePolicy.forecast` (quantiles of p99, rps,
error rate and ready replicas over a horizon, and the probability of an SLO violation) and
:meth:`DreamerBundlePolicy.explain` (the what-if planner's predicted outcome per candidate
action).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_model
from torch import Tensor, nn

from agents.dreamer.actor_critic import ActionSpec, Actor, Critic
from agents.dreamer.whatif import WhatIfPlanner
from agents.world_model.config import ObsLayout, WorldModelConfig
from agents.world_model.forecast.rollout import sample_futures
from agents.world_model.forecast.types import METRICS
from agents.world_model.math import unimix_probs
from agents.world_model.model import WorldModel
from agents.world_model.rssm import Carry
from envs.core.actions import Action
from envs.core.telemetry import Telemetry
from envs.gym.codec import ActionCodec, ControlBelief
from envs.gym.encoder import ObsEncoder
from envs.kube.config import HPAConfig

STEP_ONNX = "rssm_step.onnx"
STEP_INPUTS: tuple[str, ...] = ("obs", "is_first", "deter", "stoch", "prev_action", "mask")
STEP_OUTPUTS: tuple[str, ...] = ("action", "deter_next", "stoch_next")


class DreamerNets(nn.Module):
    """The networks of a Dreamer bundle: world model, actor and critic.

    Args:
        layout: The observation layout.
        spec: The action space.
        wm_config: World-model sizes.
        hidden: Actor and critic hidden layers.
        unimix: The actor's uniform share.
        bins: The critic's two-hot bins.
    """

    def __init__(
        self,
        layout: ObsLayout,
        spec: ActionSpec,
        wm_config: WorldModelConfig,
        hidden: list[int],
        unimix: float,
        bins: int,
    ) -> None:
        super().__init__()
        self.wm = WorldModel(layout, spec.feature_size, wm_config)
        feat = wm_config.feat_size
        self.actor = Actor(feat, spec, hidden, unimix)
        self.critic = Critic(feat, hidden, bins)


class DreamerStep(nn.Module):
    """One decision: posterior step, then the actor's mode (see the module docstring).

    The same computation as :meth:`agents.dreamer.agent.DreamerAgent.act` with
    ``deterministic=True``; ``masked`` False ignores ``mask`` (the run's env has none).
    """

    def __init__(self, nets: DreamerNets, masked: bool) -> None:
        super().__init__()
        self.nets = nets
        self.masked = masked

    def forward(
        self,
        obs: Tensor,
        is_first: Tensor,
        deter: Tensor,
        stoch: Tensor,
        prev_action: Tensor,
        mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(action [B, dims], deter_next [B, D], stoch_next [B, K, C])``."""
        wm, rssm = self.nets.wm, self.nets.wm.rssm
        # RSSM.obs_step(sample=False), op for op, with the one-hot built from a comparison
        # (``zeros_like(...).scatter_`` would export with the traced batch size)
        carry, action = rssm._reset(Carry(deter, stoch), prev_action, is_first)
        deter_next = rssm._core(carry.deter, carry.stoch, action)
        probs = unimix_probs(rssm.post_logits(deter_next, wm.embed(obs)), rssm.unimix)
        idx = probs.argmax(-1, keepdim=True)
        classes = torch.arange(rssm.classes, device=probs.device)
        stoch_next = (classes == idx).to(probs.dtype)
        logits = self.nets.actor.net(wm.feat(Carry(deter_next, stoch_next)))
        return self.mode(logits, mask), deter_next, stoch_next

    def mode(self, logits: Tensor, mask: Tensor) -> Tensor:
        """:meth:`ActionDist.mode` of ``logits`` ``[B, size]`` under ``mask``, op for op.

        The same operations as :class:`~agents.dreamer.actor_critic.ActionDist` (so the
        choice is bit-equal), without its ``expand_as`` of the mask, which the ONNX
        exporter would fix to the traced batch size (mask and logits have one shape here).
        """
        unimix = self.nets.actor.unimix
        nvec = list(self.nets.actor.spec.nvec)
        picks = []
        for part, m in zip(logits.split(nvec, -1), mask.split(nvec, -1), strict=True):
            if self.masked:
                m = m | ~m.any(-1, keepdim=True)
                probs = torch.softmax(part.masked_fill(~m, -torch.inf), -1)
                if unimix > 0:
                    valid = m.float()
                    probs = (1 - unimix) * probs + unimix * valid / valid.sum(-1, keepdim=True)
            else:
                probs = torch.softmax(part, -1)
                if unimix > 0:
                    probs = (1 - unimix) * probs + unimix / part.shape[-1]
            picks.append(probs.argmax(-1))
        return torch.stack(picks, -1)


@dataclass(frozen=True)
class DreamerBundleState:
    """Recurrent state of one stream of a :class:`DreamerBundlePolicy`.

    Attributes:
        belief: What telemetry says of the control plane (masks, decoding).
        deter: ``[1, D]`` float32 GRU state.
        stoch: ``[1, K, C]`` float32 latent (one-hot).
        prev_action: ``[1, A]`` float32 features of the previous decision's actions.
        first: The next frame is the stream's first.
        seen: The belief at the last frame, before its decision (the what-if planner's
            candidates are alternatives to that decision); None before the first frame.
    """

    belief: ControlBelief
    deter: np.ndarray
    stoch: np.ndarray
    prev_action: np.ndarray
    first: bool = True
    seen: ControlBelief | None = None


def recurrent_state_spec(cfg: WorldModelConfig, action_size: int) -> dict[str, Any]:
    """The manifest's ``recurrent_state``: tensors a stream carries between steps."""
    return {
        "inputs": {
            "deter": {"shape": ["batch", cfg.deter], "dtype": "float32", "initial": 0.0},
            "stoch": {
                "shape": ["batch", cfg.stoch, cfg.classes],
                "dtype": "float32",
                "initial": 0.0,
            },
            "prev_action": {"shape": ["batch", action_size], "dtype": "float32", "initial": 0.0},
            "is_first": {"shape": ["batch"], "dtype": "float32", "initial": 1.0},
        },
        "next": {"deter": "deter_next", "stoch": "stoch_next"},
        "note": "is_first is 1 on a stream's first frame, then 0; prev_action is the "
        "ActionEncoder features of the actions decided on the previous frame "
        "(hpa_tune: the choice's features)",
    }


class _TorchStep:
    def __init__(self, step: DreamerStep) -> None:
        self.step = step.eval()

    def __call__(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.no_grad():
            action, deter, stoch = self.step(*(torch.as_tensor(feed[name]) for name in STEP_INPUTS))
        return action.numpy(), deter.numpy(), stoch.numpy()


class OnnxStep:
    """``rssm_step.onnx`` in onnxruntime (one thread)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(action, deter_next, stoch_next)`` for a batch."""
        out = self.session.run(None, {k: feed[k] for k in self.inputs})
        return cast(tuple[np.ndarray, np.ndarray, np.ndarray], tuple(out))


def nets_from_manifest(manifest: dict[str, Any], codec: ActionCodec) -> DreamerNets:
    """Empty :class:`DreamerNets` of the sizes a manifest records."""
    encoder = ObsEncoder.from_spec(manifest["observation"]["encoder"])
    net = manifest["network"]
    return DreamerNets(
        ObsLayout.from_encoder(encoder),
        ActionSpec.from_codec(codec),
        WorldModelConfig.model_validate(net["world_model"]),
        [int(n) for n in net["hidden"]],
        float(net["unimix"]),
        int(net["bins"]),
    )


class DreamerBundlePolicy:
    """A verified Dreamer bundle as a :class:`~envs.core.policy.Policy` (no SB3, no simulator).

    Decides as :class:`agents.dreamer.policy.DreamerPolicy` with ``deterministic=True``.

    Args:
        folder: The bundle folder (already verified).
        manifest: Its parsed manifest.
        sha: Its SHA.
        backend: ``onnx`` (``rssm_step.onnx``) or ``torch`` (the safetensors weights).

    Attributes:
        name: The bundle's name.
        backend: ``onnx`` or ``torch``.
        nets: The torch networks (world model, actor, critic): the torch backend's step and
            the forecast and explain routes.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], sha: str, backend: str) -> None:
        from agents.bundle import WEIGHTS, BundleError, spec_from_manifest

        self.folder = folder
        self.manifest = manifest
        self.sha = sha
        self.name = str(manifest["name"])
        self.spec = spec_from_manifest(manifest)
        act = manifest["action"]
        self.encoder = ObsEncoder.from_spec(manifest["observation"]["encoder"])
        self.codec = ActionCodec(act["layout"], self.spec, allow_drain=bool(act["allow_drain"]))
        self.action_spec = ActionSpec.from_codec(self.codec)
        if list(self.action_spec.nvec) != [int(n) for n in act["nvec"]]:
            raise BundleError(
                f"{folder}/manifest.json: action.nvec {act['nvec']} differs from the codec's "
                f"{list(self.action_spec.nvec)} for layout {act['layout']!r}"
            )
        if self.encoder.size != int(manifest["observation"]["size"]):
            raise BundleError(
                f"{folder}/manifest.json: observation.size {manifest['observation']['size']} "
                f"differs from the encoder's {self.encoder.size}"
            )
        self.nets = nets_from_manifest(manifest, self.codec)
        missing, unexpected = load_model(self.nets, str(folder / WEIGHTS), strict=False)
        if missing or unexpected:
            raise BundleError(
                f"{folder / WEIGHTS}: tensors missing {sorted(missing)}, unexpected "
                f"{sorted(unexpected)} for the manifest's network"
            )
        self.nets.eval()
        self.in_cluster_hpa: HPAConfig | None = None
        if act["layout"] == "hpa_tune":
            self.in_cluster_hpa = HPAConfig.model_validate(manifest["hpa"]["config"])
        self.masked = self.action_spec.masked
        self.backend = backend
        self.run: Any = (
            OnnxStep(folder / STEP_ONNX)
            if backend == "onnx"
            else _TorchStep(DreamerStep(self.nets, self.masked))
        )
        cfg = self.nets.wm.cfg
        self._zeros = (
            np.zeros((1, cfg.deter), np.float32),
            np.zeros((1, cfg.stoch, cfg.classes), np.float32),
            np.zeros((1, self.action_spec.feature_size), np.float32),
        )

    # ------------------------------------------------------------------ policy
    def reset(self, n: int = 1) -> DreamerBundleState | list[DreamerBundleState]:
        """Fresh state (one for ``n == 1``, else a list of ``n``)."""
        deter, stoch, prev = self._zeros
        states = [
            DreamerBundleState(ControlBelief.initial(self.spec), deter, stoch, prev)
            for _ in range(n)
        ]
        return states[0] if n == 1 else states

    def step(
        self, obs: Telemetry, state: DreamerBundleState, belief: ControlBelief
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One step of the network: ``(indices [dims], deter, stoch, mask)``."""
        mask = self.codec.masks(belief)
        feed = {
            "obs": self.encoder.encode(obs)[None].astype(np.float32, copy=False),
            "is_first": np.array([float(state.first)], dtype=np.float32),
            "deter": state.deter,
            "stoch": state.stoch,
            "prev_action": state.prev_action,
            "mask": mask[None].astype(bool),
        }
        action, deter, stoch = self.run(feed)
        return action[0], deter, stoch, mask

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """Decide on one frame (see :meth:`agents.dreamer.policy.DreamerPolicy.act`)."""
        st = cast(DreamerBundleState, state)
        belief = st.belief.observe(obs)
        idx, deter, stoch, mask = self.step(obs, st, belief)
        choice = self.action_spec.to_env(idx)
        info: dict[str, Any] = {
            "action": np.asarray(idx).tolist(),
            "masked_out": self.codec.masked_out(choice, mask),
        }
        actions = self.codec.decode(choice, belief)
        if self.in_cluster_hpa is not None:
            info["hpa_targets"] = list(self.codec.targets(choice).values())
            features = self.codec.choice_features(choice)
        else:
            features = self.codec.action_encoder.encode(actions, belief.desired)
        new = DreamerBundleState(
            belief.after(actions, self.codec.services),
            deter,
            stoch,
            np.asarray(features, dtype=np.float32)[None],
            first=False,
            seen=belief,
        )
        return actions, new, info

    # ------------------------------------------------------------------ world model
    def carry(self, state: DreamerBundleState) -> Carry:
        """The stream's world-model carry (batch of one) as tensors."""
        return Carry(torch.as_tensor(state.deter), torch.as_tensor(state.stoch))

    @torch.no_grad()
    def forecast(
        self,
        state: DreamerBundleState,
        *,
        horizon: int,
        samples: int,
        quantiles: tuple[float, ...],
        seed: int,
    ) -> dict[str, Any]:
        """Quantiles of the next ``horizon`` steps from the stream's carry.

        The imagined future takes the actions decided on the last frame (the stream's
        ``prev_action`` features), then none.

        Draws are in raw units clipped to each metric's physical range (p99, rps and
        replicas at least 0, the error rate in [0, 1]); ``p_violation`` is the mean over the
        draws of the probability of at least one SLO-violating step within the horizon.

        Raises:
            ValueError: The stream has not seen a frame yet.
        """
        if state.first:
            raise ValueError("the stream has no frame yet: send frames (infer) first")
        wm = self.nets.wm
        planned = torch.zeros(1, horizon, self.action_spec.feature_size)
        planned[0, 0] = torch.as_tensor(state.prev_action[0])
        gen = torch.Generator().manual_seed(int(seed))
        n_svc = len(self.codec.services)
        sf = sample_futures(wm, self.carry(state), planned, samples, n_svc, gen)
        out: dict[str, Any] = {}
        for metric in METRICS:
            draws = sf.samples[metric][0]  # [N, H, S]
            q = np.quantile(draws, quantiles, axis=0)  # [Q, H, S]
            out[metric] = np.transpose(q, (1, 2, 0)).tolist()  # [H, S, Q]
        out["p_violation"] = float(sf.p_violation[0])
        return out

    def planner(self, *, horizon: int, samples: int, seed: int) -> WhatIfPlanner:
        """A :class:`~agents.dreamer.whatif.WhatIfPlanner` over this bundle's world model."""
        from envs.scenarios.schema import Scenario

        scenario = Scenario.model_validate(self.manifest["scenario"])
        return WhatIfPlanner(
            self.nets.wm,
            self.codec,
            scenario,
            actor=self.nets.actor,
            critic=self.nets.critic,
            horizon=horizon,
            samples=samples,
            discount=float(self.manifest["network"]["discount"]),
            allow_drain=self.codec.allow_drain,
            seed=seed,
        )

    def explain(
        self, state: DreamerBundleState, *, horizon: int, samples: int, seed: int
    ) -> dict[str, Any]:
        """The what-if planner's predicted outcome of each candidate action.

        The candidates are the alternatives at the stream's last frame (its belief before
        the decision), imagined from the posterior carry of that frame.

        Raises:
            ValueError: The stream has not seen a frame yet, or an ``hpa_tune`` bundle.
        """
        if state.first or state.seen is None:
            raise ValueError("the stream has no frame yet: send frames (infer) first")
        plan = self.planner(horizon=horizon, samples=samples, seed=seed).plan(
            self.carry(state), state.seen
        )
        out = plan.as_dict()
        out["explanation"] = plan.to_markdown()
        return out


def random_step_inputs(manifest: dict[str, Any], n: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs of ``rssm_step.onnx`` for ``n`` streams (parity checks).

    Observations ~ N(0, 1.5), ``deter`` uniform in [-1, 1], ``stoch`` random one-hots,
    previous-action features ~ N(0, 1), ``is_first`` 1 with probability 0.2, and masks with
    at least one valid choice per dimension (all valid for an unmasked bundle).
    """
    rng = np.random.default_rng(seed)
    wm = manifest["network"]["world_model"]
    act = manifest["action"]
    nvec = [int(k) for k in act["nvec"]]
    stoch = np.zeros((n, wm["stoch"], wm["classes"]), np.float32)
    picks = rng.integers(0, wm["classes"], size=(n, wm["stoch"]))
    np.put_along_axis(stoch, picks[..., None], 1.0, axis=-1)
    mask = rng.random((n, sum(nvec))) < 0.6
    start = 0
    for k in nvec:
        empty = ~mask[:, start : start + k].any(axis=1)
        mask[empty, start + rng.integers(0, k, size=int(empty.sum()))] = True
        start += k
    if not act["masked"]:
        mask[:] = True
    return {
        "obs": rng.normal(0.0, 1.5, size=(n, int(manifest["observation"]["size"]))).astype(
            np.float32
        ),
        "is_first": (rng.random(n) < 0.2).astype(np.float32),
        "deter": rng.uniform(-1.0, 1.0, size=(n, wm["deter"])).astype(np.float32),
        "stoch": stoch,
        "prev_action": rng.normal(0.0, 1.0, size=(n, int(act["feature_size"]))).astype(np.float32),
        "mask": mask,
    }


def step_mismatches(a: DreamerBundlePolicy, b: DreamerBundlePolicy, n: int, seed: int) -> int:
    """Streams (of ``n`` random ones) whose action differs between two backends' steps."""
    feed = random_step_inputs(a.manifest, n, seed)
    return int((a.run(feed)[0] != b.run(feed)[0]).any(axis=1).sum())
