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
        forecast_reference: The manifest's held-out forecast error (a world model's bundle;
            None otherwise), which the online forecast error is compared with.
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
    forecast_reference: dict[str, Any] | None = None
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
    if callable(getattr(policy, "forecast", None)):  # a bundle with a world model (Dreamer)
        step_s = float((m.get("scenario") or {}).get("decision_interval_s", 15.0))
        policy = ForecastingPolicy(policy, list(spec_from_manifest(m).services), step_s)
    return Decider(
        policy=policy,
        spec=spec_from_manifest(m),
        guard=bundle.guard,
        policy_name=f"{m['kind']}/{m['algorithm']}",
        bundle_sha=bundle.sha,
        model_version=bundle.version,
        feature_reference=m.get("feature_reference") or None,
        encoder=encoder,
        forecast_reference=m.get("forecast_reference") or None,
    )


FORECAST_QUANTILES = (0.05, 0.5, 0.95)
"""The quantiles shadow mode records of a forecast (the 90 % interval and the median)."""


class ForecastingPolicy:
    """A bundle policy with a world model whose every decision carries its forecast.

    After the inner policy decides, its world model imagines the next ``horizon`` decision
    steps from the stream's posterior (the decided actions first, then none) and the 5/50/95 %
    quantiles at the last step go into ``info["forecast"]`` in the audit's format
    (``{service: {field: {"q05", "q50", "q95", "horizon_s"}}}``, fields named as
    :data:`envs.core.telemetry.SERVICE_FIELDS`); shadow mode records them, exports the
    replica band and scores the medians when they fall due.

    Args:
        inner: The bundle's policy (with ``forecast(state, horizon=, samples=, quantiles=,
            seed=)``).
        services: Service names in the policy's row order.
        step_s: Seconds per decision step (the scenario's ``decision_interval_s``).
        horizon: Steps ahead (default 20: five minutes at 15 s).
        samples: Imagined futures per forecast.
        seed: Seed of the imagined futures (fixed: the same frames give the same forecast).
    """

    def __init__(
        self,
        inner: Any,
        services: list[str],
        step_s: float,
        horizon: int = 20,
        samples: int = 32,
        seed: int = 0,
    ) -> None:
        self.inner, self.services, self.step_s = inner, services, step_s
        self.horizon, self.samples, self.seed = horizon, samples, seed
        self.name = str(getattr(inner, "name", "policy"))
        self.in_cluster_hpa = getattr(inner, "in_cluster_hpa", None)

    def reset(self, n: int = 1) -> Any:
        """The inner policy's fresh state."""
        return self.inner.reset(n)

    def act(self, obs: Any, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """The inner decision, with ``info["forecast"]`` (left out if the model cannot)."""
        actions, new, info = self.inner.act(obs, state)
        try:
            fc = self.inner.forecast(
                new,
                horizon=self.horizon,
                samples=self.samples,
                quantiles=FORECAST_QUANTILES,
                seed=self.seed,
            )
        except ValueError:  # no frame seen yet
            return actions, new, info
        out: dict[str, dict[str, dict[str, float]]] = {}
        for metric, per_step in fc.items():
            if not isinstance(per_step, list):  # p_violation
                continue
            last = per_step[-1]  # [service][quantile] at the horizon
            for svc, (q05, q50, q95) in zip(self.services, last, strict=True):
                out.setdefault(svc, {})[metric] = {
                    "q05": float(q05),
                    "q50": float(q50),
                    "q95": float(q95),
                    "horizon_s": self.horizon * self.step_s,
                }
        return actions, new, {**info, "forecast": out}


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
