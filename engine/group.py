"""A partition group: the whole chain for a share of the input partitions, in one long-running loop.

``source -> decode -> features -> [model gate] -> score -> aggregate -> outputs -> committer``. The loop reads a batch,
pushes it through the streamz graph, and every ``runtime.commit_interval_ms`` makes the interval durable in
one order that crash recovery relies on:

1. the lake files of the interval (fsync'd, named by partition and offset range: events, and the windows that
   closed), and its dead letters;
2. a checkpoint of every partition's state (per-key features, open windows, open incidents) at the offsets
   being committed;
3. the Kafka commit: one transaction with the topic records and the input offsets (exactly-once), or the
   records flushed and then the offsets committed (at-least-once).

On start (:meth:`GroupRunner.recover`) the group reads the committed offsets, removes lake files and dead
letters written past them (a crash between 1 and 3), restores each partition's state from the checkpoint
saved at exactly those offsets, and reads on from there: its results equal an uninterrupted run's.

Until the pipeline's first model is published, batches with rows wait in order behind a gate (their feature
rows go to the coordinator to fit on); batches of dead letters only pass as soon as nothing waits before them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from streamz import Stream

from engine import steps
from engine.aggregate import KeyedAggregates
from engine.checkpoint import CheckpointStore, PartitionState
from engine.committer import Committer
from engine.config import Config
from engine.model_holder import ModelHolder
from engine.outputs import Scored, stats_record
from engine.reader import Reader, route_commits
from engine.source import Source
from engine.telemetry import GroupMetrics
from streams.deadletter import DeadLetter, dead_letter_files, write_dead_letters
from streams.decode import Decoder
from streams.durable import remove_durably
from streams.lake import LakeWriter
from streams.records import RawBatch

log = logging.getLogger(__name__)

#: in-memory cap on rows waiting for the first model, in multiples of model.fit_on_first (backpressure)
_GATE_FACTOR = 4
#: window alerts one report carries at most (a storm of them asks for one report per key and period anyway)
MAX_TRIGGERS = 1_000


def group_name(partitions: list[int]) -> str:
    """A stable name of a partition group: ``p0.2.4``."""
    return "p" + ".".join(str(p) for p in sorted(partitions))


@dataclass
class GroupParts:
    """What a group is built from: real Kafka parts on a worker, in-memory ones in unit tests."""

    source: Source
    committer: Committer
    lake: LakeWriter
    checkpoints: CheckpointStore
    holder: ModelHolder
    #: hands a learning sample (feature rows, their scores) to the pipeline's model coordinator
    learn: Callable[[dict[str, Any]], None]
    #: hands a progress snapshot to the driver
    report: Callable[[dict[str, Any]], None] = lambda snapshot: None
    dead_dir: Path | None = None
    #: the windows lake table (None: windows are not kept in the lake)
    windows_lake: LakeWriter | None = None


@dataclass
class _Interval:
    """What has been processed since the last commit."""

    offsets: dict[int, int] = field(default_factory=dict)
    kafka_ts: list[np.ndarray] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    records: list[steps.TopicRecords] = field(default_factory=list)
    dirty: bool = False


@dataclass
class _CommitJob:
    """One interval, frozen at its offsets, for the commit thread."""

    lake: dict[tuple[str, int], Any]
    windows: dict[tuple[str, int], Any]
    dead: list[DeadLetter]
    states: dict[int, PartitionState]
    records: list[steps.TopicRecords]
    offsets: dict[int, int]
    kafka_ts: list[np.ndarray]
    model_version: str | None
    watermark_ms: float | None = None


class GroupRunner:
    """Runs the chain for ``partitions`` of one pipeline until ``should_stop()``; see the module doc."""

    def __init__(self, cfg: Config, partitions: list[int], parts: GroupParts, *, pipeline: str = "default") -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.partitions = sorted(partitions)
        self.name = group_name(self.partitions)
        self.parts = parts
        self.decoder = Decoder(cfg.schema, cfg.cluster.backend)
        self.features = steps.PartitionFeatures(cfg.features, cfg.schema)
        self.aggregates = KeyedAggregates(cfg)
        t = cfg.kafka.topics
        self.spec = steps.OutputSpec(tuple(f.name for f in cfg.schema.fields), cfg.schema.key,
                                     cfg.schema.event_time.field, t.scores, t.alerts, t.dead_letter,
                                     cfg.kafka.scores_format, t.stats, t.incidents, tuple(cfg.features.numeric))
        self.metrics = GroupMetrics(pipeline=pipeline, group=self.name)
        self.gate: deque[steps.Batch] = deque()
        self.interval = _Interval()
        self.done: dict[int, int] = {}
        self.start_offsets: dict[int, int] = {}
        self.committed_offsets: dict[int, int] = {}
        self._head, self._tail = self._build_streams()
        self._last_commit = time.monotonic()
        self._last_report = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self._commits = 0
        #: [key, window start ms] of window alerts since the last report (the driver submits their reports)
        self._triggers: list[list[Any]] = []
        self._commit_thread: threading.Thread | None = None
        self._reader: Reader | None = None
        self._stop_wait_until = float("inf")
        self._commit_error: BaseException | None = None

    # -- the graph -------------------------------------------------------------------------------------------
    def _build_streams(self) -> tuple[Stream, Stream]:
        """Two streamz graphs joined by the model gate: decode -> features, then score -> outputs."""
        head, self._decoded = Stream(), Stream()
        head.map(steps.decode, self.decoder).connect(self._decoded)  # the reader thread enters decoded
        self._decoded.map(steps.features, self.features).sink(self._arrived)
        tail = Stream()
        (tail.map(steps.score, self.parts.holder).map(steps.aggregate, self.aggregates)
         .map(steps.outputs, self.spec).sink(self._scored))
        return head, tail

    def _arrived(self, batch: steps.Batch) -> None:
        self.metrics.records_in += len(batch.raw)
        if self.parts.holder.current is None and batch.rows:
            assert batch.X is not None and batch.warm is not None
            self.parts.learn({"group": self.name, "X": batch.X.astype(np.float32), "warm": batch.warm, "fit": True})
        self.gate.append(batch)

    def _scored(self, result: tuple[steps.Batch, list[steps.TopicRecords]]) -> None:
        batch, records = result
        self.interval.records += records
        if batch.lake is not None:
            self.parts.lake.add(batch.lake)
            self._send_sample(batch)
            stats = stats_record(Scored(batch.lake, [], []), dead_letters=len(batch.dead),
                                 lag=self.metrics.lag, batch_latency_s=time.monotonic() - batch.arrived,
                                 events_per_s=self.metrics.events_per_s)
            self.interval.records.append(steps.TopicRecords(self.cfg.kafka.topics.stats, [stats]))
            self.metrics.events_scored += batch.rows
            assert batch.is_anomaly is not None
            self.metrics.anomalies += int(np.count_nonzero(batch.is_anomaly))
            if batch.warm is not None:
                self.metrics.warmup_events += int(batch.rows - np.count_nonzero(batch.warm))
            if batch.shadow is not None:
                self.metrics.add_shadow(*batch.shadow)
        agg = batch.aggregated
        if agg is not None:
            if agg.windows is not None and len(agg.windows):
                self.metrics.windows_closed += len(agg.windows)
                fired = agg.windows[agg.windows["alert"].to_numpy(bool)]
                if len(fired) and len(self._triggers) < MAX_TRIGGERS:  # the driver submits their reports
                    starts = fired["window_start"].astype("int64").to_numpy() // 1000
                    self._triggers += [[str(k), int(t)] for k, t in zip(fired["key"], starts, strict=True)]
                if self.parts.windows_lake is not None:
                    self.parts.windows_lake.add(agg.windows)
            self.metrics.late_events += agg.late
            for rec in agg.incidents:
                if rec.status == "open":
                    self.metrics.incidents_opened += 1
                else:
                    self.metrics.incidents_closed += 1
        for d in batch.dead:
            self.metrics.dead_letters[d.reason.value] = self.metrics.dead_letters.get(d.reason.value, 0) + 1
        self.interval.dead += batch.dead
        self.interval.offsets.update(batch.offsets)
        self.interval.kafka_ts.append(batch.raw.timestamps_ms)
        self.interval.dirty = True

    def _send_sample(self, batch: steps.Batch) -> None:
        n = self.cfg.model.learn_sample
        if n <= 0 or batch.X is None or batch.score is None or batch.is_anomaly is None:
            return
        X, s = batch.X, batch.score
        if batch.warm is not None and not batch.warm.all():  # a key still filling its baseline teaches nothing
            X, s = X[batch.warm], s[batch.warm]
        if len(X) > n:  # a uniform sample keeps the coordinator's window representative of every partition
            idx = np.sort(np.random.default_rng(len(X) + self._commits).choice(len(X), n, replace=False))
            X, s = X[idx], s[idx]
        self.parts.learn({"group": self.name, "X": X.astype(np.float32), "scores": s,
                          "flagged": None, "rows": batch.rows,
                          "version": batch.model_version})

    def process(self, raw: RawBatch) -> None:
        """Push one raw batch through the chain (it may wait at the model gate), then release what can go."""
        if len(raw):
            self._head.emit(steps.Batch(raw))
        self._release()

    def _release(self) -> None:
        """Pass gated batches on, in order, while a model exists (or the head batch has no rows)."""
        while self.gate and (self.parts.holder.current is not None or self.gate[0].rows == 0):
            self._tail.emit(self.gate.popleft())

    # -- recovery ------------------------------------------------------------------------------------------
    def recover(self) -> dict[int, int]:
        """Undo what was written past the committed offsets and restore state saved at them; returns them."""
        committed = self.parts.source.committed()
        start = {p: max(int(committed.get(p, -1)), 0) for p in self.partitions}
        removed = self.parts.lake.recover(start)
        if self.parts.windows_lake is not None:
            removed += self.parts.windows_lake.recover(start)
        if self.parts.dead_dir is not None:
            removed += _recover_dead(self.parts.dead_dir, start)
        states = self.parts.checkpoints.find(start)
        for p in self.partitions:
            if p in states:
                arrays = states[p].arrays
                self.features.restore(p, {k[2:]: v for k, v in arrays.items() if k.startswith("f.")})
                self.aggregates.restore(p, arrays)
            elif start[p] > 0:
                log.warning("%s/%s: no checkpoint at committed offset %d of partition %d; its per-key "
                            "features restart empty", self.pipeline, self.name, start[p], p)
        self.done = dict(start)
        self.start_offsets = dict(start)
        self.committed_offsets = dict(start)
        if removed:
            log.info("%s/%s: removed %d files written past the committed offsets", self.pipeline, self.name,
                     len(removed))
        self.metrics.restored_partitions = len(states)
        return start

    # -- commit ---------------------------------------------------------------------------------------------
    def commit(self, *, wait: bool = True) -> None:
        """Make the interval durable: lake + dead letters, checkpoint, then the Kafka commit (in that order).

        The interval is frozen here, at its offsets; with ``wait=False`` the writes run on the commit thread
        while the loop reads on. Commits never overlap or reorder: a new one first waits for the previous one,
        and raises its error.
        """
        iv = self.interval
        self._join_commit()
        if not iv.dirty:
            return
        if any(b.rows for b in self.gate):
            # batches waiting for the first model are in the feature state already but not in these offsets: a
            # checkpoint now would restore them twice after a crash; the interval commits once they are scored
            return
        self.done.update(iv.offsets)
        job = _CommitJob(
            lake=self.parts.lake.take_buffer(), dead=iv.dead,
            windows=self.parts.windows_lake.take_buffer() if self.parts.windows_lake is not None else {},
            states={p: PartitionState(self.done[p], self._state(p)) for p in self.partitions},
            records=iv.records, offsets=dict(self.done), kafka_ts=iv.kafka_ts, model_version=self.parts.holder.version,
            watermark_ms=self._watermark_ms())
        self.interval = _Interval()
        self._last_commit = time.monotonic()
        if wait:
            self._run_commit(job)
            return
        self._commit_thread = threading.Thread(target=self._commit_in_thread, args=(job,),
                                               name=f"isostream-commit-{self.name}", daemon=True)
        self._commit_thread.start()

    def _state(self, p: int) -> dict[str, np.ndarray]:
        """Partition ``p``'s state as copies (the steps go on updating their arrays in place)."""
        out = {f"f.{k}": v.copy() for k, v in self.features.state(p).items()}
        out.update({k: v.copy() for k, v in self.aggregates.state(p).items()})
        return out

    def _commit_in_thread(self, job: _CommitJob) -> None:
        try:
            self._run_commit(job)
        except BaseException as err:  # noqa: BLE001 - handed to the loop, which raises it
            self._commit_error = err

    def _join_commit(self) -> None:
        if self._commit_thread is not None:
            self._commit_thread.join()
            self._commit_thread = None
        if self._commit_error is not None:
            err, self._commit_error = self._commit_error, None
            raise err

    def _run_commit(self, job: _CommitJob) -> None:
        self.parts.lake.flush_buffer(job.lake)
        if job.windows and self.parts.windows_lake is not None:
            self.parts.windows_lake.flush_buffer(job.windows)
        if job.dead and self.parts.dead_dir is not None:
            write_dead_letters(self.parts.dead_dir, job.dead)
        self.parts.checkpoints.save(job.states, {"model_version": job.model_version})
        self.parts.committer.commit(job.offsets, job.records)
        self.committed_offsets = job.offsets
        if job.watermark_ms is not None:  # every row before it is in a listed lake file now
            self.metrics.committed_watermark_ms = job.watermark_ms
        if job.kafka_ts:
            ts = np.concatenate(job.kafka_ts)
            self.metrics.observe_committed(ts[ts > 0])
        self.metrics.commits += 1
        self._commits += 1
        if self._commits % 8 == 0:  # merge small lake files now and then, off the per-batch path
            self.parts.lake.compact(self.partitions)
            if self.parts.windows_lake is not None:
                self.parts.windows_lake.compact(self.partitions)

    # -- the loop -------------------------------------------------------------------------------------------
    def _maybe_report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.cfg.runtime.report_every_s:
            return
        self._last_report = now
        t0, n0 = self._rate_mark
        self.metrics.events_per_s = (self.metrics.records_in - n0) / max(now - t0, 1e-6)
        self._rate_mark = (now, self.metrics.records_in)
        if self._reader is not None:  # the reader owns the consumer: it reads the lag between polls
            self.metrics.lag = int(sum(self._reader.lag.values()))
        else:
            try:
                self.metrics.lag = int(sum(self.parts.source.lag().values()))
            except Exception:  # noqa: BLE001 - lag is informative; never stop the stream for it
                pass
        self.metrics.waiting_for_model = len(self.gate) > 0 and self.parts.holder.current is None
        self.metrics.watermark_ms = self._watermark_ms()
        # the version the group scores with now (swapped between batches), even while no event arrives
        self.metrics.model_version = self.parts.holder.version or self.metrics.model_version
        self.parts.report({**self.snapshot(), "triggers": self._triggers})
        self._triggers = []

    def _watermark_ms(self) -> float | None:
        marks = [w for w in self.aggregates.watermarks().values() if w is not None]
        return min(marks) / 1000.0 if marks else None

    def snapshot(self) -> dict[str, Any]:
        """The metrics plus the committed offsets per partition and where this run of the group began."""
        return {**self.metrics.snapshot(), "offsets": {str(p): int(o) for p, o in self.committed_offsets.items()},
                "start_offsets": {str(p): int(o) for p, o in self.start_offsets.items()},
                "model_error": self.parts.holder.last_error}

    def run(self, should_stop: Callable[[], bool]) -> dict[str, Any]:
        """Recover, then process until ``should_stop()``; drains, commits and returns the final snapshot."""
        interval_s = self.cfg.runtime.commit_interval_ms / 1000.0
        cap = _GATE_FACTOR * self.cfg.model.fit_on_first
        background = self.cfg.runtime.commit_in_background
        stopping = False
        undo: Callable[[], None] = _nothing
        try:
            self.recover()
            self._reader = Reader(self.parts.source, self.decoder).start()
            undo = route_commits(self.parts.committer, self._reader)
            while True:
                self._maybe_report()
                if not stopping and should_stop():
                    stopping = True
                    # rows still waiting for a first model get the coordinator's idle fit, then are given up
                    self._stop_wait_until = time.monotonic() + 3 * self.cfg.model.fit_idle_s + 10.0
                gated = sum(b.rows for b in self.gate)
                self.parts.holder.refresh()
                # batches the reader holds when stopping are dropped: their offsets are never committed
                self._reader.pause(stopping or gated >= cap)
                batch = self._reader.get(0.05) if not stopping else None
                if batch is not None:
                    self._decoded.emit(batch)
                self._release()
                if time.monotonic() - self._last_commit >= interval_s:
                    self.commit(wait=not background)
                if stopping and (not self.gate or self._waited_too_long()):
                    break
                if stopping and self.gate:
                    time.sleep(0.05)  # waiting for the first model: do not spin
            self.commit()
        except BaseException:
            # a failed run still waits for its commit thread before closing; the loop's error is the one raised
            if self._commit_thread is not None:
                self._commit_thread.join()
            raise
        finally:
            if self._reader is not None:
                self._reader.stop()
            undo()
            self._maybe_report(force=True)
            self._reader = None
            self.parts.committer.close()
            self.parts.source.close()
        return self.snapshot()

    def _waited_too_long(self) -> bool:
        """Stopping while rows still wait for a first model: past the deadline set when stopping began."""
        if time.monotonic() > self._stop_wait_until:
            log.warning("%s/%s: stopped with %d rows that never got a model; they stay uncommitted",
                        self.pipeline, self.name, sum(b.rows for b in self.gate))
            return True
        return False


def _nothing() -> None:
    return None


def _recover_dead(directory: Path, start: dict[int, int]) -> list[Path]:
    """Dead-letter files of these partitions written past their committed offsets."""
    stale = [path for p, first, _, path in dead_letter_files(directory) if p in start and first >= start[p]]
    if stale:
        remove_durably(stale)
    return stale
