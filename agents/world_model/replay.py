"""Episode replay for world-model training: seeded fixed-length sequence sampling.

Episodes are dicts of arrays with a leading time axis (the data contract: ``obs``,
``action``, ``reward``, ``cont``, ``is_first``, ``violation``; other keys are kept too, as
long as every episode has the same keys). ``capacity`` counts steps; the oldest whole
episodes are dropped when it is exceeded.

Sampling (``sample(batch)`` -> ``[batch, seq_len, ...]`` arrays) draws a start uniformly over
all valid positions, so each stored step is equally likely to begin a sequence:

* by default a sequence lies inside one episode (episodes shorter than ``seq_len`` are
  kept but never sampled);
* with ``cross_episodes=True`` the episodes are read as one stream in the order they were
  added, and a sequence may run into the next episode; the model's ``is_first`` reset
  handles that, since every episode's first row has ``is_first = 1`` (checked on ``add``).

Either way a sequence crosses an episode boundary only where the new episode's first
row says ``is_first``. All randomness comes from one ``numpy`` generator seeded with
``seed``, whose state is part of :meth:`Replay.state_dict` and of the saved file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_KEYS: tuple[str, ...] = ("obs", "action", "reward", "cont", "is_first", "violation")


class Replay:
    """Stores episodes and samples sequences; see the module docstring.

    Args:
        capacity: Most steps kept (oldest episodes are dropped first).
        seq_len: Steps per sampled sequence.
        seed: Seed of the sampling generator.
        cross_episodes: Let sequences run from one episode into the next.
    """

    def __init__(
        self, capacity: int, seq_len: int, seed: int = 0, cross_episodes: bool = False
    ) -> None:
        if capacity < seq_len or seq_len < 1:
            raise ValueError(f"Replay: need 1 <= seq_len <= capacity, got {seq_len}, {capacity}")
        self.capacity = int(capacity)
        self.seq_len = int(seq_len)
        self.cross_episodes = bool(cross_episodes)
        self.rng = np.random.default_rng(seed)
        self.episodes: list[dict[str, np.ndarray]] = []
        self._keys: tuple[str, ...] | None = None
        self._steps = 0

    def __len__(self) -> int:
        """Steps stored."""
        return self._steps

    @property
    def num_episodes(self) -> int:
        """Episodes stored."""
        return len(self.episodes)

    def add(self, episode: dict[str, np.ndarray]) -> None:
        """Store one episode (arrays with the same leading length; copied)."""
        missing = [k for k in REQUIRED_KEYS if k not in episode]
        if missing:
            raise KeyError(f"episode lacks {missing}; needs at least {list(REQUIRED_KEYS)}")
        keys = tuple(sorted(episode))
        if self._keys is not None and keys != self._keys:
            raise KeyError(f"episode keys {list(keys)} differ from the stored {list(self._keys)}")
        n = len(episode["is_first"])
        bad = [k for k, v in episode.items() if len(v) != n]
        if bad or n == 0:
            raise ValueError(f"episode arrays differ in length or are empty: {bad or 'all'}")
        if n > self.capacity:
            raise ValueError(f"episode of {n} steps exceeds the capacity {self.capacity}")
        if episode["is_first"][0] != 1 or np.any(episode["is_first"][1:] != 0):
            raise ValueError("an episode must have is_first = 1 on its first row and 0 after")
        self._keys = keys
        self.episodes.append({k: np.array(v, copy=True) for k, v in episode.items()})
        self._steps += n
        while self._steps > self.capacity:
            self._steps -= len(self.episodes.pop(0)["is_first"])

    def _starts(self) -> np.ndarray:
        """Valid start positions per episode (or of the stream, as one entry)."""
        lens = np.array([len(e["is_first"]) for e in self.episodes], dtype=np.int64)
        if self.cross_episodes:
            return np.array([max(int(lens.sum()) - self.seq_len + 1, 0)], dtype=np.int64)
        return np.maximum(lens - self.seq_len + 1, 0)

    def sample(self, batch: int) -> dict[str, np.ndarray]:
        """``batch`` sequences: a dict of ``[batch, seq_len, ...]`` arrays."""
        starts = self._starts()
        total = int(starts.sum())
        if total == 0:
            raise ValueError(
                f"no sequence of {self.seq_len} steps in the replay ({len(self)} steps in "
                f"{self.num_episodes} episodes"
                + (")" if self.cross_episodes else "; cross_episodes=True lets short ones join)")
            )
        assert self._keys is not None
        flat = self.rng.integers(0, total, size=batch)
        if self.cross_episodes:
            # positions in the stream of all episodes: start of each episode
            lens = np.array([len(e["is_first"]) for e in self.episodes], dtype=np.int64)
            ep_start = np.concatenate([[0], np.cumsum(lens)[:-1]])
            ep = np.searchsorted(ep_start, flat, side="right") - 1
            offset = flat - ep_start[ep]
        else:
            cum = np.cumsum(starts)
            ep = np.searchsorted(cum, flat, side="right")
            offset = flat - (cum[ep] - starts[ep])
        out: dict[str, list[np.ndarray]] = {k: [] for k in self._keys}
        for e, o in zip(ep, offset, strict=True):
            for k in self._keys:
                out[k].append(self._window(int(e), int(o), k))
        return {k: np.stack(v) for k, v in out.items()}

    def _window(self, ep: int, offset: int, key: str) -> np.ndarray:
        """``seq_len`` rows of ``key`` from ``offset`` in episode ``ep`` on (into the next)."""
        arr = self.episodes[ep][key]
        if offset + self.seq_len <= len(arr):
            return arr[offset : offset + self.seq_len]
        pieces, need = [], self.seq_len
        while need > 0:
            piece = self.episodes[ep][key][offset : offset + need]
            pieces.append(piece)
            need -= len(piece)
            ep, offset = ep + 1, 0
        return np.concatenate(pieces)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Settings, episodes and the generator state (numpy arrays and primitives)."""
        return {
            "capacity": self.capacity,
            "seq_len": self.seq_len,
            "cross_episodes": self.cross_episodes,
            "rng": self.rng.bit_generator.state,
            "episodes": [{k: v.copy() for k, v in e.items()} for e in self.episodes],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (sampling continues exactly where it was)."""
        self.capacity = int(state["capacity"])
        self.seq_len = int(state["seq_len"])
        self.cross_episodes = bool(state["cross_episodes"])
        self.episodes = []
        self._keys = None
        self._steps = 0
        for e in state["episodes"]:
            self.add(e)
        self.rng.bit_generator.state = state["rng"]

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` (no pickles): arrays ``ep<i>/<key>`` and a JSON ``meta``."""
        state = self.state_dict()
        meta = {k: state[k] for k in ("capacity", "seq_len", "cross_episodes", "rng")}
        meta["episodes"] = len(self.episodes)
        arrays = {f"ep{i}/{k}": v for i, e in enumerate(self.episodes) for k, v in e.items()}
        arrays["meta"] = np.array(json.dumps(meta))
        savez: Any = np.savez  # numpy's stub reads **arrays as its allow_pickle flag
        with open(path, "wb") as f:
            savez(f, **arrays)

    def load(self, path: str | Path) -> None:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            episodes: list[dict[str, np.ndarray]] = [{} for _ in range(meta["episodes"])]
            for name in data.files:
                if name == "meta":
                    continue
                i, key = name.split("/", 1)
                episodes[int(i[2:])][key] = data[name]
        self.load_state_dict({**meta, "episodes": episodes})

    @classmethod
    def from_file(cls, path: str | Path) -> Replay:
        """A replay restored from :meth:`save`'s file."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
        replay = cls(meta["capacity"], meta["seq_len"], 0, meta["cross_episodes"])
        replay.load(path)
        return replay
