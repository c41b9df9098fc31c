"""Other scorers of the same forest: Treelite export (GTIL) and nvForest's CPU mode, against sklearn and us."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from training.forest import PackedForest


def _nvforest():
    try:
        import nvforest
    except Exception as err:  # noqa: BLE001 - a broken CUDA stack surfaces as various errors
        pytest.skip(f"nvforest cannot be imported: {type(err).__name__}: {err}")
    return nvforest


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2000, 6))
    Y = rng.normal(size=(1500, 6)) * 3
    return X, Y


def test_nvforest_cpu_matches_sklearn(seed: int) -> None:
    """The route the issue names: ``load_from_sklearn(model, device="cpu")`` returns -score_samples."""
    nvforest = _nvforest()
    X, Y = _data(seed)
    model = IsolationForest(random_state=seed).fit(X)
    fm = nvforest.load_from_sklearn(model, device="cpu")
    got = np.asarray(fm.predict(Y.astype(np.float32)), dtype=np.float64).reshape(-1)
    np.testing.assert_allclose(got, -model.score_samples(Y), rtol=0, atol=1e-8)


@pytest.mark.parametrize("backend", ["treelite", "nvforest-cpu"])
def test_exported_forest_scores_like_ours_including_nan(seed: int, backend: str) -> None:
    """Any packed forest (here: grown by the compiled builder, then partly renewed) exports exactly."""
    X, Y = _data(seed)
    Y[::4, 2] = np.nan
    forest = PackedForest.fit(X, n_trees=40, max_samples=128, seed=seed)
    forest.overwrite_trees(np.array([3, 7]), PackedForest.fit(X * 2, n_trees=2, max_samples=128, seed=1))
    if backend == "treelite":
        pytest.importorskip("treelite", reason="treelite is not installed")
        from training.interop import to_treelite, treelite_score

        got = treelite_score(to_treelite(forest), Y)
    else:
        _nvforest()
        from training.gpu import make_scorer

        got = make_scorer(forest, "nvforest-cpu").score(Y)
    # Treelite keeps c(psi) as float32 (relative error <= 6e-8), which moves scores by up to ~3e-8
    np.testing.assert_allclose(got, forest.score(Y), rtol=0, atol=5e-8)


def test_cpu_backend_and_unknown_backend(seed: int) -> None:
    from training.gpu import make_scorer

    X, Y = _data(seed)
    forest = PackedForest.fit(X, n_trees=10, max_samples=64, seed=seed)
    np.testing.assert_array_equal(make_scorer(forest, "cpu").score(Y), forest.score(Y))
    with pytest.raises(ValueError, match="unknown scoring backend 'tpu'"):
        make_scorer(forest, "tpu")
