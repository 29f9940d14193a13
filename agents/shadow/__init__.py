"""Shadow mode: a policy reads live (or replayed) Prometheus metrics, recommends, never acts.

* :mod:`agents.shadow.audit`: the JSON Lines audit record (one per tick) and its writer;
* :mod:`agents.shadow.deciders`: the policy in process (a bundle) or remote (``opsworld serve``);
* :mod:`agents.shadow.observe`: what the cluster did (replica changes, restarts) from frames;
* :mod:`agents.shadow.drift`: input drift (PSI) against the bundle's training reference;
* :mod:`agents.shadow.metrics`: shadow's own ``/metrics``;
* :mod:`agents.shadow.loop`: the tick loop (live and replay).

Nothing here imports the simulator (an import-linter contract); see ``docs/live.md``.
"""
