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


def test_save_load_round_trip_with_the_new_settings(tmp_path, seed: int) -> None:
    X = _stream(seed)
    settings = OnlineSettings(replace_fraction=0.1, memory_fraction=0.3, learn_flagged=True,
                              threshold_protect=False, drift_confirm=1500, catch_up=False)
    det = Detector.fit(X[:2000], NAMES, n_trees=20, seed=seed, online=settings)
    det.score_batch(X[2000:3000])
    det.score_batch(X[3000:3500] + 5.0)  # a storm in progress (not yet confirmed) travels too
    loaded = Detector.load(det.save(tmp_path / det.version))
    assert loaded.online == settings and loaded.thresholder.protect is False
    np.testing.assert_array_equal(loaded.memory.data(), det.memory.data())
    assert loaded.memory.seen == det.memory.seen and loaded.storm_events == det.storm_events
    for lo in (3500, 4500):  # same reservoir draws, trees and threshold from here on
        a, b = det.score_batch(X[lo:lo + 1000]), loaded.score_batch(X[lo:lo + 1000])
        np.testing.assert_array_equal(a.score, b.score)
        np.testing.assert_array_equal(a.threshold, b.threshold)
        np.testing.assert_array_equal(loaded.memory.data(), det.memory.data())


def test_a_version_saved_before_memory_and_protection_loads(tmp_path, seed: int) -> None:
    from training.registry import load_version, save_version

    X = _stream(seed)
    det = Detector.fit(X[:2000], NAMES, n_trees=20, seed=seed, online=OnlineSettings(replace_fraction=0.1))
    det.score_batch(X[2000:3000])
    arrays, meta = load_version(det.save(tmp_path / "new"))
    new_keys = ("memory_fraction", "catch_up", "learn_flagged", "threshold_protect", "drift_confirm")
    meta["online"] = {k: v for k, v in meta["online"].items() if k not in new_keys}
    meta["threshold"] = {k: v for k, v in meta["threshold"].items() if k != "protect"}
    for key in ("memory_seen", "memory_rng", "storm_events", "sha256", "format"):
        meta.pop(key, None)
    old_arrays = {k: v for k, v in arrays.items() if k not in ("memory.rows", "storm.rows")}
    old = Detector.load(save_version(tmp_path / "old", old_arrays, meta))
    assert old.online == OnlineSettings(replace_fraction=0.1)  # missing settings take their defaults
    assert old.thresholder.protect is True
    # the old window stands in for the memory it did not have
    np.testing.assert_array_equal(old.memory.data(), det.window.data())
    assert old.storm_events == 0
    np.testing.assert_array_equal(old.score(X[:300]), det.score(X[:300]))
    old.score_batch(X[3000:4000])  # and it learns on


def test_flagged_rows_are_not_learnt(seed: int) -> None:
    rng = np.random.default_rng(seed)
    det = Detector.fit(rng.normal(size=(2000, 4)), NAMES, n_trees=30, contamination=0.01, seed=seed)
    X = rng.normal(size=(1000, 4))
    X[:8] += 40.0  # far out: flagged, but too few for a storm
    out = det.score_batch(X)
    assert out.is_anomaly[:8].all() and not out.drift
    for rows in (det.window.data(), det.memory.data()):
        assert np.abs(rows).max() < 20.0
    # the coordinator's path: rows scored elsewhere, judged against this threshold
    Y = rng.normal(size=(500, 4))
    Y[:5] += 40.0
    det.learn(Y, det.score(Y), n_flagged=5)
    assert np.abs(det.window.data()).max() < 20.0 and np.abs(det.memory.data()).max() < 20.0
    keen = Detector.fit(rng.normal(size=(2000, 4)), NAMES, n_trees=30, seed=seed,
                        online=OnlineSettings(learn_flagged=True))
    keen.score_batch(X)
    assert np.abs(keen.window.data()).max() > 20.0  # the setting is what keeps them out


def test_learn_ignores_a_flag_count_of_a_larger_batch(seed: int) -> None:
    """A scorer's sample with the alert count of its whole batch must not read as an alert storm."""
    rng = np.random.default_rng(seed)
    det = Detector.fit(rng.normal(size=(2000, 4)), NAMES, n_trees=30, contamination=0.01, seed=seed)
    for _ in range(15):
        Y = rng.normal(size=(300, 4))
        fired, _ = det.learn(Y, det.score(Y), n_flagged=2_000)
        assert not fired


def test_hull_extension_ranks_a_far_outlier_above_a_near_one_and_round_trips(tmp_path) -> None:
    """Past the fitted box a forest alone saturates; with the hull, farther scores higher, inside is unchanged."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2_000, 2))
    det = Detector.fit(X, ["a", "b"], n_trees=50, online=None)
    plain = Detector.fit(X, ["a", "b"], n_trees=50, online=None, hull=False)
    probe = np.array([[0.0, 0.0], [5.0, 0.0], [50.0, 0.0]])
    s, p = det.score(probe), plain.score(probe)
    assert s[0] == p[0] and p[2] == pytest.approx(p[1], abs=0.02)  # the forest cannot tell 5 from 50 ...
    assert s[2] > s[1] + 0.1  # ... the hull-extended score can
    det.save(tmp_path / "v")
    np.testing.assert_array_equal(Detector.load(tmp_path / "v").score(probe), s)
