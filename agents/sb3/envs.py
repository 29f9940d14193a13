"""Building the opsworld Gymnasium envs for SB3: ids, kwargs, seeds and vectorisation.

* :func:`env_kwargs`: the constructor kwargs of ``envs.gym`` envs from a :class:`TrainConfig`
  (the same for training, evaluation and :class:`agents.sb3.policy.SB3Policy`): one
  ``scenario``, or with ``suite`` and ``topology`` the list of that suite's entries on that
  topology (:func:`suite_scenarios`; the env draws one per episode);
* :func:`env_seeds`: independent per-env seeds drawn from the run seed with
  ``numpy.random.SeedSequence`` (run seed 1's first env never equals run seed 0's second);
* :func:`make_vec_env`: SB3 ``DummyVecEnv`` / ``SubprocVecEnv`` of ``Monitor``-wrapped envs,
  each seeded once at creation (its own generator then drives every later episode), wrapped
  in ``VecNormalize`` (observations; rewards only if asked) over ``VecCheckNan`` (a NaN
  or infinite observation, reward or action raises at once). Evaluation envs are always
  ``DummyVecEnv``.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecCheckNan,
    VecEnv,
    VecNormalize,
)

import agents.residual  # noqa: F401  (registers opsworld/Residual-v0)
import envs.gym  # noqa: F401  (registers the opsworld ids)
from agents.run_config import ENV_IDS, EnvName
from agents.sb3.config import SB3ConfigError, TrainConfig, VecEnvKind
from envs.scenarios.loader import ScenarioError, flatten, load_scenario
from envs.scenarios.schema import Scenario
from envs.scenarios.suites import SuiteError, load_suite

EVAL_STREAM = 1
"""SeedSequence spawn key of the evaluation envs (training envs use stream 0)."""

FORKSERVER_PRELOAD: tuple[str, ...] = (
    "stable_baselines3.common.vec_env.subproc_vec_env",
    "agents.sb3.envs",
    "envs.sim.simulator",  # the envs import it at their first reset
)
"""Modules the forkserver imports once for all ``SubprocVecEnv`` workers."""


def _plain(value: Any) -> Any:
    """OmegaConf containers and tuples to plain dicts/lists (picklable, YAML-free)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def brief_space(space: spaces.Space[Any]) -> str:
    """A short description of a space for messages (a Box's bounds would fill the screen)."""
    if isinstance(space, spaces.Box):
        return f"Box{space.shape}"
    if isinstance(space, spaces.Dict):
        return f"Dict({', '.join(space.spaces)})"
    return str(space)


def suite_scenarios(conf: TrainConfig) -> list[Scenario]:
    """The entries of ``conf.suite`` on ``conf.topology``, with ``scenario_overrides`` applied.

    The filter is :meth:`envs.scenarios.suites.Suite.on_topology`, the one that
    ``opsworld evaluate topology=...`` uses.

    Raises:
        SB3ConfigError: ``suite`` or ``topology`` unset, an unknown or broken suite, no entry
            on ``topology`` (the message lists the suite's topologies), or overrides that
            break an entry; the message names the field.
    """
    if conf.suite is None or conf.topology is None:
        raise SB3ConfigError(
            f"suite={conf.suite}, topology={conf.topology}: training on a suite needs both"
        )
    try:
        suite = load_suite(conf.suite).on_topology(conf.topology)
    except (SuiteError, OSError) as err:
        raise SB3ConfigError(f"suite={conf.suite}, topology={conf.topology}: {err}") from None
    overrides = flatten(_plain(conf.scenario_overrides))
    scenarios = []
    for entry in suite:
        try:
            scenarios.append(load_scenario(entry.scenario, overrides))
        except ScenarioError as err:
            raise SB3ConfigError(
                f"suite={conf.suite} entry {entry.id!r} with scenario_overrides: {err}"
            ) from None
    return scenarios


