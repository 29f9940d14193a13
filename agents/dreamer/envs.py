"""The envs of a Dreamer run, and the episodes they record for the replay.

* :func:`run_scenarios`: the run's scenario (``scenario`` with ``scenario_overrides``) or the
  entries of ``suite`` on ``topology``, loaded once so that a bad one fails at start;
* :func:`make_env`: one unwrapped :class:`~envs.gym.envs.ClusterEnv` of ``env.name``;
* :class:`Stream`: one env and its running episode. It records the rows of the
  ``wm_contract.md`` episode format (``obs``, ``action``, ``reward``, ``cont``, ``is_first``,
  ``violation``, and ``mask`` for masked envs: the valid actions at that row's frame),
  cuts episodes at the time limit, and keeps what an exact resume needs: the env
  generator's state at the start of the episode and the env actions taken since, so the
  (deterministic) simulator can be brought back to the same state by replaying them.

Episodes end by truncation only (``ClusterEnv`` never terminates): at the scenario's
horizon or after ``env.max_episode_steps`` decisions (default: the registered 240).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.dreamer.config import DreamerConfigError, DreamerTrainConfig
from envs.core.actions import Action
from envs.gym import MAX_EPISODE_STEPS
from envs.gym.envs import AutoscaleEnv, ClusterEnv, ClusterOpsEnv, HPATuneEnv, RemediateEnv
from envs.scenarios.loader import ScenarioError, flatten, load_scenario
from envs.scenarios.schema import Scenario
from envs.scenarios.suites import SuiteError, load_suite

ENV_CLASSES: dict[str, type[ClusterEnv]] = {
    "autoscale": AutoscaleEnv,
    "remediate": RemediateEnv,
    "ops": ClusterOpsEnv,
    "hpa_tune": HPATuneEnv,
}
"""``env.name`` -> env class."""

ENV_IDS: dict[str, str] = {
    "autoscale": "opsworld/Autoscale-v0",
    "remediate": "opsworld/Remediate-v0",
    "ops": "opsworld/ClusterOps-v0",
    "hpa_tune": "opsworld/HPATune-v0",
}
"""``env.name`` -> registered Gymnasium id (for the record)."""


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def run_scenarios(conf: DreamerTrainConfig) -> list[Scenario]:
    """The scenarios the run trains on (one, or a suite's entries on one topology).

    Raises:
        DreamerConfigError: Naming ``scenario`` / ``suite`` / ``topology`` and the problem.
    """
    overrides = flatten(_plain(conf.scenario_overrides))
    if conf.suite is None:
        try:
            return [load_scenario(conf.scenario, overrides)]
        except ScenarioError as err:
            raise DreamerConfigError(
                f"scenario={conf.scenario} (with scenario_overrides): {err}"
            ) from None
    assert conf.topology is not None  # checked by the config
    try:
        suite = load_suite(conf.suite).on_topology(conf.topology)
    except (SuiteError, OSError) as err:
        raise DreamerConfigError(f"suite={conf.suite}, topology={conf.topology}: {err}") from None
    out = []
    for entry in suite:
        try:
            out.append(load_scenario(entry.scenario, overrides))
        except ScenarioError as err:
            raise DreamerConfigError(
                f"suite={conf.suite} entry {entry.id!r} with scenario_overrides: {err}"
            ) from None
    return out


def make_env(conf: DreamerTrainConfig, scenarios: Sequence[Scenario]) -> ClusterEnv:
    """An (unreset) env of ``conf.env`` over ``scenarios``."""
    w = conf.env.reward_weights
    return ENV_CLASSES[conf.env.name](
        scenario=list(scenarios),
        fidelity=conf.env.fidelity,
        obs="box",
        reward_weights={"slo": w.slo, "cost": w.cost, "disruption": w.disruption},
    )


def episode_limit(conf: DreamerTrainConfig) -> int:
    """Decisions after which an episode is cut (``env.max_episode_steps`` or 240)."""
    return conf.env.max_episode_steps or MAX_EPISODE_STEPS


def shortest_episode(conf: DreamerTrainConfig, scenarios: Sequence[Scenario]) -> int:
    """Decisions in the shortest possible episode of the run."""
    horizon = min(round(s.horizon_s / s.decision_interval_s) for s in scenarios)
    return min(horizon, episode_limit(conf))


def seeds(seed: int, n: int, stream: int) -> list[int]:
    """``n`` independent 31-bit seeds of the run ``seed``.

    ``stream`` 0: training envs, 1: evaluation episodes, 2: the replay (the derivation of
    SB3 runs' env seeds).
    """
    root = np.random.SeedSequence([seed, stream])
    return [int(child.generate_state(1)[0] >> 1) for child in root.spawn(n)]


@dataclass
class EpisodeStats:
    """Sums over an episode (the ``env/...`` metrics are their per-episode values)."""

    reward: float = 0.0
    slo_violation: float = 0.0
    cost: float = 0.0
    disruptions: float = 0.0
    actions: float = 0.0
    length: int = 0

    def add(self, reward: float, info: Mapping[str, Any]) -> None:
        """Fold in one step."""
        parts = info["reward_components"]
        self.reward += reward
        self.slo_violation += parts["slo_violation"]
        self.cost += parts["cost"]
        self.disruptions += parts["disruption"]
        self.actions += len(info.get("actions", ()))
        self.length += 1

    def metrics(self) -> dict[str, float]:
        """``env/ep_*`` values (names as in SB3 runs, ``docs/training.md``)."""
        n = max(self.length, 1)
        return {
            "env/ep_reward": self.reward,
            "env/ep_length": float(self.length),
            "env/ep_slo_violation": self.slo_violation / n,
            "env/ep_cost": self.cost / n,
            "env/ep_disruptions": self.disruptions,
            "env/ep_actions_per_step": self.actions / n,
        }


@dataclass
class Stream:
    """One env and its running episode (see the module docstring).

    Args:
        env: The env (unwrapped, not reset).
        seed: Seeds the env's generator once; every episode draws from it.
        limit: Most decisions per episode.
    """

    env: ClusterEnv
    seed: int
    limit: int
    rows: dict[str, list[Any]] = field(default_factory=dict)
    stats: EpisodeStats = field(default_factory=EpisodeStats)
    start_rng: dict[str, Any] = field(default_factory=dict)
    actions: list[list[int]] = field(default_factory=list)
    episodes: int = 0
    obs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self) -> None:
        self.masked = not isinstance(self.env, AutoscaleEnv)
        self.env.reset(seed=self.seed)  # seeds the generator; episodes start in begin()
        self.begin()

    # ------------------------------------------------------------------ episode
    def begin(self) -> None:
        """Start an episode: remember the generator state, reset, record row 0."""
        self.start_rng = dict(self.env.np_random.bit_generator.state)
        obs, _ = self.env.reset()
        self.rows = {k: [] for k in ("obs", "action", "reward", "cont", "is_first", "violation")}
        if self.masked:
            self.rows["mask"] = []
        self.stats = EpisodeStats()
        self.actions = []
        self._row(obs, np.zeros(self.env.action_encoder.size, np.float32), 0.0, 1.0, 0.0)

    def _row(
        self, obs: np.ndarray, action: np.ndarray, reward: float, first: float, viol: float
    ) -> None:
        self.obs = obs
        r = self.rows
        r["obs"].append(obs)
        r["action"].append(np.asarray(action, np.float32))
        r["reward"].append(reward)
        r["cont"].append(1.0)
        r["is_first"].append(first)
        r["violation"].append(viol)
        if self.masked:
            r["mask"].append(self.env.action_masks().astype(np.float32))

    @property
    def is_first(self) -> bool:
        """The current frame is the episode's first."""
        return self.stats.length == 0

    def mask(self) -> np.ndarray:
        """Valid actions now (flat, True = valid; all True for Autoscale)."""
        return self.env.action_masks()

    def step(
        self, action: np.ndarray | None = None, sim_actions: Sequence[Action] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray] | None, EpisodeStats | None]:
        """Take an env action (indices per dimension) or simulator actions (a behaviour's).

        Returns:
            ``(action features of the step, finished episode or None, its stats or None)``;
            after a finished episode the next one has begun.
        """
        env = self.env
        if action is not None:
            idx = np.asarray(action, dtype=np.int64).reshape(-1)
            self.actions.append([int(a) for a in idx])
            env_action: Any = int(idx[0]) if env.action_space.shape == () else idx
            obs, reward, _, truncated, info = env.step(env_action)
        else:
            obs, reward, _, truncated, info = env.step_actions(list(sim_actions or []))
        self.stats.add(float(reward), info)
        viol = float(info["reward_components"]["slo_violation"] > 0)
        features = np.asarray(info["action_features"], np.float32)
        self._row(obs, features, float(reward), 0.0, viol)
        if not (truncated or self.stats.length >= self.limit):
            return features, None, None
        episode = {k: np.asarray(v, dtype=np.float32) for k, v in self.rows.items()}
        stats = self.stats
        self.episodes += 1
        self.begin()
        return features, episode, stats

    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, Any]:
        """What :meth:`restore` needs (primitives only)."""
        return {
            "start_rng": self.start_rng,
            "actions": [list(a) for a in self.actions],
            "episodes": self.episodes,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Bring the env back to the saved point.

        Resets from the saved generator state and replays the episode's env actions (the
        simulator is deterministic).
        """
        self.env.np_random.bit_generator.state = dict(state["start_rng"])
        self.begin()
        for a in state["actions"]:
            self.step(np.asarray(a, dtype=np.int64))
        self.episodes = int(state["episodes"])
