"""Export policy bundles (see :mod:`agents.bundle` for the format and the loader).

:func:`export_run` exports an ``opsworld train`` run (PPO, MaskablePPO, A2C, DQN):
it loads the run with :class:`agents.sb3.policy.SB3Policy` (its pickles: trusted run dirs
only), copies the actor path into a :class:`~agents.bundle.DecisionNet`, checks parity
(random observations and masks against the SB3 model; a recorded rollout of the run's
scenario through the bundle with torch and with onnxruntime), and writes ``policy.onnx``
only when no decision differs. :func:`export_baseline` writes a configuration-only bundle of
a rule baseline. This module needs SB3 and the simulator; :mod:`agents.bundle` needs
neither.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import platform
import shutil
import warnings
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_model
from torch import nn

from agents.baselines.hpa import HPAConfig
from agents.bundle import (
    BASELINES,
    OBS_NORM,
    ONNX,
    SCHEMA_VERSION,
    WEIGHTS,
    BundleError,
    DecisionNet,
    OnnxRunner,
    _dump,
    _plain,
    baseline_from_manifest,
    load_bundle,
    write_sums,
)
from agents.guard import GuardConfig
from envs.core.actions import Action
from envs.core.telemetry import Telemetry


def library_versions() -> dict[str, str]:
    """Versions of the libraries an export or a load depends on."""
    out = {"python": platform.python_version()}
    for dist in (
        "opsworld",
        "torch",
        "numpy",
        "safetensors",
        "onnx",
        "onnxruntime",
        "stable-baselines3",
        "sb3-contrib",
        "gymnasium",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def call_graph_hash(topology: Any) -> str:
    """SHA-256 of the call graph: entry, then sorted ``src->dst p calls`` edges."""
    edges = sorted(
        f"{e.src}->{e.dst} p={e.probability!r} calls={e.calls!r}" for e in topology.edges
    )
    lines = [f"entry {topology.entry}", *edges]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def topology_record(scenario: Any) -> dict[str, Any]:
    """Topology name, service names, entry and the call graph's hash of a scenario."""
    topo = scenario.topology
    return {
        "name": topo.name,
        "entry": topo.entry,
        "services": list(scenario.service_names),
        "call_graph_hash": call_graph_hash(topo),
        "edges": len(topo.edges),
    }


