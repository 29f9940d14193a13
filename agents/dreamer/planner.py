"""``PlannerPolicy``: a Dreamer run dir acting with the latent what-if planner.

The planner itself (:class:`~agents.dreamer.whatif.WhatIfPlanner`, :class:`Candidate`,
:class:`Outcome`, :class:`Plan`) lives in :mod:`agents.dreamer.whatif`, which needs no run
dir, env or simulator; its names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from agents.dreamer.policy import DreamerPolicy, DreamerState
from agents.dreamer.whatif import Candidate, Follow, Outcome, Plan, WhatIfPlanner
from envs.core.actions import Action
from envs.core.telemetry import Telemetry

__all__ = ["Candidate", "Follow", "Outcome", "Plan", "PlannerPolicy", "WhatIfPlanner"]


class PlannerPolicy:
    """Acts with :class:`WhatIfPlanner` on telemetry (a :class:`envs.core.policy.Policy`).

    The posterior filter, the control belief and the decoding are those of
    :class:`~agents.dreamer.policy.DreamerPolicy` (the same run dir); each decision takes
    the best candidate and returns the plan in ``info`` (``info["plan"]``: the dict form,
    ``info["explanation"]``: the Markdown table).

    Args:
        run_dir: A Dreamer run dir.
        weights: Weights file relative to ``run_dir``.
        horizon: Imagined steps (default: the agent's horizon).
        samples: Trajectories per candidate.
        follow: ``noop`` or ``actor`` after the candidate.
        bootstrap: Add the critic's value at the horizon's end to the score.
        allow_drain: Offer node drains.
        seed: Seed of the imagination (same frame and state, same decision).
    """

    name = "dreamer-planner"

    def __init__(
        self,
        run_dir: str | Path,
        *,
        weights: str = "agent.pt",
        horizon: int | None = None,
        samples: int = 16,
        follow: Follow = "noop",
        bootstrap: bool = True,
        allow_drain: bool = False,
        seed: int = 0,
    ) -> None:
        self.policy = DreamerPolicy(run_dir, weights=weights, allow_drain=allow_drain)
        if self.policy.codec.layout == "hpa_tune":
            raise ValueError(
                f"{run_dir}: the what-if planner proposes replica and remediation actions; "
                "an env=hpa_tune run acts through HPA targets (use DreamerPolicy)"
            )
        agent = self.policy.agent
        self.planner = WhatIfPlanner(
            agent.wm,
            self.policy.codec,
            self.policy.scenario,
            actor=agent.ac.actor,
            critic=agent.ac.critic if bootstrap else None,
            horizon=horizon or agent.cfg.horizon,
            samples=samples,
            follow=follow,
            discount=agent.cfg.discount,
            allow_drain=allow_drain,
            seed=seed,
        )

    def reset(self, n: int = 1) -> Any:
        """Fresh state(s), as :meth:`DreamerPolicy.reset`."""
        return self.policy.reset(n)

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """Plan on one frame and take the best candidate's actions."""
        st = cast(DreamerState, state)
        belief = st.belief.observe(obs)
        st = DreamerState(belief, st.carry, st.prev_action, st.first, st.generator)
        carry = self.policy.posterior(obs, st)
        plan = self.planner.plan(carry, belief)
        actions = list(plan.chosen.candidate.actions)
        info = {"plan": plan.as_dict(), "explanation": plan.to_markdown()}
        return actions, self.policy.advance(belief, carry, actions, st.generator), info
