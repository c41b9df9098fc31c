"""CSV messages (``schema.format: csv``): the same frames and the same dead-letter rules as JSON."""

from __future__ import annotations

import csv
import io
import random

import numpy as np
import pytest

from streams.deadletter import Reason
from streams.decode import Decoder
from streams.faults import encode, good_event
from streams.records import RawBatch
from streams.schema import STATION_ALARM, EventTime

CSV = STATION_ALARM.model_copy(update={"format": "csv"})
FIELDS = [f.name for f in STATION_ALARM.fields]


def _row(doc: dict, delimiter: str = ",") -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="").writerow(
        ["" if doc.get(f) is None else ("true" if doc[f] is True else "false" if doc[f] is False else doc[f])
         for f in FIELDS])
    return out.getvalue().encode()


def _batch(values: list[bytes]) -> RawBatch:
    return RawBatch.from_values(values, partition=1, first_offset=10, keys=[b"k"] * len(values))


def test_csv_and_json_of_the_same_events_decode_to_the_same_frame(seed: int) -> None:
    rng = random.Random(seed)
    docs = [good_event(rng) for _ in range(400)]
    docs[5]["alarm_id"] = None  # optional: takes its default
    docs[6]["station_id"] = "ST, with a comma"  # quoted by the writer
    from_csv = Decoder(CSV).decode(_batch([_row(d) for d in docs]))
    from_json = Decoder(STATION_ALARM).decode(_batch([encode({k: v for k, v in d.items() if v is not None})
                                                      for d in docs]))
    assert from_csv.dead == [] and from_json.dead == []
    assert from_csv.frame.equals(from_json.frame)
    assert from_csv.frame.loc[5, "alarm_id"] == "" and from_csv.frame.loc[6, "station_id"] == "ST, with a comma"


BAD = [
    (Reason.INVALID_CSV, b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,1.5"),  # too few columns
    (Reason.INVALID_CSV, b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,1.5,2.0,true,extra"),
    (Reason.INVALID_CSV, b'"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,1.5,2.0,true'),  # unclosed quote
    (Reason.INVALID_CSV, b""),  # empty / tombstone
    (Reason.INVALID_CSV, b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,1.5,2.0,true\nST2,ST2-DP1,AL1,x,1,2,true"),
    (Reason.WRONG_TYPE, b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,abc,2.0,true"),
    (Reason.WRONG_TYPE, b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,1.5,2.0,yes"),
    (Reason.MISSING_FIELD, b"ST1,,AL1,2026-11-24T00:00:00Z,1.5,2.0,true"),
    (Reason.MISSING_FIELD, b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,,2.0,true"),
    (Reason.NON_FINITE, b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,nan,2.0,true"),
    (Reason.NON_FINITE, b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,1.5,-inf,true"),
    (Reason.BAD_TIMESTAMP, b"ST1,ST1-DP1,AL1,yesterday,1.5,2.0,true"),
    (Reason.INVALID_ENCODING, b"ST\xff,ST1-DP1,AL1,2026-11-24T00:00:00Z,1.5,2.0,true"),
]


@pytest.mark.parametrize(("reason", "bad"), BAD)
def test_each_bad_record_is_dead_lettered_and_neighbours_survive(reason: Reason, bad: bytes, seed: int) -> None:
    rng = random.Random(seed)
    for at in (0, 17, 63):
        values = [_row(good_event(rng)) for _ in range(64)]
        values.insert(at, bad)
        out = Decoder(CSV).decode(_batch(values))
        assert [(d.reason, d.offset, d.value) for d in out.dead] == [(reason, 10 + at, bad)], out.dead
        assert out.dead[0].detail
        assert len(out.frame) == 64 and 10 + at not in set(out.frame["_offset"])


def test_other_delimiter_and_epoch_event_times(seed: int) -> None:
    rng = random.Random(seed)
    schema = CSV.model_copy(update={"csv_delimiter": ";", "event_time": EventTime(field="event_time", unit="auto")})
    docs = [good_event(rng) for _ in range(50)]
    for i, d in enumerate(docs):
        d["event_time"] = 1_790_000_000 + i if i % 2 else (1_790_000_000 + i) * 1000  # seconds and milliseconds
    out = Decoder(schema).decode(_batch([_row(d, ";") for d in docs]))
    assert out.dead == []
    seconds = out.frame["event_time"].astype("int64").to_numpy() // 1_000_000
    np.testing.assert_array_equal(seconds, 1_790_000_000 + np.arange(50))


def test_format_is_validated() -> None:
    with pytest.raises(ValueError, match="format"):
        STATION_ALARM.model_validate({**STATION_ALARM.model_dump(), "format": "xml"})
    with pytest.raises(ValueError, match="csv_delimiter"):
        STATION_ALARM.model_validate({**STATION_ALARM.model_dump(), "csv_delimiter": ";;"})