def _prepare(out: str | Path, force: bool) -> Path:
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        if not force:
            raise BundleError(f"{root}: not empty; choose another out= or pass force=true")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def export_onnx(net: DecisionNet, obs_size: int, mask_size: int) -> bytes:
    """The network as ONNX bytes (TorchScript exporter: batch axis dynamic, one file)."""
    buf = io.BytesIO()
    args = (torch.zeros(2, obs_size), torch.ones(2, mask_size, dtype=torch.bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            args,
            cast(Any, buf),
            dynamo=False,
            input_names=["obs", "mask"],
            output_names=["action"],
            dynamic_axes={"obs": {0: "batch"}, "mask": {0: "batch"}, "action": {0: "batch"}},
            opset_version=17,
        )
    return buf.getvalue()


def decision_net_from_sb3(model: Any) -> tuple[DecisionNet, str]:
    """Copy an SB3 model's actor path into a :class:`DecisionNet`; returns it and its head."""
    from stable_baselines3.dqn.policies import DQNPolicy

    policy = model.policy
    if isinstance(policy, DQNPolicy):
        linears = [m for m in policy.q_net.q_net if isinstance(m, nn.Linear)]
        acts = [type(m).__name__ for m in policy.q_net.q_net if not isinstance(m, nn.Linear)]
        head = "q"
    else:
        if not policy.share_features_extractor and policy.pi_features_extractor is None:
            raise BundleError("unsupported SB3 policy: no actor features extractor")
        linears = [m for m in policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
        acts = [type(m).__name__ for m in policy.mlp_extractor.policy_net]
        acts = [a for a in acts if a != "Linear"]
        linears.append(policy.action_net)
        head = "categorical"
    activation = acts[0] if acts else "Tanh"
    if len(set(acts)) > 1:
        raise BundleError(f"unsupported SB3 policy: mixed activations {acts}")
    sizes = [linears[0].in_features] + [lin.out_features for lin in linears]
    nvec = (
        [int(model.action_space.n)]
        if hasattr(model.action_space, "n")
        else [int(n) for n in model.action_space.nvec]
    )
    net = DecisionNet(sizes, activation, nvec, head)
    with torch.no_grad():
        targets = [m for m in net.mlp if isinstance(m, nn.Linear)]
        for dst, src in zip(targets, linears, strict=True):
            dst.weight.copy_(src.weight.detach().cpu())
            dst.bias.copy_(src.bias.detach().cpu())
    return net.eval(), head


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    model: str = "model.zip",
    vecnormalize: str = "vecnormalize.pkl",
    guard: GuardConfig | None = None,
    onnx: bool = True,
    parity_samples: int = 512,
    parity_steps: int = 50,
    seed: int = 0,
    command: str = "",
    force: bool = False,
) -> Path:
    """Export an ``opsworld train`` run dir (PPO, MaskablePPO, A2C, DQN) as a bundle.

    A Dreamer run dir (``agent.pt``, no ``model.zip``) goes to :func:`export_dreamer_run`
    (``model`` under ``best/``: ``best/agent.pt``).

    Loads the run with :class:`agents.sb3.policy.SB3Policy` (its pickles: trusted run dirs
    only), copies the decision network, checks parity (random inputs; a rollout of
    ``parity_steps`` decisions of the run's scenario) and writes the bundle.

    Raises:
        BundleError: An unsupported run, or any parity mismatch.
    """
    from agents.sb3.policy import SB3Policy

    run = Path(run_dir)
    if (run / "agent.pt").is_file() and not (run / model).is_file():
        return export_dreamer_run(
            run,
            out,
            weights="best/agent.pt" if model.startswith("best/") else "agent.pt",
            guard=guard,
            onnx=onnx,
            parity_samples=parity_samples,
            parity_steps=parity_steps,
            seed=seed,
            command=command,
            force=force,
        )
    sb3 = SB3Policy(run, model=model, vecnormalize=vecnormalize)
    if sb3.residual is not None:
        raise BundleError(
            f"{run}: an env=residual run decides with tuned_runbook inside the policy, which the "
            "bundle format does not carry yet; evaluate it with opsworld evaluate instead"
        )
    net, head = decision_net_from_sb3(sb3.model)
    stats = sb3.vec_normalize
    root = _prepare(out, force)
    obs_space: Any = sb3.model.observation_space
    rms: dict[str, Any]
    if sb3.obs_kind == "box":
        keys = ["obs"]
        sizes = {"obs": int(np.prod(obs_space.shape))}
        rms = {"obs": stats.obs_rms} if stats.norm_obs else {}
    else:
        keys = list(obs_space.spaces)
        sizes = {k: int(np.prod(obs_space.spaces[k].shape)) for k in keys}
        norm_keys = list(stats.norm_obs_keys or []) if stats.norm_obs else []
        obs_rms: Any = stats.obs_rms
        rms = {k: obs_rms[k] for k in norm_keys}
    arrays: dict[str, np.ndarray] = {}
    for k, r in rms.items():
        arrays[f"{k}.mean"] = np.asarray(r.mean, dtype=np.float64)
        arrays[f"{k}.var"] = np.asarray(r.var, dtype=np.float64)
    save_numpy(arrays, str(root / OBS_NORM))
    save_model(net, str(root / WEIGHTS))
    layout = sb3.codec.space_spec
    scenario = sb3.scenario
    config_text = (run / "config.yaml").read_text(encoding="utf-8")
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "sb3",
        "algorithm": sb3.config.agent.algo.value,
        "name": f"{sb3.name}-{scenario.topology.name}",
        "topology": topology_record(scenario),
        "control_spec": asdict(sb3.codec.spec),
        "observation": {
            "encoder": sb3.encoder.spec(),
            "kind": sb3.obs_kind,
            "keys": keys,
            "sizes": sizes,
            "normalization": {
                "enabled": bool(stats.norm_obs),
                "clip": float(stats.clip_obs),
                "epsilon": float(stats.epsilon),
                "keys": sorted(rms),
                "file": OBS_NORM,
            },
        },
        "action": {
            "layout": layout.layout,
            "nvec": list(layout.nvec),
            "discrete": layout.discrete,
            "masked": bool(sb3._masked),
            "mask_size": int(sum(layout.nvec)),
            "allow_drain": sb3.allow_drain,
            "deterministic": True,
        },
        "network": {
            "sizes": net.sizes,
            "activation": net.activation,
            "head": head,
            "inputs": {"obs": ["batch", sum(sizes.values())], "mask": ["batch", sum(layout.nvec)]},
            "outputs": {"action": ["batch", len(layout.nvec)]},
        },
        "guard": (guard or GuardConfig()).model_dump(mode="json"),
        "versions": library_versions(),
        "config_hash": hashlib.sha256(config_text.encode()).hexdigest(),
        "figures": {"training": metrics, "commands": [c for c in (command,) if c]},
        "feature_reference": feature_reference(rms),
        "source": {"run_dir": str(run.resolve()), "model": model, "vecnormalize": vecnormalize},
        "files": {},
    }
    if sb3.in_cluster_hpa is not None:  # the HPA the policy retargets with SetHPATarget
        manifest["hpa"] = {
            "name": "tuned_hpa",
            "config": sb3.in_cluster_hpa.model_dump(mode="json"),
        }
    manifest["files"] = {WEIGHTS: "decision network", OBS_NORM: "observation normalisation"}
    _dump(root, manifest)
    write_sums(root)
    # parity: random inputs, then a recorded rollout through the bundle (torch, then ONNX)
    rng = np.random.default_rng(seed)
    n_in = sum(sizes.values())
    report = parity_random(sb3, net, rng, parity_samples, keys, sizes)
    onnx_bytes = export_onnx(net, n_in, int(sum(layout.nvec))) if onnx else None
    if onnx_bytes is not None:
        (root / ONNX).write_bytes(onnx_bytes)
        manifest["files"][ONNX] = "decision network (onnxruntime)"
        _dump(root, manifest)
        write_sums(root)
        report_onnx = parity_onnx(root, net, rng, parity_samples, n_in, int(sum(layout.nvec)))
        report["onnx_mismatches"] = report_onnx
    frames = record_frames(sb3, parity_steps, seed)
    report["rollout_steps"] = len(frames)
    report["rollout_mismatches"] = {}
    for backend in ("torch", "onnx") if onnx_bytes is not None else ("torch",):
        bundle = load_bundle(root, backend=cast(Any, backend))
        report["rollout_mismatches"][backend] = rollout_mismatches(sb3, bundle.policy, frames)
    bad = (
        report["random_mismatches"]
        + report.get("onnx_mismatches", 0)
        + sum(report["rollout_mismatches"].values())
    )
    return _seal(root, manifest, report, bad, run, str(manifest["algorithm"]))


