"""Late labels against the lake: the join with the stored predictions, metrics per model version, metrics.json.

:func:`join_predictions` finds the stored predictions of labelled events in the lake, :func:`metrics_by_version`
scores each model version, and :func:`update_metrics` writes the result as ``<labels_path>/metrics.json`` for
the promotion gate and the dashboard (docs/labels.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from streams.durable import atomic_write_bytes
from streams.lake import MANIFEST, LakeError, read_manifest
from streams.schema import Schema
from training.label_store import LabelStore
from training.labels import LABEL_SCHEMA, LabelError

METRICS_FILE = "metrics.json"


class JoinResult(NamedTuple):
    """The labelled events with their stored predictions, and the labels no lake row matched (yet)."""

    matched: pd.DataFrame
    unmatched: pd.DataFrame
    #: labels whose event also has a later label given the other way (coordinates vs key + time)
    superseded: int


def lake_files(lake_root: str | os.PathLike[str], days: Sequence[dt.date] | None = None) -> list[Path]:
    """The data files the lake's day manifests list (all days, or ``days``); folders without one are skipped."""
    root = Path(lake_root)
    if days is None:
        folders = sorted(d for d in root.glob("date=*") if d.is_dir())
    else:
        folders = [root / f"date={d.isoformat()}" for d in sorted(set(days))]
    out: list[Path] = []
    for day in folders:
        if (day / MANIFEST).is_file():  # a folder without one is a writer's first flush in progress
            out += [day / str(e["name"]) for e in read_manifest(day)["files"]]
    return out


_PREDICTION_COLUMNS = ("kafka_partition", "kafka_offset", "score", "is_anomaly", "model_version")


