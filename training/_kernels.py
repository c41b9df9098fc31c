"""numba kernels that score rows against a packed forest.

Two layouts are scored here:

* the *packed* layout (:class:`training.forest.PackedForest`): explicit child indices, any tree shape;
  :func:`path_length_sum` walks it with one data-dependent branch per node;
* the *dense* layout built by :func:`densify`: every tree padded to a complete binary tree of height ``h``
  (node ``k``'s children are ``2k + 1`` and ``2k + 2``; a leaf above the last level is copied to every
  bottom slot under it, so any route through the padding reaches the same value). A row then takes exactly
  ``h`` branch-free steps per tree and no child index is loaded. :func:`dense_path_sum` walks eight rows at a
  time so the CPU overlaps eight independent chains of loads, and scores a block of rows tree by tree so the
  tree being walked stays in L1 cache.

Both give bit-identical sums: the same leaf values added in the same (tree) order. Thresholds of the dense
layout are float32: a float32 ``x`` satisfies ``x <= t`` for a float64 ``t`` exactly when ``x <= t32`` with
``t32`` the largest float32 not above ``t`` (see :func:`float32_floor`), so routing is unchanged.

NaN: scikit-learn sends a missing value to the child its split learned (``missing_go_to_left``; with no NaN
in training that is the child that received more samples). The dense kernel checks each block of rows once
and walks a block that holds a NaN with the NaN-aware loop, so clean data pays nothing for it.
"""

from __future__ import annotations

import numba
import numpy as np

#: rows per block of :func:`dense_path_sum`: the block's rows and one tree fit in L1 (measured, 64..1024 flat)
BLOCK = 256
#: the deepest tree the dense layout takes (2**14 leaves a tree); deeper forests use the packed kernel
MAX_DENSE_HEIGHT = 14