def feature_reference(rms: dict[str, Any]) -> dict[str, Any]:
    """The training features' running mean and std per key (``VecNormalize``'s statistics).

    The drift reference of shadow mode: the statistics of the encoded observations the
    policy was trained on.
    """
    return {
        k: {
            "mean": [float(x) for x in np.asarray(r.mean).ravel()],
            "std": [float(math.sqrt(max(v, 0.0))) for v in np.asarray(r.var).ravel()],
            "count": float(r.count),
        }
        for k, r in rms.items()
    }


def _random_masks(rng: np.random.Generator, nvec: list[int], n: int) -> np.ndarray:
    masks = rng.random((n, sum(nvec))) < 0.6
    start = 0
    for k in nvec:  # at least one valid choice per dimension, as a codec guarantees
        rows = ~masks[:, start : start + k].any(axis=1)
        masks[rows, start + rng.integers(0, k, size=int(rows.sum()))] = True
        start += k
    return masks


def parity_random(
    sb3: Any,
    net: DecisionNet,
    rng: np.random.Generator,
    n: int,
    keys: list[str],
    sizes: dict[str, int],
) -> dict[str, Any]:
    """Mismatches of the network against the SB3 model on random normalised inputs."""
    obs = rng.normal(0.0, 2.0, size=(n, sum(sizes.values()))).astype(np.float32)
    masks = _random_masks(rng, net.nvec, n)
    if not sb3._masked:
        masks[:] = True
    with torch.no_grad():
        ours = net(torch.as_tensor(obs), torch.as_tensor(masks)).numpy()
    if sb3.obs_kind == "box":
        model_obs: Any = obs
    else:
        model_obs, start = {}, 0
        space = sb3.model.observation_space.spaces
        for k in keys:
            model_obs[k] = obs[:, start : start + sizes[k]].reshape((n, *space[k].shape))
            start += sizes[k]
    kwargs: dict[str, Any] = {"deterministic": True}
    if sb3._masked:
        kwargs["action_masks"] = masks
    theirs, _ = sb3.model.predict(model_obs, **kwargs)
    theirs = np.asarray(theirs).reshape(n, -1)
    return {"random_samples": n, "random_mismatches": int((ours != theirs).any(axis=1).sum())}


