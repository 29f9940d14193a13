"""Policy bundles: export, sums, tampering, parity, loading without SB3 or the simulator."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from agents.bundle import (
    BASELINES,
    MANIFEST,
    ONNX,
    SUMS,
    WEIGHTS,
    BundleError,
    baseline_from_manifest,
    load_bundle,
    read_manifest,
    write_sums,
)
from agents.bundle_export import (
    decision_net_from_sb3,
    export_baseline,
    export_run,
    parity_random,
    record_frames,
    rollout_mismatches,
)
from agents.guard import GuardConfig
from envs.core.telemetry import Telemetry
from envs.scenarios.loader import load_scenario
from experiments import train as train_mod
from experiments.cli import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]

RUNS: dict[str, tuple[str, ...]] = {
    "ppo": ("agent=ppo", "env=autoscale", "env.obs=dict"),
    "a2c": ("agent=a2c", "env=autoscale"),
    "dqn": ("agent=dqn", "env=remediate"),
    "maskable_ppo": ("agent=maskable_ppo", "env=hpa_tune"),
}
"""One tiny debug run per algorithm, each on a different env / observation layout."""


def train_run(out: Path, *overrides: str) -> Path:
    train_mod.register_configs()
    GlobalHydra.instance().clear()
    common = ("debug=default", "logger=none", "eval.freq=0", "scenario=chain3", f"out={out}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*common, *overrides])
    GlobalHydra.instance().clear()
    train_mod.train(cfg)
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, Path]]]:
    """``algo -> (run dir, bundle dir)`` for every algorithm."""
    base = tmp_path_factory.mktemp("bundles")
    out = {}
    for algo, overrides in RUNS.items():
        run = train_run(base / f"run-{algo}", *overrides)
        out[algo] = (run, export_run(run, base / f"bundle-{algo}", parity_steps=50))
    yield out


def copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


# ------------------------------------------------------------------------------ export


@pytest.mark.parametrize("algo", list(RUNS))
def test_every_algorithm_exports_with_zero_parity_mismatches(
    bundles: dict[str, tuple[Path, Path]], algo: str
) -> None:
    _, bundle = bundles[algo]
    manifest = read_manifest(bundle)
    assert manifest["algorithm"] == algo
    assert manifest["parity"]["random_mismatches"] == 0
    assert manifest["parity"]["onnx_mismatches"] == 0
    assert manifest["parity"]["rollout_steps"] == 50
    assert manifest["parity"]["rollout_mismatches"] == {"torch": 0, "onnx": 0}
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        [MANIFEST, SUMS, WEIGHTS, ONNX, "obs_norm.safetensors"]
    )
    # sha256sum -c accepts the sums file as written
    proc = subprocess.run(["sha256sum", "-c", SUMS], cwd=bundle, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": OK") == 4
    # no pickle anywhere: no pickle protocol header, no zip (SB3's format)
    for p in bundle.iterdir():
        head = p.read_bytes()[:2]
        assert head not in (b"\x80\x04", b"\x80\x05", b"PK"), p
    services = load_scenario("chain3").service_names
    assert manifest["topology"]["services"] == manifest["control_spec"]["services"] == services
    assert manifest["guard"] == GuardConfig().model_dump(mode="json")
    assert manifest["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert len(manifest["config_hash"]) == 64
    assert manifest["model_version"].startswith(f"{algo}-")
    ref = manifest["feature_reference"]
    key = "obs" if algo != "ppo" else sorted(ref)[0]
    assert len(ref[key]["mean"]) == len(ref[key]["std"]) > 0


def test_masked_and_tuned_policies_record_their_specs(
    bundles: dict[str, tuple[Path, Path]],
) -> None:
    m = read_manifest(bundles["maskable_ppo"][1])
    assert m["action"]["layout"] == "hpa_tune" and m["action"]["masked"] is True
    assert m["action"]["nvec"] == [5, 5, 5, 16]
    assert m["hpa"]["name"] == "tuned_hpa"
    d = read_manifest(bundles["dqn"][1])
    assert d["network"]["head"] == "q" and d["action"]["discrete"] is True
    p = read_manifest(bundles["ppo"][1])
    assert p["observation"]["kind"] == "dict" and len(p["observation"]["keys"]) > 1


def test_the_parity_check_catches_a_changed_network(bundles: dict[str, tuple[Path, Path]]) -> None:
    from agents.sb3.policy import SB3Policy

    run, _ = bundles["a2c"]
    sb3 = SB3Policy(run)
    net, _ = decision_net_from_sb3(sb3.model)
    rng = np.random.default_rng(0)
    sizes = {"obs": net.sizes[0]}
    assert parity_random(sb3, net, rng, 256, ["obs"], sizes)["random_mismatches"] == 0
    with torch.no_grad():
        last = [m for m in net.mlp if isinstance(m, torch.nn.Linear)][-1]
        last.bias[0] += 100.0  # the first choice of dimension 0 always wins now
    assert parity_random(sb3, net, rng, 256, ["obs"], sizes)["random_mismatches"] > 0


def test_export_refuses_a_non_empty_folder_and_a_dreamer_run(
    bundles: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    run, bundle = bundles["a2c"]
    with pytest.raises(BundleError, match="not empty; choose another out= or pass force=true"):
        export_run(run, bundle)
    fake = tmp_path / "dreamer"
    fake.mkdir()
    (fake / "agent.pt").write_bytes(b"")
    with pytest.raises(BundleError, match=r"config.yaml: missing; is .* a finished Dreamer run"):
        export_run(fake, tmp_path / "out")


# ------------------------------------------------------------------------------ tampering


def test_tampered_bundles_are_refused_naming_the_file(
    bundles: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    _, bundle = bundles["a2c"]
    load_bundle(bundle)  # the original loads

    flipped = copy(bundle, tmp_path / "flip")
    data = bytearray((flipped / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{WEIGHTS}: SHA-256 differs from SHA256SUMS"):
        load_bundle(flipped)

    edited = copy(bundle, tmp_path / "edit")
    text = (edited / MANIFEST).read_text().replace('"max_step": 4', '"max_step": 40')
    (edited / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match=rf"{MANIFEST}: SHA-256 differs"):
        load_bundle(edited)

    missing = copy(bundle, tmp_path / "missing")
    (missing / ONNX).unlink()
    with pytest.raises(BundleError, match=rf"{ONNX}: listed in SHA256SUMS but missing"):
        load_bundle(missing)

    added = copy(bundle, tmp_path / "added")
    (added / "extra.bin").write_bytes(b"\x00")
    with pytest.raises(BundleError, match=r"extra.bin: not listed in SHA256SUMS"):
        load_bundle(added)

    no_sums = copy(bundle, tmp_path / "nosums")
    (no_sums / SUMS).unlink()
    with pytest.raises(BundleError, match=r"SHA256SUMS is missing"):
        load_bundle(no_sums)

    # consistent sums over a manifest that breaks the schema: refused by the schema check
    resummed = copy(bundle, tmp_path / "resummed")
    manifest = json.loads((resummed / MANIFEST).read_text())
    manifest["schema_version"] = 99
    (resummed / MANIFEST).write_text(json.dumps(manifest))
    write_sums(resummed)
    with pytest.raises(BundleError, match=r"manifest.json: schema_version 99 != 1"):
        load_bundle(resummed)
    del manifest["guard"]
    manifest["schema_version"] = 1
    (resummed / MANIFEST).write_text(json.dumps(manifest))
    write_sums(resummed)
    with pytest.raises(BundleError, match=r"manifest.json: field 'guard' is missing"):
        load_bundle(resummed)


# ------------------------------------------------------------------------------ loading

# A fresh interpreter where importing stable_baselines3, sb3_contrib or envs.sim fails.
LOAD = r"""
import importlib.abc, json, pickle, sys

