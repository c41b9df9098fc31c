"""The Numenta Anomaly Benchmark (NAB) score: labelled windows, early-detection reward, normalised to 0-100.

Implements NAB's published scoring rules (Lavin & Ahmad 2015; the rules of numenta/NAB ``nab/sweeper.py``),
written from their description here, not copied:

* each series has anomaly windows (``labels/combined_windows.json``: start and end timestamps, inclusive);
* the first ``min(floor(0.15 * rows), 0.15 * 5000)`` rows of a series are its probationary period: nothing
  there is scored, neither detections nor window rows;
* a window is worth ``-A_FN`` when none of its rows is detected, else only its earliest detection counts,
  weighted ``A_TP * S(p) / S(-1)`` where ``p = -(end - i + 1) / width`` is the row's position relative to the
  window's right edge and ``S(p) = 2 * sigmoid(-5 p) - 1`` (``-1`` from ``p >= 3``): the window's first row
  earns exactly ``A_TP``, its last row a quarter of that for a 10-row window;
* every detection outside a window costs ``A_FP * S(p)`` with ``p = (i - end_prev) / (width_prev - 1)`` the
  distance past the preceding window (so a detection just after a window is nearly free and one far behind
  costs ``A_FP``), or ``A_FP`` in full before the series' first window;
* a corpus' raw score is the sum over its series; normalised ``100 * (raw - null) / (perfect - null)`` with
  the null detector (no detections: ``-A_FN`` per window) and the perfect detector (each window's first row).

NAB's published figures pick, per detector, the one threshold on its anomaly score that maximises the
corpus score (:func:`optimize_threshold`); :func:`corpus_score` scores given detections (e.g. a detector's
own alerts) as they are.

>>> labels = SeriesLabels("s", n_rows=100, windows=((40, 49),))
>>> round(corpus_score([labels], [np.eye(1, 100, 40, dtype=bool)[0]]).normalized, 6)
100.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PROBATION_FRACTION = 0.15


class NabError(ValueError):
    """Labels or detections that cannot be scored; the message names the series and the problem."""


@dataclass(frozen=True)
class Profile:
    """NAB's application profile: weights of true/false positives and negatives (A_TN is unused by NAB)."""

    name: str
    tp: float
    fp: float
    tn: float
    fn: float


STANDARD = Profile("standard", tp=1.0, fp=0.11, tn=1.0, fn=1.0)
REWARD_LOW_FP = Profile("reward_low_FP_rate", tp=1.0, fp=0.22, tn=1.0, fn=1.0)
REWARD_LOW_FN = Profile("reward_low_FN_rate", tp=1.0, fp=0.11, tn=1.0, fn=2.0)


def scaled_sigmoid(position: float | np.ndarray) -> np.ndarray:
    """NAB's ``S(p) = 2 * sigmoid(-5 p) - 1``, ``-1`` from ``p >= 3`` (a detection far behind a window).

    >>> [round(float(x), 5) + 0.0 for x in scaled_sigmoid(np.array([-1.0, -0.5, 0.0, 1.0, 3.0]))]
    [0.98661, 0.84828, 0.0, -0.98661, -1.0]
    """
    p = np.asarray(position, dtype=np.float64)
    # 2*sigmoid(-5p) - 1 == tanh(-2.5p): the same curve without exp overflow for large |p|
    return np.where(p >= 3.0, -1.0, -np.tanh(2.5 * p))


def probation_length(n_rows: int, fraction: float = PROBATION_FRACTION) -> int:
    """Rows at the start of a series that NAB does not score: ``min(floor(fraction * n), fraction * 5000)``.

    >>> probation_length(1000), probation_length(22695)
    (150, 750)
    """
    return int(min(math.floor(fraction * n_rows), fraction * 5000))


