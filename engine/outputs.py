"""Turns a scored batch into what leaves the engine: lake rows and scores / alerts / stats records."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from streams.jsonl import to_json_lines

#: lake column names for the Kafka coordinates of each event
KAFKA_COLUMNS = {"_partition": "kafka_partition", "_offset": "kafka_offset", "_kafka_ts": "kafka_timestamp_ms"}
SCORE_BINS = np.linspace(0.0, 1.0, 41)


@dataclass(frozen=True)
class Scored:
    """One micro-batch after scoring: the lake frame plus what the topics need."""

    frame: pd.DataFrame  # input fields, score columns, kafka_* columns
    keys: list[bytes | None]
    explanations: list[str | None]


def lake_frame(decoded: pd.DataFrame, fields: list[str], score, threshold, is_anomaly, version: str) -> pd.DataFrame:
    """Input fields + score, threshold, is_anomaly, model_version + the event's Kafka coordinates."""
    out = decoded[fields].copy()
    out["score"] = np.asarray(score, dtype=np.float64)
    out["threshold"] = np.asarray(threshold, dtype=np.float64)
    out["is_anomaly"] = np.asarray(is_anomaly, dtype=bool)
    out["model_version"] = version
    for src, dst in KAFKA_COLUMNS.items():
        out[dst] = decoded[src].to_numpy()
    return out.reset_index(drop=True)


def score_records(scored: Scored, key_field: str | None, time_field: str) -> list[bytes]:
    """The ``scores`` topic records (see docs/architecture.md)."""
    f = scored.frame
    rec = pd.DataFrame(
        {
            "key": f[key_field].astype("string") if key_field else pd.Series([None] * len(f), dtype="string"),
            "event_time": f[time_field],
            "score": f["score"],
            "threshold": f["threshold"],
            "is_anomaly": f["is_anomaly"],
            "model_version": f["model_version"],
            "partition": f["kafka_partition"].astype(np.int64),
            "offset": f["kafka_offset"].astype(np.int64),
        }
    )
    return to_json_lines(rec)


def alert_records(scored: Scored) -> tuple[list[bytes], list[bytes | None]]:
    """The ``alerts`` topic records: flagged events with all their fields and an explanation."""
    mask = scored.frame["is_anomaly"].to_numpy()
    if not mask.any():
        return [], []
    flagged = scored.frame[mask].copy()
    flagged["explanation"] = [e for e, m in zip(scored.explanations, mask, strict=True) if m]
    keys = [k for k, m in zip(scored.keys, mask, strict=True) if m]
    return to_json_lines(flagged), keys


def stats_record(
    scored: Scored, *, dead_letters: int, lag: int, batch_latency_s: float, events_per_s: float
) -> bytes:
    """One ``stats`` record for the batch (throughput, anomalies, lag, score histogram)."""
    scores = scored.frame["score"].to_numpy()
    counts, _ = np.histogram(scores[np.isfinite(scores)], bins=SCORE_BINS)
    versions = scored.frame["model_version"]
    return json.dumps(
        {
            "ts": time.time(),
            "events": int(len(scores)),
            "events_per_s": float(events_per_s),
            "dead_letters": int(dead_letters),
            "anomalies": int(scored.frame["is_anomaly"].sum()),
            "lag": int(lag),
            "batch_latency_ms": float(batch_latency_s * 1000.0),
            "model_version": str(versions.iloc[-1]) if len(versions) else None,
            "threshold": float(scored.frame["threshold"].iloc[-1]) if len(versions) else None,
            "score_hist": {"edges": SCORE_BINS.tolist(), "counts": counts.tolist()},
        }
    ).encode()