def parity_onnx(
    root: Path, net: DecisionNet, rng: np.random.Generator, n: int, n_in: int, n_mask: int
) -> int:
    """Mismatches of ``policy.onnx`` against the torch network on random inputs."""
    obs = rng.normal(0.0, 2.0, size=(n, n_in)).astype(np.float32)
    masks = _random_masks(rng, net.nvec, n)
    with torch.no_grad():
        ours = net(torch.as_tensor(obs), torch.as_tensor(masks)).numpy()
    theirs = OnnxRunner(root / ONNX)(obs, masks)
    return int((ours != theirs).any(axis=1).sum())


def record_frames(policy: Any, steps: int, seed: int) -> list[Telemetry]:
    """Frames of a rollout of ``policy`` on its scenario (``steps`` decisions at most)."""
    from agents.rollout import rollout
    from envs.sim.simulator import Simulator

    frames: list[Telemetry] = []

    class Recorder:
        name = "recorder"
        in_cluster_hpa = getattr(policy, "in_cluster_hpa", None)  # hpa_tune: the HPA it steers

        def reset(self, n: int = 1) -> Any:
            return policy.reset(n)

        def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
            frames.append(obs)
            return policy.act(obs, state)

    scenario = policy.scenario
    horizon = min(float(scenario.horizon_s), steps * float(scenario.decision_interval_s))
    scenario = scenario.model_copy(update={"horizon_s": horizon})
    rollout(Simulator(scenario, seed=seed), Recorder())
    return frames[:steps]


def rollout_mismatches(reference: Any, candidate: Any, frames: list[Telemetry]) -> int:
    """Decisions where two policies fed the same frames act differently."""
    s_ref, s_can = reference.reset(1), candidate.reset(1)
    bad = 0
    for frame in frames:
        a_ref, s_ref, _ = reference.act(frame, s_ref)
        a_can, s_can, _ = candidate.act(frame, s_can)
        bad += int(a_ref != a_can)
    return bad


def export_baseline(
    policy: str,
    scenario: Any,
    out: str | Path,
    *,
    guard: GuardConfig | None = None,
    target_cpu_utilization: int | None = None,
    command: str = "",
    force: bool = False,
) -> Path:
    """Export a rule baseline for ``scenario`` as a configuration-only bundle (no weights).

    The tuned policies take their knobs from ``configs/policy/tuned_hpa.yaml``;
    ``hpa`` and ``runbook`` use ``target_cpu_utilization`` (default 70).

    Raises:
        BundleError: An unknown policy name.
    """
    from agents.baselines.tuned import load_settings
    from envs.gym.codec import control_spec

    if policy not in BASELINES:
        raise BundleError(f"policy={policy!r}: one of {list(BASELINES)} (or run=<run dir>)")
    root = _prepare(out, force)
    if policy.startswith("tuned"):
        hpa_config = load_settings().hpa_config()
    else:
        target = 70 if target_cpu_utilization is None else int(target_cpu_utilization)
        hpa_config = HPAConfig.cpu(target)
    record = {
        "policy": policy,
        "hpa_config": hpa_config.model_dump(mode="json"),
        "scenario": scenario.model_dump(mode="json"),
    }
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "baseline",
        "algorithm": policy,
        "name": f"{policy}-{scenario.topology.name}",
        "topology": topology_record(scenario),
        "control_spec": asdict(control_spec(scenario)),
        "baseline": record,
        "guard": (guard or GuardConfig()).model_dump(mode="json"),
        "versions": library_versions(),
        "config_hash": hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest(),
        "figures": {"commands": [c for c in (command,) if c]},
        "files": {},
    }
    manifest["model_version"] = f"{policy}-{manifest['config_hash'][:12]}"
    _dump(root, manifest)
    write_sums(root)
    baseline_from_manifest(manifest)  # it builds
    return root


# --------------------------------------------------------------------------------------------
# Dreamer


