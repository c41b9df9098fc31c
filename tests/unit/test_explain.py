"""Explanations: the compiled attribution equals a plain re-implementation and points at the odd feature."""

from __future__ import annotations

import numpy as np

from training.explain import attributions
from training.forest import PackedForest


def _reference(forest: PackedForest, x: np.ndarray) -> np.ndarray:
    """The definition in docs/model.md, one tree and one split at a time."""
    out = np.zeros(forest.n_features)
    x32 = x.astype(np.float32)
    for t in range(forest.n_trees):
        node, credit = int(forest.tree_offset[t]), np.zeros(forest.n_features)
        while forest.feature[node] >= 0:
            f = forest.feature[node]
            v = x32[f]
            go_left = v <= forest.threshold[node] or (np.isnan(v) and forest.nan_left[node])
            child = int(forest.left[node] if go_left else forest.right[node])
            credit[f] += 1 - forest.n_node_samples[child] / forest.n_node_samples[node]
            node = child
        out += credit / max(forest.leaf_value[node], 1.0)
    return out / out.sum()


def test_matches_reference_including_nan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    forest = PackedForest.fit(rng.normal(size=(1000, 5)), n_trees=15, max_samples=64, seed=seed)
    X = rng.normal(size=(20, 5)) * 3
    X[3, 1] = np.nan
    got = attributions(forest, X)
    for i in range(len(X)):
        np.testing.assert_allclose(got[i], _reference(forest, X[i]), rtol=1e-12, atol=1e-12)


def test_points_at_the_isolating_feature(seed: int) -> None:
    rng = np.random.default_rng(seed)
    forest = PackedForest.fit(rng.normal(size=(4000, 6)), n_trees=100, seed=seed)
    X = np.zeros((6, 6))
    for j in range(6):
        X[j, j] = 7.0 if j % 2 else -7.0
    a = attributions(forest, X)
    np.testing.assert_array_equal(a.argmax(axis=1), np.arange(6))
    assert (a[np.arange(6), np.arange(6)] > 0.4).all()
    np.testing.assert_allclose(a.sum(axis=1), 1.0)


def test_empty_input(seed: int) -> None:
    forest = PackedForest.fit(np.random.default_rng(seed).normal(size=(100, 2)), n_trees=3, max_samples=32)
    assert attributions(forest, np.zeros((0, 2))).shape == (0, 2)
