"""A compiled builder of isolation trees: scikit-learn's ``IsolationForest.fit`` algorithm, without its overhead.

Each tree draws ``max_samples`` (psi) rows without replacement, then splits depth-first: at a node with more
than one row and depth below the height limit ceil(log2 psi), pick a feature uniformly among those not
constant on the node, draw the threshold uniformly between the node's min and max (float32 values, float64
threshold, ``threshold == max`` falls back to ``min`` — scikit-learn's random splitter), and send
``x <= threshold`` left. A node with one row, only constant features or at the height limit is a leaf whose
path length is its depth + c(rows). With no NaN in training, a NaN later goes to the child that received
more rows (ties go right), which is what scikit-learn stores in ``missing_go_to_left``.

The random streams differ from scikit-learn's, so forests are equal in distribution, not node for node;
``tests/unit/test_forest_builder.py`` and ``tests/data/test_real_data.py`` check scores and AUC statistically.
Online adaptation grows a few trees after every micro-batch: scikit-learn spends about 0.55 ms of Python per
tree, this takes about 10 µs for psi = 256.
"""

from __future__ import annotations

import numba
import numpy as np

from training.forest import EULER_GAMMA, ForestError, PackedForest, height_limit


@numba.njit(cache=True)
def _c(n):  # pragma: no cover - compiled
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (np.log(n - 1.0) + EULER_GAMMA) - 2.0 * (n - 1.0) / n


@numba.njit(cache=True)
def _draw_rows(n, psi, perm, out):  # pragma: no cover - compiled
    """``psi`` distinct row indices out of ``n`` into ``out``."""
    if perm.shape[0] == n:
        # partial Fisher-Yates on a persistent permutation: still uniform, O(psi) per tree
        for i in range(psi):
            j = i + np.random.randint(n - i)
            perm[i], perm[j] = perm[j], perm[i]
            out[i] = perm[i]
        return
    # n >> psi: draw with replacement and redraw the duplicates (few: about psi**2 / 2n)
    for i in range(psi):
        out[i] = np.random.randint(n)
    while True:
        out.sort()
        dup = False
        for i in range(1, psi):
            if out[i] == out[i - 1]:
                out[i] = np.random.randint(n)
                dup = True
        if not dup:
            return


@numba.njit(cache=True)
def _grow(X, slots, psi, height, seed, cap, feature, threshold, left, right, nan_left, leaf_value,
          n_node):  # pragma: no cover - compiled
    """Grow one tree into each slot ``s`` of the node arrays (nodes ``s * cap`` onwards), in place."""
    np.random.seed(seed)
    n, d = X.shape
    rows = np.empty(psi, dtype=np.int64)
    perm = np.arange(n) if n <= 16 * psi else np.empty(0, dtype=np.int64)
    feats = np.arange(d)
    # depth-first stack of nodes to grow: (first row, end row, depth, node index)
    st_a = np.empty(height + 2, dtype=np.int64)
    st_b = np.empty(height + 2, dtype=np.int64)
    st_d = np.empty(height + 2, dtype=np.int64)
    st_k = np.empty(height + 2, dtype=np.int64)
    for s in slots:
        base = s * cap
        feature[base:base + cap] = -1  # every node a leaf until split; unused ones stay unreachable leaves
        threshold[base:base + cap] = 0.0
        left[base:base + cap] = -1
        right[base:base + cap] = -1
        nan_left[base:base + cap] = 0
        leaf_value[base:base + cap] = 0.0
        n_node[base:base + cap] = 0
        _draw_rows(n, psi, perm, rows)
        nxt = base + 1
        st_a[0], st_b[0], st_d[0], st_k[0] = 0, psi, 0, base
        top = 1
        while top > 0:
            top -= 1
            a, b, depth, k = st_a[top], st_b[top], st_d[top], st_k[top]
            m = b - a
            n_node[k] = m
            split = False
            if m > 1 and depth < height:
                # features in random order until one is not constant on this node
                for i in range(d):
                    j = i + np.random.randint(d - i)
                    feats[i], feats[j] = feats[j], feats[i]
                    f = feats[i]
                    lo = np.inf
                    hi = -np.inf
                    for r in range(a, b):
                        v = np.float64(X[rows[r], f])
                        lo = min(lo, v)
                        hi = max(hi, v)
                    if hi > lo:
                        thr = lo + np.random.random() * (hi - lo)
                        if thr >= hi:
                            thr = lo
                        i_lo = a  # partition rows[a:b]: x <= thr first
                        i_hi = b - 1
                        while i_lo <= i_hi:
                            if X[rows[i_lo], f] <= thr:
                                i_lo += 1
                            else:
                                rows[i_lo], rows[i_hi] = rows[i_hi], rows[i_lo]
                                i_hi -= 1
                        feature[k] = f
                        threshold[k] = thr
                        nan_left[k] = 1 if (i_lo - a) > (b - i_lo) else 0
                        left[k] = nxt
                        right[k] = nxt + 1
                        nxt += 2
                        st_a[top], st_b[top], st_d[top], st_k[top] = i_lo, b, depth + 1, right[k]
                        st_a[top + 1], st_b[top + 1], st_d[top + 1], st_k[top + 1] = a, i_lo, depth + 1, left[k]
                        top += 2
                        split = True
                        break
            if not split:
                leaf_value[k] = depth + _c(m)


