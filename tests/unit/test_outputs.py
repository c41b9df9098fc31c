"""The ``scores`` record formats: the Arrow-kernel JSON writer is byte-identical to the numpy one it replaced,
the Arrow IPC record round-trips, and ``decode_scores`` reads both.

Measured on 20k-row batches (one core, a string key, distinct scores, a constant threshold and version):
the numpy-object-array writer 0.39 M rows/s, the Arrow-kernel one 1.6 M rows/s.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.outputs import (
    ARROW_STREAM_MAGIC,
    SCORES_SCHEMA,
    Scored,
    ScoresFormatError,
    decode_scores,
    encode_scores_arrow,
    is_arrow_scores,
    score_records,
    scores_frame,
)


# -- the reference: score_records and streams.jsonl as they were before the Arrow writer, frozen here -----
def _old_json_column(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(col):
        naive = col.dt.tz_convert("UTC").dt.tz_localize(None) if col.dt.tz is not None else col
        stamps = np.datetime_as_string(naive.to_numpy(dtype="datetime64[ms]"), unit="ms").astype(object)
        out = '"' + stamps + 'Z"'
        out[naive.isna().to_numpy()] = "null"
        return out
    if pd.api.types.is_bool_dtype(col):
        return np.where(col.to_numpy(dtype=bool), "true", "false").astype(object)
    if pd.api.types.is_integer_dtype(col):
        return np.array(list(map(str, col.tolist())), dtype=object)
    if pd.api.types.is_float_dtype(col):
        vals = col.to_numpy(dtype=np.float64)
        out = np.array(list(map(repr, vals.tolist())), dtype=object)
        out[~np.isfinite(vals)] = "null"
        return out
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    texts = np.array([json.dumps(str(u)) for u in uniques] + ["null"], dtype=object)
    return texts[codes]


def _old_to_json_lines(frame: pd.DataFrame) -> list[bytes]:
    if frame.empty:
        return []
    line: np.ndarray | None = None
    for i, name in enumerate(frame.columns):
        prefix = ("{" if i == 0 else ",") + json.dumps(str(name)) + ":"
        part = prefix + _old_json_column(frame[name])
        line = part if line is None else line + part
    assert line is not None
    return [s.encode() for s in (line + "}").tolist()]


def old_score_records(scored: Scored, key_field: str | None, time_field: str) -> list[bytes]:
    f = scored.frame
    rec = pd.DataFrame(
        {
            "key": f[key_field].astype("string") if key_field else pd.Series([None] * len(f), dtype="string"),
            "event_time": f[time_field],
            "score": f["score"],
            "threshold": f["threshold"],
            "is_anomaly": f["is_anomaly"],
            "model_version": f["model_version"],
            "partition": f["kafka_partition"].astype(np.int64),
            "offset": f["kafka_offset"].astype(np.int64),
        }
    )
    return _old_to_json_lines(rec)


# -- frames ------------------------------------------------------------------------------------------------
KEYS = ["dp-1", 'quo"te', "back\\slash", "tab\tnew\nline", "\x00\x1f", "ünï©ødé", "emoji 🛰", "", "42"]
MS_RANGE = (-62_135_596_800_000, 253_402_300_799_999)  # years 1 .. 9999


def awkward_floats(rng: np.random.Generator, n: int) -> np.ndarray:
    """Every float shape repr() and Arrow might write differently: tiny, huge, whole, subnormal, -0, NaN, inf."""
    mags = 10.0 ** rng.uniform(-320, 308, size=n)
    kinds = rng.integers(0, 8, size=n)
    out = rng.uniform(size=n)  # the common case: scores in [0, 1)
    out = np.where(kinds == 1, mags * rng.choice([-1.0, 1.0], size=n), out)
    out = np.where(kinds == 2, np.round(rng.normal(scale=1e6, size=n)), out)  # whole numbers
    out = np.where(kinds == 3, rng.uniform(1e9, 1e17, size=n), out)  # around the switch to exponents
    out = np.where(kinds == 4, rng.uniform(1e-6, 1e-3, size=n), out)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 1e16, 1e-4,
                        9999999999999998.0, 0.1, 1.0])
    return np.where(kinds == 5, special[rng.integers(0, len(special), size=n)], out)


def random_scored(rng: np.random.Generator, n: int, *, constant: bool = False, unit: str = "ms",
                  tz: str | None = "UTC", nat: bool = False) -> Scored:
    ms = rng.integers(*MS_RANGE, size=n) if rng.uniform() < 0.5 else 1_800_000_000_000 + rng.integers(0, 600_000, n)
    times = pd.Series(pd.to_datetime(ms, unit="ms")).astype(f"datetime64[{unit}]")
    if tz is not None:
        times = times.dt.tz_localize("UTC").dt.tz_convert(tz)
    if nat and n:
        times[rng.uniform(size=n) < 0.3] = pd.NaT
    keys = pd.Series(rng.choice(np.array(KEYS, dtype=object), size=n), dtype="string")
    keys[rng.uniform(size=n) < 0.1] = None
    frame = pd.DataFrame({
        "datapoint_id": keys,
        "numeric_id": rng.integers(-5, 5, size=n),
        "event_time": times,
        "score": awkward_floats(rng, n),
        "threshold": np.full(n, 0.6123) if constant else awkward_floats(rng, n),
        "is_anomaly": np.zeros(n, dtype=bool) if constant else rng.uniform(size=n) < 0.2,
        "model_version": "v7" if constant else rng.choice(["v1", "v2-ü"], size=n),
        "kafka_partition": np.full(n, 3, dtype=np.int32) if constant else rng.integers(0, 12, size=n).astype(np.int32),
        "kafka_offset": rng.integers(0, 2**62, size=n),
    })
    return Scored(frame, [None] * n, [None] * n)


# -- JSON: byte-identical to the old writer ------------------------------------------------------------------
@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("key_field", ["datapoint_id", "numeric_id", None])
def test_json_records_are_byte_identical_to_the_old_writer(seed: int, constant: bool, key_field: str | None) -> None:
    rng = np.random.default_rng(seed)
    for n in (1, 2, 17, 5_000):
        scored = random_scored(rng, n, constant=constant)
        assert score_records(scored, key_field, "event_time") == old_score_records(scored, key_field, "event_time")


@pytest.mark.parametrize(("unit", "tz", "nat"), [("ns", "UTC", False), ("us", None, False), ("s", "Europe/Vienna", False),
                                                 ("ms", "UTC", True), ("ms", None, True)])
def test_json_times_in_every_unit_zone_and_with_missing_times(seed: int, unit: str, tz: str | None, nat: bool) -> None:
    rng = np.random.default_rng(seed)
    scored = random_scored(rng, 3_000, unit=unit, tz=tz, nat=nat)
    if unit == "ns":  # datetime64[ns] covers 1677 .. 2262 only
        scored.frame["event_time"] = pd.to_datetime(1_800_000_000_000_123_456 + rng.integers(0, 10**12, 3_000), utc=True)
    assert score_records(scored, "datapoint_id", "event_time") == old_score_records(scored, "datapoint_id", "event_time")


def test_json_times_outside_years_1_to_9999_take_the_numpy_path() -> None:
    far = pd.Series(np.array([-62_135_596_800_001, 253_402_300_800_000, 0], dtype="datetime64[ms]"))
    scored = random_scored(np.random.default_rng(1), 3)
    scored.frame["event_time"] = far
    assert score_records(scored, None, "event_time") == old_score_records(scored, None, "event_time")


def test_json_of_an_empty_batch_is_no_records() -> None:
    scored = random_scored(np.random.default_rng(0), 0)
    assert score_records(scored, "datapoint_id", "event_time") == [] == old_score_records(scored, "datapoint_id", "event_time")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=64), min_size=1, max_size=40))
def test_json_floats_are_written_as_repr_writes_them(values: list[float]) -> None:
    scored = random_scored(np.random.default_rng(0), len(values))
    scored.frame["score"] = np.array(values, dtype=np.float64)
    scored.frame["threshold"] = np.array(values[::-1], dtype=np.float64)
    lines = score_records(scored, "datapoint_id", "event_time")
    assert lines == old_score_records(scored, "datapoint_id", "event_time")
    for line, v in zip(lines, values, strict=True):
        assert f'"score":{repr(v) if np.isfinite(v) else "null"},'.encode() in line


def test_json_records_parse_back(seed: int) -> None:
    scored = random_scored(np.random.default_rng(seed), 500)
    docs = [json.loads(line) for line in score_records(scored, "datapoint_id", "event_time")]
    assert [d["offset"] for d in docs] == scored.frame["kafka_offset"].tolist()
    assert list(docs[0]) == SCORES_SCHEMA.names


# -- Arrow ---------------------------------------------------------------------------------------------------
def test_arrow_record_round_trips_the_scores_columns(seed: int) -> None:
    scored = random_scored(np.random.default_rng(seed), 4_000, unit="us")
    frame = scores_frame(scored, "datapoint_id", "event_time")
    value = encode_scores_arrow(frame)
    assert value[:4] == ARROW_STREAM_MAGIC and is_arrow_scores(value)
    back = decode_scores(value)
    assert list(back.columns) == SCORES_SCHEMA.names
    np.testing.assert_array_equal(back["key"].isna().to_numpy(), frame["key"].isna().to_numpy())
    assert back["key"].dropna().tolist() == frame["key"].dropna().tolist()
    np.testing.assert_array_equal(back["score"].to_numpy(), frame["score"].to_numpy())  # NaNs in place
    np.testing.assert_array_equal(back["is_anomaly"].to_numpy(), frame["is_anomaly"].to_numpy())
    assert back["offset"].tolist() == frame["offset"].tolist()
    assert back["model_version"].tolist() == frame["model_version"].tolist()
    expected_ms = frame["event_time"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ms]")
    np.testing.assert_array_equal(back["event_time"].dt.tz_localize(None).to_numpy(dtype="datetime64[ms]"), expected_ms)
    assert str(back["event_time"].dtype) == "datetime64[ms, UTC]"


@pytest.mark.parametrize("compression", [None, "lz4", "zstd"])
def test_arrow_record_is_much_smaller_than_the_json_records(seed: int, compression: str | None) -> None:
    scored = random_scored(np.random.default_rng(seed), 20_000, constant=True)
    arrow = encode_scores_arrow(scores_frame(scored, "datapoint_id", "event_time"), compression=compression)
    json_bytes = sum(map(len, score_records(scored, "datapoint_id", "event_time")))
    assert len(arrow) < json_bytes / 2
    assert len(decode_scores(arrow)) == 20_000


def test_an_empty_batch_is_an_arrow_record_with_no_rows() -> None:
    frame = scores_frame(random_scored(np.random.default_rng(0), 0), "datapoint_id", "event_time")
    back = decode_scores(encode_scores_arrow(frame))
    assert back.empty and list(back.columns) == SCORES_SCHEMA.names


def test_encode_names_the_missing_or_mistyped_column() -> None:
    frame = scores_frame(random_scored(np.random.default_rng(0), 3), "datapoint_id", "event_time")
    with pytest.raises(ScoresFormatError, match=r"lacks the scores columns \['threshold'\]"):
        encode_scores_arrow(frame.drop(columns="threshold"))
    with pytest.raises(ScoresFormatError, match="'event_time' has dtype"):
        encode_scores_arrow(frame.assign(event_time="yesterday"))
    with pytest.raises(ScoresFormatError, match="'score'"):
        encode_scores_arrow(frame.assign(score="high"))


# -- decode_scores on both -----------------------------------------------------------------------------------
def test_decode_reads_a_json_record_as_one_row(seed: int) -> None:
    scored = random_scored(np.random.default_rng(seed), 50, constant=True)
    scored.frame["event_time"] = pd.Timestamp("2027-01-15T08:00:00.250Z")
    scored.frame["score"] = np.random.default_rng(seed).uniform(size=50)  # JSON writes NaN and inf as null
    from_json = pd.concat([decode_scores(v) for v in score_records(scored, "datapoint_id", "event_time")],
                          ignore_index=True)
    from_arrow = decode_scores(encode_scores_arrow(scores_frame(scored, "datapoint_id", "event_time")))
    pd.testing.assert_frame_equal(from_json, from_arrow)
    assert from_json.loc[0, "event_time"] == pd.Timestamp("2027-01-15T08:00:00.250Z")


def test_decode_fills_missing_json_fields_with_nulls() -> None:
    row = decode_scores(b'{"score": 0.9, "is_anomaly": true, "extra": [1]}')
    assert len(row) == 1 and list(row.columns) == SCORES_SCHEMA.names
    assert row.loc[0, "score"] == 0.9 and row.loc[0, "is_anomaly"]
    assert pd.isna(row.loc[0, "key"]) and pd.isna(row.loc[0, "event_time"])


@pytest.mark.parametrize(
    ("value", "match"),
    [(b"not json", "neither Arrow nor JSON"), (b"\xfe\xff", "neither Arrow nor JSON"), (b"[1]", "must be an object"),
     (b'{"score": "high"}', "wrong type"), (b'{"event_time": "noon"}', "wrong type"),
     (ARROW_STREAM_MAGIC + b"\x10\x00\x00\x00junk", "does not read")],
)
def test_decode_rejects_what_is_not_a_scores_record(value: bytes, match: str) -> None:
    with pytest.raises(ScoresFormatError, match=match):
        decode_scores(value)


def test_decode_rejects_an_arrow_stream_without_the_scores_columns() -> None:
    sink = pa.BufferOutputStream()
    table = pa.table({"score": [0.5]})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(ScoresFormatError, match="lacks the columns"):
        decode_scores(sink.getvalue().to_pybytes())


def test_is_arrow_scores_only_for_bytes_with_the_marker() -> None:
    assert not is_arrow_scores(b'{"score": 1}')
    assert not is_arrow_scores({"score": 1})
    assert not is_arrow_scores("\xff\xff\xff\xff")
    assert not is_arrow_scores(memoryview(ARROW_STREAM_MAGIC))
    assert is_arrow_scores(bytearray(ARROW_STREAM_MAGIC + b"\x00"))


# -- the dashboard reads both --------------------------------------------------------------------------------
def test_dashboard_state_folds_in_json_and_arrow_scores_records_alike(seed: int) -> None:
    from dashboards.state import LiveState

    scored = random_scored(np.random.default_rng(seed), 300, constant=True)
    scored.frame["score"] = np.random.default_rng(seed).uniform(size=300)
    scored.frame.loc[::10, "is_anomaly"] = True
    scored.frame.loc[5, "score"] = np.nan  # no finite score: a bad record in either format
    json_state, arrow_state = LiveState({}, history_s=60), LiveState({}, history_s=60)
    assert json_state.ingest_scores(score_records(scored, "datapoint_id", "event_time")) == 299
    halves = [scores_frame(scored, "datapoint_id", "event_time").iloc[i:i + 150] for i in (0, 150)]
    values = [encode_scores_arrow(halves[0]), b"junk", encode_scores_arrow(halves[1]), ARROW_STREAM_MAGIC]
    assert arrow_state.ingest_scores(values, [1.0, 1.0, 2.0, 2.0]) == 299
    (_, hist_json, thr_json), (_, hist_arrow, thr_arrow) = json_state.histogram(), arrow_state.histogram()
    pd.testing.assert_frame_equal(hist_json, hist_arrow)
    assert json_state.scores_in_histogram == arrow_state.scores_in_histogram == 299
    k_json, k_arrow = json_state.kpis(), arrow_state.kpis()
    assert (k_json.anomalies, thr_json, k_json.model_version) == \
        (k_arrow.anomalies, thr_arrow, k_arrow.model_version) == (30, 0.6123, "v7")
    assert json_state.bad_records["scores"] == 1 and arrow_state.bad_records["scores"] == 3  # NaN, junk, marker
    empty = encode_scores_arrow(halves[0].iloc[:0])
    assert arrow_state.ingest_scores([empty]) == 0 and arrow_state.bad_records["scores"] == 3


# -- the input values that ride along -----------------------------------------------------------------------
def test_value_fields_follow_the_schema_in_both_formats(seed: int) -> None:
    scored = random_scored(np.random.default_rng(seed), 300)
    scored.frame["value"] = np.random.default_rng(seed).normal(size=300)
    scored.frame.loc[3, "value"] = np.nan
    docs = [json.loads(line) for line in score_records(scored, "datapoint_id", "event_time", ("value",))]
    assert list(docs[0]) == [*SCORES_SCHEMA.names, "value"]
    assert docs[3]["value"] is None and docs[4]["value"] == scored.frame.loc[4, "value"]
    json_back = decode_scores(score_records(scored, "datapoint_id", "event_time", ("value",))[4])
    assert list(json_back.columns) == [*SCORES_SCHEMA.names, "value"]
    assert json_back.loc[0, "value"] == scored.frame.loc[4, "value"]
    arrow_back = decode_scores(encode_scores_arrow(scores_frame(scored, "datapoint_id", "event_time", ("value",))))
    assert list(arrow_back.columns) == [*SCORES_SCHEMA.names, "value"]
    np.testing.assert_array_equal(arrow_back["value"].to_numpy(), scored.frame["value"].to_numpy())
