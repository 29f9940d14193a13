"""The schema of a study (``configs/tune/<space>.yaml``) and its Ray Tune search space.

A study is one :class:`TuneSpec`: what a trial is (``kind``: ``hpa`` scores HPA knobs,
``train`` trains with ``opsworld train`` overrides), the parameters to search
(:class:`ParamSpec`, each a dotted key of the trial's config with a distribution), the
budget (``num_samples`` trials, ``rungs`` reports each, ASHA's ``grace_period`` and
``reduction_factor``) and how trials are scored (:class:`SelectConfig`: entries of the train
suite's validation split, ``train:validation``; never the holdout suite).

The objective, minimised, is the same for every kind: mean SLO-violation minutes over the
selection runs plus ``penalty`` per unit of allocated cost above ``cost_cap`` times the
default HPA's on the same runs:

    objective = slo_violation_min + penalty * max(0, cost_rel - cost_cap)

so, as in the tuned HPA's original grid search, the winner is the best SLO that the default
HPA's budget buys (``docs/scaling.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agents.run_config import RunConfigError


class TrialKind(StrEnum):
    """What one trial runs."""

    hpa = "hpa"
    train = "train"


class Sample(StrEnum):
    """A parameter's distribution (Ray Tune's sampling functions)."""

    uniform = "uniform"
    loguniform = "loguniform"
    randint = "randint"
    choice = "choice"


@dataclass
class ParamSpec:
    """One searched parameter.

    Attributes:
        key: Dotted key of the trial's config (``agent.learning_rate``,
            ``env.reward_weights.cost``; for ``kind: hpa`` ``target_cpu_utilization`` or
            ``scale_down_stabilization_s``).
        sample: Distribution: ``uniform``, ``loguniform`` (``low``, ``high``), ``randint``
            (integers ``low`` .. ``high`` inclusive) or ``choice`` (``values``).
        low: Lower bound.
        high: Upper bound.
        values: The options of ``choice``.
    """

    key: str = ""
    sample: Sample = Sample.uniform
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None


@dataclass
class AshaConfig:
    """ASHA's settings (``ray.tune.schedulers.ASHAScheduler``; its time unit is a rung).

    Attributes:
        grace_period: Rungs every trial runs before it can be stopped.
        reduction_factor: Keep the best ``1 / reduction_factor`` of trials at each rung.
    """

    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass
class SelectConfig:
    """How trials are scored: runs on the train suite's validation split (never the holdout).

    Attributes:
        suite: ``train:validation`` (``docs/protocol.md``: every choice is made on the
            validation split; trials of ``kind: train`` fit on ``train:fit``), or another
            suite or split that is not the holdout suite.
        topology: Only this topology's entries (a trained policy fits one); None: all.
        limit: The first ``limit`` entries (None: all).
        replicates: Replicate indices per entry.
        fidelity: Simulator fidelity of the selection runs.
        cost_cap: Budget: allocated cost up to this multiple of the default HPA's is free.
        penalty: Objective added per unit of cost ratio above ``cost_cap``.
    """

    suite: str = "train:validation"
    topology: str | None = None
    limit: int | None = None
    replicates: list[int] = field(default_factory=lambda: [0])
    fidelity: str = "fluid"
    cost_cap: float = 1.0
    penalty: float = 100.0


@dataclass
class TuneSpec:
    """A study (the ``tune`` group, ``configs/tune/<name>.yaml``).

    Attributes:
        name: The study's name (output folder and overlay names).
        kind: ``hpa`` or ``train``.
        train: ``kind: train``: ``opsworld train`` overrides every trial starts from
            (``agent=ppo``, ``env=autoscale``, ``scenario=chain3``, ``total_timesteps=...``).
        space: The searched parameters.
        num_samples: Trials.
        rungs: Reports per trial (ASHA's ``max_t``): ``kind: train`` trains in ``rungs``
            equal steps of ``total_timesteps`` (resuming the previous rung's run), scoring
            after each; ``kind: hpa`` scores the selection runs in ``rungs`` chunks.
        max_concurrent: Trials at a time (None: as many as Ray has CPUs).
        asha: The scheduler's settings.
        select: The selection runs and the objective's budget.
        points_to_evaluate: Parameter settings to try first (e.g. the defaults).
    """

    name: str = "study"
    kind: TrialKind = TrialKind.hpa
    train: list[str] = field(default_factory=list)
    space: list[ParamSpec] = field(default_factory=list)
    num_samples: int = 8
    rungs: int = 3
    max_concurrent: int | None = None
    asha: AshaConfig = field(default_factory=AshaConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)

    def check(self) -> None:
        """Check the values a schema cannot.

        Raises:
            RunConfigError: Naming the field (``tune.<field>``) and the fix.
        """
        if not self.space:
            raise RunConfigError("tune.space is empty: list the parameters to search")
        keys = [p.key for p in self.space]
        if len(set(keys)) != len(keys) or not all(keys):
            raise RunConfigError(f"tune.space keys {keys}: each must be set and appear once")
        for p in self.space:
            check_param(p)
        for name, value in (("num_samples", self.num_samples), ("rungs", self.rungs)):
            if value < 1:
                raise RunConfigError(f"tune.{name}={value}: must be >= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise RunConfigError(f"tune.max_concurrent={self.max_concurrent}: >= 1 or null")
        if self.asha.grace_period < 1 or self.asha.grace_period > self.rungs:
            raise RunConfigError(
                f"tune.asha.grace_period={self.asha.grace_period}: must be in 1..rungs "
                f"({self.rungs})"
            )
        if self.asha.reduction_factor <= 1:
            raise RunConfigError(
                f"tune.asha.reduction_factor={self.asha.reduction_factor}: must be > 1"
            )
        if self.kind is TrialKind.hpa:
            allowed = {"target_cpu_utilization", "scale_down_stabilization_s"}
            extra = set(keys) - allowed
            if extra:
                raise RunConfigError(
                    f"tune.space keys {sorted(extra)}: kind hpa searches only {sorted(allowed)}"
                )
        if self.kind is TrialKind.train and not self.train:
            raise RunConfigError(
                "tune.train is empty: kind train needs the 'opsworld train' overrides every "
                "trial starts from (e.g. [agent=ppo, env=autoscale, scenario=chain3])"
            )
        s = self.select
        if not s.replicates or any(r < 0 for r in s.replicates):
            raise RunConfigError(f"tune.select.replicates={s.replicates}: give indices >= 0")
        if s.limit is not None and s.limit < 1:
            raise RunConfigError(f"tune.select.limit={s.limit}: must be >= 1 (or null)")
        if s.cost_cap <= 0 or s.penalty < 0:
            raise RunConfigError(
                f"tune.select.cost_cap={s.cost_cap} / penalty={s.penalty}: cost_cap > 0, "
                "penalty >= 0"
            )
        for where, suite in (("tune.select.suite", s.suite), *_train_suite(self.train)):
            if "holdout" in str(suite).lower():
                raise RunConfigError(
                    f"{where}={suite}: a study never sees the holdout suite (it is for the "
                    "final evaluation only); select on train:validation"
                )


def _train_suite(overrides: list[str]) -> list[tuple[str, str]]:
    return [
        ("tune.train: suite", o.split("=", 1)[1])
        for o in overrides
        if o.split("=", 1)[0].lstrip("+~") == "suite" and "=" in o
    ]


def check_param(p: ParamSpec) -> None:
    """Check one parameter's distribution.

    Raises:
        RunConfigError: Naming ``tune.space[<key>]``.
    """
    where = f"tune.space[{p.key}]"
    if p.sample is Sample.choice:
        if not p.values:
            raise RunConfigError(f"{where}: sample=choice needs values=[...]")
        return
    if p.low is None or p.high is None or not p.low < p.high:
        raise RunConfigError(f"{where}: sample={p.sample} needs low < high (got {p.low}, {p.high})")
    if p.sample is Sample.loguniform and p.low <= 0:
        raise RunConfigError(f"{where}: loguniform needs low > 0 (got {p.low})")
    if p.sample is Sample.randint and (p.low != math.floor(p.low) or p.high != math.floor(p.high)):
        raise RunConfigError(f"{where}: randint needs integer bounds (got {p.low}, {p.high})")


def param_space(spec: TuneSpec) -> dict[str, Any]:
    """The Ray Tune search space: dotted key -> ``tune.uniform(...)`` etc."""
    from ray import tune

    space: dict[str, Any] = {}
    for p in spec.space:
        if p.sample is Sample.choice:
            space[p.key] = tune.choice(list(p.values or []))
            continue
        assert p.low is not None and p.high is not None  # check_param
        if p.sample is Sample.loguniform:
            space[p.key] = tune.loguniform(p.low, p.high)
        elif p.sample is Sample.randint:
            space[p.key] = tune.randint(int(p.low), int(p.high) + 1)  # upper bound exclusive
        else:
            space[p.key] = tune.uniform(p.low, p.high)
    return space


def objective(slo_min: float, cost: float, ref_cost: float, select: SelectConfig) -> float:
    """The objective of the module docstring (``cost`` relative to the default HPA's)."""
    rel = cost / ref_cost if ref_cost > 0 else math.inf
    excess = max(0.0, rel - select.cost_cap)
    return slo_min + select.penalty * excess if excess > 0 and select.penalty > 0 else slo_min
