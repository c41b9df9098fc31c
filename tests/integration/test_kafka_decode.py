"""The engine's source path on the real broker: ``KafkaBatchSource.poll_batch -> Decoder.decode -> commit``.

This is what a partition group (``engine/group.py``) does per batch before features and scoring: decoded
batches stay within the batch bound, commits land, and a new source resumes right after the committed
offsets; CSV topics decode and dead-letter as JSON ones do.
"""

from __future__ import annotations

import csv
import io
import random
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.broker import EmbeddedBroker
from streams.deadletter import Reason
from streams.decode import Decoded, Decoder
from streams.faults import encode, good_event
from streams.kafka_sink import KafkaSink
from streams.kafka_source import KafkaBatchSource
from streams.records import RawBatch
from streams.schema import STATION_ALARM
from tests.topics import fresh_topic

pytestmark = pytest.mark.integration

def _topic(broker: EmbeddedBroker, partitions: int) -> str:
    return fresh_topic(broker, "decode", partitions)


def _produce_events(broker: EmbeddedBroker, topic: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    docs = [good_event(rng) for _ in range(n)]
    with KafkaSink({"bootstrap.servers": broker.bootstrap}, topic) as sink:
        sink.write([encode(d) for d in docs], [d["datapoint_id"].encode() for d in docs])


def _read(source: KafkaBatchSource, decoder: Decoder, n: int,
          timeout_s: float = 60.0) -> list[tuple[RawBatch, Decoded]]:
    """Poll and decode until ``n`` records (rows plus dead letters) arrived; fail if they do not in time."""
    out: list[tuple[RawBatch, Decoded]] = []
    got = 0
    deadline = time.monotonic() + timeout_s
    while got < n:
        if time.monotonic() > deadline:
            pytest.fail(f"read {got} of {n} records from {source.topic!r} in {timeout_s:.0f} s")
        raw = source.poll_batch()
        if raw is not None:
            decoded = decoder.decode(raw)
            out.append((raw, decoded))
            got += len(decoded.frame) + len(decoded.dead)
    return out


def _coordinates(batches: list[tuple[RawBatch, Decoded]]) -> list[tuple[int, int]]:
    return [(int(p), int(o)) for _, d in batches
            for p, o in zip(d.frame["_partition"], d.frame["_offset"], strict=True)]


def _committed(broker: EmbeddedBroker, topic: str, group: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets as a separate client sees them."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps}


def test_decoded_batches_commit_and_a_new_source_resumes_after_the_commit(broker: EmbeddedBroker,
                                                                          seed: int) -> None:
    topic, n, group = _topic(broker, 3), 20_000, "decode-resume"
    _produce_events(broker, topic, n, seed)
    settings = {"bootstrap.servers": broker.bootstrap}
    decoder = Decoder(STATION_ALARM)
    done: dict[int, int] = {}
    with KafkaBatchSource(settings, topic, group_id=group, max_messages=1_500) as source:
        first = _read(source, decoder, n // 2)
        # every batch but the last has its outputs durable: commit up to it, then "crash" with the last one
        # polled and decoded but not committed, as a group does between two commits
        for raw, _ in first[:-1]:
            done.update(raw.next_offsets())
            source.commit(dict(done))
        # a partition with no commit yet reports a negative offset (librdkafka's OFFSET_INVALID)
        assert {p: o for p, o in source.committed().items() if o >= 0} == done
        assert set(source.lag()) <= {0, 1, 2}
        snap = source.metrics.snapshot()
    assert snap["source_commits"] == len(first) - 1
    assert snap["source_records"] == sum(len(raw) for raw, _ in first)
    assert {p: o for p, o in _committed(broker, topic, group, 3).items() if o >= 0} == done
    assert all(len(raw) <= 1_500 and len(raw) == len(d.frame) and not d.dead for raw, d in first)
    kept = first[:-1]
    with KafkaBatchSource(settings, topic, group_id=group, max_messages=1_500) as source:  # start="committed"
        second = _read(source, decoder, n - sum(len(raw) for raw, _ in kept))
        assert source.poll_batch() is None  # nothing more: no record read twice trailing
    resumed: dict[int, int] = {}
    for p, o in _coordinates(second):
        resumed.setdefault(p, o)
    # each partition starts exactly at its committed offset (0 where nothing was committed yet)
    assert resumed == {p: done.get(p, 0) for p in resumed}
    assert set(resumed) | set(done) == {0, 1, 2}
    coords = _coordinates(kept + second)
    assert len(coords) == n and len(set(coords)) == n  # nothing lost, nothing twice
    for _, d in kept + second:
        assert d.frame[["value", "valueThreshold"]].notna().all().all()
        assert str(d.frame[STATION_ALARM.event_time.field].dtype) == "datetime64[us, UTC]"


def test_csv_topic_decodes_and_dead_letters_on_the_real_broker(broker: EmbeddedBroker, seed: int) -> None:
    """``schema.format: csv``: good records arrive once as rows, bad ones as dead letters with their reason."""
    topic, n = _topic(broker, 2), 3_000
    rng = random.Random(seed)
    names = [f.name for f in STATION_ALARM.fields]

    def row(doc: dict) -> bytes:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow([str(doc[k]).lower() if isinstance(doc[k], bool) else doc[k]
                                                     for k in names])
        return out.getvalue().encode()

    values = [row(good_event(rng)) for _ in range(n)]
    bad = {7: b"ST1,ST1-DP1", 1500: b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,abc,2.0,true"}
    for at, value in bad.items():
        values[at] = value
    with KafkaSink({"bootstrap.servers": broker.bootstrap}, topic) as sink:
        sink.write(values, [str(i % 2).encode() for i in range(n)], partitions=[i % 2 for i in range(n)])
    schema = STATION_ALARM.model_copy(update={"format": "csv"})
    with KafkaBatchSource({"bootstrap.servers": broker.bootstrap}, topic, group_id="csv") as source:
        seen = _read(source, Decoder(schema), n)
    dead = sorted((d.reason, d.partition, d.offset) for _, b in seen for d in b.dead)
    assert dead == sorted([(Reason.INVALID_CSV, 1, 3), (Reason.WRONG_TYPE, 0, 750)])
    assert all(d.topic == topic and d.value == values[2 * d.offset + d.partition] for _, b in seen for d in b.dead)
    assert sum(len(b.frame) for _, b in seen) == n - 2
    assert len(set(_coordinates(seen))) == n - 2
