"""Alert thresholds: a streaming score quantile for a target contamination, or a fixed value.

The streaming quantile is read off an exponentially decayed histogram of recent scores (the paper score lies
in (0, 1], so fixed bins cover it; the quantile is interpolated linearly inside its bin). Every new score
counts 1 and every older one fades with a half-life counted in events, so the threshold follows the scores of
the model *as it is now* on the data *as it is now*: after a level shift the alert rate returns to the target
within a few half-lives instead of staying stuck high or silent, and :meth:`StreamingThreshold.forget` lets a
drift detector shorten that. One update costs a ``bincount`` of the batch plus a pass over the bins (tens of
microseconds), whatever the window.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class ThresholdError(ValueError):
    """A threshold parameter is out of range; the message names it."""


class StreamingThreshold:
    """The (1 - contamination) quantile of recent scores, or a fixed threshold.

    >>> th = StreamingThreshold(contamination=0.1, half_life=10_000)
    >>> round(th.update(np.linspace(0.0, 1.0, 1001)), 2)
    0.9
    >>> StreamingThreshold(fixed=0.7).update(np.ones(5))
    0.7
    """

    def __init__(self, contamination: float = 0.01, *, fixed: float | None = None, half_life: float = 50_000,
                 bins: int = 4096) -> None:
        if not 0.0 < contamination < 0.5:
            msg = f"threshold: contamination must be in (0, 0.5), got {contamination!r}"
            raise ThresholdError(msg)
        if fixed is not None and not math.isfinite(fixed):
            msg = f"threshold: fixed threshold must be a finite number, got {fixed!r}"
            raise ThresholdError(msg)
        if half_life <= 0 or bins < 16:
            msg = f"threshold: half_life must be > 0 and bins >= 16, got {half_life!r} and {bins!r}"
            raise ThresholdError(msg)
        self.contamination = float(contamination)
        self.fixed = None if fixed is None else float(fixed)
        self.half_life = float(half_life)
        self.counts = np.zeros(int(bins))
        self.value = self.fixed if self.fixed is not None else 1.0  # no alerts before any score was seen

    @property
    def weight(self) -> float:
        """Effective number of scores the quantile rests on (decayed count)."""
        return float(self.counts.sum())

    def update(self, scores: np.ndarray) -> float:
        """Fade the old scores by the batch's length, add the batch, recompute the threshold; returns it."""
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if len(s):
            self.counts *= 0.5 ** (len(s) / self.half_life)
            bins = len(self.counts)
            idx = np.clip((s * bins).astype(np.int64), 0, bins - 1)
            self.counts += np.bincount(idx, minlength=bins)
        if self.fixed is None:
            self.value = self._quantile()
        return self.value

    def _quantile(self) -> float:
        total = self.counts.sum()
        if total <= 0:
            return self.value
        target = self.contamination * total  # weight that must lie above the threshold
        above = np.cumsum(self.counts[::-1])  # above[j]: weight in the top j + 1 bins
        j = int(np.searchsorted(above, target))  # the bin holding the quantile, counted from the top
        j = min(j, len(self.counts) - 1)
        b = len(self.counts) - 1 - j
        in_bin = self.counts[b]
        over = above[j] - in_bin  # weight strictly above bin b
        frac = (target - over) / in_bin if in_bin > 0 else 0.0
        # scores are spread evenly inside a bin: the quantile sits frac of the way down from its top
        return float((b + 1 - min(max(frac, 0.0), 1.0)) / len(self.counts))

    def reset(self, scores: np.ndarray) -> float:
        """Forget everything (a new model) and start from ``scores`` (e.g. the training scores)."""
        self.counts[:] = 0.0
        return self.update(scores)

    def forget(self, keep: float) -> None:
        """Scale the old scores' weight by ``keep`` in [0, 1] (drift: let new scores dominate sooner)."""
        self.counts *= min(max(float(keep), 0.0), 1.0)

    # -- persistence -------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"contamination": self.contamination, "fixed": self.fixed, "half_life": self.half_life,
                "bins": len(self.counts), "value": self.value}

    @classmethod
    def restore(cls, params: dict[str, Any], counts: np.ndarray) -> StreamingThreshold:
        th = cls(params["contamination"], fixed=params["fixed"], half_life=params["half_life"],
                 bins=int(params["bins"]))
        if counts.shape != th.counts.shape or not np.isfinite(counts).all() or (counts < 0).any():
            msg = f"threshold: saved histogram has shape {counts.shape} or bad values, expected {th.counts.shape}"
            raise ThresholdError(msg)
        th.counts = counts.astype(np.float64)
        th.value = float(params["value"])
        return th
