"""One fan-out for independent runs: :func:`parallel_map`.

Every parallel loop of opsworld (suite evaluation, world-model episode collection, forecast
scoring, tuning, multi-seed training) maps a function over independent, seeded tasks. Each
task's result depends only on the task, so the results are the same for any worker count
and any backend; :func:`parallel_map` returns them in item order whatever order they finish
in.

Backends (:class:`Backend`):

* ``local``: ``workers == 1`` (or one item) runs serially in this process, no pool;
  otherwise a :class:`concurrent.futures.ProcessPoolExecutor` of spawned processes (spawn,
  not fork: the simulator and torch hold threads and generators that must not be copied).
  ``fn`` and the items must then be picklable (module-level functions, dataclasses).
* ``ray``: Ray Core tasks (one CPU each; at most ``workers`` in flight). ``workers == 1``
  (or one item) still runs serially in this process. Ray is started on first use
  (:func:`ensure_ray`): with ``RAY_ADDRESS`` set (``auto`` or ``<head ip>:6379``) it joins
  that cluster; otherwise it starts a local Ray with ``num_cpus=workers``, no dashboard,
  usage statistics off and every address on 127.0.0.1. An already started Ray (a test
  fixture, a user's ``ray.init``) is used as it is. See ``docs/scaling.md``.

``shared``: an object every task needs (a suite's scenarios, a trained policy's files) goes
to each worker once, not once per task: the local pool hands it to each process's
initializer; Ray puts it in the object store once (``ray.put``) and every task gets the
reference. ``fn`` is then called as ``fn(shared, item)``.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

LOOPBACK = "127.0.0.1"
"""The address a local Ray binds to."""


class Backend(StrEnum):
    """Where :func:`parallel_map` runs its tasks."""

    local = "local"
    ray = "ray"


def check_backend(backend: Backend | str, key: str = "backend") -> Backend:
    """``backend`` as a :class:`Backend`.

    Raises:
        ValueError: Naming ``key`` and the known backends.
    """
    try:
        return Backend(backend)
    except ValueError:
        known = [b.value for b in Backend]
        raise ValueError(f"{key}={backend!r} is not known; use one of {known}") from None


def parallel_map(
    fn: Callable[..., R],
    items: Sequence[T],
    workers: int = 1,
    *,
    backend: Backend | str = Backend.local,
    on_result: Callable[[int, R], None] | None = None,
    shared: Any = None,
) -> list[R]:
    """Apply ``fn`` to every item and return the results in item order.

    Args:
        fn: One task; a module-level function when ``workers > 1`` (it is pickled).
        items: The tasks' arguments, one per call (picklable when ``workers > 1``).
        workers: Processes (local) or tasks in flight (Ray); 1 (or a single item) runs
            serially in this process.
        backend: ``local`` or ``ray`` (see :class:`Backend`).
        on_result: Called in this process as each result arrives, with the item's index
            and its result (for progress bars); completion order, not item order.
        shared: When not None, an object every task needs, sent to each worker once; ``fn``
            is then called as ``fn(shared, item)``.

    Returns:
        ``[fn(item) for item in items]`` (or ``fn(shared, item)``), the same for any
        ``workers`` and backend.

    Raises:
        ValueError: ``workers < 1`` or an unknown backend.
        TypeError: ``workers > 1`` and ``fn`` cannot be pickled (a lambda or a local
            function): the message says to use a module-level function or ``workers=1``.
        ImportError: ``backend=ray`` with more than one worker and Ray not installed.
        Exception: The first exception a task raises (Ray's wrapper removed); the tasks not
            yet started are cancelled.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"parallel_map: workers={workers!r}, must be an integer >= 1")
    try:
        backend = check_backend(backend)
    except ValueError as err:
        raise ValueError(f"parallel_map: {err}") from None
    items = list(items)
    if workers == 1 or len(items) <= 1:
        return serial_map(fn, items, on_result=on_result, shared=shared)
    return pool_map(
        fn, items, min(workers, len(items)), backend=backend, on_result=on_result, shared=shared
    )


def serial_map(
    fn: Callable[..., R],
    items: Sequence[T],
    *,
    on_result: Callable[[int, R], None] | None = None,
    shared: Any = None,
) -> list[R]:
    """Run every task in this process, in item order (what ``workers == 1`` does)."""
    results: list[R] = []
    for i, item in enumerate(items):
        results.append(fn(item) if shared is None else fn(shared, item))
        if on_result is not None:
            on_result(i, results[-1])
    return results


def pool_map(
    fn: Callable[..., R],
    items: Sequence[T],
    workers: int,
    *,
    backend: Backend | str = Backend.local,
    on_result: Callable[[int, R], None] | None = None,
    shared: Any = None,
) -> list[R]:
    """Like :func:`parallel_map` but always through the backend's workers, even for one.

    :func:`parallel_map` runs one worker in process; the scale benchmark
    (``opsworld bench scale``) calls this to measure a one-worker pool and one Ray worker.
    """
    backend = check_backend(backend)
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise TypeError(
            f"parallel_map: {getattr(fn, '__qualname__', fn)!r} cannot be sent to worker "
            f"processes ({err}); use a module-level function (or functools.partial of one), "
            "or workers=1"
        ) from None
    items = list(items)
    if backend is Backend.ray:
        return _ray_map(fn, items, workers, on_result, shared)
    return _local_pool(fn, items, workers, on_result, shared)


