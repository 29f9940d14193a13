"""Benchmarks behind ``opsworld bench <suite>`` (results committed under experiments/results/).

* :mod:`agents.bench.config`: the schema (suites and sizes);
* :mod:`agents.bench.sim`, :mod:`agents.bench.incidents`, :mod:`agents.bench.world_model`:
  one suite each;
* :mod:`agents.bench.runner`: :data:`~agents.bench.runner.SUITES`, the report (JSON and
  Markdown with the command and the machine) and :func:`~agents.bench.runner.run_bench`.
"""
