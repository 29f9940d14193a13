"""Policy bundles: export a trained policy to a verified folder, and load it back anywhere.

A bundle is a folder:

* ``manifest.json``: schema version, policy kind and algorithm, topology (service names and a
  hash of the call graph), the controller's :class:`~envs.core.spec.ControlSpec`, the
  observation spec (encoder spec, layout, normalisation parameters), the action spec (codec
  layout, ``nvec``, masks), the network, the guard configuration, library versions, the hash
  of the training config, the training and evaluation figures with the commands that made
  them, the training features' reference statistics (for drift checks), and the parity
  check's result;
* ``weights.safetensors``: the decision network (``safetensors.torch.save_model``);
* ``obs_norm.safetensors``: the observation normalisation statistics (float64);
* ``policy.onnx``: the same network for onnxruntime, written only after the parity check
  (:mod:`agents.bundle_export` writes bundles); a Dreamer bundle has ``rssm_step.onnx``
  instead (:mod:`agents.bundle_dreamer`);
* ``SHA256SUMS``: ``sha256sum -c`` lines over every other file.

No file is a pickle. :func:`load_bundle` verifies the sums (a changed, missing or extra file
is refused, naming it), validates the manifest and rebuilds a :class:`BundlePolicy`, a
:class:`~envs.core.policy.Policy` that needs neither Stable-Baselines3 nor the simulator:
onnxruntime runs ``policy.onnx`` when present (``backend="onnx"``), torch runs the
safetensors weights otherwise (``backend="torch"``).

**What is exported.** SB3 runs (PPO, MaskablePPO, A2C, DQN) export their deterministic
decision: the actor path (features, the policy MLP, the action head; DQN's Q-network) as
one plain-torch MLP, fed the observation normalised as ``VecNormalize`` does (float64, then
float32), choosing the mode per dimension (``softmax`` then ``argmax`` as SB3's
categorical distributions do; masked logits at ``-1e8`` as sb3-contrib's). The rule
baselines (``hpa``, ``tuned_hpa``, ``runbook``, ``tuned_runbook``) export as
configuration-only bundles (no weights). Dreamer runs export their world model, actor and
critic, and ``rssm_step.onnx``, one recurrent step with the carry as explicit inputs and
outputs (:mod:`agents.bundle_dreamer`; the manifest's ``recurrent_state`` lists it).

**Parity.** :func:`agents.bundle_export.export_run` compares, before writing
``policy.onnx``, the exported network (torch and ONNX) with the SB3 model on random
observations and masks, and the bundle policy with :class:`agents.sb3.policy.SB3Policy`
along a 50-decision rollout of the run's scenario; any mismatch refuses the export. The
manifest's ``baseline`` record of a rule bundle holds its scenario and HPA configuration,
so loading it needs no config file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_model
from torch import nn

from agents.baselines.hpa import HPAConfig, HPAPolicy
from agents.guard import GuardConfig
from envs.core.actions import Action
from envs.core.spec import ControlSpec
from envs.core.telemetry import Telemetry
from envs.gym.codec import ActionCodec, ControlBelief
from envs.gym.encoder import ObsEncoder

SCHEMA_VERSION = 1
"""Version of the manifest layout; a loader refuses another."""

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
WEIGHTS = "weights.safetensors"
OBS_NORM = "obs_norm.safetensors"
ONNX = "policy.onnx"

HUGE_NEG = -1e8
"""sb3-contrib's logit for a masked-out choice."""

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "Tanh": nn.Tanh,
    "ReLU": nn.ReLU,
    "ELU": nn.ELU,
    "LeakyReLU": nn.LeakyReLU,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
}
"""Hidden activations a bundle may name."""

BASELINES: tuple[str, ...] = ("hpa", "tuned_hpa", "runbook", "tuned_runbook")
"""Rule policies that export as configuration-only bundles."""


class BundleError(ValueError):
    """A bundle that cannot be exported or loaded; the message names the file and the fix."""


# --------------------------------------------------------------------------------------------
# the decision network


