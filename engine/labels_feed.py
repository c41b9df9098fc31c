"""The labels topic -> the label store and ``metrics.json``, on one thread beside the engine.

Records are JSON objects, ``{"partition", "offset", "label"}`` or ``{"key", "event_time", "label"}`` (see
docs/labels.md). Every partition is read with ``assign()``, not a consumer group: a group join takes ~20 s on the
embedded tansu broker, and one reader needs no rebalancing. Where it got to is kept in a small durable file in
the store (``_feed_position.json``), written after each batch of labels is durable, so a restart resumes there;
a crash between the two re-reads one batch, which is harmless because the latest label of an event wins.

Bad records never stop the loop: they are counted, logged with their reason and kept in the store's
``rejects/`` folder. Broker, disk and lake errors are logged and retried.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from engine.config import Config
from streams.durable import atomic_write_bytes
from training.label_metrics import update_metrics
from training.label_store import LabelStore
from training.labels import REJECT_SCHEMA, empty_labels, parse_labels, records_to_frame

log = logging.getLogger(__name__)

POSITION_FILE = "_feed_position.json"
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",  # a kept position older than the topic's retention: read what is left
    "fetch.wait.max.ms": 200,
    "log.connection.close": False,
}


@dataclass
class FeedStats:
    """What the feed has done so far (read by tests and telemetry)."""

    records: int = 0
    stored: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    metrics_updates: int = 0
    errors: int = 0


class LabelsFeed:
    """Consumes ``cfg.kafka.topics.labels`` into ``LabelStore(cfg.labels_path)`` until ``stop`` is set.

    Labels are stored once ``flush_s`` has passed since the last store (or ``max_pending`` are waiting);
    ``metrics.json`` is refreshed at most every ``metrics_every_s`` after new labels, and every
    ``unmatched_retry_s`` while some labels have no prediction in the lake yet (it may be written later).
    """

    def __init__(self, cfg: Config, *, poll_s: float = 1.0, flush_s: float = 2.0, metrics_every_s: float = 5.0,
                 unmatched_retry_s: float = 60.0, max_pending: int = 100_000) -> None:
        self.cfg = cfg
        self.topic = cfg.kafka.topics.labels
        self.poll_s = poll_s
        self.flush_s = flush_s
        self.metrics_every_s = metrics_every_s
        self.unmatched_retry_s = unmatched_retry_s
        self.max_pending = max_pending
        self.store = LabelStore(cfg.labels_path)
        self.stats = FeedStats()
        self._pending: list[tuple[int, int, bytes]] = []
        self._positions = self._load_positions()
        self._assigned: set[int] = set()
        self._last_flush = time.monotonic()
        self._dirty = False  # labels stored since the last metrics refresh
        self._unmatched = 0

    @property
    def position_path(self) -> Path:
        return self.store.root / POSITION_FILE

    @property
    def positions(self) -> dict[int, int]:
        """The next offset to read per partition, as last made durable."""
        return dict(self._positions)

    def run(self, stop: threading.Event) -> None:
        consumer = Consumer({**CONSUMER_DEFAULTS, **self.cfg.kafka.client_settings(),
                             "group.id": f"{self.cfg.kafka.group_id}-labels"})
        next_metadata = next_metrics = 0.0
        try:
            while not stop.is_set():
                try:
                    now = time.monotonic()
                    if now >= next_metadata:
                        # often until the topic exists, then only to notice new partitions
                        next_metadata = now + (30.0 if self._discover(consumer) else 1.0)
                    if self._assigned and len(self._pending) < self.max_pending:
                        self._take(consumer.consume(num_messages=10_000, timeout=self.poll_s))
                    else:
                        stop.wait(min(self.poll_s, 0.5))
                    if self._pending and (time.monotonic() - self._last_flush >= self.flush_s
                                          or len(self._pending) >= self.max_pending):
                        self._flush()
                    if time.monotonic() >= next_metrics and (self._dirty or self._unmatched):
                        self._refresh()
                        next_metrics = time.monotonic() + (self.metrics_every_s if not self._unmatched
                                                           else self.unmatched_retry_s)
                except Exception:  # noqa: BLE001 - the feed outlives broker, disk and lake hiccups
                    self.stats.errors += 1
                    log.exception("labels feed: error on %r; retrying", self.topic)
                    stop.wait(1.0)
        finally:
            try:
                if self._pending:
                    self._flush()
                if self._dirty:
                    self._refresh()
            finally:
                try:
                    consumer.close()
                except KafkaException as err:
                    log.warning("labels feed: close failed: %s", err)

    # -- steps ---------------------------------------------------------------------------------------------
    def _discover(self, consumer: Consumer) -> bool:
        """Assign partitions of the labels topic not read yet, from the kept position; True once it exists."""
        try:
            meta = consumer.list_topics(timeout=2)  # no topic name: asking for one may auto-create it
        except KafkaException as err:
            log.debug("labels feed: no metadata yet: %s", err)
            return False
        info = meta.topics.get(self.topic)
        if info is None or info.error is not None or not info.partitions:
            return False
        new = [TopicPartition(self.topic, p, self._positions.get(p, OFFSET_BEGINNING))
               for p in sorted(info.partitions) if p not in self._assigned]
        if new:
            consumer.incremental_assign(new)
            self._assigned.update(tp.partition for tp in new)
            log.info("labels feed: reading %r partitions %s", self.topic, [tp.partition for tp in new])
        return True

    def _take(self, msgs: list[Message]) -> None:
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.stats.errors += 1
                    log.warning("labels feed: %s", err)
                continue
            partition, offset = m.partition(), m.offset()
            if partition is None or offset is None:
                continue
            self._pending.append((partition, offset, m.value() or b""))  # a tombstone is a bad record
        self.stats.records += sum(1 for m in msgs if m.error() is None)

    def _flush(self) -> None:
        """Store the pending records' labels and rejects durably, then move the kept position past them."""
        pending = self._pending
        rows = [f"{self.topic}[{p}]@{o}" for p, o, _ in pending]
        source = f"kafka:{self.topic}"
        labels, rejects = _parse(pending, rows, source)
        self._last_flush = time.monotonic()
        stored = self.store.add(labels)  # raises on a disk error: pending stays, retried next time
        n_bad = sum(self.store.add_rejects(r) for r in rejects)
        positions = dict(self._positions)
        for p, o, _ in pending:
            positions[p] = max(positions.get(p, 0), o + 1)
        atomic_write_bytes(self.position_path, json.dumps(
            {"topic": self.topic, "next_offsets": {str(p): n for p, n in sorted(positions.items())}}).encode())
        self._positions = positions
        self._pending = []
        self.stats.stored += stored
        self._dirty = self._dirty or stored > 0
        if n_bad:
            reasons = Counter(why for r in rejects for why in r["reason"])
            self.stats.rejected += n_bad
            self.stats.reasons.update(reasons)
            first = rejects[0].iloc[0]
            log.warning("labels feed: %d bad records on %r (%s), kept in %s; first: %s %s", n_bad, self.topic,
                        ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())), self.store.root / "rejects",
                        first["row"], first["reason"])

    def _refresh(self) -> None:
        self._dirty = False
        try:
            doc = update_metrics(self.cfg)
        except Exception:  # noqa: BLE001 - a lake being compacted or a bad file: say so, try again later
            self.stats.errors += 1
            self._dirty = True
            log.exception("labels feed: cannot refresh %s", self.store.root / "metrics.json")
            return
        self._unmatched = int(doc["unmatched"])
        self.stats.metrics_updates += 1

    def _load_positions(self) -> dict[int, int]:
        path = self.store.root / POSITION_FILE
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("topic") != self.topic:
                log.warning("labels feed: %s is for topic %r, not %r: reading from the beginning", path,
                            doc.get("topic"), self.topic)
                return {}
            return {int(p): int(n) for p, n in doc["next_offsets"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("labels feed: cannot read %s (%s): reading from the beginning", path, err)
            return {}


def _parse(pending: list[tuple[int, int, bytes]], rows: list[str], source: str) -> tuple[pd.DataFrame,
                                                                                  list[pd.DataFrame]]:
    """The labels of a batch of records and the frames of its rejects.

    Should the batch not parse (a record no rule foresaw), each record is parsed alone and those that fail
    are rejected with the error: one poison record must not hold the feed's position back for ever.
    """
    try:
        frame, kept, undecodable = records_to_frame([v for _, _, v in pending], rows, source=source)
        parsed = parse_labels(frame, source=source, rows=kept)
        return parsed.labels, [r for r in (undecodable, parsed.rejects) if len(r)]
    except Exception:  # noqa: BLE001 - see the docstring
        if len(pending) == 1:
            raise
        log.exception("labels feed: a batch of %d records did not parse; parsing them one by one", len(pending))
    labels: list[pd.DataFrame] = []
    rejects: list[pd.DataFrame] = []
    for record, row in zip(pending, rows, strict=True):
        try:
            one, bad = _parse([record], [row], source)
        except Exception as err:  # noqa: BLE001
            text = record[2].decode("utf-8", "replace")[:1000]
            bad = [pd.DataFrame([(source, row, f"unparseable: {err}", text)], columns=REJECT_SCHEMA.names)]
            one = empty_labels()
        labels.append(one)
        rejects += bad
    return pd.concat(labels, ignore_index=True), rejects


def run_labels_feed(cfg: Config, stop: threading.Event, *, poll_s: float = 1.0, flush_s: float = 2.0,
                    metrics_every_s: float = 5.0) -> None:
    """Consume ``cfg.kafka.topics.labels`` into the label store and ``metrics.json`` until ``stop`` is set.

    Meant as a thread's target: ``threading.Thread(target=run_labels_feed, args=(cfg, stop), daemon=True)``.
    """
    LabelsFeed(cfg, poll_s=poll_s, flush_s=flush_s, metrics_every_s=metrics_every_s).run(stop)
