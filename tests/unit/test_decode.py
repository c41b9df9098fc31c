"""Decoding: columns and dtypes, every dead-letter reason, framing, event-time units, defaults."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from streams.deadletter import Reason
from streams.decode import DecodeError, Decoder, decode_batch, empty_frame
from streams.faults import MAKERS, bad_record, encode, good_event
from streams.records import RawBatch
from streams.schema import STATION_ALARM, EventTime, FieldSpec, Schema

SCHEMA = STATION_ALARM.model_copy(update={"max_message_bytes": 4096})
FIELDS = SCHEMA.names
META = ["_partition", "_offset", "_kafka_ts", "_key"]


def _batch(values: list[bytes], *, partition: int = 3, first_offset: int = 100) -> RawBatch:
    keys = [f"k{i}".encode() for i in range(len(values))]
    raw = RawBatch.from_values(values, partition=partition, first_offset=first_offset, keys=keys)
    raw.timestamps_ms = np.arange(len(values), dtype=np.int64) + 1_700_000_000_000
    return raw


def test_clean_batch_has_declared_columns_dtypes_and_metadata(seed: int) -> None:
    rng = random.Random(seed)
    docs = [good_event(rng) for _ in range(500)]
    out = decode_batch(_batch([encode(d) for d in docs]), SCHEMA)
    frame = out.frame
    assert out.dead == []
    assert list(frame.columns) == FIELDS + META
    assert str(frame["event_time"].dtype) == "datetime64[us, UTC]"
    assert frame["value"].dtype == np.float64 and frame["isActive"].dtype == bool
    assert frame["_partition"].dtype == np.int32 and frame["_offset"].dtype == np.int64
    assert frame["_kafka_ts"].dtype == np.int64
    assert frame["_offset"].tolist() == list(range(100, 600))
    assert frame["_key"].tolist() == [f"k{i}" for i in range(500)]
    assert frame["station_id"].tolist() == [d["station_id"] for d in docs]
    assert frame["value"].tolist() == [d["value"] for d in docs]
    expected = pd.to_datetime([d["event_time"] for d in docs], utc=True).as_unit("us")
    assert (frame["event_time"].to_numpy() == expected.to_numpy()).all()


@pytest.mark.parametrize("reason", list(MAKERS))
def test_each_bad_kind_is_dead_lettered_with_its_reason_and_neighbours_survive(reason: Reason, seed: int) -> None:
    rng = random.Random(seed)
    for trial in range(20):  # every maker has several variants
        bad = bad_record(reason, rng)
        values = [encode(good_event(rng)) for _ in range(50)]
        values.insert(trial, bad)
        out = decode_batch(_batch(values), SCHEMA)
        assert [(d.reason, d.offset, d.value) for d in out.dead] == [(reason, 100 + trial, bad)], bad
        assert out.dead[0].partition == 3 and out.dead[0].key == f"k{trial}".encode()
        assert out.dead[0].detail
        assert len(out.frame) == 50 and 100 + trial not in set(out.frame["_offset"])


def test_newline_inside_a_message_does_not_shift_rows(seed: int) -> None:
    rng = random.Random(seed)
    good = [encode(good_event(rng)) for _ in range(6)]
    two_docs_one_line = good[0] + b" " + good[1]
    values = [good[2], b'{"station_id":"S\nT"}', two_docs_one_line, b"", b"  ", good[3], b"\r", good[4]]
    out = decode_batch(_batch(values), SCHEMA)
    assert out.frame["_offset"].tolist() == [100, 105, 107]
    assert out.frame["station_id"].tolist() == [json.loads(v)["station_id"] for v in (good[2], good[3], good[4])]
    assert {d.offset: d.reason for d in out.dead} == {o: Reason.INVALID_JSON for o in (101, 102, 103, 104, 106)}


def test_valid_json_with_odd_whitespace_is_accepted(seed: int) -> None:
    doc = good_event(random.Random(seed))
    pretty = json.dumps(doc, indent=2).replace("\n", "\r\n").encode()
    out = decode_batch(_batch([b"  " + encode(doc) + b"\n", pretty]), SCHEMA)
    assert out.dead == [] and len(out.frame) == 2


def test_optional_fields_take_defaults_and_unknown_fields_are_ignored(seed: int) -> None:
    doc = good_event(random.Random(seed))
    del doc["alarm_id"], doc["isActive"]
    out = decode_batch(_batch([encode({**doc, "extra": {"nested": [1, 2]}})]), SCHEMA)
    assert out.dead == []
    assert out.frame.loc[0, "alarm_id"] == "" and out.frame.loc[0, "isActive"] is np.False_


def test_event_time_as_epoch_seconds_milliseconds_and_offsets(seed: int) -> None:
    doc = good_event(random.Random(seed))
    when = pd.Timestamp("2026-11-24T10:00:00.250Z")
    stamps = [when.timestamp(), int(when.timestamp() * 1000), "2026-11-24T11:00:00.250+01:00",
              "2026-11-24T10:00:00.250"]
    for stamp in stamps:  # alone in a batch (fast path) and mixed with the others (per-record path)
        out = decode_batch(_batch([encode({**doc, "event_time": stamp})]), SCHEMA)
        assert out.frame["event_time"].tolist() == [when], stamp
    mixed = decode_batch(_batch([encode({**doc, "event_time": s}) for s in stamps]), SCHEMA)
    assert mixed.dead == [] and mixed.frame["event_time"].tolist() == [when] * 4


def test_event_time_units_are_honoured(seed: int) -> None:
    doc = good_event(random.Random(seed))
    for unit, stamp, expected in [("s", 1_800_000_000, "2027-01-15T08:00:00Z"),
                                  ("ms", 1_800_000_000, "1970-01-21T20:00:00Z")]:
        schema = SCHEMA.model_copy(update={"event_time": EventTime(field="event_time", unit=unit)})
        out = decode_batch(_batch([encode({**doc, "event_time": stamp})]), schema)
        assert out.frame["event_time"].tolist() == [pd.Timestamp(expected)]
    iso = SCHEMA.model_copy(update={"event_time": EventTime(field="event_time", unit="iso")})
    out = decode_batch(_batch([encode({**doc, "event_time": 1_800_000_000}), encode(doc)]), iso)
    assert [d.reason for d in out.dead] == [Reason.BAD_TIMESTAMP] and len(out.frame) == 1


def test_int_fields_accept_integral_floats_and_reject_the_rest() -> None:
    schema = Schema(fields=(FieldSpec(name="t", type="timestamp"), FieldSpec(name="n", type="int"),
                            FieldSpec(name="s", type="string", required=False, default="none")),
                    event_time=EventTime(field="t"))
    values = [b'{"t":"2026-01-01T00:00:00Z","n":3}', b'{"t":"2026-01-01T00:00:00Z","n":4.0}',
              b'{"t":"2026-01-01T00:00:00Z","n":4.5}', b'{"t":"2026-01-01T00:00:00Z","n":99999999999999999999}',
              b'{"t":"2026-01-01T00:00:00Z","n":"5"}']
    out = decode_batch(_batch(values), schema)
    assert out.frame["n"].tolist() == [3, 4] and out.frame["n"].dtype == np.int64
    assert out.frame["s"].tolist() == ["none", "none"]
    assert [d.reason for d in out.dead] == [Reason.WRONG_TYPE] * 3


def test_a_bad_record_deep_in_a_large_batch_is_isolated(seed: int) -> None:
    rng = random.Random(seed)
    values = [encode(good_event(rng)) for _ in range(20_000)]
    values[12_345] = values[12_345].replace(b'"value":', b'"value":"', 1)
    out = decode_batch(_batch(values, first_offset=0), SCHEMA)
    assert [(d.offset, d.reason) for d in out.dead] == [(12_345, Reason.INVALID_JSON)]
    assert len(out.frame) == 19_999 and out.frame["_offset"].is_monotonic_increasing


def test_non_utf8_key_is_kept_readable(seed: int) -> None:
    raw = _batch([encode(good_event(random.Random(seed)))])
    raw.keys = [b"\xffkey"]
    assert decode_batch(raw, SCHEMA).frame["_key"].tolist() == ["\ufffdkey"]


def test_empty_batch_and_empty_frame_have_the_same_columns() -> None:
    out = decode_batch(RawBatch.from_values([]), SCHEMA)
    assert len(out.frame) == 0 and out.dead == []
    assert list(out.frame.columns) == FIELDS + META
    assert out.frame.dtypes.equals(empty_frame(SCHEMA).dtypes)


def test_bad_configuration_raises_a_named_error() -> None:
    with pytest.raises(DecodeError, match="backend 'tpu'"):
        Decoder(SCHEMA, backend="tpu")
    bad_default = Schema(fields=(FieldSpec(name="t", type="timestamp"),
                                 FieldSpec(name="x", type="float", required=False, default="high")),
                         event_time=EventTime(field="t"))
    with pytest.raises(DecodeError, match="field 'x'"):
        Decoder(bad_default)


def test_gpu_backend_returns_a_cudf_frame(seed: int) -> None:
    pytest.importorskip("cudf", reason="GPU backend needs cuDF and an NVIDIA GPU; none on this machine")
    out = decode_batch(_batch([encode(good_event(random.Random(seed)))]), SCHEMA, backend="gpu")
    assert type(out.frame).__module__.startswith("cudf") and len(out.frame) == 1


def test_layout_preference_adapts_to_epoch_topics_but_returns_to_timestamps(seed: int) -> None:
    rng = random.Random(seed)
    decoder = Decoder(SCHEMA)
    docs = [good_event(rng) for _ in range(100)]
    epoch = [encode({**d, "event_time": 1_800_000_000.5}) for d in docs]
    assert len(decoder.decode(_batch(epoch)).frame) == 100
    assert decoder._ts_kinds[0] == "number"
    for suffix in ("000000Z", " UTC"):  # nanosecond digits, a " UTC" zone: Arrow's timestamp reader rejects both
        text = [encode({**d, "event_time": d["event_time"][:-1] + suffix}) for d in docs]
        assert len(decoder.decode(_batch(text)).frame) == 100
        # reading them as text first saves a failing parse per batch
        assert decoder._ts_kinds == ["string", "timestamp", "number"]
    # text Arrow reads unaided: back to the faster timestamp layout
    assert len(decoder.decode(_batch([encode(d) for d in docs])).frame) == 100
    assert decoder._ts_kinds == ["timestamp", "string", "number"]
