"""Fuzz through the real broker: 10,000 bad records of every kind among good ones.

Every bad record must reach the dead-letter topic and the dead-letter Parquet folder with the right reason and
its original bytes and coordinates; every good record must be delivered decoded; the source must stay up.
The loop is a partition group's source path (``engine/group.py``): poll a batch, decode it, make its dead
letters durable, then commit its offsets.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.broker import EmbeddedBroker
from streams.deadletter import DeadLetter, DeadLetterSink, Reason
from streams.decode import Decoded, Decoder
from streams.faults import MAKERS, mixed_records
from streams.kafka_sink import KafkaSink
from streams.kafka_source import KafkaBatchSource
from streams.schema import STATION_ALARM

pytestmark = pytest.mark.integration

N_GOOD, N_BAD, PARTITIONS = 30_000, 10_000, 4
SCHEMA = STATION_ALARM.model_copy(update={"max_message_bytes": 4096})


def _read_all(broker: EmbeddedBroker, topic: str, n: int, timeout_s: float = 60) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "fuzz-reader",
                         "enable.auto.commit": False})
    out: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            out += [m.value() for m in consumer.consume(10_000, 0.5) if m.error() is None]
    finally:
        consumer.close()
    return out


def test_fuzzed_stream_splits_exactly_into_rows_and_dead_letters(broker: EmbeddedBroker, tmp_path: Path,
                                                                   seed: int) -> None:
    topic, dead_topic = "fuzz-events", "fuzz-dead"
    broker.create_topic(topic, PARTITIONS)
    broker.create_topic(dead_topic, 1)
    settings = {"bootstrap.servers": broker.bootstrap}
    records = mixed_records(N_GOOD, N_BAD, seed)
    keys = [f"rec-{i}".encode() for i in range(len(records))]
    expected = {k: why for k, (_, why) in zip(keys, records, strict=True)}
    values = {k: v for k, (v, _) in zip(keys, records, strict=True)}
    with KafkaSink(settings, topic, extra={"message.max.bytes": 10_000_000}) as sink:
        sink.write([v for v, _ in records], keys)
    # every reason decoding a JSON topic can produce (invalid_csv belongs to CSV topics, late_event to the
    # windows after scoring), in equal shares
    json_reasons = [r for r in Reason if r not in (Reason.INVALID_CSV, Reason.LATE_EVENT)]
    assert list(MAKERS) == json_reasons
    assert Counter(why for _, why in records if why) == {
        r: N_BAD // len(json_reasons) + (i < N_BAD % len(json_reasons)) for i, r in enumerate(json_reasons)}

    dead_sink = DeadLetterSink(KafkaSink(settings, dead_topic), directory=tmp_path / "dead")
    decoder = Decoder(SCHEMA)
    batches: list[Decoded] = []
    read = 0
    with KafkaBatchSource(settings, topic, group_id="fuzz", max_messages=4_000) as source:
        try:
            deadline = time.monotonic() + 120
            while read < len(records) and time.monotonic() < deadline:
                raw = source.poll_batch()
                if raw is None:
                    continue
                decoded = decoder.decode(raw)  # bad records never raise: they come back as dead letters
                assert len(decoded.frame) + len(decoded.dead) == len(raw)
                dead_sink.write(decoded.dead)
                dead_sink.flush()  # durable before the commit, as the group's commit order has it
                source.commit(raw.next_offsets())
                batches.append(decoded)
                read += len(raw)
            assert source.poll_batch() is None  # the source is still up, with nothing left to read
            committed = source.committed()
        finally:
            dead_sink.close()
        source_snap = source.metrics.snapshot()
    assert read == len(records)
    assert sum(committed.values()) == len(records)  # a fresh topic: next offsets add up to the record count

    delivered = [k for b in batches for k in b.frame["_key"]]
    assert len(delivered) == N_GOOD
    assert sorted(delivered) == sorted(k.decode() for k, why in expected.items() if why is None)
    for b in batches:
        assert b.frame[["value", "valueThreshold"]].notna().all().all()

    letters = [DeadLetter.from_json(v) for v in _read_all(broker, dead_topic, N_BAD)]
    assert len(letters) == N_BAD
    assert {d.key: d.reason for d in letters} == {k: why for k, why in expected.items() if why is not None}
    assert all(d.value == values[d.key] and d.topic == topic and d.detail for d in letters)  # type: ignore[index]
    coordinates = {(d.partition, d.offset) for d in letters}
    assert len(coordinates) == N_BAD

    table = pq.read_table(sorted((tmp_path / "dead").glob("*.parquet")))
    assert set(zip(table.column("partition").to_pylist(), table.column("offset").to_pylist(),
                   strict=True)) == coordinates
    assert Counter(table.column("reason").to_pylist()) == Counter(d.reason.value for d in letters)
    snap = dead_sink.metrics.snapshot()
    assert sum(v for k, v in snap.items() if k.startswith("dead_letters{")) == N_BAD
    assert Counter({k: int(v) for k, v in snap.items() if k.startswith("dead_letters{")}) == Counter(
        f"dead_letters{{reason={d.reason.value}}}" for d in letters)
    assert sum(len(b.frame) for b in batches) == N_GOOD
    assert source_snap["source_records"] == N_GOOD + N_BAD
