"""``make shadow-demo``: shadow mode end to end on the simulator, in about a minute.

Steps (each timed and printed):

1. **history**: two hours of ``chain3`` under the Kubernetes HPA (the cluster's own autoscaler)
   with a flash crowd (3x traffic for 15 minutes from minute 30) and a bad deploy of ``api``
   (20 % errors from minute 75, never rolled back by the HPA), simulated and written as
   OpenMetrics (:func:`envs.live.openmetrics.write_openmetrics`, what ``opsworld simulate
   format=openmetrics`` writes), ending now;
2. **backfill**: ``promtool tsdb create-blocks-from openmetrics`` into a TSDB;
3. **Prometheus** on that TSDB (127.0.0.1, free port), and the **simulator exporter** serving
   the same scenario live (namespace ``opsworld-live``, 60x speed), scraped by it;
4. **bundle**: a tiny PPO trained here (``opsworld train experiment=demo
   total_timesteps=8000``: ``make demo``'s autoscaler with a fifth of its steps, under a minute on
   two idle cores) and exported (``opsworld export run=...``). It is deliberately
   under-trained: the report shows a policy that disagrees with the cluster. ``--rule-bundle``
   exports the rule baseline ``tuned_runbook`` instead (seconds; what the test uses), and
   ``--bundle DIR`` shadows any bundle (e.g. one exported from ``make demo``'s run);
5. **shadow** in replay over the two hours (``opsworld shadow ... start= end=``, i.e.
   :func:`experiments.shadow.run_shadow`: every 15 s of TSDB time, query, decide, guard,
   record; never act), writing ``shadow/audit.jsonl``;
6. **report**: ``opsworld shadow-report`` on that audit (with the simulated counterfactual on
   ``chain3``), and where it is.

Run: ``make shadow-demo`` or ``python -m experiments.shadow_demo --out outputs/shadow_demo``;
``--hours`` shortens the history (the test runs a short one), ``--keep`` leaves Prometheus and
the exporter running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.bundle_export import export_baseline
from agents.evaluation.simulate import json_default
from agents.registry import HPAPolicyConfig, make_policy
from agents.rollout import rollout
from envs.live.openmetrics import write_openmetrics
from envs.live.promserver import backfill, start_prometheus
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.sim.plots import plot_timeline
from envs.sim.simulator import Simulator
from experiments.exporter import start_exporter
from experiments.shadow import run_shadow
from experiments.shadow_report import shadow_report

SCENARIO = "chain3"
NAMESPACE = "opsworld"
"""``namespace`` label of the backfilled history (the query profile's default)."""
LIVE_NAMESPACE = "opsworld-live"
"""``namespace`` label of the live exporter (kept apart from the history)."""
STEP_S = 15.0
"""Shadow tick in TSDB time (the scenario's scrape and decision interval)."""
RULE_BUNDLE_POLICY = "tuned_runbook"
PPO_STEPS = 8_000
"""Training steps of the demo's tiny PPO (``make demo`` trains 40,000)."""
OPSWORLD = Path(sys.executable).with_name("opsworld")


def opsworld(*args: str) -> None:
    """Run an ``opsworld`` command; its output goes to the terminal, a failure raises."""
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    subprocess.run([str(OPSWORLD), *args], check=True, env=env)


def make_bundle(out: Path, rule: bool) -> Path:
    """The demo's bundle in ``out/bundle``: a tiny PPO trained now, or the rule baseline."""
    if rule:
        return export_baseline(
            RULE_BUNDLE_POLICY,
            load_scenario(SCENARIO),
            out / "bundle",
            command=f"opsworld export policy={RULE_BUNDLE_POLICY} scenario={SCENARIO}",
            force=True,
        )
    opsworld(
        "train",
        "experiment=demo",
        f"total_timesteps={PPO_STEPS}",
        "progress_bar=false",
        f"out={out / 'train'}",
    )
    opsworld("export", f"run={out / 'train'}", f"out={out / 'bundle'}", "force=true")
    return out / "bundle"


def demo_scenario(hours: float) -> Scenario:
    """``chain3`` for ``hours`` with a flash crowd and a bad deploy (scaled to the window)."""
    horizon = hours * 3600.0
    return load_scenario(
        SCENARIO,
        {
            "horizon_s": horizon,
            "faults": [
                {
                    "kind": "flash_crowd",
                    "at_s": 0.25 * horizon,
                    "factor": 3.0,
                    "ramp_s": 60.0,
                    "duration_s": 0.125 * horizon,
                },
                {
                    "kind": "bad_deploy",
                    "at_s": 0.625 * horizon,
                    "service": "api",
                    "error_rate": 0.2,
                },
            ],
        },
    )


def run_shadow_replay(
    bundle: Path, prometheus_url: str, start: float, end: float, out: Path
) -> dict[str, Any]:
    """``opsworld shadow`` in replay over ``[start, end]`` of the TSDB; its summary."""
    return run_shadow(
        {
            "bundle": str(bundle),
            "prometheus": prometheus_url,
            "namespace": NAMESPACE,
            "start": str(start),
            "end": str(end),
            "step_s": STEP_S,
            "out": str(out),
        }
    )


def demo(
    out: Path,
    hours: float = 2.0,
    bundle: Path | None = None,
    keep: bool = False,
    rule_bundle: bool = False,
    say: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run the demo in ``out``; returns the timings, shadow totals and report paths."""
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now
        say(f"  {name:<10} {timings[name]:6.1f} s")

    scenario = demo_scenario(hours)
    say(f"opsworld shadow demo in {out}")
    # 1. history, ending now
    result = rollout(Simulator(scenario), make_policy("hpa", scenario))
    start = float(int(time.time() - scenario.horizon_s - 60))
    end = start + scenario.horizon_s
    history = out / "history"
    history.mkdir(exist_ok=True)
    om = write_openmetrics(
        result.frames, tuple(scenario.service_names), history / "metrics.om", start, NAMESPACE
    )
    plot_timeline(
        result.frames,
        scenario,
        history / "timeline.png",
        actions=result.actions,
        faults=result.faults,
    )
    lap("history")
    # 2. backfill (into a fresh TSDB: blocks of an earlier run, shifted in time, would mix in)
    tsdb = out / "tsdb"
    for stale in (tsdb, out / "prometheus"):
        shutil.rmtree(stale, ignore_errors=True)
    backfill(om, tsdb)
    lap("backfill")
    # 3. Prometheus on the TSDB, the live exporter scraped by it
    prom = start_prometheus(out / "prometheus", data_dir=tsdb)
    exporter = None
    try:
        exporter = start_exporter(
            {
                "scenario": SCENARIO,
                "policy": HPAPolicyConfig(),
                "port": 0,
                "speed": 60.0,
                "namespace": LIVE_NAMESPACE,
                "horizon_s": scenario.horizon_s,
                "scenario_overrides": {
                    "faults": [f.model_dump(mode="json") for f in scenario.faults]
                },
            }
        )
        prom.set_targets({"opsworld-exporter": [exporter.url.removeprefix("http://")]})
        lap("start")
        # 4. bundle
        if bundle is None:
            bundle = make_bundle(out, rule_bundle)
        lap("bundle")
        # 5. shadow over the history
        audit = out / "shadow" / "audit.jsonl"
        for old in audit.parent.glob("audit.jsonl*"):
            old.unlink()
        stats = run_shadow_replay(bundle, prom.url, start + 60.0, end, audit.parent)
        lap("shadow")
        live = prom.wait_for(
            f'count(kube_deployment_spec_replicas{{namespace="{LIVE_NAMESPACE}"}})', timeout=30
        )
        # 6. report
        rep = shadow_report(
            {
                "audit": str(audit),
                "out": str(out / "report"),
                "scenario": SCENARIO,
                "bundle": str(bundle),
            }
        )
        lap("report")
        summary = {
            "hours": hours,
            "timings_s": timings,
            "total_s": sum(timings.values()),
            "shadow": stats,
            "live_exporter_deployments": int(float(live[0]["value"][1])),
            "prometheus": prom.url,
            "exporter": exporter.url,
            "bundle": str(bundle),
            "audit": str(audit),
            "report": {k: str(v) for k, v in rep["paths"].items()},
            "counterfactual": {
                k: {m: v[m] for m in ("slo_violation_min", "allocated_cost_total")}
                for k, v in rep["counterfactual"].get("runs", {}).items()
            },
        }
        (out / "demo.json").write_text(json.dumps(summary, indent=2, default=json_default))
        say(
            f"shadow: {stats['ticks']} ticks, {stats['records']} audit records, "
            f"{stats['actuations']} actuations, agreement {stats['agreement']}"
        )
        say(f"History:  {history / 'timeline.png'}  (what the cluster went through)")
        say(f"Audit:    {audit}")
        say(f"Report:   {rep['paths']['html']}  (+ report.md, summary.json)")
        say(f"Total:    {summary['total_s']:.1f} s")
        if keep:
            say(f"Prometheus {prom.url} and the exporter {exporter.url} run until Ctrl-C")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return summary
    finally:
        if exporter is not None:
            exporter.close()
        prom.stop()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run :func:`demo`."""
    parser = argparse.ArgumentParser(prog="python -m experiments.shadow_demo")
    parser.add_argument("--out", type=Path, default=Path("outputs/shadow_demo"))
    parser.add_argument("--hours", type=float, default=2.0, help="history length (hours)")
    parser.add_argument("--bundle", type=Path, default=None, help="shadow this bundle instead")
    parser.add_argument("--keep", action="store_true", help="leave Prometheus running")
    parser.add_argument(
        "--rule-bundle", action="store_true", help=f"shadow {RULE_BUNDLE_POLICY}, no training"
    )
    args = parser.parse_args(argv)
    if not args.hours > 0:
        parser.error(f"--hours must be > 0, got {args.hours}")
    demo(args.out, args.hours, args.bundle, args.keep, args.rule_bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
