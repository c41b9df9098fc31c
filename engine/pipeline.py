"""The streaming graph: Kafka -> decode (Dask workers) -> features -> score -> lake + topics -> commit.

Decoding, the heaviest pure step, runs on the Dask cluster through a streamz graph
(``scatter -> map -> buffer(K) -> gather``), which keeps at most K batches in flight and returns them in
order. Per-key feature state and the prequential detector need batches in order, so they run on the driver
after ``gather``. Offsets are committed only after the batch's lake files are fsync'd and its topic records
acknowledged: at-least-once, and no duplicates in the lake because file names derive from offsets.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from distributed import Client
from streamz import Stream

from engine.config import Config
from engine.features import FeatureBuilder
from engine.outputs import Scored, alert_records, lake_frame, score_records, stats_record
from streams.deadletter import DeadLetterSink
from streams.decode import Decoded, decode_batch
from streams.kafka_sink import KafkaSink
from streams.kafka_source import KafkaBatchSource
from streams.lake import LakeWriter
from streams.metrics import Metrics
from streams.records import RawBatch
from training.detector import Detector

log = logging.getLogger(__name__)


def _decode_on_worker(raw: RawBatch, schema, backend: str) -> tuple[dict[int, int], Decoded]:
    """Runs on a Dask worker: decode one raw batch and keep the offsets to commit for it."""
    return raw.next_offsets(), decode_batch(raw, schema, backend=backend)


@dataclass
class RunReport:
    """What one engine run did."""

    events: int = 0
    dead_letters: int = 0
    anomalies: int = 0
    batches: int = 0
    seconds: float = 0.0
    model_version: str | None = None
    lake_files: int = 0
    metrics: dict = field(default_factory=dict)


class Engine:
    """Runs the pipeline for one configuration on a Dask client until stopped."""

    def __init__(self, cfg: Config, client: Client, *, detector: Detector | None = None) -> None:
        self.cfg = cfg
        self.client = client
        self.schema = cfg.schema
        self.detector = detector if detector is not None else self._load_model()
        self.features = FeatureBuilder(cfg.features, cfg.schema)
        self.metrics = Metrics()
        self.lake = LakeWriter(
            cfg.lake.path, time_field=cfg.schema.event_time.field,
            partition_col="kafka_partition", offset_col="kafka_offset",
        )
        settings = cfg.kafka.client_settings()
        t = cfg.kafka.topics
        self.scores_sink = KafkaSink(settings, t.scores)
        self.alerts_sink = KafkaSink(settings, t.alerts)
        self.stats_sink = KafkaSink(settings, t.stats)
        self.dead_sink = DeadLetterSink(
            KafkaSink(settings, t.dead_letter), directory=cfg.kafka.dead_letter_dir, metrics=self.metrics
        )
        self.source = KafkaBatchSource(
            settings, cfg.kafka.input_topic, group_id=cfg.kafka.group_id,
            partitions=cfg.kafka.partitions, subscribe=cfg.kafka.subscribe,
            max_messages=cfg.kafka.max_batch_messages, max_wait_ms=cfg.kafka.max_batch_wait_ms,
        )
        self._done: queue.Queue[tuple[dict[int, int], Decoded]] = queue.Queue()
        # the poller thread owns the consumer: a librdkafka call from a second thread stalled behind consume()
        # for the whole run here, so durable offsets are handed over and committed between polls
        self._to_commit: queue.Queue[dict[int, int]] = queue.Queue()
        self._lag = 0
        self._pending: list[tuple[dict[int, int], Decoded, np.ndarray]] = []
        self._emitted = 0
        self._processed = 0
        self.report = RunReport()
        #: stop after this many input records (good + dead) are done; settable while running (the demo does)
        self.target_events: int | None = None
        self._processed_events = 0
        self._last_batch_t = time.monotonic()
        self._poll_error = False
        self._fields = [f.name for f in cfg.schema.fields]

    def _load_model(self) -> Detector | None:
        path = self.cfg.model.path
        return self._placed(Detector.load(path)) if path is not None else None

    def _placed(self, detector: Detector) -> Detector:
        """Score on the CUDA kernel on the GPU backend (raises naming what is missing), else on the CPU."""
        # "cpu" keeps small batches on the calling thread: the cores are shared with Dask workers and Kafka
        detector.use_backend("cupy" if self.cfg.cluster.backend == "gpu" else "cpu")
        return detector

    # -- the graph -------------------------------------------------------------------------------------
    def _build_stream(self) -> Stream:
        source = Stream()
        (
            source.scatter()
            .map(_decode_on_worker, schema=self.schema, backend=self.cfg.cluster.backend)
            .buffer(self.cfg.kafka.max_in_flight)
            .gather()
            .sink(self._done.put)
        )
        return source

    def _commit_ready(self) -> None:
        """Commit the offsets of every batch whose outputs are durable (merged: the latest per partition)."""
        merged: dict[int, int] = {}
        while True:
            try:
                merged.update(self._to_commit.get_nowait())
            except queue.Empty:
                break
        if merged:
            self.source.commit(merged)

    def _poll_loop(self, stream: Stream, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self._commit_ready()
                raw = self.source.poll_batch()
                self._lag = sum(self.source.lag().values())
                if raw is None or len(raw) == 0:
                    continue
                self.metrics.inc("batches_polled")
                self._emitted += 1
                stream.emit(raw)  # blocks while K batches are in flight: backpressure
        except Exception:  # noqa: BLE001 - surfaced through self._poll_error
            log.exception("source loop failed")
            self._poll_error = True
            stop.set()

    # -- per batch on the driver -----------------------------------------------------------------------
    def _process(self, offsets: dict[int, int], decoded: Decoded) -> None:
        started = time.monotonic()
        if decoded.dead:
            self.dead_sink.write(decoded.dead)
            self.dead_sink.flush()
            self.report.dead_letters += len(decoded.dead)
        if self.cfg.cluster.backend == "gpu":
            # per-key feature state, the lake writer and the topic encoders run on the host (untested on a GPU)
            decoded = Decoded(decoded.frame.to_pandas(), decoded.dead)
        X = self.features.transform(decoded.frame) if len(decoded.frame) else np.empty((0, len(self.features.names)))
        self._pending.append((offsets, decoded, X))
        if self.detector is None:
            if sum(len(d.frame) for _, d, _ in self._pending) < self.cfg.model.fit_on_first:
                return
            self._fit_initial()
        for item in self._pending:
            self._score_and_write(*item, started=started)
        self._pending.clear()

    def _fit_initial(self) -> None:
        X = np.concatenate([x for _, _, x in self._pending if len(x)]) if self._pending else np.empty((0, 0))
        if len(X) < 2:
            return
        m = self.cfg.model
        log.info("fitting the initial model on %d events", len(X))
        self.detector = self._placed(Detector.fit(
            X, self.features.names, n_trees=m.n_trees, max_samples=min(m.max_samples, len(X)),
            contamination=m.contamination, seed=m.seed,
        ))
        if m.save_dir is not None:
            self.detector.save(m.save_dir / self.detector.version)

    def _score_and_write(self, offsets: dict[int, int], decoded: Decoded, X: np.ndarray, *, started: float) -> None:
        frame = decoded.frame
        if len(frame):
            assert self.detector is not None
            res = self.detector.score_batch(X)
            lake = lake_frame(frame, self._fields, res.score, res.threshold, res.is_anomaly, res.model_version)
            explanations = self._explain(X, res.is_anomaly)
            keys = frame["_key"].tolist()
            keys = [k.encode() if isinstance(k, str) else None for k in keys]
            scored = Scored(lake, keys, explanations)
            self.report.lake_files += len(self.lake.write(lake))
            self.scores_sink.write(score_records(scored, self.schema.key, self.schema.event_time.field), keys)
            alerts, alert_keys = alert_records(scored)
            if alerts:
                self.alerts_sink.write(alerts, alert_keys)
            self.scores_sink.flush()
            self.alerts_sink.flush()
            n_anom = int(res.is_anomaly.sum())
            self.report.events += len(frame)
            self.report.anomalies += n_anom
            self.report.model_version = res.model_version
            self.metrics.inc("events", len(frame))
            self.metrics.inc("anomalies", n_anom)
            elapsed = max(time.monotonic() - started, 1e-6)
            lag = self._lag
            self.metrics.set_gauge("lag", lag)
            self.stats_sink.write([
                stats_record(scored, dead_letters=len(decoded.dead), lag=lag, batch_latency_s=elapsed,
                             events_per_s=self._rate(len(frame)))
            ])
        # the outputs above are durable (fsync'd files, acknowledged records): only now move the offsets
        self._to_commit.put(offsets)
        self.report.batches += 1
        self._processed_events += len(frame) + len(decoded.dead)

    def _explain(self, X: np.ndarray, flagged: np.ndarray) -> list[str | None]:
        out: list[str | None] = [None] * len(X)
        idx = np.flatnonzero(flagged)
        if len(idx) == 0:
            return out
        attributions = self.detector.explain(X[idx])  # type: ignore[union-attr]
        names = self.features.names
        for row, i in zip(attributions, idx, strict=True):
            top = np.argsort(-row)[:3]
            out[i] = ", ".join(f"{names[j]}={row[j]:.2f}" for j in top)
        return out

    def _rate(self, n: int) -> float:
        now = time.monotonic()
        last, self._last_batch_t = self._last_batch_t, now
        return n / max(now - last, 1e-6)

    # -- lifecycle -------------------------------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        *,
        on_batch: Callable[[RunReport], None] | None = None,
    ) -> RunReport:
        """Process until ``stop`` is set (or ``target_events`` input records are done), then drain in-flight work."""
        t0 = time.monotonic()
        self._last_batch_t = t0
        # start-up objects (modules, model, config) never die: keep them out of every cyclic-GC pass, which
        # otherwise walks them for each burst of young message objects (raw consumption ran 2-3x slower)
        gc.freeze()
        stream = self._build_stream()
        poller = threading.Thread(target=self._poll_loop, args=(stream, stop), name="isostream-source", daemon=True)
        poller.start()
        try:
            while True:
                try:
                    offsets, decoded = self._done.get(timeout=0.2)
                except queue.Empty:
                    if self.target_events is not None and self._processed_events >= self.target_events:
                        stop.set()
                    if stop.is_set() and not poller.is_alive() and self._processed >= self._emitted:
                        break
                    continue
                self._processed += 1
                self._process(offsets, decoded)
                if on_batch is not None:
                    on_batch(self.report)
                if self.target_events is not None and self._processed_events >= self.target_events:
                    stop.set()
            if self._pending:  # stopped during warm-up: fit on what arrived so every event is written
                if self.detector is None:
                    self._fit_initial()
                if self.detector is not None:
                    for item in self._pending:
                        self._score_and_write(*item, started=time.monotonic())
                    self._pending.clear()
        finally:
            stop.set()
            poller.join(timeout=30)
            if not poller.is_alive():  # the consumer is ours now
                self._commit_ready()
            self.close()
        self.report.seconds = time.monotonic() - t0
        self.report.metrics = self.metrics.snapshot()
        if self._poll_error:
            msg = "the Kafka source failed; see the log above"
            raise RuntimeError(msg)
        return self.report

    def close(self) -> None:
        for sink in (self.scores_sink, self.alerts_sink, self.stats_sink):
            sink.close()
        self.dead_sink.close()
        self.source.close()
