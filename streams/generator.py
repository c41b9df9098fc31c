"""Synthetic station-alarm events with realistic per-sensor behaviour and labelled injected anomalies.

Each datapoint (sensor) has its own level, noise, daily cycle and alarm threshold; anomalies are injected as
spikes, level shifts, stuck readings and noise bursts, and carry ``label = 1`` so detection can be measured.
Fully vectorised with numpy: a million events take about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from streams.jsonl import to_json_lines  # noqa: F401 - re-exported for callers of the generator

ANOMALY_KINDS = ("spike", "level_shift", "stuck", "noise_burst")


@dataclass(frozen=True)
class GeneratorSettings:
    """Shape of the generated stream."""

    n_stations: int = 20
    datapoints_per_station: int = 8
    #: mean events per second across all sensors (event-time spacing, not wall-clock rate)
    events_per_second: float = 200.0
    anomaly_rate: float = 0.005
    start: datetime = datetime(2026, 11, 24, tzinfo=timezone.utc)
    seed: int = 0


class StationAlarmGenerator:
    """Generates consecutive chunks of one endless, reproducible event stream.

    >>> gen = StationAlarmGenerator(GeneratorSettings(seed=1))
    >>> frame = gen.next_chunk(1000)
    >>> list(frame.columns)[:4]
    ['station_id', 'datapoint_id', 'alarm_id', 'event_time']
    >>> int(frame["label"].sum()) > 0
    True
    """

    def __init__(self, settings: GeneratorSettings | None = None) -> None:
        self.settings = s = settings or GeneratorSettings()
        self._rng = np.random.default_rng(s.seed)
        n = s.n_stations * s.datapoints_per_station
        station = np.repeat(np.arange(s.n_stations), s.datapoints_per_station)
        dp = np.tile(np.arange(s.datapoints_per_station), s.n_stations)
        self._station_ids = np.array([f"ST{i:04d}" for i in station], dtype=object)
        self._datapoint_ids = np.array([f"ST{i:04d}-DP{j:02d}" for i, j in zip(station, dp, strict=True)], dtype=object)
        rng = self._rng
        # sensors differ in scale by orders of magnitude, like temperatures vs pressures vs flow counters
        self._level = rng.lognormal(mean=3.0, sigma=1.0, size=n)
        self._noise = self._level * rng.uniform(0.01, 0.05, size=n)
        self._amplitude = self._level * rng.uniform(0.02, 0.15, size=n)
        self._phase = rng.uniform(0, 2 * np.pi, size=n)
        self._threshold = self._level + self._amplitude + 4.0 * self._noise
        self._clock_s = 0.0
        self._stuck_until = np.full(n, -1.0)
        self._stuck_value = np.zeros(n)

    @property
    def n_sensors(self) -> int:
        return len(self._level)

    def next_chunk(self, n_events: int) -> pd.DataFrame:
        """The next ``n_events`` events in event-time order, with a ``label`` column (1 = injected anomaly)."""
        s, rng = self.settings, self._rng
        gaps = rng.exponential(1.0 / s.events_per_second, size=n_events)
        t = self._clock_s + np.cumsum(gaps)
        self._clock_s = float(t[-1]) if n_events else self._clock_s
        sensor = rng.integers(0, self.n_sensors, size=n_events)
        day_phase = 2 * np.pi * (t % 86_400.0) / 86_400.0
        value = (
            self._level[sensor]
            + self._amplitude[sensor] * np.sin(day_phase + self._phase[sensor])
            + rng.normal(0.0, 1.0, size=n_events) * self._noise[sensor]
        )
        label = np.zeros(n_events, dtype=np.int8)
        hit = rng.random(n_events) < s.anomaly_rate
        kind = rng.integers(0, len(ANOMALY_KINDS), size=n_events)
        lvl, noise = self._level[sensor], self._noise[sensor]
        spike = hit & (kind == 0)
        value[spike] += rng.choice([-1.0, 1.0], size=spike.sum()) * rng.uniform(8, 20, spike.sum()) * noise[spike]
        shift = hit & (kind == 1)
        value[shift] += rng.uniform(0.3, 0.8, shift.sum()) * lvl[shift]
        burst = hit & (kind == 3)
        value[burst] += rng.normal(0, 12.0, burst.sum()) * noise[burst]
        # a stuck sensor repeats one implausible reading for 30-120 s: one start covers many events
        stuck = t <= self._stuck_until[sensor]
        starts = np.flatnonzero(rng.random(n_events) < s.anomaly_rate / 100.0)
        for i in starts:
            k = sensor[i]
            self._stuck_until[k] = t[i] + rng.uniform(30, 120)
            self._stuck_value[k] = lvl[i] * rng.uniform(1.5, 2.5)
            stuck |= (sensor == k) & (t >= t[i]) & (t <= self._stuck_until[k])
        value[stuck] = self._stuck_value[sensor[stuck]]
        label[hit | stuck] = 1
        thr = self._threshold[sensor]
        base = pd.Timestamp(s.start)
        event_time = base + pd.to_timedelta(np.round(t * 1000).astype(np.int64), unit="ms")
        return pd.DataFrame(
            {
                "station_id": self._station_ids[sensor],
                "datapoint_id": self._datapoint_ids[sensor],
                "alarm_id": np.array([f"AL{c:05d}" for c in (sensor * 7919) % 100_000], dtype=object),
                "event_time": event_time,
                "value": np.round(value, 4),
                "valueThreshold": np.round(thr, 4),
                "isActive": value > thr,
                "label": label,
            }
        )