def _rms_norm_symbolic(g: Any, x: Any, normalized_shape: Any, weight: Any, eps: Any) -> Any:
    """``aten::rms_norm`` for the TorchScript ONNX exporter (opset 17 has no RMS norm).

    ``x * 1 / sqrt(mean(x^2, -1) + eps) * weight``, the order torch computes it in.
    """
    from torch.onnx import symbolic_helper as sh

    value = sh._maybe_get_const(eps, "f")
    e = 1e-6 if sh._is_none(eps) or value is None else float(value)
    ms = g.op("ReduceMean", g.op("Mul", x, x), axes_i=[-1], keepdims_i=1)
    eps_t = g.op("Constant", value_t=torch.tensor(e, dtype=torch.float32))
    y = g.op("Mul", x, g.op("Reciprocal", g.op("Sqrt", g.op("Add", ms, eps_t))))
    return y if sh._is_none(weight) else g.op("Mul", y, weight)


def export_step_onnx(
    step: nn.Module,
    obs_size: int,
    deter: int,
    stoch: tuple[int, int],
    action_size: int,
    mask_size: int,
) -> bytes:
    """:class:`~agents.bundle_dreamer.DreamerStep` as ONNX bytes.

    The TorchScript exporter (not dynamo: it would fix a batch-1 example's batch size and
    write the weights to a side ``.onnx.data`` file) traces one step with a batch of 2, so
    the batch axis stays dynamic and the weights inline; there is no loop over time to unroll.
    """
    from agents.bundle_dreamer import STEP_INPUTS, STEP_OUTPUTS

    torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm_symbolic, 17)
    b = 2
    args = (
        torch.zeros(b, obs_size),
        torch.zeros(b),
        torch.zeros(b, deter),
        torch.zeros(b, *stoch),
        torch.zeros(b, action_size),
        torch.ones(b, mask_size, dtype=torch.bool),
    )
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            step,
            args,
            cast(Any, buf),
            dynamo=False,
            input_names=list(STEP_INPUTS),
            output_names=list(STEP_OUTPUTS),
            dynamic_axes={n: {0: "batch"} for n in (*STEP_INPUTS, *STEP_OUTPUTS)},
            opset_version=17,
            do_constant_folding=False,
        )
    return buf.getvalue()


def parity_dreamer_random(
    policy: Any, step: nn.Module, feed: dict[str, np.ndarray], masked: bool
) -> tuple[int, int]:
    """Mismatches of the bundle's step against the run's agent on random inputs.

    Returns ``(action mismatches, carry mismatches)``: the agent's deterministic
    :meth:`~agents.dreamer.agent.DreamerAgent.act` against :class:`DreamerStep`, row by row
    (batch 1, as a stream acts).
    """
    from agents.dreamer.agent import AgentState
    from agents.world_model.rssm import Carry

    bad_action = bad_carry = 0
    for i in range(len(feed["obs"])):
        row = {k: v[i : i + 1] for k, v in feed.items()}
        state = AgentState(
            Carry(torch.as_tensor(row["deter"]), torch.as_tensor(row["stoch"])),
            torch.as_tensor(row["prev_action"]),
        )
        theirs, carry = policy.agent.act(
            row["obs"], row["is_first"], state, row["mask"] if masked else None, deterministic=True
        )
        with torch.no_grad():
            ours, deter, stoch = step(*(torch.as_tensor(row[k]) for k in row))
        bad_action += int(not np.array_equal(theirs, ours.numpy()))
        bad_carry += int(not (torch.equal(carry.deter, deter) and torch.equal(carry.stoch, stoch)))
    return bad_action, bad_carry


