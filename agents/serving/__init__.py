"""The policy server: a verified bundle behind the Open Inference Protocol v2 paths.

* :mod:`agents.serving.schemas`: the typed request and response bodies (telemetry in,
  actions out) and the conversion of a request frame to :class:`envs.core.telemetry.Telemetry`;
* :mod:`agents.serving.streams`: per-stream recurrent state with a TTL and a memory bound;
* :mod:`agents.serving.app`: the FastAPI application (health, metadata, infer, metrics,
  admin reload and rollback).

Nothing here imports the simulator (an import-linter contract checks it); ``docs/serving.md``
shows how to run and call it.
"""
