"""Dreamer: behaviour learned in the world model's imagination, and a latent what-if planner.

* :mod:`agents.dreamer.config`: the ``agent=dreamer`` settings and the run config;
* :mod:`agents.dreamer.actor_critic`: actor, two-hot critic, lambda-returns, return
  normalisation and imagination;

``docs/dreamer.md`` is the user guide.
"""