def join_predictions(
    lake_root: str | os.PathLike[str],
    labels: pd.DataFrame,
    *,
    key_field: str | None,
    time_field: str,
    days: Sequence[dt.date] | None = None,
) -> JoinResult:
    """Join labels (:meth:`LabelStore.read` or :func:`parse_labels` output) with the predictions in the lake.

    Reads only manifest-listed files (of ``days``, default all) with DuckDB. ``matched`` has one row per
    labelled lake event: ``kafka_partition, kafka_offset, <key_field>, <time_field>, score, threshold,
    is_anomaly, model_version, label``. Several lake rows with one key and time take the label on the last
    (highest partition, offset) only; an event labelled both ways keeps its latest label. Labels no lake row
    matches (not written yet, or wrong) are returned in ``unmatched``.
    """
    import duckdb  # here: reading and storing labels works without it

    missing = [c for c in LABEL_SCHEMA.names if c not in labels.columns]
    if missing:
        msg = f"labels: join_predictions needs the label columns {LABEL_SCHEMA.names}; missing {missing}"
        raise LabelError(msg)
    labels = labels.reset_index(drop=True)
    # without the store's seq, a later row of the frame counts as the later label
    seq = labels["seq"] if "seq" in labels.columns else pd.Series(np.arange(len(labels)), dtype=np.int64)
    table = pa.Table.from_pandas(labels[LABEL_SCHEMA.names].assign(seq=seq), preserve_index=False,
                                 schema=LABEL_SCHEMA.append(pa.field("seq", pa.int64())))
    table = table.append_column("_lid", pa.array(np.arange(len(labels), dtype=np.int64)))
    for attempt in range(3):
        files = [str(f) for f in lake_files(lake_root, days)]
        if not files or not len(labels):
            return JoinResult(_empty_matched(key_field, time_field), labels, 0)
        con = duckdb.connect()
        try:
            con.register("labels", table)
            con.read_parquet(files, union_by_name=True, hive_partitioning=False).create_view("lake")
            have = {row[0] for row in con.execute("DESCRIBE lake").fetchall()}
            missing = [c for c in _PREDICTION_COLUMNS if c not in have]
            if time_field not in have:
                missing.append(time_field)
            if missing:
                msg = f"labels: the lake {lake_root} lacks the columns {missing} (it has {sorted(have)})"
                raise LabelError(msg)
            joined = con.execute(_join_sql(key_field if key_field in have else None, time_field,
                                           "threshold" in have)).df()
            break
        except duckdb.IOException as err:
            if attempt == 2:  # a compaction swapped files under us three times: give up and say so
                msg = f"lake: cannot read {lake_root} for the label join: {err}"
                raise LakeError(msg) from err
        except duckdb.Error as err:  # e.g. a time column that is not a timestamp
            msg = f"lake: cannot join labels with {lake_root} (key {key_field!r}, time {time_field!r}): {err}"
            raise LakeError(msg) from err
        finally:
            con.close()
    lids = joined.pop("_lid").to_numpy()
    all_lids = joined.pop("_all_lids")
    hit = np.zeros(len(labels), dtype=bool)
    for group in all_lids:
        hit[np.asarray(group, dtype=np.int64)] = True
    superseded = int(hit.sum()) - len(lids)
    joined[time_field] = pd.to_datetime(joined.pop("_time_us"), unit="us", utc=True)
    if key_field:  # absent from the lake, it comes back empty: only offset labels can match then
        joined = joined.rename(columns={"_key": key_field})
    joined["label"] = joined["label"].astype(np.int8)
    joined["is_anomaly"] = joined["is_anomaly"].astype(bool)
    order = ["kafka_partition", "kafka_offset", *([key_field] if key_field else []), time_field, "score",
             "threshold", "is_anomaly", "model_version", "label"]
    matched = joined[order].sort_values(["kafka_partition", "kafka_offset"]).reset_index(drop=True)
    return JoinResult(matched, labels.loc[~hit].reset_index(drop=True), superseded)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _join_sql(key_field: str | None, time_field: str, has_threshold: bool) -> str:
    """The label join over the views ``labels`` and ``lake``; names come from the config, so they are quoted."""
    t = _quote(time_field)
    key = f"CAST({_quote(key_field)} AS VARCHAR)" if key_field else "CAST(NULL AS VARCHAR)"
    threshold = "threshold" if has_threshold else "CAST(NULL AS DOUBLE)"
    # one lake row per label (the last of equal key + time), then one label per lake row (the latest).
    # epoch_ns // 1000: epoch_us has no TIMESTAMPTZ_NS overload, and a cast would round where labels truncate
    return f"""
        WITH lake_rows AS (
            SELECT kafka_partition, kafka_offset, {key} AS _key, epoch_ns({t}) // 1000 AS _time_us, score,
                   {threshold} AS threshold, is_anomaly, model_version FROM lake),
        by_offset AS (
            SELECT r.*, l.label, l.seq, l._lid FROM labels l JOIN lake_rows r
              ON l."partition" IS NOT NULL AND r.kafka_partition = l."partition" AND r.kafka_offset = l."offset"),
        by_key AS (
            SELECT r.*, l.label, l.seq, l._lid FROM labels l JOIN lake_rows r
              ON l."partition" IS NULL AND r._key = l."key" AND r._time_us = epoch_us(l.event_time)
            QUALIFY row_number() OVER (PARTITION BY l._lid ORDER BY r.kafka_partition DESC,
                                       r.kafka_offset DESC) = 1),
        found AS (SELECT * FROM by_offset UNION ALL SELECT * FROM by_key)
        SELECT kafka_partition, kafka_offset, _key, _time_us, score, threshold,
               is_anomaly, model_version, label, _lid,
               list(_lid) OVER (PARTITION BY kafka_partition, kafka_offset) AS _all_lids
        FROM found
        QUALIFY row_number() OVER (PARTITION BY kafka_partition, kafka_offset ORDER BY seq DESC) = 1
    """


def _empty_matched(key_field: str | None, time_field: str) -> pd.DataFrame:
    cols: dict[str, Any] = {"kafka_partition": pd.Series(dtype=np.int64), "kafka_offset": pd.Series(dtype=np.int64)}
    if key_field:
        cols[key_field] = pd.Series(dtype=object)
    cols.update({time_field: pd.Series(dtype=pd.DatetimeTZDtype("us", "UTC")),
                 "score": pd.Series(dtype=np.float64), "threshold": pd.Series(dtype=np.float64),
                 "is_anomaly": pd.Series(dtype=bool), "model_version": pd.Series(dtype=object),
                 "label": pd.Series(dtype=np.int8)})
    return pd.DataFrame(cols)


