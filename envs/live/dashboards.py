"""Grafana dashboards as code: executive, on-call and debug, built with grafana-foundation-sdk.

Each dashboard is a list of :class:`PanelSpec` (title, PromQL, unit, kind, and whether it reads
the cluster or the shadow recommender), turned into a Grafana dashboard model by
:func:`build_dashboard`. ``python -m envs.live.dashboards [DIR]`` writes them as JSON to
``configs/grafana/`` (the committed files; a test checks they equal what this module builds).
Import them in Grafana (Dashboards -> New -> Import) with a Prometheus data source; the
variables ``datasource``, ``namespace`` and ``deployment`` select what to show.

The cluster panels read kube-state-metrics, cAdvisor, OpenCost, the services' HTTP metrics
and the recording rules of ``configs/prometheus/slo.rules.yml``, so they show data against a
real cluster and against ``opsworld exporter`` alike. Panels marked ``shadow`` read the series
of the shadow recommender (``opsworld_shadow_*``) and of the policy server
(``opsworld_policy_*``, ``opsworld_guard_*``); their descriptions say so. ``docs/live.md``
lists every panel.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as gm

OUT_DIR = Path(__file__).resolve().parents[2] / "configs" / "grafana"
"""Where the committed dashboard JSON lives."""

SHADOW_MARK = "[shadow]"
"""Start of the description of a panel that reads shadow-mode / policy-server series."""

DATASOURCE = gm.DataSourceRef(type_val="prometheus", uid="${datasource}")
NS = 'namespace="$namespace"'
DEP = 'deployment=~"$deployment"'
POD_TO_DEP = '"deployment", "$1", "pod", "(.+)-[a-z0-9]+-[a-z0-9]+"'
"""``label_replace`` arguments: the deployment from a pod name, as in the query profile."""


class Source(StrEnum):
    """Which series a panel reads."""

    cluster = "cluster"  # kube-state-metrics, cAdvisor, OpenCost, HTTP metrics, recording rules
    shadow = "shadow"  # opsworld shadow / opsworld serve


class Viz(StrEnum):
    """Panel type."""

    timeseries = "timeseries"
    stat = "stat"


@dataclass(frozen=True)
class PanelSpec:
    """One panel: a title, its PromQL (one or more targets), how to show it."""

    title: str
    exprs: tuple[str, ...]
    unit: str = "short"
    viz: Viz = Viz.timeseries
    source: Source = Source.cluster
    legend: str | tuple[str, ...] = "{{deployment}}"
    """Legend format, one for all targets or one per target."""
    description: str = ""


def _p(title: str, *exprs: str, **kw: object) -> PanelSpec:
    return PanelSpec(title, exprs, **kw)  # type: ignore[arg-type]


EXECUTIVE: tuple[PanelSpec, ...] = (
    _p(
        "Availability SLO attainment (99.9 %)",
        f"1 - avg_over_time(namespace_deployment:http_request_errors:ratio_rate5m{{{NS},{DEP}}}"
        "[$__range])",
        unit="percentunit",
        viz=Viz.stat,
        description="Share of requests answered without a 5xx over the dashboard's range.",
    ),
    _p(
        "Error budget left (30 d, 0.1 %)",
        "1 - avg_over_time(namespace_deployment:http_request_errors:ratio_rate5m"
        f"{{{NS},{DEP}}}[$__range]) / 0.001",
        unit="percentunit",
        viz=Viz.stat,
    ),
    _p(
        "Latency SLO attainment (99 % < 0.25 s)",
        f"1 - avg_over_time(namespace_deployment:http_request_slow:ratio_rate5m{{{NS},{DEP}}}"
        "[$__range])",
        unit="percentunit",
        viz=Viz.stat,
    ),
    _p(
        "Cluster cost per hour",
        "sum(node_total_hourly_cost)",
        unit="currencyUSD",
        legend="cost/h",
    ),
    _p(
        "Requests served",
        f"sum by (deployment) (namespace_deployment:http_requests:rate5m{{{NS},{DEP}}})",
        unit="reqps",
    ),
    _p(
        "Incidents (paging alerts firing)",
        'count(ALERTS{alertstate="firing",severity="page"}) or vector(0)',
        viz=Viz.stat,
        legend="incidents",
    ),
    _p(
        "Recommendations that would have acted",
        f"sum by (action) (increase(opsworld_shadow_would_act_total{{{NS}}}[$__range]))",
        viz=Viz.stat,
        source=Source.shadow,
        legend="{{action}}",
    ),
    _p(
        "Agreement with the cluster",
        f"avg(opsworld_shadow_agreement_ratio{{{NS}}})",
        unit="percentunit",
        viz=Viz.stat,
        source=Source.shadow,
        legend="agreement",
    ),
)

ONCALL: tuple[PanelSpec, ...] = (
    _p(
        "Replicas: shadow recommendation vs actual",
        f"max by (deployment) (opsworld_shadow_recommended_replicas{{{NS},{DEP}}})",
        f"max by (deployment) (opsworld_shadow_actual_replicas{{{NS},{DEP}}})",
        source=Source.shadow,
        legend=("{{deployment}} recommended", "{{deployment}} actual"),
    ),
    _p(
        "Replicas: desired vs ready",
        f"max by (deployment) (kube_deployment_spec_replicas{{{NS},{DEP}}})",
        f"max by (deployment) (kube_deployment_status_replicas_ready{{{NS},{DEP}}})",
        legend=("{{deployment}} desired", "{{deployment}} ready"),
    ),
    _p(
        "Error budget burn rate (5m and 1h)",
        f"namespace_deployment:http_request_errors:ratio_rate5m{{{NS},{DEP}}} / 0.001",
        f"namespace_deployment:http_request_errors:ratio_rate1h{{{NS},{DEP}}} / 0.001",
        unit="x",
        legend=("{{deployment}} 5m", "{{deployment}} 1h"),
        description="1 = spending the 30-day budget exactly; 14.4 over 1h and 5m pages.",
    ),
    _p(
        "p99 latency",
        f"namespace_deployment:http_request_duration_seconds:p99_rate5m{{{NS},{DEP}}}",
        unit="s",
    ),
    _p(
        "5xx ratio",
        f"namespace_deployment:http_request_errors:ratio_rate5m{{{NS},{DEP}}}",
        unit="percentunit",
    ),
    _p(
        "Container restarts",
        f"sum by (deployment) (label_replace(increase(kube_pod_container_status_restarts_total"
        f"{{{NS}}}[5m]), {POD_TO_DEP}))",
    ),
    _p(
        "Alerts firing",
        'sum by (alertname, severity) (ALERTS{alertstate="firing"}) or vector(0)',
        legend="{{alertname}} {{severity}}",
    ),
    _p(
        "Forecast fan: recommended replicas with bounds",
        f"max by (deployment) (opsworld_shadow_recommended_replicas_lower{{{NS},{DEP}}})",
        f"max by (deployment) (opsworld_shadow_recommended_replicas{{{NS},{DEP}}})",
        f"max by (deployment) (opsworld_shadow_recommended_replicas_upper{{{NS},{DEP}}})",
        source=Source.shadow,
        legend=("{{deployment}} lower", "{{deployment}}", "{{deployment}} upper"),
    ),
    _p(
        "Guard interventions",
        "sum by (rule) (increase(opsworld_guard_interventions_total[5m]))",
        source=Source.shadow,
        legend="{{rule}}",
    ),
)

DEBUG: tuple[PanelSpec, ...] = (
    _p(
        "Input: request rate",
        f"sum by (deployment) (label_replace(rate(http_requests_total{{{NS}}}[$__rate_interval]),"
        f" {POD_TO_DEP}))",
        unit="reqps",
    ),
    _p(
        "Input: CPU utilisation of requests",
        f"sum by (deployment) (label_replace(rate(container_cpu_usage_seconds_total{{{NS},"
        f'container!="",container!="POD"}}[$__rate_interval]), {POD_TO_DEP}))'
        f" / sum by (deployment) (label_replace(kube_pod_container_resource_requests{{{NS},"
        f'resource="cpu"}}, {POD_TO_DEP}))',
        unit="percentunit",
    ),
    _p(
        "Input: memory working set",
        f"sum by (deployment) (label_replace(container_memory_working_set_bytes{{{NS},"
        f'container!="",container!="POD"}}, {POD_TO_DEP}))',
        unit="bytes",
    ),
    _p(
        "Scrape health",
        "up",
        "scrape_duration_seconds",
        legend=("up {{job}} {{instance}}", "scrape s {{job}} {{instance}}"),
    ),
    _p(
        "Missing telemetry",
        f"avg(opsworld_shadow_missing_telemetry_ratio{{{NS}}})",
        unit="percentunit",
        source=Source.shadow,
        legend="missing",
    ),
    _p(
        "Inference latency p50 / p99",
        "histogram_quantile(0.5, sum by (le) (rate(opsworld_policy_inference_seconds_bucket"
        "[$__rate_interval])))",
        "histogram_quantile(0.99, sum by (le) (rate(opsworld_policy_inference_seconds_bucket"
        "[$__rate_interval])))",
        unit="s",
        source=Source.shadow,
        legend=("p50", "p99"),
    ),
    _p(
        "Input drift (PSI) by feature",
        f"max by (feature) (opsworld_shadow_drift_psi{{{NS}}})",
        source=Source.shadow,
        legend="{{feature}}",
    ),
    _p(
        "Forecast error vs validation",
        f"avg by (deployment) (opsworld_shadow_forecast_abs_error{{{NS},{DEP}}})",
        source=Source.shadow,
    ),
)

DASHBOARDS: dict[str, tuple[str, tuple[PanelSpec, ...]]] = {
    "executive": ("opsworld: executive", EXECUTIVE),
    "oncall": ("opsworld: on-call", ONCALL),
    "debug": ("opsworld: debug", DEBUG),
}
"""uid suffix -> (title, panels)."""


def _panel(spec: PanelSpec) -> gts.Panel | gstat.Panel:
    panel: gts.Panel | gstat.Panel = gstat.Panel() if spec.viz is Viz.stat else gts.Panel()
    desc = spec.description
    if spec.source is Source.shadow:
        desc = f"{SHADOW_MARK} Needs opsworld shadow / serve metrics. {desc}".strip()
    panel.title(spec.title).unit(spec.unit).datasource(DATASOURCE).height(8)
    panel.span(6 if spec.viz is Viz.stat else 12)
    if desc:
        panel.description(desc)
    legends = spec.legend if isinstance(spec.legend, tuple) else (spec.legend,) * len(spec.exprs)
    if len(legends) != len(spec.exprs):
        raise ValueError(
            f"panel {spec.title!r}: {len(legends)} legends for {len(spec.exprs)} targets"
        )
    for i, (expr, legend) in enumerate(zip(spec.exprs, legends, strict=True)):
        panel.with_target(gp.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i)))
    return panel


def build_dashboard(key: str) -> gd.Dashboard:
    """The dashboard ``key`` (``executive``, ``oncall`` or ``debug``) as an SDK builder."""
    title, panels = DASHBOARDS[key]
    board = (
        gd.Dashboard(title)
        .uid(f"opsworld-{key}")
        .tags(["opsworld", key])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            gd.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(kube_deployment_spec_replicas, namespace)")
        )
        .with_variable(
            gd.QueryVariable("deployment")
            .label("Deployment")
            .datasource(DATASOURCE)
            .query(
                'label_values(kube_deployment_spec_replicas{namespace="$namespace"}, deployment)'
            )
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    for spec in panels:
        board.with_panel(_panel(spec))
    return board


def dashboard_json(key: str) -> str:
    """The dashboard ``key`` as Grafana JSON (sorted keys, two-space indent, newline)."""
    model = build_dashboard(key).build()
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"


def write_dashboards(out: Path = OUT_DIR) -> list[Path]:
    """Write every dashboard to ``out/<key>.json``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in DASHBOARDS:
        path = out / f"{key}.json"
        path.write_text(dashboard_json(key))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_dashboards(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(written)
    json.loads(written.read_text())
