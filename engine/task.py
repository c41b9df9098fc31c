"""The long-running Dask task of one partition group: real Kafka parts around a :class:`GroupRunner`."""

from __future__ import annotations

import logging
import os
import queue as stdqueue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from distributed import Event, Queue, get_worker, secede

from engine.checkpoint import CheckpointStore
from engine.committer import AtLeastOnceCommitter, Committer, TransactionalCommitter
from engine.config import Config
from engine.group import GroupParts, GroupRunner, group_name
from engine.model_holder import ModelHolder
from engine.steps import PartitionFeatures
from streams.kafka_source import KafkaBatchSource
from streams.lake import LakeWriter

log = logging.getLogger(__name__)

#: Dask event-log topic of the groups' progress snapshots
PROGRESS_TOPIC = "isostream-progress"


@dataclass(frozen=True)
class GroupSpec:
    """Everything a worker needs to run one partition group (pickled to the worker)."""

    pipeline: str
    cfg: Config
    partitions: tuple[int, ...]
    learn_queue: str
    stop_event: str
    run_id: str
    #: names this incarnation of the group: the driver counts only its current task's progress
    task_id: str = ""


def build_parts(spec: GroupSpec, *, report: Any, learn: Any) -> GroupParts:
    """The Kafka source, committer, lake, checkpoints and model holder of one group."""
    cfg = spec.cfg
    k = cfg.kafka
    settings = k.client_settings()
    name = group_name(list(spec.partitions))
    source = KafkaBatchSource(settings, k.input_topic, group_id=k.group_id, partitions=list(spec.partitions),
                              max_messages=k.max_batch_messages, max_wait_ms=k.max_batch_wait_ms)
    committer: Committer
    if cfg.runtime.delivery == "exactly_once":
        committer = TransactionalCommitter(settings, source, transactional_id=f"{k.group_id}-{spec.pipeline}-{name}",
                                           default_topic=k.topics.scores)
    else:
        committer = AtLeastOnceCommitter(settings, source, default_topic=k.topics.scores)
    lake = LakeWriter(cfg.lake.path, time_field=cfg.schema.event_time.field, tz=cfg.lake.timezone,
                      compact_min_files=cfg.lake.compact_min_files,
                      compact_target_rows=cfg.lake.compact_target_rows)
    windows = windows_lake(cfg)
    names = PartitionFeatures(cfg.features, cfg.schema).names
    holder = ModelHolder(cfg.model.save_dir, names, backend=cfg.cluster.backend)
    return GroupParts(source=source, committer=committer, lake=lake,
                      checkpoints=CheckpointStore(cfg.state_dir, name), holder=holder, learn=learn, report=report,
                      dead_dir=cfg.dead_letter_dir, windows_lake=windows)


def windows_lake(cfg: Config) -> LakeWriter | None:
    """The writer of the windows lake table, or None with windows off.

    Every window closed by one batch carries the offset that closed it, so rows share offsets and are kept
    all (``unique_offsets=False``); day folders follow the window start.
    """
    if not cfg.windows.enabled:
        return None
    return LakeWriter(cfg.windows_path, time_field="window_start", tz=cfg.lake.timezone,
                      compact_min_files=cfg.lake.compact_min_files, compact_target_rows=cfg.lake.compact_target_rows,
                      unique_offsets=False)


class SampleSender:
    """Hands learning samples to the coordinator's Dask queue from a thread of its own.

    ``Queue.put`` waits for the scheduler, which shares the driver's process with the coordinator: done
    inline it stalled the batch loop. Learning samples may be dropped when the sender falls behind (they
    are a sample already; :attr:`dropped` counts them); rows for the first fit never are.
    """

    def __init__(self, queue: Queue, depth: int = 8) -> None:
        self.queue = queue
        self.pending: stdqueue.Queue[dict[str, Any] | None] = stdqueue.Queue(maxsize=depth)
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name="isostream-samples", daemon=True)
        self._thread.start()

    def __call__(self, sample: dict[str, Any]) -> None:
        if sample.get("fit"):
            self.pending.put(sample)
            return
        try:
            self.pending.put_nowait(sample)
        except stdqueue.Full:
            self.dropped += 1

    def _loop(self) -> None:
        while True:
            sample = self.pending.get()
            if sample is None:
                return
            try:
                self.queue.put(sample)
            except Exception:  # noqa: BLE001 - a lost sample must not end the stream
                self.dropped += 1
                log.warning("learning sample not delivered", exc_info=True)

    def close(self, timeout_s: float = 10.0) -> None:
        self.pending.put(None)
        self._thread.join(timeout_s)


def run_group_task(spec: GroupSpec) -> dict[str, Any]:
    """Dask task: run the group until the run's stop event is set; returns its final snapshot."""
    worker = get_worker()
    secede()  # leave the worker's thread pool: this task lives as long as the stream
    stop = Event(spec.stop_event)
    learn_q = Queue(spec.learn_queue)
    tag = {"run": spec.run_id, "pipeline": spec.pipeline, "worker": worker.address, "task": spec.task_id or uuid.uuid4().hex}

    def report(snapshot: dict[str, Any]) -> None:
        worker.log_event(PROGRESS_TOPIC, {**tag, **snapshot, "t": time.time()})

    checked = [0.0, False]

    def should_stop() -> bool:
        # Event.is_set is a scheduler round trip: ask at most twice a second
        now = time.monotonic()
        if now - checked[0] >= 0.5:
            checked[0], checked[1] = now, stop.is_set()
        return bool(checked[1])

    sender = SampleSender(learn_q)
    parts = build_parts(spec, report=report, learn=sender)
    runner = GroupRunner(spec.cfg, list(spec.partitions), parts, pipeline=spec.pipeline)
    log.info("%s/%s: task %s starts on %s (pid %d)", spec.pipeline, runner.name, spec.task_id[:8], worker.address,
             os.getpid())
    try:
        final = runner.run(should_stop)
    finally:
        sender.close()
    final["samples_dropped"] = sender.dropped
    worker.log_event(PROGRESS_TOPIC, {**tag, **final, "t": time.time(), "done": True})
    return final