BLOCKED = ("stable_baselines3", "sb3_contrib", "envs.sim")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
from agents.bundle import load_bundle

out = {}
for key, bundle, backend, frames in json.loads(sys.argv[1]):
    policy = load_bundle(bundle, backend=backend).policy
    with open(frames, "rb") as fh:
        recorded = pickle.load(fh)
    state, acts = policy.reset(1), []
    for frame in recorded:
        actions, state, _ = policy.act(frame, state)
        acts.append([repr(a) for a in actions])
    out[key] = acts
loaded = [m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED)]
assert not loaded, loaded
print(json.dumps(out))
"""


def test_bundles_decide_as_sb3_without_sb3_or_the_simulator(
    bundles: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    from agents.sb3.policy import SB3Policy

    jobs, expected = [], {}
    for algo, (run, bundle) in bundles.items():
        sb3 = SB3Policy(run)
        frames = record_frames(sb3, 50, seed=7)
        path = tmp_path / f"{algo}.frames.pkl"
        path.write_bytes(pickle.dumps(frames))
        state, acts = sb3.reset(1), []
        for frame in frames:
            actions, state, _ = sb3.act(frame, state)
            acts.append([repr(a) for a in actions])
        for backend in ("onnx", "torch"):
            jobs.append((f"{algo}/{backend}", str(bundle), backend, str(path)))
            expected[f"{algo}/{backend}"] = acts
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, json.dumps(jobs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served == expected
    assert any(any(a) for a in expected["maskable_ppo/onnx"]) or any(
        any(a) for a in expected["a2c/onnx"]
    )


def test_the_import_block_bites() -> None:
    code = LOAD.split("from agents.bundle")[0] + "import stable_baselines3\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked: stable_baselines3" in proc.stderr


# ------------------------------------------------------------------------------ baselines


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_bundles_act_as_the_baseline(name: str, tmp_path: Path) -> None:
    scenario = load_scenario("chain3", {"horizon_s": 900})
    bundle = export_baseline(name, scenario, tmp_path / name)
    loaded = load_bundle(bundle)
    assert sorted(p.name for p in bundle.iterdir()) == sorted([MANIFEST, SUMS])
    assert loaded.manifest["kind"] == "baseline" and loaded.version.startswith(f"{name}-")
    direct = _direct(name, scenario)
    assert loaded.policy.name == direct.name
    frames = _frames(direct, scenario)
    assert rollout_mismatches(direct, loaded.policy, frames) == 0
    assert baseline_from_manifest(loaded.manifest).name == direct.name


def _direct(name: str, scenario: Any) -> Any:
    """The baseline as ``opsworld simulate policy=<name>`` builds it (default knobs)."""
    from agents.baselines import HPAConfig, HPAPolicy, RunbookPolicy
    from agents.baselines.tuned import load_settings, make_hpa

    if name == "hpa":
        return HPAPolicy(HPAConfig.cpu(70), scenario)
    if name == "tuned_hpa":
        return make_hpa(load_settings(), scenario)
    policy = RunbookPolicy(
        scenario,
        hpa_config=HPAConfig.cpu(70) if name == "runbook" else load_settings().hpa_config(),
    )
    policy.name = name
    return policy


def _frames(policy: Any, scenario: Any) -> list[Telemetry]:
    class Holder:
        pass

    holder: Any = Holder()
    holder.scenario = scenario
    holder.reset = policy.reset
    holder.act = policy.act
    return record_frames(holder, 60, seed=3)


def test_baseline_export_refuses_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"policy='static': one of \['hpa', 'tuned_hpa'"):
        export_baseline("static", load_scenario("chain3"), tmp_path / "x")


# ------------------------------------------------------------------------------ CLI


def test_export_yaml_ships_the_guard_defaults() -> None:
    data = yaml.safe_load((REPO / "configs" / "export.yaml").read_text())
    assert data["guard"] == GuardConfig().model_dump(mode="json")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from experiments.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True
    )


def test_cli_export_and_verify(bundles: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    out = tmp_path / "b"
    proc = _cli("export", "policy=runbook", "scenario=chain3", f"out={out}", "guard.max_step=2")
    assert proc.returncode == 0, proc.stderr
    assert read_manifest(out)["guard"]["max_step"] == 2
    proc = _cli("verify", str(bundles["maskable_ppo"][1]))
    assert proc.returncode == 0, proc.stderr
    assert "onnx parity (512 random inputs, 0 mismatches)" in proc.stdout
    bad = copy(out, tmp_path / "bad")
    (bad / MANIFEST).write_text("{}")
    proc = _cli("verify", f"bundle={bad}")
    assert proc.returncode == 1 and "manifest.json: SHA-256 differs" in proc.stderr
    proc = _cli("export", "policy=runbook", f"out={tmp_path / 'c'}", "guard.max_step=0")
    assert proc.returncode == 2 and "guard.max_step: Input should be greater" in proc.stderr
    proc = _cli("export", f"out={tmp_path / 'd'}")
    assert proc.returncode == 2 and "exactly one of run=" in proc.stderr