@dataclass(frozen=True)
class SeriesLabels:
    """One series' ground truth: its length and anomaly windows as inclusive row ranges, in order."""

    name: str
    n_rows: int
    windows: tuple[tuple[int, int], ...]
    probation_fraction: float = PROBATION_FRACTION

    def __post_init__(self) -> None:
        last = -1
        for start, end in self.windows:
            if not last < start <= end < self.n_rows:
                msg = (f"nab: series {self.name!r}: window rows ({start}, {end}) are not in order inside "
                       f"0..{self.n_rows - 1} after the previous window's end {last}")
                raise NabError(msg)
            last = end

    @property
    def probation(self) -> int:
        return probation_length(self.n_rows, self.probation_fraction)

    def in_window(self) -> np.ndarray:
        """Boolean per row: inside an anomaly window (the per-row label for ROC AUC and the like)."""
        out = np.zeros(self.n_rows, dtype=bool)
        for start, end in self.windows:
            out[start:end + 1] = True
        return out

    def window_starts(self) -> np.ndarray:
        """The perfect detector: a detection at the first scored row of each window, nowhere else."""
        out = np.zeros(self.n_rows, dtype=bool)
        for start, end in self.windows:
            first = max(start, self.probation)
            if first <= end:
                out[first] = True
        return out


def window_rows(timestamps: pd.Series, limits: Sequence[Sequence[str]], name: str = "?") -> tuple[tuple[int, int], ...]:
    """Window limits (start, end timestamps) as inclusive row ranges of ``timestamps`` (the file's rows)."""
    ts = pd.to_datetime(pd.Series(timestamps)).to_numpy()
    out = []
    for lo, hi in limits:
        rows = np.flatnonzero((ts >= np.datetime64(pd.Timestamp(lo))) & (ts <= np.datetime64(pd.Timestamp(hi))))
        if len(rows) == 0:
            msg = f"nab: series {name!r}: window {lo} .. {hi} holds no rows"
            raise NabError(msg)
        out.append((int(rows[0]), int(rows[-1])))
    return tuple(out)


def load_windows(path: str | Path) -> dict[str, list[list[str]]]:
    """``combined_windows.json``: ``{"<group>/<series>.csv": [[start, end], ...]}``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        msg = f"nab: cannot read windows file {p}: {err}"
        raise NabError(msg) from err
    if not isinstance(data, dict):
        msg = f"nab: windows file {p}: top level must map series to windows, got {type(data).__name__}"
        raise NabError(msg)
    return data


@dataclass(frozen=True)
class _Rows:
    """Per scored row of one series: its NAB weight and window (-1 outside); probation rows are dropped."""

    index: np.ndarray
    weight: np.ndarray
    window: np.ndarray


def _row_weights(labels: SeriesLabels, profile: Profile) -> _Rows:
    n, probation = labels.n_rows, labels.probation
    i = np.arange(n, dtype=np.float64)
    window = np.full(n, -1, dtype=np.int64)
    # a row outside every window before the first one: the full FP cost
    weight = np.full(n, -profile.fp)
    max_tp = float(scaled_sigmoid(-1.0))
    for k, (start, end) in enumerate(labels.windows):
        width = end - start + 1
        inside = slice(start, end + 1)
        window[inside] = k
        weight[inside] = profile.tp * scaled_sigmoid(-(end - i[inside] + 1) / width) / max_tp
        nxt = labels.windows[k + 1][0] if k + 1 < len(labels.windows) else n
        after = slice(end + 1, nxt)
        # NAB's own scorer puts a one-row window's followers at relative distance 2 (no width to divide by)
        dist = (i[after] - end) / (width - 1) if width > 1 else np.full(nxt - end - 1, 2.0)
        weight[after] = profile.fp * scaled_sigmoid(dist)
    keep = slice(probation, n)
    return _Rows(np.arange(n)[keep], weight[keep], window[keep])


@dataclass(frozen=True)
class CorpusScore:
    """A corpus scored at one set of detections: raw, the null and perfect detectors' raw, normalised 0-100."""

    raw: float
    null: float
    perfect: float
    normalized: float
    windows: int
    detected_windows: int
    false_positives: int
    per_series: dict[str, float]
    threshold: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {"normalized": self.normalized, "raw": self.raw, "null": self.null, "perfect": self.perfect,
                "windows": self.windows, "detected_windows": self.detected_windows,
                "false_positives": self.false_positives, "threshold": self.threshold}


def _series_raw(labels: SeriesLabels, detected: np.ndarray, profile: Profile) -> tuple[float, int, int, int]:
    """Raw score, scored windows, detected windows, false positives of one series."""
    if detected.shape != (labels.n_rows,):
        msg = f"nab: series {labels.name!r}: {detected.shape[0]} detections for {labels.n_rows} rows"
        raise NabError(msg)
    rows = _row_weights(labels, profile)
    hit = np.asarray(detected, dtype=bool)[rows.index]
    outside = rows.window < 0
    raw = float(rows.weight[hit & outside].sum())
    scored = np.unique(rows.window[~outside])
    found = 0
    for k in scored:
        mine = hit & (rows.window == k)
        if mine.any():
            found += 1
            raw += float(rows.weight[mine].max())  # weights fall along a window: the max is the earliest
        else:
            raw -= profile.fn
    return raw, len(scored), found, int((hit & outside).sum())


