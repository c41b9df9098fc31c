"""Detector: the engine-facing contract (fit, score_batch, explain, save/load, feature checks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.detector import Detector, ScoredBatch
from training.forest import ForestError
from training.online import OnlineSettings

NAMES = ("a", "b", "c", "d")


def _stream(seed: int, n: int = 6000) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(NAMES)))


@pytest.fixture(params=["sklearn", "numba"])
def det(request: pytest.FixtureRequest, seed: int) -> Detector:
    return Detector.fit(_stream(seed)[:2000], NAMES, n_trees=30, contamination=0.02, seed=seed,
                        builder=request.param)


def test_score_batch_contract(det: Detector, seed: int) -> None:
    X = np.ascontiguousarray(_stream(seed + 1)[:1000])
    before = X.copy()
    version = det.version
    out = det.score_batch(X)
    assert isinstance(out, ScoredBatch)
    assert out.score.dtype == np.float64 and out.threshold.dtype == np.float64 and out.is_anomaly.dtype == bool
    assert out.score.shape == out.threshold.shape == out.is_anomaly.shape == (1000,)
    assert ((out.score > 0) & (out.score <= 1)).all()
    np.testing.assert_array_equal(out.is_anomaly, out.score > out.threshold)
    assert out.model_version == version  # scored by the model as it was
    np.testing.assert_array_equal(X, before)  # input not mutated
    assert det.feature_names == NAMES
    assert 0.001 < out.is_anomaly.mean() < 0.08


def test_prequential_scores_with_the_model_as_it_was(seed: int) -> None:
    X = _stream(seed)
    det = Detector.fit(X[:2000], NAMES, n_trees=20, seed=seed, online=OnlineSettings(replace_fraction=0.5))
    batch = X[2000:3000]
    expected = det.score(batch)
    out = det.score_batch(batch)
    np.testing.assert_array_equal(out.score, expected)
    assert out.trees_renewed == 10 and det.version == f"{det.base_version}+u1" != out.model_version


def test_offline_detector_does_not_change_trees(seed: int) -> None:
    X = _stream(seed)
    det = Detector.fit(X[:2000], NAMES, n_trees=20, seed=seed, online=None)
    first = det.score(X[:50])
    for i in range(2000, 6000, 1000):
        assert det.score_batch(X[i:i + 1000]).trees_renewed == 0
    np.testing.assert_array_equal(det.score(X[:50]), first)
    assert "+u" not in det.version


def test_feature_count_and_names_are_checked(det: Detector) -> None:
    with pytest.raises(ForestError, match=r"expects 4 features \['a', 'b', 'c', 'd'\]"):
        det.score_batch(np.zeros((3, 5)))
    with pytest.raises(ForestError, match="missing \\['d'\\]"):
        det.score_batch(pd.DataFrame(np.zeros((3, 3)), columns=["a", "b", "c"]))
    with pytest.raises(ForestError, match="in that order"):
        det.score_batch(pd.DataFrame(np.zeros((3, 4)), columns=["b", "a", "c", "d"]))
    frame = pd.DataFrame(np.zeros((3, 4)), columns=list(NAMES))
    np.testing.assert_array_equal(det.score_batch(frame).score, det.score(np.zeros((3, 4))))


def test_nan_rows_are_scored_and_kept_out_of_the_window(seed: int) -> None:
    X = _stream(seed)
    det = Detector.fit(X[:2000], NAMES, n_trees=20, seed=seed)
    filled = len(det.window)
    batch = X[2000:2100].copy()
    batch[:, 1] = np.nan
    out = det.score_batch(batch)
    assert np.isfinite(out.score).all()
    assert len(det.window) == filled  # nothing added: every row had a NaN


def test_empty_batch(det: Detector) -> None:
    out = det.score_batch(np.zeros((0, 4)))
    assert out.score.shape == (0,) and out.model_version == det.version


def test_fit_parameter_limits(seed: int) -> None:
    X = _stream(seed)[:100]
    with pytest.raises(ForestError, match="contamination must be in"):
        Detector.fit(X, NAMES, contamination=0.7)
    with pytest.raises(ForestError, match="n_trees must be"):
        Detector.fit(X, NAMES, n_trees=0)
    with pytest.raises(ForestError, match="at least 2 rows without NaN"):
        Detector.fit(np.full((10, 4), np.nan), NAMES)
    with pytest.raises(ForestError, match=r"expects 3 features \['a', 'b', 'c'\], got an array of shape \(100, 4\)"):
        Detector.fit(X, NAMES[:3])
    with pytest.raises(ForestError, match="names are"):
        Detector.fit(X, ("a", "a", "b", "c"))


def test_fixed_threshold(seed: int) -> None:
    det = Detector.fit(_stream(seed)[:2000], NAMES, n_trees=20, fixed_threshold=0.6, seed=seed)
    out = det.score_batch(_stream(seed + 1)[:500])
    assert det.threshold == 0.6 and (out.threshold == 0.6).all()


def test_explain_points_at_the_odd_feature(det: Detector) -> None:
    X = np.zeros((2, 4))
    X[0, 2] = 9.0
    X[1, 0] = -9.0
    a = det.explain(X)
    assert a.shape == (2, 4)
    assert a[0].argmax() == 2 and a[1].argmax() == 0
    np.testing.assert_allclose(a.sum(axis=1), 1.0)


def test_save_load_round_trip_continues_identically(tmp_path, seed: int) -> None:
    X = _stream(seed)
    det = Detector.fit(X[:2000], NAMES, n_trees=20, seed=seed, online=OnlineSettings(replace_fraction=0.1))
    det.score_batch(X[2000:3000])
    path = det.save(tmp_path / det.version)
    loaded = Detector.load(path)
    assert loaded.version == det.version and loaded.feature_names == NAMES
    assert loaded.threshold == det.threshold
    a, b = det.score_batch(X[3000:4000]), loaded.score_batch(X[3000:4000])
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.threshold, b.threshold)
    assert a.model_version == b.model_version
    # the window came back too, so both grow the same trees next
    np.testing.assert_array_equal(det.score(X[:200]), loaded.score(X[:200]))


def test_scoring_backend_switch(seed: int) -> None:
    from training.gpu import BackendUnavailable, gpu_unavailable_reason

    X = _stream(seed)
    det = Detector.fit(X[:2000], NAMES, n_trees=10, seed=seed, online=OnlineSettings(replace_fraction=0.3))
    ref = Detector.fit(X[:2000], NAMES, n_trees=10, seed=seed, online=OnlineSettings(replace_fraction=0.3))
    try:
        det.use_backend("nvforest-cpu")
    except BackendUnavailable as err:
        pytest.skip(str(err))
    for lo in (2000, 3000):  # the backend follows the renewed trees
        a, b = det.score_batch(X[lo:lo + 1000]), ref.score_batch(X[lo:lo + 1000])
        np.testing.assert_allclose(a.score, b.score, rtol=0, atol=5e-8)
    if gpu_unavailable_reason() is not None:
        with pytest.raises(BackendUnavailable, match="backend 'cupy': no"):
            det.use_backend("cupy")
