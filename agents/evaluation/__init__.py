"""Running policies on scenarios and suites, and scoring them (library of the commands).

* :mod:`agents.evaluation.suite`: :func:`~agents.evaluation.suite.run_suite`, every
  (entry, replicate) of a suite under a policy, scored, through
  :func:`agents.parallel.parallel_map`;
* :mod:`agents.evaluation.evaluate`: what ``opsworld evaluate`` does (built-in and trained
  policies side by side, Pareto plot, timelines);
* :mod:`agents.evaluation.simulate`: what ``opsworld simulate`` does (one scenario under a
  policy: telemetry, timeline, actions, summary).
"""
