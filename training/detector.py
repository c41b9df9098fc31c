"""The engine-facing detector: fit -> calibrate -> score -> adapt, with versions, explanations, persistence."""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from training.builder import build_forest
from training.forest import ForestError, PackedForest
from training.registry import load_version, save_version
from training.threshold import StreamingThreshold


@dataclass(frozen=True)
class OnlineSettings:
    """How the forest follows the stream (see docs/model.md)."""

    enabled: bool = True
    #: recent rows new trees are fitted on
    window: int = 4096
    window_kind: Literal["sliding", "reservoir"] = "sliding"
    #: share of the trees replaced (oldest first) after each micro-batch
    replace_fraction: float = 0.02
    #: when the drift detector fires, replace this many times as many trees
    drift_boost: float = 10.0
    #: drift: a batch's mean score this many standard deviations from its running mean
    drift_z: float = 6.0
    #: rows of history before the first replacement
    min_rows: int = 256
    #: scores the threshold quantile is computed over
    threshold_window: int = 20_000


@dataclass
class ScoredBatch:
    """Scores of one batch, with the threshold and model version that produced them."""

    score: np.ndarray
    threshold: np.ndarray
    is_anomaly: np.ndarray
    model_version: str
    drift: bool = False


@dataclass
class _Window:
    rows: np.ndarray
    kind: str
    filled: int = 0
    seen: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def add(self, X: np.ndarray) -> None:
        cap = len(self.rows)
        if self.kind == "sliding":
            X = X[-cap:]
            n = len(X)
            self.rows = np.roll(self.rows, -n, axis=0) if n < cap else self.rows
            self.rows[cap - n:] = X
            self.filled = min(cap, self.filled + n)
        else:  # reservoir (Algorithm R, vectorised per batch)
            for x in X:
                if self.filled < cap:
                    self.rows[self.filled] = x
                    self.filled += 1
                else:
                    j = self.rng.integers(0, self.seen + 1)
                    if j < cap:
                        self.rows[j] = x
                self.seen += 1
            return
        self.seen += len(X)

    def data(self) -> np.ndarray:
        cap = len(self.rows)
        return self.rows[cap - self.filled:] if self.kind == "sliding" else self.rows[: self.filled]


