"""Shared fixtures: a real Prometheus for the live tests (tests/prometheus_fixture.py)."""

from prometheus_fixture import exporter, prometheus, scraped  # noqa: F401  (session fixtures)
