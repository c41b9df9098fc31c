"""Drift on the score distribution: a two-sided CUSUM (Page-Hinkley) on each micro-batch's mean score.

The batch mean of the paper score is standardised by the running mean and standard deviation *of batch
means* (exponentially weighted), not by the per-event spread: batch means also move a little whenever trees
are replaced, and that jitter must not read as drift. The CUSUM accumulates standardised excursions beyond a
slack of ``k`` standard deviations and fires when either side passes ``h``; then it restarts and the running
statistics are re-learned from the new regime. A second, faster signal watches the alert rate: far more
alerts than the target contamination in one batch (a binomial tail at ``alert_z``) is drift too — a level
shift makes most events look anomalous at once.

>>> import numpy as np
>>> d = DriftDetector(warmup=5)
>>> rng = np.random.default_rng(0)
>>> [d.update(rng.normal(0.45, 0.05, 500)) for _ in range(20)].count(True)
0
>>> any(d.update(rng.normal(0.60, 0.05, 500)) for _ in range(3))
True
"""

from __future__ import annotations

import math

import numpy as np


class DriftDetector:
    """Two-sided CUSUM on standardised batch mean scores, plus an alert-rate check."""

    def __init__(self, *, k: float = 1.0, h: float = 12.0, alpha: float = 0.05, warmup: int = 10,
                 alert_z: float = 8.0) -> None:
        self.k, self.h, self.alpha, self.warmup, self.alert_z = k, h, alpha, warmup, alert_z
        self.detections = 0
        self._reset()

    def restart(self) -> None:
        """Forget the running statistics (they described a regime or a burst that is over) and warm up again."""
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._mean = 0.0
        self._var = 0.0
        self._pos = 0.0
        self._neg = 0.0

    def update(self, scores: np.ndarray, *, alerts: int | None = None, contamination: float | None = None) -> bool:
        """Feed one batch's scores (and optionally its alert count vs the target rate); True on drift."""
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) == 0:
            return False
        m = float(np.mean(scores))
        drift = False
        if self._n >= self.warmup and self._var > 0:
            z = (m - self._mean) / math.sqrt(self._var)
            self._pos = max(0.0, self._pos + z - self.k)
            self._neg = max(0.0, self._neg - z - self.k)
            drift = self._pos > self.h or self._neg > self.h
        if alerts is not None and contamination and self._n >= self.warmup:
            n, p = len(scores), contamination
            drift |= alerts > n * p + self.alert_z * math.sqrt(n * p * (1 - p)) + 1
        if drift:
            self.detections += 1
            self._reset()  # re-learn the new regime's statistics before judging again
            return True
        # exponentially weighted mean / variance of batch means (plain running ones during warm-up)
        self._n += 1
        a = max(self.alpha, 1.0 / self._n)
        d = m - self._mean
        self._mean += a * d
        self._var = (1 - a) * (self._var + a * d * d)
        return False
