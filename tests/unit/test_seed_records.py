"""The seeds' own records decode with the demo schema (issue 9): integer ids into string fields, ``... UTC`` times.

Seed 001's sample record: ``{"station_id": 1161115016, "datapoint_id": 121, "alarm_id": 308,
"event_time": "2017-02-18 18:28:05 UTC", "value": ..., "valueThreshold": ..., "isActive": ...}``.
Every test runs the bulk (pyarrow) path and the per-record path, which must agree.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.decode as decode_mod
from streams.deadletter import Reason
from streams.decode import Decoder
from streams.records import RawBatch
from streams.schema import EventTime, FieldSpec, Schema

DEMO = Schema.model_validate(yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
                                            .read_text())["schema"])
IDS = ("station_id", "datapoint_id", "alarm_id")
#: records that pass the framing pre-checks but fail the bulk parse: a small batch holding one is read record by
#: record, neighbours included
BROKEN = {"json": b'{"station_id": 1161115016, "oops"}', "csv": b"1161115016,121"}


def seed_record(rng: random.Random, *, fraction: bool = False) -> dict[str, Any]:
    """One record as seed 001 writes it."""
    value = round(rng.uniform(-20, 400), 3)
    threshold = float(rng.choice([50, 100, 250]))
    second = rng.randrange(1_487_000_000, 1_490_000_000)
    stamp = pd.Timestamp(second, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")
    if fraction:
        stamp += f".{rng.randrange(1_000_000):06d}"
    return {"station_id": rng.randrange(1_000_000_000, 2_000_000_000), "datapoint_id": rng.randrange(1, 500),
            "alarm_id": rng.randrange(1, 1000), "event_time": stamp + " UTC", "value": value,
            "valueThreshold": threshold, "isActive": value > threshold}


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _decode(values: list[bytes], schema: Schema = DEMO) -> decode_mod.Decoded:
    return Decoder(schema).decode(RawBatch.from_values(values))


def _per_record(values: list[bytes], schema: Schema = DEMO) -> decode_mod.Decoded:
    """``values`` decoded through the per-record path (at most 31 of them), the broken last record left out."""
    assert len(values) < decode_mod.LEAF_RECORDS
    out = _decode([*values, BROKEN[schema.format]], schema)
    assert [d.offset for d in out.dead].count(len(values)) == 1
    out.dead = [d for d in out.dead if d.offset != len(values)]
    return out


def _expected_times(docs: list[dict[str, Any]]) -> list[pd.Timestamp]:
    return [pd.Timestamp(d["event_time"].removesuffix(" UTC"), tz="UTC") for d in docs]


def test_seed_records_decode_with_the_demo_schema_on_the_bulk_path(seed: int,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    docs = [seed_record(rng, fraction=i % 3 == 0) for i in range(3_000)]
    read_one_by_one: list[int] = []
    real = decode_mod.parse_records
    monkeypatch.setattr(decode_mod, "parse_records", lambda *a: read_one_by_one.append(len(a[2])) or real(*a))
    decoder = Decoder(DEMO)
    for _ in range(2):  # the first batch learns the layout, the second starts from it
        out = decoder.decode(RawBatch.from_values([_json(d) for d in docs]))
        assert out.dead == []
        for name in IDS:
            assert out.frame[name].tolist() == [str(d[name]) for d in docs]
        assert out.frame["event_time"].tolist() == _expected_times(docs)
        assert out.frame["value"].tolist() == [d["value"] for d in docs]
        assert out.frame["isActive"].tolist() == [d["isActive"] for d in docs]
    # the fast path took them all: integer ids read as int64, times as text (pyarrow's error text is relied on)
    assert read_one_by_one == []
    assert decoder._int_text == set(IDS) and decoder._ts_kinds[0] == "string"


def test_seed_record_sample_on_the_per_record_path_gives_the_same_row() -> None:
    sample = {"station_id": 1161115016, "datapoint_id": 121, "alarm_id": 308,
              "event_time": "2017-02-18 18:28:05 UTC", "value": 12.5, "valueThreshold": 100.0, "isActive": False}
    bulk, one = _decode([_json(sample)]), _per_record([_json(sample)])
    assert bulk.dead == [] and one.dead == []
    pd.testing.assert_frame_equal(bulk.frame, one.frame)
    row = bulk.frame.iloc[0]
    assert (row["station_id"], row["datapoint_id"], row["alarm_id"]) == ("1161115016", "121", "308")
    assert row["event_time"] == pd.Timestamp("2017-02-18T18:28:05Z")


def test_seed_records_as_csv(seed: int) -> None:
    rng = random.Random(seed)
    docs = [seed_record(rng, fraction=i % 2 == 0) for i in range(500)]
    schema = DEMO.model_copy(update={"format": "csv"})

    def row(d: dict[str, Any]) -> bytes:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow([str(d[f]).lower() if isinstance(d[f], bool) else d[f]
                                                     for f in schema.names])
        return out.getvalue().encode()

    for out in (_decode([row(d) for d in docs], schema), _per_record([row(d) for d in docs[:20]], schema)):
        n = len(out.frame)
        assert out.dead == []
        assert out.frame["station_id"].tolist() == [str(d["station_id"]) for d in docs[:n]]
        assert out.frame["event_time"].tolist() == _expected_times(docs[:n])


def test_string_and_integer_ids_mixed_in_one_batch(seed: int) -> None:
    rng = random.Random(seed)
    docs = [seed_record(rng) for _ in range(400)]
    for i, d in enumerate(docs):
        if i % 7 == 0:
            d["station_id"] = f"ST{d['station_id']}"
    out = _decode([_json(d) for d in docs])
    assert out.dead == []
    assert out.frame["station_id"].tolist() == [str(d["station_id"]) for d in docs]


_STRING_FIELD = Schema(fields=(FieldSpec(name="t", type="timestamp"), FieldSpec(name="id", type="string")),
                       event_time=EventTime(field="t"))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=decode_mod.LEAF_RECORDS - 1))
def test_any_int64_round_trips_exactly_into_a_string_field(ids: list[int]) -> None:
    values = [b'{"t":"2017-02-18 18:28:05 UTC","id":%d}' % i for i in ids]
    for out in (_decode(values, _STRING_FIELD), _per_record(values, _STRING_FIELD)):
        assert out.dead == [] and out.frame["id"].tolist() == [str(i) for i in ids]


@settings(max_examples=30, deadline=None)
@given(st.integers(2**63, 10**60) | st.integers(-(10**60), -(2**63) - 1))
def test_integers_beyond_int64_keep_their_digits_too(big: int) -> None:
    # the bulk parse cannot hold them; the record is read alone and keeps its exact text
    values = [b'{"t":"2017-02-18T18:28:05Z","id":%d}' % big, b'{"t":"2017-02-18T18:28:05Z","id":7}']
    out = _decode(values, _STRING_FIELD)
    assert out.dead == [] and out.frame["id"].tolist() == [str(big), "7"]


@pytest.mark.parametrize("bad", ["1.0", "1e3", "-2.5", "true", "false", "[1]", '{"n":1}'])
def test_floats_bools_and_containers_in_a_string_field_are_wrong_type(bad: str) -> None:
    values = [b'{"t":"2017-02-18T18:28:05Z","id":%s}' % bad.encode(), b'{"t":"2017-02-18T18:28:05Z","id":5}']
    for out in (_decode(values, _STRING_FIELD), _per_record(values, _STRING_FIELD)):
        assert [(d.offset, d.reason) for d in out.dead] == [(0, Reason.WRONG_TYPE)]
        assert "field 'id'" in out.dead[0].detail
        assert out.frame["id"].tolist() == ["5"]


def test_an_integer_too_long_for_python_is_a_dead_letter_not_a_crash() -> None:
    values = [b'{"t":"2017-02-18T18:28:05Z","id":' + b"7" * 5_000 + b"}", b'{"t":"2017-02-18T18:28:05Z","id":5}']
    out = _decode(values, _STRING_FIELD)
    assert [(d.offset, d.reason) for d in out.dead] == [(0, Reason.INVALID_JSON)]
    assert out.frame["id"].tolist() == ["5"]


GOOD_TIMES = {
    "2017-02-18 18:28:05 UTC": "2017-02-18T18:28:05Z",
    "2017-02-18 18:28:05.25 UTC": "2017-02-18T18:28:05.25Z",
    "2017-02-18 18:28:05.123456 UTC": "2017-02-18T18:28:05.123456Z",
    "2017-02-18T18:28:05 UTC": "2017-02-18T18:28:05Z",
    "2017-02-18T18:28:05Z": "2017-02-18T18:28:05Z",
    "2017-02-18 18:28:05Z": "2017-02-18T18:28:05Z",
    "2017-02-18T18:28:05.500+00:00": "2017-02-18T18:28:05.5Z",
    "2017-02-18T19:28:05+01:00": "2017-02-18T18:28:05Z",
}


def test_every_accepted_time_form_reads_the_same_alone_mixed_and_one_by_one(seed: int) -> None:
    base = seed_record(random.Random(seed))
    values = [_json({**base, "event_time": s}) for s in GOOD_TIMES]
    expected = [pd.Timestamp(v) for v in GOOD_TIMES.values()]
    for stamp, want in zip(GOOD_TIMES, expected, strict=True):  # a whole batch of one form: the bulk path
        out = _decode([_json({**base, "event_time": stamp})] * 50)
        assert out.dead == [] and set(out.frame["event_time"]) == {want}, stamp
    for out in (_decode(values), _per_record(values)):
        assert out.dead == [] and out.frame["event_time"].tolist() == expected


BAD_TIMES = ["2017-02-30 18:28:05 UTC", "2017-02-18 25:00:00 UTC", "yesterday UTC", " UTC", "UTC",
             "2017-02-18 18:28:05 PST", "2017-02-18 18:28:05 UTC UTC", "18:28:05 UTC"]


@pytest.mark.parametrize("stamp", BAD_TIMES)
def test_bad_timestamps_still_go_to_the_dead_letters_with_the_reason(stamp: str, seed: int) -> None:
    rng = random.Random(seed)
    docs = [seed_record(rng) for _ in range(60)]
    values = [_json(d) for d in docs]
    values[17] = _json({**docs[17], "event_time": stamp})
    for out, n_good in ((_decode(values), 59), (_per_record(values[10:20]), 9)):
        assert [(d.reason, d.value) for d in out.dead] == [(Reason.BAD_TIMESTAMP, values[17])], stamp
        assert "'event_time'" in out.dead[0].detail and "timestamp" in out.dead[0].detail
        assert len(out.frame) == n_good


def test_gpu_backend_decodes_seed_records_the_same(seed: int) -> None:
    pytest.importorskip("cudf", reason="GPU backend needs cuDF and an NVIDIA GPU; untested on this machine")
    docs = [seed_record(random.Random(seed)) for _ in range(100)]
    raw = RawBatch.from_values([_json(d) for d in docs])
    cpu, gpu = Decoder(DEMO).decode(raw), Decoder(DEMO, backend="gpu").decode(raw)
    assert gpu.dead == cpu.dead == []
    assert gpu.frame["station_id"].to_arrow().to_pylist() == cpu.frame["station_id"].tolist()
    assert gpu.frame["event_time"].to_arrow().cast("int64").to_pylist() == \
        cpu.frame["event_time"].astype("int64").tolist()
