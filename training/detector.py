"""The engine-facing detector: fit -> calibrate -> score -> adapt, with versions, explanations, persistence.

:meth:`Detector.score_batch` is prequential: each micro-batch is scored with the model and threshold as they
were, then (with online adaptation on) the threshold, drift detector, recent-data window and forest learn from
it. Rows with NaN are scored — a NaN follows each split's learned side, exactly as scikit-learn does (with no
NaN in training: the side that got more samples) — but never enter the window new trees are grown on.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> det = Detector.fit(rng.normal(size=(2000, 2)), ["x", "y"], n_trees=50, contamination=0.02, online=None)
>>> out = det.score_batch(np.array([[0.0, 0.0], [6.0, -6.0]]))
>>> out.is_anomaly.tolist(), out.model_version == det.version
([False, True], True)
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.drift import DriftDetector
from training.explain import attributions
from training.forest import ForestError, PackedForest
from training.gpu import CpuScorer, Scorer, make_scorer
from training.online import OnlineSettings, RecentWindow, TreeRenewal
from training.registry import RegistryError, load_version, save_version
from training.threshold import StreamingThreshold

#: parameter limits, checked at fit (name -> (predicate, what it must be))
_LIMITS = {
    "n_trees": (lambda v: isinstance(v, int) and 1 <= v <= 10_000, "an integer in [1, 10000]"),
    "max_samples": (lambda v: isinstance(v, int) and 2 <= v <= 65_536, "an integer in [2, 65536]"),
    "contamination": (lambda v: 0.0 < v < 0.5, "in (0, 0.5)"),
}


#: the default of ``Detector.fit(online=...)``: adapt online with the default settings
DEFAULT_ONLINE = OnlineSettings()


@dataclass(frozen=True)
class ScoredBatch:
    """One micro-batch's scores with the threshold and model version that produced them."""

    score: np.ndarray  # float64, paper score in (0, 1], higher = more anomalous
    threshold: np.ndarray  # float64, the threshold in force for each row
    is_anomaly: np.ndarray  # bool
    model_version: str
    drift: bool = False  # the drift detector fired on this batch (after scoring it)
    trees_renewed: int = 0


