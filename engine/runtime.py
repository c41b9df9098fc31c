"""The driver of a run: partition groups on Dask workers, one model coordinator per pipeline, supervision.

The driver does no per-batch work. For every pipeline (tenant) it splits the input partitions into groups,
submits one long-running :func:`engine.task.run_group_task` per group, and then supervises:

- it feeds each pipeline's :class:`~engine.coordinator.ModelCoordinator` with the samples the groups send
  (a Dask queue) and lets it fit and publish versions, and it follows the ``control`` topic;
- it restarts a group whose task failed (broker gone, lake unwritable, ...) after a growing back-off, from
  its checkpoint, and moves a group whose worker died to a surviving worker; a pipeline whose group fails
  ``runtime.max_restarts`` times in a row is reported failed while the other pipelines go on;
- it aggregates the groups' progress into metrics (Prometheus text, the ``metrics`` topic, the CLI's lines)
  and ends the run on a stop signal or once ``max_events`` input records are done, after every group has
  drained and committed.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from distributed import Client, Event, Future, Queue

from engine.config import Config
from engine.coordinator import ModelCoordinator
from engine.group import group_name
from engine.nightly import EndOfDay, ReportTrigger, ShadowJudge
from engine.steps import PartitionFeatures
from engine.task import PROGRESS_TOPIC, GroupSpec, run_group_task
from engine.telemetry import GroupMetrics, MetricsHub, metrics_record
from streams.broker import create_topics
from streams.kafka_sink import KafkaSink
from training.current import read_current, set_current

log = logging.getLogger(__name__)

#: longest wait between two restarts of a failing group
MAX_BACKOFF_S = 30.0


class RuntimeFailure(RuntimeError):
    """Every pipeline of the run failed, or the cluster has no worker left."""


@dataclass
class RunReport:
    """What one run did, summed over its pipelines and groups."""

    records_in: int = 0
    events: int = 0
    dead_letters: int = 0
    anomalies: int = 0
    commits: int = 0
    seconds: float = 0.0
    model_versions: dict[str, str | None] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    takeovers: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per pipeline: lake days closed, nightly retrain results, shadow decisions
    nightly: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def model_version(self) -> str | None:
        versions = [v for v in self.model_versions.values() if v]
        return versions[0] if len(versions) == 1 else (", ".join(versions) or None)


@dataclass
class _Group:
    pipeline: str
    partitions: tuple[int, ...]
    future: Future | None = None
    worker: str | None = None
    started: float = 0.0
    restarts: int = 0
    retry_at: float | None = None
    finished: bool = False
    last_error: str | None = None
    task_id: str = ""

    @property
    def name(self) -> str:
        return group_name(list(self.partitions))

    @property
    def key(self) -> str:
        return f"{self.pipeline}/{self.name}"


@dataclass
class _Pipeline:
    name: str
    cfg: Config
    coordinator: ModelCoordinator
    queue: Queue
    groups: list[_Group] = field(default_factory=list)
    end_of_day: EndOfDay | None = None
    judge: ShadowJudge | None = None
    trigger: ReportTrigger | None = None


class Runtime:
    """Runs every pipeline of ``cfg`` on ``client``'s cluster until stopped (see the module doc)."""

    def __init__(self, cfg: Config, client: Client) -> None:
        self.cfg = cfg
        self.client = client
        self.run_id = uuid.uuid4().hex[:10]
        self.hub = MetricsHub()
        self.report = RunReport()
        self._stop_event = Event(f"isostream-stop-{self.run_id}", client=client)
        self.pipelines: dict[str, _Pipeline] = {}
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self._metrics_sink: KafkaSink | None = None
        self._events_t = 0.0
        self._marks: set[tuple[str, Any]] = set()
        self._tasks: dict[str, tuple[str | None, dict[str, Any] | None]] = {}
        self._base: dict[str, GroupMetrics] = {}
        self._current: dict[str, str] = {}
        self._missing: dict[str, float] = {}
        self._alive: set[str] = set()
        self._checked_workers = 0.0
        self._start: dict[str, int] = {}
        self._done: dict[str, int] = {}

    # -- set-up -----------------------------------------------------------------------------------------------
    def _workers(self) -> list[str]:
        """The workers the scheduler has now (asked, not the client's cached view)."""
        return sorted(self.client.run_on_scheduler(_scheduler_workers))

    def _lost(self, worker: str | None, alive: set[str]) -> bool:
        """A worker counts as lost once it has been missing from two checks at least a second apart."""
        if worker in alive:
            self._missing.pop(worker or "", None)
            return False
        first = self._missing.setdefault(worker or "", time.monotonic())
        return time.monotonic() - first >= 1.0

    def _partitions(self, cfg: Config) -> list[int]:
        if cfg.kafka.partitions is not None:
            return sorted(cfg.kafka.partitions)
        consumer = Consumer({**cfg.kafka.client_settings(), "group.id": cfg.kafka.group_id})
        try:
            deadline = time.monotonic() + 30
            while True:
                meta = consumer.list_topics(cfg.kafka.input_topic, timeout=10).topics.get(cfg.kafka.input_topic)
                if meta is not None and meta.error is None and meta.partitions:
                    return sorted(meta.partitions)
                if time.monotonic() > deadline:
                    msg = (f"input topic {cfg.kafka.input_topic!r} not found on {cfg.kafka.bootstrap} "
                           f"({meta.error if meta is not None else 'absent'})")
                    raise RuntimeFailure(msg)
                time.sleep(0.5)
        finally:
            consumer.close()

    def _plan(self) -> None:
        n_workers = max(len(self._workers()), 1)
        for name, cfg in self.cfg.resolved_pipelines().items():
            try:
                parts = self._partitions(cfg)
                size = cfg.runtime.partitions_per_group or math.ceil(len(parts) / n_workers)
                groups = [_Group(name, tuple(parts[i:i + size])) for i in range(0, len(parts), size)]
                names = PartitionFeatures(cfg.features, cfg.schema).names
                coordinator = ModelCoordinator(cfg.model, names, groups=len(groups))
            except Exception as err:  # noqa: BLE001 - one tenant's bad set-up must not stop the others
                self.report.failed[name] = str(err)
                log.error("pipeline %s cannot start: %s", name, err)
                continue
            pipe = _Pipeline(name, cfg, coordinator, Queue(f"isostream-learn-{self.run_id}-{name}",
                                                           client=self.client), groups)
            self.pipelines[name] = pipe
        if not self.pipelines:
            msg = "no pipeline could start: " + "; ".join(f"{k}: {v}" for k, v in self.report.failed.items())
            raise RuntimeFailure(msg)

    def _submit(self, pipe: _Pipeline, group: _Group) -> None:
        alive = self._workers()
        if not alive:
            msg = "the Dask cluster has no workers left"
            raise RuntimeFailure(msg)
        load = {w: 0 for w in alive}
        for p in self.pipelines.values():
            for g in p.groups:
                if g is not group and g.worker in load and not g.finished:
                    load[g.worker] += len(g.partitions)
        target = min(alive, key=lambda w: (load[w], w))
        group.task_id = uuid.uuid4().hex
        spec = GroupSpec(pipe.name, pipe.cfg, group.partitions, pipe.queue.name, self._stop_event.name, self.run_id,
                         group.task_id)
        key = f"isostream-{pipe.name}-{group.name}-{self.run_id}-{group.task_id[:8]}"
        group.future = self.client.submit(run_group_task, spec, key=key, workers=[target],
                                          allow_other_workers=False, pure=False)
        group.worker, group.started, group.retry_at = target, time.monotonic(), None
        log.info("%s: task %s on %s", group.key, group.task_id[:8], target)

    # -- supervision --------------------------------------------------------------------------------------------
    def _supervise(self, stopping: bool) -> None:
        now = time.monotonic()
        if now - self._checked_workers >= 0.5:
            self._alive, self._checked_workers = set(self._workers()), now
        alive = self._alive
        for pipe in self.pipelines.values():
            if pipe.name in self.report.failed:
                continue
            for g in pipe.groups:
                if g.finished:
                    continue
                if g.retry_at is not None:
                    if now >= g.retry_at and not stopping:
                        self._submit(pipe, g)
                    elif stopping:
                        g.finished = True
                    continue
                assert g.future is not None
                status = g.future.status
                if status == "finished":
                    g.finished = True
                    self.report.groups[g.key] = {**self.report.groups.get(g.key, {}), **g.future.result()}
                    continue
                lost = self._lost(g.worker, alive)
                if status not in ("error", "cancelled") and not lost:
                    if now - g.started > 60:
                        g.restarts = 0  # it has run for a while: the failures in a row are over
                    continue
                reason = "worker lost" if lost else f"failed: {_error_text(g.future)}"
                g.future.cancel()
                g.last_error = reason
                if lost:  # not the group's fault: move it at once, from its checkpoint
                    self.report.takeovers.append({"group": g.key, "from": g.worker, "t": time.time()})
                    log.warning("%s: worker %s lost; moving its partitions to a survivor", g.key, g.worker)
                    if not stopping:
                        self._submit(pipe, g)
                    else:
                        g.finished = True
                    continue
                g.restarts += 1
                self.report.restarts += 1
                if g.restarts > pipe.cfg.runtime.max_restarts:
                    self.report.failed[pipe.name] = f"group {g.name} {reason} ({g.restarts - 1} restarts)"
                    log.error("pipeline %s failed: %s", pipe.name, self.report.failed[pipe.name])
                    break
                delay = min(pipe.cfg.runtime.restart_backoff_s * 2 ** (g.restarts - 1), MAX_BACKOFF_S)
                log.warning("%s %s; restarting from its checkpoint in %.1fs (restart %d)", g.key, reason, delay,
                            g.restarts)
                g.retry_at = now + delay

    def _coordinate(self) -> None:
        for pipe in self.pipelines.values():
            if pipe.name in self.report.failed:
                continue
            try:
                items = pipe.queue.get(batch=True)
            except Exception:  # noqa: BLE001 - a scheduler hiccup: next tick
                items = []
            for item in items or []:
                pipe.coordinator.offer(item)
            pipe.coordinator.follow_pointer()
            if pipe.coordinator.tick() is not None:
                log.info("pipeline %s: published model %s", pipe.name, pipe.coordinator.status.version)
            self._nightly(pipe)

    def _trigger_reports(self, msg: dict[str, Any]) -> None:
        """Submit the reports of the window alerts a group reported (see :class:`engine.nightly.ReportTrigger`)."""
        pipe = self.pipelines.get(msg.get("pipeline", ""))
        if pipe is None or not msg.get("triggers"):
            return
        if pipe.trigger is None:
            topic = pipe.cfg.kafka.topics.reports

            def publish(value: bytes, key: bytes) -> None:
                if self._metrics_sink is not None:
                    self._metrics_sink.write([value], [key], topic=topic)

            pipe.trigger = ReportTrigger(pipe.cfg, self.client, publish)
        for key, start_ms in msg["triggers"]:
            try:
                pipe.trigger.submit(str(key), float(start_ms))
            except Exception as err:  # noqa: BLE001 - reports are not worth stopping the stream for
                log.warning("pipeline %s: cannot submit the report of %s: %s", pipe.name, key, err)

    def _nightly(self, pipe: _Pipeline) -> None:
        """Close lake days behind the committed watermark (retrain them) and end shadow periods."""
        if pipe.end_of_day is None:
            pipe.end_of_day, pipe.judge = EndOfDay(pipe.cfg, self.client), ShadowJudge(pipe.cfg)
        assert pipe.judge is not None
        totals = self.hub.totals(pipe.name)
        try:
            pipe.end_of_day.observe(totals.get("committed_watermark_ms"))
            pipe.judge.check(totals.get("shadow") or {})
        except Exception as err:  # noqa: BLE001 - the stream goes on; the next tick tries again
            log.error("pipeline %s: nightly duties: %s", pipe.name, err)

    def _collect(self) -> None:
        """Fold the groups' latest progress into the hub and the report.

        A restarted group's task counts from zero again, so each group's earlier tasks' last snapshots are
        added to its current one. Records done come from committed offsets, which a restart cannot recount.
        """
        self._current = {g.key: g.task_id for p in self.pipelines.values() for g in p.groups}
        # the scheduler keeps a bounded log per topic: read what is new by its time, not by its position
        fresh = [(t, m) for t, m in self.client.get_events(PROGRESS_TOPIC) if t >= self._events_t]
        for _, msg in fresh:
            if not isinstance(msg, dict) or msg.get("run") != self.run_id:
                continue
            mark = (msg["task"], msg.get("t"))
            if mark in self._marks:
                continue
            self._marks.add(mark)
            key = f"{msg['pipeline']}/{msg['group']}"
            if msg["task"] != self._current.get(key):
                continue  # an earlier task of the group, still winding down (it is fenced if it commits)
            task, last = self._tasks.get(key, (None, None))
            if task is not None and task != msg["task"] and last is not None:
                old = GroupMetrics.from_snapshot(last)
                self._base[key] = old if key not in self._base else self._base[key].merge(old, group=old.group)
            self._tasks[key] = (msg["task"], msg)
            self._trigger_reports(msg)
            for p, o in msg.get("start_offsets", {}).items():
                self._start.setdefault(f"{msg['pipeline']}/{p}", int(o))
            for p, o in msg.get("offsets", {}).items():
                k = f"{msg['pipeline']}/{p}"
                self._done[k] = max(self._done.get(k, 0), int(o))
        if fresh:
            newest = max(t for t, _ in fresh)
            if newest > self._events_t:
                self._events_t, self._marks = newest, {(m["task"], m.get("t")) for t, m in fresh
                                                       if t == newest and isinstance(m, dict) and "task" in m}
        for key, (_, snap) in self._tasks.items():
            assert snap is not None
            merged = GroupMetrics.from_snapshot(snap)
            if key in self._base:
                merged = self._base[key].merge(merged, group=merged.group)
            self.hub.update(snap["pipeline"], snap["group"], {**merged.snapshot(), "ts": snap.get("t", time.time())})
        r = self.report
        totals = self.hub.totals()
        r.records_in = sum(o - self._start.get(k, o) for k, o in self._done.items())
        r.events = int(totals["events_scored"])
        r.dead_letters, r.anomalies = int(totals["dead_letters"]), int(totals["anomalies"])
        r.commits = int(totals["commits"])
        r.model_versions = {name: p.coordinator.status.version for name, p in self.pipelines.items()}
        self._nightly_report()

    def _nightly_report(self) -> None:
        self.report.nightly = {
            name: {"closed_days": list(p.end_of_day.closed), "retrains": list(p.end_of_day.results),
                   "shadow_decisions": list(p.judge.decisions) if p.judge else [],
                   "reports_triggered": p.trigger.submitted if p.trigger else 0,
                   "reports_published": p.trigger.published if p.trigger else 0}
            for name, p in self.pipelines.items() if p.end_of_day is not None}

    # -- control topic and metrics ---------------------------------------------------------------------------------
    def _control_loop(self, done: threading.Event) -> None:
        topic = self.cfg.kafka.topics.control
        settings = self.cfg.kafka.client_settings()
        try:
            create_topics(self.cfg.kafka.bootstrap, {topic: 1}, settings=settings)
            consumer = Consumer({**settings, "group.id": f"isostream-control-{self.run_id}",
                                 "enable.auto.commit": False})
        except Exception as err:  # noqa: BLE001 - the stream runs on without hot-swap commands
            log.error("control topic %r unavailable: %s", topic, err)
            return
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        try:
            while not done.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                self.apply_control(msg.value() or b"")
        finally:
            consumer.close()

    def apply_control(self, value: bytes) -> str:
        """Carry out one control command (``{"action": "swap", "version": V, "pipeline": P}``); says what it did."""
        try:
            cmd = json.loads(value)
            action, version = cmd["action"], cmd["version"]
            pipeline = cmd.get("pipeline", "default")
            pipe = self.pipelines[pipeline]
        except (ValueError, KeyError, TypeError) as err:
            text = f"control: ignored {value[:200]!r} ({type(err).__name__}: {err})"
            log.error(text)
            return text
        if action != "swap":
            text = f"control: unknown action {action!r} (known: swap)"
            log.error(text)
            return text
        current = read_current(pipe.cfg.model.save_dir)
        if current is not None and current["version"] == version:  # the promote command moved it already
            return f"control: pipeline {pipeline} already on {version}"
        try:
            set_current(pipe.cfg.model.save_dir, version, reason="control topic", action="control")
        except FileNotFoundError as err:
            log.error("control: %s", err)
            return str(err)
        return f"control: pipeline {pipeline} -> {version}"

    def _publish_metrics(self) -> None:
        if self._metrics_sink is None:
            return
        for pipe_name, group, snap in self.hub.items():
            topic = self.pipelines[pipe_name].cfg.kafka.topics.metrics if pipe_name in self.pipelines else None
            if topic:
                self._metrics_sink.write([metrics_record(pipe_name, group, snap)], topic=topic)

    # -- the run -----------------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, max_events: int | None = None,
            on_progress: Callable[[RunReport], None] | None = None) -> RunReport:
        """Run until ``stop`` is set or ``max_events`` input records are done; every group drains first."""
        t0 = time.monotonic()
        self._plan()
        rt = self.cfg.runtime
        if rt.metrics_port is not None:
            self._metrics_server, self.metrics_port = self.hub.serve(rt.metrics_host, rt.metrics_port)
        try:
            settings = self.cfg.kafka.client_settings()
            metric_topics = {p.cfg.kafka.topics.metrics: 1 for p in self.pipelines.values()}
            report_topics = {p.cfg.kafka.topics.reports: 1 for p in self.pipelines.values() if p.cfg.reports.on_trigger}
            create_topics(self.cfg.kafka.bootstrap, {**metric_topics, **report_topics}, settings=settings)
            self._metrics_sink = KafkaSink(settings, next(iter(metric_topics)))
        except Exception as err:  # noqa: BLE001 - metrics are not worth stopping the stream for
            log.warning("metrics topic unavailable: %s", err)
        control_done = threading.Event()
        control = threading.Thread(target=self._control_loop, args=(control_done,), name="isostream-control",
                                   daemon=True)
        control.start()
        labels = [threading.Thread(target=_labels_feed, args=(p.cfg, control_done), name=f"isostream-labels-{p.name}",
                                   daemon=True) for p in self.pipelines.values() if p.cfg.labels.topic_enabled]
        for thread in labels:
            thread.start()
        for pipe in self.pipelines.values():
            for g in pipe.groups:
                self._submit(pipe, g)
        last_metrics = 0.0
        stopping = False
        try:
            while True:
                self._coordinate()
                self._collect()
                if max_events is not None and self.report.records_in >= max_events:
                    stop.set()
                if stop.is_set() and not stopping:
                    stopping = True
                    self._stop_event.set()
                self._supervise(stopping)
                now = time.monotonic()
                if now - last_metrics >= rt.report_every_s:
                    last_metrics = now
                    self._publish_metrics()
                    if on_progress is not None:
                        self.report.seconds = now - t0
                        on_progress(self.report)
                running = [g for p in self.pipelines.values() if p.name not in self.report.failed
                           for g in p.groups if not g.finished]
                if not running:
                    if not stopping and len(self.report.failed) < len(self.pipelines):
                        stopping = True  # every live group ended on its own
                    if stopping or len(self.report.failed) == len(self.pipelines):
                        break
                time.sleep(0.1)
            self._collect()
        finally:
            self._stop_event.set()
            control_done.set()
            control.join(timeout=5)
            for thread in labels:
                thread.join(timeout=10)
            self._shutdown()
        self._nightly_report()  # retrains that finished while the run wound down
        self.report.seconds = time.monotonic() - t0
        return self.report

    def _shutdown(self) -> None:
        for pipe in self.pipelines.values():
            if pipe.end_of_day is not None:
                pipe.end_of_day.close(timeout_s=self.cfg.runtime.retrain_wait_s)
        for pipe in self.pipelines.values():
            for g in pipe.groups:
                if g.future is not None and not g.finished:
                    g.future.cancel()
        if self._metrics_sink is not None:
            try:
                self._publish_metrics()
                self._metrics_sink.close()
            except Exception as err:  # noqa: BLE001 - the run's results are already durable
                log.warning("metrics topic: %s", err)
        if self._metrics_server is not None:
            self.hub.stop()


def _labels_feed(cfg: Config, stop: threading.Event) -> None:
    """The labels topic into the label store, for the life of the run (``labels.topic_enabled``)."""
    from engine.labels_feed import run_labels_feed

    try:
        run_labels_feed(cfg, stop)
    except Exception as err:  # noqa: BLE001 - late labels are not worth stopping the stream for
        log.error("labels topic %r: %s", cfg.kafka.topics.labels, err)


def _scheduler_workers(dask_scheduler: Any) -> list[str]:
    return list(dask_scheduler.workers)


def _error_text(future: Future) -> str:
    try:
        err = future.exception(timeout=1)
    except Exception:  # noqa: BLE001 - cancelled futures have no exception to show
        return "no detail"
    return f"{type(err).__name__}: {err}"
