"""Shared fixtures: a real Prometheus for the live tests (tests/prometheus_fixture.py)."""

from prometheus_fixture import prometheus  # noqa: F401  (a session fixture)
