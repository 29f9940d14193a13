"""``opsworld verify bundle=<dir>``: check a policy bundle before serving it.

Checks the SHA-256 sums (changed, missing or added files), the manifest's schema, the
consistency of its specs (the codec's action layout, the network's input size) and, for a
bundle with ``policy.onnx`` (a Dreamer bundle: ``rssm_step.onnx``, random inputs and
carries), parity of the ONNX and torch decisions on random inputs.
Exit status 0 when every check passes, 1 with the failing check otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from agents.bundle import ONNX, BundleError, BundlePolicy, load_bundle
from agents.bundle_dreamer import STEP_ONNX, DreamerBundlePolicy, step_mismatches
from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError, structured_config


@dataclass
class VerifyConfig:
    """Schema of ``configs/verify.yaml``.

    Attributes:
        bundle: The bundle folder.
        samples: Random inputs for the ONNX-vs-torch parity check.
        seed: Their seed.
    """

    bundle: str | None = None
    samples: int = 512
    seed: int = 0


SCHEMA = VerifyConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    ConfigStore.instance().store(name="verify_schema", node=VerifyConfig)


def verify(cfg: DictConfig | VerifyConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Run every check; returns a report (``ok``, the SHA, the checks passed).

    Raises:
        ConfigError: No ``bundle`` given.
        BundleError: The first failing check, naming the file.
    """
    conf = structured_config(VerifyConfig, cfg, "verify")
    if not conf.bundle:
        raise ConfigError("bundle=<bundle folder> is required")
    loaded = load_bundle(conf.bundle, backend="torch")
    checks = ["sha256", "manifest", "spec"]
    report: dict[str, Any] = {
        "bundle": conf.bundle,
        "sha": loaded.sha,
        "kind": "",
        "checks": checks,
    }
    report["kind"] = loaded.manifest["kind"]
    policy = loaded.policy
    if isinstance(policy, BundlePolicy) and (loaded.folder / ONNX).is_file():
        onnx_policy = load_bundle(conf.bundle, backend="onnx").policy
        rng = np.random.default_rng(conf.seed)
        obs = rng.normal(0.0, 2.0, size=(conf.samples, policy.run.net.sizes[0]))
        obs = obs.astype(np.float32)
        masks = rng.random((conf.samples, policy.mask_size)) < 0.7
        start = 0
        for k in policy.run.net.nvec:
            masks[:, start] = masks[:, start] | ~masks[:, start : start + k].any(axis=1)
            start += k
        a = policy.choose(obs, masks)
        b = onnx_policy.choose(obs, masks)
        mismatches = int((a != b).any(axis=1).sum())
        if mismatches:
            raise BundleError(
                f"{loaded.folder / ONNX}: {mismatches} of {conf.samples} decisions differ from "
                "the torch weights (re-export the bundle)"
            )
        checks.append(f"onnx parity ({conf.samples} random inputs, 0 mismatches)")
    if isinstance(policy, DreamerBundlePolicy) and (loaded.folder / STEP_ONNX).is_file():
        onnx_step = load_bundle(conf.bundle, backend="onnx").policy
        mismatches = step_mismatches(policy, onnx_step, conf.samples, conf.seed)
        if mismatches:
            raise BundleError(
                f"{loaded.folder / STEP_ONNX}: {mismatches} of {conf.samples} decisions differ "
                "from the torch weights (re-export the bundle)"
            )
        checks.append(f"onnx step parity ({conf.samples} random inputs and carries, 0 mismatches)")
    report["ok"] = True
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="verify")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        report = verify(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except ConfigError as err:
        print(f"opsworld verify: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except BundleError as err:
        print(f"opsworld verify: FAILED: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"OK {report['bundle']} sha256={report['sha']}: " + "; ".join(report["checks"]))


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
