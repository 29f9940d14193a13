"""The live side of the world: the simulator as a Prometheus target, and Prometheus as a source.

* :mod:`envs.live.cluster_metrics`: Telemetry frames -> series under real cluster names
  (kube-state-metrics, cAdvisor, the services' own HTTP metrics);
* :mod:`envs.live.exporter`: the simulator in wall-clock time behind ``/metrics``;
* :mod:`envs.live.openmetrics`: a simulated run as OpenMetrics text for ``promtool`` backfill;
* :mod:`envs.live.profile` and :mod:`envs.live.prometheus`: a query profile (PromQL ->
  Telemetry fields) and the Telemetry source over Prometheus' HTTP API.

See ``docs/live.md``.
"""
