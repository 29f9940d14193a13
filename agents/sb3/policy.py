"""``SB3Policy``: a trained SB3 run dir behind the :class:`envs.core.policy.Policy` protocol.

``SB3Policy(run_dir)`` reads the run's ``config.yaml``, loads ``model.zip`` with SB3 /
sb3-contrib and the ``VecNormalize`` statistics of ``vecnormalize.pkl`` (frozen:
``training=False``, ``norm_reward=False``), and then, for each Telemetry frame,

1. updates the stream's :class:`~envs.gym.codec.ControlBelief` with the frame;
2. encodes the frame with the env's :class:`envs.gym.encoder.ObsEncoder` (the same code the
   env used in training) and normalises it with the saved statistics;
3. asks the model for the action (deterministic by default), passing the belief's action
   masks to MaskablePPO;
4. decodes it with the env's :class:`~envs.gym.codec.ActionCodec` under the belief (the
   code path the env itself decodes through), and moves the belief by the actions taken.

**No simulator, no env.** The policy builds the encoder, the spaces and the codec from the
run's scenario and never imports :mod:`envs.sim` (a test loads it with that package
blocked). The belief is what the codec's docstring describes; the only difference from the
env is the drains: telemetry does not say *which* nodes are ready, so by default every
``drain node`` choice is masked out (``allow_drain=False``). With ``allow_drain=True`` the
nodes at start that the policy has not drained itself count as ready, which is wrong once a
node failed or the cluster autoscaler removed one; the simulator then refuses the drain
(``InvalidActionError``).

As in the env, a choice that the mask rules out becomes a no-op (``info["masked_out"]``).

**HPATune runs** (``env=hpa_tune``): the model picks each service's HPA CPU target and a
remediation; the codec turns them into ``SetHPATarget`` (for the targets that change) and
the remediation, as :meth:`~envs.gym.envs.HPATuneEnv.decide` does. The HPA itself runs in
the control plane (:attr:`SB3Policy.in_cluster_hpa`, the tuned HPA's settings, which
:func:`agents.rollout.rollout` enables), or is the live cluster's own: the policy holds no
HPA state, only its control belief.

**Residual runs** (``env=residual``, :mod:`agents.residual`): the policy runs
``tuned_runbook`` itself (a :class:`~agents.residual.ResidualController`, telemetry only)
and the model adjusts its decision; its state is the controller's
:class:`~agents.residual.ResidualState`. :meth:`SB3Policy.for_scenario` rebuilds the rules
for an evaluation entry's scenario (its bounds and SLOs), as ``tuned_runbook`` is built per
entry, so that the no-op is exactly ``tuned_runbook`` there (``opsworld evaluate`` calls it).

**Trust.** SB3 ``.zip`` files and ``vecnormalize.pkl`` contain pickles, and loading them can
run arbitrary code: only load run dirs you produced or otherwise trust.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any, cast

import numpy as np
from omegaconf import OmegaConf
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import VecNormalize

from agents.residual import ResidualController, ResidualEnv
from agents.sb3.config import EnvName, TrainConfig, config_from_mapping
from agents.sb3.envs import brief_space, env_kwargs
from agents.sb3.train import ALGOS
from envs.core.actions import Action
from envs.core.telemetry import Telemetry
from envs.gym.codec import ActionCodec, ControlBelief, control_spec
from envs.gym.encoder import ObsEncoder, observation_space
from envs.gym.envs import AutoscaleEnv, ClusterEnv, ClusterOpsEnv, HPATuneEnv, RemediateEnv
from envs.kube.config import HPAConfig
from envs.kube.tuned import load_settings
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario

ENV_CLASSES: dict[EnvName, type[ClusterEnv]] = {
    EnvName.autoscale: AutoscaleEnv,
    EnvName.remediate: RemediateEnv,
    EnvName.ops: ClusterOpsEnv,
    EnvName.hpa_tune: HPATuneEnv,
    EnvName.residual: ResidualEnv,
}
"""``env.name`` -> env class (its ``layout`` names the codec layout; never instantiated)."""


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The validated :class:`TrainConfig` saved in ``<run_dir>/config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {run_dir} an 'opsworld train' run dir?")
    return config_from_mapping(OmegaConf.load(path))  # type: ignore[arg-type]


def run_scenario(conf: TrainConfig) -> Scenario:
    """The (first) scenario the run trained on: its topology, bounds and nodes."""
    kwargs = env_kwargs(conf)  # what the env of the run was built from
    scenario = kwargs["scenario"]
    if isinstance(scenario, list):
        return cast(Scenario, scenario[0])
    return load_scenario(scenario, kwargs["scenario_overrides"])


class SB3Policy:
    """A trained SB3 agent as a :class:`envs.core.policy.Policy`; see the module docstring.

    Only load trusted run dirs: the model and statistics files are pickles.

    Args:
        run_dir: An ``opsworld train`` run dir (``config.yaml``, the model, the statistics).
        model: Model file, relative to ``run_dir`` (``best/best_model.zip`` for the best
            evaluation).
        vecnormalize: Statistics file, relative to ``run_dir`` (``best/vecnormalize.pkl``
            goes with the best model).
        deterministic: Take the mode of the action distribution (else sample).
        allow_drain: Let the policy drain nodes, assuming the nodes at start that it has not
            drained are ready (see the module docstring); off by default.
        device: Torch device for the model.

    Attributes:
        name: ``sb3-<algo>``.
        config: The run's config.
        scenario: The run's (first) training scenario.
        encoder: The observation encoder of the run's env.
        codec: The action codec of the run's env.
        in_cluster_hpa: The HPA an ``hpa_tune`` run tunes (None otherwise); see the module
            docstring.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        model: str = "model.zip",
        vecnormalize: str = "vecnormalize.pkl",
        deterministic: bool = True,
        allow_drain: bool = False,
        device: str = "cpu",
    ) -> None:
        run = Path(run_dir)
        self.config = load_run_config(run)
        self.name = f"sb3-{self.config.agent.algo.value}"
        self.deterministic = deterministic
        self.allow_drain = allow_drain
        self.scenario = run_scenario(self.config)
        self.obs_kind = self.config.env.obs.value
        self.encoder = ObsEncoder(tuple(self.scenario.service_names))
        layout = ENV_CLASSES[self.config.env.name].layout
        self.codec = ActionCodec(layout, control_spec(self.scenario), allow_drain=allow_drain)
        self.in_cluster_hpa: HPAConfig | None = (
            load_settings().hpa_config() if layout == "hpa_tune" else None
        )
        self.residual: ResidualController | None = None
        obs_space = observation_space(self.encoder, self.obs_kind)
        act_space = self.codec.action_space()
        if self.config.env.name == EnvName.residual:
            self.residual = ResidualController(self.scenario)
            obs_space = self.residual.observation_space(self.encoder)
            act_space = self.residual.action_space()
        try:
            with open(run / vecnormalize, "rb") as fh:  # trusted run dirs only (a pickle)
                stats = pickle.load(fh)
        except Exception as err:  # a damaged pickle raises anything
            raise ValueError(
                f"{run / vecnormalize} is damaged or truncated ({type(err).__name__}: {err})"
            ) from None
        if not isinstance(stats, VecNormalize):
            raise TypeError(f"{run / vecnormalize}: not VecNormalize statistics")
        if stats.observation_space != obs_space:
            raise ValueError(
                f"{run / vecnormalize}: statistics for {brief_space(stats.observation_space)}, "
                f"but the env of config.yaml observes {brief_space(obs_space)}"
            )
        stats.training = False
        stats.norm_reward = False
        self.vec_normalize = stats
        try:
            self.model = ALGOS[self.config.agent.algo].load(run / model, device=device)
        except Exception as err:  # a damaged zip raises anything
            raise ValueError(
                f"{run / model} is damaged or truncated ({type(err).__name__}: {err})"
            ) from None
        if self.model.observation_space != obs_space or self.model.action_space != act_space:
            raise ValueError(
                f"{run / model}: its spaces ({brief_space(self.model.observation_space)}, "
                f"{brief_space(self.model.action_space)}) differ from the env of config.yaml "
                f"({brief_space(obs_space)}, {brief_space(act_space)})"
            )
        self._masked = isinstance(self.model, MaskablePPO)

    def for_scenario(self, scenario: Scenario) -> SB3Policy:
        """This policy for runs on ``scenario``: a residual run's rules are rebuilt for it.

        Other runs return ``self`` (they hold no per-scenario rules). The model and the
        statistics are shared, not copied.
        """
        if self.residual is None:
            return self
        if list(scenario.service_names) != list(self.scenario.service_names):
            raise ValueError(
                f"scenario {scenario.name!r} has services {scenario.service_names}, the run "
                f"was trained on {self.scenario.service_names}: one policy fits one topology"
            )
        other = copy.copy(self)
        other.residual = ResidualController(scenario)
        return other

    def reset(self, n: int = 1) -> Any:
        """Fresh state (one for ``n == 1``, else a list of ``n``).

        A :class:`~envs.gym.codec.ControlBelief`, or for a residual run a
        :class:`~agents.residual.ResidualState`.
        """

        def fresh() -> Any:
            if self.residual is not None:
                return self.residual.reset()
            return ControlBelief.initial(self.codec.spec)

        return fresh() if n == 1 else [fresh() for _ in range(n)]

    def observe(self, frame: Telemetry) -> Any:
        """The normalised model input for ``frame`` (batch of one)."""
        if self.obs_kind == "box":
            obs: Any = self.encoder.encode(frame)[None]
        else:
            encoded = self.encoder.encode_dict(frame)
            obs = {k: v[None] for k, v in encoded.items()}
        return self.vec_normalize.normalize_obs(obs)

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """Decide on one frame.

        Args:
            obs: The latest telemetry frame of the stream.
            state: This stream's :class:`~envs.gym.codec.ControlBelief`, from :meth:`reset`
                or the last call.

        Returns:
            ``(actions, new_state, info)``; ``info`` has ``action`` (the raw model action),
            ``masked_out`` (the remediation chosen was invalid, so nothing was done) and,
            for masked agents, ``n_valid`` (valid choices).
        """
        if self.residual is not None:
            return self._act_residual(obs, state)
        belief = cast(ControlBelief, state).observe(obs)
        masks = self.codec.masks(belief)
        kwargs: dict[str, Any] = {"deterministic": self.deterministic}
        if self._masked:
            kwargs["action_masks"] = masks[None]
        raw, _ = self.model.predict(self.observe(obs), **kwargs)
        action = np.asarray(raw)[0]
        info: dict[str, Any] = {"action": action.tolist()}
        actions = self.codec.decode(action, belief)
        new_state = belief.after(actions, self.codec.services)
        if self.in_cluster_hpa is not None:
            info["hpa_targets"] = list(self.codec.targets(action).values())
        info["masked_out"] = self.codec.masked_out(action, masks)
        if self._masked:
            info["n_valid"] = int(masks.sum())
        return actions, new_state, info

    def _act_residual(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """A residual run's decision: the rules, then the model's adjustment."""
        ctrl = self.residual
        assert ctrl is not None
        st = ctrl.observe(obs, state)
        masks = ctrl.masks(st)
        x = np.concatenate([self.encoder.encode(obs), ctrl.features(st)])[None]
        kwargs: dict[str, Any] = {"deterministic": self.deterministic}
        if self._masked:
            kwargs["action_masks"] = masks[None]
        raw, _ = self.model.predict(self.vec_normalize.normalize_obs(x), **kwargs)
        action = np.asarray(raw)[0]
        actions, st, info = ctrl.decide(st, action)
        info["action"] = action.tolist()
        if self._masked:
            info["n_valid"] = int(masks.sum())
        return actions, st, info
