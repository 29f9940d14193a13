"""Where shadow mode's recommendation comes from: a bundle in process, or a remote server.

Both give a :class:`Decider`: a :class:`~envs.core.policy.Policy` (the policy's *proposal*)
plus what the audit needs (bundle SHA, kind/algorithm, model version, the controller's
:class:`~envs.core.spec.ControlSpec`, the bundle's :class:`~agents.guard.GuardConfig` and
training feature reference). The shadow loop puts the policy behind a local
:class:`~agents.guard.Guard` built from the same guard configuration, so the rules (fallback
to the HPA on stale telemetry, circuit breaker on inference errors) hold the same way in
both modes. A remote policy that cannot be reached raises; the guard turns that into an
``inference_error`` and the fallback decides.

* :func:`bundle_decider`: :func:`agents.bundle.load_bundle` (verified, no pickles);
* :func:`remote_decider`: ``opsworld serve`` over HTTP: ``GET /v2/models/{name}`` for the
  metadata, then ``POST /v2/models/{name}/infer`` with one frame per tick and a stream id
  (the server keeps the recurrent state). The server's own guard runs too; its proposal
  (``proposed``) is what the local guard checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agents.bundle import load_bundle, spec_from_manifest
from agents.guard import GuardConfig
from agents.serving.schemas import frame_json
from envs.core.actions import (
    Action,
    DrainNode,
    Noop,
    Restart,
    Rollback,
    Scale,
    SetHPATarget,
    ShedLoad,
)
from envs.core.spec import ControlSpec
from envs.core.telemetry import Telemetry


class DeciderError(RuntimeError):
    """A decider that cannot be set up (bad bundle, server never answered its metadata)."""


@dataclass
class Decider:
    """A policy and what shadow mode records about it.

    Attributes:
        policy: Proposes actions for a frame (Policy protocol).
        spec: The controller's configuration (services, replica bounds).
        guard: The guard configuration the bundle ships.
        policy_name: ``<kind>/<algorithm>`` (``remote/`` prefixed for a server).
        bundle_sha: The bundle's SHA (None while a server has not answered).
        model_version: The model version (None while unknown).
        feature_reference: The manifest's training feature statistics (None: no drift).
        encoder: Encodes a frame into the policy's features (None: no drift).
    """

    policy: Any
    spec: ControlSpec
    guard: GuardConfig
    policy_name: str
    bundle_sha: str | None
    model_version: str | None
    feature_reference: dict[str, Any] | None = None
    encoder: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def bundle_decider(folder: str | Path, backend: str = "auto") -> Decider:
    """A decider from a verified bundle folder.

    Raises:
        agents.bundle.BundleError: The bundle fails verification.
    """
    bundle = load_bundle(folder, backend=backend)  # type: ignore[arg-type]
    m = bundle.manifest
    policy = bundle.policy
    encoder = getattr(policy, "encoder", None)
    return Decider(
        policy=policy,
        spec=spec_from_manifest(m),
        guard=bundle.guard,
        policy_name=f"{m['kind']}/{m['algorithm']}",
        bundle_sha=bundle.sha,
        model_version=bundle.version,
        feature_reference=m.get("feature_reference") or None,
        encoder=encoder,
    )


_ACTIONS: dict[str, type] = {
    "noop": Noop,
    "scale": Scale,
    "restart": Restart,
    "rollback": Rollback,
    "shed_load": ShedLoad,
    "drain_node": DrainNode,
    "set_hpa_target": SetHPATarget,
}


def action_from_dict(d: dict[str, Any]) -> Action:
    """The typed action of an :func:`agents.guard.action_dict`.

    Raises:
        ValueError: Unknown ``kind`` or wrong fields (naming them).
    """
    kind = d.get("kind")
    cls = _ACTIONS.get(str(kind))
    if cls is None:
        raise ValueError(f"action kind {kind!r}: one of {sorted(_ACTIONS)}")
    fields = {k: v for k, v in d.items() if k != "kind"}
    try:
        return cls(**fields)
    except TypeError as err:
        raise ValueError(f"action {d}: {err}") from None


class RemotePolicy:
    """``opsworld serve`` as a policy: one ``/infer`` call per frame, state on the server.

    ``act`` raises :class:`httpx.HTTPError` or :class:`RuntimeError` when the server cannot
    be reached or answers an error; the guard around it falls back.

    Args:
        url: The server's base URL.
        model: The model name.
        stream_id: The stream whose state the server keeps for this shadow run.
        timeout_s: Per-request timeout.
        client: An ``httpx.Client`` (one is made otherwise).
    """

    def __init__(
        self,
        url: str,
        model: str,
        stream_id: str,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.stream_id = stream_id
        self.name = f"remote:{model}"
        self._client = client or httpx.Client(timeout=timeout_s)
        self.last_response: dict[str, Any] | None = None

    def reset(self, n: int = 1) -> Any:
        """A fresh stream: the next request asks the server to reset it."""
        return {"reset": True}

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """POST the frame; the server's proposal as typed actions."""
        body = {
            "stream_id": self.stream_id,
            "frames": [frame_json(obs)],
            "reset": bool(state and state.get("reset")),
        }
        r = self._client.post(f"{self.url}/v2/models/{self.model}/infer", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"server answered HTTP {r.status_code}: {r.text[:300]}")
        data = r.json()
        self.last_response = data
        proposed = [action_from_dict(a) for a in data.get("proposed", [])]
        info = {
            "bundle_sha": data.get("bundle_sha"),
            "model_version": data.get("model_version"),
            "server_guard": data.get("guard"),
        }
        return proposed, {"reset": False}, info

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