def _normalize(raw: float, null: float, perfect: float) -> float:
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0


def corpus_score(labels: Sequence[SeriesLabels], detections: Sequence[np.ndarray],
                 profile: Profile = STANDARD) -> CorpusScore:
    """Score binary detections (one boolean array per series, in row order) under NAB's rules."""
    if len(labels) != len(detections):
        msg = f"nab: {len(detections)} detection arrays for {len(labels)} series"
        raise NabError(msg)
    raw = null = perfect = 0.0
    windows = found = fps = 0
    per: dict[str, float] = {}
    for lab, det in zip(labels, detections, strict=True):
        r, w, f, fp = _series_raw(lab, np.asarray(det, dtype=bool), profile)
        raw, windows, found, fps = raw + r, windows + w, found + f, fps + fp
        null += -profile.fn * w
        perfect += _series_raw(lab, lab.window_starts(), profile)[0]
        per[lab.name] = r
    return CorpusScore(raw, null, perfect, _normalize(raw, null, perfect), windows, found, fps, per)


def optimize_threshold(labels: Sequence[SeriesLabels], scores: Sequence[np.ndarray],
                       profile: Profile = STANDARD) -> CorpusScore:
    """The one threshold on the anomaly scores (detection = score >= threshold) that maximises the corpus
    score, as NAB's published figures use; NaN scores are never detections. Every distinct score is tried.

    >>> lab = SeriesLabels("s", 100, ((40, 49),))
    >>> s = np.zeros(100); s[40] = 0.9; s[70] = 0.5
    >>> best = optimize_threshold([lab], [s])
    >>> best.threshold, round(best.normalized, 6)
    (0.9, 100.0)
    """
    if len(labels) != len(scores):
        msg = f"nab: {len(scores)} score arrays for {len(labels)} series"
        raise NabError(msg)
    weight, window, score = [], [], []
    n_windows, offset = 0, 0
    for lab, s in zip(labels, scores, strict=True):
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (lab.n_rows,):
            msg = f"nab: series {lab.name!r}: {s.shape[0]} scores for {lab.n_rows} rows"
            raise NabError(msg)
        rows = _row_weights(lab, profile)
        weight.append(rows.weight)
        window.append(np.where(rows.window >= 0, rows.window + offset, -1))
        score.append(s[rows.index])
        n_windows += len(np.unique(rows.window[rows.window >= 0]))
        offset += len(lab.windows)
    w, win, s = np.concatenate(weight), np.concatenate(window), np.concatenate(score)
    finite = ~np.isnan(s)
    w, win, s = w[finite], win[finite], s[finite]
    order = np.argsort(-s, kind="stable")
    w, win, s = w[order], win[order], s[order]
    # lowering the threshold past a row adds its FP cost, or raises its window to the best detection so far
    delta = w.copy()
    inside = win >= 0
    frame = pd.DataFrame({"window": win[inside], "weight": w[inside]})
    best_so_far = frame.groupby("window")["weight"].cummax()
    before = best_so_far.groupby(frame["window"]).shift(1).fillna(-profile.fn)
    delta[inside] = (best_so_far - before).to_numpy()
    null = -profile.fn * n_windows
    totals = null + np.cumsum(delta)
    # a threshold detects every row scoring at least as much: only the last row of a tie is a threshold
    last_of_tie = np.append(s[1:] != s[:-1], True) if len(s) else np.zeros(0, dtype=bool)
    candidates = np.flatnonzero(last_of_tie)
    base = corpus_score(labels, [np.zeros(lab.n_rows, dtype=bool) for lab in labels], profile)
    if len(candidates) == 0 or totals[candidates].max() <= null:
        return base
    k = candidates[int(np.argmax(totals[candidates]))]
    threshold = float(s[k])
    detections = [np.nan_to_num(np.asarray(x, dtype=np.float64), nan=-np.inf) >= threshold for x in scores]
    out = corpus_score(labels, detections, profile)
    return CorpusScore(**{**out.__dict__, "threshold": threshold})
