"""Online adaptation: settings, windows, tree renewal, drift detection, following a level shift."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.detector import Detector
from training.drift import DriftDetector
from training.forest import PackedForest
from training.online import OnlineError, OnlineSettings, RecentWindow, TreeRenewal


@pytest.mark.parametrize("kwargs", [{"window": 1}, {"window_kind": "fifo"}, {"replace_fraction": 1.5},
                                    {"drift_boost": 0.5}, {"threshold_forget": 2.0}])
def test_settings_limits(kwargs: dict) -> None:
    with pytest.raises(OnlineError, match=next(iter(kwargs))):
        OnlineSettings(**kwargs)


def test_sliding_window_keeps_the_latest_rows() -> None:
    w = RecentWindow(100, 1, "sliding")
    for start in range(0, 1000, 70):
        w.add(np.arange(start, start + 70, dtype=np.float32)[:, None])
    assert len(w) == 100 and w.seen == 1050
    assert sorted(w.data()[:, 0].tolist()) == list(range(950, 1050))
    w.add(np.arange(5000, 5300, dtype=np.float32)[:, None])  # bigger than the window
    assert sorted(w.data()[:, 0].tolist()) == list(range(5200, 5300))


def test_reservoir_is_uniform() -> None:
    n, cap, runs = 1000, 50, 300
    hits = np.zeros(n)
    for r in range(runs):
        w = RecentWindow(cap, 1, "reservoir", seed=r)
        for start in range(0, n, 128):
            w.add(np.arange(start, min(start + 128, n), dtype=np.float32)[:, None])
        assert len(w) == cap and len(np.unique(w.data())) == cap
        hits[w.data()[:, 0].astype(int)] += 1
    # inclusion probability cap / n for early and late rows alike
    assert abs(hits[:500].mean() / runs - cap / n) < 0.01
    assert abs(hits[500:].mean() / runs - cap / n) < 0.01


def test_renewal_rate_order_and_boost() -> None:
    rng = np.random.default_rng(0)
    forest = PackedForest.fit(rng.normal(size=(500, 3)), n_trees=10, max_samples=64, seed=0)
    w = RecentWindow(256, 3)
    w.add(rng.normal(size=(256, 3)).astype(np.float32))
    r = TreeRenewal(OnlineSettings(replace_fraction=0.05, drift_boost=6, boost_batches=2, drift_renew_fraction=0.0),
                    10, seed=0)
    before = forest.threshold.reshape(10, -1).copy()
    assert [len(r.renew(forest, w)) for _ in range(4)] == [0, 1, 0, 1]  # half a tree a batch, carried over
    after = forest.threshold.reshape(10, -1)
    changed = [t for t in range(10) if not np.array_equal(before[t], after[t])]
    assert changed == [0, 1]  # oldest first
    r.drifted()
    assert [r.renew(forest, w).tolist() for _ in range(3)] == [[2, 3, 4], [5, 6, 7], []]
    now = TreeRenewal(OnlineSettings(replace_fraction=0.05, drift_renew_fraction=0.6), 10, seed=0)
    now.drifted()
    assert len(now.renew(forest, w)) == 6  # regrown at once from the drifted batch


def test_renewal_waits_for_a_full_sample() -> None:
    rng = np.random.default_rng(0)
    forest = PackedForest.fit(rng.normal(size=(500, 3)), n_trees=4, max_samples=64, seed=0)
    w = RecentWindow(256, 3)
    w.add(rng.normal(size=(10, 3)).astype(np.float32))
    assert len(TreeRenewal(OnlineSettings(replace_fraction=1.0), 4, seed=0).renew(forest, w)) == 0


def test_drift_detector_quiet_when_stationary_and_fast_on_shift() -> None:
    rng = np.random.default_rng(5)
    d = DriftDetector()
    assert not any(d.update(rng.normal(0.45, 0.06, 1000)) for _ in range(300))
    shifted = [d.update(rng.normal(0.47, 0.06, 1000)) for _ in range(10)]
    assert any(shifted[:5])
    d2 = DriftDetector()
    for _ in range(50):
        d2.update(rng.normal(0.45, 0.06, 1000), alerts=10, contamination=0.01)
    assert d2.update(rng.normal(0.45, 0.06, 1000), alerts=200, contamination=0.01)  # alert-rate burst


def _shift_stream(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """30 batches around 0, then 30 around 4; 1% anomalies 6 sigma out on one feature of the current regime."""
    rng = np.random.default_rng(seed)
    batches, labels = [], []
    for b in range(60):
        X = rng.normal(size=(1000, 4)) + (4.0 if b >= 30 else 0.0)
        y = np.zeros(1000)
        idx = rng.choice(1000, 10, replace=False)
        X[idx, rng.integers(0, 4, 10)] += rng.choice([-6.0, 6.0], 10)
        y[idx] = 1
        batches.append(X)
        labels.append(y)
    return batches, labels


def test_detector_follows_a_level_shift(seed: int) -> None:
    batches, labels = _shift_stream(seed)
    names = ["a", "b", "c", "d"]
    online = Detector.fit(batches[0], names, n_trees=50, contamination=0.01, seed=seed,
                          online=OnlineSettings(window=2048))
    static = Detector.fit(batches[0], names, n_trees=50, contamination=0.01, seed=seed, online=None)
    res_on = [online.score_batch(b) for b in batches[1:]]
    res_off = [static.score_batch(b) for b in batches[1:]]
    assert not any(r.drift for r in res_on[:28])  # no false alarm before the shift
    assert any(r.drift for r in res_on[28:32])  # detected within a batch or two
    # after a few batches the online forest has moved, the threshold followed, and anomalies stand out
    y_late = np.concatenate(labels[40:])
    auc_on = roc_auc_score(y_late, np.concatenate([r.score for r in res_on[39:]]))
    auc_off = roc_auc_score(y_late, np.concatenate([r.score for r in res_off[39:]]))
    assert auc_on > 0.95 and auc_on > auc_off + 0.05
    # the shift batch itself is all alerts (it was scored by the old regime's model); from the next batch on,
    # the renewed forest and recalibrated threshold flag near the target rate: neither stuck high nor silent
    shift = next(i for i, r in enumerate(res_on) if r.drift)
    assert res_on[shift].is_anomaly.mean() > 0.9
    assert all(0.0 < r.is_anomaly.mean() < 0.04 for r in res_on[shift + 1:])