# -- metrics ----------------------------------------------------------------------------------------------
def _metrics(label: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

    n, positives = len(label), int(label.sum())
    out: dict[str, Any] = {"n": n, "positives": positives, "flagged": int(flagged.sum())}

    def defined(v: float) -> float | None:
        return None if np.isnan(v) else float(v)

    # zero_division=nan: no flagged events (precision) or no positives (recall) is "undefined", not 0
    out["precision"] = defined(precision_score(label, flagged, zero_division=np.nan)) if n else None
    out["recall"] = defined(recall_score(label, flagged, zero_division=np.nan)) if n else None
    two_classes = 0 < positives < n
    out["ap"] = float(average_precision_score(label, score)) if two_classes else None
    out["auc"] = float(roc_auc_score(label, score)) if two_classes else None
    return out


def metrics_by_version(joined: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per ``model_version``, and for ``"all"`` rows together: ``n, positives, flagged, precision, recall, ap, auc``.

    ``precision`` and ``recall`` judge the stored decision (``is_anomaly``, the threshold of the time);
    ``ap`` (average precision) and ``auc`` (ROC AUC) rank by ``score``. All four come from scikit-learn.
    ``ap`` and ``auc`` are ``None`` when only one class is present (every label 0, or every label 1), as
    neither is defined then; ``precision`` is ``None`` with no flagged event, ``recall`` with no positive.

    >>> m = metrics_by_version(pd.DataFrame({"model_version": ["v1"] * 4, "label": [0, 0, 1, 1],
    ...                                      "score": [0.1, 0.4, 0.35, 0.8], "is_anomaly": [0, 0, 0, 1]}))
    >>> m["v1"]["auc"], m["v1"]["precision"], m["v1"]["recall"], m["all"]["n"]
    (0.75, 1.0, 0.5, 4)
    """
    missing = [c for c in ("model_version", "label", "score", "is_anomaly") if c not in joined.columns]
    if missing:
        msg = f"labels: metrics_by_version needs the columns {missing} (it has {list(joined.columns)})"
        raise LabelError(msg)

    def of(rows: pd.DataFrame) -> dict[str, Any]:
        return _metrics(rows["label"].to_numpy(dtype=np.int64), rows["score"].to_numpy(dtype=np.float64),
                        rows["is_anomaly"].to_numpy(dtype=bool).astype(np.int64))

    out = {str(v): of(rows) for v, rows in joined.groupby("model_version", sort=True)}
    out["all"] = of(joined)
    return out


class LabelsSettings(Protocol):
    """What :func:`update_metrics` reads of the configuration (``engine.config.Config`` has it)."""

    @property
    def labels_path(self) -> Path: ...

    @property
    def lake(self) -> _HasPath: ...

    @property
    def schema(self) -> Schema: ...


class _HasPath(Protocol):
    @property
    def path(self) -> Path: ...


def update_metrics(cfg: LabelsSettings, *, days: Sequence[dt.date] | None = None) -> dict[str, Any]:
    """Read the label store, join it with the lake, write ``<labels_path>/metrics.json`` atomically; return it.

    The document: ``{"updated_at", "labels", "matched", "unmatched", "superseded", "versions": {version or
    "all": metrics}}`` (see :func:`metrics_by_version`).
    """
    labels = LabelStore(cfg.labels_path).read()
    result = join_predictions(cfg.lake.path, labels, key_field=cfg.schema.key,
                              time_field=cfg.schema.event_time.field, days=days)
    doc = {
        "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "labels": len(labels),
        "matched": len(result.matched),
        "unmatched": len(result.unmatched),
        "superseded": result.superseded,
        "versions": metrics_by_version(result.matched),
    }
    try:
        atomic_write_bytes(Path(cfg.labels_path) / METRICS_FILE, json.dumps(doc, indent=1).encode() + b"\n")
    except OSError as err:
        msg = f"labels: cannot write {Path(cfg.labels_path) / METRICS_FILE}: {err}"
        raise LabelError(msg) from err
    return doc


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metrics document at ``path`` (the file, or the label store folder holding it); None if none yet."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    try:
        doc = json.loads(p.read_bytes())
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        # the store's folder was created between the check and the read (found by a fresh-clone run)
        return None if p.name == METRICS_FILE else read_metrics(p / METRICS_FILE)
    except (OSError, ValueError) as err:
        msg = f"labels: cannot read {p}: {err}"
        raise LabelError(msg) from err
    if not isinstance(doc, dict) or not isinstance(doc.get("versions"), dict):
        msg = f"labels: {p} is not a metrics document (no 'versions' mapping)"
        raise LabelError(msg)
    return doc