def env_kwargs(conf: TrainConfig) -> dict[str, Any]:
    """Constructor kwargs of the env that ``conf`` trains on.

    ``scenario`` is ``conf.scenario`` with ``scenario_overrides``, or with ``conf.suite`` the
    list of :func:`suite_scenarios` (overrides already applied). ``env=residual`` also gets
    its initial ``multipliers`` (``env.residual``).
    """
    w = conf.env.reward_weights
    overrides = flatten(_plain(conf.scenario_overrides))
    scenario: str | list[Scenario] = conf.scenario
    if conf.suite is not None:
        scenario, overrides = suite_scenarios(conf), {}
    kwargs: dict[str, Any] = {
        "scenario": scenario,
        "fidelity": conf.env.fidelity.value,
        "obs": conf.env.obs.value,
        "reward_weights": {"slo": w.slo, "cost": w.cost, "disruption": w.disruption},
        "scenario_overrides": overrides,
    }
    if conf.env.name == EnvName.residual:  # the budgets' multipliers start here
        kwargs["multipliers"] = (conf.env.residual.cost, conf.env.residual.disruption)
    return kwargs


def scenario_names(conf: TrainConfig) -> list[str]:
    """Names of the scenarios ``conf`` trains on (suite entry ids with ``suite``)."""
    if conf.suite is not None:
        return [s.name for s in suite_scenarios(conf)]
    return [load_scenario(conf.scenario, flatten(_plain(conf.scenario_overrides))).name]


def check_scenario(conf: TrainConfig) -> None:
    """Load the run's scenario(s) once, so that a bad one fails before any env process starts.

    Raises:
        SB3ConfigError: Naming ``scenario`` / ``suite`` / ``topology`` /
            ``scenario_overrides`` and the problem.
    """
    if conf.suite is not None:
        check_batched(conf, suite_scenarios(conf))
        return
    try:
        scenarios = [load_scenario(conf.scenario, flatten(_plain(conf.scenario_overrides)))]
    except ScenarioError as err:
        raise SB3ConfigError(f"scenario={conf.scenario} (with scenario_overrides): {err}") from None
    check_batched(conf, scenarios)


def check_batched(conf: TrainConfig, scenarios: Sequence[Scenario]) -> None:
    """With ``vec_env=batched``: raise unless the batched core simulates ``scenarios``.

    Raises:
        SB3ConfigError: Naming the unsupported part (a fault kind, an HPA, ...).
    """
    if conf.vec_env != VecEnvKind.batched:
        return
    from envs.sim.batched import UnsupportedScenarioError, check_supported

    try:
        check_supported(list(scenarios))
    except UnsupportedScenarioError as err:
        raise SB3ConfigError(f"vec_env=batched: {err}") from None


def _make(env_id: str, kwargs: dict[str, Any], max_steps: int | None) -> gym.Env[Any, Any]:
    extra: dict[str, Any] = {"max_episode_steps": max_steps} if max_steps is not None else {}
    env: gym.Env[Any, Any] = gym.make(env_id, **kwargs, **extra)
    return env


def make_env(conf: TrainConfig) -> gym.Env[Any, Any]:
    """One env of ``conf`` as SB3 sees it (TimeLimit, Dict keys renamed), not reset."""
    return _make(ENV_IDS[conf.env.name], env_kwargs(conf), conf.env.max_episode_steps)


def env_seeds(seed: int, n: int, stream: int = 0) -> list[int]:
    """``n`` independent 31-bit env seeds derived from the run ``seed``.

    Args:
        seed: The run seed.
        n: How many envs.
        stream: 0 for training envs, :data:`EVAL_STREAM` for evaluation envs.
    """
    root = np.random.SeedSequence([seed, stream])
    return [int(child.generate_state(1)[0] >> 1) for child in root.spawn(n)]


def _build(env_id: str, kwargs: dict[str, Any], seed: int, max_steps: int | None) -> gym.Env:
    """Factory run inside the (sub)process: make, wrap in Monitor, seed once.

    Unpickling it in a worker imports this module, which registers the opsworld ids.
    """
    env = Monitor(_make(env_id, kwargs, max_steps))
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def env_factories(conf: TrainConfig, seeds: Sequence[int]) -> list[Callable[[], gym.Env]]:
    """Picklable env constructors, one per seed."""
    kwargs = env_kwargs(conf)
    env_id = ENV_IDS[conf.env.name]
    return [partial(_build, env_id, kwargs, int(s), conf.env.max_episode_steps) for s in seeds]


