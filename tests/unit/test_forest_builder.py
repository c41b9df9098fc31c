"""The compiled builder: tree invariants, sampling, and statistical agreement with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from training.builder import _draw_rows, build_forest
from training.forest import ForestError, PackedForest, average_path_length, height_limit


def _blobs(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.r_[rng.normal(size=(n, 5)), rng.normal(size=(60, 5)) * 4 + 1]
    return X, np.r_[np.zeros(n), np.ones(60)]


def test_tree_invariants(seed: int) -> None:
    X, _ = _blobs(seed)
    psi = 200
    f = build_forest(X, n_trees=15, max_samples=psi, seed=seed)
    h = height_limit(psi)
    assert f.slot == 2 * psi - 1 and f.max_samples == psi and f.n_trees == 15
    for t in range(f.n_trees):
        root = int(f.tree_offset[t])
        stack = [(root, 0)]
        leaf_rows = 0
        while stack:
            k, depth = stack.pop()
            assert depth <= h
            if f.feature[k] < 0:
                assert f.leaf_value[k] == pytest.approx(depth + float(average_path_length(f.n_node_samples[k])))
                assert f.n_node_samples[k] == 1 or depth == h  # continuous data: only the height limit stops
                leaf_rows += int(f.n_node_samples[k])
            else:
                left, right = int(f.left[k]), int(f.right[k])
                assert f.n_node_samples[left] + f.n_node_samples[right] == f.n_node_samples[k]
                assert f.n_node_samples[left] > 0 and f.n_node_samples[right] > 0
                # NaN goes to the larger side, ties right (scikit-learn's missing_go_to_left)
                assert f.nan_left[k] == (f.n_node_samples[left] > f.n_node_samples[right])
                stack += [(left, depth + 1), (right, depth + 1)]
        assert f.n_node_samples[root] == psi == leaf_rows


def test_same_distribution_as_sklearn(seed: int) -> None:
    """Same algorithm, other random streams: mean scores and AUC agree within seed noise."""
    X, y = _blobs(seed)
    ours = [PackedForest.fit(X, n_trees=100, seed=seed + i).score(X) for i in range(3)]
    theirs = [-IsolationForest(random_state=seed + i).fit(X).score_samples(X) for i in range(3)]
    spread = np.std([s.mean() for s in theirs]) + 1e-3
    assert abs(np.mean([s.mean() for s in ours]) - np.mean([s.mean() for s in theirs])) < 3 * spread
    assert np.corrcoef(np.mean(ours, axis=0), np.mean(theirs, axis=0))[0, 1] > 0.98
    auc_ours = np.mean([roc_auc_score(y, s) for s in ours])
    auc_theirs = np.mean([roc_auc_score(y, s) for s in theirs])
    assert abs(auc_ours - auc_theirs) < 0.01


def test_seeded(seed: int) -> None:
    X, _ = _blobs(seed)
    a = build_forest(X, n_trees=5, max_samples=64, seed=1)
    b = build_forest(X, n_trees=5, max_samples=64, seed=1)
    c = build_forest(X, n_trees=5, max_samples=64, seed=2)
    np.testing.assert_array_equal(a.threshold, b.threshold)
    assert not np.array_equal(a.threshold, c.threshold)


def test_constant_features_are_never_split(seed: int) -> None:
    X, _ = _blobs(seed)
    X[:, 2] = 7.0
    f = build_forest(X, n_trees=10, max_samples=128, seed=seed)
    assert 2 not in set(f.feature[f.feature >= 0].tolist())
    flat = build_forest(np.ones((50, 3)), n_trees=4, max_samples=32, seed=seed)
    assert (flat.feature[flat.tree_offset[:-1]] == -1).all()  # one leaf per tree
    np.testing.assert_allclose(flat.score(np.ones((2, 3))), 0.5)  # 2 ** -(c(psi) / c(psi)), like sklearn


@pytest.mark.parametrize("n", [40, 100_000])  # partial Fisher-Yates, and redraw-duplicates
def test_row_sampling_is_distinct_and_uniform(n: int) -> None:
    psi = 32
    perm = np.arange(n) if n <= 16 * psi else np.empty(0, dtype=np.int64)
    out = np.empty(psi, dtype=np.int64)
    hits = np.zeros(n)
    draws = 4000 if n == 40 else 200
    for _ in range(draws):
        _draw_rows(n, psi, perm, out)
        assert len(np.unique(out)) == psi and out.min() >= 0 and out.max() < n
        hits[out] += 1
    if n == 40:  # each row is drawn with probability psi / n
        np.testing.assert_allclose(hits / draws, psi / n, atol=0.04)


def test_rejects_bad_input() -> None:
    with pytest.raises(ForestError, match="NaN or infinite"):
        build_forest(np.array([[1.0, np.nan], [2.0, 3.0], [0.0, 1.0]]))
    with pytest.raises(ForestError, match="at least 2 rows"):
        build_forest(np.ones((1, 3)))
    with pytest.raises(ForestError, match="max_samples >= 2"):
        build_forest(np.ones((10, 3)), max_samples=1)
