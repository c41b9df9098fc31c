"""Synthetic station-alarm events with realistic per-sensor behaviour and labelled injected anomalies.

Each datapoint (sensor) has its own level, noise sd, daily cycle and alarm threshold. A normal reading is
``level + amplitude * sin(2 pi * time_of_day + phase) + N(0, 1) * noise``
(:meth:`StationAlarmGenerator.normal_signal` gives the part before the noise). Anomalies replace that reading; every event whose value was changed carries
``label = 1`` and no other event does. Every labelled value is at least :data:`MIN_DEVIATION_SD` noise sd away
from its sensor's normal signal (typical normal readings are within 2 sd, and 4 sd is exceeded by about 1 normal
reading in 16,000), so no label is undetectable by construction.

Point anomalies: each event independently, with probability ``anomaly_rate``, one of (equally likely)

* ``spike``: normal signal +/- 8-20 noise sd (random sign, uniform magnitude); one event.
* ``level_shift``: normal signal + 30-80 % of the sensor's level (always upwards: >= 6 noise sd since the
  noise sd is at most 5 % of the level); one event, the next reading is normal again.
* ``noise_burst``: normal signal +/- (4 + |N(0, 8)|) noise sd: an outsized noise draw, with its smallest
  magnitudes (which would look normal) cut off at 4 sd; one event.

Run anomaly:

* ``stuck``: with probability ``anomaly_rate / 100`` per event, that event's sensor freezes at one implausible
  reading, 1.5-2.5x its level (>= 35 % of the level, i.e. >= 7 noise sd, from any normal value), for 30-120 s of
  event time; every event of that sensor in the run, including across chunks, reads the frozen value and is
  labelled. A point anomaly drawn inside a run is overwritten by the frozen value (still labelled).

Fully vectorised with numpy and reproducible from ``seed``: a million events take about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from streams.jsonl import to_json_lines  # noqa: F401 - re-exported for callers of the generator

ANOMALY_KINDS = ("spike", "level_shift", "stuck", "noise_burst")
#: the kinds drawn per event; ``stuck`` is only ever a run (a point "stuck" would change nothing)
POINT_KINDS = ("spike", "level_shift", "noise_burst")
#: every labelled value lies at least this many noise sd from its sensor's normal signal
MIN_DEVIATION_SD = 4.0


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
    """Generates consecutive chunks of one endless, reproducible event stream (anomaly kinds: module docstring).

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
        self._sensor_of = pd.Index(self._datapoint_ids)
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

    def normal_signal(self, datapoint_id: pd.Series, event_time: pd.Series) -> np.ndarray:
        """Each event's normal reading without noise: its sensor's level plus daily cycle at its event time.

        With :meth:`noise_sd` this tells how far a generated value is from normal (for checks and evaluation).

        >>> gen = StationAlarmGenerator(GeneratorSettings(seed=1))
        >>> f = gen.next_chunk(2000)
        >>> deviation = f["value"] - gen.normal_signal(f["datapoint_id"], f["event_time"])
        >>> z = deviation / gen.noise_sd(f["datapoint_id"])
        >>> bool((z[f["label"] == 1].abs() >= MIN_DEVIATION_SD).all())
        True
        """
        k = self._sensors(datapoint_id)
        t = (pd.DatetimeIndex(event_time) - pd.Timestamp(self.settings.start)).total_seconds().to_numpy()
        return self._expected(k, t)

    def noise_sd(self, datapoint_id: pd.Series) -> np.ndarray:
        """Each event's sensor noise standard deviation (the unit of every anomaly magnitude)."""
        return self._noise[self._sensors(datapoint_id)]

    def _sensors(self, datapoint_id: pd.Series) -> np.ndarray:
        k = self._sensor_of.get_indexer(pd.Index(datapoint_id))
        if (k < 0).any():
            unknown = pd.Index(datapoint_id)[k < 0][0]
            msg = f"generator: datapoint_id {unknown!r} is not one of this generator's sensors"
            raise KeyError(msg)
        return k

    def _expected(self, sensor: np.ndarray, t: np.ndarray) -> np.ndarray:
        day_phase = 2 * np.pi * (t % 86_400.0) / 86_400.0
        return self._level[sensor] + self._amplitude[sensor] * np.sin(day_phase + self._phase[sensor])

    def next_chunk(self, n_events: int) -> pd.DataFrame:
        """The next ``n_events`` events in event-time order, with a ``label`` column (1 = injected anomaly)."""
        s, rng = self.settings, self._rng
        gaps = rng.exponential(1.0 / s.events_per_second, size=n_events)
        t = self._clock_s + np.cumsum(gaps)
        self._clock_s = float(t[-1]) if n_events else self._clock_s
        sensor = rng.integers(0, self.n_sensors, size=n_events)
        expected = self._expected(sensor, t)
        value = expected + rng.normal(0.0, 1.0, size=n_events) * self._noise[sensor]
        hit = rng.random(n_events) < s.anomaly_rate
        kind = rng.integers(0, len(POINT_KINDS), size=n_events)
        lvl, noise = self._level[sensor], self._noise[sensor]
        # anomalies replace the reading rather than add to its noise draw: a draw of opposite sign could
        # otherwise cancel most of a deviation and leave a labelled value that looks normal
        spike = hit & (kind == 0)
        value[spike] = expected[spike] + (rng.choice([-1.0, 1.0], size=spike.sum())
                                          * rng.uniform(8, 20, spike.sum()) * noise[spike])
        shift = hit & (kind == 1)
        value[shift] = expected[shift] + rng.uniform(0.3, 0.8, shift.sum()) * lvl[shift]
        burst = hit & (kind == 2)
        magnitude = MIN_DEVIATION_SD + np.abs(rng.normal(0, 8.0, burst.sum()))
        value[burst] = expected[burst] + rng.choice([-1.0, 1.0], size=burst.sum()) * magnitude * noise[burst]
        # a stuck sensor repeats one implausible reading for 30-120 s: one start covers many events
        stuck = t <= self._stuck_until[sensor]
        starts = np.flatnonzero(rng.random(n_events) < s.anomaly_rate / 100.0)
        for i in starts:
            k = sensor[i]
            self._stuck_until[k] = t[i] + rng.uniform(30, 120)
            self._stuck_value[k] = lvl[i] * rng.uniform(1.5, 2.5)
            stuck |= (sensor == k) & (t >= t[i]) & (t <= self._stuck_until[k])
        value[stuck] = self._stuck_value[sensor[stuck]]
        label = (hit | stuck).astype(np.int8)
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