class DecisionNet(nn.Module):
    """An MLP from a normalised observation and masks to one choice per action dimension.

    Linear layers with the activation after every one but the last; the last gives logits
    (``head="categorical"``) or Q-values (``head="q"``), ``sum(nvec)`` of them, split per
    dimension; masked-out entries become ``-1e8``; the mode is the argmax of the softmax
    (categorical) or of the values (Q).

    Args:
        sizes: Layer widths, input first (``[obs, hidden..., sum(nvec)]``).
        activation: A name in :data:`ACTIVATIONS`.
        nvec: Choices per action dimension.
        head: ``categorical`` or ``q``.
    """

    def __init__(
        self, sizes: list[int], activation: str, nvec: list[int], head: str = "categorical"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise BundleError(f"network.activation {activation!r}: one of {sorted(ACTIVATIONS)}")
        if len(sizes) < 2 or sizes[-1] != sum(nvec):
            raise BundleError(
                f"network.sizes {sizes} must end with sum(nvec) = {sum(nvec)} outputs"
            )
        if head not in ("categorical", "q"):
            raise BundleError(f"network.head {head!r}: 'categorical' or 'q'")
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.mlp = nn.Sequential(*layers)
        self.sizes = [int(n) for n in sizes]
        self.activation = activation
        self.nvec = [int(n) for n in nvec]
        self.head = head

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` float32 and ``(B, sum(nvec))`` bool -> ``(B, len(nvec))`` int64."""
        out = self.mlp(obs)
        out = torch.where(mask, out, torch.full_like(out, HUGE_NEG))
        picks = []
        for part in torch.split(out, self.nvec, dim=1):
            if self.head == "categorical":
                logp = part - part.logsumexp(dim=-1, keepdim=True)
                picks.append(torch.softmax(logp, dim=-1).argmax(dim=-1))
            else:
                picks.append(part.argmax(dim=-1))
        return torch.stack(picks, dim=1)


# --------------------------------------------------------------------------------------------
# files and sums


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sums(folder: Path) -> Path:
    """Write ``SHA256SUMS`` (``sha256sum -c`` format, sorted) over every other file."""
    lines = [
        f"{sha256(p)}  {p.relative_to(folder).as_posix()}"
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != SUMS
    ]
    path = folder / SUMS
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def verify_sums(folder: str | Path) -> dict[str, str]:
    """Check every file against ``SHA256SUMS``; returns ``{file: sha256}``.

    Raises:
        BundleError: ``SHA256SUMS`` missing or malformed, a listed file missing or changed,
            or a file present that it does not list, each naming the file.
    """
    root = Path(folder)
    sums_path = root / SUMS
    if not sums_path.is_file():
        raise BundleError(f"{root}: {SUMS} is missing; not an opsworld bundle (re-export it)")
    listed: dict[str, str] = {}
    for n, line in enumerate(sums_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or name in listed:
            raise BundleError(f"{sums_path}: line {n} is not '<sha256>  <file>': {line!r}")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{sums_path}: line {n} names a path outside the bundle: {name!r}")
        listed[name] = digest
    present = {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != SUMS
    }
    for name in sorted(set(listed) - present):
        raise BundleError(f"{root / name}: listed in {SUMS} but missing")
    for name in sorted(present - set(listed)):
        raise BundleError(f"{root / name}: not listed in {SUMS} (a file was added)")
    for name, digest in sorted(listed.items()):
        if sha256(root / name) != digest:
            raise BundleError(f"{root / name}: SHA-256 differs from {SUMS} (the file changed)")
    return listed


def bundle_sha(folder: str | Path) -> str:
    """The bundle's identity: the SHA-256 of its ``SHA256SUMS`` file."""
    return sha256(Path(folder) / SUMS)


# --------------------------------------------------------------------------------------------
# the manifest


REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "kind": str,
    "algorithm": str,
    "name": str,
    "topology": dict,
    "control_spec": dict,
    "guard": dict,
    "versions": dict,
    "files": dict,
}
KINDS: tuple[str, ...] = ("sb3", "dreamer", "baseline")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Parse and check ``manifest.json`` (schema version, fields, kinds).

    Raises:
        BundleError: Naming the file and the field.
    """
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: must hold a JSON object")
    for key, typ in REQUIRED.items():
        if key not in data:
            raise BundleError(f"{path}: field {key!r} is missing")
        if not isinstance(data[key], typ):
            raise BundleError(f"{path}: field {key!r} has the wrong type")
    if data["schema_version"] != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {data['schema_version']} != {SCHEMA_VERSION}; re-export"
        )
    if data["kind"] not in KINDS:
        raise BundleError(f"{path}: kind {data['kind']!r} is not one of {list(KINDS)}")
    needs: dict[str, tuple[str, ...]] = {
        "sb3": ("observation", "action", "network"),
        "dreamer": ("observation", "action", "network", "recurrent_state", "scenario"),
    }
    for key in needs.get(data["kind"], ()):
        if not isinstance(data.get(key), dict):
            raise BundleError(f"{path}: a {data['kind']} bundle needs the object {key!r}")
    return data


# --------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class ObsNorm:
    """``VecNormalize``'s observation normalisation, frozen.

    Attributes:
        enabled: Whether observations are normalised at all.
        clip: ``clip_obs``.
        epsilon: ``epsilon``.
        stats: ``key -> (mean, var)`` float64 arrays (key ``obs`` for a Box observation).
    """

    enabled: bool
    clip: float
    epsilon: float
    stats: dict[str, tuple[np.ndarray, np.ndarray]]

    def apply(self, key: str, x: np.ndarray) -> np.ndarray:
        """Normalise one key's array as ``VecNormalize.normalize_obs`` does (to float32)."""
        if not self.enabled or key not in self.stats:
            return np.asarray(x, dtype=np.float32)
        mean, var = self.stats[key]
        out = np.clip((x - mean) / np.sqrt(var + self.epsilon), -self.clip, self.clip)
        return out.astype(np.float32)


class _TorchRunner:
    def __init__(self, net: DecisionNet) -> None:
        self.net = net.eval()

    def __call__(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.net(torch.as_tensor(obs), torch.as_tensor(mask))
        return out.numpy()


class OnnxRunner:
    """``policy.onnx`` in onnxruntime (one thread): ``(obs, mask) -> action``."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def __call__(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Indices per dimension for a batch."""
        return cast(np.ndarray, self.session.run(None, {"obs": obs, "mask": mask})[0])


class BundlePolicy:
    """A verified bundle as a :class:`~envs.core.policy.Policy` (no SB3, no simulator).

    Decides exactly as :class:`agents.sb3.policy.SB3Policy` does (deterministic mode): the
    stream's :class:`~envs.gym.codec.ControlBelief` takes the frame, the encoder encodes it,
    the normalisation and the network choose, the codec decodes the choice.

    Attributes:
        name: The bundle's name.
        manifest: The parsed manifest.
        sha: The bundle's SHA (of its ``SHA256SUMS``).
        backend: ``onnx`` or ``torch``.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], sha: str, backend: str) -> None:
        self.folder = folder
        self.manifest = manifest
        self.sha = sha
        self.name = str(manifest["name"])
        self.spec = spec_from_manifest(manifest)
        obs = manifest["observation"]
        act = manifest["action"]
        self.encoder = ObsEncoder.from_spec(obs["encoder"])
        self.obs_kind: str = obs["kind"]
        self.obs_keys: list[str] = list(obs["keys"])
        self.codec = ActionCodec(act["layout"], self.spec, allow_drain=bool(act["allow_drain"]))
        nvec = [int(n) for n in act["nvec"]]
        if list(self.codec.space_spec.nvec) != nvec:
            raise BundleError(
                f"{folder / MANIFEST}: action.nvec {nvec} differs from the codec's "
                f"{list(self.codec.space_spec.nvec)} for layout {act['layout']!r}"
            )
        self.discrete = bool(act["discrete"])
        self.masked = bool(act["masked"])
        self.mask_size = sum(nvec)
        raw = load_numpy(str(folder / OBS_NORM))
        norm = obs["normalization"]
        self.norm = ObsNorm(
            bool(norm["enabled"]),
            float(norm["clip"]),
            float(norm["epsilon"]),
            {k: (raw[f"{k}.mean"], raw[f"{k}.var"]) for k in norm["keys"]},
        )
        net_spec = manifest["network"]
        if net_spec["sizes"][0] != sum(int(n) for n in obs["sizes"].values()):
            raise BundleError(
                f"{folder / MANIFEST}: network input {net_spec['sizes'][0]} != observation "
                f"size {sum(obs['sizes'].values())}"
            )
        self.in_cluster_hpa: HPAConfig | None = None
        if act["layout"] == "hpa_tune":
            self.in_cluster_hpa = HPAConfig.model_validate(manifest["hpa"]["config"])
        if backend == "onnx":
            self.run: Any = OnnxRunner(folder / ONNX)
        else:
            net = DecisionNet(
                list(net_spec["sizes"]), net_spec["activation"], nvec, net_spec["head"]
            )
            missing, unexpected = load_model(net, str(folder / WEIGHTS), strict=False)
            if missing or unexpected:
                raise BundleError(
                    f"{folder / WEIGHTS}: tensors missing {sorted(missing)}, "
                    f"unexpected {sorted(unexpected)} for the manifest's network"
                )
            self.run = _TorchRunner(net)
        self.backend = backend

    def reset(self, n: int = 1) -> Any:
        """Fresh state (one for ``n == 1``, else a list of ``n``)."""
        if n == 1:
            return ControlBelief.initial(self.spec)
        return [ControlBelief.initial(self.spec) for _ in range(n)]

    def model_input(self, frame: Telemetry) -> np.ndarray:
        """The network's ``(1, D)`` float32 input for ``frame``."""
        if self.obs_kind == "box":
            return self.norm.apply("obs", self.encoder.encode(frame)[None])
        encoded = self.encoder.encode_dict(frame)
        parts = [self.norm.apply(k, encoded[k][None]).reshape(1, -1) for k in self.obs_keys]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def choose(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Indices per dimension for a batch of inputs and masks."""
        if not self.masked:
            masks = np.ones_like(masks, dtype=bool)
        return self.run(np.ascontiguousarray(obs, dtype=np.float32), masks.astype(bool))

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """Decide on one frame (see :meth:`agents.sb3.policy.SB3Policy.act`)."""
        belief = cast(ControlBelief, state).observe(obs)
        masks = self.codec.masks(belief)
        idx = self.choose(self.model_input(obs), masks[None])[0]
        action: Any = int(idx[0]) if self.discrete else idx
        info: dict[str, Any] = {"action": np.asarray(action).tolist()}
        actions = self.codec.decode(action, belief)
        new_state = belief.after(actions, self.codec.services)
        if self.in_cluster_hpa is not None:  # the cluster's HPA scales; we set its targets
            info["hpa_targets"] = list(self.codec.targets(action).values())
        info["masked_out"] = self.codec.masked_out(action, masks)
        if self.masked:
            info["n_valid"] = int(masks.sum())
        return actions, new_state, info


def spec_from_manifest(manifest: dict[str, Any]) -> ControlSpec:
    """The :class:`ControlSpec` a manifest records."""
    raw: dict[str, Any] = manifest["control_spec"]
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return ControlSpec(**fields)


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle.

    Attributes:
        folder: Where it lies.
        manifest: The parsed manifest.
        sha: SHA-256 of its ``SHA256SUMS``.
        policy: The policy (a :class:`BundlePolicy` or a rule baseline).
        guard: The guard configuration it ships.
    """

    folder: Path
    manifest: dict[str, Any]
    sha: str
    policy: Any
    guard: GuardConfig

    @property
    def version(self) -> str:
        """The model version: the manifest's ``model_version`` (the export's hash prefix)."""
        return str(self.manifest.get("model_version", self.sha[:12]))


def load_bundle(folder: str | Path, backend: Literal["auto", "onnx", "torch"] = "auto") -> Bundle:
    """Verify and load a bundle.

    Args:
        folder: The bundle folder.
        backend: ``onnx`` (needs ``policy.onnx``), ``torch``, or ``auto`` (ONNX when present).

    Raises:
        BundleError: A failed check, naming the file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise BundleError(f"{root}: not a folder; give the bundle folder (opsworld export out=)")
    verify_sums(root)
    manifest = read_manifest(root)
    sha = bundle_sha(root)
    for name in manifest["files"]:
        if not (root / name).is_file():
            raise BundleError(f"{root / name}: named in {MANIFEST} but missing")
    guard = GuardConfig.model_validate(manifest["guard"])
    if manifest["kind"] == "baseline":
        policy: Any = baseline_from_manifest(manifest)
    elif manifest["kind"] == "dreamer":
        from agents.bundle_dreamer import STEP_ONNX, DreamerBundlePolicy

        has_step = (root / STEP_ONNX).is_file()
        if backend == "onnx" and not has_step:
            raise BundleError(f"{root / STEP_ONNX}: missing; use backend=torch")
        chosen = "onnx" if (backend == "onnx" or (backend == "auto" and has_step)) else "torch"
        policy = DreamerBundlePolicy(root, manifest, sha, chosen)
    else:
        has_onnx = (root / ONNX).is_file()
        if backend == "onnx" and not has_onnx:
            raise BundleError(f"{root / ONNX}: missing; use backend=torch")
        chosen = "onnx" if (backend == "onnx" or (backend == "auto" and has_onnx)) else "torch"
        policy = BundlePolicy(root, manifest, sha, chosen)
    return Bundle(root, manifest, sha, policy, guard)


def baseline_from_manifest(manifest: dict[str, Any]) -> Any:
    """A rule baseline from a configuration-only bundle (scenario and HPA in the manifest)."""
    from agents.baselines.runbook import RunbookPolicy
    from envs.scenarios.schema import Scenario

    record = manifest["baseline"]
    name = record["policy"]
    if name not in BASELINES:
        raise BundleError(f"{MANIFEST}: baseline.policy {name!r} is not one of {list(BASELINES)}")
    scenario = Scenario.model_validate(record["scenario"])
    hpa_config = HPAConfig.model_validate(record["hpa_config"])
    policy: Any
    if name in ("hpa", "tuned_hpa"):
        policy = HPAPolicy(hpa_config, scenario)
    else:
        policy = RunbookPolicy(scenario, hpa_config=hpa_config)
    policy.name = name
    return policy


# --------------------------------------------------------------------------------------------
# export


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | tuple | set | frozenset):
        return list(obj.tolist() if isinstance(obj, np.ndarray) else obj)
    raise TypeError(f"not JSON-able in a manifest: {type(obj).__name__}")


def _dump(folder: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False, default=_plain)
    (folder / MANIFEST).write_text(text + "\n", encoding="utf-8")
