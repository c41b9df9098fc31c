"""Inputs of ``benchmarks/detect.py``: the NAB corpus as one keyed stream, the ODDS sets, engine configs.

The NAB corpus and the ODDS sets are read from ``../shared/data`` (``$ISOSTREAM_DATA`` overrides): they are
not the project's to copy into the repository.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from benchmarks._engine_harness import REPO, REPORT_EVERY_S, _merge, engine_config
from engine.config import ClusterConfig, Config, Topics, load
from streams.jsonl import to_json_lines
from training.nab import SeriesLabels, load_windows, window_rows

DATA = Path(os.environ.get("ISOSTREAM_DATA", REPO.parent / "shared" / "data"))
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
NAB_CONFIG = REPO / "configs" / "nab.yaml"


class MissingData(RuntimeError):
    """A scenario's data is not on this machine; the message says what is missing (the scenario is skipped)."""


@dataclass(frozen=True)
class NabCorpus:
    """The corpus in file order per series, and its stream order across series."""

    names: tuple[str, ...]  # "<group>/<series>.csv", NAB's own names
    labels: tuple[SeriesLabels, ...]
    #: one row per event in produced order: series (the key), timestamp, value, row (index in its file),
    #: value_bytes (the JSON line), key (bytes), partition, offset
    stream: pd.DataFrame
    point_labels: int  # combined_labels.json anomalies
    #: labelled anomalies outside every window of their series (NAB's own data has one: its windows rule)
    points_outside: tuple[str, ...]


def _keyed_partitions(stream: pd.DataFrame, keys: pd.Series, partitions: int) -> pd.DataFrame:
    """Add key bytes, partition ``crc32(key) % partitions`` and the offset each row gets there when produced
    in stream order (benchmarks.detection_engine.produce_in_order writes each partition's rows in order)."""
    stream["key"] = [k.encode() for k in keys]
    stream["partition"] = np.array([zlib.crc32(k) % partitions for k in stream["key"]], dtype=np.int32)
    stream["offset"] = stream.groupby("partition").cumcount().to_numpy()
    return stream


def load_nab(partitions: int, root: Path | None = None) -> NabCorpus:
    """The 58 NAB series as one stream keyed by series name, event time = the file's timestamp.

    Series are interleaved by relative position (row i of an n-row series at i / n), so that every series
    advances together and the engine's initial fit on the first events sees all of them; each series keeps
    its file order, which is the order NAB scores.
    """
    root = root or DATA / "nab"
    files = sorted(root.glob("data/*/*.csv"))
    windows_path, labels_path = root / "labels" / "combined_windows.json", root / "labels" / "combined_labels.json"
    if not files or not windows_path.is_file():
        msg = f"NAB data not found: need {root}/data/<group>/<series>.csv and {windows_path}"
        raise MissingData(msg)
    windows = load_windows(windows_path)
    points = json.loads(labels_path.read_text()) if labels_path.is_file() else {}
    names, labels, frames, outside = [], [], [], []
    for f in files:
        name = f"{f.parent.name}/{f.name}"
        frame = pd.read_csv(f)
        lab = SeriesLabels(name, len(frame), window_rows(frame["timestamp"], windows.get(name, []), name))
        inside = lab.in_window()
        for stamp in points.get(name, []):
            hits = np.flatnonzero(pd.to_datetime(frame["timestamp"]).to_numpy() == np.datetime64(pd.Timestamp(stamp)))
            if len(hits) == 0 or not inside[hits].all():
                outside.append(f"{name} {stamp}")
        names.append(name)
        labels.append(lab)
        frames.append(pd.DataFrame({"series": f.stem, "timestamp": pd.to_datetime(frame["timestamp"], utc=True),
                                    "value": frame["value"].astype(np.float64), "row": np.arange(len(frame)),
                                    "position": np.arange(len(frame)) / len(frame)}))
    if len({f.stem for f in files}) != len(files):
        msg = f"NAB data under {root}: series names repeat across groups; the key would not be unique"
        raise MissingData(msg)
    stream = pd.concat(frames, ignore_index=True).sort_values(["position", "series"], kind="stable")
    stream = stream.drop(columns="position").reset_index(drop=True)
    stream["value_bytes"] = to_json_lines(stream[["series", "timestamp", "value"]])
    stream = _keyed_partitions(stream, stream["series"], partitions)
    return NabCorpus(tuple(names), tuple(labels), stream, sum(len(v) for v in points.values()), tuple(outside))


def per_series(corpus: NabCorpus, values: np.ndarray) -> list[np.ndarray]:
    """A per-event array in stream order, split into one array per series in file (row) order."""
    frame = pd.DataFrame({"series": corpus.stream["series"], "row": corpus.stream["row"], "v": values})
    groups = {name: g.sort_values("row")["v"].to_numpy() for name, g in frame.groupby("series", sort=False)}
    return [groups[Path(name).stem] for name in corpus.names]


def odds_sets(root: Path | None = None) -> list[Path]:
    """The ODDS/ADBench parquet files (``f0..fN`` features, ``label``), smallest file first."""
    root = root or DATA / "odds"
    found = sorted(root.glob("*.parquet"), key=lambda p: p.stat().st_size)
    if not found:
        msg = f"ODDS data not found: no {root}/*.parquet"
        raise MissingData(msg)
    return found


def cluster_config(n_workers: int) -> ClusterConfig:
    """The one LocalCluster the runs share: as the harness starts it (1 thread a worker, processes)."""
    return ClusterConfig(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0")


def run_config(path: Path, bootstrap: str, topic: str, workdir: Path, tag: str, n_workers: int,
               overrides: dict[str, Any] | None = None) -> Config:
    """The engine config at ``path`` with everything a run writes named by ``tag``, as the harness names it.

    ``configs/demo.yaml`` goes straight to ``benchmarks._engine_harness.engine_config``; any other file gets
    the harness' per-run settings (group, output topics, lake, registry, cluster, delivery, report interval)
    without loading demo.yaml, so a NAB run does not depend on the demo's file. Raises
    ``engine.config.ConfigError`` when the engine rejects the file.
    """
    if path.resolve() == DEMO_CONFIG.resolve():
        return engine_config(bootstrap, topic, workdir, tag, n_workers=n_workers, overrides=overrides)
    declared = ((yaml.safe_load(path.read_text()) or {}).get("kafka") or {}).get("topics") or {}
    per_run: dict[str, Any] = {
        "kafka": {"bootstrap": bootstrap, "input_topic": topic, "group_id": f"bench-{tag}",
                  "topics": {k: f"bench-{tag}-{k}" for k in {*Topics.model_fields, *declared}},
                  "dead_letter_dir": None},
        "lake": {"path": str(workdir / tag / "lake")},
        "model": {"save_dir": str(workdir / tag / "models")},
        "dashboard": {"enabled": False},
        "cluster": cluster_config(n_workers).model_dump(mode="json"),
        "runtime": {"delivery": "exactly_once", "report_every_s": REPORT_EVERY_S},
    }
    return load(path, environ={}, overrides=_merge(per_run, overrides or {}))
