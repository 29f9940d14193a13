"""Per-stream recurrent state with a time-to-live and a bound on the number of streams."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Stream:
    """One stream's state.

    Attributes:
        state: The guarded policy's state.
        last_t: Time of the newest frame decided on (frames not newer are skipped).
        version: The model version the state belongs to (a reload starts streams afresh).
        touched: Monotonic time of the last request.
    """

    state: Any
    last_t: float
    version: str
    touched: float


class StreamStore:
    """Streams by id, bounded in time and number.

    Idle streams expire after ``ttl_s``; beyond ``max_streams`` the least recently used go.

    Args:
        ttl_s: Seconds a stream lives without requests.
        max_streams: Most streams held at once.
        clock: Monotonic clock (seconds).
    """

    def __init__(
        self, ttl_s: float, max_streams: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s <= 0 or max_streams < 1:
            raise ValueError(f"need ttl_s > 0 and max_streams >= 1, got {ttl_s}, {max_streams}")
        self.ttl_s = ttl_s
        self.max_streams = max_streams
        self.clock = clock
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, stream_id: str, version: str) -> Stream | None:
        """The live stream of ``stream_id`` for ``version`` (None: start a fresh one)."""
        self._expire()
        stream = self._streams.get(stream_id)
        if stream is None or stream.version != version:
            return None
        stream.touched = self.clock()
        self._streams.move_to_end(stream_id)
        return stream

    def put(self, stream_id: str, stream: Stream) -> None:
        """Store ``stream`` (most recently used), evicting the oldest beyond the bound."""
        stream.touched = self.clock()
        self._streams[stream_id] = stream
        self._streams.move_to_end(stream_id)
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)
            self.evicted += 1

    def _expire(self) -> None:
        cutoff = self.clock() - self.ttl_s
        while self._streams:
            oldest_id, oldest = next(iter(self._streams.items()))
            if oldest.touched >= cutoff:
                break
            del self._streams[oldest_id]
            self.expired += 1
