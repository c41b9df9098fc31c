"""Synthetic lake days: generated station events scored the way the engine scores them, for the batch jobs'
tests, benchmarks and sizing (a day of N events in the lake layout without running a broker)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from engine.config import Config
from engine.outputs import lake_frame
from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.lake import LakeWriter, close_day
from training.detector import Detector
from training.features import FeatureBuilder

DAY_S = 86_400.0


def station_days(first: dt.date, days: int, n_per_day: int, *, seed: int, partitions: int = 4,
                 drift_from: int | None = None, scale: float = 1.0, threshold_scale: float = 1.0,
                 quantum: float = 0.0) -> list[pd.DataFrame]:
    """``days`` consecutive days (UTC) of about ``n_per_day`` labelled events each, from one fleet of sensors.

    Events are partitioned by key as Kafka would and numbered per partition across the days. From day index
    ``drift_from`` on, ``scale`` multiplies every value (a recalibration: levels move, alarm thresholds do not),
    ``threshold_scale`` every alarm threshold (a reconfiguration: readings stay, thresholds move), and
    ``quantum`` > 0 rounds each sensor's readings to that share of its median level (a coarser firmware).
    """
    start = dt.datetime.combine(first, dt.time(), tzinfo=dt.timezone.utc)
    gen = StationAlarmGenerator(GeneratorSettings(seed=seed, start=start, events_per_second=n_per_day / DAY_S))
    f = gen.next_chunk(int(n_per_day * days * 1.05) + 100)
    f = f[f["event_time"] < pd.Timestamp(start + dt.timedelta(days=days))].reset_index(drop=True)
    day_index = ((f["event_time"] - pd.Timestamp(start)).dt.total_seconds() // DAY_S).astype(int).to_numpy()
    if drift_from is not None:
        drifted = day_index >= drift_from
        f.loc[drifted, "value"] = f.loc[drifted, "value"] * scale
        f.loc[drifted, "valueThreshold"] = f.loc[drifted, "valueThreshold"] * threshold_scale
        if quantum > 0:
            step = quantum * f.groupby("datapoint_id")["value"].transform("median").abs().to_numpy()
            rounded = np.round(f["value"].to_numpy() / step) * step
            f["value"] = np.where(drifted, rounded, f["value"].to_numpy())
    _as_kafka(f, np.zeros(partitions, dtype=np.int64))
    return [f[day_index == i].reset_index(drop=True) for i in range(days)]


def _as_kafka(f: pd.DataFrame, next_offset: np.ndarray) -> None:
    """Add the Kafka coordinates a keyed producer gives (partition by key hash, offsets per partition, in
    place), continuing from ``next_offset`` (advanced in place)."""
    keys = f["datapoint_id"].astype(str).to_numpy(dtype=object)
    part = (pd.util.hash_array(keys) % len(next_offset)).astype(np.int64)
    f["_partition"] = part
    f["_offset"] = next_offset[part] + f.groupby(part).cumcount().to_numpy()
    next_offset += np.bincount(part, minlength=len(next_offset))
    f["_kafka_ts"] = (f["event_time"].astype("int64") // 1000).astype(np.int64)


def station_day(day: dt.date, n: int, *, seed: int, partitions: int = 4) -> pd.DataFrame:
    """One day of about ``n`` labelled events (see :func:`station_days`)."""
    return station_days(day, 1, n, seed=seed, partitions=partitions)[0]


def fit_champion(cfg: Config, frame: pd.DataFrame, rows: int = 5_000) -> Detector:
    """A first model as the coordinator fits it: on the first warm rows' features."""
    fb = FeatureBuilder(cfg.features, cfg.schema)
    out = fb.compute(frame)
    return Detector.fit(out.X[out.warm][:rows], fb.names, builder="numba", seed=cfg.model.seed,
                        n_trees=cfg.model.n_trees, contamination=cfg.model.contamination)


def day_chunks(day: dt.date, n: int, *, seed: int, partitions: int = 4,
               chunk: int = 2_000_000) -> Iterator[pd.DataFrame]:
    """About ``n`` events of one day from one fleet, in event-time chunks of ``chunk`` (bounded memory for big
    days), partitioned and numbered as :func:`station_days` does, offsets continuing across chunks."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    gen = StationAlarmGenerator(GeneratorSettings(seed=seed, start=start, events_per_second=n / DAY_S))
    end = pd.Timestamp(start + dt.timedelta(days=1))
    next_offset = np.zeros(partitions, dtype=np.int64)
    while True:
        f = gen.next_chunk(chunk)
        f = f[f["event_time"] < end].reset_index(drop=True)
        if not len(f):
            return
        _as_kafka(f, next_offset)
        yield f
        if len(f) < chunk:
            return


def write_scored_day(cfg: Config, frame: pd.DataFrame, det: Detector, *, close: bool = True,
                     builders: dict[int, FeatureBuilder] | None = None) -> Path:
    """Score ``frame`` with ``det`` per partition (features in arrival order) and write it as the engine does.

    ``builders`` carries each partition's feature state across calls (a day written chunk by chunk).
    """
    fields = [f.name for f in cfg.schema.fields]
    writer = LakeWriter(cfg.lake.path, time_field=cfg.schema.event_time.field, tz=cfg.lake.timezone)
    state = builders if builders is not None else {}
    for p in np.unique(frame["_partition"].to_numpy()).tolist():
        part = frame[frame["_partition"] == p].reset_index(drop=True)
        fb = state.setdefault(int(p), FeatureBuilder(cfg.features, cfg.schema))
        out = fb.compute(part)
        score = det.score(out.X)
        flagged = (score > det.threshold) & out.warm
        writer.write(lake_frame(part, [f for f in fields if f in part.columns], score,
                                np.full(len(part), det.threshold), flagged, det.version))
    day = frame["event_time"].iloc[0].date()
    if close:
        close_day(cfg.lake.path, day)
    return cfg.lake.path / f"date={day.isoformat()}"


def scored_day_with_champion(cfg: Config, frame: pd.DataFrame, *, rows: int = 5_000, close: bool = True) -> Detector:
    """A day as the engine leaves it: a first model fitted on its start, registered as ``CURRENT``, and the day
    scored by it in the lake (closed unless ``close`` is false). Returns the model."""
    from training.current import set_current

    champion = fit_champion(cfg, frame, rows=rows)
    champion.save(cfg.registry / champion.version)
    set_current(cfg.registry, champion.version)
    write_scored_day(cfg, frame, champion, close=close)
    return champion
