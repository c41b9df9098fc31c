from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.config import FeaturesConfig
from engine.features import FeatureBuilder, FeatureError, KeyState
from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.schema import STATION_ALARM


def _frame(n: int = 2_000, seed: int = 0) -> pd.DataFrame:
    return StationAlarmGenerator(GeneratorSettings(seed=seed)).next_chunk(n)


def test_names_match_columns_and_input_not_mutated() -> None:
    frame = _frame()
    before = frame.copy()
    fb = FeatureBuilder(FeaturesConfig(), STATION_ALARM)
    X = fb.transform(frame)
    assert X.shape == (len(frame), len(fb.names))
    pd.testing.assert_frame_equal(frame, before)


def test_state_spans_batches_exactly() -> None:
    """Two half batches give the same features as one whole batch: the per-key state carries over."""
    frame = _frame(4_000)
    whole = FeatureBuilder(FeaturesConfig(), STATION_ALARM).transform(frame)
    fb = FeatureBuilder(FeaturesConfig(), STATION_ALARM)
    halves = np.vstack([fb.transform(frame.iloc[:1_500]), fb.transform(frame.iloc[1_500:])])
    np.testing.assert_allclose(halves, whole)


def test_ewm_matches_pandas_per_key() -> None:
    frame = _frame(3_000)
    cfg = FeaturesConfig(rolling_window=9)
    fb = FeatureBuilder(cfg, STATION_ALARM)
    X = fb.transform(frame)
    mean_col = fb.names.index("value_ewm_mean")
    alpha = 2 / (9 + 1)
    # the feature is the mean *before* the event (no leakage of the event into its own baseline)
    expected = frame.groupby("datapoint_id")["value"].transform(
        lambda s: s.ewm(alpha=alpha, adjust=False).mean().shift(1).fillna(s.iloc[0])
    )
    np.testing.assert_allclose(X[:, mean_col], expected.to_numpy(), rtol=1e-9)


def test_zscore_flags_a_spike() -> None:
    frame = _frame(5_000)
    frame.loc[4_999, "value"] = frame.loc[4_999, "value"] * 50 + 1000
    fb = FeatureBuilder(FeaturesConfig(), STATION_ALARM)
    z = fb.transform(frame)[:, fb.names.index("value_z")]
    assert abs(z[4_999]) > 10 * np.median(np.abs(z))


def test_missing_column_is_named() -> None:
    frame = _frame(10).drop(columns=["valueThreshold"])
    with pytest.raises(FeatureError, match="valueThreshold"):
        FeatureBuilder(FeaturesConfig(), STATION_ALARM).transform(frame)


def test_state_round_trips_through_arrays() -> None:
    frame = _frame(2_000)
    fb = FeatureBuilder(FeaturesConfig(), STATION_ALARM)
    fb.transform(frame.iloc[:1_000])
    restored = FeatureBuilder(FeaturesConfig(), STATION_ALARM, KeyState.from_arrays(fb.state.to_arrays()))
    np.testing.assert_allclose(restored.transform(frame.iloc[1_000:]), fb.transform(frame.iloc[1_000:]))
