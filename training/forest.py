"""The packed isolation forest: every tree of the forest in one set of flat arrays.

Node ``k`` of the forest splits on ``feature[k]`` at ``threshold[k]`` (``feature == -1`` marks a leaf) and
continues at ``left[k]`` / ``right[k]`` (absolute node indices). A leaf holds its path length: edges from the
root plus c(n), the expected depth of an unbuilt subtree of n samples. Scores are the isolation-forest paper's
``s = 2 ** (-E[h(x)] / c(psi))``; :meth:`PackedForest.score_samples` returns ``-s`` like scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from training._kernels import lockstep_path_sum, path_attributions, path_length_sum, tree_depths

_BLOCK = 128

EULER_GAMMA = 0.5772156649015329


class ForestError(ValueError):
    """The forest or its input is not usable; the message names the problem."""


def average_path_length(n: np.ndarray | float) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n nodes."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    two = n == 2
    big = n > 2
    out[two] = 1.0
    out[big] = 2.0 * (np.log(n[big] - 1.0) + EULER_GAMMA) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass(frozen=True)
class PackedForest:
    """An isolation forest as flat arrays (see the module docstring for the layout)."""

    feature: np.ndarray  # int32, -1 at leaves
    threshold: np.ndarray  # float64
    left: np.ndarray  # int32
    right: np.ndarray  # int32
    nan_left: np.ndarray  # uint8: where a NaN goes at this split
    leaf_value: np.ndarray  # float64: edges from root + c(n_samples) at leaves
    n_node_samples: np.ndarray  # int64
    tree_offset: np.ndarray  # int64, n_trees + 1: tree t holds nodes [tree_offset[t], tree_offset[t + 1])
    max_samples: int
    n_features: int

    @property
    def n_trees(self) -> int:
        return len(self.tree_offset) - 1

    @property
    def n_nodes(self) -> int:
        return len(self.feature)

    # -- scoring ------------------------------------------------------------------------------------------
    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            msg = f"forest expects a 2-D array with {self.n_features} features, got shape {X.shape}"
            raise ForestError(msg)
        # trees compare float32 values, as scikit-learn's trees do: identical routing, identical scores
        return np.ascontiguousarray(X, dtype=np.float32)

    @cached_property
    def _lockstep(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Arrays of the branch-free kernel, or None when the forest does not fit its packing."""
        leaf = self.feature < 0
        k = np.arange(self.n_nodes)
        depth_first = np.all(self.left[~leaf] == k[~leaf] + 1)
        offset = np.where(leaf, 0, self.right - k)
        if not depth_first or self.n_features > 256 or (offset.size and offset.max() >= 2**23):
            return None
        code = (np.where(leaf, 0, self.feature) | (offset << 8)).astype(np.int32)
        # a float32 input x satisfies x <= t64 exactly when x <= (t64 rounded down to float32)
        thr = self.threshold.astype(np.float32)
        up = thr.astype(np.float64) > self.threshold
        thr[up] = np.nextafter(thr[up], np.float32(-np.inf))
        thr[leaf] = -np.inf
        depth = tree_depths(self.feature, self.left, self.right, self.tree_offset)
        return code, thr, depth

    def mean_path_length(self, X: np.ndarray) -> np.ndarray:
        X32 = self._check(X)
        roots = self.tree_offset[:-1]
        fast = self._lockstep
        if fast is None:
            total = path_length_sum(X32, self.feature, self.threshold, self.left, self.right, self.nan_left,
                                    self.leaf_value, roots)
            return total / max(self.n_trees, 1)
        # -inf would pass a leaf's -inf threshold; the lowest float32 routes identically everywhere else
        X32 = np.maximum(X32, np.float32(np.finfo(np.float32).min))
        total = lockstep_path_sum(X32, fast[0], fast[1], self.leaf_value, roots, fast[2], _BLOCK)
        nan_rows = np.flatnonzero(np.isnan(X32).any(axis=1))
        if len(nan_rows):  # NaN follows each split's learned direction: the branchy kernel knows it
            total[nan_rows] = path_length_sum(np.ascontiguousarray(X32[nan_rows]), self.feature, self.threshold,
                                              self.left, self.right, self.nan_left, self.leaf_value, roots)
        return total / max(self.n_trees, 1)

    def score(self, X: np.ndarray) -> np.ndarray:
        """The paper's anomaly score in (0, 1]: higher is more anomalous."""
        denom = float(average_path_length(self.max_samples))
        if denom == 0:
            return np.ones(len(X))
        return 2.0 ** (-self.mean_path_length(X) / denom)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's ``IsolationForest.score_samples`` convention: ``-score``, higher is more normal."""
        return -self.score(X)

    def attributions(self, X: np.ndarray) -> np.ndarray:
        """(n_rows, n_features) depth-weighted split counts along each row's paths, rows summing to 1."""
        X32 = self._check(X)
        raw = path_attributions(X32, self.feature, self.threshold, self.left, self.right, self.nan_left,
                                self.tree_offset[:-1], self.n_features)
        total = raw.sum(axis=1, keepdims=True)
        return np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_trees(cls, trees: Sequence[dict[str, np.ndarray]], *, max_samples: int, n_features: int,
                   slot: int | None = None) -> PackedForest:
        """Concatenate per-tree arrays (children relative to the tree) into one packed forest.

        With ``slot``, every tree gets exactly ``slot`` nodes (padded with unreachable leaves), so online
        adaptation can overwrite one tree's slot without moving the others.
        """
        if slot is not None:
            trees = [_pad(t, slot) for t in trees]
        offsets = np.zeros(len(trees) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t["feature"]) for t in trees])
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("feature", "threshold", "left", "right", "nan_left",
                                                                "leaf_value", "n_node_samples")}
        for t, base in zip(trees, offsets[:-1], strict=True):
            is_leaf = t["feature"] < 0
            for k in ("feature", "threshold", "nan_left", "leaf_value", "n_node_samples"):
                parts[k].append(t[k])
            parts["left"].append(np.where(is_leaf, -1, t["left"] + base))
            parts["right"].append(np.where(is_leaf, -1, t["right"] + base))

        def cat(name: str, dtype: type) -> np.ndarray:
            return np.ascontiguousarray(np.concatenate(parts[name]) if parts[name] else np.zeros(0), dtype=dtype)

        return cls(cat("feature", np.int32), cat("threshold", np.float64), cat("left", np.int32),
                   cat("right", np.int32), cat("nan_left", np.uint8), cat("leaf_value", np.float64),
                   cat("n_node_samples", np.int64), offsets, int(max_samples), int(n_features))

    def trees(self) -> list[dict[str, np.ndarray]]:
        """The per-tree arrays (children relative to their tree), the inverse of :meth:`from_trees`."""
        out = []
        for t in range(self.n_trees):
            a, b = int(self.tree_offset[t]), int(self.tree_offset[t + 1])
            leaf = self.feature[a:b] < 0
            out.append({
                "feature": self.feature[a:b], "threshold": self.threshold[a:b],
                "left": np.where(leaf, -1, self.left[a:b] - a), "right": np.where(leaf, -1, self.right[a:b] - a),
                "nan_left": self.nan_left[a:b], "leaf_value": self.leaf_value[a:b],
                "n_node_samples": self.n_node_samples[a:b],
            })
        return out

    def replace_trees(self, indices: Sequence[int], new: PackedForest) -> PackedForest:
        """A forest with trees ``indices`` replaced by the trees of ``new`` (same order, same count)."""
        if len(indices) != new.n_trees:
            msg = f"replace_trees: {len(indices)} slots but {new.n_trees} new trees"
            raise ForestError(msg)
        if new.n_features != self.n_features or new.max_samples != self.max_samples:
            msg = "replace_trees: the new trees were built for other features or another max_samples"
            raise ForestError(msg)
        sizes = np.diff(self.tree_offset)
        cap = int(sizes[0]) if len(sizes) else 0
        if len(sizes) and np.all(sizes == cap) and np.all(np.diff(new.tree_offset) <= cap):
            return self._replace_in_slots(indices, new, cap)
        trees = self.trees()
        for i, tree in zip(indices, new.trees(), strict=True):
            trees[i] = tree
        return PackedForest.from_trees(trees, max_samples=self.max_samples, n_features=self.n_features)

    def _replace_in_slots(self, indices: Sequence[int], new: PackedForest, cap: int) -> PackedForest:
        arrays = {k: v.copy() for k, v in self.arrays().items()}
        for i, tree in zip(indices, new.trees(), strict=True):
            base = int(self.tree_offset[i])
            padded = _pad(tree, cap)
            leaf = padded["feature"] < 0
            for k in ("feature", "threshold", "nan_left", "leaf_value", "n_node_samples"):
                arrays[k][base:base + cap] = padded[k]
            arrays["left"][base:base + cap] = np.where(leaf, -1, padded["left"] + base)
            arrays["right"][base:base + cap] = np.where(leaf, -1, padded["right"] + base)
        return PackedForest(**arrays, max_samples=self.max_samples, n_features=self.n_features)

    @classmethod
    def from_sklearn(cls, model: object) -> PackedForest:
        """Import a fitted ``sklearn.ensemble.IsolationForest`` exactly (scores equal to its ``score_samples``)."""
        estimators = getattr(model, "estimators_", None)
        if estimators is None:
            msg = "from_sklearn: the model is not a fitted sklearn IsolationForest (no estimators_)"
            raise ForestError(msg)
        n_features = int(model.n_features_in_)  # type: ignore[attr-defined]
        subsample = model._max_features != n_features  # type: ignore[attr-defined]
        trees = []
        for est, feats, depths, avg in zip(estimators, model.estimators_features_,  # type: ignore[attr-defined]
                                           model._decision_path_lengths,  # type: ignore[attr-defined]
                                           model._average_path_length_per_tree, strict=True):  # type: ignore[attr-defined]
            tr = est.tree_
            is_leaf = tr.children_left < 0
            feat = np.where(is_leaf, -1, tr.feature)
            if subsample:
                feat = np.where(is_leaf, -1, np.asarray(feats)[np.maximum(tr.feature, 0)])
            nan_left = getattr(tr, "missing_go_to_left", np.zeros(tr.node_count, dtype=np.uint8))
            trees.append({
                "feature": feat.astype(np.int32), "threshold": tr.threshold.astype(np.float64),
                "left": tr.children_left.astype(np.int32), "right": tr.children_right.astype(np.int32),
                "nan_left": np.asarray(nan_left, dtype=np.uint8),
                # scikit-learn's leaf term: node depth (root = 1) + c(n) - 1
                "leaf_value": np.where(is_leaf, depths + avg - 1.0, 0.0),
                "n_node_samples": tr.n_node_samples.astype(np.int64),
            })
        return cls.from_trees(trees, max_samples=int(model._max_samples), n_features=n_features)  # type: ignore[attr-defined]

    @classmethod
    def fit(cls, X: np.ndarray, *, n_trees: int = 100, max_samples: int = 256, seed: int = 0) -> PackedForest:
        """Fit with the compiled builder (same algorithm as scikit-learn's; see :mod:`training.builder`)."""
        from training.builder import build_forest

        return build_forest(np.asarray(X), n_trees=n_trees, max_samples=max_samples, seed=seed)

    @property
    def slotted(self) -> bool:
        sizes = np.diff(self.tree_offset)
        return bool(len(sizes)) and bool(np.all(sizes == sizes[0]))

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array by name (persistence)."""
        return {k: getattr(self, k) for k in ("feature", "threshold", "left", "right", "nan_left", "leaf_value",
                                              "n_node_samples", "tree_offset")}


def _pad(tree: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``tree`` extended to ``size`` nodes with unreachable leaves."""
    n = len(tree["feature"])
    if n > size:
        msg = f"a tree of {n} nodes does not fit a slot of {size}"
        raise ForestError(msg)
    if n == size:
        return tree
    extra = size - n
    fill = {"feature": -1, "threshold": 0.0, "left": -1, "right": -1, "nan_left": 0, "leaf_value": 0.0,
            "n_node_samples": 0}
    return {k: np.concatenate([v, np.full(extra, fill[k], dtype=v.dtype)]) for k, v in tree.items()}
