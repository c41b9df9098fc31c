"""Dead letters: the topic format round-trips any bytes; the sink writes topic records and Parquet files."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.deadletter import DeadLetter, DeadLetterSink, Reason
from streams.metrics import Metrics


def _letter(i: int, reason: Reason = Reason.INVALID_JSON, key: bytes | None = b"k") -> DeadLetter:
    return DeadLetter(reason, f"detail {i}", "events", 2, 1_000 + i, key, b"\xff{" + bytes([i % 256]))


def test_reason_values_are_the_documented_strings() -> None:
    assert [r.value for r in Reason] == ["invalid_json", "invalid_csv", "invalid_encoding", "missing_field",
                                         "wrong_type", "non_finite", "oversize", "bad_timestamp", "late_event"]


@given(st.sampled_from(list(Reason)), st.text(), st.integers(0, 2**31 - 1), st.integers(0, 2**62),
       st.none() | st.binary(), st.binary())
def test_to_json_round_trips(reason: Reason, detail: str, partition: int, offset: int, key: bytes | None,
                             value: bytes) -> None:
    letter = DeadLetter(reason, detail, "events", partition, offset, key, value)
    doc = json.loads(letter.to_json())
    assert set(doc) == {"reason", "detail", "topic", "partition", "offset", "key", "value"}
    assert doc["reason"] == reason.value and base64.b64decode(doc["value"]) == value
    assert DeadLetter.from_json(letter.to_json()) == letter


class _ListWriter:
    """A fake at the sink interface: records what would be produced."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.keys: list[bytes | None] = []
        self.flushed = self.closed = 0

    def write(self, values: list[bytes], keys: list[bytes | None] | None = None) -> None:
        self.values += values
        self.keys += keys or [None] * len(values)

    def flush(self, timeout_s: float = 30.0) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed += 1


def test_sink_writes_topic_records_parquet_files_and_counts_by_reason(tmp_path: Path) -> None:
    writer, metrics = _ListWriter(), Metrics()
    sink = DeadLetterSink(writer, directory=tmp_path / "dead", metrics=metrics)
    letters = [_letter(i, Reason.INVALID_JSON if i % 3 else Reason.OVERSIZE, key=None if i == 4 else b"k")
               for i in range(9)]
    sink.write(letters)
    sink.write([])
    sink.flush()
    sink.close()
    assert [DeadLetter.from_json(v) for v in writer.values] == letters
    assert writer.keys[4] is None and writer.flushed == 1 and writer.closed == 1
    assert metrics.get("dead_letters", reason="invalid_json") == 6
    assert metrics.get("dead_letters", reason="oversize") == 3
    files = sorted((tmp_path / "dead").glob("*.parquet"))
    assert len(files) == 1 and not list((tmp_path / "dead").glob(".*"))
    table = pq.read_table(files[0])
    assert table.column("value").to_pylist() == [d.value for d in letters]
    assert table.column("offset").to_pylist() == [d.offset for d in letters]
    assert table.column("reason").to_pylist() == [d.reason.value for d in letters]


def test_sink_needs_a_destination() -> None:
    with pytest.raises(ValueError, match="somewhere to go"):
        DeadLetterSink(None)