class Detector:
    """An isolation forest plus its threshold, feature names, version and online adaptation."""

    def __init__(self, forest: PackedForest, feature_names: Sequence[str], *, threshold: StreamingThreshold,
                 version: str, online: OnlineSettings | None = None, seed: int = 0,
                 meta: dict[str, Any] | None = None) -> None:
        if forest.n_features != len(feature_names):
            msg = f"detector: forest has {forest.n_features} features but {len(feature_names)} names were given"
            raise ForestError(msg)
        self.forest = forest
        self.feature_names = tuple(feature_names)
        self.thresholder = threshold
        self.base_version = version
        self.online = online or OnlineSettings(enabled=False)
        self.seed = seed
        self.meta = dict(meta or {})
        self.updates = 0
        self.tree_age = np.zeros(forest.n_trees, dtype=np.int64)
        self._batches = 0
        self._window = _Window(np.zeros((self.online.window, forest.n_features)), self.online.window_kind,
                               rng=np.random.default_rng(seed))
        self._mean = self._var = None  # running mean / variance of batch mean scores (drift detector)

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, X: np.ndarray, feature_names: Sequence[str], *, n_trees: int = 100, max_samples: int = 256,
            contamination: float = 0.01, seed: int = 0, online: OnlineSettings | None = None,
            fixed_threshold: float | None = None, use_sklearn: bool = True) -> Detector:
        """Fit a forest on ``X`` (scikit-learn's IsolationForest, imported exactly) and calibrate the threshold."""
        X = _as_matrix(X, len(feature_names), feature_names)
        finite = X[np.isfinite(X).all(axis=1)]
        if len(finite) < 2:
            msg = f"detector: need at least 2 finite rows to fit, got {len(finite)}"
            raise ForestError(msg)
        psi = int(min(max_samples, len(finite)))
        if use_sklearn:
            from sklearn.ensemble import IsolationForest

            model = IsolationForest(n_estimators=n_trees, max_samples=psi, random_state=seed).fit(finite)
            forest = PackedForest.from_sklearn(model)
        else:
            forest = build_forest(finite, n_trees=n_trees, max_samples=psi, seed=seed)
        online = online if online is not None else OnlineSettings()
        # fixed-size slots let online adaptation overwrite trees in place
        forest = PackedForest.from_trees(forest.trees(), max_samples=forest.max_samples,
                                         n_features=forest.n_features, slot=2 * psi - 1)
        threshold = StreamingThreshold(contamination, online.threshold_window, fixed=fixed_threshold)
        threshold.reset(forest.score(finite))
        digest = hashlib.sha256(forest.threshold.tobytes()).hexdigest()[:6]
        version = f"v{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{digest}"
        meta = {"n_trees": n_trees, "max_samples": psi, "contamination": contamination, "seed": seed,
                "trained_rows": int(len(finite)), "fitted_at": time.time()}
        det = cls(forest, feature_names, threshold=threshold, version=version, online=online, seed=seed, meta=meta)
        det._window.add(finite)
        return det

    @property
    def version(self) -> str:
        return self.base_version if self.updates == 0 else f"{self.base_version}+u{self.updates}"

    @property
    def threshold(self) -> float:
        return self.thresholder.value

    # -- scoring -------------------------------------------------------------------------------------------
    def score(self, X: np.ndarray) -> np.ndarray:
        """Paper scores in (0, 1] (higher = more anomalous) without learning."""
        return self.forest.score(_as_matrix(X, len(self.feature_names), self.feature_names))

    def score_batch(self, X: np.ndarray) -> ScoredBatch:
        """Prequential step: score with the model as it is, then learn from the batch (if online)."""
        X = _as_matrix(X, len(self.feature_names), self.feature_names)
        scores = self.forest.score(X) if len(X) else np.zeros(0)
        thr = self.thresholder.value
        out = ScoredBatch(scores, np.full(len(X), thr), scores > thr, self.version)
        if len(X):
            out.drift = self.learn(X, scores)
        return out

    def learn(self, X: np.ndarray, scores: np.ndarray) -> bool:
        """Adapt to a scored batch: threshold window, recent-data window, replace the oldest trees."""
        self.thresholder.update(scores)
        self._batches += 1
        if not self.online.enabled:
            return False
        finite = X[np.isfinite(X).all(axis=1)]
        if len(finite):
            self._window.add(finite)
        drift = self._drift(scores)
        if self._window.filled < self.online.min_rows:
            return drift
        share = self.online.replace_fraction * (self.online.drift_boost if drift else 1.0)
        k = min(self.forest.n_trees, max(1, math.ceil(share * self.forest.n_trees)))
        oldest = np.argsort(self.tree_age, kind="stable")[:k]
        new = build_forest(self._window.data(), n_trees=k, max_samples=self.forest.max_samples,
                           seed=self.seed * 1_000_003 + self._batches)
        self.forest = self.forest.replace_trees(oldest.tolist(), new)
        self.tree_age[oldest] = self._batches
        self.updates += 1
        return drift

    def _drift(self, scores: np.ndarray) -> bool:
        m = float(np.mean(scores))
        if self._mean is None:
            self._mean, self._var = m, 0.0
            return False
        d = m - self._mean
        drift = self._batches > 10 and self._var > 0 and abs(d) > self.online.drift_z * math.sqrt(self._var)
        alpha = 0.05
        self._mean += alpha * d
        self._var = (1 - alpha) * (self._var + alpha * d * d)
        return drift

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.score(X) > self.threshold

    def explain(self, X: np.ndarray) -> np.ndarray:
        """(n, n_features) attributions: depth-weighted share of each feature in the splits on each row's paths."""
        return self.forest.attributions(_as_matrix(X, len(self.feature_names), self.feature_names))

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this version as a directory of arrays + JSON metadata + checksum (no pickle)."""
        arrays = {f"forest_{k}": v for k, v in self.forest.arrays().items()}
        arrays["tree_age"] = self.tree_age
        arrays["threshold_state"] = self.thresholder.state()["buffer"]
        meta = {**self.meta, "version": self.version, "parent": self.meta.get("parent"),
                "feature_names": list(self.feature_names), "max_samples": self.forest.max_samples,
                "n_features": self.forest.n_features, "threshold": self.threshold,
                "contamination": self.thresholder.contamination, "fixed_threshold": self.thresholder.fixed,
                "online": asdict(self.online), "seed": self.seed}
        return save_version(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Detector:
        """Read a version written by :meth:`save` (verifying its checksum)."""
        arrays, meta = load_version(path)
        forest = PackedForest(**{k[len("forest_"):]: v for k, v in arrays.items() if k.startswith("forest_")},
                              max_samples=int(meta["max_samples"]), n_features=int(meta["n_features"]))
        online = OnlineSettings(**meta["online"])
        threshold = StreamingThreshold(meta["contamination"], online.threshold_window,
                                       fixed=meta.get("fixed_threshold"))
        threshold.reset(arrays["threshold_state"][np.isfinite(arrays["threshold_state"])])
        det = cls(forest, meta["feature_names"], threshold=threshold, version=meta["version"], online=online,
                  seed=int(meta["seed"]), meta={**meta, "parent": meta.get("parent")})
        det.tree_age = arrays["tree_age"]
        return det


def _as_matrix(X: np.ndarray, n_features: int, names: Sequence[str]) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_features:
        msg = f"detector expects {n_features} features {list(names)}, got an array of shape {X.shape}"
        raise ForestError(msg)
    return X
