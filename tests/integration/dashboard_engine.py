"""What a running engine leaves behind, for the dashboard's integration tests: its topics, registry and lake.

The dashboard is tested against the engine's *output*, not a mock of it. :class:`EngineFeed` writes records
to a real broker with the engine's own code: ``engine.outputs`` encodes the scores, alerts and stats records,
``engine.aggregate.KeyedAggregates`` (the engine's step after scoring) closes the windows and opens and
closes the incidents, ``engine.telemetry`` keeps and encodes the group metrics; all in the formats of
docs/architecture.md ("Topic record formats"). Only the scores are made up: an anomaly the generator injected
(``label = 1``) scores above the threshold and a normal event below it, so a test knows which events alert.

:func:`build_registry_and_lake` leaves what two nights of the engine and the nightly retrain leave: a closed
lake of two days (events and windows), a registry with a first model, a promoted retrain and a shadow
candidate, and the promotion history.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from confluent_kafka import Producer

from engine.aggregate import KeyedAggregates
from engine.config import Config
from engine.outputs import Scored, alert_records, lake_frame, score_records, stats_record
from engine.synthetic import fit_champion, scored_day_with_champion, station_days, write_scored_day
from engine.task import windows_lake
from engine.telemetry import GroupMetrics, metrics_record
from engine.windows import window_alert_records, window_records
from streams.deadletter import Reason
from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.lake import close_day
from training.current import record, set_current, set_shadow
from training.detector import Detector
from training.features import FeatureBuilder

THRESHOLD = 0.62
PIPELINE = "default"
#: dead-letter reasons the feed reports, and how many per batch on average
DEAD_LETTERS = ((Reason.INVALID_JSON, 0.4), (Reason.MISSING_FIELD, 0.15), (Reason.LATE_EVENT, 0.05))


@dataclass(frozen=True)
class Registry:
    """The versions :func:`build_registry_and_lake` left, and the closed lake days (UTC)."""

    first: str
    live: str
    shadow: str
    lake_days: tuple[dt.date, dt.date]


def _write_windows(cfg: Config, frame: pd.DataFrame, det: Detector) -> None:
    """The day's windows as the engine writes them to the windows table: scored per partition as
    :func:`engine.synthetic.write_scored_day` scores them, then through the engine's aggregation step."""
    agg = KeyedAggregates(cfg)
    writer = windows_lake(cfg)
    assert writer is not None, "the test config has windows enabled"
    last_offset: dict[int, int] = {}
    for p in np.unique(frame["_partition"].to_numpy()).tolist():
        part = frame[frame["_partition"] == p].reset_index(drop=True)
        last_offset[int(p)] = int(part["_offset"].max())
        out = FeatureBuilder(cfg.features, cfg.schema).compute(part)
        score = det.score(out.X)
        flagged = (score > det.threshold) & out.warm
        closed, _ = agg.update(part, flagged, score, [None] * len(part), det.version)
        if closed.windows is not None:
            writer.add(closed.windows)
    for p in list(agg.windows):  # the day is over: every window closes
        rest = agg.windows[p].flush_all()
        if len(rest):
            rest["kafka_partition"], rest["kafka_offset"] = np.int64(p), np.int64(last_offset[p])
            writer.add(rest)
    writer.flush()
    close_day(cfg.windows_path, frame["event_time"].iloc[0].date())


