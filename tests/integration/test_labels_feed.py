"""The labels feed against the real broker: topic records reach the store and metrics.json, a restart resumes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer
from sklearn.metrics import average_precision_score, roc_auc_score

from engine.config import Config, load
from engine.labels_feed import LabelsFeed, run_labels_feed
from streams.broker import EmbeddedBroker
from streams.lake import LakeWriter
from tests.topics import fresh_topic
from training.label_metrics import read_metrics
from training.label_store import LabelStore

pytestmark = pytest.mark.integration

EVENTS = 200


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _lake(root: Path, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    i = np.arange(EVENTS)
    label = (rng.random(EVENTS) < 0.25).astype(int)
    score = np.clip(0.4 + 0.3 * label + rng.normal(0, 0.15, EVENTS), 0, 1)
    frame = pd.DataFrame({
        "datapoint_id": [f"dp{k % 5}" for k in i],
        "event_time": (pd.Timestamp("2026-11-24T10:00:00.000321Z") + pd.to_timedelta(i, unit="s"))
        .astype("datetime64[us, UTC]"),
        "score": score, "threshold": 0.6, "is_anomaly": score > 0.6,
        "model_version": np.where(i < EVENTS // 2, "v1", "v2"),
        "kafka_partition": (i % 2).astype(np.int64), "kafka_offset": (i // 2).astype(np.int64),
    })
    LakeWriter(root, time_field="event_time").write(frame)
    return frame.assign(label=label)


def _produce(bootstrap: str, topic: str, values: list[bytes | None]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for n, value in enumerate(values):
        producer.produce(topic, value=value, partition=n % 2)
    assert producer.flush(30) == 0


def _cfg(broker: EmbeddedBroker, topic: str, lake: Path) -> Config:
    return load(overrides={"kafka": {"bootstrap": broker.bootstrap, "topics": {"labels": topic}},
                           "lake": {"path": str(lake)}}, environ={})


def test_labels_on_the_topic_reach_the_store_and_metrics_and_a_restart_resumes(
        broker: EmbeddedBroker, tmp_path: Path, seed: int) -> None:
    topic = fresh_topic(broker, "labels", 2)
    rows = _lake(tmp_path / "lake", seed)
    cfg = _cfg(broker, topic, tmp_path / "lake")
    good: list[bytes | None] = [
        json.dumps({"partition": int(r["kafka_partition"]), "offset": int(r["kafka_offset"]),
                    "label": int(r["label"])} if n % 2 else
                   {"key": r["datapoint_id"], "event_time": r["event_time"].isoformat(), "label": bool(r["label"])}
                   ).encode()
        for n, r in enumerate(rows.to_dict("records"))]
    bad: list[bytes | None] = [b"not json", b'{"partition": 0, "label": 1}', b'{"partition": 0, "offset": 1, '
                               b'"label": "maybe"}', None]
    _produce(broker.bootstrap, topic, good + bad)

    stop = threading.Event()
    thread = threading.Thread(target=run_labels_feed, args=(cfg, stop), kwargs={"poll_s": 0.2}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: (m := read_metrics(cfg.labels_path)) is not None and m["matched"] == EVENTS,
                   "metrics.json to show every label matched")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    doc = read_metrics(cfg.labels_path)
    assert doc is not None and (doc["labels"], doc["unmatched"]) == (EVENTS, 0)
    assert doc["versions"]["all"]["auc"] == pytest.approx(roc_auc_score(rows["label"], rows["score"]))
    v2 = rows[rows["model_version"] == "v2"]
    assert doc["versions"]["v2"]["ap"] == pytest.approx(average_precision_score(v2["label"], v2["score"]))
    store = LabelStore(cfg.labels_path)
    assert sorted(store.read_rejects()["reason"]) == ["bad_label", "invalid_json", "invalid_json",
                                                      "missing_coordinates"]
    stored = store.count_rows()
    assert stored == EVENTS

    # a corrected label after the restart: only it is read, and it wins
    first = rows.iloc[1].to_dict()  # labelled by offset above
    _produce(broker.bootstrap, topic, [json.dumps({"partition": int(first["kafka_partition"]),
                                                   "offset": int(first["kafka_offset"]),
                                                   "label": 1 - int(first["label"])}).encode()])
    feed = LabelsFeed(cfg, poll_s=0.2, flush_s=0.2, metrics_every_s=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=feed.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: feed.stats.metrics_updates >= 1, "the restarted feed to refresh the metrics")
    finally:
        stop.set()
        thread.join(30)
    assert feed.stats.records == 1 and store.count_rows() == stored + 1
    flipped = rows["label"].to_numpy().copy()
    flipped[1] = 1 - flipped[1]
    doc = read_metrics(cfg.labels_path)
    assert doc is not None and doc["labels"] == EVENTS and doc["versions"]["all"]["positives"] == flipped.sum()
