"""Episodes for the world model: behaviour policies run through :class:`ClusterOpsEnv`.

:func:`run_episode` runs one suite entry under one behaviour and records it in the episode
format of ``wm_contract.md`` (numpy arrays with a leading time axis of ``T + 1`` rows, one
per frame):

| key | shape | meaning |
|---|---|---|
| ``obs`` | ``(T+1, O)`` float32 | ``env.encoder.encode(frame)`` (flat ObsEncoder layout) |
| ``action`` | ``(T+1, A)`` float32 | ActionEncoder features of the step that led to the row |
|  |  | (zeros on row 0) |
| ``reward`` | ``(T+1,)`` float32 | env reward of that step (0 on row 0) |
| ``cont`` | ``(T+1,)`` float32 | ``1 - terminated`` (always 1: the envs never terminate) |
| ``is_first`` | ``(T+1,)`` float32 | 1 on row 0 |
| ``violation`` | ``(T+1,)`` float32 | 1 when that step's ``slo_violation`` component > 0 |

Behaviours (:data:`BEHAVIOURS`) cover the action space between them: ``static`` (never
acts), ``hpa`` and ``tuned_hpa`` (scaling), ``runbook`` (scaling and remediations) and
``explore``: the HPA with seeded random perturbations (:class:`Explorer`: random replica
deltas and, now and then, a random valid remediation from the env's action mask: restart,
rollback, shedding or a node drain), so the model also sees actions no baseline takes.

:func:`collect` runs every (entry, behaviour, replicate) of a suite through
:func:`agents.parallel.parallel_map` with a progress bar, and returns a :class:`Collection`
(episodes plus :class:`EpisodeMeta`), which saves to and loads from one ``.npz`` file.
Every run is determined by the entry's ``run_seed(replicate)`` and the behaviour, so the
result does not depend on the number of workers.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.parallel import parallel_map
from envs.core.actions import Action, Scale
from envs.core.policy import Policy
from envs.gym.codec import SCALE_DELTAS, SHED_LEVELS
from envs.gym.envs import ClusterOpsEnv
from envs.scenarios.schema import Scenario
from envs.scenarios.suites import Suite, SuiteEntry

BEHAVIOURS: tuple[str, ...] = ("static", "hpa", "tuned_hpa", "runbook", "explore")
"""Episode-collection behaviours: registry policies (:data:`agents.registry.POLICIES`) and
``explore`` (the ``hpa`` policy under an :class:`Explorer`)."""
"""Behaviour policies :func:`run_episode` knows."""
EPISODE_KEYS: tuple[str, ...] = ("obs", "action", "reward", "cont", "is_first", "violation")
"""The keys of an episode dict (``wm_contract.md``)."""


class CollectError(RuntimeError):
    """An episode could not be collected; the message names the entry, behaviour and seed."""


@dataclass(frozen=True)
class ExploreConfig:
    """Knobs of the ``explore`` behaviour (the HPA plus :class:`Explorer`).

    Attributes:
        scale_prob: Per step and service, the chance of a random replica delta from
            ``SCALE_DELTAS`` (it replaces the HPA's decision for that service).
        remediation_prob: Per step, the chance of one random valid remediation (restart,
            rollback, scale up, a shed level or a node drain, uniformly over the valid ones).
        unshed_prob: Per step while shedding is in force, the chance of stopping it
            (``ShedLoad(0)``), so shedding lasts ``1 / unshed_prob`` steps on average.
        max_drains: Node drains allowed per episode (later draws skip the drain choices).
    """

    scale_prob: float = 0.08
    remediation_prob: float = 0.03
    unshed_prob: float = 0.1
    max_drains: int = 1

    def __post_init__(self) -> None:
        if self.max_drains < 0:
            raise ValueError(f"ExploreConfig.max_drains={self.max_drains}: must be >= 0")
        for name in ("scale_prob", "remediation_prob", "unshed_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"ExploreConfig.{name}={v}: must be a probability in [0, 1]")


class Explorer:
    """Seeded random perturbations of another policy's actions, valid by the env's masks.

    Args:
        config: Probabilities of a random scale and of a random remediation.
        seed: Seed of the generator (one explorer per episode).
    """

    def __init__(self, config: ExploreConfig, seed: int) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.drains = 0

    def perturb(self, env: ClusterOpsEnv, actions: Sequence[Action]) -> list[Action]:
        """``actions`` with random scalings and at most one random remediation mixed in.

        A random Scale of a service replaces the policy's Scale of that service; the
        remediation is drawn uniformly from the valid (masked-in) non-noop choices, without
        drains once ``max_drains`` is spent; shedding in force stops with ``unshed_prob``.
        """
        cfg = self.config
        n_svc = len(env.services)
        deltas = np.full(n_svc, SCALE_DELTAS.index(0))
        hit = self.rng.random(n_svc) < cfg.scale_prob
        deltas[hit] = self.rng.integers(len(SCALE_DELTAS), size=int(hit.sum()))
        remediation = 0
        n_rem = env.n_remediations
        first_drain = n_rem - env.n_nodes
        first_shed = first_drain - len(SHED_LEVELS)
        if self.rng.random() < cfg.remediation_prob:
            mask = env.action_masks()[len(SCALE_DELTAS) * n_svc :].copy()
            if self.drains >= cfg.max_drains:
                mask[first_drain:] = False
            valid = np.flatnonzero(mask[1:]) + 1
            if valid.size:
                remediation = int(self.rng.choice(valid))
        shedding = env.frame.cluster_value("shed_fraction") > 0
        if remediation == 0 and shedding and self.rng.random() < cfg.unshed_prob:
            remediation = first_shed + SHED_LEVELS.index(0.0)
        self.drains += int(remediation >= first_drain)
        extra = env.decode(np.concatenate([deltas, [remediation]]))
        touched = {a.service for a in extra if isinstance(a, Scale)}
        kept = [a for a in actions if not (isinstance(a, Scale) and a.service in touched)]
        return kept + extra


def behaviour_policy(behaviour: str, scenario: Scenario) -> Policy:
    """The Policy behind ``behaviour`` (``explore`` runs the HPA under an :class:`Explorer`).

    Every behaviour but ``explore`` is a policy of the one registry
    (:data:`agents.registry.POLICIES`) with its knobs from ``configs/policy/<name>.yaml``.

    Raises:
        ValueError: For an unknown behaviour (the message lists :data:`BEHAVIOURS`).
    """
    from agents.registry import make_policy

    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour {behaviour!r} is not one of {list(BEHAVIOURS)}")
    return make_policy("hpa" if behaviour == "explore" else behaviour, scenario)


def explore_seed(seed: int, behaviour: str) -> int:
    """Seed of the explorer of a run: the run seed mixed with the behaviour's name."""
    return (seed * 1_000_003 + zlib.crc32(behaviour.encode())) % (2**63)


# fault fields scaled by perturb_scenario: name -> (kind of transform, lower, upper)
_SEVERITY: dict[str, tuple[str, float, float]] = {
    "leak_mb_per_s": ("mult", 0.05, 50.0),
    "slowdown": ("excess", 1.05, 20.0),
    "latency_factor": ("excess", 1.0, 20.0),
    "error_rate": ("mult", 0.01, 0.9),
    "loss": ("mult", 0.01, 0.9),
    "delay_s": ("mult", 0.0, 5.0),
    "factor": ("factor", 0.0, 0.0),
    "trigger_s": ("mult", 5.0, 600.0),
}


def perturb_scenario(scenario: Scenario, seed: int, strength: float = 1.0) -> Scenario:
    """A seeded variant of ``scenario`` with other traffic and fault parameters.

    Widens the training data beyond the suite's exact incidents (the holdout suite has
    other parameters, on purpose): the traffic level (``base_rps`` or a replay's ``scale``)
    is multiplied by ``exp(U(-0.5, 0.5) * strength)`` and the noise ``cv`` drawn from
    ``[0.03, 0.12]``; each fault starts up to ``120 * strength`` s earlier or later (never
    before 60 s) and its severity fields (leak rate, slowdown, latency factor, error rate,
    loss, delay, flash-crowd or misconfiguration factor, retry trigger) are scaled by
    ``exp(U(-0.7, 0.7) * strength)`` (factors above 1 on their excess over 1), within
    bounds.
    """
    rng = np.random.default_rng(seed)
    d = scenario.model_dump()
    traffic = d["traffic"]
    level = float(np.exp(rng.uniform(-0.5, 0.5) * strength))
    if traffic.get("replay") is not None:
        traffic["replay"]["scale"] *= level
    else:
        traffic["base_rps"] *= level
    traffic["noise"] = {
        "cv": float(rng.uniform(0.03, 0.12)),
        "tau_s": (traffic.get("noise") or {}).get("tau_s", 60.0),
    }
    horizon = float(d["horizon_s"])
    for fault in d["faults"]:
        shift = rng.uniform(-120.0, 120.0) * strength
        fault["at_s"] = float(np.clip(fault["at_s"] + shift, 60.0, max(60.0, horizon - 300.0)))
        for name, (how, lo, hi) in _SEVERITY.items():
            v = fault.get(name)
            if v is None or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            k = float(np.exp(rng.uniform(-0.7, 0.7) * strength))
            if how == "mult":
                fault[name] = float(np.clip(v * k, lo, hi))
            elif how == "excess":
                fault[name] = float(np.clip(1.0 + (v - 1.0) * k, lo, hi))
            elif v > 1.0:  # flash crowd: factor > 1
                fault[name] = float(np.clip(1.0 + (v - 1.0) * k, 1.1, 20.0))
            else:  # misconfiguration: factor in (0, 1)
                fault[name] = float(np.clip(v * k, 0.05, 0.95))
    return Scenario.model_validate(d)


def run_episode(
    scenario: Scenario,
    behaviour: str,
    seed: int,
    fidelity: str = "fluid",
    explore: ExploreConfig | None = None,
) -> dict[str, np.ndarray]:
    """Run ``scenario`` for its horizon under ``behaviour`` and record the episode.

    Args:
        scenario: The scenario (one suite entry's).
        behaviour: One of :data:`BEHAVIOURS`.
        seed: ``env.reset(seed=...)``; the explorer's generator derives from it too.
        fidelity: Simulator fidelity.
        explore: Knobs of ``explore`` (default :class:`ExploreConfig`).

    Returns:
        The episode dict (keys :data:`EPISODE_KEYS`, ``T + 1`` rows).
    """
    env = ClusterOpsEnv(scenario=scenario, fidelity=fidelity)
    policy = behaviour_policy(behaviour, scenario)
    explorer = (
        Explorer(explore or ExploreConfig(), explore_seed(seed, behaviour))
        if behaviour == "explore"
        else None
    )
    obs, _ = env.reset(seed=seed)
    a_size = env.action_encoder.size
    rows: dict[str, list[Any]] = {k: [] for k in EPISODE_KEYS}

    def add(o: np.ndarray, a: np.ndarray, r: float, first: float, viol: float) -> None:
        rows["obs"].append(o)
        rows["action"].append(a)
        rows["reward"].append(r)
        rows["cont"].append(1.0)
        rows["is_first"].append(first)
        rows["violation"].append(viol)

    add(obs, np.zeros(a_size, np.float32), 0.0, 1.0, 0.0)
    state = policy.reset(1)
    truncated = False
    while not truncated:
        actions, state, _ = policy.act(env.frame, state)
        if explorer is not None:
            actions = explorer.perturb(env, actions)
        obs, reward, terminated, truncated, info = env.step_actions(actions)
        assert not terminated, "ClusterEnv never terminates"
        viol = float(info["reward_components"]["slo_violation"] > 0)
        add(obs, info["action_features"], reward, 0.0, viol)
    episode = {
        k: np.asarray(v, dtype=np.float32) for k, v in rows.items()
    }  # obs (T+1, O), action (T+1, A), others (T+1,)
    assert episode["obs"].shape == (len(rows["obs"]), env.encoder.size)
    assert episode["action"].shape == (len(rows["obs"]), a_size)
    return episode


# --------------------------------------------------------------------------------------------
# collections


@dataclass(frozen=True)
class EpisodeMeta:
    """Where an episode came from.

    Attributes:
        entry: Suite entry id.
        behaviour: Behaviour policy.
        replicate: Replicate index.
        seed: The env seed (``entry.run_seed(replicate)``).
        steps: Steps ``T`` (rows - 1).
        wall_s: Wall seconds to collect it.
    """

    entry: str
    behaviour: str
    replicate: int
    seed: int
    steps: int
    wall_s: float


@dataclass
class Collection:
    """Episodes and their :class:`EpisodeMeta`, in task order (entry, behaviour, replicate)."""

    episodes: list[dict[str, np.ndarray]]
    meta: list[EpisodeMeta] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def steps(self) -> int:
        """Total steps over all episodes."""
        return sum(len(e["obs"]) - 1 for e in self.episodes)

    def select(self, keep: Callable[[EpisodeMeta], bool]) -> Collection:
        """The episodes whose meta satisfies ``keep``."""
        idx = [i for i, m in enumerate(self.meta) if keep(m)]
        return Collection([self.episodes[i] for i in idx], [self.meta[i] for i in idx])

    def save(self, path: str | Path) -> Path:
        """Write one compressed ``.npz``: ``ep<i>/<key>`` arrays and the meta as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            f"ep{i}/{k}": v for i, ep in enumerate(self.episodes) for k, v in ep.items()
        }
        arrays["meta_json"] = np.array(json.dumps([asdict(m) for m in self.meta]))
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: str | Path) -> Collection:
        """Read a file written by :meth:`save` (no pickles)."""
        with np.load(Path(path), allow_pickle=False) as data:
            meta = [EpisodeMeta(**m) for m in json.loads(str(data["meta_json"]))]
            episodes = [
                {k: np.asarray(data[f"ep{i}/{k}"]) for k in EPISODE_KEYS} for i in range(len(meta))
            ]
        return cls(episodes, meta)


def _run_task(
    entry_id: str,
    scenario: Scenario,
    behaviour: str,
    replicate: int,
    seed: int,
    fidelity: str,
    explore: ExploreConfig,
) -> tuple[dict[str, np.ndarray], EpisodeMeta]:
    start = time.perf_counter()
    try:
        ep = run_episode(scenario, behaviour, seed, fidelity, explore)
    except Exception as exc:
        raise CollectError(
            f"entry {entry_id!r} behaviour {behaviour!r} replicate {replicate} (seed {seed}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    meta = EpisodeMeta(
        entry_id, behaviour, replicate, seed, len(ep["obs"]) - 1, time.perf_counter() - start
    )
    return ep, meta


def _run_task_args(
    task: tuple[str, Scenario, str, int, int, str, ExploreConfig],
) -> tuple[dict[str, np.ndarray], EpisodeMeta]:
    return _run_task(*task)


def collect(
    entries: Suite | Sequence[SuiteEntry],
    behaviours: Sequence[str] = BEHAVIOURS,
    replicates: Sequence[int] = (0,),
    workers: int = 2,
    fidelity: str = "fluid",
    explore: ExploreConfig | None = None,
    progress: bool | None = None,
    perturb: float = 0.0,
) -> Collection:
    """Run every (entry, behaviour, replicate) and return the episodes in that order.

    Args:
        entries: Suite entries (all of one topology: one world model fits one topology).
        behaviours: Names from :data:`BEHAVIOURS`.
        replicates: Replicate indices; the env seed is ``entry.run_seed(replicate)``.
        workers: Processes (1: in this process; else a spawn pool).
        fidelity: Simulator fidelity.
        explore: Knobs of the ``explore`` behaviour.
        progress: Show a progress bar (None: when stderr is a terminal).
        perturb: When > 0, replicates ``k >= 1`` run a :func:`perturb_scenario` variant
            of the entry (seeded by the run seed) of this strength; replicate 0 runs the
            entry as the suite defines it.

    Raises:
        ValueError: For no entries, mixed topologies, unknown behaviours or workers < 1.
        CollectError: When an episode fails (the first failure; the rest are cancelled).
    """
    entries = list(entries)
    if not entries:
        raise ValueError("collect: no suite entries")
    topologies = sorted({e.scenario.topology.name for e in entries})
    if len(topologies) > 1:
        raise ValueError(
            f"collect: entries span topologies {topologies}; one world model fits one "
            "topology (filter the suite first)"
        )
    unknown = [b for b in behaviours if b not in BEHAVIOURS]
    if unknown or not behaviours:
        raise ValueError(f"collect: behaviours {unknown or '[]'}; use some of {list(BEHAVIOURS)}")
    if workers < 1:
        raise ValueError(f"collect: workers={workers}, must be >= 1")
    explore = explore or ExploreConfig()
    if perturb < 0:
        raise ValueError(f"collect: perturb={perturb}, must be >= 0")

    def scenario(e: SuiteEntry, k: int) -> Scenario:
        if perturb > 0 and k >= 1:
            return perturb_scenario(e.scenario, e.run_seed(k), perturb)
        return e.scenario

    tasks = [
        (e.id, scenario(e, k), b, k, e.run_seed(k), fidelity, explore)
        for e in entries
        for b in behaviours
        for k in replicates
    ]
    show = sys.stderr.isatty() if progress is None else progress
    with ProgressBar(show, len(tasks), f"collect {topologies[0]}") as tick:
        done = parallel_map(_run_task_args, tasks, workers, on_result=lambda i, r: tick())
    return Collection([ep for ep, _ in done], [meta for _, meta in done])


class ProgressBar:
    """A rich progress bar on stderr as a context manager yielding ``tick(info="")``.

    ``tick`` advances by one and shows ``info`` after the bar; everything is a no-op when
    ``show`` is False (e.g. stderr is not a terminal).

    Args:
        show: Draw the bar.
        total: Number of ticks to completion.
        label: Text before the bar.
    """

    def __init__(self, show: bool, total: int, label: str) -> None:
        self.show, self.total, self.label = show, total, label
        self._progress: Any = None

    def __enter__(self) -> Callable[..., None]:
        if not self.show:
            return lambda info="": None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn(f"[bold]{self.label}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
            transient=True,
        )
        progress.start()
        task = progress.add_task(self.label, total=self.total, info="")
        self._progress = progress

        def tick(info: str = "") -> None:
            progress.update(task, advance=1, info=info)

        return tick

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
