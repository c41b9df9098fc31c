"""Alert thresholds: a streaming score quantile for a target contamination, or a fixed value.

The streaming quantile is read off an exponentially decayed histogram of recent scores (the paper score lies
in (0, 1], so fixed bins cover it; the quantile is interpolated linearly inside its bin). Every new score
counts 1 and every older one fades with a half-life counted in events, so the threshold follows the scores of
the model *as it is now* on the data *as it is now*: after a level shift the alert rate returns to the target
within a few half-lives instead of staying stuck high or silent, and :meth:`StreamingThreshold.forget` lets a
drift detector shorten that. One update costs a ``bincount`` of the batch plus a pass over the bins (tens of
microseconds), whatever the window.

*Protection* (``protect=True``, the default): the threshold is meant to be a quantile of traffic judged normal.
A batch with far more alerts than the target rate — more than ``contamination * n + 3`` binomial standard
deviations ``+ 1`` — is an alert *storm*: its flagged scores enter clipped to the threshold in force, so they
still count as "at or above the threshold" (the quantile does not fall either) but cannot pull it up, and a
sustained abnormal regime keeps alerting instead of being learnt as normal within a few half-lives. Batches
within that band enter unclipped, so the threshold still follows normal traffic (and its natural tail) both
ways, and does not ratchet down as it would if every flagged score were clipped. Single rows and tiny batches
are barely protected: one alert cannot be told from the normal tail. Accepting a storm as a new regime is the
caller's decision (``update(..., protect=False)`` after :meth:`forget`; the detector does so after
``drift_confirm`` events of storm).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: binomial standard deviations of alerts over the target that make a batch a storm: at 3, a batch at the target
#: rate is a storm about once in a thousand (harmless: it only holds the threshold for that batch), while a
#: regime flagging twice the target rate in batches of 1,000 is one
STORM_Z = 3.0


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
                 bins: int = 4096, protect: bool = True) -> None:
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
        self.protect = bool(protect)
        self.value = self.fixed if self.fixed is not None else 1.0  # no alerts before any score was seen
        self.storm = False  # the last update was an alert storm (see the module doc)

    @property
    def weight(self) -> float:
        """Effective number of scores the quantile rests on (decayed count)."""
        return float(self.counts.sum())

    def is_storm(self, n: int, alerts: int) -> bool:
        """Whether ``alerts`` flags among ``n`` rows are far beyond the target rate (see the module doc)."""
        c = self.contamination
        return alerts > c * n + STORM_Z * math.sqrt(n * c * (1.0 - c)) + 1.0

    def update(self, scores: np.ndarray, *, protect: bool | None = None) -> float:
        """Fade the old scores by the batch's length, add the batch, recompute the threshold; returns it.

        ``scores`` are judged against the threshold in force; with protection on (``protect``, default: the
        threshold's setting) a storm's flagged scores enter clipped to it. Sets :attr:`storm`.
        """
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        self.storm = False
        if self.fixed is None and len(s):
            flagged = s > self.value
            self.storm = self.is_storm(len(s), int(np.count_nonzero(flagged)))
            if self.storm and (self.protect if protect is None else protect):
                s = np.where(flagged, self.value, s)
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
        return self.update(scores, protect=False)

    def calibrate(self, counts: np.ndarray) -> float:
        """Start from a histogram of scores on this threshold's bins (e.g. a day's normal events, summed over
        workers), weighted as the steady state of the decayed histogram: a day of data does not make the live
        threshold slower to adapt than one calibrated on a stream. Returns the new threshold."""
        c = np.asarray(counts, dtype=np.float64)
        if c.shape != self.counts.shape or not np.isfinite(c).all() or (c < 0).any():
            msg = f"threshold: calibration histogram has shape {c.shape} or bad values, expected {self.counts.shape}"
            raise ThresholdError(msg)
        total = c.sum()
        steady = self.half_life / math.log(2.0)  # sum of 0.5 ** (t / half_life) over t >= 0
        self.counts = c * (min(steady, total) / total) if total > 0 else c.copy()
        self.storm = False
        if self.fixed is None:
            self.value = self._quantile()
        return self.value

    def forget(self, keep: float) -> None:
        """Scale the old scores' weight by ``keep`` in [0, 1] (drift: let new scores dominate sooner)."""
        self.counts *= min(max(float(keep), 0.0), 1.0)

    # -- persistence -------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"contamination": self.contamination, "fixed": self.fixed, "half_life": self.half_life,
                "bins": len(self.counts), "value": self.value, "protect": self.protect}

    @classmethod
    def restore(cls, params: dict[str, Any], counts: np.ndarray) -> StreamingThreshold:
        # versions saved before protection existed load with it on, like a new threshold
        th = cls(params["contamination"], fixed=params["fixed"], half_life=params["half_life"],
                 bins=int(params["bins"]), protect=bool(params.get("protect", True)))
        if counts.shape != th.counts.shape or not np.isfinite(counts).all() or (counts < 0).any():
            msg = f"threshold: saved histogram has shape {counts.shape} or bad values, expected {th.counts.shape}"
            raise ThresholdError(msg)
        th.counts = counts.astype(np.float64)
        th.value = float(params["value"])
        return th
