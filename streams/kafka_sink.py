"""A batched, compressed Kafka producer whose delivery failures are raised, never swallowed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "enable.idempotence": True,
}


class SinkError(RuntimeError):
    """Records could not be delivered; the message names the topic and the broker's errors."""


class KafkaSink:
    """Writes byte records to one topic; ``flush`` raises if any record since the last flush failed."""

    def __init__(
        self,
        settings: dict[str, Any],
        topic: str,
        *,
        compression: str = "lz4",
        linger_ms: int = 20,
        transactional_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        conf = {**PRODUCER_DEFAULTS, "compression.type": compression, "linger.ms": linger_ms, **settings,
                **(extra or {})}
        if transactional_id:
            conf["transactional.id"] = transactional_id
        self._producer = Producer(conf)
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        self.delivered = 0
        self.transactional = bool(transactional_id)
        if self.transactional:
            self._producer.init_transactions(30)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            if err is not None:
                self._errors.append(str(err))
            else:
                self.delivered += 1

    def write(self, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None,
              partitions: Sequence[int] | None = None, *, topic: str | None = None) -> None:
        """Queue records for delivery to ``topic`` (default: the sink's) while librdkafka's queue has room.

        Without ``partitions`` the producer's partitioner places each record by its key. One transactional
        sink writes every output topic of a transaction this way.
        """
        produce, cb = self._producer.produce, self._on_delivery
        topic = topic or self.topic
        for i, value in enumerate(values):
            key = keys[i] if keys is not None else None
            while True:
                try:
                    if partitions is None:
                        produce(topic, value, key, on_delivery=cb)
                    else:
                        produce(topic, value, key, partition=partitions[i], on_delivery=cb)
                    break
                except BufferError:  # local queue full: let deliveries complete, then retry this record
                    self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued record is acknowledged; raise :class:`SinkError` on any failure."""
        left = self._producer.flush(timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            shown = "; ".join(sorted(set(errors))[:5])
            msg = f"kafka sink {self.topic!r}: {len(errors)} records failed: {shown}"
            raise SinkError(msg)
        if left:
            msg = f"kafka sink {self.topic!r}: {left} records still undelivered after {timeout_s:.0f}s"
            raise SinkError(msg)

    # -- transactions (exactly-once building blocks) ----------------------------------------------------
    def begin(self) -> None:
        """Open a transaction (needs ``transactional_id``); records written until commit belong to it."""
        self._require_transactional("begin")
        self._producer.begin_transaction()

    def commit_transaction(self, offsets: dict[int, int] | None = None, group_metadata: Any = None, *,
                           input_topic: str | None = None, timeout_s: float = 30.0) -> None:
        """Commit the open transaction, atomically with the consumer's ``partition -> next offset`` when given.

        ``group_metadata`` is ``Consumer.consumer_group_metadata()`` of the consumer that read ``input_topic``.
        Raises :class:`SinkError` if a record of the transaction failed; call :meth:`abort` then.
        """
        self._require_transactional("commit_transaction")
        if offsets and (group_metadata is None or not input_topic):
            msg = f"kafka sink {self.topic!r}: committing offsets {offsets} needs group_metadata and input_topic"
            raise SinkError(msg)
        self.flush(timeout_s)  # delivery errors surface here, before anything is committed
        try:
            if offsets and input_topic:
                tps = [TopicPartition(input_topic, p, o) for p, o in offsets.items()]
                self._producer.send_offsets_to_transaction(tps, group_metadata, timeout_s)
            self._producer.commit_transaction(timeout_s)
        except KafkaException as err:
            msg = f"kafka sink {self.topic!r}: transaction commit failed: {err}"
            raise SinkError(msg) from err

    def abort(self, timeout_s: float = 30.0) -> None:
        """Abort the open transaction: its records are never visible to ``read_committed`` consumers."""
        self._require_transactional("abort")
        with self._lock:
            self._errors.clear()
        self._producer.abort_transaction(timeout_s)

    def _require_transactional(self, what: str) -> None:
        if not self.transactional:
            msg = f"kafka sink {self.topic!r}: {what}() needs a sink created with transactional_id"
            raise SinkError(msg)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush (raising on failures) and release the producer."""
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        try:
            if not self.transactional:
                self.flush(timeout_s)
            # nothing is outstanding now, so this returns at once (on a transactional sink it aborts an open
            # transaction); without it librdkafka keeps reconnecting to a broker that is gone until GC
            close = getattr(self._producer, "close", None)  # confluent-kafka >= 2.12
            if close is not None:
                close()
        finally:
            log.debug("sink %s closed in %.2fs", self.topic, time.monotonic() - started)

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
