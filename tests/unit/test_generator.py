from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from streams.generator import MIN_DEVIATION_SD, GeneratorSettings, StationAlarmGenerator
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


def test_labels_mark_exactly_the_altered_events() -> None:
    gen = StationAlarmGenerator(GeneratorSettings(seed=7, anomaly_rate=0.02))
    frame = pd.concat([gen.next_chunk(100_000) for _ in range(3)], ignore_index=True)  # runs cross chunks
    z = (frame["value"] - gen.normal_signal(frame["datapoint_id"], frame["event_time"])) \
        / gen.noise_sd(frame["datapoint_id"])
    labelled = frame["label"] == 1
    assert 0.01 < labelled.mean() < 0.06
    # every labelled value is abnormal for its sensor (the tolerance covers rounding to 4 decimals)
    assert z[labelled].abs().min() >= MIN_DEVIATION_SD - 0.05
    # unlabelled values are the normal signal plus one N(0, 1) noise draw, untouched
    normal = z[~labelled]
    assert normal.abs().max() < 6.0
    assert abs(normal.mean()) < 0.02 and abs(normal.std() - 1.0) < 0.02
    # stuck runs: one frozen value repeated by a sensor, all of it labelled
    repeats = frame[labelled].groupby(["datapoint_id", "value"]).size()
    assert (repeats >= 5).any()


def test_normal_signal_rejects_unknown_sensors() -> None:
    gen = StationAlarmGenerator(GeneratorSettings(seed=1))
    with pytest.raises(KeyError, match="ST9999-DP99"):
        gen.noise_sd(pd.Series(["ST9999-DP99"]))


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