def build_forest(X: np.ndarray, *, n_trees: int = 100, max_samples: int = 256, seed: int = 0) -> PackedForest:
    """Grow ``n_trees`` isolation trees on the rows of ``X``; psi = ``min(max_samples, len(X))``.

    ``X`` must be finite (the detector drops rows with NaN/inf before fitting). The result is slotted: tree
    ``t`` holds nodes ``t * (2 psi - 1)`` onwards, padded with unreachable leaves.
    """
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are rejected below
        X32 = np.ascontiguousarray(X, dtype=np.float32)
    if X32.ndim != 2 or len(X32) < 2 or X32.shape[1] < 1:
        msg = f"build_forest: need a 2-D array with at least 2 rows and 1 feature, got shape {X32.shape}"
        raise ForestError(msg)
    if n_trees < 1 or max_samples < 2:
        msg = f"build_forest: n_trees must be >= 1 and max_samples >= 2, got {n_trees} and {max_samples}"
        raise ForestError(msg)
    if not np.isfinite(X32).all():
        msg = "build_forest: X holds NaN or infinite values (or values beyond float32); drop those rows first"
        raise ForestError(msg)
    psi = int(min(max_samples, len(X32)))
    cap = 2 * psi - 1  # a binary tree with psi leaves at most
    size = n_trees * cap
    arrays: dict[str, np.ndarray] = {"feature": np.empty(size, np.int32), "threshold": np.empty(size), "left": np.empty(size, np.int32),
              "right": np.empty(size, np.int32), "nan_left": np.empty(size, np.uint8),
              "leaf_value": np.empty(size), "n_node_samples": np.empty(size, np.int64)}
    _grow(X32, np.arange(n_trees, dtype=np.int64), psi, height_limit(psi), int(seed) % (2**32), cap,
          *arrays.values())
    offsets = np.arange(n_trees + 1, dtype=np.int64) * cap
    return PackedForest(**arrays, tree_offset=offsets, max_samples=psi, n_features=X32.shape[1])


def grow_in_place(forest: PackedForest, X32: np.ndarray, slots: np.ndarray, seed: int) -> None:
    """Regrow trees ``slots`` of a slotted forest (slot = 2 psi - 1) on the rows of ``X32``, in place.

    The online hot path: no intermediate forest, no validation — ``X32`` must be C-contiguous float32, finite,
    with at least psi rows (the detector's window guarantees all three).
    """
    psi = forest.max_samples
    slots = np.asarray(slots, dtype=np.int64)
    _grow(X32, slots, psi, height_limit(psi), int(seed) % (2**32), 2 * psi - 1, forest.feature, forest.threshold,
          forest.left, forest.right, forest.nan_left, forest.leaf_value, forest.n_node_samples)
    forest._refresh_dense(slots)
