"""Committers: how a partition group makes its outputs and input offsets durable, in one step per interval.

A partition group buffers an interval's topic records and hands them to :meth:`Committer.commit` with the
offsets, after the lake files and the checkpoint of the same offsets are on disk (from its commit thread, so
the group reads and scores on meanwhile):

- :class:`TransactionalCommitter` (``delivery: exactly_once``): one producer per partition group with a
  ``transactional.id`` derived from the group, so a restarted group fences its zombie. Each commit is one
  transaction carrying the records and the input offsets (``send_offsets_to_transaction``): a
  ``read_committed`` reader sees every record once, whenever the crash came.
- :class:`AtLeastOnceCommitter`: records are produced and flushed, then the offsets are committed; a crash
  between the two repeats the interval's records.

Producing at commit time, not as batches are scored, keeps a transaction open for milliseconds: on brokers
that do not hide aborted records from ``read_committed`` readers (tansu 0.6) that shrinks the window in which
a crash can leave visible duplicates to the time of one produce-and-commit.
"""

from __future__ import annotations

from typing import Any, Protocol

from engine.steps import TopicRecords
from streams.kafka_sink import KafkaSink, SinkError


class Committer(Protocol):
    """Makes an interval's topic records durable together with its input offsets."""

    def commit(self, offsets: dict[int, int], records: list[TopicRecords]) -> None: ...
    def close(self) -> None: ...


class OffsetSource(Protocol):
    topic: str

    def commit(self, offsets: dict[int, int]) -> None: ...
    def group_metadata(self) -> Any: ...


def _produce(sink: KafkaSink, records: list[TopicRecords]) -> int:
    n = 0
    for r in records:
        if r.values:
            sink.write(r.values, r.keys, topic=r.topic)
            n += len(r.values)
    return n


class AtLeastOnceCommitter:
    """Produce, wait for every acknowledgement, then commit the consumer's offsets."""

    def __init__(self, settings: dict[str, Any], source: OffsetSource, *, default_topic: str) -> None:
        self.source = source
        self.sink = KafkaSink(settings, default_topic)
        self.sent_records = 0

    def commit(self, offsets: dict[int, int], records: list[TopicRecords]) -> None:
        self.sent_records += _produce(self.sink, records)
        self.sink.flush()
        if offsets:
            self.source.commit(offsets)

    def close(self) -> None:
        self.sink.close()


class TransactionalCommitter:
    """One Kafka transaction per commit: the records plus the input offsets."""

    def __init__(self, settings: dict[str, Any], source: OffsetSource, *, transactional_id: str,
                 default_topic: str) -> None:
        self.topic = source.topic
        # taken once: the consumer is busy in the group's loop while commits run on the commit thread, and an
        # assigned (not subscribed) consumer's group metadata never changes
        self.group_metadata = source.group_metadata()
        # init_transactions (in KafkaSink) fences an older producer of the same id and aborts its open work
        self.sink = KafkaSink(settings, default_topic, transactional_id=transactional_id)
        self.sent_records = 0

    def commit(self, offsets: dict[int, int], records: list[TopicRecords]) -> None:
        if not records and not offsets:
            return
        self.sink.begin()
        try:
            self.sent_records += _produce(self.sink, records)
            self.sink.commit_transaction(offsets or None, self.group_metadata if offsets else None,
                                         input_topic=self.topic)
        except (SinkError, BufferError) as err:
            try:
                self.sink.abort()
            except Exception:  # noqa: BLE001 - the commit error is the one to report
                pass
            msg = f"transaction of offsets {offsets} failed: {err}"
            raise SinkError(msg) from err

    def close(self) -> None:
        self.sink.close()


class MemoryCommitter:
    """In-memory outputs for tests: committed records per topic and the committed offsets."""

    def __init__(self) -> None:
        self.topics: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self.offsets: dict[int, int] = {}
        self.commits = 0
        self.sent_records = 0

    def commit(self, offsets: dict[int, int], records: list[TopicRecords]) -> None:
        for r in records:
            keys = r.keys if r.keys is not None else [None] * len(r.values)
            self.topics.setdefault(r.topic, []).extend(zip(keys, r.values, strict=True))
            self.sent_records += len(r.values)
        self.offsets.update(offsets)
        self.commits += 1

    def values(self, topic: str) -> list[bytes]:
        return [v for _, v in self.topics.get(topic, [])]

    def close(self) -> None:
        pass
