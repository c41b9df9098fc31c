"""The slice end to end on real infrastructure: tansu broker, Dask LocalCluster, engine, lake, topics."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from engine.cluster import dask_client
from engine.config import load
from engine.pipeline import Engine
from streams.broker import EmbeddedBroker, create_topics
from streams.generator import GeneratorSettings
from streams.kafka_sink import KafkaSink
from streams.lake import read_lake
from streams.replay import generated_chunks, replay
from tests.topics import topic_values

pytestmark = pytest.mark.integration

N_EVENTS = 10_000


def test_every_event_once_in_lake_and_scores_topic(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = "e2e-events"
    cfg = load(
        Path(__file__).resolve().parents[2] / "configs" / "demo.yaml",
        environ={},
        overrides={
            "kafka": {"bootstrap": broker.bootstrap, "input_topic": topic, "group_id": "e2e",
                      "topics": {"scores": "e2e-scores", "alerts": "e2e-alerts", "stats": "e2e-stats",
                                 "dead_letter": "e2e-dead"},
                      "max_batch_messages": 2_000, "dead_letter_dir": None},
            "lake": {"path": str(tmp_path / "lake")},
            "model": {"fit_on_first": 3_000, "save_dir": str(tmp_path / "models")},
            "cluster": {"n_workers": 1, "processes": True, "dashboard_address": "127.0.0.1:0"},
        },
    )
    create_topics(broker.bootstrap, {topic: 3, "e2e-scores": 1, "e2e-alerts": 1, "e2e-stats": 1, "e2e-dead": 1})
    sink = KafkaSink(cfg.kafka.client_settings(), topic)
    try:
        produced = replay(generated_chunks(N_EVENTS, 2_500, GeneratorSettings(seed=11)), sink,
                          key_field=cfg.schema.key)
    finally:
        sink.close()
    assert produced == N_EVENTS

    stop = threading.Event()
    fired = threading.Event()

    def safety_net() -> None:  # the run must end on its own when every event is done; this only unblocks a bug
        fired.set()
        stop.set()

    timer = threading.Timer(240, safety_net)
    timer.start()
    try:
        with dask_client(cfg.cluster) as client:
            engine = Engine(cfg, client)
            engine.target_events = N_EVENTS
            report = engine.run(stop)
    finally:
        timer.cancel()
    assert not fired.is_set(), "the run ended on the safety timer, not on reaching its target"
    assert report.events == N_EVENTS and report.dead_letters == 0

    lake = read_lake(cfg.lake.path)
    assert len(lake) == N_EVENTS
    assert not lake.duplicated(["kafka_partition", "kafka_offset"]).any()
    per_partition = lake.groupby("kafka_partition")["kafka_offset"].agg(["min", "max", "count"])
    assert (per_partition["min"] == 0).all()
    assert (per_partition["max"] + 1 == per_partition["count"]).all()  # no gaps
    assert np.isfinite(lake["score"]).all() and ((lake["score"] > 0) & (lake["score"] <= 1)).all()
    assert set(lake.columns) >= {f.name for f in cfg.schema.fields} | {
        "score", "threshold", "is_anomaly", "model_version", "kafka_partition", "kafka_offset"}
    assert lake["model_version"].notna().all()
    assert sorted(p.name for p in Path(cfg.lake.path).iterdir()) == ["date=2026-11-24"]

    assert len(topic_values(broker.bootstrap, "e2e-scores")) == N_EVENTS
    assert len(topic_values(broker.bootstrap, "e2e-stats")) == report.batches
    assert len(topic_values(broker.bootstrap, "e2e-alerts")) == int(lake["is_anomaly"].sum())
    # the model that scored the stream was saved as a version directory
    assert (Path(cfg.model.save_dir) / report.model_version.split("+")[0]).exists() or any(
        Path(cfg.model.save_dir).iterdir())
