"""numba kernels over the packed forest: scoring and path attributions.

Compiled by hand because the packed layout lets one pass over rows walk every tree without Python per row
or per tree, parallel over rows; scikit-learn calls ``tree.apply`` once per tree and sums in NumPy.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, nogil=True)
def path_length_sum(X, feature, threshold, left, right, nan_left, leaf_value, roots):  # pragma: no cover
    """Sum over trees of (edges to the leaf + c(leaf size)) for each row of float32 ``X``."""
    n = X.shape[0]
    out = np.zeros(n)
    n_trees = roots.shape[0]
    for i in numba.prange(n):
        total = 0.0
        for t in range(n_trees):
            node = roots[t]
            while feature[node] >= 0:
                x = X[i, feature[node]]
                if x <= threshold[node]:
                    node = left[node]
                elif np.isnan(x) and nan_left[node]:
                    node = left[node]
                else:
                    node = right[node]
            total += leaf_value[node]
        out[i] = total
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def path_attributions(X, feature, threshold, left, right, nan_left, roots, n_features):  # pragma: no cover
    """Per row and feature: sum over trees of 1/depth for each split on that feature along the row's path.

    Splits near the root weigh most: a feature that isolates a point early is what made it anomalous
    (the depth weighting of DIFFI, Carletti et al. 2023, without its in-bag normalisation).
    """
    n = X.shape[0]
    out = np.zeros((n, n_features))
    n_trees = roots.shape[0]
    for i in numba.prange(n):
        for t in range(n_trees):
            node = roots[t]
            depth = 1.0
            while feature[node] >= 0:
                f = feature[node]
                out[i, f] += 1.0 / depth
                x = X[i, f]
                if x <= threshold[node] or (np.isnan(x) and nan_left[node]):
                    node = left[node]
                else:
                    node = right[node]
                depth += 1.0
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def lockstep_path_sum(X, code, thr, leaf_value, roots, depth, block):  # pragma: no cover - compiled
    """Branch-free variant of :func:`path_length_sum` for rows without NaN.

    A block of rows walks each tree level by level in lock step: the ``block`` walks are independent, so the
    CPU overlaps their memory loads instead of stalling on one mispredicted branch after another.
    ``code[k]`` packs the split feature (low 8 bits) and the right child's offset from ``k`` (the left child
    is ``k + 1``: trees are stored depth-first); leaves loop on themselves (offset 0, threshold -inf).
    """
    n = X.shape[0]
    out = np.zeros(n)
    n_blocks = (n + block - 1) // block
    n_trees = roots.shape[0]
    for b in numba.prange(n_blocks):
        lo = b * block
        m = min(lo + block, n) - lo
        nodes = np.empty(block, dtype=np.int32)
        acc = np.zeros(block)
        for t in range(n_trees):
            root = roots[t]
            for j in range(m):
                nodes[j] = root
            for _ in range(depth[t]):
                for j in range(m):
                    k = nodes[j]
                    c = code[k]
                    go_right = not (X[lo + j, c & 255] <= thr[k])
                    nodes[j] = k + 1 + go_right * ((c >> 8) - 1)
            for j in range(m):
                acc[j] += leaf_value[nodes[j]]
        for j in range(m):
            out[lo + j] = acc[j]
    return out


@numba.njit(cache=True)
def tree_depths(feature, left, right, tree_offset):  # pragma: no cover - compiled
    """Maximum depth (edges) of each tree."""
    n_trees = tree_offset.shape[0] - 1
    out = np.zeros(n_trees, dtype=np.int32)
    depth = np.zeros(feature.shape[0], dtype=np.int32)
    for t in range(n_trees):
        a = tree_offset[t]
        depth[a] = 0
        best = 0
        for k in range(a, tree_offset[t + 1]):  # depth-first order: parents come before children
            if feature[k] >= 0:
                depth[left[k]] = depth[k] + 1
                depth[right[k]] = depth[k] + 1
            elif depth[k] > best:
                best = depth[k]
        out[t] = best
    return out
