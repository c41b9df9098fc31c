"""Property tests: whatever the mix, every record ends up exactly once, good as a row or bad with its reason."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.decode import decode_batch
from streams.faults import mixed_records
from streams.records import RawBatch
from streams.schema import STATION_ALARM

SCHEMA = STATION_ALARM.model_copy(update={"max_message_bytes": 4096})

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
stamp = st.datetimes(min_value=pd.Timestamp("1971-01-01").to_pydatetime(),
                     max_value=pd.Timestamp("2200-01-01").to_pydatetime())


@st.composite
def events(draw: st.DrawFn) -> dict:
    doc = {"station_id": draw(text), "datapoint_id": draw(text),
           "event_time": draw(stamp).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
           "value": draw(finite | st.integers(-(2**53), 2**53)), "valueThreshold": draw(finite)}
    if draw(st.booleans()):
        doc["alarm_id"] = draw(text)
    if draw(st.booleans()):
        doc["isActive"] = draw(st.booleans())
    return doc


@settings(max_examples=60, deadline=None)
@given(st.lists(events(), min_size=1, max_size=60), st.booleans())
def test_good_events_round_trip_exactly(docs: list[dict], ascii_only: bool) -> None:
    values = [json.dumps(d, ensure_ascii=ascii_only).encode() for d in docs]
    out = decode_batch(RawBatch.from_values(values), SCHEMA)
    assert out.dead == []
    frame = out.frame
    assert frame["station_id"].tolist() == [d["station_id"] for d in docs]
    assert frame["alarm_id"].tolist() == [d.get("alarm_id", "") for d in docs]
    assert frame["isActive"].tolist() == [d.get("isActive", False) for d in docs]
    assert frame["value"].tolist() == [float(d["value"]) for d in docs]
    assert frame["valueThreshold"].tolist() == [d["valueThreshold"] for d in docs]
    expected = pd.to_datetime([d["event_time"] for d in docs], utc=True).as_unit("us")
    assert (frame["event_time"].to_numpy() == expected.to_numpy()).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(0, 80), st.integers(0, 2**32))
def test_every_record_is_either_a_row_or_a_dead_letter_with_the_right_reason(
    n_good: int, n_bad: int, seed: int
) -> None:
    records = mixed_records(n_good, n_bad, seed)
    raw = RawBatch.from_values([r for r, _ in records], first_offset=1_000)
    out = decode_batch(raw, SCHEMA)
    expected_good = [1_000 + i for i, (_, why) in enumerate(records) if why is None]
    expected_dead = {1_000 + i: why for i, (_, why) in enumerate(records) if why is not None}
    assert out.frame["_offset"].tolist() == expected_good
    assert {d.offset: d.reason for d in out.dead} == expected_dead
    assert all(d.value == records[d.offset - 1_000][0] for d in out.dead)
    assert np.isfinite(out.frame[["value", "valueThreshold"]].to_numpy()).all()
    assert out.frame["event_time"].notna().all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_arbitrary_bytes_never_crash_and_are_accounted_for(values: list[bytes]) -> None:
    out = decode_batch(RawBatch.from_values(values), SCHEMA)
    assert len(out.frame) + len(out.dead) == len(values)
    assert sorted(out.frame["_offset"].tolist() + [d.offset for d in out.dead]) == list(range(len(values)))


def test_epoch_numbers_pick_seconds_or_milliseconds() -> None:
    base = {"station_id": "ST0001", "datapoint_id": "ST0001-DP01", "value": 1.0, "valueThreshold": 2.0}
    vals = [json.dumps({**base, "event_time": t}).encode() for t in (1.7e9, 1.7e12, 1_700_000_000.5)]
    out = decode_batch(RawBatch.from_values(vals), SCHEMA)
    secs = [t.timestamp() for t in out.frame["event_time"]]
    assert [math.isclose(a, b) for a, b in zip(secs, [1.7e9, 1.7e9, 1_700_000_000.5], strict=True)] == [True] * 3