def export_dreamer_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    weights: str = "agent.pt",
    guard: GuardConfig | None = None,
    onnx: bool = True,
    parity_samples: int = 256,
    parity_steps: int = 50,
    seed: int = 0,
    command: str = "",
    force: bool = False,
) -> Path:
    """Export an ``opsworld train agent=dreamer`` run dir as a bundle (deterministic policy).

    Copies the world model, actor and critic into :class:`~agents.bundle_dreamer.DreamerNets`
    (safetensors), checks parity of :class:`~agents.bundle_dreamer.DreamerStep` against the
    run's agent on random observations, carries and masks, writes ``rssm_step.onnx`` and
    checks it on the same inputs, then replays a ``parity_steps``-decision rollout of the
    run's scenario through the bundle (torch and onnxruntime) against
    :class:`agents.dreamer.policy.DreamerPolicy`. Any mismatch refuses the export.

    Raises:
        BundleError: A run dir that is not a Dreamer run, or any parity mismatch.
    """
    from agents.bundle_dreamer import (
        STEP_ONNX,
        DreamerNets,
        DreamerStep,
        random_step_inputs,
        recurrent_state_spec,
    )
    from agents.dreamer.policy import DreamerPolicy
    from agents.world_model.config import ObsLayout

    run = Path(run_dir)
    for name in ("config.yaml", weights):
        if not (run / name).is_file():
            raise BundleError(f"{run / name}: missing; is {run} a finished Dreamer run?")
    policy = DreamerPolicy(run, weights=weights, deterministic=True)
    agent, cfg = policy.agent, policy.config.agent
    spec = policy.spec
    wm_cfg = agent.wm_cfg
    nets = DreamerNets(
        ObsLayout.from_encoder(policy.encoder), spec, wm_cfg, cfg.hidden, cfg.unimix, cfg.bins
    )
    nets.wm.load_state_dict(agent.wm.state_dict())
    nets.actor.load_state_dict(agent.ac.actor.state_dict())
    nets.critic.load_state_dict(agent.ac.critic.state_dict())
    nets.eval()
    step = DreamerStep(nets, spec.masked).eval()
    root = _prepare(out, force)
    save_model(nets, str(root / WEIGHTS))
    scenario = policy.scenario
    layout = policy.codec.space_spec
    config_text = (run / "config.yaml").read_text(encoding="utf-8")
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    obs_size = int(policy.encoder.size)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "dreamer",
        "algorithm": "dreamer",
        "name": f"dreamer-{scenario.topology.name}",
        "topology": topology_record(scenario),
        "control_spec": asdict(policy.codec.spec),
        "observation": {"encoder": policy.encoder.spec(), "size": obs_size},
        "action": {
            "layout": layout.layout,
            "nvec": list(spec.nvec),
            "discrete": spec.discrete,
            "masked": spec.masked,
            "mask_size": spec.size,
            "feature_size": spec.feature_size,
            "allow_drain": policy.allow_drain,
            "deterministic": True,
        },
        "network": {
            "world_model": wm_cfg.model_dump(mode="json"),
            "hidden": list(cfg.hidden),
            "unimix": float(cfg.unimix),
            "bins": int(cfg.bins),
            "discount": float(cfg.discount),
            "horizon": int(cfg.horizon),
            "inputs": {
                "obs": ["batch", obs_size],
                "is_first": ["batch"],
                "deter": ["batch", wm_cfg.deter],
                "stoch": ["batch", wm_cfg.stoch, wm_cfg.classes],
                "prev_action": ["batch", spec.feature_size],
                "mask": ["batch", spec.size],
            },
            "outputs": {
                "action": ["batch", spec.dims],
                "deter_next": ["batch", wm_cfg.deter],
                "stoch_next": ["batch", wm_cfg.stoch, wm_cfg.classes],
            },
        },
        "recurrent_state": recurrent_state_spec(wm_cfg, spec.feature_size),
        "scenario": scenario.model_dump(mode="json"),
        "guard": (guard or GuardConfig()).model_dump(mode="json"),
        "versions": library_versions(),
        "config_hash": hashlib.sha256(config_text.encode()).hexdigest(),
        "figures": {"training": metrics, "commands": [c for c in (command,) if c]},
        "source": {"run_dir": str(run.resolve()), "weights": weights},
        "files": {WEIGHTS: "world model, actor and critic"},
    }
    if policy.in_cluster_hpa is not None:
        manifest["hpa"] = {
            "name": "tuned_hpa",
            "config": policy.in_cluster_hpa.model_dump(mode="json"),
        }
    _dump(root, manifest)
    write_sums(root)
    feed = random_step_inputs(manifest, parity_samples, seed)
    bad_action, bad_carry = parity_dreamer_random(policy, step, feed, spec.masked)
    report: dict[str, Any] = {
        "random_samples": parity_samples,
        "random_mismatches": bad_action,
        "random_carry_mismatches": bad_carry,
    }
    onnx_bytes = None
    if onnx and not bad_action:
        onnx_bytes = export_step_onnx(
            step,
            obs_size,
            wm_cfg.deter,
            (wm_cfg.stoch, wm_cfg.classes),
            spec.feature_size,
            spec.size,
        )
        (root / STEP_ONNX).write_bytes(onnx_bytes)
        manifest["files"][STEP_ONNX] = "one recurrent decision step (onnxruntime)"
        _dump(root, manifest)
        write_sums(root)
        from agents.bundle_dreamer import OnnxStep

        with torch.no_grad():
            ours = step(*(torch.as_tensor(feed[k]) for k in feed))[0].numpy()
        theirs = OnnxStep(root / STEP_ONNX)(feed)[0]
        report["onnx_mismatches"] = int((ours != theirs).any(axis=1).sum())
    frames = record_frames(policy, parity_steps, seed)
    report["rollout_steps"] = len(frames)
    report["rollout_mismatches"] = {}
    for backend in ("torch", "onnx") if onnx_bytes is not None else ("torch",):
        bundle = load_bundle(root, backend=cast(Any, backend))
        report["rollout_mismatches"][backend] = rollout_mismatches(policy, bundle.policy, frames)
    bad = (
        bad_action
        + bad_carry
        + report.get("onnx_mismatches", 0)
        + sum(report["rollout_mismatches"].values())
    )
    if not bad:  # the error shadow mode compares its online forecast error with
        held_out = record_frames(policy, REFERENCE_STEPS, seed + 1)
        torch_bundle = load_bundle(root, backend="torch")
        manifest["forecast_reference"] = forecast_reference(torch_bundle.policy, held_out)
    return _seal(root, manifest, report, bad, run, "dreamer")