class Detector:
    """An isolation forest plus its threshold, feature names, version and online adaptation."""

    def __init__(self, forest: PackedForest, feature_names: Sequence[str], *, threshold: StreamingThreshold,
                 version: str, online: OnlineSettings | None = None, seed: int = 0,
                 meta: dict[str, Any] | None = None) -> None:
        names = tuple(str(n) for n in feature_names)
        if forest.n_features != len(names) or len(set(names)) != len(names):
            msg = f"detector: forest has {forest.n_features} features but the names are {list(names)}"
            raise ForestError(msg)
        self.feature_names = names
        self.online = online if online is not None else OnlineSettings(enabled=False)
        # fixed-size tree slots let online adaptation overwrite trees in place
        self.forest = forest.slotted() if self.online.enabled else forest
        self.thresholder = threshold
        self.base_version = version
        self.updates = 0
        self.seed = int(seed)
        self.meta: dict[str, Any] = dict(meta or {})
        self.window = RecentWindow(self.online.window, forest.n_features, self.online.window_kind, seed=seed)
        self.renewal = TreeRenewal(self.online, forest.n_trees, seed)
        self.drift = DriftDetector(h=self.online.drift_h, alert_z=self.online.drift_alert_z)
        self.events_seen = 0
        self.scorer: Scorer = CpuScorer(self.forest)

    def use_backend(self, backend: str) -> None:
        """Score on ``backend`` ("cpu", "cpu-parallel", "cupy", "nvforest", "nvforest-cpu" or "auto"; see
        :mod:`training.gpu`).

        Raises :class:`training.gpu.BackendUnavailable` naming what is missing when it cannot run here.
        """
        self.scorer = make_scorer(self.forest, backend)

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, X: np.ndarray, feature_names: Sequence[str], *, n_trees: int = 100, max_samples: int = 256,
            contamination: float = 0.01, seed: int = 0, online: OnlineSettings | None = DEFAULT_ONLINE,
            fixed_threshold: float | None = None, builder: str = "sklearn") -> Detector:
        """Fit a forest on the finite rows of ``X`` and calibrate the threshold on their scores.

        ``builder="sklearn"`` fits scikit-learn's ``IsolationForest`` and imports it exactly; ``"numba"`` uses
        the compiled builder (same algorithm, ~50x faster to fit). ``online=None`` disables adaptation.
        """
        for name, value in (("n_trees", n_trees), ("max_samples", max_samples), ("contamination", contamination)):
            ok, want = _LIMITS[name]
            if not ok(value):
                msg = f"Detector.fit: {name} must be {want}, got {value!r}"
                raise ForestError(msg)
        if builder not in ("sklearn", "numba"):
            msg = f"Detector.fit: builder must be 'sklearn' or 'numba', got {builder!r}"
            raise ForestError(msg)
        names = tuple(str(n) for n in feature_names)
        X = _as_matrix(X, names)
        finite = X[np.isfinite(X).all(axis=1)]
        if len(finite) < 2:
            msg = f"Detector.fit: need at least 2 rows without NaN/inf, got {len(finite)} of {len(X)}"
            raise ForestError(msg)
        psi = min(max_samples, len(finite))
        if builder == "sklearn":
            from sklearn.ensemble import IsolationForest

            model = IsolationForest(n_estimators=n_trees, max_samples=psi, random_state=seed).fit(finite)
            forest = PackedForest.from_sklearn(model)
        else:
            forest = PackedForest.fit(finite, n_trees=n_trees, max_samples=psi, seed=seed)
        settings = online if online is not None else OnlineSettings(enabled=False)
        threshold = StreamingThreshold(contamination, fixed=fixed_threshold, half_life=settings.threshold_half_life)
        train_scores = forest.score(finite)
        threshold.reset(train_scores)
        version = _new_version(forest)
        meta = {
            "parent": None, "fitted_at": time.time(), "builder": builder,
            "params": {"n_trees": n_trees, "max_samples": psi, "contamination": contamination, "seed": seed},
            "training": {"rows": int(len(finite)), "dropped_rows": int(len(X) - len(finite)),
                         "min": finite.min(axis=0).tolist(), "max": finite.max(axis=0).tolist()},
            "metrics": {"train_score_mean": float(train_scores.mean()),
                        "train_alert_rate": float(np.mean(train_scores > threshold.value))},
        }
        det = cls(forest, names, threshold=threshold, version=version, online=online, seed=seed, meta=meta)
        det.window.add(finite.astype(np.float32))
        return det

    @property
    def version(self) -> str:
        """``<base>`` as fitted or loaded, ``<base>+u<n>`` after n online updates of the trees."""
        return self.base_version if self.updates == 0 else f"{self.base_version}+u{self.updates}"

    @property
    def threshold(self) -> float:
        return float(self.thresholder.value)

    # -- scoring -------------------------------------------------------------------------------------------
    def score(self, X: np.ndarray) -> np.ndarray:
        """Paper scores in (0, 1] (higher = more anomalous), without learning."""
        return self.scorer.score(_as_matrix(X, self.feature_names))

    def score_batch(self, X: np.ndarray) -> ScoredBatch:
        """Prequential step: score with the model as it is, then learn from the batch (see the module doc)."""
        X = _as_matrix(X, self.feature_names)
        n = len(X)
        scores = self.scorer.score(X) if n else np.zeros(0)
        thr = self.threshold
        flagged = scores > thr
        version = self.version
        drift, renewed = (self._learn(X, scores, int(flagged.sum())) if n else (False, 0))
        return ScoredBatch(scores, np.full(n, thr), flagged, version, drift, renewed)

    def learn(self, X: np.ndarray, scores: np.ndarray, n_flagged: int | None = None) -> tuple[bool, int]:
        """Adapt to rows that were scored elsewhere (``scores`` by the version they were scored with).

        What :meth:`score_batch` does after scoring, for a coordinator that learns from the samples of many
        scorers. Returns (drift fired, trees renewed).
        """
        X = _as_matrix(X, self.feature_names)
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) != len(X):
            msg = f"detector.learn: {len(X)} rows but {len(scores)} scores"
            raise ForestError(msg)
        if not len(X):
            return False, 0
        flagged = int(np.count_nonzero(scores > self.threshold)) if n_flagged is None else int(n_flagged)
        return self._learn(X, scores, flagged)

    def _learn(self, X: np.ndarray, scores: np.ndarray, n_flagged: int) -> tuple[bool, int]:
        self.events_seen += len(X)
        if not self.online.enabled:
            self.thresholder.update(scores)
            return False, 0
        drift = self.drift.update(scores, alerts=n_flagged, contamination=self.thresholder.contamination)
        X32 = X.astype(np.float32)
        finite = np.isfinite(X32).all(axis=1)
        rows = X32 if finite.all() else X32[finite]
        if drift:
            self.renewal.drifted()
            if self.online.drift_reset_window:
                self.window.clear()
        else:
            self.thresholder.update(scores)
        self.window.add(rows)
        renewed = self.renewal.renew(self.forest, self.window)
        if len(renewed):
            self.scorer.update(self.forest, renewed)
            self.updates += 1
        if drift:
            # the batch's scores came from the old regime's model: calibrate on the renewed model instead,
            # as fit does, so the alert rate is right from the next batch on
            recal = self.scorer.score(rows) if len(renewed) and len(rows) else scores
            self.thresholder.forget(self.online.threshold_forget)
            self.thresholder.update(recal)
        return drift, len(renewed)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Whether each row scores above the current threshold (no learning)."""
        return self.score(X) > self.threshold

    def explain(self, X: np.ndarray) -> np.ndarray:
        """(n, n_features) attributions of each row's isolation to the features (rows sum to 1)."""
        return attributions(self.forest, _as_matrix(X, self.feature_names))

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this state as a version directory (arrays + JSON metadata + sha256; no pickle)."""
        arrays = {f"forest.{k}": v for k, v in self.forest.arrays().items()}
        arrays["threshold.counts"] = self.thresholder.counts
        arrays["window.rows"] = self.window.data()
        meta = {
            **self.meta,
            "version": self.version, "base_version": self.base_version, "updates": self.updates,
            "parent": self.base_version if self.updates else self.meta.get("parent"),
            "saved_at": time.time(), "feature_names": list(self.feature_names),
            "forest": {"max_samples": self.forest.max_samples, "n_features": self.forest.n_features,
                       "n_trees": self.forest.n_trees},
            "threshold": self.thresholder.params(), "online": self.online.to_dict(), "seed": self.seed,
            "renewal": self.renewal.state(), "events_seen": self.events_seen, "window_seen": self.window.seen,
        }
        return save_version(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Detector:
        """Read a version written by :meth:`save`, verifying its checksums and array shapes."""
        arrays, meta = load_version(path)
        try:
            f = meta["forest"]
            forest = PackedForest.from_arrays({k[len("forest."):]: v for k, v in arrays.items()
                                               if k.startswith("forest.")},
                                              max_samples=f["max_samples"], n_features=f["n_features"])
            online = OnlineSettings(**meta["online"])
            threshold = StreamingThreshold.restore(meta["threshold"], arrays["threshold.counts"])
            det = cls(forest, meta["feature_names"], threshold=threshold, version=meta["base_version"],
                      online=online, seed=int(meta["seed"]), meta={k: meta[k] for k in ("parent", "fitted_at",
                      "builder", "params", "training", "metrics") if k in meta})
            det.updates = int(meta["updates"])
            det.renewal.restore(meta["renewal"])
            det.events_seen = int(meta["events_seen"])
            rows = arrays["window.rows"]
            det.window.add(rows[-det.window.rows.shape[0]:].astype(np.float32))
            det.window.seen = int(meta["window_seen"])
        except (KeyError, TypeError, ValueError) as err:
            msg = f"registry: {path} is not a complete detector version ({type(err).__name__}: {err})"
            raise RegistryError(msg) from None
        return det


def _new_version(forest: PackedForest) -> str:
    digest = hashlib.sha256(forest.threshold.tobytes() + forest.feature.tobytes()).hexdigest()[:8]
    return f"v{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{digest}"


def _as_matrix(X: Any, names: tuple[str, ...]) -> np.ndarray:
    """``X`` as a 2-D float64 array of the detector's features; a DataFrame's columns are checked by name."""
    columns = getattr(X, "columns", None)
    if columns is not None:
        cols = [str(c) for c in columns]
        if cols != list(names):
            missing = [n for n in names if n not in cols]
            extra = [c for c in cols if c not in names]
            msg = (f"detector expects columns {list(names)} in that order; got {cols} "
                   f"(missing {missing}, unexpected {extra})")
            raise ForestError(msg)
        X = X.to_numpy(dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names):
        msg = f"detector expects {len(names)} features {list(names)}, got an array of shape {X.shape}"
        raise ForestError(msg)
    return X
