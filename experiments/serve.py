"""``opsworld serve bundle=<dir>``: the policy server (see :mod:`agents.serving.app`).

``opsworld serve bundle=<dir> host=127.0.0.1 port=8080`` verifies the bundle, warms it up and
serves it with uvicorn. The admin token comes from the environment variable named by
``token_env`` (default ``OPSWORLD_ADMIN_TOKEN``) or from ``token_file``; without either, admin
calls are refused (401). ``docs/serving.md`` shows the calls.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError, structured_config


@dataclass
class ServeConfig:
    """Schema of ``configs/serve.yaml``.

    Attributes:
        bundle: The bundle folder (required).
        host: Interface to bind (loopback unless told otherwise).
        port: TCP port.
        backend: ``auto`` (ONNX when the bundle has it), ``onnx`` or ``torch``.
        token_env: Environment variable holding the admin token.
        token_file: File holding the admin token (used when the variable is unset).
        stream_ttl_s: Seconds an idle stream's state is kept.
        max_streams: Most streams kept at once.
        max_body_bytes: Largest request body.
        timeout_s: Longest a request may run.
        access_log: uvicorn's access log (method, path, status; never headers).
    """

    bundle: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    backend: str = "auto"
    token_env: str = "OPSWORLD_ADMIN_TOKEN"
    token_file: str | None = None
    stream_ttl_s: float = 3600.0
    max_streams: int = 10_000
    max_body_bytes: int = 1 << 20
    timeout_s: float = 10.0
    access_log: bool = False


SCHEMA = ServeConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    ConfigStore.instance().store(name="serve_schema", node=ServeConfig)


def admin_token(conf: ServeConfig) -> str | None:
    """The admin token from ``token_env`` or ``token_file`` (stripped), else None.

    Raises:
        ConfigError: ``token_file`` given but unreadable or empty.
    """
    value = os.environ.get(conf.token_env)
    if value:
        return value.strip()
    if conf.token_file:
        try:
            text = Path(conf.token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(
                f"token_file={conf.token_file}: cannot read ({err.strerror})"
            ) from None
        if not text:
            raise ConfigError(f"token_file={conf.token_file} is empty")
        return text
    return None


def build(cfg: DictConfig | ServeConfig | Mapping[str, Any]) -> tuple[Any, ServeConfig]:
    """The app for ``cfg`` and the validated config.

    Raises:
        ConfigError: No bundle, a bad backend, or a bundle that fails verification.
    """
    from agents.bundle import BundleError
    from agents.serving.app import create_app

    conf = structured_config(ServeConfig, cfg, "serve")
    if not conf.bundle:
        raise ConfigError("bundle=<bundle folder> is required (opsworld export out=...)")
    if conf.backend not in ("auto", "onnx", "torch"):
        raise ConfigError(f"backend={conf.backend!r}: auto, onnx or torch")
    if not 0 < conf.port < 65536:
        raise ConfigError(f"port={conf.port}: 1..65535")
    try:
        app = create_app(
            conf.bundle,
            token=admin_token(conf),
            backend=conf.backend,
            stream_ttl_s=conf.stream_ttl_s,
            max_streams=conf.max_streams,
            max_body_bytes=conf.max_body_bytes,
            timeout_s=conf.timeout_s,
        )
    except BundleError as err:
        raise ConfigError(f"bundle refused: {err}") from None
    return app, conf


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
def _hydra_main(cfg: DictConfig) -> None:
    import uvicorn

    try:
        app, conf = build(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except ConfigError as err:
        print(f"opsworld serve: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    uvicorn.run(
        app,
        host=conf.host,
        port=conf.port,
        access_log=conf.access_log,
        log_level="info",
        timeout_keep_alive=30,
    )


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
