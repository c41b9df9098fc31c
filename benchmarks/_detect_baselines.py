"""Baseline detectors and metrics for ``benchmarks/detect.py``, run on exactly the events the engine scored.

* :func:`robust_z`: per key, ``|x - median| / (1.4826 * MAD)`` over the key's previous ``window`` events (the
  event itself excluded), the classic robust rule; alert when above a fixed z.
* :func:`half_space_trees`: River's ``HalfSpaceTrees`` (defaults: 10 trees, height 8, window 250), score then
  learn per event; features min-max scaled by a River ``MinMaxScaler`` *per key* (updated with the event
  before it is transformed, so every scaled value lies in [0, 1] as HST assumes), and *one global* model on
  the scaled features, as the engine has one model over per-key features.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

#: z scores are capped here: a constant history has MAD 0 and any change would be infinitely far
Z_CAP = 1e6
#: fewer previous events than this: no median to speak of, score 0
MIN_HISTORY = 8


def robust_z(keys: Sequence[Any], values: np.ndarray, window: int = 32) -> np.ndarray:
    """Per-key robust z-score of every event against the key's previous ``window`` events (see the module).

    >>> z = robust_z(["a"] * 12, np.array([1.0, 2.0] * 5 + [1.5, 40.0]))
    >>> float(z[-1]) > 20, float(z[0])
    (True, 0.0)
    """
    values = np.asarray(values, dtype=np.float64)
    codes, _ = pd.factorize(pd.Series(list(keys)), use_na_sentinel=False)
    out = np.zeros(len(values))
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for idx in np.split(order, bounds):
        v = values[idx]
        # row j holds the `window` values before event j (NaN where the key has no such history yet)
        history = np.lib.stride_tricks.sliding_window_view(np.concatenate([np.full(window, np.nan), v]),
                                                           window)[:-1]
        enough = np.count_nonzero(~np.isnan(history), axis=1) >= MIN_HISTORY
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: masked out by `enough`
            med = np.nanmedian(history, axis=1)
            mad = np.nanmedian(np.abs(history - med[:, None]), axis=1)
        dev = np.abs(v - med)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(dev == 0, 0.0, dev / (1.4826 * mad))
        out[idx] = np.where(enough, np.nan_to_num(np.minimum(z, Z_CAP), nan=0.0, posinf=Z_CAP), 0.0)
    return out


def half_space_trees(keys: Sequence[Any] | None, features: pd.DataFrame, seed: int = 0) -> tuple[np.ndarray, float]:
    """River HST scores in arrival order (``keys`` None: one scaler for all rows) and the seconds it took."""
    from river import anomaly, preprocessing

    model = anomaly.HalfSpaceTrees(seed=seed)
    scalers: dict[Any, Any] = {}
    rows = features.astype(np.float64).to_dict("records")
    key_list = list(keys) if keys is not None else [None] * len(rows)
    out = np.empty(len(rows))
    t0 = time.perf_counter()
    for i, (k, x) in enumerate(zip(key_list, rows, strict=True)):
        scaler = scalers.get(k)
        if scaler is None:
            scaler = scalers[k] = preprocessing.MinMaxScaler()
        scaler.learn_one(x)
        xs = scaler.transform_one(x)
        out[i] = model.score_one(xs)
        model.learn_one(xs)
    return out, time.perf_counter() - t0


def ranking(y: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    """ROC AUC and average precision of ``score`` against 0/1 labels (None with one class only)."""
    y = np.asarray(y)
    if y.min() == y.max():
        return {"roc_auc": None, "average_precision": None}
    return {"roc_auc": float(roc_auc_score(y, score)), "average_precision": float(average_precision_score(y, score))}


def alert_quality(y: np.ndarray, flags: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and rate of binary alerts against 0/1 labels."""
    y, flags = np.asarray(y, dtype=bool), np.asarray(flags, dtype=bool)
    hits = int((y & flags).sum())
    precision = hits / max(int(flags.sum()), 1)
    recall = hits / max(int(y.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "alert_rate": float(flags.mean())}


def rank_in_key(keys: Sequence[Any]) -> np.ndarray:
    """0 for each key's first event, 1 for its second, ... (the per-key warm-up is the smallest ranks)."""
    return pd.Series(list(keys)).groupby(pd.Series(list(keys))).cumcount().to_numpy()
