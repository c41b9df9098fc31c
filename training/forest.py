"""The packed isolation forest: every tree of the forest in one set of flat arrays.

Node ``k`` of the forest splits on ``feature[k]`` at ``threshold[k]`` (``feature == -1`` marks a leaf): a row
with ``x[feature[k]] <= threshold[k]`` continues at ``left[k]``, else at ``right[k]`` (absolute node indices;
a NaN goes left where ``nan_left[k]`` is set, as scikit-learn's ``missing_go_to_left``). A leaf holds its path
length ``leaf_value``: edges from the root plus c(n), the expected depth of the unbuilt subtree of its n
training samples. Tree ``t`` holds nodes ``tree_offset[t]:tree_offset[t + 1]``.

Rows are compared as float32, like scikit-learn's trees do, so routing (and every score) is identical to
``IsolationForest.score_samples`` on the same forest. The score is the paper's ``s = 2 ** (-E[h(x)] / c(psi))``.

>>> import numpy as np
>>> X = np.random.default_rng(0).normal(size=(500, 3))
>>> forest = PackedForest.fit(X, n_trees=20, max_samples=64, seed=1)
>>> s = forest.score(np.array([[0.0, 0.0, 0.0], [9.0, 9.0, 9.0]]))
>>> bool(s[1] > s[0])
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from training import _kernels as K

EULER_GAMMA = 0.5772156649015329
_ARRAYS = ("feature", "threshold", "left", "right", "nan_left", "leaf_value", "n_node_samples", "tree_offset")


class ForestError(ValueError):
    """The forest or its input is not usable; the message names the problem."""


def average_path_length(n: np.ndarray | float) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n nodes."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    big = n > 2
    out[n == 2] = 1.0
    out[big] = 2.0 * (np.log(n[big] - 1.0) + EULER_GAMMA) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def height_limit(max_samples: int) -> int:
    """The height limit of a tree grown on ``max_samples`` rows: ceil(log2(psi)), as scikit-learn."""
    return int(math.ceil(math.log2(max(int(max_samples), 2))))


@dataclass(frozen=True, eq=False)
class PackedForest:
    """An isolation forest as flat arrays (see the module docstring for the layout)."""

    feature: np.ndarray  # int32, -1 at leaves
    threshold: np.ndarray  # float64
    left: np.ndarray  # int32, absolute node index, -1 at leaves
    right: np.ndarray  # int32
    nan_left: np.ndarray  # uint8: a NaN goes left at this split
    leaf_value: np.ndarray  # float64: edges from the root + c(n_node_samples), at leaves
    n_node_samples: np.ndarray  # int64: training rows that reached the node
    tree_offset: np.ndarray  # int64, n_trees + 1
    max_samples: int  # psi: the subsample size each tree was grown on
    n_features: int

    def __post_init__(self) -> None:
        n = len(self.feature)
        for name in _ARRAYS[:-1]:
            if len(getattr(self, name)) != n:
                msg = f"PackedForest: array {name!r} has {len(getattr(self, name))} entries, feature has {n}"
                raise ForestError(msg)
        if len(self.tree_offset) < 1 or self.tree_offset[0] != 0 or self.tree_offset[-1] != n:
            msg = f"PackedForest: tree_offset must run from 0 to {n} nodes, got {self.tree_offset[:3]}..."
            raise ForestError(msg)
        internal = self.feature >= 0
        if internal.any():
            kids = np.concatenate([self.left[internal], self.right[internal]])
            if kids.min() < 0 or kids.max() >= n or self.feature[internal].max() >= self.n_features:
                msg = "PackedForest: a child index or split feature is out of range; the arrays are damaged"
                raise ForestError(msg)

    @property
    def n_trees(self) -> int:
        return len(self.tree_offset) - 1

    @property
    def n_nodes(self) -> int:
        return len(self.feature)

    # -- scoring ------------------------------------------------------------------------------------------
    def _as_float32(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            msg = f"forest expects a 2-D array with {self.n_features} features, got shape {X.shape}"
            raise ForestError(msg)
        with np.errstate(over="ignore"):  # beyond float32 becomes +-inf, as in scikit-learn
            return np.ascontiguousarray(X, dtype=np.float32)

    def _as_float(self, X: np.ndarray) -> np.ndarray:
        """``X`` checked, as C-contiguous float32 or float64 (without a copy when it is one already)."""
        X = np.asarray(X)
        if X.dtype != np.float64:
            return self._as_float32(X)  # float32 as it is; other types rounded straight to float32, as before
        if X.ndim != 2 or X.shape[1] != self.n_features:
            msg = f"forest expects a 2-D array with {self.n_features} features, got shape {X.shape}"
            raise ForestError(msg)
        return np.ascontiguousarray(X)

    @cached_property
    def _dense(self) -> tuple[int, np.ndarray, tuple[np.ndarray, ...]] | None:
        """(height, float32 thresholds, dense arrays) for the fast kernel; None when the trees are too deep."""
        depth = int(K.tree_depths(self.feature, self.left, self.right, self.tree_offset).max(initial=0))
        height = max(depth, height_limit(self.max_samples), 1)
        if height > K.MAX_DENSE_HEIGHT:
            return None
        n_int = (1 << height) - 1
        dense = (np.zeros((self.n_trees, n_int), np.int32), np.zeros((self.n_trees, n_int), np.float32),
                 np.zeros((self.n_trees, n_int), np.uint8), np.zeros((self.n_trees, n_int + 1)))
        thr32 = K.float32_floor(self.threshold)
        K.densify(self.feature, thr32, self.nan_left, self.left, self.right, self.leaf_value, self.tree_offset,
                  np.arange(self.n_trees, dtype=np.int64), height, *dense)
        return height, thr32, dense

    @cached_property
    def _c_psi(self) -> float:
        return float(average_path_length(self.max_samples))

    def path_length_sum(self, X: np.ndarray, *, parallel_min_rows: int | None = None) -> np.ndarray:
        """Sum over trees of each row's path length (float64, summed in tree order like scikit-learn).

        Batches of at least ``parallel_min_rows`` rows (default :data:`training._kernels.PARALLEL_MIN_ROWS`)
        are scored on all numba threads, smaller ones on the calling thread.
        """
        dense = self._dense
        if dense is None:
            X32 = self._as_float32(X)
            if len(X32) == 0:
                return np.zeros(0)
            return K.path_length_sum(X32, self.feature, self.threshold, self.left, self.right, self.nan_left,
                                     self.leaf_value, self.tree_offset[:-1])
        # the dense kernel takes float64 rows as they are and rounds them to float32 block by block
        Xf = self._as_float(X)
        if len(Xf) == 0:
            return np.zeros(0)
        height, _, (dfeat, dthr, dnan, dleaf) = dense
        threshold = K.PARALLEL_MIN_ROWS if parallel_min_rows is None else parallel_min_rows
        kernel = K.dense_path_sum if len(Xf) >= threshold else K.dense_path_sum_serial
        return kernel(Xf, dfeat, dthr, dnan, dleaf, height, K.BLOCK)

    def mean_path_length(self, X: np.ndarray) -> np.ndarray:
        """E[h(x)]: each row's path length averaged over the trees."""
        return self.path_length_sum(X) / max(self.n_trees, 1)

    def score(self, X: np.ndarray, *, parallel_min_rows: int | None = None) -> np.ndarray:
        """The paper's anomaly score in (0, 1]: higher is more anomalous (``-score_samples``)."""
        total = self.path_length_sum(X, parallel_min_rows=parallel_min_rows)
        denom = self.n_trees * self._c_psi
        if denom == 0:  # one-sample trees: scikit-learn defines the score as 1
            return np.ones(len(total))
        return 2.0 ** (-(total / denom))

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's ``IsolationForest.score_samples``: ``-score``, higher is more normal."""
        return -self.score(X)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, X: np.ndarray, *, n_trees: int = 100, max_samples: int = 256, seed: int = 0) -> PackedForest:
        """Grow a forest with the compiled builder (scikit-learn's algorithm; see :mod:`training.builder`)."""
        from training.builder import build_forest

        return build_forest(np.asarray(X), n_trees=n_trees, max_samples=max_samples, seed=seed)

    @classmethod
    def from_trees(cls, trees: Sequence[dict[str, np.ndarray]], *, max_samples: int, n_features: int,
                   slot: int | None = None) -> PackedForest:
        """Concatenate per-tree arrays (children relative to their tree) into one packed forest.

        With ``slot``, every tree gets exactly ``slot`` nodes (padded with unreachable leaves), so online
        adaptation can overwrite one tree's nodes without moving the others.
        """
        if slot is not None:
            trees = [_pad(t, slot) for t in trees]
        offsets = np.zeros(len(trees) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t["feature"]) for t in trees])
        parts: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAYS[:-1]}
        for t, base in zip(trees, offsets[:-1], strict=True):
            leaf = np.asarray(t["feature"]) < 0
            for k in ("feature", "threshold", "nan_left", "leaf_value", "n_node_samples"):
                parts[k].append(np.asarray(t[k]))
            parts["left"].append(np.where(leaf, -1, np.asarray(t["left"]) + base))
            parts["right"].append(np.where(leaf, -1, np.asarray(t["right"]) + base))
        dtypes = {"feature": np.int32, "threshold": np.float64, "left": np.int32, "right": np.int32,
                  "nan_left": np.uint8, "leaf_value": np.float64, "n_node_samples": np.int64}
        arrays = {k: np.ascontiguousarray(np.concatenate(v) if v else np.zeros(0), dtype=dtypes[k])
                  for k, v in parts.items()}
        return cls(**arrays, tree_offset=offsets, max_samples=int(max_samples), n_features=int(n_features))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, max_samples: int, n_features: int) -> PackedForest:
        """Rebuild a forest from :meth:`arrays` (persistence); checks names, lengths and index ranges."""
        missing = sorted(set(_ARRAYS) - set(arrays))
        if missing:
            msg = f"PackedForest.from_arrays: missing arrays {missing}"
            raise ForestError(msg)
        dtypes = {"feature": np.int32, "threshold": np.float64, "left": np.int32, "right": np.int32,
                  "nan_left": np.uint8, "leaf_value": np.float64, "n_node_samples": np.int64,
                  "tree_offset": np.int64}
        return cls(**{k: np.ascontiguousarray(arrays[k], dtype=dtypes[k]) for k in _ARRAYS},
                   max_samples=int(max_samples), n_features=int(n_features))

    @classmethod
    def from_sklearn(cls, model: Any) -> PackedForest:
        """Import a fitted ``sklearn.ensemble.IsolationForest`` exactly (scores equal its ``score_samples``)."""
        if getattr(model, "estimators_", None) is None or not hasattr(model, "_decision_path_lengths"):
            msg = "from_sklearn: the model is not a fitted sklearn IsolationForest (no estimators_)"
            raise ForestError(msg)
        n_features = int(model.n_features_in_)
        subsample = model._max_features != n_features  # trees then see columns estimators_features_[t]
        trees = []
        for est, cols, depths, avg in zip(model.estimators_, model.estimators_features_,
                                          model._decision_path_lengths, model._average_path_length_per_tree,
                                          strict=True):
            tr = est.tree_
            leaf = tr.children_left < 0
            feat = np.asarray(cols)[np.maximum(tr.feature, 0)] if subsample else tr.feature
            trees.append({
                "feature": np.where(leaf, -1, feat), "threshold": tr.threshold,
                "left": tr.children_left, "right": tr.children_right,
                "nan_left": np.asarray(tr.missing_go_to_left, dtype=np.uint8),
                # scikit-learn's leaf term, precomputed: node depth (root = 1) + c(n) - 1
                "leaf_value": np.where(leaf, depths + avg - 1.0, 0.0),
                "n_node_samples": tr.n_node_samples,
            })
        return cls.from_trees(trees, max_samples=int(model._max_samples), n_features=n_features)

    # -- trees ---------------------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Every array by name (persistence and GPU upload)."""
        return {k: getattr(self, k) for k in _ARRAYS}

    def trees(self) -> list[dict[str, np.ndarray]]:
        """The per-tree arrays (children relative to their tree), the inverse of :meth:`from_trees`."""
        out = []
        for t in range(self.n_trees):
            a, b = int(self.tree_offset[t]), int(self.tree_offset[t + 1])
            leaf = self.feature[a:b] < 0
            tree = {k: getattr(self, k)[a:b] for k in ("feature", "threshold", "nan_left", "leaf_value",
                                                         "n_node_samples")}
            tree["left"] = np.where(leaf, -1, self.left[a:b] - a)
            tree["right"] = np.where(leaf, -1, self.right[a:b] - a)
            out.append(tree)
        return out

    @cached_property
    def slot(self) -> int | None:
        """Nodes per tree when every tree has the same number (online-replaceable in place), else None."""
        sizes = np.diff(self.tree_offset)
        return int(sizes[0]) if len(sizes) and np.all(sizes == sizes[0]) else None

    def slotted(self) -> PackedForest:
        """This forest with every tree padded to the node capacity of a psi-sample tree (2 psi - 1)."""
        cap = max(2 * self.max_samples - 1, int(np.diff(self.tree_offset).max(initial=1)))
        if self.slot == cap:
            return self
        return PackedForest.from_trees(self.trees(), max_samples=self.max_samples, n_features=self.n_features,
                                       slot=cap)

    def replace_trees(self, indices: Sequence[int], new: PackedForest) -> PackedForest:
        """A new forest with trees ``indices`` replaced by the trees of ``new`` (this one is unchanged)."""
        self._check_compatible(indices, new)
        trees = self.trees()
        for i, tree in zip(indices, new.trees(), strict=True):
            trees[i] = tree
        return PackedForest.from_trees(trees, max_samples=self.max_samples, n_features=self.n_features,
                                       slot=self.slot if self.slot is not None else None)

    def overwrite_trees(self, indices: np.ndarray, new: PackedForest) -> None:
        """Replace trees ``indices`` by the trees of ``new`` *in place* (online adaptation's hot path).

        Needs a slotted forest (:meth:`slotted`) whose slot holds the new trees; the arrays and the fast
        kernel's copy are updated for those trees only. Callers that need a snapshot copy the forest first.
        """
        indices = np.asarray(indices, dtype=np.int64)
        self._check_compatible(indices, new)
        cap = self.slot
        if cap is None or new.slot is None or new.slot > cap:
            msg = f"overwrite_trees: needs a slotted forest with room for the new trees (slot {cap}, new {new.slot})"
            raise ForestError(msg)
        k, size = len(indices), new.slot
        for name in ("feature", "threshold", "nan_left", "leaf_value", "n_node_samples", "left", "right"):
            dst = getattr(self, name).reshape(self.n_trees, cap)
            src = getattr(new, name).reshape(k, size)
            if name in ("left", "right"):  # absolute indices: move from the new tree's slot to ours
                shift = (indices * cap - np.arange(k) * size)[:, None]
                src = np.where(src >= 0, src + shift, -1)
            dst[indices, :size] = src
            if size < cap:  # pad: unreachable leaves
                dst[indices, size:] = -1 if name in ("feature", "left", "right") else 0
        self._refresh_dense(indices)

    def _refresh_dense(self, trees: np.ndarray) -> None:
        """Re-derive the fast kernel's copy of ``trees`` after their nodes changed in place (slotted forests)."""
        dense = self.__dict__.get("_dense")
        cap = self.slot
        if dense is None or cap is None:
            return
        height, thr32, arrays = dense
        for t in trees:
            a = int(t) * cap
            thr32[a:a + cap] = K.float32_floor(self.threshold[a:a + cap])
        K.densify(self.feature, thr32, self.nan_left, self.left, self.right, self.leaf_value, self.tree_offset,
                  np.asarray(trees, dtype=np.int64), height, *arrays)

    def _check_compatible(self, indices: Sequence[int] | np.ndarray, new: PackedForest) -> None:
        if len(indices) != new.n_trees:
            msg = f"replace_trees: {len(indices)} slots but {new.n_trees} new trees"
            raise ForestError(msg)
        if new.n_features != self.n_features or new.max_samples != self.max_samples:
            msg = (f"replace_trees: new trees have {new.n_features} features / max_samples {new.max_samples}, "
                   f"the forest {self.n_features} / {self.max_samples}")
            raise ForestError(msg)
        if len(indices) and (min(indices) < 0 or max(indices) >= self.n_trees):
            msg = f"replace_trees: tree index out of range 0..{self.n_trees - 1}: {list(indices)}"
            raise ForestError(msg)

    def copy(self) -> PackedForest:
        """An independent copy (arrays copied), e.g. a snapshot of a forest that adapts in place."""
        return PackedForest(**{k: v.copy() for k, v in self.arrays().items()}, max_samples=self.max_samples,
                            n_features=self.n_features)


def _pad(tree: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``tree`` extended to ``size`` nodes with unreachable leaves."""
    n = len(tree["feature"])
    if n > size:
        msg = f"a tree of {n} nodes does not fit a slot of {size}"
        raise ForestError(msg)
    if n == size:
        return tree
    fill = {"feature": -1, "threshold": 0.0, "left": -1, "right": -1, "nan_left": 0, "leaf_value": 0.0,
            "n_node_samples": 0}
    return {k: np.concatenate([np.asarray(v), np.full(size - n, fill[k], dtype=np.asarray(v).dtype)])
            for k, v in tree.items()}
