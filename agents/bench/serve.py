"""``opsworld bench serve``: the policy server under open-loop constant-rate load.

For each target (``ppo_onnx``, ``ppo_torch``: one PPO bundle on the onnx and torch backends;
``dreamer``: a Dreamer bundle, ``rssm_step.onnx``) the suite

1. starts ``opsworld serve`` in its own process (uvicorn on 127.0.0.1, access log off);
2. for each rate (100 / 500 / 1,000 requests/s by default) runs the load generator
   (:data:`LOADGEN`) in another process for ``duration_s``: an asyncio client over
   ``connections`` keep-alive HTTP/1.1 connections that sends request ``k`` at
   ``start + k / rate`` whatever came back before (open loop), each request one new frame
   of one of ``streams`` streams (every request is a decision); a request's latency runs
   from its scheduled time to the end of its response, so time spent waiting for a free
   connection counts (no coordinated omission);
   Before the measured rates one unmeasured run at the lowest rate warms the server up
   (every stream's first decision, onnxruntime's first calls).
3. reads the server's ``opsworld_policy_inference_seconds`` histogram before and after the
   rate: its mean over the rate's requests is the decision's (policy + guard) share of the
   request time;
4. measures the in-process decision latency (``GuardedPolicy.act`` of the loaded bundle on
   the same frames) and the network call alone (the ONNX session or the torch module).

Figures per target: p50 / p99 / max latency and errors per rate, the highest rate with
p99 under 10 ms and no error, the in-process decision p50 / p99, and the model's share of
the request time at each rate. The page records the load average (the benchmark shares the
machine with whatever else runs on it).

Bundles: ``serve.ppo_run`` / ``serve.dreamer_run`` name trained run dirs to export; null
trains a short run of the default network sizes (latency does not depend on training).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from agents.bench.config import BenchConfig

REPO = Path(__file__).resolve().parents[2]

LOADGEN = r"""
import asyncio, json, sys, time

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rate, duration, n_conn = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
streams, frames_file, out, tag = int(sys.argv[7]), sys.argv[8], sys.argv[9], sys.argv[10]
frames = json.load(open(frames_file))
n = int(rate * duration)
head = "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n" % (path, host, port)
requests = []
for k in range(n):
    step = k // streams
    frame = dict(frames[step % len(frames)])
    frame["t"] = float(15 * step)
    stream = "%s-%d" % (tag, k % streams)  # fresh streams per run: every request decides
    body = json.dumps({"stream_id": stream, "frames": [frame]}).encode()
    requests.append((head + "Content-Length: %d\r\n\r\n" % len(body)).encode() + body)

async def main():
    pool = asyncio.Queue()
    for _ in range(n_conn):
        pool.put_nowait(await asyncio.open_connection(host, port))
    latency = [None] * n
    status = [0] * n

    async def one(k, scheduled):
        reader, writer = await pool.get()
        try:
            writer.write(requests[k])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            status[k] = int(head.split(b" ", 2)[1])
            latency[k] = time.perf_counter() - scheduled
            pool.put_nowait((reader, writer))
        except Exception:
            status[k] = -1
            latency[k] = time.perf_counter() - scheduled
            writer.close()
            pool.put_nowait(await asyncio.open_connection(host, port))

    tasks = []
    start = time.perf_counter() + 0.05
    for k in range(n):
        scheduled = start + k / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k, scheduled)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    json.dump({"latency_s": latency, "status": status, "wall_s": wall}, open(out, "w"))

