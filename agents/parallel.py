"""One fan-out for independent runs: :func:`parallel_map`.

Every parallel loop of opsworld (suite evaluation, world-model episode collection, forecast
scoring) maps a function over independent, seeded tasks. Each task's result depends only on
the task, so the results are the same for any worker count; :func:`parallel_map` returns
them in item order whatever order they finish in.

Backends (:class:`Backend`):

* ``local``: ``workers == 1`` (or one item) runs serially in this process, no pool;
  otherwise a :class:`concurrent.futures.ProcessPoolExecutor` of spawned processes (spawn,
  not fork: the simulator and torch hold threads and generators that must not be copied).
  ``fn`` and the items must then be picklable (module-level functions, dataclasses).

The interface names nothing local to processes, so another backend (Ray tasks) can sit
behind the same call.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Backend(StrEnum):
    """Where :func:`parallel_map` runs its tasks."""

    local = "local"


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int = 1,
    *,
    backend: Backend | str = Backend.local,
    on_result: Callable[[int, R], None] | None = None,
) -> list[R]:
    """Apply ``fn`` to every item and return the results in item order.

    Args:
        fn: One task; a module-level function when ``workers > 1`` (it is pickled).
        items: The tasks' arguments, one per call (picklable when ``workers > 1``).
        workers: Processes to use; 1 (or a single item) runs serially in this process.
        backend: ``local`` (see :class:`Backend`).
        on_result: Called in this process as each result arrives, with the item's index
            and its result (for progress bars); completion order, not item order.

    Returns:
        ``[fn(item) for item in items]``, the same for any ``workers``.

    Raises:
        ValueError: ``workers < 1`` or an unknown backend.
        TypeError: ``workers > 1`` and ``fn`` cannot be pickled (a lambda or a local
            function): the message says to use a module-level function or ``workers=1``.
        Exception: The first exception a task raises; the tasks not yet started are
            cancelled.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"parallel_map: workers={workers!r}, must be an integer >= 1")
    try:
        backend = Backend(backend)
    except ValueError:
        known = [b.value for b in Backend]
        raise ValueError(
            f"parallel_map: backend={backend!r} is not known; use one of {known}"
        ) from None
    items = list(items)
    if workers == 1 or len(items) <= 1:
        results: list[R] = []
        for i, item in enumerate(items):
            results.append(fn(item))
            if on_result is not None:
                on_result(i, results[-1])
        return results
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise TypeError(
            f"parallel_map: {getattr(fn, '__qualname__', fn)!r} cannot be sent to worker "
            f"processes ({err}); use a module-level function (or functools.partial of one), "
            "or workers=1"
        ) from None
    return _local_pool(fn, items, min(workers, len(items)), on_result)


def _local_pool(
    fn: Callable[[T], R],
    items: list[T],
    workers: int,
    on_result: Callable[[int, R], None] | None,
) -> list[R]:
    done: dict[int, R] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=ignore_sigint
    ) as pool:
        futures: dict[Future[R], int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
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
