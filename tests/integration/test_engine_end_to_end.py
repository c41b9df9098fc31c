"""The engine end to end on real infrastructure: tansu broker, Dask LocalCluster, partition groups, lake, topics."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from engine.cluster import dask_client
from engine.config import load
from engine.runtime import Runtime
from streams.broker import EmbeddedBroker, create_topics
from streams.generator import GeneratorSettings
from streams.kafka_sink import KafkaSink
from streams.lake import read_lake
from streams.replay import generated_chunks, replay
from tests.topics import topic_values
from training.current import read_current

pytestmark = pytest.mark.integration

N_EVENTS = 10_000


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_every_event_once_in_lake_and_scores_topic(broker: EmbeddedBroker, tmp_path: Path, delivery: str) -> None:
    topic = f"e2e-events-{delivery}"
    cfg = load(
        Path(__file__).resolve().parents[2] / "configs" / "demo.yaml",
        environ={},
        overrides={
            "kafka": {"bootstrap": broker.bootstrap, "input_topic": topic, "group_id": "e2e",
                      "topics": {"scores": f"e2e-scores-{delivery}", "alerts": f"e2e-alerts-{delivery}",
                                 "stats": f"e2e-stats-{delivery}", "dead_letter": f"e2e-dead-{delivery}",
                                 "metrics": f"e2e-metrics-{delivery}", "control": f"e2e-control-{delivery}",
                                 "incidents": f"e2e-incidents-{delivery}"},
                      "max_batch_messages": 2_000},
            "lake": {"path": str(tmp_path / "lake")},
            "model": {"fit_on_first": 3_000, "save_dir": str(tmp_path / "models")},
            "cluster": {"n_workers": 2, "processes": True, "dashboard_address": "127.0.0.1:0"},
            "runtime": {"delivery": delivery},
        },
    )
    t = cfg.kafka.topics
    create_topics(broker.bootstrap, {topic: 3, t.scores: 1, t.alerts: 1, t.stats: 1, t.dead_letter: 1})
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
            report = Runtime(cfg, client).run(stop, max_events=N_EVENTS)
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
    assert sorted(p.name for p in Path(cfg.lake.path).glob("date=*")) == ["date=2026-11-24"]

    scores = topic_values(broker.bootstrap, t.scores, committed_only=True)
    assert len(scores) == N_EVENTS
    assert len(topic_values(broker.bootstrap, t.alerts, committed_only=True)) == int(lake["is_anomaly"].sum())
    # every version that scored an event is in the registry, and the run ended on the one CURRENT names
    registry = Path(cfg.model.save_dir)
    assert set(lake["model_version"]) <= {p.name for p in registry.iterdir() if p.is_dir()}
    assert read_current(registry)["version"] == report.model_version