def build_registry_and_lake(cfg: Config, *, seed: int, per_day: int = 8_000) -> Registry:
    """Two closed lake days (the day before yesterday and yesterday, UTC) scored by two versions, the second
    promoted by the gate, and a third in shadow: what ``isostream models list`` shows after two nights."""
    today = dt.datetime.now(dt.timezone.utc).date()
    days = (today - dt.timedelta(days=2), today - dt.timedelta(days=1))
    frames = station_days(days[0], 2, per_day, seed=seed)
    first = scored_day_with_champion(cfg, frames[0], rows=2_000)
    _write_windows(cfg, frames[0], first)
    live = fit_champion(cfg, frames[1], rows=2_000)
    live.meta.update(kind="retrain", parent=first.version, data_dates=[days[1].isoformat()])
    live.save(cfg.registry / live.version)
    record(cfg.registry, "registered", live.version, reason=f"retrained on {days[1]}",
           data_dates=[days[1].isoformat()])
    set_current(cfg.registry, live.version, action="promote",
                reason="gate passed: agreement 0.991 >= 0.98, candidate alert rate 0.9 % within [0 %, 5 %]")
    write_scored_day(cfg, frames[1], live)
    _write_windows(cfg, frames[1], live)
    shadow = fit_champion(cfg, frames[1].iloc[len(frames[1]) // 2:].reset_index(drop=True), rows=2_000)
    shadow.meta.update(kind="retrain", parent=live.version, data_dates=[days[1].isoformat()])
    shadow.save(cfg.registry / shadow.version)
    record(cfg.registry, "shadow", shadow.version, reason="no labels: shadowing on live traffic before the gate")
    set_shadow(cfg.registry, shadow.version, champion=live.version, events=50_000, max_s=3_600)
    return Registry(first.version, live.version, shadow.version, days)


class EngineFeed:
    """Writes the engine's output records for a small live fleet (3 stations x 2 sensors) to ``cfg``'s topics.

    :meth:`step` writes the events generated since the previous step (``events_per_s`` of event time per
    second of wall time, so event time follows the clock); :meth:`start` runs it on a thread every ``every_s``.
    With ``backlog_s`` the engine has been running that long already: :meth:`catch_up` writes those batches,
    each with the Kafka timestamp it would have had. Windows and incidents follow ``cfg.windows`` and
    ``cfg.incidents``.
    """

    def __init__(self, cfg: Config, *, seed: int, model_version: str, shadow_version: str | None = None,
                 events_per_s: float = 40.0, anomaly_rate: float = 0.03, partitions: int = 2,
                 backlog_s: float = 0.0) -> None:
        self.topics = cfg.kafka.topics
        self.key_field = cfg.schema.key or "key"
        self.values = tuple(cfg.features.numeric)
        self.fields = [f.name for f in cfg.schema.fields]
        self.model_version = model_version
        self.shadow_version = shadow_version
        self.events_per_s = events_per_s
        self.partitions = partitions
        now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=backlog_s)
        self._gen = StationAlarmGenerator(GeneratorSettings(
            n_stations=3, datapoints_per_station=2, events_per_second=events_per_s, anomaly_rate=anomaly_rate,
            start=now, seed=seed))
        self._rng = np.random.default_rng(seed + 1)
        self._producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap, "linger.ms": 5})
        self._aggregates = KeyedAggregates(cfg)
        self._groups = {p: GroupMetrics(f"g{p}", pipeline=PIPELINE) for p in range(partitions)}
        self._offsets = np.zeros(partitions, dtype=np.int64)
        self._at = now.timestamp()  # the wall time the previous batch was written at
        self.produced: dict[str, int] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- one batch ----------------------------------------------------------------------------------------
    def _send(self, topic: str, values: list[bytes], keys: list[bytes | None] | None = None,
              partitions: list[int] | None = None, timestamp_ms: int | list[int] = 0) -> None:
        for i, v in enumerate(values):
            # partition -1: librdkafka's "unassigned", the partitioner picks (by key when there is one);
            # timestamp 0: the producer's clock
            self._producer.produce(topic, v, key=keys[i] if keys is not None else None,
                                   partition=partitions[i] if partitions is not None else -1,
                                   timestamp=timestamp_ms[i] if isinstance(timestamp_ms, list) else timestamp_ms)
        self.produced[topic] = self.produced.get(topic, 0) + len(values)

    def step(self, n: int | None = None, *, at: float | None = None, flush: bool = True) -> int:
        """Write one batch (``n`` events, default: those due since the last step) as at wall time ``at``
        (epoch s, default now); returns the event count."""
        with self._lock:
            wall = time.time() if at is None else at
            if n is None:
                n = max(1, round((wall - self._at) * self.events_per_s))
            self._at = wall
            ts = 0 if at is None else round(at * 1000)
            f = self._gen.next_chunk(n)
            keys = f[self.key_field].astype(str).to_numpy(dtype=object)
            part = (pd.util.hash_array(keys) % self.partitions).astype(np.int64)
            f["_partition"] = part
            f["_offset"] = self._offsets[part] + f.groupby(part).cumcount().to_numpy()
            self._offsets += np.bincount(part, minlength=self.partitions)
            wall_ms = wall * 1000.0
            # ingest latency: the events reached Kafka 20-400 ms before their outputs are committed now
            latency = self._rng.gamma(2.0, 40.0, size=n) + 20.0
            f["_kafka_ts"] = (wall_ms - latency).astype(np.int64)
            labelled = f["label"].to_numpy() == 1
            score = np.where(labelled, 0.68 + 0.3 * self._rng.random(n), 0.25 + 0.3 * self._rng.beta(2, 5, n))
            flagged = score > THRESHOLD
            # a batch written for the past: each record stamped when the engine would have committed it
            stamps: int | list[int] = ts
            if at is not None:
                event_ms = f["event_time"].dt.tz_convert(None).to_numpy().astype("datetime64[ms]").view(np.int64)
                stamps = np.minimum(event_ms + latency.astype(np.int64), ts).tolist()
            frame = lake_frame(f, self.fields, score, np.full(n, THRESHOLD), flagged, self.model_version)
            explanations = [f"value_dev={0.5 + 0.4 * s:.2f}, value_ratio={0.5 - 0.4 * s:.2f}" if a else None
                            for s, a in zip(self._rng.random(n), flagged, strict=True)]
            scored = Scored(frame, [k.encode() for k in keys], explanations)
            t = self.topics
            self._send(t.scores, score_records(scored, self.key_field, "event_time", self.values), scored.keys,
                       part.tolist(), stamps)
            alerts, alert_keys = alert_records(scored)
            self._send(t.alerts, alerts, alert_keys,
                       timestamp_ms=[stamps[i] for i in np.flatnonzero(flagged)] if isinstance(stamps, list) else ts)
            dead = {r.value: int(c) for (r, _), c in zip(DEAD_LETTERS, self._rng.poisson([m for _, m in DEAD_LETTERS]),
                                                         strict=True) if c}
            self._send(t.stats, [stats_record(scored, dead_letters=sum(dead.values()),
                                              lag=int(self._rng.integers(0, 40)),
                                              batch_latency_s=float(latency.mean()) / 1000,
                                              events_per_s=self.events_per_s)], timestamp_ms=ts)
            agg, _late = self._aggregates.update(f, flagged, score, explanations, self.model_version)
            windows = 0
            if agg.windows is not None and len(agg.windows):
                windows = len(agg.windows)
                self._send(t.stats, window_records(agg.windows, key_field=self.key_field), timestamp_ms=ts)
                self._send(t.alerts, window_alert_records(agg.windows, key_field=self.key_field), timestamp_ms=ts)
            self._send(t.incidents, [i.to_json() for i in agg.incidents], [i.key.encode() for i in agg.incidents],
                       timestamp_ms=ts)
            opened = sum(i.status == "open" for i in agg.incidents)
            self._metrics(part, flagged, f["_kafka_ts"].to_numpy(dtype=np.float64), dead,
                          (opened, len(agg.incidents) - opened, windows), wall_ms, ts)
            if flush and self._producer.flush(30) != 0:
                msg = "EngineFeed: records left unsent after 30 s"
                raise RuntimeError(msg)
            return n

    def _metrics(self, part: np.ndarray, flagged: np.ndarray, kafka_ts: np.ndarray, dead: dict[str, int],
                 counts: tuple[int, int, int], wall_ms: float, ts: int) -> None:
        """One ``metrics`` record per group, as the engine's report loop sends them (group 0 owns the
        batch-wide counts)."""
        opened, closed, windows = counts
        records = []
        for p, m in self._groups.items():
            mine = part == p
            n, first = int(mine.sum()), p == 0
            m.add(records_in=n + sum(dead.values()) * first, events_scored=n, anomalies=int(flagged[mine].sum()),
                  incidents_opened=opened * first, incidents_closed=closed * first, windows_closed=windows * first,
                  commits=1)
            if first:
                m.add_dead_letters(dead)
            m.lag = int(self._rng.integers(0, 20))
            m.events_per_s = self.events_per_s / self.partitions
            m.model_version = self.model_version
            m.watermark_ms = wall_ms - 1_000.0
            if self.shadow_version is not None and n:
                # the candidate alerts on most of the champion's alerts and on a few events it did not
                champion = int(flagged[mine].sum())
                both = int(self._rng.binomial(champion, 0.95))
                only = int(self._rng.binomial(n - champion, 0.002))
                m.add_shadow(self.shadow_version, [n, n - (champion - both) - only, both + only, champion])
            m.observe_committed(kafka_ts[mine], wall_ms / 1000.0)
            records.append(metrics_record(PIPELINE, m.group, m.snapshot(wall_ms / 1000.0)))
        self._send(self.topics.metrics, records, timestamp_ms=ts)

    def catch_up(self, every_s: float = 2.0) -> int:
        """Write the batches due since the previous one, ``every_s`` apart, with their own Kafka timestamps."""
        n = 0
        while self._at + every_s < time.time():
            n += self.step(at=self._at + every_s, flush=False)
        n += self.step(at=time.time(), flush=False)  # up to now: the next live step writes one step's events
        if self._producer.flush(30) != 0:
            msg = "EngineFeed: records left unsent after 30 s"
            raise RuntimeError(msg)
        return n

    # -- other records --------------------------------------------------------------------------------------
    def swap(self, version: str) -> None:
        """An operator's swap on the control topic (what ``isostream models promote`` sends)."""
        self.send_raw(self.topics.control, [f'{{"action":"swap","version":"{version}","pipeline":"{PIPELINE}"}}'
                                            .encode()])

    def send_raw(self, topic: str, values: list[bytes]) -> None:
        """Records as given (e.g. what a bad producer on the same topic writes)."""
        with self._lock:
            self._send(topic, values)
            self._producer.flush(30)

    # -- the thread -----------------------------------------------------------------------------------------
    def start(self, every_s: float = 0.75) -> EngineFeed:
        """Write a batch every ``every_s`` on a thread (a fixed cadence: the dashboard's rate is per second,
        so a batch must come more often than that, however long a step takes on a busy machine)."""

        def run() -> None:
            due = time.monotonic() + every_s
            while not self._stop.wait(max(0.0, due - time.monotonic())):
                due = max(due + every_s, time.monotonic())
                try:
                    self.step()
                except Exception as exc:  # noqa: BLE001 - kept for the test to report
                    self.errors.append(exc)

        self._thread = threading.Thread(target=run, name="engine-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self._producer.flush(10)
