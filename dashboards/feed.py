"""One background Kafka consumer that reads a few topics (from the beginning, or their last records) and hands
each batch to a handler.

``assign()`` to explicit partitions, not a consumer group: a group join takes ~20 s on the embedded tansu
broker and the dashboard commits nothing, so a group buys nothing. Topics that do not exist yet (the dashboard
usually starts before the engine creates its output topics) are picked up by re-reading metadata, and new
partitions are added with ``incremental_assign``. The loop never dies on a bad batch: handler and broker
errors are logged and counted, and it keeps reading until :meth:`KafkaFeed.stop`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from dashboards.timings import Timings

log = logging.getLogger(__name__)

#: ``handler(values, timestamps_s)`` for one topic's share of a consumed batch
Handler = Callable[[list[bytes], list[float]], object]

#: a reader of small records: a modest fetch size keeps memory low; the dashboard commits nothing
CONSUMER_DEFAULTS: dict[str, Any] = {
    "group.id": "isostream-dashboard",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "fetch.wait.max.ms": 100,
    "queued.max.messages.kbytes": 64 * 1024,
    "log.connection.close": False,  # idle connections closed by the broker are not worth a log line
}


class KafkaFeed:
    """Reads ``handlers``' topics on one thread; ``handlers[topic](values, timestamps_s)`` per batch."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        handlers: Mapping[str, Handler],
        *,
        max_messages: int = 5_000,
        poll_timeout_s: float = 0.2,
        metadata_interval_s: float = 10.0,
        tail: Mapping[str, int] | None = None,
    ) -> None:
        self.settings = {**CONSUMER_DEFAULTS, **settings}
        self.handlers = dict(handlers)
        # topic -> records per partition to start before the end: a day of scores is far more than a chart
        # shows; offsets by time would be better, but tansu answers every timestamp lookup with offset 0
        self.tail = dict(tail or {})
        self.max_messages = max_messages
        self.poll_timeout_s = poll_timeout_s
        self.metadata_interval_s = metadata_interval_s
        self.errors = 0  # broker / handler errors survived (read by tests and the KPI row)
        self.records = 0  # handed to the handlers: what the server's CPU is spent on when no one watches
        # where data-to-screen latency goes before the dashboard's clock: a batch's newest Kafka timestamp to
        # its hand-over (the broker, the producer's transaction, this thread), and how long its handlers took
        self.delays = Timings()
        self.handling = Timings()
        self._assigned: set[tuple[str, int]] = set()
        self._unreachable = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def assigned(self) -> set[tuple[str, int]]:
        """(topic, partition) pairs being read."""
        return set(self._assigned)

    def start(self) -> None:
        """Create the consumer here (a bad setting raises in the caller) and start reading on a thread."""
        if self.running:
            return
        self._stop.clear()
        self._consumer = Consumer(self.settings)
        self._thread = threading.Thread(target=self._run, name="isostream-dashboard-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop reading and close the consumer (on its own thread: librdkafka handles are not shared)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                log.warning("dashboard feed did not stop within %.0fs", timeout_s)
            self._thread = None

    # -- the thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        next_metadata = 0.0
        try:
            while not self._stop.is_set():
                try:
                    now = time.monotonic()
                    if now >= next_metadata:
                        complete = self._discover(consumer)
                        # poll metadata often until every topic exists, then only to notice new partitions
                        next_metadata = now + (self.metadata_interval_s if complete else 1.0)
                    if not self._assigned:
                        self._stop.wait(0.2)
                        continue
                    msgs = self._next_batch(consumer)
                    if msgs:
                        self._dispatch(msgs)
                except Exception:  # noqa: BLE001 - the feed must outlive broker hiccups and bad batches
                    self.errors += 1
                    log.exception("dashboard feed: error while reading; retrying")
                    self._stop.wait(1.0)
        finally:
            try:
                consumer.close()
            except KafkaException as err:  # closing a consumer whose broker is gone
                log.warning("dashboard feed: close failed: %s", err)
            self._consumer = None

    def _next_batch(self, consumer: Consumer) -> list[Message]:
        """What has arrived, handed over as soon as there is something: wait for one record, then take the
        rest already fetched without waiting.

        Not ``consume(n, timeout)`` alone: librdkafka returns from it only when ``n`` records are there or the
        timeout has passed, so at the dashboard's rates every batch waited the whole timeout (measured against
        tansu, records 50 ms apart: 133 ms p50 / 234 ms p95 from produce to hand-over; this way 24 / 50 ms).
        """
        first = consumer.poll(self.poll_timeout_s)
        if first is None:
            return []
        if self.max_messages <= 1:
            return [first]
        return [first, *consumer.consume(num_messages=self.max_messages - 1, timeout=0)]

    def _discover(self, consumer: Consumer) -> bool:
        """Assign (from the beginning) partitions of wanted topics that appeared; True when all exist."""
        try:
            # no topic argument: asking for a missing topic by name may auto-create it on some brokers
            meta = consumer.list_topics(timeout=2)  # bounds how long stop() can wait
        except KafkaException as err:
            # say it once, not every retry: a dashboard started before its broker is normal
            (log.debug if self._unreachable else log.warning)("dashboard feed: no metadata yet: %s", err)
            self._unreachable = True
            return False
        if self._unreachable:
            log.info("dashboard feed: broker reachable again")
            self._unreachable = False
        new: list[TopicPartition] = []
        complete = True
        for topic in self.handlers:
            info = meta.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                complete = False
                continue
            for part in sorted(info.partitions):
                if (topic, part) not in self._assigned:
                    new.append(TopicPartition(topic, part, self._start(consumer, topic, part)))
        if new:
            consumer.incremental_assign(new)
            self._assigned.update((tp.topic, tp.partition) for tp in new)
            log.info("dashboard feed: reading %s", sorted((tp.topic, tp.partition) for tp in new))
        return complete

    def _start(self, consumer: Consumer, topic: str, partition: int) -> int:
        back = self.tail.get(topic)
        if back is None:
            return OFFSET_BEGINNING
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=2)
        except KafkaException as err:
            log.warning("dashboard feed: no watermarks for %s[%d] (%s); reading it from the beginning",
                        topic, partition, err)
            return OFFSET_BEGINNING
        return int(max(low, high - back))

    def _dispatch(self, msgs: list[Message]) -> None:
        by_topic: dict[str, tuple[list[bytes], list[float]]] = {}
        wall = time.time()
        newest = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.errors += 1
                    log.warning("dashboard feed: %s", err)
                continue
            _kind, ts_ms = m.timestamp()
            newest = max(newest, ts_ms)
            values, stamps = by_topic.setdefault(str(m.topic()), ([], []))
            values.append(m.value() or b"")  # a tombstone is a bad record, counted by the handler
            stamps.append(ts_ms / 1000.0 if ts_ms > 0 else wall)
        if newest > 0:
            self.delays.add(wall * 1000.0 - newest)
        started = time.perf_counter()
        for topic, (values, stamps) in by_topic.items():
            self.records += len(values)
            try:
                self.handlers[topic](values, stamps)
            except Exception:  # noqa: BLE001 - one broken batch must not stop the charts
                self.errors += 1
                log.exception("dashboard feed: handler for %r failed on %d records", topic, len(values))
        if by_topic:
            self.handling.add((time.perf_counter() - started) * 1000.0)

    def timing(self) -> dict[str, dict[str, float | int | None]]:
        """Recent batches: ms from the newest record's Kafka timestamp to hand-over, and in the handlers."""
        return {"delay_ms": self.delays.summary(), "handler_ms": self.handling.summary()}

    def status(self) -> dict[str, Any]:
        """:meth:`timing`, and the records handed over so far (``/status.json``'s ``feed``)."""
        return {**self.timing(), "records": self.records}
