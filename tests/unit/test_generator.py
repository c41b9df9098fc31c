from __future__ import annotations

import json

import numpy as np
import pandas as pd

from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.jsonl import to_json_lines


def test_schema_and_order() -> None:
    frame = StationAlarmGenerator(GeneratorSettings(seed=3)).next_chunk(5_000)
    assert list(frame.columns) == [
        "station_id", "datapoint_id", "alarm_id", "event_time", "value", "valueThreshold", "isActive", "label"
    ]
    assert frame["event_time"].is_monotonic_increasing
    assert str(frame["event_time"].dt.tz) == "UTC"
    assert all(dp.startswith(st) for dp, st in zip(frame["datapoint_id"], frame["station_id"], strict=True))
    assert np.isfinite(frame["value"]).all()


def test_reproducible_and_continuous() -> None:
    a = StationAlarmGenerator(GeneratorSettings(seed=5))
    b = StationAlarmGenerator(GeneratorSettings(seed=5))
    first, second = a.next_chunk(1000), a.next_chunk(1000)
    pd.testing.assert_frame_equal(first, b.next_chunk(1000))
    assert second["event_time"].iloc[0] > first["event_time"].iloc[-1]


def test_labelled_anomalies_are_rare_and_unusual() -> None:
    frame = StationAlarmGenerator(GeneratorSettings(seed=1, anomaly_rate=0.01)).next_chunk(50_000)
    rate = frame["label"].mean()
    assert 0.005 < rate < 0.05
    # per sensor, anomalies sit further from the sensor's typical level than normal readings do
    med = frame[frame.label == 0].groupby("datapoint_id")["value"].median()
    mad = frame[frame.label == 0].groupby("datapoint_id")["value"].std()
    z = ((frame["value"] - frame["datapoint_id"].map(med)) / frame["datapoint_id"].map(mad)).abs()
    assert z[frame.label == 1].median() > 3 * z[frame.label == 0].median()


def test_json_lines_round_trip() -> None:
    frame = StationAlarmGenerator(GeneratorSettings(seed=2)).next_chunk(300)
    frame.loc[3, "value"] = np.nan
    lines = to_json_lines(frame)
    assert len(lines) == 300 and all(b"\n" not in line for line in lines)
    docs = [json.loads(line) for line in lines]
    assert docs[3]["value"] is None
    assert docs[0]["event_time"].endswith("Z")
    back = pd.to_datetime([d["event_time"] for d in docs], utc=True)
    assert (back == frame["event_time"].dt.floor("ms")).all()
    assert [d["datapoint_id"] for d in docs] == frame["datapoint_id"].tolist()
    assert [d["isActive"] for d in docs] == frame["isActive"].tolist()
    assert [d["value"] for d in docs[4:]] == frame["value"].iloc[4:].tolist()


def test_json_lines_escapes_strings() -> None:
    frame = pd.DataFrame({"s": ['a"b', "new\nline", "ünï"], "n": [1, 2, 3]})
    docs = [json.loads(line) for line in to_json_lines(frame)]
    assert [d["s"] for d in docs] == frame["s"].tolist()