# --------------------------------------------------------------------------------------------
# local processes

_WORKER_SHARED: Any = None
"""In a local pool's worker process only: the ``shared`` object its initializer received."""


def _init_worker(shared: Any) -> None:
    """Pool initializer: keep the shared object and ignore Ctrl-C (the main process stops)."""
    global _WORKER_SHARED
    _WORKER_SHARED = shared
    ignore_sigint()


def _call_with_shared(fn: Callable[..., R], item: Any) -> R:
    return fn(_WORKER_SHARED, item)


def _local_pool(
    fn: Callable[..., R],
    items: list[T],
    workers: int,
    on_result: Callable[[int, R], None] | None,
    shared: Any,
) -> list[R]:
    done: dict[int, R] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(shared,)
    ) as pool:
        futures: dict[Future[R], int] = {
            (
                pool.submit(fn, item)
                if shared is None
                else pool.submit(_call_with_shared, fn, item)
            ): i
            for i, item in enumerate(items)
        }
        pending = set(futures)
        while pending:
            try:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            except KeyboardInterrupt:  # Ctrl-C: start nothing new, let running items end
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            for fut in finished:
                failure = fut.exception()
                if failure is not None:
                    for other in pending:
                        other.cancel()
                    raise failure
                i = futures[fut]
                done[i] = fut.result()
                if on_result is not None:
                    on_result(i, done[i])
    return [done[i] for i in range(len(items))]


def ignore_sigint() -> None:
    """Pool initializer: workers ignore Ctrl-C (the main process stops the map and saves)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------------------------
# Ray


def ray_init_kwargs(workers: int, address: str | None = None) -> dict[str, Any]:
    """The ``ray.init`` arguments :func:`ensure_ray` uses.

    Args:
        workers: CPUs of a local Ray (ignored when joining a cluster).
        address: A cluster to join (``auto`` or ``host:port``; ``RAY_ADDRESS``); None starts
            a local Ray bound to 127.0.0.1.
    """
    if address:
        return {"address": address, "log_to_driver": False}
    return {
        "num_cpus": workers,
        "include_dashboard": False,
        "_node_ip_address": LOOPBACK,
        "log_to_driver": False,
    }


def ensure_ray(workers: int) -> dict[str, Any]:
    """Start or join Ray unless it is running in this process; return the init arguments used.

    ``RAY_ADDRESS`` (``auto`` on a cluster node, or ``<head>:6379``) joins that cluster;
    otherwise a local Ray starts with ``num_cpus=workers`` on 127.0.0.1 (no dashboard).
    Usage statistics are off (``RAY_USAGE_STATS_ENABLED=0``) unless the environment says
    otherwise. An already initialised Ray is used as it is (and ``{}`` returned).

    Raises:
        ImportError: Ray is not installed (``pip install 'opsworld[ray]'``).
    """
    address = os.environ.get("RAY_ADDRESS") or None
    ray_environment(local=address is None)
    try:
        import ray
    except ImportError as err:  # pragma: no cover - the dev install has Ray
        raise ImportError(
            f"backend=ray needs Ray ({err}): pip install 'opsworld[ray]' (make venv installs "
            "it), or use backend=local"
        ) from None
    if ray.is_initialized():
        return {}
    kwargs = ray_init_kwargs(workers, address)
    ray.init(**kwargs)
    return kwargs


def ray_environment(local: bool = True) -> None:
    """Set the environment a local Ray needs before Ray is imported (existing values win).

    ``RAY_USAGE_STATS_ENABLED=0`` (no usage reports); for a local Ray also
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray then takes 127.0.0.1 as this node's
    address, so its processes bind to loopback (without it Ray resolves ``127.0.0.1`` to
    the machine's outward address). Ray reads the second one when it is first imported.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _ray_call(fn: Callable[..., R], shared: Any, item: Any) -> R:
    """What one Ray task runs (the refs of ``fn`` and ``shared`` arrive resolved)."""
    return fn(item) if shared is None else fn(shared, item)


_REMOTE: dict[str, Any] = {}


def _remote_call() -> Any:
    """``ray.remote(_ray_call)``, made once per process (importing Ray is slow)."""
    if "call" not in _REMOTE:
        import ray

        _REMOTE["call"] = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
    return _REMOTE["call"]


def _ray_map(
    fn: Callable[..., R],
    items: list[T],
    workers: int,
    on_result: Callable[[int, R], None] | None,
    shared: Any,
) -> list[R]:
    ensure_ray(workers)
    import ray
    from ray.exceptions import RayTaskError

    call = _remote_call()
    fn_ref = ray.put(fn)
    shared_ref = ray.put(shared) if shared is not None else None
    done: dict[int, R] = {}
    in_flight: dict[Any, int] = {}
    queue = iter(enumerate(items))

    def submit() -> bool:
        nxt = next(queue, None)
        if nxt is None:
            return False
        i, item = nxt
        in_flight[call.remote(fn_ref, shared_ref, item)] = i
        return True

    for _ in range(workers):
        if not submit():
            break
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        ref = ready[0]
        i = in_flight.pop(ref)
        try:
            done[i] = ray.get(ref)
        except RayTaskError as err:
            for other in in_flight:
                ray.cancel(other)
            cause = err.cause if isinstance(err.cause, BaseException) else err
            raise cause from None
        submit()
        if on_result is not None:
            on_result(i, done[i])
    return [done[i] for i in range(len(items))]
