"""The dense kernel rounds float64 rows to float32 block by block: the same scores as a float32 copy first."""

from __future__ import annotations

import numpy as np
import pytest

from training import _kernels as K
from training.forest import ForestError, PackedForest


@pytest.fixture(scope="module")
def forest() -> PackedForest:
    X = np.random.default_rng(3).normal(size=(3_000, 4))
    return PackedForest.fit(X, n_trees=30, max_samples=128, seed=1)


def _rows(seed: int, n: int = 5_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * 2
    # values that float32 rounds (and ties), beyond its range, and NaN rows in some blocks only
    X[::17, 0] = 1.0 + 2.0**-30
    X[::19, 1] = 3e39
    X[::23, 2] = -3e39
    X[1_000:1_300:7, 3] = np.nan
    return X


@pytest.mark.parametrize("parallel_min_rows", [1, 10**9], ids=["parallel", "serial"])
def test_float64_rows_score_as_their_float32_copy(forest: PackedForest, seed: int, parallel_min_rows: int) -> None:
    X = _rows(seed)
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    want = forest.score(X32, parallel_min_rows=parallel_min_rows)
    for form in (X, np.asfortranarray(X), np.repeat(X, 2, axis=1)[:, ::2], X32):
        got = forest.score(form, parallel_min_rows=parallel_min_rows)
        np.testing.assert_array_equal(got, want)
    # the packed kernel (any tree shape) agrees
    np.testing.assert_array_equal(
        K.path_length_sum(X32, forest.feature, forest.threshold, forest.left, forest.right, forest.nan_left,
                          forest.leaf_value, forest.tree_offset[:-1]),
        forest.path_length_sum(X, parallel_min_rows=parallel_min_rows))


def test_integer_rows_and_bad_shapes(forest: PackedForest) -> None:
    ints = np.arange(40).reshape(10, 4) - 20
    np.testing.assert_array_equal(forest.score(ints), forest.score(ints.astype(np.float32)))
    with pytest.raises(ForestError, match="4 features"):
        forest.score(np.zeros((3, 5)))
    with pytest.raises(ForestError, match="4 features"):
        forest.score(np.zeros(4))
    assert forest.score(np.zeros((0, 4))).shape == (0,)
