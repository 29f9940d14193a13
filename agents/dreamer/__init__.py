"""Dreamer: behaviour learned in the world model's imagination, and a latent what-if planner.

* :mod:`agents.dreamer.config`: the ``agent=dreamer`` settings and the run config;
* :mod:`agents.dreamer.actor_critic`: actor, two-hot critic, lambda-returns, return
  normalisation and imagination;
* :mod:`agents.dreamer.agent`: world model + actor-critic, acting and updates;
* :mod:`agents.dreamer.envs`: the run's envs and the episodes they record;
* :mod:`agents.dreamer.train`: the online training loop (``opsworld train agent=dreamer``);
* :mod:`agents.dreamer.policy`: :class:`~agents.dreamer.policy.DreamerPolicy`, a run dir
  behind the :class:`envs.core.policy.Policy` protocol;
* :mod:`agents.dreamer.planner`: the latent what-if planner and
  :class:`~agents.dreamer.planner.PlannerPolicy`.

``docs/dreamer.md`` is the user guide.
"""
