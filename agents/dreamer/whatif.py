"""Latent what-if planning: what the world model predicts for each candidate action.

From the current posterior carry, :class:`WhatIfPlanner` imagines ``horizon`` steps for every
candidate action (the candidate first, then no-ops or the actor's choices), ``samples``
times each (the prior's latents are sampled, so the spread shows the model's uncertainty),
and reports per candidate:

* ``p99``: per service, quantiles over the samples of the peak predicted p99 latency over
  the horizon (seconds);
* ``error_rate``: per service, the median over samples of the mean predicted error rate;
* ``cost``: the mean predicted allocated cost relative to the initial pods (the env
  reward's ``cost`` component: bound pods' CPU requests, from the decoded ready + starting
  replicas);
* ``p_violation``: the probability of at least one SLO-violating step within the horizon
  (from the violation head, ``1 - prod(1 - p_t)``, averaged over samples);
* ``reward``: the mean predicted discounted return over the horizon, and ``score``: that
  plus the discounted critic value at the horizon's end when a critic is given.

The best candidate is the one with the highest ``score`` (ties: the earlier candidate, and
the no-op comes first, so the planner does nothing unless the model expects a gain).
:meth:`Plan.to_markdown` renders the comparison as the explanation of the decision.
:class:`agents.dreamer.planner.PlannerPolicy` acts on telemetry with it (a
:class:`envs.core.policy.Policy`). This module needs no Dreamer run dir, env or simulator
(a Dreamer bundle's explain route uses it).

Candidates (:meth:`WhatIfPlanner.candidates`) come from the env's action space and its
current (possibly belief-built) control plane: the no-op, each service scaled by -2, -1,
+1, +2 (Autoscale, ClusterOps), and every valid remediation (Remediate, ClusterOps: restart
and rollback per service, scale-up, shed levels; node drains only with ``allow_drain``).
Choices that decode to nothing (a scale clamped at its bound) are dropped. Explicit
candidates (any simulator actions) can be passed to :meth:`WhatIfPlanner.plan` as
:class:`Candidate` objects (:meth:`WhatIfPlanner.candidate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from agents.dreamer.actor_critic import ActionSpec, Actor, Critic
from agents.world_model.math import symexp
from agents.world_model.model import WorldModel
from agents.world_model.rssm import Carry
from envs.core.actions import Action
from envs.gym.codec import (
    SCALE_DELTAS,
    SERVICE_REMEDIATIONS,
    SHED_LEVELS,
    ActionCodec,
    ControlBelief,
)
from envs.scenarios.schema import Scenario

Follow = Literal["noop", "actor"]


@dataclass(frozen=True)
class Candidate:
    """One option to compare.

    Attributes:
        label: Human-readable name (``noop``, ``api +1``, ``rollback api``, ...).
        actions: The simulator actions it takes now.
        features: ``[A]`` their :class:`~envs.gym.encoder.ActionEncoder` features.
        index: The env action (indices per dimension), None for explicit actions.
    """

    label: str
    actions: tuple[Action, ...]
    features: np.ndarray
    index: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Outcome:
    """Predicted outcome of one candidate (see the module docstring for each field).

    Attributes:
        candidate: The candidate.
        score: Mean predicted return, critic bootstrap included when there is a critic.
        reward: Mean predicted discounted sum of rewards over the horizon.
        p99: ``[S, Q]`` quantiles of the peak p99 (s) per service.
        error_rate: ``[S]`` median mean error rate per service.
        cost: Mean predicted relative allocated cost.
        p_violation: Probability of an SLO violation within the horizon.
    """

    candidate: Candidate
    score: float
    reward: float
    p99: np.ndarray
    error_rate: np.ndarray
    cost: float
    p_violation: float


@dataclass(frozen=True)
class Plan:
    """The outcomes of all candidates and the chosen one.

    Attributes:
        outcomes: One per candidate, in candidate order.
        best: Index of the chosen outcome (highest score).
        services: Service names (order of ``p99`` and ``error_rate``).
        quantiles: Quantile levels of ``p99``.
        horizon: Imagined steps.
        samples: Imagined trajectories per candidate.
        follow: What happens after the candidate's first step (``noop`` or ``actor``).
    """

    outcomes: list[Outcome]
    best: int
    services: tuple[str, ...]
    quantiles: tuple[float, ...]
    horizon: int
    samples: int
    follow: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> Outcome:
        """The best outcome."""
        return self.outcomes[self.best]

    @property
    def scores(self) -> np.ndarray:
        """``[C]`` scores in candidate order."""
        return np.array([o.score for o in self.outcomes])

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form (e.g. for an audit log)."""
        return {
            "best": self.best,
            "chosen": self.chosen.candidate.label,
            "horizon": self.horizon,
            "samples": self.samples,
            "follow": self.follow,
            "quantiles": list(self.quantiles),
            "services": list(self.services),
            "candidates": [
                {
                    "label": o.candidate.label,
                    "actions": [repr(a) for a in o.candidate.actions],
                    "score": o.score,
                    "reward": o.reward,
                    "p99_s": o.p99.tolist(),
                    "error_rate": o.error_rate.tolist(),
                    "cost": o.cost,
                    "p_violation": o.p_violation,
                }
                for o in self.outcomes
            ],
        }

    def to_markdown(self) -> str:
        """The comparison as a Markdown table, best first marked, with a one-line reason."""
        q = self.quantiles
        p99_head = " | ".join(
            f"p99 {s} ms (q{q[0]:g}/q{q[len(q) // 2]:g}/q{q[-1]:g})" for s in self.services
        )
        err_head = " | ".join(f"err {s}" for s in self.services)
        lines = [
            f"| | candidate | score | return | P(viol) | cost | {p99_head} | {err_head} |",
            "|---|---|---:|---:|---:|---:|" + "---:|" * (2 * len(self.services)),
        ]
        for i, o in enumerate(self.outcomes):
            mark = "**best**" if i == self.best else str(i)
            p99 = " | ".join(
                "/".join(f"{1000 * v:.0f}" for v in (row[0], row[len(row) // 2], row[-1]))
                for row in o.p99
            )
            err = " | ".join(f"{e:.3f}" for e in o.error_rate)
            lines.append(
                f"| {mark} | {o.candidate.label} | {o.score:.3f} | {o.reward:.3f} | "
                f"{o.p_violation:.2f} | {o.cost:.2f} | {p99} | {err} |"
            )
        noop = next((o for o in self.outcomes if o.candidate.label == "noop"), None)
        best = self.chosen
        why = f"Chosen: **{best.candidate.label}** (score {best.score:.3f}"
        if noop is not None and noop is not best:
            why += f", {best.score - noop.score:+.3f} over noop"
        why += (
            f"; {self.samples} imagined trajectories of {self.horizon} steps each, "
            f"then {self.follow})."
        )
        return "\n".join([why, "", *lines])


def _delta_label(d: int) -> str:
    return f"{d:+d}"


class WhatIfPlanner:
    """Compares candidate actions in the world model's imagination.

    Args:
        wm: The world model.
        codec: The action codec of the run's env: its layout and decoding give the
            candidates (under the :class:`~envs.gym.codec.ControlBelief` passed to
            :meth:`candidates` and :meth:`plan`).
        scenario: The scenario whose pods' CPU requests price the imagined replicas.
        actor: The actor, for ``follow="actor"``.
        critic: The critic, to bootstrap the score at the horizon's end.
        horizon: Imagined steps.
        samples: Trajectories per candidate.
        follow: After the candidate: ``noop`` (nothing) or ``actor`` (the actor's samples).
        quantiles: Quantile levels of the p99 predictions.
        discount: Per-step discount of the predicted rewards.
        allow_drain: Offer node drains as candidates.
        seed: Seed of the imagination's generator (same carry, same plan).
    """

    def __init__(
        self,
        wm: WorldModel,
        codec: ActionCodec,
        scenario: Scenario,
        *,
        actor: Actor | None = None,
        critic: Critic | None = None,
        horizon: int = 15,
        samples: int = 16,
        follow: Follow = "noop",
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        discount: float = 0.997,
        allow_drain: bool = False,
        seed: int = 0,
    ) -> None:
        if follow == "actor" and actor is None:
            raise ValueError("WhatIfPlanner: follow='actor' needs an actor")
        if horizon < 1 or samples < 1:
            raise ValueError(f"WhatIfPlanner: horizon={horizon}, samples={samples} must be >= 1")
        if codec.layout == "hpa_tune":
            raise ValueError(
                "WhatIfPlanner proposes replica and remediation actions; an hpa_tune layout "
                "acts through HPA targets"
            )
        self.wm, self.codec, self.actor, self.critic = wm, codec, actor, critic
        self.spec = ActionSpec.from_codec(codec)
        self.horizon, self.samples, self.follow = horizon, samples, follow
        self.quantiles = tuple(float(q) for q in quantiles)
        self.discount = discount
        self.allow_drain = allow_drain
        self.seed = seed
        layout = wm.layout
        self.services = tuple(codec.services)
        specs = scenario.topology.services
        s_range = range(len(self.services))
        self._p99 = [layout.service_index(s, "p99") for s in s_range]
        self._err = [layout.service_index(s, "error_rate") for s in s_range]
        self._ready = [layout.service_index(s, "replicas_ready") for s in s_range]
        self._starting = [layout.service_index(s, "replicas_starting") for s in s_range]
        self._cpu = np.array([spec.pod.cpu_request for spec in specs])
        base = float(sum(spec.replicas.initial * spec.pod.cpu_request for spec in specs))
        self._base_cores = max(base, 1e-9)

    # ------------------------------------------------------------------ candidates
    def candidate(self, label: str, actions: Sequence[Action], belief: ControlBelief) -> Candidate:
        """An explicit candidate: any typed actions, encoded against ``belief``."""
        features = self.codec.action_encoder.encode(list(actions), belief.desired)
        return Candidate(label, tuple(actions), features)

    def _from_index(self, label: str, index: Sequence[int], belief: ControlBelief) -> Candidate:
        action: Any = int(index[0]) if self.spec.discrete else np.asarray(index)
        c = self.candidate(label, self.codec.decode(action, belief), belief)
        return Candidate(c.label, c.actions, c.features, tuple(int(i) for i in index))

    def candidates(self, belief: ControlBelief) -> list[Candidate]:
        """The default candidates under ``belief`` (see the module docstring)."""
        codec = self.codec
        n_svc = len(self.services)
        keep = SCALE_DELTAS.index(0)
        scaling = codec.layout in ("autoscale", "cluster_ops")
        remediation = codec.has_remediation
        base = [keep] * n_svc if scaling else []
        tail = [0] if remediation else []
        out = [self._from_index("noop", base + tail, belief)]
        if scaling:
            for s, name in enumerate(self.services):
                for k, d in enumerate(SCALE_DELTAS):
                    if d != 0:
                        idx = list(base)
                        idx[s] = k
                        label = f"{name} {_delta_label(d)}"
                        out.append(self._from_index(label, idx + tail, belief))
        if remediation:
            mask = codec.remediation_mask(belief)
            for k in range(1, codec.n_remediations):
                label = self._remediation_label(k)
                if not mask[k] or (label.startswith("drain") and not self.allow_drain):
                    continue
                out.append(self._from_index(label, [*base, k], belief))
        return [c for i, c in enumerate(out) if i == 0 or c.actions]

    def _remediation_label(self, k: int) -> str:
        k -= 1
        n_svc = len(SERVICE_REMEDIATIONS) * len(self.services)
        if k < n_svc:
            svc, what = divmod(k, len(SERVICE_REMEDIATIONS))
            return f"{SERVICE_REMEDIATIONS[what].replace('_', ' ')} {self.services[svc]}"
        k -= n_svc
        if k < len(SHED_LEVELS):
            return f"shed {100 * SHED_LEVELS[k]:.0f}%"
        return f"drain node {k - len(SHED_LEVELS)}"

    # ------------------------------------------------------------------ planning
    @torch.no_grad()
    def plan(
        self,
        carry: Carry,
        belief: ControlBelief,
        candidates: Sequence[Candidate] | None = None,
    ) -> Plan:
        """Imagine every candidate from ``carry`` (one stream) and pick the best.

        Args:
            carry: The posterior carry of the current frame (batch of one).
            belief: The control belief at the current frame (masks, decoding).
            candidates: What to compare (default :meth:`candidates`).
        """
        cands = list(candidates) if candidates is not None else self.candidates(belief)
        if not cands:
            raise ValueError("WhatIfPlanner.plan: no candidates")
        assert carry.deter.shape[0] == 1, "plan one stream at a time"
        c, n, h = len(cands), self.samples, self.horizon
        gen = torch.Generator().manual_seed(self.seed)
        state = Carry(
            carry.deter.expand(c * n, -1).contiguous(),
            carry.stoch.expand(c * n, -1, -1).contiguous(),
        )
        first = torch.as_tensor(np.stack([x.features for x in cands]), dtype=torch.float32)
        action = first.repeat_interleave(n, 0)
        mask = None
        if self.follow == "actor" and self.spec.masked:
            mask = torch.as_tensor(self.codec.masks(belief), dtype=torch.bool)[None]
        feats: list[torch.Tensor] = []
        for t in range(h):
            if t > 0:
                if self.follow == "actor":
                    assert self.actor is not None
                    idx = self.actor(feats[-1], mask).sample(gen)
                    action = self.spec.features(idx)
                else:
                    action = torch.zeros_like(action)
            state = self.wm.img_step(state, action, generator=gen)
            feats.append(self.wm.feat(state))
        feat = torch.stack(feats)  # [H, C*N, F]
        disc = self.discount ** torch.arange(h, dtype=torch.float32)[:, None]
        ret = (disc * self.wm.reward(feat)).sum(0)  # [C*N]
        score = ret.clone()
        if self.critic is not None:
            score = score + self.discount**h * self.critic.value(feat[-1])
        raw = symexp(self.wm.decode(feat)[0]).clamp(min=0.0).numpy()  # [H, C*N, V]
        p_viol = 1.0 - torch.prod(1.0 - self.wm.violation_prob(feat), 0)  # [C*N]

        def per(x: np.ndarray) -> np.ndarray:  # [..., C*N, ...] -> [C, N, ...]
            return x.reshape(c, n, *x.shape[1:])

        peak_p99 = per(raw[:, :, self._p99].max(0))  # [C, N, S]
        err = per(raw[:, :, self._err].clip(max=1.0).mean(0))  # a rate: at most 1
        cores = (raw[:, :, self._ready] + raw[:, :, self._starting]) @ self._cpu  # [H, C*N]
        cost = per(cores.mean(0) / self._base_cores)
        ret_c, score_c = per(ret.numpy()), per(score.numpy())
        pv = per(p_viol.numpy())
        outcomes = [
            Outcome(
                candidate=cands[i],
                score=float(score_c[i].mean()),
                reward=float(ret_c[i].mean()),
                p99=np.quantile(peak_p99[i], self.quantiles, axis=0).T,  # [S, Q]
                error_rate=np.median(err[i], axis=0),
                cost=float(cost[i].mean()),
                p_violation=float(pv[i].mean()),
            )
            for i in range(c)
        ]
        best = int(np.argmax([o.score for o in outcomes]))
        return Plan(outcomes, best, self.services, self.quantiles, h, n, self.follow)
