"""The rolling histogram of recent scores: updated once per consumed batch, in O(batch) numpy work.

Not locked: :class:`dashboards.state.LiveState` owns it and serialises access.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# the engine's stats histogram bins, so both views of "the score distribution" agree
from engine.outputs import SCORE_BINS


class RollingHistogram:
    """Counts of the last ``capacity`` scores over fixed bins, kept up to date as scores arrive and age out.

    A ring of bin indices remembers which bin each remembered score fell in, so evicting the oldest scores is
    a ``bincount`` of the slots they occupied rather than a re-histogram of the whole window.

    >>> h = RollingHistogram(capacity=3, edges=np.array([0.0, 0.5, 1.0]))
    >>> h.add(np.array([0.1, 0.2, 0.9, 0.95]))
    >>> h.counts.tolist()
    [1, 2]
    """

    def __init__(self, capacity: int, edges: np.ndarray = SCORE_BINS) -> None:
        if capacity <= 0:
            msg = f"RollingHistogram: capacity must be positive, got {capacity!r}"
            raise ValueError(msg)
        self.edges = np.asarray(edges, dtype=np.float64)
        self.capacity = capacity
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self._ring = np.full(capacity, -1, dtype=np.int64)  # -1 = empty slot
        self._write = 0

    def add(self, scores: np.ndarray) -> None:
        """Count ``scores`` (out-of-range values land in the first / last bin), evicting the oldest."""
        if len(scores) == 0:
            return
        scores = scores[-self.capacity :]  # older ones would be evicted within this same call
        nbins = len(self.counts)
        bins = np.clip(np.searchsorted(self.edges, scores, side="right") - 1, 0, nbins - 1)
        slots = (self._write + np.arange(len(bins))) % self.capacity
        evicted = self._ring[slots]
        evicted = evicted[evicted >= 0]
        if len(evicted):
            self.counts -= np.bincount(evicted, minlength=nbins)
        self._ring[slots] = bins
        self.counts += np.bincount(bins, minlength=nbins)
        self._write = int((self._write + len(bins)) % self.capacity)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def frame(self) -> pd.DataFrame:
        """``left``, ``right``, ``count`` per bin."""
        return pd.DataFrame({"left": self.edges[:-1], "right": self.edges[1:], "count": self.counts.copy()})
