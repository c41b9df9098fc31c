"""The feature layer gives the same matrix, bit for bit, whatever form the batch arrives in.

The stream hands it pandas frames; the nightly retrain reads the Parquet lake (pyarrow tables, dictionary-encoded
keys, object or pyarrow strings). A model must see the same numbers either way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.schema import STATION_ALARM
from training.features import BaselineConfig, FeatureBuilder, FeatureError, FeaturesConfig, ShingleConfig

RICH = FeaturesConfig(shingle=ShingleConfig(size=4), sentinels=(999999.0,), day_of_week=True,
                      categorical={"station_id": 8}, baseline=BaselineConfig(events=8, max_age_s=30.0))
DEMO_LIKE = FeaturesConfig(numeric=("value",), keep_levels=False, sentinels=(999999.0,), time_of_day=False)


def _frame(seed: int, n: int = 3_000) -> pd.DataFrame:
    frame = StationAlarmGenerator(GeneratorSettings(seed=seed % 2**32, anomaly_rate=0.02)).next_chunk(n)
    rng = np.random.default_rng(seed)
    value = frame["value"].to_numpy().copy()
    value[rng.random(n) < 0.02] = np.nan
    value[rng.random(n) < 0.02] = 999999.0
    frame["value"] = value
    frame.loc[frame.index[::53], "datapoint_id"] = None
    return frame


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit (NaN where NaN)."""
    nan = np.isnan(a)
    return a.shape == b.shape and np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.uint64),
                                                                                      b[~nan].view(np.uint64))


def _forms(frame: pd.DataFrame) -> dict[str, pd.DataFrame | pa.Table]:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    key = table.column_names.index("datapoint_id")
    return {
        "object keys": frame.astype({"datapoint_id": object}),
        "categorical keys": frame.astype({"datapoint_id": "category"}),
        "arrow table": table,
        "arrow table, dictionary keys": table.set_column(key, "datapoint_id",
                                                         table.column("datapoint_id").dictionary_encode()),
        "arrow table, several chunks": pa.concat_tables([table.slice(0, 1_000), table.slice(1_000)]),
    }


@pytest.mark.parametrize("cfg", [RICH, DEMO_LIKE], ids=["rich", "demo-like"])
def test_every_input_form_gives_the_same_features(cfg: FeaturesConfig, seed: int) -> None:
    frame = _frame(seed)
    want = FeatureBuilder(cfg, STATION_ALARM).compute(frame)
    for name, batch in _forms(frame).items():
        got = FeatureBuilder(cfg, STATION_ALARM).compute(batch)
        assert _same(got.X, want.X), name
        np.testing.assert_array_equal(got.warm, want.warm, err_msg=name)


def test_state_carries_across_input_forms(seed: int) -> None:
    """A builder fed a table, then a frame, then a categorical frame equals one fed the whole frame."""
    frame = _frame(seed)
    whole = FeatureBuilder(RICH, STATION_ALARM).transform(frame)
    fb = FeatureBuilder(RICH, STATION_ALARM)
    parts = [fb.transform(pa.Table.from_pandas(frame.iloc[:1_000], preserve_index=False)),
             fb.transform(frame.iloc[1_000:2_000]),
             fb.transform(frame.iloc[2_000:].astype({"datapoint_id": "category"}))]
    assert _same(np.vstack(parts), whole)


def test_numeric_columns_of_other_types_are_read_as_floats(seed: int) -> None:
    frame = _frame(seed, 500)
    frame["valueThreshold"] = np.round(frame["valueThreshold"]).astype("Int64")  # nullable ints
    frame.loc[frame.index[::7], "valueThreshold"] = pd.NA
    frame.loc[frame.index[3], "valueThreshold"] = 2**60 + 1  # not a float64: rounds, as pandas rounds it
    floats = frame.astype({"valueThreshold": "float64"})
    cfg = FeaturesConfig()
    want = FeatureBuilder(cfg, STATION_ALARM).transform(floats)
    assert _same(FeatureBuilder(cfg, STATION_ALARM).transform(frame), want)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert table.schema.field("valueThreshold").type == pa.int64()
    assert _same(FeatureBuilder(cfg, STATION_ALARM).transform(table), want)


def test_bad_columns_are_named() -> None:
    frame = _frame(0, 50)
    fb = FeatureBuilder(FeaturesConfig(), STATION_ALARM)
    with pytest.raises(FeatureError, match="event_time"):
        fb.compute(frame.astype({"event_time": str}))
    with pytest.raises(FeatureError, match="'value'"):
        fb.compute(pa.Table.from_pandas(frame.astype({"value": str}), preserve_index=False))
    with pytest.raises(FeatureError, match="'value'"):
        fb.compute(frame.astype({"value": object}).assign(value="x"))
    with pytest.raises(FeatureError, match="valueThreshold"):
        fb.compute(pa.Table.from_pandas(frame.drop(columns=["valueThreshold"]), preserve_index=False))


def test_empty_batch() -> None:
    frame = _frame(0, 10).iloc[:0]
    fb = FeatureBuilder(RICH, STATION_ALARM)
    for batch in (frame, pa.Table.from_pandas(frame, preserve_index=False)):
        out = fb.compute(batch)
        assert out.X.shape == (0, len(fb.names)) and out.warm.shape == (0,)
