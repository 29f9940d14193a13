"""The policy server's FastAPI application (KServe Open Inference Protocol v2 paths).

:func:`create_app` verifies and loads a bundle (:func:`agents.bundle.load_bundle`), puts it
behind its :class:`~agents.guard.Guard`, runs one warm-up inference and then serves:

* ``GET /v2/health/live`` (200 while the process runs) and ``GET /v2/health/ready`` (200
  once the bundle is verified and warmed up, else 503);
* ``GET /v2`` (server metadata), ``GET /v2/models/{name}`` (model metadata from the
  manifest), ``GET /v2/models/{name}/ready``;
* ``POST /v2/models/{name}/infer``: a telemetry window in, typed actions out with the guard's
  verdict, the bundle's SHA and the model version; state per ``stream_id``;
* ``POST /v2/models/{name}/forecast`` and ``POST /v2/models/{name}/explain`` (bundles with a
  world model, i.e. Dreamer bundles; 404 with a reason for others): quantiles of p99, rps,
  error rate and replicas and P(SLO violation) over a horizon, and the what-if planner's
  predicted outcome per candidate action, from a stream's state (not changed by them);
* ``GET /metrics``: Prometheus text (``opsworld_policy_inference_seconds``,
  ``opsworld_policy_requests_total{endpoint,code}``,
  ``opsworld_guard_interventions_total{rule}``, ``opsworld_policy_bundle_info``);
* ``POST /v2/admin/reload`` (body ``{"bundle": "<dir>"}``) and ``POST /v2/admin/rollback``
  behind ``Authorization: Bearer <token>``; the new bundle is verified and warmed up off the
  event loop, then swapped in one assignment, so a request in flight finishes on the bundle
  it started with. Without a configured token every admin call is 401.

Every error is JSON ``{"error", "reason", "detail"}``. Bodies over ``max_body_bytes`` get
413; a request running over ``timeout_s`` gets 504. The token is compared in constant time
and never logged or echoed.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import math
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.bundle import Bundle, BundleError, load_bundle, spec_from_manifest
from agents.guard import Guard, GuardedPolicy, GuardVerdict, action_dict
from agents.serving.schemas import (
    INFERENCE_BUCKETS_S,
    ErrorBody,
    ExplainResponse,
    ForecastRequest,
    ForecastResponse,
    InferRequest,
    InferResponse,
    WorldModelRequest,
    frame_json,
    to_telemetry,
)
from agents.serving.streams import Stream, StreamStore

"""Histogram buckets of one decision (sub-millisecond resolution)."""

EXPLAIN_BUDGET = 2048
"""Most imagined steps per candidate (``samples x horizon``) an explain request may ask for
(every candidate is imagined that many times; about 20 candidates on chain3)."""


class ServeError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, error: str, reason: str, detail: Any = None) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.detail = detail


@dataclass
class Loaded:
    """A bundle ready to serve: the bundle and its guarded policy."""

    bundle: Bundle
    policy: GuardedPolicy

    @property
    def name(self) -> str:
        """The model name of the paths."""
        return str(self.bundle.manifest["name"])

    @property
    def version(self) -> str:
        """The model version."""
        return self.bundle.version


@dataclass
class ServerState:
    """What the app holds: the bundle serving now, the previous one, streams, metrics."""

    current: Loaded
    previous: Loaded | None
    streams: StreamStore
    token: str | None
    ready: bool = False
    history: list[str] = field(default_factory=list)


class ReloadRequest(BaseModel):
    """``POST /v2/admin/reload``."""

    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(min_length=1, max_length=4096)


def prepare(folder: str | Path, backend: str = "auto") -> Loaded:
    """Verify, load and warm up a bundle (one inference on an all-missing frame).

    Raises:
        BundleError: The bundle fails a check.
    """
    bundle = load_bundle(folder, backend=backend)  # type: ignore[arg-type]
    spec = spec_from_manifest(bundle.manifest)
    policy = GuardedPolicy(bundle.policy, Guard(bundle.guard, spec))
    from agents.serving.schemas import Frame

    blank = to_telemetry(Frame(t=0.0, services={}, cluster={}), spec.services)
    state = policy.reset(1)
    policy.act(blank, state)
    return Loaded(bundle, policy)


def _error(status: int, error: str, reason: str, detail: Any = None) -> JSONResponse:
    body = ErrorBody(error=error, reason=reason, detail=detail).model_dump()
    return JSONResponse(status_code=status, content=body)


def create_app(
    bundle: str | Path,
    *,
    token: str | None = None,
    backend: str = "auto",
    stream_ttl_s: float = 3600.0,
    max_streams: int = 10_000,
    max_body_bytes: int = 1 << 20,
    timeout_s: float = 10.0,
) -> FastAPI:
    """The server app for ``bundle``.

    Args:
        bundle: The bundle folder (verified before anything is served).
        token: The admin bearer token (None: admin calls are always 401).
        backend: ``auto``, ``onnx`` or ``torch`` (see :func:`agents.bundle.load_bundle`).
        stream_ttl_s: Seconds an idle stream's state is kept.
        max_streams: Most streams kept (least recently used go first).
        max_body_bytes: Largest request body (413 beyond).
        timeout_s: Longest a request may run (504 beyond).

    Raises:
        BundleError: The bundle fails verification.
    """
    registry = CollectorRegistry()
    inference = Histogram(
        "opsworld_policy_inference_seconds",
        "Seconds per decision (policy and guard), per frame decided on.",
        buckets=INFERENCE_BUCKETS_S,
        registry=registry,
    )
    requests = Counter(
        "opsworld_policy_requests",
        "HTTP requests by route and status code.",
        ["endpoint", "code"],
        registry=registry,
    )
    interventions = Counter(
        "opsworld_guard_interventions",
        "Guard interventions by rule.",
        ["rule"],
        registry=registry,
    )
    bundle_info = Gauge(
        "opsworld_policy_bundle_info",
        "The bundle being served (value 1), by name, version, SHA, kind and algorithm.",
        ["name", "version", "sha", "kind", "algorithm"],
        registry=registry,
    )
    streams_gauge = Gauge(
        "opsworld_policy_streams", "Streams whose state is held.", registry=registry
    )

    loaded = prepare(bundle, backend)
    state = ServerState(loaded, None, StreamStore(stream_ttl_s, max_streams), token)

    def publish(model: Loaded) -> None:
        bundle_info.clear()
        m = model.bundle.manifest
        bundle_info.labels(
            model.name, model.version, model.bundle.sha, m["kind"], m["algorithm"]
        ).set(1)

    publish(loaded)
    state.ready = True
    state.history.append(loaded.version)

    app = FastAPI(
        title="opsworld policy server",
        version=_version(),
        description="A verified opsworld policy bundle behind KServe Open Inference Protocol "
        "v2 paths, with a safety guard between the policy and its output.",
        responses={
            400: {"model": ErrorBody},
            404: {"model": ErrorBody},
            413: {"model": ErrorBody},
            422: {"model": ErrorBody},
            504: {"model": ErrorBody},
        },
    )
    app.state.server = state

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.reason, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return _error(422, "invalid request", f"{where}: {first['msg']}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = str(exc.detail)
        if exc.status_code == 404:
            reason = f"no route {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 405:
            reason = f"method {request.method} not allowed on {request.url.path}"
        return _error(exc.status_code, "http error", reason)

    async def limited(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            return _error(400, "bad request", "content-length is not a number")
        if length is not None and int(length) > max_body_bytes:
            return _error(
                413,
                "request too large",
                f"body of {length} bytes exceeds {max_body_bytes} bytes; send fewer frames",
            )
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()  # chunked: read (Starlette caches it for the route)
            if len(body) > max_body_bytes:
                return _error(
                    413,
                    "request too large",
                    f"body exceeds {max_body_bytes} bytes; send fewer frames",
                )
        try:
            response: Response = await asyncio.wait_for(call_next(request), timeout=timeout_s)
        except TimeoutError:
            return _error(504, "timeout", f"request ran over {timeout_s} s")
        return response

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        try:
            response = await limited(request, call_next)
        except Exception as err:  # an unexpected failure: still a JSON answer, and counted
            response = _error(500, "internal error", type(err).__name__)
        requests.labels(_endpoint(request), str(response.status_code)).inc()
        return response

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        """Liveness: the process serves HTTP."""
        return {"live": True}

    @app.get("/v2/health/ready", responses={503: {"model": ErrorBody}})
    async def ready() -> Any:
        """Readiness: a verified bundle is loaded and warmed up."""
        if not state.ready:
            return _error(503, "not ready", "the bundle is not loaded yet")
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        """Server metadata (name, version, extensions)."""
        return {
            "name": "opsworld",
            "version": _version(),
            "extensions": [
                "opsworld_guard",
                "opsworld_admin",
                "opsworld_streams",
                "opsworld_forecast",
                "opsworld_explain",
            ],
        }

    def model_for(name: str) -> Loaded:
        current = state.current
        if name != current.name:
            raise ServeError(
                404,
                "model not found",
                f"model {name!r} is not served; this server serves {current.name!r}",
            )
        return current

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        """Model metadata from the manifest."""
        model = model_for(name)
        m = model.bundle.manifest
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": f"opsworld-{m['kind']}",
            "algorithm": m["algorithm"],
            "bundle_sha": model.bundle.sha,
            "backend": getattr(model.bundle.policy, "backend", "rules"),
            "topology": m["topology"],
            "inputs": [
                {
                    "name": "frames",
                    "datatype": "JSON",
                    "shape": [-1],
                    "fields": {
                        "services": m["control_spec"]["services"],
                    },
                }
            ],
            "outputs": [{"name": "actions", "datatype": "JSON", "shape": [-1]}],
            "observation": m.get("observation"),
            "action": m.get("action"),
            "guard": m["guard"],
        }

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> dict[str, Any]:
        """Whether this model is ready."""
        model = model_for(name)
        return {"name": model.name, "ready": state.ready}

    @app.post("/v2/models/{name}/infer", response_model=InferResponse)
    async def infer(name: str, body: InferRequest) -> InferResponse:
        """Decide on a telemetry window; the guard's verdict comes with the actions."""
        model = model_for(name)  # a reload swaps state.current; this request keeps `model`
        services = tuple(model.bundle.manifest["control_spec"]["services"])
        try:
            frames = [to_telemetry(f, services) for f in body.frames]
        except ValueError as err:
            raise ServeError(422, "invalid frames", str(err)) from None
        times = [f.t for f in frames]
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ServeError(422, "invalid frames", f"frame times must increase, got {times}")
        stream = None if body.reset else state.streams.get(body.stream_id, model.version)
        if stream is None:
            stream = Stream(model.policy.reset(1), -math.inf, model.version, 0.0)
        now = body.now if body.now is not None else times[-1]
        decided = 0
        actions: list[Any] = []
        info: dict[str, Any] = {}
        verdict: GuardVerdict | None = None
        for frame in frames:
            if frame.t <= stream.last_t:
                continue
            started = time.perf_counter()
            try:
                actions, stream.state, info = model.policy.act(frame, stream.state, now=now)
            except (ValueError, TypeError) as err:
                raise ServeError(422, "cannot decide", str(err)) from None
            inference.observe(time.perf_counter() - started)
            verdict = info.get("guard_verdict")
            if verdict is not None:
                for i in verdict.interventions:
                    interventions.labels(i.rule).inc()
            stream.last_t = frame.t
            decided += 1
        state.streams.put(body.stream_id, stream)
        streams_gauge.set(len(state.streams))
        public = {
            k: v for k, v in info.items() if k in ("action", "masked_out", "n_valid", "hpa_targets")
        }
        return InferResponse(
            model_name=model.name,
            model_version=model.version,
            bundle_sha=model.bundle.sha,
            id=body.id,
            stream_id=body.stream_id,
            decisions=decided,
            actions=[action_dict(a) for a in actions] if decided else [],
            proposed=[action_dict(a) for a in info.get("proposed", [])] if decided else [],
            guard=verdict.as_dict() if verdict is not None else None,  # type: ignore[arg-type]
            info=public if decided else {},
        )

    def world_model_state(model: Loaded, body: WorldModelRequest) -> tuple[Any, Any, float]:
        """``(bundle policy, its stream state, t)`` for a world-model route (no side effect)."""
        inner = model.bundle.policy
        if not hasattr(inner, "forecast"):
            raise ServeError(
                404,
                "no world model",
                f"model {model.name!r} ({model.bundle.manifest['kind']} bundle) carries no world "
                "model; forecast and explain need a Dreamer bundle (opsworld export run=<dreamer "
                "run>)",
            )
        services = tuple(model.bundle.manifest["control_spec"]["services"])
        try:
            frames = [to_telemetry(f, services) for f in body.frames]
        except ValueError as err:
            raise ServeError(422, "invalid frames", str(err)) from None
        times = [f.t for f in frames]
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ServeError(422, "invalid frames", f"frame times must increase, got {times}")
        stream = state.streams.get(body.stream_id, model.version)
        inner_state = stream.state.policy if stream is not None else inner.reset(1)
        last_t = stream.last_t if stream is not None else -math.inf
        for frame in frames:  # the stream's own state objects are never changed
            if frame.t > last_t:
                _, inner_state, _ = inner.act(frame, inner_state)
                last_t = frame.t
        if not math.isfinite(last_t):
            raise ServeError(
                422,
                "no state",
                f"stream {body.stream_id!r} has seen no frame: send frames here or to infer first",
            )
        return inner, inner_state, last_t

    @app.post(
        "/v2/models/{name}/forecast",
        response_model=ForecastResponse,
        responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    )
    async def forecast(name: str, body: ForecastRequest) -> ForecastResponse:
        """Quantiles of p99, rps, error rate and replicas, and P(SLO violation), ahead."""
        model = model_for(name)
        inner, inner_state, t = world_model_state(model, body)
        net = model.bundle.manifest["network"]
        horizon = body.horizon or int(net["horizon"])
        samples = body.samples or 64
        quantiles = tuple(body.quantiles)
        out = await run_in_threadpool(  # off the event loop: infer keeps being answered
            lambda: inner.forecast(
                inner_state, horizon=horizon, samples=samples, quantiles=quantiles, seed=body.seed
            )
        )
        return ForecastResponse(
            model_name=model.name,
            model_version=model.version,
            stream_id=body.stream_id,
            t=t,
            horizon=horizon,
            decision_interval_s=float(model.bundle.manifest["scenario"]["decision_interval_s"]),
            samples=samples,
            services=list(inner.codec.services),
            quantiles=list(quantiles),
            p99=out["p99"],
            rps=out["rps"],
            error_rate=out["error_rate"],
            replicas=out["replicas_ready"],
            p_violation=out["p_violation"],
        )

    @app.post(
        "/v2/models/{name}/explain",
        response_model=ExplainResponse,
        responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    )
    async def explain(name: str, body: WorldModelRequest) -> ExplainResponse:
        """The what-if planner's predicted outcome of each candidate action."""
        model = model_for(name)
        inner, inner_state, t = world_model_state(model, body)
        horizon = body.horizon or int(model.bundle.manifest["network"]["horizon"])
        samples = body.samples or 16
        if samples * horizon > EXPLAIN_BUDGET:
            raise ServeError(
                422,
                "invalid request",
                f"explain imagines samples x horizon = {samples} x {horizon} steps per "
                f"candidate; at most {EXPLAIN_BUDGET}: ask for fewer samples or a shorter horizon",
            )
        try:
            out = await run_in_threadpool(
                lambda: inner.explain(inner_state, horizon=horizon, samples=samples, seed=body.seed)
            )
        except ValueError as err:
            raise ServeError(422, "cannot explain", str(err)) from None
        explanation = out.pop("explanation")
        return ExplainResponse(
            model_name=model.name,
            model_version=model.version,
            stream_id=body.stream_id,
            t=t,
            plan=out,
            explanation=explanation,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of this server."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        expected = state.token
        if (
            expected is None
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(given.encode(), expected.encode())
        ):
            raise ServeError(
                401,
                "unauthorized",
                "admin calls need 'Authorization: Bearer <token>' with the server's admin token",
            )

    @app.post("/v2/admin/reload", responses={401: {"model": ErrorBody}})
    async def reload(request: Request, body: ReloadRequest) -> dict[str, Any]:
        """Verify and warm up another bundle, then swap it in; the old one is kept for rollback."""
        authorize(request)
        try:
            new = await run_in_threadpool(prepare, body.bundle, backend)
        except (BundleError, FileNotFoundError, ValueError) as err:
            raise ServeError(422, "bundle refused", str(err)) from None
        old = state.current
        if new.name != old.name:
            raise ServeError(
                422,
                "bundle refused",
                f"bundle serves model {new.name!r}, this server {old.name!r}; start another server",
            )
        state.previous, state.current = old, new
        publish(new)
        state.history.append(new.version)
        return {"model_version": new.version, "bundle_sha": new.bundle.sha, "previous": old.version}

    @app.post(
        "/v2/admin/rollback", responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}}
    )
    async def rollback(request: Request) -> dict[str, Any]:
        """Swap back to the bundle served before the last reload."""
        authorize(request)
        previous = state.previous
        if previous is None:
            raise ServeError(409, "nothing to roll back", "no earlier bundle was served")
        state.previous, state.current = state.current, previous
        publish(previous)
        state.history.append(previous.version)
        return {"model_version": previous.version, "bundle_sha": previous.bundle.sha}

    return app


def _endpoint(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def _version() -> str:
    try:
        return metadata.version("opsworld")
    except metadata.PackageNotFoundError:
        return "0"


__all__ = ["ServeError", "create_app", "frame_json", "prepare"]
