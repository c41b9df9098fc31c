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
    rng = np.random.default_rng(2)
    th = StreamingThreshold(0.02, half_life=20_000)
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
    slow.update(new)
    fast.update(new)
    assert fast.value > slow.value + 0.1


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
