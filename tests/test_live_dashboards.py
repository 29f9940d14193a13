"""Grafana dashboards: committed JSON = generated, and every panel's PromQL returns data."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_fixture import LIVE_NAMESPACE, PrometheusServer

from envs.live.dashboards import DASHBOARDS, OUT_DIR, SHADOW_MARK, dashboard_json

# What Grafana substitutes before sending a query (a 1 minute dashboard range).
GRAFANA_VARIABLES = {
    "$namespace": LIVE_NAMESPACE,
    "$deployment": ".*",
    "$__rate_interval": "15s",
    "$__range": "1m",
}


def panels(key: str) -> list[dict[str, Any]]:
    return list(json.loads((OUT_DIR / f"{key}.json").read_text())["panels"])


def render(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr.replace("$1", ""), expr
    return expr


@pytest.mark.parametrize("key", list(DASHBOARDS))
def test_committed_json_is_generated(key: str) -> None:
    """configs/grafana/<key>.json is what envs/live/dashboards.py builds (regenerate with
    ``python -m envs.live.dashboards``)."""
    assert (OUT_DIR / f"{key}.json").read_text() == dashboard_json(key)
    board = json.loads(dashboard_json(key))
    assert board["uid"] == f"opsworld-{key}"
    assert {v["name"] for v in board["templating"]["list"]} == {
        "datasource",
        "namespace",
        "deployment",
    }
    titles = [p["title"] for p in board["panels"]]
    assert len(titles) == len(set(titles)) >= 8


@pytest.mark.parametrize("key", list(DASHBOARDS))
def test_every_panel_returns_data(key: str, scraped: PrometheusServer) -> None:
    """Cluster panels return data from Prometheus scraping the simulator exporter; shadow
    panels must be valid PromQL here (tests/test_shadow.py checks that they return data from
    a running shadow loop)."""
    shadow = []
    for panel in panels(key):
        for target in panel["targets"]:
            expr = render(target["expr"])
            result = scraped.query(expr)  # raises on invalid PromQL
            if panel.get("description", "").startswith(SHADOW_MARK):
                shadow.append(panel["title"])
                continue
            assert result, f"{key}: panel {panel['title']!r} returned no data for {expr}"
            values = [float(r["value"][1]) for r in result]
            assert any(v == v for v in values), (panel["title"], values)  # not all NaN
    assert shadow, "every dashboard has shadow panels"