def remote_decider(
    url: str,
    model: str | None = None,
    stream_id: str = "shadow",
    timeout_s: float = 5.0,
    bundle: str | Path | None = None,
) -> Decider:
    """A decider that asks a running ``opsworld serve``.

    The control spec and guard come from ``bundle`` when given (the same bundle the server
    serves), else from the server's model metadata (services from ``inputs``; replica
    bounds from the guard config, 1..1000 otherwise).

    Raises:
        DeciderError: The server does not answer its metadata (shadow needs it once, at start).
    """
    base = url.rstrip("/")
    try:
        with httpx.Client(timeout=timeout_s) as c:
            if model is None:
                reason = c.get(f"{base}/v2/models/-").json().get("reason", "")
                if "serves " not in reason:
                    raise DeciderError(f"server={url}: cannot tell the model name ({reason!r})")
                model = reason.split("serves ", 1)[1].strip().strip("'")
            r = c.get(f"{base}/v2/models/{model}")
    except httpx.HTTPError as err:
        raise DeciderError(
            f"server={url}: unreachable at start ({err}); start opsworld serve"
        ) from None
    if r.status_code != 200:
        raise DeciderError(
            f"server={url}: GET /v2/models/{model} -> HTTP {r.status_code}: {r.text[:300]}"
        )
    meta = r.json()
    if bundle is not None:
        local = bundle_decider(bundle)
        spec, guard, ref, encoder = local.spec, local.guard, local.feature_reference, local.encoder
    else:
        guard = GuardConfig.model_validate(meta["guard"])
        services = tuple(meta["inputs"][0]["fields"]["services"])
        n = len(services)
        lo = guard.replicas_min if isinstance(guard.replicas_min, int) else 1
        hi = guard.replicas_max if isinstance(guard.replicas_max, int) else 1000
        spec = ControlSpec(services, (lo,) * n, (hi,) * n, (lo,) * n, 1)
        ref, encoder = None, None
    return Decider(
        policy=RemotePolicy(base, model, stream_id, timeout_s),
        spec=spec,
        guard=guard,
        policy_name=f"remote/{meta.get('algorithm', 'unknown')}",
        bundle_sha=meta.get("bundle_sha"),
        model_version=(meta.get("versions") or [None])[0],
        feature_reference=ref,
        encoder=encoder,
        extra={"server": base, "model": model},
    )
