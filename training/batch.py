"""The per-partition work of the batch jobs (retrain, replay), as plain functions Dask runs on workers.

A key's events all lie in one Kafka partition, so one task per partition and day walks that partition's lake
files in offset order through the stream's own feature layer (:class:`training.features.FeatureBuilder`,
starting cold: each key's first ``features.warmup_events`` events are warm-up, as for a new key in the
stream) and sees every key's history in arrival order. Tasks return small things (a sample, histograms); the
feature matrix stays on the worker that computed it (a Dask future) until the scoring pass has used it.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from streams.lake_days import read_partition
from streams.schema import Schema
from training import binned
from training.detector import Detector
from training.features import FeatureBuilder, FeaturesConfig

#: lake columns the batch jobs read besides the feature inputs: the live judgement
LIVE_COLUMNS = ("score", "is_anomaly")


def input_columns(cfg: FeaturesConfig, schema: Schema) -> list[str]:
    """The event fields the feature layer reads (key and event time included)."""
    cols = [*cfg.numeric, *(cfg.ratio or ()), schema.event_time.field, *cfg.categorical]
    if schema.key:
        cols.append(schema.key)
    return list(dict.fromkeys(cols))


@dataclass
class PartitionRows:
    """One partition's day through the feature layer, with the live judgement and labels, kept on a worker."""

    partition: int
    X: np.ndarray  # float32 (rows, features)
    warm: np.ndarray  # bool: the key was past its warm-up (only warm rows are learnt from and alerted on)
    live_score: np.ndarray  # float64: the score the stream gave (NaN where the lake has none)
    live_flag: np.ndarray  # bool: the stream's alert
    label: np.ndarray  # int8: 1 anomaly, 0 normal, -1 unknown

    @property
    def rows(self) -> int:
        return len(self.X)


def _column(table: pa.Table, name: str) -> pd.Series | None:
    return table.column(name).to_pandas() if name in table.column_names else None


def partition_features(root: str | os.PathLike[str], paths: list[str], partition: int, features: FeaturesConfig,
                       schema: Schema, label_field: str | None = None,
                       known: tuple[np.ndarray, np.ndarray] | None = None) -> PartitionRows:
    """Read one partition's files of a day (only the columns needed), file by file in offset order, and
    compute their features; memory holds one file's frame at a time besides the float32 features.

    ``known`` = (offsets, labels) of this partition from the label store: they override ``label_field``.
    """
    wanted = input_columns(features, schema) + list(LIVE_COLUMNS) + ([label_field] if label_field else [])
    if known is not None:
        wanted.append("kafka_offset")
    builder = FeatureBuilder(features, schema)
    parts: list[PartitionRows] = []
    for path in paths:
        table = read_partition(root, [path], list(dict.fromkeys(wanted)),
                               dictionary=[schema.key] if schema.key else None)
        rows = _file_rows(table, builder, partition, label_field)
        if known is not None and rows.rows and "kafka_offset" in table.column_names:
            _apply_labels(rows, table.column("kafka_offset").to_numpy(), *known)
        parts.append(rows)
    if not parts:
        parts.append(_file_rows(pa.table({}), builder, partition, label_field))
    if len(parts) == 1:
        return parts[0]
    return PartitionRows(partition, *(np.concatenate([getattr(r, k) for r in parts])
                                      for k in ("X", "warm", "live_score", "live_flag", "label")))


def _apply_labels(rows: PartitionRows, offsets: np.ndarray, known_offsets: np.ndarray,
                  known_labels: np.ndarray) -> None:
    """Set the label of the rows whose offset the store has a label for (``known_offsets`` sorted)."""
    if not len(known_offsets):
        return
    at = np.clip(np.searchsorted(known_offsets, offsets), 0, len(known_offsets) - 1)
    hit = known_offsets[at] == offsets
    rows.label[hit] = (known_labels[at[hit]] > 0).astype(np.int8)


