"""Alert thresholds: a streaming score quantile for a target contamination, or a fixed value."""

from __future__ import annotations

import numpy as np


class StreamingThreshold:
    """The (1 - contamination) quantile of the most recent ``window`` scores.

    Scores of a changing model and a drifting stream move together, so the quantile of *recent* scores keeps
    the alert rate near the target after a level shift instead of leaving it stuck high or silent.

    >>> th = StreamingThreshold(contamination=0.1, window=100)
    >>> th.update(np.linspace(0, 1, 100)); round(th.value, 2)
    0.9
    """

    def __init__(self, contamination: float = 0.01, window: int = 20_000, fixed: float | None = None) -> None:
        if not 0 < contamination < 0.5:
            msg = f"threshold: contamination must be in (0, 0.5), got {contamination}"
            raise ValueError(msg)
        self.contamination = contamination
        self.fixed = fixed
        self._buf = np.full(window, np.nan)
        self._pos = 0
        self._seen = 0
        self.value = fixed if fixed is not None else 1.0

    def update(self, scores: np.ndarray) -> float:
        """Add scores to the window and recompute the threshold; returns it."""
        scores = np.asarray(scores, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        w = len(self._buf)
        if len(scores) >= w:
            self._buf[:] = scores[-w:]
            self._pos = 0
        elif len(scores):
            end = self._pos + len(scores)
            if end <= w:
                self._buf[self._pos:end] = scores
            else:
                cut = w - self._pos
                self._buf[self._pos:] = scores[:cut]
                self._buf[: end - w] = scores[cut:]
            self._pos = end % w
        self._seen += len(scores)
        if self.fixed is None and self._seen:
            self.value = float(np.nanquantile(self._buf, 1.0 - self.contamination))
        return self.value

    def reset(self, scores: np.ndarray) -> float:
        """Forget the window (the model was replaced wholesale) and start from ``scores``."""
        self._buf[:] = np.nan
        self._pos = 0
        self._seen = 0
        return self.update(scores)

    def state(self) -> dict[str, np.ndarray]:
        return {"buffer": self._buf.copy(), "pos": np.array([self._pos, self._seen]), "value": np.array([self.value])}
