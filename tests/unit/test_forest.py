"""PackedForest: exact parity with scikit-learn's IsolationForest, both kernels, tree replacement, validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from training import _kernels as K
from training.forest import ForestError, PackedForest, average_path_length, height_limit


def _data(seed: int, n: int = 2000, d: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[: n // 20] *= 6  # some outliers
    return X


def _queries(seed: int, d: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    Y = rng.normal(size=(3001, d)) * 3  # not a multiple of the kernel's 8-row groups or 256-row blocks
    Y[5] = 0.0
    Y[7, 0] = np.inf
    Y[8, 1] = -np.inf
    Y[9, 2] = 1e300  # beyond float32: becomes inf, as in scikit-learn
    return Y


def _sk(model: IsolationForest, Y: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # scikit-learn warns when 1e300 becomes float32 inf; we do not
        return model.score_samples(Y)


@pytest.mark.parametrize("params", [
    {},
    {"max_samples": 64},
    {"max_samples": 0.3, "n_estimators": 37},
    {"max_features": 0.5, "n_estimators": 30},
    {"bootstrap": True, "n_estimators": 30},
    {"max_samples": 3, "n_estimators": 10},
])
def test_scores_equal_sklearn(seed: int, params: dict) -> None:
    X = _data(seed)
    model = IsolationForest(random_state=seed, **params).fit(X)
    forest = PackedForest.from_sklearn(model)
    Y = _queries(seed)
    np.testing.assert_allclose(forest.score_samples(Y), _sk(model, Y), rtol=0, atol=1e-9)
    np.testing.assert_allclose(forest.score(Y), -_sk(model, Y), rtol=0, atol=1e-9)
    assert forest.n_trees == len(model.estimators_)
    assert forest.max_samples == model.max_samples_


def test_nan_follows_sklearn(seed: int) -> None:
    """With no NaN in training a NaN goes to the larger child; with NaN in training, the learned side."""
    X = _data(seed)
    Y = _queries(seed)
    Y[::3, 1] = np.nan
    Y[::5] = np.nan
    for train in (X, np.where(np.random.default_rng(seed).random(X.shape) < 0.05, np.nan, X)):
        model = IsolationForest(n_estimators=40, random_state=seed).fit(train)
        forest = PackedForest.from_sklearn(model)
        np.testing.assert_allclose(forest.score_samples(Y), _sk(model, Y), rtol=0, atol=1e-9)


def test_dense_and_packed_kernels_agree_bitwise(seed: int) -> None:
    forest = PackedForest.from_sklearn(IsolationForest(n_estimators=25, random_state=seed).fit(_data(seed)))
    with np.errstate(over="ignore"):
        Y = np.ascontiguousarray(_queries(seed), dtype=np.float32)
    Y[11:40, 3] = np.nan  # one block takes the NaN-aware walk
    packed = K.path_length_sum(Y, forest.feature, forest.threshold, forest.left, forest.right, forest.nan_left,
                               forest.leaf_value, forest.tree_offset[:-1])
    assert forest._dense is not None
    np.testing.assert_array_equal(forest.path_length_sum(Y), packed)


def test_float32_floor_is_exact_routing() -> None:
    rng = np.random.default_rng(3)
    t64 = rng.normal(size=10_000) * 10.0 ** rng.integers(-30, 30, size=10_000)
    t32 = K.float32_floor(t64)
    x = np.concatenate([t32, np.nextafter(t32, np.float32(np.inf))]).astype(np.float32)
    tt = np.concatenate([t64, t64])
    np.testing.assert_array_equal(x.astype(np.float64) <= tt, x <= np.concatenate([t32, t32]))


def test_empty_and_single_row(seed: int) -> None:
    model = IsolationForest(n_estimators=10, random_state=seed).fit(_data(seed))
    forest = PackedForest.from_sklearn(model)
    assert forest.score(np.zeros((0, 6))).shape == (0,)
    one = np.ones((1, 6))
    np.testing.assert_allclose(forest.score_samples(one), _sk(model, one), atol=1e-12)


def test_wrong_shape_is_a_clear_error(seed: int) -> None:
    forest = PackedForest.fit(_data(seed), n_trees=5, max_samples=32, seed=seed)
    with pytest.raises(ForestError, match="6 features"):
        forest.score(np.zeros((3, 5)))
    with pytest.raises(ForestError, match="not a fitted sklearn IsolationForest"):
        PackedForest.from_sklearn(IsolationForest())


def test_replace_and_overwrite_trees(seed: int) -> None:
    X = _data(seed)
    a = PackedForest.fit(X, n_trees=12, max_samples=128, seed=1)
    b = PackedForest.fit(X[::-1] * 1.5, n_trees=3, max_samples=128, seed=2)
    Y = _queries(seed)
    before = a.score(Y)
    replaced = a.replace_trees([0, 5, 11], b)
    np.testing.assert_array_equal(a.score(Y), before)  # replace_trees leaves the original alone
    trees = a.trees()
    for i, t in zip([0, 5, 11], b.trees(), strict=True):
        trees[i] = t
    expect = PackedForest.from_trees(trees, max_samples=128, n_features=6).score(Y)
    np.testing.assert_allclose(replaced.score(Y), expect, rtol=0, atol=0)
    a.overwrite_trees(np.array([0, 5, 11]), b)  # in place, dense copy refreshed for those trees only
    np.testing.assert_allclose(a.score(Y), expect, rtol=0, atol=0)
    fresh = PackedForest.from_arrays(a.arrays(), max_samples=128, n_features=6)
    np.testing.assert_allclose(fresh.score(Y), expect, rtol=0, atol=0)


def test_sklearn_forest_can_be_slotted_and_adapted(seed: int) -> None:
    X = _data(seed)
    model = IsolationForest(n_estimators=10, max_samples=128, random_state=seed).fit(X)
    forest = PackedForest.from_sklearn(model).slotted()
    Y = _queries(seed)
    np.testing.assert_allclose(forest.score_samples(Y), _sk(model, Y), atol=1e-9)
    new = PackedForest.fit(X, n_trees=2, max_samples=128, seed=5)
    forest.overwrite_trees(np.array([3, 4]), new)
    assert np.isfinite(forest.score(Y)).all()


def test_replace_rejects_mismatch(seed: int) -> None:
    X = _data(seed)
    a = PackedForest.fit(X, n_trees=4, max_samples=64, seed=1)
    with pytest.raises(ForestError, match="2 slots but 1 new trees"):
        a.replace_trees([0, 1], PackedForest.fit(X, n_trees=1, max_samples=64))
    with pytest.raises(ForestError, match="max_samples"):
        a.replace_trees([0], PackedForest.fit(X, n_trees=1, max_samples=32))
    with pytest.raises(ForestError, match="out of range"):
        a.replace_trees([9], PackedForest.fit(X, n_trees=1, max_samples=64))


def test_damaged_arrays_are_rejected(seed: int) -> None:
    a = PackedForest.fit(_data(seed), n_trees=3, max_samples=32, seed=1)
    arrays = {k: v.copy() for k, v in a.arrays().items()}
    arrays["left"][0] = 10**6
    with pytest.raises(ForestError, match="out of range"):
        PackedForest.from_arrays(arrays, max_samples=32, n_features=6)
    arrays = a.arrays()
    del arrays["threshold"]
    with pytest.raises(ForestError, match="missing arrays"):
        PackedForest.from_arrays(arrays, max_samples=32, n_features=6)


def test_average_path_length_and_height() -> None:
    np.testing.assert_allclose(average_path_length(np.array([0, 1, 2, 256])),
                               [0.0, 0.0, 1.0, 2 * (np.log(255) + np.euler_gamma) - 2 * 255 / 256])
    assert [height_limit(p) for p in (1, 2, 3, 256, 257)] == [1, 1, 2, 8, 9]


def test_small_batches_on_the_caller_or_every_core_score_the_same(seed: int) -> None:
    """The thread choice changes where rows are walked, never the sum; the caller's thread count is restored."""
    import numba

    from training.gpu import make_scorer

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, 5))
    Y = rng.normal(size=(1000, 5)) * 2
    Y[::7, 1] = np.nan
    forest = PackedForest.fit(X, n_trees=50, max_samples=256, seed=seed)
    before = numba.get_num_threads()
    serial = forest.score(Y)  # 1,000 rows < PARALLEL_MIN_ROWS: the calling thread
    assert numba.get_num_threads() == before
    everywhere = forest.score(Y, parallel_min_rows=1)
    np.testing.assert_array_equal(serial, everywhere)
    np.testing.assert_array_equal(make_scorer(forest, "cpu-parallel").score(Y), serial)
    assert make_scorer(forest, "cpu-parallel").name == "cpu-parallel"


def test_serial_and_parallel_kernels_are_distinct_compilations() -> None:
    """Two ``njit`` of one Python function share a cache entry, so the first compiled served both."""
    assert not hasattr(K.dense_path_sum_serial, "py_func")
    assert K.dense_path_sum.targetoptions.get("parallel") is True
