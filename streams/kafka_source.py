"""A Kafka source that keeps one consumer alive and reads in bulk, one bounded micro-batch per call.

librdkafka already prefetches in the background; calling ``consume(num_messages, timeout)`` in bulk and turning
the messages into a few flat arrays keeps Python out of the per-message path. Explicit ``assign()`` is the
default: it is immediate, whereas a consumer-group join can take many seconds; ``subscribe`` is there for
deployments that want the group to rebalance partitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from streams.metrics import Metrics
from streams.records import RawBatch

log = logging.getLogger(__name__)

#: throughput-oriented consumer defaults; anything in the user's settings wins
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
    "queued.max.messages.kbytes": 512 * 1024,
    "fetch.wait.max.ms": 50,
}


class KafkaSourceError(RuntimeError):
    """The source cannot read: topic missing, broker unreachable, or a fatal consumer error."""


class KafkaBatchSource:
    """Reads ``topic`` in micro-batches bounded by ``max_messages`` and ``max_wait_ms``."""

    def __init__(
        self,
        settings: dict[str, Any],
        topic: str,
        *,
        group_id: str,
        partitions: Sequence[int] | None = None,
        subscribe: bool = False,
        max_messages: int = 20_000,
        max_wait_ms: int = 200,
        start: Literal["committed", "earliest", "latest"] = "committed",
        metrics: Metrics | None = None,
        metadata_timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self.max_messages = max_messages
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics or Metrics()
        conf = {**CONSUMER_DEFAULTS, **settings, "group.id": group_id}
        conf.setdefault("auto.offset.reset", "latest" if start == "latest" else "earliest")
        self._consumer = Consumer(conf)
        self._position: dict[int, int] = {}
        self._closed = False
        if subscribe:
            self._consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        else:
            parts = list(partitions) if partitions is not None else self._partitions(metadata_timeout_s)
            self._assign(parts, start)

    # -- assignment --------------------------------------------------------------------------------------
    def _partitions(self, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while True:
            meta = self._consumer.list_topics(self.topic, timeout=max(deadline - time.monotonic(), 1.0))
            t = meta.topics.get(self.topic)
            if t is not None and t.error is None and t.partitions:
                return sorted(t.partitions)
            if time.monotonic() > deadline:
                msg = f"kafka source: topic {self.topic!r} not found (error: {t.error if t else 'absent'})"
                raise KafkaSourceError(msg)
            time.sleep(0.2)

    def _assign(self, partitions: list[int], start: str) -> None:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if start == "committed":
            committed = self._consumer.committed(tps, timeout=30)
            for tp in committed:
                if tp.offset < 0:
                    tp.offset = OFFSET_BEGINNING
            tps = committed
        else:
            for tp in tps:
                tp.offset = OFFSET_BEGINNING if start == "earliest" else OFFSET_END
        self._consumer.assign(tps)
        self._position = {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
        log.info("assigned %s", [(tp.partition, tp.offset) for tp in tps])

    def _on_assign(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        log.info("group assigned %s", [tp.partition for tp in tps])

    def _on_revoke(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self._position.pop(tp.partition, None)

    @property
    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment())

    # -- reading -----------------------------------------------------------------------------------------
    def poll_batch(self) -> RawBatch | None:
        """The next micro-batch, or None if nothing arrived within ``max_wait_ms``."""
        deadline = time.monotonic() + self.max_wait_s
        msgs: list = []
        while len(msgs) < self.max_messages:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got = self._consumer.consume(num_messages=self.max_messages - len(msgs), timeout=left)
            if got:
                msgs.extend(got)
            elif msgs:  # something arrived and the fetch queue is drained: ship it now, latency matters
                break
        if not msgs:
            return None
        good = [m for m in msgs if m.error() is None]
        if len(good) != len(msgs):
            self._handle_errors([m for m in msgs if m.error() is not None])
            if not good:
                return None
        values = [m.value() or b"" for m in good]  # a null value (tombstone) decodes as an invalid record
        batch = RawBatch(
            topic=self.topic,
            values=values,
            keys=[m.key() for m in good],
            partitions=np.fromiter((m.partition() for m in good), dtype=np.int32, count=len(good)),
            offsets=np.fromiter((m.offset() for m in good), dtype=np.int64, count=len(good)),
            timestamps_ms=np.fromiter((m.timestamp()[1] for m in good), dtype=np.int64, count=len(good)),
        )
        self._position.update(batch.next_offsets())
        self.metrics.inc("source_batches")
        self.metrics.inc("source_records", len(batch))
        self.metrics.inc("source_bytes", sum(map(len, values)))
        return batch

    def _handle_errors(self, errored: list) -> None:
        for m in errored:
            err: KafkaError = m.error()
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            self.metrics.inc("source_errors", code=err.name())
            if err.fatal():
                msg = f"kafka source: fatal consumer error on {self.topic!r}: {err}"
                raise KafkaSourceError(msg)
            log.warning("kafka source: %s", err)

    # -- offsets -----------------------------------------------------------------------------------------
    def commit(self, offsets: dict[int, int]) -> None:
        """Synchronously commit ``partition -> next offset`` for this source's group."""
        if not offsets:
            return
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as err:
            msg = f"kafka source: commit of {offsets} failed: {err}"
            raise KafkaSourceError(msg) from err
        self.metrics.inc("source_commits")

    def committed(self) -> dict[int, int]:
        """The group's committed offsets for the assigned partitions (-1 = none yet)."""
        tps = self._consumer.committed(self._consumer.assignment(), timeout=30)
        return {tp.partition: tp.offset for tp in tps}

    def lag(self) -> dict[int, int]:
        """Per partition: high watermark minus the next offset this source will read (from cached watermarks)."""
        out = {}
        for tp in self._consumer.assignment():
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            pos = self._position.get(tp.partition, low if low >= 0 else 0)
            out[tp.partition] = max(high - pos, 0)
            self.metrics.set_gauge("lag", out[tp.partition], partition=tp.partition)
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> KafkaBatchSource:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