def stored_labels(labels_path: Path, lake: str, day: str, *, key_field: str | None,
                  time_field: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Late labels of ``day`` from the label store, as (sorted offsets, labels) per partition; {} without any.

    Labels given by key and event time are resolved to the lake's partition and offset by the join.
    """
    import datetime as dt

    from training.label_metrics import join_predictions
    from training.label_store import LabelStore

    if not labels_path.is_dir():
        return {}
    labels = LabelStore(labels_path).read()
    if labels.empty:
        return {}
    matched = join_predictions(lake, labels, key_field=key_field, time_field=time_field,
                               days=[dt.date.fromisoformat(day)]).matched
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    matched = matched.sort_values(["kafka_partition", "kafka_offset"])
    parts = matched["kafka_partition"].to_numpy(np.int64)
    for p in np.unique(parts).tolist():
        g = matched[parts == p]
        out[int(p)] = (g["kafka_offset"].to_numpy(np.int64), g["label"].to_numpy(np.int64))
    return out


def _file_rows(table: pa.Table, builder: FeatureBuilder, partition: int, label_field: str | None) -> PartitionRows:
    n = table.num_rows
    if n == 0:
        width = len(builder.names)
        return PartitionRows(partition, np.zeros((0, width), np.float32), np.zeros(0, bool), np.zeros(0),
                             np.zeros(0, bool), np.zeros(0, np.int8))
    out = builder.compute(table)  # Arrow in: dictionary-coded keys skip hashing every string
    score = _column(table, "score")
    flag = _column(table, "is_anomaly")
    lab = _column(table, label_field) if label_field else None
    label = np.full(n, -1, dtype=np.int8)
    if lab is not None:
        vals = pd.to_numeric(lab, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        label = np.where(np.isfinite(vals), (vals > 0).astype(np.int8), -1).astype(np.int8)
    return PartitionRows(
        partition, out.X.astype(np.float32), np.asarray(out.warm, dtype=bool),
        np.full(n, np.nan) if score is None else score.to_numpy(dtype=np.float64, na_value=np.nan),
        np.zeros(n, dtype=bool) if flag is None else flag.to_numpy(dtype=bool, na_value=False), label)


def sample_seed(seed: int, date: str, partition: int) -> int:
    """A seed per (job seed, day, partition): a re-run draws the same sample; days and partitions differ."""
    return zlib.crc32(f"{seed}/{date}/{partition}".encode())


@dataclass
class PartitionSample:
    """Up to ``k`` rows of each pool with their uniform priorities, and the partition's counts."""

    quiet_prio: np.ndarray  # learnable rows the stream did not alert on
    quiet_X: np.ndarray
    alerted_prio: np.ndarray  # learnable rows it alerted on (learnt from only when its alerts are a regime)
    alerted_X: np.ndarray
    warm: int
    alerted: int


def draw_sample(rows: PartitionRows, k: int, seed: int) -> PartitionSample:
    """The partition's share of a uniform sample of its learnable rows (warm, finite, not labelled anomalous).

    Every learnable row of the day gets a uniform priority; each partition keeps its ``k`` smallest per pool,
    and the ``k`` smallest over all partitions (and the pools used) are a uniform sample of those rows, without
    moving more than ``2 k`` rows per partition.
    """
    ok = rows.warm & (rows.label != 1) & np.isfinite(rows.X).all(axis=1)
    prio_all = np.random.default_rng(seed).random(rows.rows)

    def pool(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(mask)
        prio = prio_all[idx]
        if len(idx) > k:
            keep = np.argpartition(prio, k - 1)[:k]
            idx, prio = idx[keep], prio[keep]
        return prio, rows.X[idx]

    qp, qx = pool(ok & ~rows.live_flag)
    ap, ax = pool(ok & rows.live_flag)
    return PartitionSample(qp, qx, ap, ax, int(rows.warm.sum()), int((rows.warm & rows.live_flag).sum()))


def merge_samples(parts: list[PartitionSample], k: int, *, regime_rate: float) -> tuple[np.ndarray, bool]:
    """The ``k`` rows with the smallest priorities; returns them and whether the stream's alerts were included.

    The stream's alerts are left out (they are the anomalies the new trees must not learn as normal) unless it
    alerted on more than ``regime_rate`` of the day's warm rows: then its alerts are a regime it did not know
    (a drift), and a sample without them would describe only the part of the day that still looked familiar.
    """
    warm = sum(p.warm for p in parts)
    alerted = sum(p.alerted for p in parts)
    regime = warm > 0 and alerted / warm > regime_rate
    prio = [p.quiet_prio for p in parts] + ([p.alerted_prio for p in parts] if regime else [])
    X = [p.quiet_X for p in parts] + ([p.alerted_X for p in parts] if regime else [])
    if not prio or not sum(len(p) for p in prio):
        return np.zeros((0, parts[0].quiet_X.shape[1] if parts else 0), dtype=np.float32), regime
    all_prio, all_X = np.concatenate(prio), np.concatenate(X)
    order = np.argsort(all_prio, kind="stable")[:k]
    return all_X[order], regime


@dataclass
class PartitionScores:
    """Histograms (on :data:`training.binned.BINS` bins) of one partition's candidate and live scores."""

    rows: int
    warm: int
    cand_normal: np.ndarray  # candidate scores of warm rows the stream did not alert on (not labelled 1)
    cand_flagged: np.ndarray  # candidate scores of warm rows the stream alerted on (not labelled 1)
    live_warm: np.ndarray  # live scores of warm rows
    live_alerts: int
    cand_pos: np.ndarray  # candidate scores of rows labelled 1 / 0
    cand_neg: np.ndarray
    live_pos: np.ndarray  # champion scores of warm rows labelled 1 / 0
    live_neg: np.ndarray

    def __add__(self, other: PartitionScores) -> PartitionScores:
        return PartitionScores(**{k: getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__})

    @classmethod
    def empty(cls) -> PartitionScores:
        z = np.zeros(binned.BINS)
        return cls(0, 0, z, z, z, 0, z, z, z, z)


def score_partition(rows: PartitionRows, detector: Detector, champion: Detector | None = None) -> PartitionScores:
    """Score the partition with ``detector`` and summarise both models' scores as histograms.

    Alert rates and agreement compare with what the stream did (its live flags). Labelled rows are also
    scored with ``champion`` on the *same* recomputed features, so AUC and AP compare the two models on equal
    terms (the live scores came from features with history from earlier days; these start cold).
    """
    import numba

    # a task per partition and a Dask thread per core are the parallelism: a numba pool inside each task
    # would oversubscribe the cores (the setting is this thread's own)
    numba.set_num_threads(1)
    s = detector.score(rows.X) if rows.rows else np.zeros(0)
    w = rows.warm
    unknown = w & (rows.label != 1)
    pos, neg = w & (rows.label == 1), w & (rows.label == 0)
    h = binned.histogram
    labelled = pos | neg
    champ = np.full(rows.rows, np.nan)
    if champion is not None and labelled.any():
        champ[labelled] = champion.score(rows.X[labelled])
    elif champion is None:
        champ = rows.live_score
    return PartitionScores(
        rows.rows, int(w.sum()), h(s[unknown & ~rows.live_flag]), h(s[unknown & rows.live_flag]), h(rows.live_score[w]),
        int((rows.live_flag & w).sum()), h(s[pos]), h(s[neg]), h(champ[pos]), h(champ[neg]))


def calibration_histogram(total: PartitionScores) -> np.ndarray:
    """The candidate's scores the threshold is calibrated on: every warm row not labelled anomalous.

    The stream's own alerts stay in, as they do in the live threshold (outside alert storms): leaving them out
    would set the quantile on a truncated distribution and, once promoted, alert on contamination *plus* the
    anomalies, about twice the live rate.
    """
    return total.cand_normal + total.cand_flagged


def summarise(total: PartitionScores, threshold: float) -> dict[str, Any]:
    """The evaluation of a candidate with ``threshold`` against the stream's live scores, from histograms."""
    cand_warm = total.cand_normal + total.cand_flagged
    cand_alerts = binned.above(cand_warm, threshold)
    live_alerts = float(total.live_alerts)
    warm = max(total.warm, 1)
    # agreement: the candidate alerts where the stream did, and stays quiet where it did not
    agree = binned.above(total.cand_flagged, threshold) + (float(total.cand_normal.sum())
                                                           - binned.above(total.cand_normal, threshold))
    out: dict[str, Any] = {
        "rows": total.rows, "warm_rows": total.warm,
        "candidate_alert_rate": cand_alerts / warm, "champion_alert_rate": live_alerts / warm,
        "agreement": agree / warm if total.warm else None,
        "candidate_score_mean": binned.mean(cand_warm), "champion_score_mean": binned.mean(total.live_warm),
        "score_drift_ks": binned.ks_distance(cand_warm, total.live_warm),
        "labelled_rows": int(total.cand_pos.sum() + total.cand_neg.sum()),
        "labelled_anomalies": int(total.cand_pos.sum()),
        "candidate_auc": binned.roc_auc(total.cand_pos, total.cand_neg),
        "candidate_ap": binned.average_precision(total.cand_pos, total.cand_neg),
        "champion_auc": binned.roc_auc(total.live_pos, total.live_neg),
        "champion_ap": binned.average_precision(total.live_pos, total.live_neg),
    }
    return out
