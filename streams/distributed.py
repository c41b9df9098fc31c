"""Scale-out on Dask: one long-lived consumer per worker over a share of the partitions, taken over on loss.

:class:`PartitionSupervisor` splits the topic's partitions over the cluster's workers and runs
:func:`consume_partitions` on each as a long-running task (it ``secede``\\ s from the worker's thread pool, so
a worker can host several). Each task keeps one :class:`~streams.kafka_source.KafkaBatchSource` with explicit
``assign()`` for its partitions, decodes, hands every batch to the spec's ``handler`` (which must make the
outputs durable) and only then commits the batch's offsets. When a worker disappears the supervisor submits
its partitions to the least-loaded survivor; the new consumer starts from the committed offsets, so nothing
is lost (batches in flight at the crash are read again: at-least-once).

Progress (records, dead letters, lag per partition) is published with ``Worker.log_event`` under
:data:`EVENT_TOPIC` and read back by :meth:`PartitionSupervisor.progress`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Consumer
from distributed import Client, Event, Future, get_worker, secede, wait

from streams.deadletter import DeadLetterSink
from streams.decode import Decoded, Decoder
from streams.kafka_source import KafkaBatchSource, KafkaSourceError
from streams.records import RawBatch
from streams.schema import Schema

log = logging.getLogger(__name__)

EVENT_TOPIC = "isostream-consumer"
Handler = Callable[[RawBatch, Decoded], None]


class SupervisorError(RuntimeError):
    """A partition group keeps failing, or the cluster has no worker left to take it."""


@dataclass(frozen=True)
class ConsumerSpec:
    """What every worker's consumer does; pickled to the workers, so ``handler`` must be importable there."""

    settings: dict[str, Any]
    topic: str
    schema: Schema
    group_id: str
    handler: Handler
    max_messages: int = 20_000
    max_wait_ms: int = 200
    backend: str = "cpu"
    report_every_s: float = 1.0


def consume_partitions(spec: ConsumerSpec, partitions: list[int], stop_event: str, key: str) -> dict[str, Any]:
    """Long-running Dask task: read ``partitions`` until ``stop_event`` is set; returns the task's totals."""
    worker = get_worker()
    secede()  # leave the thread pool: this task runs for the life of the stream
    stop = Event(stop_event)
    totals: dict[str, Any] = {"key": key, "worker": worker.address, "partitions": partitions, "records": 0,
                              "dead": 0, "batches": 0}
    decoder = Decoder(spec.schema, spec.backend)
    with KafkaBatchSource(spec.settings, spec.topic, group_id=spec.group_id, partitions=partitions,
                          max_messages=spec.max_messages, max_wait_ms=spec.max_wait_ms) as source:
        checked = 0.0
        while True:
            now = time.monotonic()
            if now - checked >= spec.report_every_s:
                checked = now
                # event messages travel as msgpack: string keys only
                lag = {str(p): int(v) for p, v in source.lag().items()}
                worker.log_event(EVENT_TOPIC, {**totals, "lag": lag, "t": time.time()})
                if stop.is_set():
                    break
            raw = source.poll_batch()
            if raw is None:
                continue
            decoded = decoder.decode(raw)
            spec.handler(raw, decoded)  # durable outputs first ...
            source.commit(raw.next_offsets())  # ... then the offsets
            totals["records"] += len(decoded.frame)
            totals["dead"] += len(decoded.dead)
            totals["batches"] += 1
    worker.log_event(EVENT_TOPIC, {**totals, "lag": {}, "t": time.time(), "done": True})
    return totals


@dataclass
class _Group:
    key: str
    partitions: list[int]
    worker: str
    future: Future
    restarts: int = 0
    history: list[str] = field(default_factory=list)


