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
    # the shift is an alert storm: held (protection) until it lasted drift_confirm events, then accepted
    shift = next(i for i, r in enumerate(res_on) if r.drift)
    storm = 29  # res_on[i] is batch i + 1; the shift starts at batch 30
    assert shift == storm + int(np.ceil(OnlineSettings().drift_confirm / 1000)) - 1
    # after a few batches the online forest has moved, the threshold followed, and anomalies stand out
    y_late = np.concatenate(labels[40:])
    auc_on = roc_auc_score(y_late, np.concatenate([r.score for r in res_on[39:]]))
    auc_off = roc_auc_score(y_late, np.concatenate([r.score for r in res_off[39:]]))
    assert auc_on > 0.95 and auc_on > auc_off + 0.05
    # until then every batch of the new regime is all alerts (as a sustained abnormal regime must be); from
    # the next batch on, the forest regrown on the storm's rows and the threshold recalibrated on them flag
    # near the target rate: neither stuck high nor silent
    assert all(r.is_anomaly.mean() > 0.9 for r in res_on[storm:shift + 1])
    assert all(0.0 < r.is_anomaly.mean() < 0.04 for r in res_on[shift + 1:])


def test_memory_slots_are_spread() -> None:
    from training.online import memory_slots

    for n, f in ((100, 0.5), (10, 0.3), (7, 1.0), (7, 0.0), (50, 0.25)):
        mask = memory_slots(n, f)
        assert mask.sum() == int(np.floor(n * f))
        if 0 < f < 1:  # every run of 1/f consecutive slots holds one memory slot, give or take one
            assert abs(mask[: n // 2].sum() - mask[n // 2:].sum()) <= 1


def test_trees_grow_from_both_sources() -> None:
    """Memory slots are grown on the reservoir's rows, the others on the recent window's."""
    rng = np.random.default_rng(1)
    forest = PackedForest.fit(rng.random((500, 1)), n_trees=20, max_samples=64, seed=0).slotted()
    window, memory = RecentWindow(256, 1), RecentWindow(256, 1, "reservoir")
    window.add((100.0 + rng.random((256, 1))).astype(np.float32))
    memory.add(rng.random((256, 1)).astype(np.float32))
    renewal = TreeRenewal(OnlineSettings(replace_fraction=1.0, memory_fraction=0.25), 20, seed=0)
    assert len(renewal.renew(forest, window, memory)) == 20
    roots = forest.threshold[np.arange(20) * forest.slot]
    mem = renewal.from_memory
    assert mem.sum() == 5
    assert ((roots[mem] >= 0.0) & (roots[mem] <= 1.0)).all()
    assert ((roots[~mem] >= 100.0) & (roots[~mem] <= 101.0)).all()
    # a memory still short of psi rows: those slots fall back to the window
    empty = RecentWindow(256, 1, "reservoir")
    TreeRenewal(OnlineSettings(replace_fraction=1.0, memory_fraction=0.25), 20, seed=1).renew(forest, window, empty)
    assert (forest.threshold[np.arange(20) * forest.slot] >= 100.0).all()


def test_memory_samples_the_whole_stream_while_the_window_slides(seed: int) -> None:
    """The detector's memory is uniform over everything learnt; its window holds the latest rows."""
    rng = np.random.default_rng(seed)
    first = rng.normal(size=(1000, 2))
    # hull=False: the epoch column leaves the fitted box every batch, and rows past it would be flagged
    det = Detector.fit(np.column_stack([first, np.zeros(1000)]), ["a", "b", "t"], n_trees=20, seed=seed,
                       online=OnlineSettings(window=1000, drift_confirm=0), hull=False)
    for b in range(1, 20):
        det.score_batch(np.column_stack([rng.normal(size=(1000, 2)), np.full(1000, float(b))]))
    epochs = np.bincount(det.memory.data()[:, 2].astype(int), minlength=20)
    assert det.memory.seen > 19_000
    assert np.abs(epochs / epochs.sum() - 1 / 20).max() < 0.025  # each twentieth of the stream ~1/20 of it
    assert set(det.window.data()[:, 2].astype(int).tolist()) <= {18, 19}


def test_catch_up_regrows_the_first_batchs_trees(seed: int) -> None:
    rng = np.random.default_rng(seed)
    runs = {}
    for catch_up in (True, False):
        det = Detector.fit(rng.normal(size=(500, 3)), ["a", "b", "c"], n_trees=40, max_samples=128, seed=seed,
                           online=OnlineSettings(catch_up=catch_up))
        for _ in range(9):
            det.score_batch(rng.normal(size=(500, 3)))
        runs[catch_up] = det.renewal.grown
    # 1/t: after ten times the first batch, about 1/2 + 1/3 + ... + 1/10 of the forest was regrown
    assert runs[True] >= 40 * 1.5 and runs[False] <= 40 * 0.02 * 9 + 1


def test_a_burst_shorter_than_drift_confirm_keeps_alerting_and_is_not_learnt(seed: int) -> None:
    batches, _ = _shift_stream(seed)
    names = ["a", "b", "c", "d"]
    det = Detector.fit(batches[0], names, n_trees=50, contamination=0.01, seed=seed)
    for b in batches[1:20]:
        det.score_batch(b)
    before = det.threshold
    burst = [det.score_batch(b) for b in batches[30:33]]  # 3,000 events of the shifted regime, < 4,096
    assert all(r.is_anomaly.mean() > 0.9 and not r.drift for r in burst)
    assert det.threshold == pytest.approx(before, abs=2 / 4096)  # held
    assert np.abs(det.window.data().mean(axis=0)).max() < 0.5  # the burst's rows were not learnt
    back = [det.score_batch(b) for b in batches[20:28]]
    assert not any(r.drift for r in back)
    assert all(r.is_anomaly.mean() < 0.04 for r in back)  # normal traffic is normal again at once
    assert det.storm_events == 0 and len(det.storm_rows) == 0


def test_without_protection_a_level_shift_is_drift_at_once(seed: int) -> None:
    batches, _ = _shift_stream(seed)
    det = Detector.fit(batches[0], ["a", "b", "c", "d"], n_trees=50, contamination=0.01, seed=seed,
                       online=OnlineSettings(window=2048, threshold_protect=False))
    res = [det.score_batch(b) for b in batches[1:]]
    shift = next(i for i, r in enumerate(res) if r.drift)
    assert shift in (29, 30)
    assert all(0.0 < r.is_anomaly.mean() < 0.04 for r in res[shift + 1:])