def make_vec_env(conf: TrainConfig, seeds: Sequence[int], *, training: bool) -> VecNormalize:
    """Vectorised, normalised envs of ``conf``, one per seed.

    Args:
        conf: The run config.
        seeds: One seed per env (see :func:`env_seeds`).
        training: True for the training envs (statistics update, rewards normalised if
            ``env.normalize_reward``); False for evaluation (frozen statistics, raw rewards).

    Returns:
        ``VecNormalize`` over ``DummyVecEnv`` or ``SubprocVecEnv`` (see ``vec_env``).
    """
    kind = conf.vec_env
    if kind == VecEnvKind.batched and training:
        return wrap_normalize(
            conf, VecCheckNan(batched_vec_env(conf, seeds), raise_exception=True), training=True
        )
    fns = env_factories(conf, seeds)
    subproc = kind == VecEnvKind.subproc or (kind == VecEnvKind.auto and len(fns) > 1)
    venv: VecEnv = subproc_vec_env(fns) if subproc and training else DummyVecEnv(fns)
    return wrap_normalize(conf, VecCheckNan(venv, raise_exception=True), training=training)


def batched_vec_env(conf: TrainConfig, seeds: Sequence[int]) -> VecEnv:
    """The training envs as one batched vector env, for SB3.

    A :class:`envs.gym.batched.BatchedAutoscaleEnv` of ``len(seeds)`` sub-envs (seeded with
    ``seeds[0]``; episodes truncated as the registered scalar env's ``TimeLimit`` does)
    through :class:`agents.sb3.batched.GymVectorToSB3` (which keeps episode statistics).

    Raises:
        SB3ConfigError: The scenario needs something the batched core does not simulate.
    """
    from gymnasium.vector import AutoresetMode

    from agents.sb3.batched import GymVectorToSB3
    from envs.gym import MAX_EPISODE_STEPS
    from envs.gym.batched import BatchedAutoscaleEnv
    from envs.sim.batched import UnsupportedScenarioError

    kwargs = env_kwargs(conf)
    try:
        venv = BatchedAutoscaleEnv(
            len(seeds),
            kwargs["scenario"],
            reward_weights=kwargs["reward_weights"],
            scenario_overrides=kwargs["scenario_overrides"],
            max_episode_steps=conf.env.max_episode_steps or MAX_EPISODE_STEPS,
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
    except UnsupportedScenarioError as err:
        raise SB3ConfigError(f"vec_env=batched: {err}") from None
    sb3 = GymVectorToSB3(venv)
    sb3.seed(int(seeds[0]))
    return sb3


def subproc_vec_env(fns: Sequence[Callable[[], gym.Env]]) -> SubprocVecEnv:
    """``SubprocVecEnv`` on SB3's default start method, with a warm forkserver.

    With ``forkserver`` (Linux), the server process imports :data:`FORKSERVER_PRELOAD`
    once, so each worker forks with SB3, torch and the simulator already imported (about
    0.1 s for four workers instead of seconds each). This sets the process-wide forkserver
    preload list, which only takes effect before the server first starts.
    """
    quiet: list[Callable[[], gym.Env]] = [partial(ignore_sigint_then, fn) for fn in fns]
    if "forkserver" in mp.get_all_start_methods():
        mp.set_forkserver_preload(list(FORKSERVER_PRELOAD))
        return SubprocVecEnv(quiet, start_method="forkserver")
    return SubprocVecEnv(quiet, start_method="spawn")


def ignore_sigint_then(fn: Callable[[], gym.Env]) -> gym.Env:
    """In an env worker: ignore Ctrl-C (the main process stops and saves), then build the env.

    Ctrl-C on a terminal reaches every process of the group; a worker that died of it would
    break the main process's save (``opsworld train`` saves on Ctrl-C, docs/training.md).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return fn()


def wrap_normalize(conf: TrainConfig, venv: VecEnv, *, training: bool) -> VecNormalize:
    """``VecNormalize`` as the run config asks (obs only unless ``env.normalize_reward``)."""
    return VecNormalize(
        venv,
        training=training,
        norm_obs=conf.env.normalize_obs,
        norm_reward=conf.env.normalize_reward and training,
        clip_obs=conf.env.clip_obs,
        gamma=conf.agent.gamma,
    )