class PartitionSupervisor:
    """Runs one consumer task per worker and moves a lost worker's partitions to survivors.

    >>> sup = PartitionSupervisor(client, spec)  # doctest: +SKIP
    >>> sup.start(); sup.watch()                 # doctest: +SKIP
    >>> sup.stop()                               # doctest: +SKIP
    """

    def __init__(self, client: Client, spec: ConsumerSpec, *, partitions: list[int] | None = None,
                 max_restarts: int = 5) -> None:
        self.client = client
        self.spec = spec
        self.partitions = partitions
        self.max_restarts = max_restarts
        self.groups: dict[str, _Group] = {}
        self.takeovers: list[dict[str, Any]] = []
        self._stop_name = f"isostream-stop-{uuid.uuid4().hex}"
        self._stop = Event(self._stop_name, client=client)
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._watching = threading.Event()

    # -- placement -------------------------------------------------------------------------------------
    def _workers(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def _topic_partitions(self) -> list[int]:
        consumer = Consumer({**self.spec.settings, "group.id": self.spec.group_id})
        try:
            meta = consumer.list_topics(self.spec.topic, timeout=30).topics.get(self.spec.topic)
        finally:
            consumer.close()
        if meta is None or meta.error is not None or not meta.partitions:
            msg = f"supervisor: topic {self.spec.topic!r} not found ({meta.error if meta else 'absent'})"
            raise KafkaSourceError(msg)
        return sorted(meta.partitions)

    def _submit(self, partitions: list[int], worker: str) -> _Group:
        key = f"consume-{self.spec.topic}-{'.'.join(map(str, partitions))}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(consume_partitions, self.spec, partitions, self._stop_name, key, key=key,
                                    workers=[worker], allow_other_workers=False, pure=False)
        return _Group(key, partitions, worker, future)

    def start(self) -> dict[str, list[int]]:
        """Spread the partitions round-robin over the current workers; returns worker -> partitions."""
        workers = self._workers()
        if not workers:
            msg = "supervisor: the Dask cluster has no workers"
            raise SupervisorError(msg)
        parts = self.partitions if self.partitions is not None else self._topic_partitions()
        with self._lock:
            for i, worker in enumerate(workers):
                mine = parts[i :: len(workers)]
                if mine:
                    group = self._submit(mine, worker)
                    self.groups[group.key] = group
        return self.assignment()

    def assignment(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for g in self.groups.values():
            out.setdefault(g.worker, []).extend(g.partitions)
        return {w: sorted(p) for w, p in sorted(out.items())}

    # -- failure handling ------------------------------------------------------------------------------
    def check(self) -> list[dict[str, Any]]:
        """Move groups whose worker is gone (or whose task failed) to the least-loaded live worker."""
        alive = set(self._workers())
        moved: list[dict[str, Any]] = []
        if self._stop.is_set():  # stopping: tasks end on purpose, nothing to take over
            return moved
        with self._lock:
            for key, g in list(self.groups.items()):
                lost = g.worker not in alive
                failed = g.future.status in ("error", "cancelled")
                if not (lost or failed):
                    continue
                reason = "worker lost" if lost else f"task {g.future.status}: {self._error_text(g.future)}"
                if g.restarts >= self.max_restarts:
                    msg = f"supervisor: partitions {g.partitions} failed {g.restarts} times; last: {reason}"
                    raise SupervisorError(msg)
                if not alive:
                    msg = f"supervisor: no worker left to take partitions {g.partitions}"
                    raise SupervisorError(msg)
                load = {w: 0 for w in alive}
                for other in self.groups.values():
                    if other.worker in load and other is not g:
                        load[other.worker] += len(other.partitions)
                target = min(sorted(load), key=load.__getitem__)
                g.future.cancel()
                new = self._submit(g.partitions, target)
                new.restarts, new.history = g.restarts + 1, [*g.history, g.worker]
                del self.groups[key]
                self.groups[new.key] = new
                event = {"partitions": g.partitions, "from": g.worker, "to": target, "reason": reason,
                         "t": time.time()}
                self.takeovers.append(event)
                moved.append(event)
                log.warning("supervisor: partitions %s moved from %s to %s (%s)", g.partitions, g.worker, target,
                            reason)
        return moved

    @staticmethod
    def _error_text(future: Future) -> str:
        try:
            return repr(future.exception(timeout=1))
        except Exception:  # noqa: BLE001 - cancelled futures have no exception to show
            return "no detail"

    def watch(self, interval_s: float = 1.0) -> None:
        """Call :meth:`check` every ``interval_s`` in a background thread until :meth:`stop`."""
        def loop() -> None:
            while not self._watching.wait(interval_s):
                try:
                    self.check()
                except Exception:  # noqa: BLE001 - logged; the next check retries
                    log.exception("supervisor: check failed")

        self._watcher = threading.Thread(target=loop, name="isostream-supervisor", daemon=True)
        self._watcher.start()

    def progress(self) -> dict[str, dict[str, Any]]:
        """The latest report of every consumer task (records, dead letters, lag per partition, worker)."""
        latest: dict[str, dict[str, Any]] = {}
        for _, msg in self.client.get_events(EVENT_TOPIC):
            if isinstance(msg, dict) and msg.get("key") in self.groups:
                latest[msg["key"]] = msg
        return latest

    def stop(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Ask every task to finish its batch and close; returns their totals."""
        self._watching.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self._stop.set()
        with self._lock:
            futures = [g.future for g in self.groups.values()]
        done, not_done = wait(futures, timeout=timeout_s)
        if not_done:
            log.warning("supervisor: %d consumer tasks did not stop within %.0fs", len(not_done), timeout_s)
        return [f.result() for f in done if f.status == "finished"]


@dataclass(frozen=True)
class ParquetBatchWriter:
    """A handler that makes each batch durable as Parquet: rows per partition, dead letters beside them.

    Files are fsync'd and renamed into place, named by partition and offset range, before the consumer commits.
    """

    directory: str

    def __call__(self, raw: RawBatch, decoded: Decoded) -> None:
        root = Path(self.directory)
        root.mkdir(parents=True, exist_ok=True)
        frame = decoded.frame
        if len(frame):
            table = pa.Table.from_pandas(frame, preserve_index=False)
            parts = frame["_partition"].to_numpy()
            offsets = frame["_offset"].to_numpy()
            for p in np.unique(parts).tolist():
                rows = np.flatnonzero(parts == p)
                name = f"p{p:05d}-{int(offsets[rows].min()):020d}-{int(offsets[rows].max()):020d}.parquet"
                _write_durably(table.take(pa.array(rows)), root / name)
        if decoded.dead:
            DeadLetterSink(None, directory=root / "dead").write(decoded.dead)


def _write_durably(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