asyncio.run(main())
"""
"""The load generator (run as ``python -c LOADGEN host port path rate duration connections
streams frames.json out.json tag``)."""

HIST = re.compile(r"^opsworld_policy_inference_seconds_(sum|count) (\S+)$", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(out: Path, *overrides: str) -> Path:
    """A short ``opsworld train`` run in a child process (the CLI lives above agents)."""
    common = ("debug=default", "logger=none", "eval.freq=0", "scenario=chain3", f"out={out}")
    code = "import sys; from experiments.cli import main; sys.exit(main(sys.argv[1:]))"
    subprocess.run(
        [sys.executable, "-c", code, "train", *common, *overrides],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    return out


def bundles(cfg: BenchConfig, work: Path) -> dict[str, Path]:
    """``{"ppo": bundle, "dreamer": bundle}``: the configured runs exported, or short runs."""
    from agents.bundle_export import export_run

    sc = cfg.serve
    ppo = Path(sc.ppo_run) if sc.ppo_run else None
    if ppo is None:  # the default PPO network ([128, 128]), a few updates
        ppo = _train(work / "ppo", "agent=ppo", "env=autoscale", "agent.net_arch=[128,128]")
    dreamer = Path(sc.dreamer_run) if sc.dreamer_run else None
    if dreamer is None:  # the tiny world-model preset and the actor's default width
        tiny = "deter=256,hidden=128,stoch=16,classes=16,gru_blocks=4,units=128"
        dreamer = _train(
            work / "dreamer",
            "agent=dreamer",
            "env=ops",
            "total_timesteps=48",
            "agent.net_arch=[128,128]",
            f"agent.world_model={{{tiny.replace('=', ':')}}}",
        )
    return {
        "ppo": export_run(ppo, work / "bundle-ppo"),
        "dreamer": export_run(dreamer, work / "bundle-dreamer"),
    }


def frames_for(bundle: Path, n: int, seed: int) -> list[Any]:
    """``n`` telemetry frames of a holdout incident on the bundle's topology."""
    from agents.bundle import load_bundle
    from agents.rollout import rollout
    from envs.scenarios.suites import load_suite
    from envs.sim.simulator import Simulator

    topology = load_bundle(bundle).manifest["topology"]["name"]
    entry = load_suite("holdout").on_topology(topology).entries[0]
    frames: list[Any] = []

    class Recorder:
        name = "recorder"

        def reset(self, n: int = 1) -> None:
            return None

        def act(self, obs: Any, state: Any) -> Any:
            frames.append(obs)
            return [], state, {}

    rollout(Simulator(entry.scenario, seed=seed), Recorder())
    return (frames * (1 + n // max(len(frames), 1)))[:n]


def in_process(bundle: Path, backend: str, frames: list[Any], repeats: int) -> dict[str, float]:
    """Decision latency (guarded policy) and the network call alone, in this process."""
    from agents.serving.app import prepare

    loaded = prepare(bundle, backend)
    policy = loaded.policy
    decision: list[float] = []
    for _ in range(repeats):
        state = policy.reset(1)
        for frame in frames:
            t0 = time.perf_counter()
            _, state, _ = policy.act(frame, state)
            decision.append(time.perf_counter() - t0)
    inner = loaded.bundle.policy
    net: list[float] = []
    if hasattr(inner, "step"):  # Dreamer: one rssm_step
        st = inner.reset(1)
        belief = st.belief.observe(frames[0])
        mask = inner.codec.masks(belief)
        feed = {
            "obs": inner.encoder.encode(frames[0])[None].astype(np.float32),
            "is_first": np.ones(1, np.float32),
            "deter": st.deter,
            "stoch": st.stoch,
            "prev_action": st.prev_action,
            "mask": mask[None],
        }
        call: Any = lambda: inner.run(feed)
    else:
        belief = inner.reset(1).observe(frames[0])
        obs, masks = inner.model_input(frames[0]), inner.codec.masks(belief)[None]
        call = lambda: inner.choose(obs, masks)
    for _ in range(50):
        call()
    for _ in range(repeats * len(frames)):
        t0 = time.perf_counter()
        call()
        net.append(time.perf_counter() - t0)
    d, m = np.array(decision), np.array(net)
    return {
        "decision_p50_ms": float(np.percentile(d, 50) * 1e3),
        "decision_p99_ms": float(np.percentile(d, 99) * 1e3),
        "model_p50_ms": float(np.percentile(m, 50) * 1e3),
        "model_p99_ms": float(np.percentile(m, 99) * 1e3),
    }


def _histogram(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    got = {k: float(v) for k, v in HIST.findall(text)}
    return got.get("sum", 0.0), got.get("count", 0.0)


def serve_process(bundle: Path, backend: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``opsworld serve`` in its own process; returns it and its URL once ready."""
    import httpx

    port = _free_port()
    code = "import sys; from experiments.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["serve", f"bundle={bundle}", f"port={port}", f"backend={backend}"]
    env = {k: v for k, v in os.environ.items() if k != "OPSWORLD_ADMIN_TOKEN"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=REPO, stdout=fh, stderr=fh, env=env
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"opsworld serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"opsworld serve not ready: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def load_rate(
    url: str, name: str, rate: float, cfg: BenchConfig, frames_file: Path, out: Path
) -> dict[str, Any]:
    """One rate against a running server: latency percentiles, errors, the model's share."""
    sc = cfg.serve
    sizes = sc.quick if cfg.quick else sc.full
    port = int(url.rsplit(":", 1)[1])
    before = _histogram(url)
    subprocess.run(
        [
            sys.executable,
            "-c",
            LOADGEN,
            "127.0.0.1",
            str(port),
            f"/v2/models/{name}/infer",
            str(rate),
            str(sizes.duration_s),
            str(sc.connections),
            str(sc.streams),
            str(frames_file),
            str(out),
            out.stem,
        ],
        check=True,
        cwd=REPO,
    )
    after = _histogram(url)
    res = json.loads(out.read_text())
    lat = np.array(res["latency_s"], dtype=float)
    status = np.array(res["status"])
    n = len(lat)
    decided = after[1] - before[1]
    if decided < int((status == 200).sum()):
        raise RuntimeError(f"{n} requests but {decided:g} decisions: streams reused?")
    mean_decision = (after[0] - before[0]) / decided if decided else float("nan")
    return {
        "rate": rate,
        "requests": n,
        "achieved_rate": n / res["wall_s"],
        "errors": int((status != 200).sum()),
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "max_ms": float(lat.max() * 1e3),
        "mean_ms": float(lat.mean() * 1e3),
        "server_decision_mean_ms": mean_decision * 1e3,
    }


def run_serve_suite(cfg: BenchConfig, console: Console) -> dict[str, Any]:
    """The ``serve`` suite (see the module docstring)."""
    sc = cfg.serve
    sizes = sc.quick if cfg.quick else sc.full
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per readiness poll
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        made = bundles(cfg, work)
        targets = {"ppo_onnx": ("ppo", "onnx"), "ppo_torch": ("ppo", "torch")}
        targets["dreamer"] = ("dreamer", "onnx")
        details: dict[str, Any] = {}
        for label, (kind, backend) in targets.items():
            bundle = made[kind]
            frames = frames_for(bundle, sizes.frames, cfg.seed)
            from agents.serving.schemas import frame_json

            frames_file = work / f"{label}.frames.json"
            frames_file.write_text(json.dumps([frame_json(f) for f in frames]))
            local = in_process(bundle, backend, frames, sizes.in_process_repeats)
            proc, url = serve_process(bundle, backend, work / f"{label}.log")
            try:
                import httpx

                name = httpx.get(f"{url}/v2/models/none").json()["reason"].split("serves ")[1]
                name = name.strip("'")
                # warm-up (not measured): every stream's first decision, the sessions' caches
                load_rate(url, name, min(sizes.rates), cfg, frames_file, work / "warmup.json")
                rates = []
                for rate in sizes.rates:
                    console.print(f"serve bench: {label} at {rate:g} req/s")
                    r = load_rate(url, name, rate, cfg, frames_file, work / f"{label}-{rate}.json")
                    r["model_share"] = local["model_p50_ms"] / r["mean_ms"]
                    r["decision_share"] = r["server_decision_mean_ms"] / r["mean_ms"]
                    rates.append(r)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            ok = [r["rate"] for r in rates if r["p99_ms"] < 10.0 and r["errors"] == 0]
            details[label] = {
                "bundle": kind,
                "backend": backend,
                "in_process": local,
                "rates": rates,
                "highest_rate_p99_under_10ms": max(ok) if ok else 0.0,
            }
    load_after = os.getloadavg()
    top, low = max(sizes.rates), min(sizes.rates)
    head = details["ppo_onnx"]
    at_top = next(r for r in head["rates"] if r["rate"] == top)
    at_low = next(r for r in head["rates"] if r["rate"] == low)
    figures: dict[str, Any] = {
        "ppo_onnx_p99_ms_at_top_rate": at_top["p99_ms"],
        # at the lowest rate: a saturated server's queueing would make any share look small
        "ppo_onnx_model_share_at_lowest_rate": at_low["model_share"],
    }
    for label, d in details.items():
        figures[f"{label}_highest_rate_p99_under_10ms"] = d["highest_rate_p99_under_10ms"]
        figures[f"{label}_in_process_decision_p50_ms"] = d["in_process"]["decision_p50_ms"]
    return {
        "figures": figures,
        "targets": {
            "ppo_onnx_p99_ms_at_top_rate": sc.target_p99_ms,
            "ppo_onnx_model_share_at_lowest_rate": sc.target_model_share,
        },
        "lower_is_better": ["ppo_onnx_p99_ms_at_top_rate", "ppo_onnx_model_share_at_lowest_rate"],
        "details": {
            "targets": details,
            "load_average_before": list(load_before),
            "load_average_after": list(load_after),
            "rates": list(sizes.rates),
            "duration_s": sizes.duration_s,
            "connections": sc.connections,
            "streams": sc.streams,
        },
        "method": (
            f"open-loop constant-rate load from a separate asyncio process over "
            f"{sc.connections} keep-alive connections, {sizes.duration_s:g} s per rate, "
            f"latency from each request's scheduled send time to its response's end; "
            f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
            f"(the machine is shared)"
        ),
        "markdown": markdown(details, sizes.rates),
    }


def markdown(details: dict[str, Any], rates: list[float]) -> str:
    """The per-target, per-rate table and the in-process figures."""
    lines = [
        "## Latency under load",
        "",
        "| target | rate (req/s) | achieved | errors | p50 ms | p99 ms | max ms | "
        "decision share | model share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, d in details.items():
        for r in d["rates"]:
            lines.append(
                f"| {label} | {r['rate']:g} | {r['achieved_rate']:.0f} | {r['errors']} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
                f"{100 * r['decision_share']:.1f}% | {100 * r['model_share']:.1f}% |"
            )
    lines += [
        "",
        "## In-process",
        "",
        "| target | decision p50 ms | decision p99 ms | model p50 ms | model p99 ms | "
        "highest rate with p99 < 10 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, d in details.items():
        p = d["in_process"]
        lines.append(
            f"| {label} | {p['decision_p50_ms']:.3f} | {p['decision_p99_ms']:.3f} | "
            f"{p['model_p50_ms']:.3f} | {p['model_p99_ms']:.3f} | "
            f"{d['highest_rate_p99_under_10ms']:g} |"
        )
    lines += [
        "",
        "Decision share: the server's mean `opsworld_policy_inference_seconds` (policy + "
        "guard, encoding and decoding included) over the mean request latency; model share: "
        "the network call alone (in-process p50) over the mean request latency. "
        f"Rates tried: {', '.join(f'{r:g}' for r in rates)} req/s.",
    ]
    return "\n".join(lines)
