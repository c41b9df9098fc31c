"""``hull_extended`` (a compiled pass) against its NumPy definition: bit for bit inside the box, to 1e-13 outside."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from training.detector import hull_extended
from training.forest import ForestError


def _numpy_hull(scores: np.ndarray, X: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The definition (the NumPy form the kernel replaced)."""
    width = np.maximum(hi - lo, 1e-12)
    with np.errstate(invalid="ignore", over="ignore"):
        over = np.maximum(X - hi, lo - X) / width
        e = np.nanmax(np.where(over > 0, over, 0.0), axis=1) if X.shape[1] else np.zeros(len(X))
        return np.where(e > 0, scores ** np.exp(-e), scores)


values = st.one_of(st.floats(-50, 50), st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e300]))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(0, 40), d=st.integers(0, 6), f32=st.booleans(), fortran=st.booleans())
def test_matches_the_numpy_definition(data: st.DataObject, n: int, d: int, f32: bool, fortran: bool) -> None:
    X = data.draw(hnp.arrays(np.float64, (n, d), elements=values))
    with np.errstate(over="ignore"):  # 1e300 -> inf in float32
        X = X.astype(np.float32) if f32 else X
    X = np.asfortranarray(X) if fortran else X
    lo = data.draw(hnp.arrays(np.float64, d, elements=st.floats(-10, 10)))
    hi = lo + data.draw(hnp.arrays(np.float64, d, elements=st.sampled_from([0.0, 1e-15, 0.5, 4.0])))
    scores = data.draw(hnp.arrays(np.float64, n, elements=st.floats(0.01, 1.0)))
    got, want = hull_extended(scores, X, lo, hi), _numpy_hull(scores, X, lo, hi)
    assert got.dtype == np.float64
    # rows inside keep their score bit for bit; outside, exp and ** come from LLVM's libm in the kernel and from
    # NumPy's own SIMD routines here, which may round the last bit apart, and ** scales exp's last-bit difference
    # by |e ln s|, so no count of ULPs bounds it (found: 1 ULP for 47.5 outside [0, 4], 3 ULP for 4.5 outside
    # [0, 0]); a relative 1e-13 is still a hundred million times tighter than any wrong formula
    inside = want == scores
    assert np.array_equal(got[inside].view(np.uint64), want[inside].view(np.uint64))
    np.testing.assert_allclose(got[~inside], want[~inside], rtol=1e-13, atol=0.0)


def test_rows_inside_keep_their_scores_and_nan_is_inside(seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(1_000, 3))
    X[::10, 1] = np.nan
    scores = rng.uniform(0.3, 0.7, 1_000)
    assert hull_extended(scores, X, np.zeros(3), np.ones(3)) is scores  # nothing outside: no new array
    X[5, 2] = 4.0  # three box-widths out
    out = hull_extended(scores, X, np.zeros(3), np.ones(3))
    assert out[5] == scores[5] ** np.exp(-3.0) and np.array_equal(np.delete(out, 5), np.delete(scores, 5))


def test_shapes_are_checked() -> None:
    with pytest.raises(ForestError, match="hull_extended"):
        hull_extended(np.ones(3), np.ones((3, 2)), np.zeros(3), np.ones(3))
    with pytest.raises(ForestError, match="hull_extended"):
        hull_extended(np.ones(2), np.ones((3, 2)), np.zeros(2), np.ones(2))
