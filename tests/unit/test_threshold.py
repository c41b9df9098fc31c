"""StreamingThreshold: quantile accuracy, self-adjustment after level shifts, persistence, limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.threshold import StreamingThreshold, ThresholdError


def _alert_rate(th: StreamingThreshold, batches: list[np.ndarray]) -> float:
    """Prequential alert rate of the last batch: flag with the threshold in force, then update."""
    rate = 0.0
    for b in batches:
        rate = float(np.mean(b > th.value))
        th.update(b)
    return rate


def test_quantile_is_accurate() -> None:
    rng = np.random.default_rng(1)
    s = rng.beta(8, 10, size=200_000)
    th = StreamingThreshold(0.01, half_life=1e12)
    th.update(s)
    assert abs(th.value - np.quantile(s, 0.99)) < 2 / 4096
    assert abs(np.mean(s > th.value) - 0.01) < 0.001


@pytest.mark.parametrize("shift", [0.15, -0.15])
def test_alert_rate_recovers_after_a_level_shift(shift: float) -> None:
    """Without protection the threshold follows a level shift either way within a few half-lives."""
    rng = np.random.default_rng(2)
    th = StreamingThreshold(0.02, half_life=20_000, protect=False)
    before = [rng.beta(8, 10, 1000) for _ in range(100)]
    after = [rng.beta(8, 10, 1000) + shift for _ in range(100)]
    assert abs(_alert_rate(th, before) - 0.02) < 0.015
    first = _alert_rate(th, after[:1])
    assert first > 0.08 if shift > 0 else first < 0.005  # the shift shows at once ...
    assert abs(_alert_rate(th, after[1:]) - 0.02) < 0.015  # ... and the threshold follows it


def test_forget_speeds_up_following() -> None:
    rng = np.random.default_rng(3)
    slow, fast = StreamingThreshold(0.02, half_life=50_000), StreamingThreshold(0.02, half_life=50_000)
    for th in (slow, fast):
        th.update(rng.beta(8, 10, 50_000))
    fast.forget(0.01)
    new = rng.beta(8, 10, 2000) + 0.2
    slow.update(new, protect=False)
    fast.update(new, protect=False)  # what the detector does once a regime is confirmed
    assert fast.value > slow.value + 0.1


def _regime(rng: np.random.Generator, share: float, n: int = 1000) -> np.ndarray:
    """Normal scores with ``share`` of the rows from an abnormal regime well above the normal tail."""
    s = rng.beta(8, 10, n)
    k = int(share * n)
    s[:k] = rng.normal(0.8, 0.03, k)
    return s


@pytest.mark.parametrize("share", [0.1, 1.0])
def test_protection_keeps_a_sustained_regime_alerting(share: float) -> None:
    rng = np.random.default_rng(4)
    guarded, naive = StreamingThreshold(0.02, half_life=20_000), StreamingThreshold(0.02, half_life=20_000,
                                                                                      protect=False)
    for th in (guarded, naive):
        _alert_rate(th, [rng.beta(8, 10, 1000) for _ in range(60)])
    before = guarded.value
    regime = [_regime(rng, share) for _ in range(150)]  # 7.5 half-lives of it
    assert _alert_rate(guarded, regime) >= share  # still flags the whole regime ...
    assert abs(guarded.value - before) < 2 / 4096  # ... because it was held, not pulled up or down
    assert guarded.storm
    assert _alert_rate(naive, regime) < share / 2  # without protection it was learnt as normal


def test_protected_threshold_follows_normal_traffic() -> None:
    """A gradual benign change moves the threshold both ways, and a stationary stream does not ratchet.

    "Gradual": the unprotected threshold's lag keeps the alert rate inside the storm band (a change faster
    than that is held until the detector confirms it as a new regime).
    """
    rng = np.random.default_rng(5)
    guarded, naive = StreamingThreshold(0.02, half_life=5_000), StreamingThreshold(0.02, half_life=5_000,
                                                                                    protect=False)
    shifts = [0.0] * 200 + list(np.linspace(0.0, 0.15, 500)) + [0.15] * 50 + list(np.linspace(0.15, 0, 500))
    rates = np.zeros((2, len(shifts)))
    for i, shift in enumerate(shifts):
        b = rng.beta(8, 10, 1000) + shift
        for j, th in enumerate((guarded, naive)):
            rates[j, i] = np.mean(b > th.value)
            th.update(b)
    assert abs(rates[0, 20:200].mean() - 0.02) < 0.002  # stationary: no drift of the alert rate (no ratchet)
    for part in (slice(200, 700), slice(700, 750), slice(750, None)):  # up, at the top, back down
        assert abs(rates[0, part].mean() - rates[1, part].mean()) < 0.003
        assert abs(rates[0, part].mean() - 0.02) < 0.006
    assert abs(guarded.value - naive.value) < 0.01


def test_protection_off_for_a_fixed_threshold_and_saved() -> None:
    th = StreamingThreshold(0.05, fixed=0.3)
    th.update(np.full(100, 0.9))
    assert th.value == 0.3 and not th.storm
    guarded = StreamingThreshold(0.05, protect=False)
    assert StreamingThreshold.restore(guarded.params(), guarded.counts).protect is False
    old = {k: v for k, v in guarded.params().items() if k != "protect"}  # saved before protection existed
    assert StreamingThreshold.restore(old, guarded.counts).protect is True


def test_fixed_threshold_stays() -> None:
    th = StreamingThreshold(0.05, fixed=0.62)
    th.update(np.random.default_rng(0).random(1000))
    assert th.value == 0.62


def test_restore_round_trip_and_checks() -> None:
    th = StreamingThreshold(0.03, half_life=1000, bins=512)
    th.update(np.random.default_rng(4).random(5000))
    back = StreamingThreshold.restore(th.params(), th.counts.copy())
    assert back.value == th.value and back.params() == th.params()
    with pytest.raises(ThresholdError, match="shape"):
        StreamingThreshold.restore(th.params(), np.zeros(10))


@pytest.mark.parametrize("kwargs", [{"contamination": 0.0}, {"contamination": 0.6}, {"fixed": float("nan")},
                                    {"half_life": 0}, {"bins": 4}])
def test_limits(kwargs: dict) -> None:
    with pytest.raises(ThresholdError):
        StreamingThreshold(**kwargs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=300), st.floats(0.001, 0.49))
def test_threshold_lies_within_the_scores(scores: list[float], contamination: float) -> None:
    th = StreamingThreshold(contamination, bins=256)
    th.update(np.array(scores))
    assert min(scores) - 1 / 256 <= th.value <= max(scores) + 1 / 256
    # at most the target share (plus the quantile's own bin) lies above it
    above = np.mean(np.array(scores) > th.value)
    in_bin = np.mean(np.abs(np.array(scores) - th.value) <= 1 / 256)
    assert above <= contamination + in_bin + 1e-12
