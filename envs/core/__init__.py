"""The shared types at the bottom of opsworld; imports nothing else of the project.

* :mod:`envs.core.telemetry`: :class:`~envs.core.telemetry.Telemetry`, one typed frame per
  scrape, its field tables and PromQL's ``histogram_quantile``;
* :mod:`envs.core.actions`: the typed actions a policy hands to the world;
* :mod:`envs.core.policy`: the :class:`~envs.core.policy.Policy` protocol;
* :mod:`envs.core.spec`: what a controller knows of the cluster it controls (bounds,
  initial state) and the action-space layouts, as plain data a bundle can record.

The simulator, the environments, the agents and the server depend on this package; it
depends on none of them (an import-linter contract in ``pyproject.toml`` enforces it).
"""