REFERENCE_STEPS = 240
"""Decisions of the held-out rollout a Dreamer bundle's forecast reference is measured on."""


def forecast_reference(
    policy: Any, frames: list[Telemetry], horizon: int = 20, samples: int = 32, seed: int = 0
) -> dict[str, Any]:
    """The world model's forecast error on a held-out rollout, as shadow mode measures it online.

    At every decision with an observed frame ``horizon`` steps later, the median of the
    forecast at the horizon (the same call shadow mode makes) is compared with what was
    observed then; the mean absolute error per field is the reference.

    Args:
        policy: A loaded Dreamer bundle policy (``act`` and ``forecast``).
        frames: The held-out rollout's frames (a seed the parity check did not use).
        horizon: Steps ahead (shadow mode's default, :class:`agents.shadow.deciders.
            ForecastingPolicy`).
        samples: Imagined futures per forecast.
        seed: Seed of the futures.

    Returns:
        ``{"horizon_steps", "mae": {field: value}, "count": {field: n}, "frames"}``.
    """
    from envs.core.telemetry import FIELD_INDEX

    services = len(policy.codec.services)
    errors: dict[str, list[float]] = {}
    state = policy.reset(1)
    for t, frame in enumerate(frames):
        _, state, _ = policy.act(frame, state)
        if t + horizon >= len(frames):
            continue
        fc = policy.forecast(state, horizon=horizon, samples=samples, quantiles=(0.5,), seed=seed)
        later = frames[t + horizon]
        for metric, per_step in fc.items():
            if not isinstance(per_step, list) or metric not in FIELD_INDEX:
                continue
            col = FIELD_INDEX[metric]
            for s in range(services):
                seen = float(later.values[s, col])
                if bool(later.mask[s, col]) and np.isfinite(seen):
                    errors.setdefault(metric, []).append(abs(per_step[-1][s][0] - seen))
    return {
        "horizon_steps": horizon,
        "mae": {m: float(np.mean(e)) for m, e in errors.items()},
        "count": {m: len(e) for m, e in errors.items()},
        "frames": len(frames),
    }


def _seal(
    root: Path, manifest: dict[str, Any], report: dict[str, Any], bad: int, run: Path, kind: str
) -> Path:
    """Record the parity report; remove the bundle if it failed, else version, write and sum it.

    Raises:
        BundleError: Any parity mismatch (``bad > 0``); nothing is left in ``root``.
    """
    manifest["parity"] = report
    if bad:
        shutil.rmtree(root)
        raise BundleError(f"{run}: parity check failed ({report}); no bundle written")
    digest = hashlib.sha256(
        json.dumps(manifest, sort_keys=True, default=_plain).encode()
    ).hexdigest()
    manifest["model_version"] = f"{kind}-{digest[:12]}"
    _dump(root, manifest)
    write_sums(root)
    return root
