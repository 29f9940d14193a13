"""The one loop that runs a :class:`~envs.core.policy.Policy` against a world.

:func:`rollout` resets the world, then at every decision point hands the policy the latest
frame, applies the actions it returns and steps to the next decision, until the horizon.
The world is a :class:`~envs.sim.simulator.Simulator` today; the loop needs only its
``reset``, ``step``, ``done``, ``now``, ``scenario`` and ``result`` (a live world with the
same surface runs under the same loop). Evaluation, ``opsworld simulate``, the tuned-HPA
search and the tests all run policies through here.
"""

from __future__ import annotations

from collections.abc import Callable

from envs.core.actions import Action
from envs.core.policy import Policy
from envs.sim.simulator import Decision, SimResult, Simulator


def rollout(
    world: Simulator,
    policy: Policy,
    progress: Callable[[float, float], None] | None = None,
) -> SimResult:
    """Run the whole horizon of ``world`` under ``policy``.

    Args:
        world: The simulator (reset here, so any earlier state is dropped).
        policy: Decides on each frame; its state is threaded from decision to decision.
            A policy with an ``in_cluster_hpa`` (an ``hpa_tune`` policy, which steers an HPA
            with ``SetHPATarget``) gets that HPA in the control plane
            (:meth:`~envs.sim.simulator.Simulator.enable_hpa`).
        progress: Called as ``progress(now, horizon)`` after each step.

    Returns:
        Every frame, every action with its time, one :class:`Decision` per decision point,
        the summary and the fault records.

    Raises:
        RolloutInterrupted: On Ctrl-C (a :class:`KeyboardInterrupt`), with the run so far.
    """
    hpa = getattr(policy, "in_cluster_hpa", None)  # a policy that tunes an in-cluster HPA
    if hpa is not None:
        world.enable_hpa(hpa)
    frame = world.reset()
    frames = [frame]
    log: list[tuple[float, Action]] = []
    state = policy.reset(1)
    decisions: list[Decision] = []
    try:
        while not world.done:
            seen = frames[-1]
            acts, state, _ = policy.act(seen, state)
            decisions.append(Decision(world.now, 1.0 - float(seen.mask.mean()), len(acts)))
            log.extend((world.now, a) for a in acts)
            frames.extend(world.step(acts))
            if progress is not None:
                progress(world.now, world.scenario.horizon_s)
    except KeyboardInterrupt as stop:
        if isinstance(stop, RolloutInterrupted):
            raise
        try:
            partial = world.result(frames, log, decisions)
        except Exception:  # too little to summarise: stop as a plain Ctrl-C
            raise stop from None
        raise RolloutInterrupted(partial) from None
    return world.result(frames, log, decisions)


class RolloutInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`rollout`; ``result`` holds the run up to the last whole step."""

    def __init__(self, result: SimResult) -> None:
        super().__init__(f"interrupted at t={result.frames[-1].t:g}s")
        self.result = result