def float32_floor(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 threshold (exact float32 routing, see the module doc)."""
    thr = threshold.astype(np.float32)
    up = thr.astype(np.float64) > threshold
    thr[up] = np.nextafter(thr[up], np.float32(-np.inf))
    return thr


@numba.njit(parallel=True, cache=True, nogil=True)
def path_length_sum(X, feature, threshold, left, right, nan_left, leaf_value, roots):  # pragma: no cover
    """Sum over trees of the leaf value (edges from the root + c(leaf size)) for each row of float32 ``X``."""
    n = X.shape[0]
    out = np.zeros(n)
    n_trees = roots.shape[0]
    for i in numba.prange(n):
        total = 0.0
        for t in range(n_trees):
            node = roots[t]
            while feature[node] >= 0:
                x = X[i, feature[node]]
                if x <= threshold[node] or (np.isnan(x) and nan_left[node]):
                    node = left[node]
                else:
                    node = right[node]
            total += leaf_value[node]
        out[i] = total
    return out


@numba.njit(cache=True, nogil=True)
def densify(feature, thr32, nan_left, left, right, leaf_value, tree_offset, trees, height,
            dfeat, dthr, dnan, dleaf):  # pragma: no cover - compiled
    """Write trees ``trees`` of the packed forest into the dense arrays (in place; see the module doc)."""
    n_int = (1 << height) - 1
    stack_k = np.empty(2 * height + 2, dtype=np.int64)
    stack_p = np.empty(2 * height + 2, dtype=np.int64)
    stack_d = np.empty(2 * height + 2, dtype=np.int64)
    for t in trees:
        dfeat[t, :] = 0
        dthr[t, :] = 0.0
        dnan[t, :] = 0
        stack_k[0] = tree_offset[t]
        stack_p[0] = 0
        stack_d[0] = 0
        top = 1
        while top > 0:
            top -= 1
            k = stack_k[top]
            p = stack_p[top]
            d = stack_d[top]
            if feature[k] >= 0:
                dfeat[t, p] = feature[k]
                dthr[t, p] = thr32[k]
                dnan[t, p] = nan_left[k]
                stack_k[top], stack_p[top], stack_d[top] = left[k], 2 * p + 1, d + 1
                stack_k[top + 1], stack_p[top + 1], stack_d[top + 1] = right[k], 2 * p + 2, d + 1
                top += 2
            else:
                # every bottom slot under p: whichever way the padding routes a row, it lands on this value
                span = 1 << (height - d)
                first = (p + 1) * span - 1 - n_int
                dleaf[t, first:first + span] = leaf_value[k]


@numba.njit(cache=True, nogil=True, inline="always")
def _step(xb, row, fsc, thr, k, one):  # pragma: no cover - compiled
    # unsigned indices: numba then emits no negative-index wraparound code in the innermost loop; the value is
    # xb[feature * block + row], the feature already scaled, so one load and an addressing mode find it
    return k + k + one + np.uint64(not (xb[row + np.uint64(fsc[k])] <= thr[k]))


@numba.njit(cache=True, nogil=True)
def _nan_walk(xb, row, fsc, thr, nan, height):  # pragma: no cover - compiled
    k = 0
    for _ in range(height):
        v = xb[row + fsc[k]]
        if v <= thr[k] or (np.isnan(v) and nan[k]):
            k = 2 * k + 1
        else:
            k = 2 * k + 2
    return k


@numba.njit(parallel=True, cache=True, nogil=True)
def dense_path_sum(X, dfeat, dthr, dnan, dleaf, height, block):  # pragma: no cover - compiled
    """Sum over trees of the leaf value for each row of ``X`` (float32, or float64 compared as float32) on the
    dense layout.

    Each block of rows is copied, feature-major, into a float32 buffer as it is scored: row ``j``'s feature
    ``f`` is at ``f * block + j``. A float64 matrix then needs no float32 copy of its own (for 1M x 7 rows,
    28 MB written and read back, and its page faults), the copy is where the block is checked for NaN, and with
    each tree's features scaled by ``block`` the eight walks share one base address (no register spills: ~20 %
    faster than walking row views). ``np.float32(x)`` rounds as ``astype`` does; beyond float32 it is +-inf.
    """
    n, d = X.shape
    n_trees = dfeat.shape[0]
    n_int = np.uint64(dfeat.shape[1])
    one = np.uint64(1)
    out = np.zeros(n)
    n_blocks = (n + block - 1) // block
    for b in numba.prange(n_blocks):
        lo = b * block
        m = min(lo + block, n) - lo
        acc = np.zeros(m)
        xb = np.empty(d * block, dtype=np.float32)
        fsc = np.empty(dfeat.shape[1], dtype=np.int64)
        has_nan = False
        for j in range(m):
            for f in range(d):
                v = np.float32(X[lo + j, f])
                xb[f * block + j] = v
                if np.isnan(v):
                    has_nan = True
        n_groups = m // 8
        for t in range(n_trees):
            ft = dfeat[t]
            for q in range(ft.shape[0]):
                fsc[q] = ft[q] * block
            th = dthr[t]
            lv = dleaf[t]
            if has_nan:
                for j in range(m):
                    acc[j] += lv[_nan_walk(xb, j, fsc, th, dnan[t], height) - n_int]
                continue
            for g in range(n_groups):
                r = np.uint64(8 * g)
                # eight independent walks, written out so they stay in registers
                k0 = k1 = k2 = k3 = k4 = k5 = k6 = k7 = np.uint64(0)
                for _ in range(height):
                    k0 = _step(xb, r, fsc, th, k0, one)
                    k1 = _step(xb, r + np.uint64(1), fsc, th, k1, one)
                    k2 = _step(xb, r + np.uint64(2), fsc, th, k2, one)
                    k3 = _step(xb, r + np.uint64(3), fsc, th, k3, one)
                    k4 = _step(xb, r + np.uint64(4), fsc, th, k4, one)
                    k5 = _step(xb, r + np.uint64(5), fsc, th, k5, one)
                    k6 = _step(xb, r + np.uint64(6), fsc, th, k6, one)
                    k7 = _step(xb, r + np.uint64(7), fsc, th, k7, one)
                a = 8 * g
                acc[a] += lv[k0 - n_int]
                acc[a + 1] += lv[k1 - n_int]
                acc[a + 2] += lv[k2 - n_int]
                acc[a + 3] += lv[k3 - n_int]
                acc[a + 4] += lv[k4 - n_int]
                acc[a + 5] += lv[k5 - n_int]
                acc[a + 6] += lv[k6 - n_int]
                acc[a + 7] += lv[k7 - n_int]
            for j in range(8 * n_groups, m):
                k = np.uint64(0)
                for _ in range(height):
                    k = _step(xb, np.uint64(j), fsc, th, k, one)
                acc[j] += lv[k - n_int]
        for j in range(m):
            out[lo + j] = acc[j]
    return out


@numba.njit(cache=True)
def tree_depths(feature, left, right, tree_offset):  # pragma: no cover - compiled
    """Maximum depth (edges from the root) of each tree."""
    n_trees = tree_offset.shape[0] - 1
    out = np.zeros(n_trees, dtype=np.int32)
    depth = np.zeros(feature.shape[0], dtype=np.int32)
    stack = np.empty(feature.shape[0] + 1, dtype=np.int64)
    for t in range(n_trees):
        stack[0] = tree_offset[t]
        depth[tree_offset[t]] = 0
        top = 1
        best = 0
        while top > 0:  # explicit walk: no assumption on the order nodes are stored in
            top -= 1
            k = stack[top]
            if feature[k] >= 0:
                depth[left[k]] = depth[k] + 1
                depth[right[k]] = depth[k] + 1
                stack[top] = left[k]
                stack[top + 1] = right[k]
                top += 2
            elif depth[k] > best:
                best = depth[k]
        out[t] = best
    return out


def dense_path_sum_serial(X, dfeat, dthr, dnan, dleaf, height, block):
    """:func:`dense_path_sum` on the calling thread only, for small batches.

    A parallel region costs little on idle cores, but on busy shared cores one descheduled worker stalls the
    whole call for a scheduler tick (measured: 1,000 rows 0.5 ms parallel vs 16 ms when another process holds
    the second core). The thread mask is per calling thread, so concurrent callers are unaffected. (A second
    ``njit`` of the same Python function would share its on-disk cache entry with the parallel one, whichever
    compiled first serving both: the parallel kernel then silently ran on one thread.)
    """
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return dense_path_sum(X, dfeat, dthr, dnan, dleaf, height, block)
    finally:
        numba.set_num_threads(previous)


#: batches with fewer rows than this are scored on the calling thread
PARALLEL_MIN_ROWS = 4096


@numba.njit(cache=True, nogil=True)
def hull_extend(scores, X, lo, hi):  # pragma: no cover - compiled
    """``training.detector.hull_extended`` in one pass over the rows: (new scores, whether any row was outside).

    The same arithmetic as its NumPy form, element by element: ``over = max(x - hi, lo - x) / width`` (NaN: no
    distance), ``e`` the largest positive ``over`` of the row, and ``s ** exp(-e)`` where ``e > 0``.
    """
    n, d = X.shape
    width = np.empty(d)
    for f in range(d):
        w = hi[f] - lo[f]
        width[f] = w if (w >= 1e-12 or w != w) else 1e-12  # np.maximum: NaN propagates
    out = np.empty(n)
    outside = False
    for i in range(n):
        e = 0.0
        for f in range(d):
            x = X[i, f]
            a = x - hi[f]
            b = lo[f] - x
            if a != a or b != b:  # a NaN value counts as inside
                continue
            m = a if a >= b else b
            if m > 0.0:  # over > 0 exactly when m > 0 (width > 0): inside rows need no division
                over = m / width[f]
                if over > e:
                    e = over
        if e > 0.0:
            out[i] = scores[i] ** np.exp(-e)
            outside = True
        else:
            out[i] = scores[i]
    return out, outside
