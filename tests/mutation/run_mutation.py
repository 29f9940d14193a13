"""``make mutation``: mutation testing (mutmut) of the modules where a wrong number is silent.

Each module is mutated in its own scratch copy of the work tree (``build/mutation/<name>``),
with its own fast test subset (mutmut then runs, for each mutant, only the tests of that
subset that reach the mutated function). Scores and the surviving mutants, each with the
reason it is equivalent (or marked unexplained), go to ``experiments/results/mutation.md``.

Usage: ``python tests/mutation/run_mutation.py [name ...] [--children N]`` (default: every
module of :data:`MODULES`). Not part of ``make test``: it takes minutes per module.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "mutation"
RESULTS = REPO / "experiments" / "results" / "mutation.md"
STATE = BUILD / "scores.json"


@dataclass(frozen=True)
class Module:
    """A module to mutate and the tests that must kill its mutants."""

    path: str
    tests: tuple[str, ...]
    pytest_args: tuple[str, ...] = ()
    timeout_multiplier: float | None = None
    """mutmut's CPU-time limit per mutant is (tests' time + 1 s) x this x 2 (mutmut: 15);
    lower it where a mutant can loop forever while allocating (the engine's scrape loop)."""
    only: tuple[str, ...] = ()
    """Globs of mutant names (``mutmut run`` takes them) to run instead of the whole module:
    the scope is then these functions only; the other mutants of the file stay unchecked
    and are not counted."""


MODULES: dict[str, Module] = {
    "queueing": Module(
        "envs/sim/queueing.py",
        ("tests/test_queueing.py", "tests/test_truth.py::test_exact_quantiles_hand_values"),
    ),
    "forecast_metrics": Module(
        "agents/world_model/forecast_metrics.py",
        ("tests/test_forecast.py", "tests/test_forecast_scoring.py"),
        ("-k", "not tiny_setup and not end_to_end and not collect and not run_episode"),
    ),
    "scoring": Module("envs/scenarios/scoring.py", ("tests/test_scoring.py",)),
    "engine": Module(
        "envs/sim/engine.py",
        (
            # the scrape, advance and make_engine by exact values on a scripted data plane,
            # and both real engines' seeding, on 2 s runs (about 2 s in all)
            "tests/test_engine_scrape.py",
            "tests/test_truth.py::test_p50_and_p95_differ_where_latency_varies",
            "tests/test_truth.py::test_run_stats_skips_its_warmup_by_values",
        ),
        # a mutant of advance's scrape loop (`_next_scrape -= ...`) scrapes forever, growing
        # its frame list by megabytes a second: stop it after about 20 s, not 100
        timeout_multiplier=3.0,
    ),
    "request": Module(
        "envs/sim/request.py",
        # hand-timed tiny scenarios with exact counters, in-flight counts and latencies, and
        # the source and samplers against their random stream (about 2 s in all)
        ("tests/test_request_counts.py",),
        # a mutant of the source's clock (t moving backwards) spawns clients without end in
        # one instant, growing memory fast: stop it after about 20 s, not 100
        timeout_multiplier=3.0,
    ),
    "hpa": Module("envs/kube/hpa.py", ("tests/test_hpa.py", "tests/test_hpa_boundaries.py")),
    "fluid": Module(
        "envs/sim/fluid.py",
        # single-service cases and hand-made segments by exact values (about 2 s in all)
        ("tests/test_fluid_counts.py",),
        # the counters, quantiles and histogram of a scrape, and the backlog's time average,
        # only: the rest of the file (the segment solver, the escape) needs runs of tens of
        # seconds per mutant
        only=(
            "envs.sim.fluid.xǁFluidEngineǁ_read_data_plane*",
            "envs.sim.fluid.xǁFluidEngineǁ_law*",
            "envs.sim.fluid.x__mean_backlog*",
        ),
    ),
    "codec": Module(
        "envs/gym/codec.py",
        ("tests/test_codec.py", "tests/test_codec_values.py", "tests/test_gym_envs.py"),
        # the slow ones train or load policies, or run subprocesses: not about the codec's
        # arithmetic, and 5-40 s each per mutant
        (
            "-k",
            "not trained_policies and not imports_neither and not block_itself "
            "and not sb3 and not render and not subproc and not vector and not docs_envs_page",
        ),
    ),
}
NOT_SCORED = (
    "`envs/sim/fluid.py` outside FluidEngine._read_data_plane, FluidEngine._law and "
    "_mean_backlog (the segment solver, the escape from retry-sustained overload, the "
    "barrier): its mutants need simulation runs of tens of seconds each (hours on a shared "
    "2-core machine)."
)

# envs/sim/request.py: RequestEngine.__init__'s placeholders for the per-service state
_REQUEST_INIT_STATE = (
    r"^self\.(pools = \[SlotPool\(self\.env, \d\) for _ in range\(n\)\]|"
    r"(_ready|_qcap|_lat_factor|_err|_own_busy) = (None|\[[\d.]+\] \* n)|"
    r"_shed = (None|[\d.]+)|_edge_fault: .* = None)$"
)

# envs/sim/fluid.py: _mean_backlog's branch tests that cannot change the value returned
_FILL_AT_ZERO = r"^t_fill = np\.where\(net >= 0, \(cap - b0\) / net, np\.inf\)$"
_EMPTY_OFF_BRANCH = r"^t_empty = np\.where\(net (<= 0|< 1), b0 / -net, np\.inf\)$"
_AT_THE_BOUNDARY = r"^t_fill > dt,$|^drain_avg = np\.where\(t_empty > dt, "

# Surviving mutants that cannot change a result, recognised by the mutated line.
EQUIVALENT: list[tuple[str, str]] = [
    (
        _REQUEST_INIT_STATE,
        "placeholders: an engine runs only after Engine.start(), which calls "
        "capacity_changed() (slots, ready pods, queue places, latency factors, error rates, "
        "shedding, edge faults) and then scrapes t = 0 (which resets the busy time; that "
        "first frame has no interval, so its busy time is not read) before any event",
    ),
    (r"np\.errstate\(", "only decides whether numpy warns; the value is the same"),
    # envs/sim/fluid.py
    (
        r"^cdf = np\.nan_to_num\(cdf, \)$",
        "nan_to_num's default nan is 0.0; a CDF holds no infinities for it to change",
    ),
    (r"^pmf = np\.diff\(cdf, prepend=0\.0, \)$", "np.diff's default axis is -1, axis 1 here"),
    (
        _FILL_AT_ZERO,
        "at net = 0 the growth branch is not taken (the final where gives b0 unless net > 0)",
    ),
    (
        _EMPTY_OFF_BRANCH,
        "the drain branch is taken only for net < 0, where this test is unchanged",
    ),
    (
        _AT_THE_BOUNDARY,
        "full (empty) exactly at dt: both branches give the same mean, (b0 + cap) / 2 = "
        "b0 + net dt / 2 (b0 / 2 = b0 + net dt / 2)",
    ),
    (
        r"^return np\.maximum\(np\.where\(net >= 0, grow_avg, ",
        "at net = 0 the growth branch gives b0 (its t_fill is inf by its own net > 0 test)",
    ),
    (
        r"np\.where\(net (<= 0|< 1), drain_avg, b0\)\), 0\.0\)$",
        "reached only for net <= 0, and at net = 0 the drain branch gives b0 (its t_empty is "
        "inf by its own net < 0 test)",
    ),
    (
        r"np\.asarray\([a-z_]+, (dtype=None)?\)",
        "dropping dtype=float64: every caller passes floats or ints that numpy promotes",
    ),
    (r"z = None$|_Z\.get\(None\)", "ndtri(q) gives the tabulated z to the last bit"),
    (r"if z is not None", "recomputes the same tabulated z (untabulated levels are tested)"),
    (
        r"xs = np\.where\(finite, x, 1\.0\)|np\.where\(finite, np\.maximum\(u, 0\.0\), 1\.0\)",
        "the infinite-cap branch is replaced by k*theta in the final np.where",
    ),
    (r"np\.where\(x >= 0, special\.gammaincc", "gammaincc(k, 0) = 1, the value of the else branch"),
    (r"abs\(g - mu\) <= 1e-12", "differs only when |g - mu| is exactly 1e-12"),
    (
        r"np\.where\((None|a > c), 1\.0, np\.clip|np\.clip\(out, (None|0\.0), (None|1\.0|2\.0)\)",
        "for a >= c, B(c, a) >= 1 - c/a makes the formula >= 1, which the clip brings to 1; "
        "below c it is in [0, 1] already",
    ),
    (
        r"np\.where\((None|a < 0), 0\.0, b\)",
        "at a = 0 the formula gives exp(-inf) / 1 = 0 too (tested: erlang_b(3, 0) == 0)",
    ),
    (r"np\.where\(a >= 0, wq", "at a = 0 the Erlang-C wait is 0 anyway"),
    (r"if a > c:", "a = c: c mu - lam = 0 divides by zero and gives inf, also refused"),
    (r'float\("NAN"\)', 'float("NAN") is the same NaN'),
    (
        r"or True else float\(\"nan\"\)",
        "nanmean of an all-NaN array is NaN too (it only warns)",
    ),
    (r"\.astype\(None\)", "astype(None) is float64, the type asked for"),
    (
        r"right=None|np\.digitize\(p, edges\[1:-1\], \)",
        "right=None and the default are both right=False",
    ),
    (
        r"np\.clip\(np\.digitize\(p, edges\[1:-1\], right=False\), "
        r"(None, n_bins - 1|0, None|0, n_bins \+ 1)\)",
        "digitize over the inner edges already returns 0 .. n_bins - 1 for p in [0, 1]",
    ),
    (r"np\.sort\(np\.asarray\(samples, dtype=np\.float64\), \)", "np.sort's default axis is -1"),
    # envs/scenarios/scoring.py
    (
        r"entry_p99\(result, (None)?\)",
        "without the timeline entry_p99 recomputes the same per-interval p99 by the same rule "
        "(tested: test_entry_p99_without_an_slo_on_the_entry_reads_gauges_and_histograms)",
    ),
    (r"frames\[1\]\.services", "every frame of a run lists the same services in the same order"),
    (r"np\.where\(finished >= 0, bad / finished", "finished = 0 means bad = 0: 0 / 0 is NaN too"),
    (
        r"np\.clip\(cur\.histogram\[rows?\] - prev\.histogram\[rows?\], "
        r"(None, None|None|0\.0, )\)",
        "a cumulative histogram never decreases from one frame of a run to the next, so the "
        "delta is >= 0 and the clip at 0 never binds (np.clip(x, 0.0) has no upper bound either)",
    ),
    (
        r"violating=np\.asarray\(svc_bad\.any\(axis=1\), (dtype=None)?\)",
        "ndarray.any already returns bools",
    ),
    (
        r"np\.asarray\(list\(values\), (dtype=None)?\)",
        "trim_mean gives the same float for ints and floats",
    ),
    (
        r"v = float\(statistic\(x, (axis=None)?\)\)",
        "x is 1-D: the statistic reduces its only axis either way",
    ),
    (
        r"np\.where\(finished > 0, bad / finished, None\)",
        "assigned into the float array err, None becomes NaN",
    ),
    (
        r"t_start\[:2\]",
        "t_start[1] equals t_end[0]: a duplicate scrape time moves no first scrape at or after",
    ),
    (
        r"scenario\.topology\.services\], (None)?\)",
        "replica counts are whole numbers, which an int array holds exactly",
    ),
    (
        r"^ready = (None|1\.0)$",
        "read only for a Scale, which sets it first (is_disruptive ignores it otherwise)",
    ),
    # envs/gym/codec.py
    (
        r"zip\((col\.tolist\(\), old|frame\[\"replicas_desired\"\]\.tolist\(\), self\.desired|"
        r"self\.services, a\[:-1\]|self\.targets\(action\)\.items\(\), known), "
        r"(strict=(None|False))?\)",
        "strict= only raises on a length mismatch, and both sides hold one entry per service "
        "(the frame's services are the belief's; the action was checked against the space)",
    ),
    (
        r"vectorized=(None|False)",
        "scipy infers vectorized=True from the statistic's axis argument (None), or loops "
        "over the same resamples (False): the same interval",
    ),
    # envs/kube/hpa.py
    (
        r"\(ratio <=? 1\.0 <=? new_ratio\) or \(ratio >=? 1\.0 >=? new_ratio\)",
        "a recomputed ratio of exactly 1 is within every tolerance and returned before; a "
        "ratio of exactly 1 gets here only with missing pods, which then get no value, so the "
        "recomputed ratio is 1 too: < and <= differ on no input that gets here",
    ),
    (
        r"new_ratio (<=|>=) 1\.0 and new_replicas [<>] current_replicas",
        "a recomputed ratio of exactly 1 is within every tolerance and returned before",
    ),
    (
        r"if rec\.t <=? up_cutoff and rec\.t <=? down_cutoff:$",
        "a recommendation exactly at a cutoff is outside that window now and at every later "
        "sync (cutoffs only move forward): keeping it or reusing its slot changes no "
        "stabilised count",
    ),
    (
        r"if recommendation (<=|>=) (up|down)_rec:$|elif rec\.replicas >= best:$|"
        r"if proposal == 0 or calc\.replicas >= proposal:$",
        "on equality it assigns the value the variable already holds",
    ),
    (
        r"^if desired >= current:$|^elif desired <= current:$",
        "desired = current: reconcile calls this only for min <= current <= max, where the "
        "allowance is >= current on the way up and <= current on the way down, so desired = "
        "current comes back unchanged either way",
    ),
    (
        r"^(if desired >= current:)$",
        "inside `if desired != current`: desired = current never gets here",
    ),
    (
        r"replace\(e, outdated=True\) if e\.t <= cutoff else e",
        "an event exactly longest-period old is outside every policy's period now and later "
        "(changes count strictly after now - period): reusing its slot changes no limit",
    ),
    (
        r'^spec_lo: int \| None = ""$',
        "spec_lo stays unset only without replica_bounds: `spec_lo or 1` reads '' as it reads "
        "None, and the range check also needs spec_hi, which is None then",
    ),
    (
        r'max\(1, spec_lo or 1\), (None|"XXmin_replicasXX"|"MIN_REPLICAS")\)$',
        "min_replicas always has a default (at least 1): _bound never raises for it, so the "
        "name of the field in its message is never read",
    ),
    (
        r"^return HPAState\(\{s: ServiceState\(\) for s in self\.services\}, \)$",
        "HPAState.next_sync_t defaults to None",
    ),
    (
        r"^per_pod_request, starting_usage, ready=False, started_ago_s=0\.0, "
        r"(ready_changed_ago_s=None|\))$",
        "no transition time and a transition at the start time are read alike (never "
        "transitioned since the start)",
    ),
    (
        r'PodSample\(per_pod_request, None, phase="Pending", \)',
        "a Pending pod is unready by its phase before its readiness is read",
    ),
    (
        r"^PodSample\(per_pod_request, None, (ready=(None|True|False), )?"
        r"(started_ago_s=(None|math\.inf))?\)$",
        "a pod without a metric is missing before its readiness or start time is read",
    ),
    # envs/gym/codec.py (its zip(strict=) rule is above)
    (
        r'^elif layout (!=|==) "(XXcluster_opsXX|CLUSTER_OPS|cluster_ops)":$',
        "cluster_ops and hpa_tune have the same nvec: 5 deltas or 5 targets per service "
        "(len(SCALE_DELTAS) = len(HPA_TARGETS)), then the remediation",
    ),
    (
        r'^if self\.layout == "(XXremediateXX|REMEDIATE)":$',
        "for remediate the general path concatenates an empty free part (nvec[:-1] is empty) "
        "with the same remediation mask",
    ),
    (
        r"^known = belief\.hpa_targets or \(1,\) \* len\(self\.services\)$",
        "HPA_TARGETS holds neither 0 nor 1: with no target known, every service gets one "
        "either way",
    ),
    (r"^m\[base - 0, 3 \* svc \+ 1\] = 1\.0", "base - 0 is base + 0"),
    (
        r"^a = np\.asarray\(action, dtype=np\.int64\)\.reshape\(None\)$",
        "actions come as a scalar, (n,) or SB3's (1, n) batch: the offsets broadcast to the "
        "same one-hot entries without the reshape",
    ),
    (
        r"^a = np\.asarray\(action, dtype=np\.int64\)\.reshape\(-2\)$",
        "NumPy reads a negative size as the one to infer, as -1",
    ),
    (
        r"^a = np\.asarray\(action, (dtype=None)?\)\.reshape\(-1\)$",
        "every caller passes integer indices (Gymnasium samples, ActionSpec.to_env), which "
        "NumPy holds as int64 already",
    ),
    (
        r"^onehot = np\.zeros\(len\(self\._matrix\), (dtype=None)?\)$",
        "a float64 one-hot gives a float64 product that is cast to float32: each feature sums "
        "at most two float32 entries (a delta and a remediation's scale-up), exact in float64, "
        "so the cast gives the float32 sum",
    ),
]


def _copy_tree(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if dst.exists():
        shutil.rmtree(dst)
    for f in files:
        if f.startswith("experiments/results/") or not (REPO / f).is_file():
            continue
        target = dst / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)


def _config(mod: Module) -> str:
    lines = [
        "",
        "[tool.mutmut]",
        f"source_paths = [{json.dumps(mod.path)}]",
        'also_copy = ["envs", "agents", "experiments", "configs"]',
        # the hypothesis profile `mutation` (tests/conftest.py): no shrinking, no deadline
        "pytest_add_cli_args = "
        + json.dumps(["-p", "no:xdist", "-q", "--hypothesis-profile=mutation", *mod.pytest_args]),
        f"pytest_add_cli_args_test_selection = {json.dumps(list(mod.tests))}",
    ]
    if mod.timeout_multiplier is not None:
        lines.append(f"timeout_multiplier = {mod.timeout_multiplier}")
    return "\n".join(lines) + "\n"


def _mutmut(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [str(exe), *args], cwd=work, capture_output=True, text=True, env=env, check=False
    )


# Surviving mutants that only delete a line (no added line), recognised by the deleted line.
EQUIVALENT_DELETED: list[tuple[str, str]] = [
    (r"^vectorized=True,$", "scipy infers vectorized=True from the statistic's axis argument"),
]


# Patterns of EQUIVALENT that hold only when the original line is the one named here.
ORIGINAL_MUST_MATCH: dict[str, str] = {
    r"\.astype\(None\)": r"\.astype\((np\.float64|float)\)",
    r"np\.asarray\([a-z_]+, (dtype=None)?\)": r"dtype=np\.float64",
}


# Patterns of EQUIVALENT that hold only in the function named here (the mutant's name).
ONLY_IN: dict[str, str] = {
    _FILL_AT_ZERO: r"^envs\.sim\.fluid\.x__mean_backlog__mutmut_",
    _EMPTY_OFF_BRANCH: r"^envs\.sim\.fluid\.x__mean_backlog__mutmut_",
    _AT_THE_BOUNDARY: r"^envs\.sim\.fluid\.x__mean_backlog__mutmut_",
    r"^return np\.maximum\(np\.where\(net >= 0, grow_avg, ": r"^envs\.sim\.fluid\.x__mean_backlog",
    r"np\.where\(net (<= 0|< 1), drain_avg, b0\)\), 0\.0\)$": r"^envs\.sim\.fluid\.x__mean_backlog",
    _REQUEST_INIT_STATE: r"^envs\.sim\.request\.xǁRequestEngineǁ__init____mutmut_",
    r'^if self\.layout == "(XXremediateXX|REMEDIATE)":$': r"ǁmasks__mutmut_",
    r'^elif layout (!=|==) "(XXcluster_opsXX|CLUSTER_OPS|cluster_ops)":$': r"ǁ__init____mutmut_",
    r"^if desired >= current:$|^elif desired <= current:$": r"x_convert_desired_replicas_with_",
    r"^(if desired >= current:)$": r"\.x_reconcile__mutmut_",
}


# Surviving mutants equivalent in one module only: (module path, pattern of an added line,
# pattern the removed lines must match, reason). For rules that would be too broad elsewhere.
EQUIVALENT_IN_MODULE: list[tuple[str, str, str, str]] = [
    (
        "envs/sim/request.py",
        r"^super\(\)\.__init__\(env, (capacity=max\(capacity, 2\))?\)$",
        r"capacity=max\(capacity, 1\)",
        "simpy keeps a Resource's capacity in `_capacity`, which the next line sets to the "
        "slots asked for (simpy refuses 0, hence the max; tested: a pool of 0 slots has 0)",
    ),
    (
        "envs/sim/request.py",
        r"^grew = capacity >= self\._capacity$",
        r"",
        "at an unchanged capacity a put trigger admits nobody: a request waits in the queue "
        "only while every slot is taken",
    ),
    (
        "envs/sim/request.py",
        r"^self\._i = 1$",
        r"^self\._i = 0$",
        "the buffer starts empty, so the first call refills it and sets the index to 0",
    ),
    (
        "envs/sim/request.py",
        r"^self\._ready\[s\] = None$",
        r"",
        "read only by _attempt's drop test, whose other half drops too when no pod is ready "
        "(0 slots, 0 queue places)",
    ),
    (
        "envs/sim/request.py",
        r"uniform\(\) <= |uniform\(\) > prob|^if nxt > tick_end:",
        r"uniform\(\) < |uniform\(\) >= prob|^if nxt >= tick_end:",
        "differs only when a uniform draw (53 random bits) equals its threshold exactly, or an "
        "exponential gap ends exactly at a tick's end: probability about 1e-16 per draw",
    ),
    (
        "envs/sim/request.py",
        r"^if k < 0:$",
        r"^if k <= 0:$",
        "k = 0 then draws a choice of no pod and dooms nobody",
    ),
    (
        "envs/sim/request.py",
        r"^picks = self\.data_rng\.choice\(len\(users\), size=k, replace=None\)$",
        r"",
        "numpy reads replace=None as false: without replacement, as asked",
    ),
    (
        "envs/sim/request.py",
        r"^while t < horizon and tick <= n_ticks:$",
        r"",
        "the rates cover ceil(horizon / resolution) + 1 ticks: the clock passes the horizon "
        "(the first condition) before the tick count reaches their number",
    ),
    (
        "envs/sim/request.py",
        r"^if t >= env\.now:$",
        r"^if t > env\.now:$",
        "t = now only when an exponential gap is 0 or below t's last bit; the timeout of 0 "
        "then starts the client at the same instant",
    ),
    (
        "envs/sim/request.py",
        r"^(ok|lost) = None\b|done\.succeed\(None\)$",
        r"^(ok|lost) = False\b|done\.succeed\(False\)$",
        "None and False are read alike: every reader tests the value's truth (`if ok`, "
        "`if lost`, the caller's `ok = yield done` and `ok = yield from`)",
    ),
    (
        "envs/sim/request.py",
        r"path\[2\] if \(path is not None\) or True else 0\.0|"
        r"path\[2\] if path is not None else 1\.0",
        r"path\[2\] if path is not None else 0\.0",
        "a call is lost only on a degraded path (`lost` starts False): path is never None here",
    ),
    (
        "envs/sim/request.py",
        r"if \(self\._edge_fault\[s\]\) or True else None$",
        r"",
        "without a degraded edge from s, get() on its empty dict gives None too",
    ),
    (
        "envs/sim/request.py",
        r"^return np\.array\(self\._alive, (dtype=(None|np\.float64))?\) - "
        r"np\.array\(self\._abandoned, (dtype=(None|np\.float64))?\)$",
        r"",
        "one operand is still float64, so the difference is float64 anyway (tested: the "
        "frames' in_flight is float64)",
    ),
    (
        "envs/sim/request.py",
        r"^idx = np\.searchsorted\(_BOUNDS, a, \)$",
        r'side="left"',
        'searchsorted\'s default side is "left"',
    ),
    (
        "envs/sim/request.py",
        r"^backlog = np\.array\(\[len\(p\.queue\) for p in self\.pools\], (dtype=None)?\)$",
        r"",
        "the backlog is only assigned into the scrape's float gauge array",
    ),
    (
        "envs/sim/engine.py",
        r"^self\.concurrency = np\.array\(\[s\.pod\.concurrency for s in specs\], "
        r"(dtype=None)?\)$",
        r"dtype=np\.float64",
        "worker slots are whole numbers: as ints they divide the busy cores (the scrape) and "
        "multiply ready pods into slots (the fluid engine's c, which erlang_c casts to "
        "float64) to the same floats (checked: fluid chain3 at 0.8 and 1.3, boutique at 0.7, "
        "600 s, frames bit-identical with int slots)",
    ),
    (
        "envs/sim/engine.py",
        r"^self\._last_scrape = 1\.0$",
        r"self\._last_scrape = 0\.0",
        "start() scrapes at t = 0 first, where dt = -1 fails the same `dt > 0` guards as "
        "dt = 0, and that scrape sets _last_scrape = 0",
    ),
    (
        "envs/sim/engine.py",
        r"^self\._next_scrape = (None|1\.0)$",
        r"self\._next_scrape = 0\.0",
        "start() sets it to the scrape interval before anything reads it",
    ),
    (
        "envs/sim/engine.py",
        r"^while self\._next_scrape < target \+ _EPS:$|^if target >= self\.env\.now \+ _EPS:$",
        r"",
        "differs only when the two times are exactly 1e-9 s apart",
    ),
    (
        "envs/sim/engine.py",
        r"np\.where\(finished >= 0, \(d\[:, 2\] \+ d\[:, 3\]\) / finished, np\.nan\)",
        r"",
        "finished = 0 means failed + dropped = 0: 0 / 0 is NaN (warnings off), the value of "
        "the else branch",
    ),
    (
        "envs/sim/engine.py",
        r"np\.where\(ready > 0, usage / \(ready \* self\.cpu_req\), None\)|"
        r"ready > 0, resident \+ self\.mem_per_req \* r\.in_flight, None|"
        r"np\.where\(np\.isnan\(self\.slo_p99\), None, self\.violation_s\)",
        r"",
        "assigned into the float gauge array v, None becomes NaN",
    ),
    (
        "envs/sim/engine.py",
        r"^if dt >= 0:$",
        r"^if dt > 0:$",
        "the SLO-violation clock's guard: at dt = 0 (the frame at t = 0) it adds "
        "where(bad, 0, 0) = 0. (The rates' guard has the same text; its mutant is killed: "
        "rps = 2 / 0 = inf at t = 0 in tests/test_engine_scrape.py)",
    ),
    (
        "envs/sim/engine.py",
        r"^dtype=None,$|^\)$",
        r"^dtype=np\.float64, ?\)?$",
        "the cluster row (the only multi-line dtype=np.float64 here) holds float meters "
        "(cost rate, cost, pod-seconds): numpy makes it float64 without the dtype",
    ),
]


def _explain(diff: list[str], mutant: str = "", module: str | None = None) -> str | None:
    """Why a survivor is equivalent (None: unexplained).

    ``mutant`` is its name (for ONLY_IN), ``module`` its path (for EQUIVALENT_IN_MODULE).
    """
    added = [ln[1:].strip() for ln in diff if ln.startswith("+ ")]
    removed = " ".join(ln[1:].strip() for ln in diff if ln.startswith("- "))
    for path, pattern, removed_pattern, reason in EQUIVALENT_IN_MODULE:
        hit = any(re.search(pattern, ln) for ln in added)
        if path == module and hit and re.search(removed_pattern, removed):
            return reason
    for line in added:
        for pattern, why in EQUIVALENT:
            need = ORIGINAL_MUST_MATCH.get(pattern)
            where = ONLY_IN.get(pattern)
            if where is not None and not re.search(where, mutant):
                continue
            if re.search(pattern, line) and (need is None or re.search(need, removed)):
                return why
    if not added:
        for line in (ln[1:].strip() for ln in diff if ln.startswith("- ")):
            for pattern, why in EQUIVALENT_DELETED:
                if re.search(pattern, line):
                    return why
    return None


def run_module(name: str, children: int) -> dict[str, object]:
    """Mutate one module; returns its counts and survivors."""
    mod = MODULES[name]
    work = BUILD / name
    _copy_tree(work)
    with (work / "pyproject.toml").open("a") as fh:
        fh.write(_config(mod))
    start = time.monotonic()
    run = _mutmut(work, "run", "--max-children", str(children), *mod.only)
    wall = time.monotonic() - start
    if run.returncode != 0:
        tail = run.stdout[-3000:] + run.stderr[-3000:]
        raise SystemExit(f"mutmut run failed for {name}:\n{tail}")
    _mutmut(work, "export-cicd-stats")
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    if mod.only:
        # mutmut counts every mutant of the file in `total`: count those of the scope
        listed = _mutmut(work, "results", "--all", "true").stdout.splitlines()
        names = [ln.split(":", 1)[0].strip() for ln in listed if ":" in ln]
        stats["total"] = sum(any(fnmatch.fnmatch(n, g) for g in mod.only) for n in names)
    survivors = []
    for line in _mutmut(work, "results").stdout.splitlines():
        m = re.match(r"\s*(\S+): (survived|no tests|timeout|suspicious)", line)
        if not m:
            continue
        diff = _mutmut(work, "show", m.group(1)).stdout
        changed = [ln for ln in diff.splitlines() if ln.startswith(("- ", "+ "))]
        survivors.append({"id": m.group(1), "status": m.group(2), "diff": changed})
    return {
        "module": mod.path,
        "tests": list(mod.tests),
        "wall_s": round(wall, 1),
        **stats,
        "survivors": survivors,
    }


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    py = platform.python_version()
    return (
        f"{cpu}, {os.cpu_count()} cores, load average {load:.1f} when this report was written "
        f"(each module's wall s is from its own run); Python {py}"
    )


def _earlier_report() -> dict[str, dict[str, list[str]]]:
    """Per module path, the row, note and survivors section of the report on disk.

    ``scores.json`` lives in ``build/`` (not committed), so a run of one module on a fresh
    checkout knows only that module's scores: the other modules keep what the committed
    report says about them.
    """
    kept: dict[str, dict[str, list[str]]] = {}
    if not RESULTS.exists():
        return kept
    section: list[str] | None = None
    for line in RESULTS.read_text().splitlines():
        head = re.match(r"## Survivors in `([^`]+)`$", line)
        if head:
            section = kept.setdefault(head.group(1), {}).setdefault("section", [])
            section.append(line)
        elif section is not None:
            section.append(line)
        elif m := re.match(r"\| `([^`]+)` \|", line):
            kept.setdefault(m.group(1), {})["row"] = [line]
        elif m := re.match(r"`([^`]+)`: ", line):
            kept.setdefault(m.group(1), {})["note"] = [line]
    for parts in kept.values():
        while parts.get("section") and not parts["section"][-1].strip():
            parts["section"].pop()
    return kept


def _scored_parts(s: dict[str, object]) -> dict[str, list[str]]:
    """The row, note and survivors section of one module scored by this runner."""
    surv = s["survivors"]
    assert isinstance(surv, list)
    module = str(s["module"])
    eq = sum(1 for x in surv if _explain(x["diff"], x["id"], module))
    killed, survived = int(s["killed"]), int(s["survived"])  # type: ignore[call-overload]
    total = killed + survived
    score = killed / total if total else float("nan")
    strict = killed / (total - eq) if total - eq else float("nan")
    tests = ", ".join(f"`{t}`" for t in s["tests"])  # type: ignore[attr-defined]
    parts = {
        "row": [
            f"| `{s['module']}` | {tests} | {s['total']} | {killed} | {survived} | {eq} | "
            f"{score:.1%} | {strict:.1%} | {s['wall_s']} |"
        ]
    }
    if s.get("note"):
        parts["note"] = [f"`{s['module']}`: {s['note']}"]
    if surv:
        parts["section"] = [f"## Survivors in `{s['module']}`", ""]
        for x in surv:
            diff = " / ".join(f"`{d}`" for d in x["diff"])
            why = _explain(x["diff"], x["id"], module) or (
                "loops forever: mutmut's timeout stopped it (detected; counted neither killed "
                "nor survived)"
                if x["status"] == "timeout"
                else "unexplained"
                if x["diff"]
                else "not analysed"
            )
            parts["section"].append(f"* `{x['id']}` ({x['status']}): {diff}: {why}")
    return parts


def write_report(scores: dict[str, dict[str, object]], command: str) -> None:
    """Write ``experiments/results/mutation.md``: the modules scored in ``scores``, and
    for the others what the report on disk says (see :func:`_earlier_report`)."""
    parts = _earlier_report()
    for s in scores.values():
        parts[str(s["module"])] = _scored_parts(s)
    out = [
        "# Mutation testing",
        "",
        f"Command: `{command}` (mutmut, one scratch copy per module under `build/mutation/`)  ",
        f"Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} (of this rewrite; "
        "each module's row is from its own run)  ",
        f"Machine: {_machine()}",
        "",
        "A mutant is killed when a test of the module's subset fails on it. Score = killed /",
        "(killed + survived); survivors equivalent to the original (no test can tell them",
        "apart) are listed with the reason; `unexplained` ones are gaps in the tests.",
        "",
        "| module | tests | mutants | killed | survived | equivalent | score "
        "| score without equivalent | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    out += [line for p in parts.values() for line in p.get("row", [])]
    out += ["", f"Not scored yet: {NOT_SCORED}"]
    out += [f"\n{line}" for p in parts.values() for line in p.get("note", [])]
    for p in parts.values():
        if p.get("section"):
            out += ["", *p["section"]]
    RESULTS.write_text("\n".join(out).rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the named modules (all by default) and rewrite the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"modules to score (default all): {list(MODULES)}")
    ap.add_argument("--children", type=int, default=2)
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from scores")
    args = ap.parse_args(argv)
    names = args.names or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    BUILD.mkdir(parents=True, exist_ok=True)
    scores = json.loads(STATE.read_text()) if STATE.exists() else {}
    if args.report_only:
        write_report(scores, "make mutation")
        return 0
    for name in names:
        print(f"mutation: {name} ...", file=sys.stderr, flush=True)
        scores[name] = run_module(name, args.children)
        STATE.write_text(json.dumps(scores, indent=2))
        write_report(scores, "make mutation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
