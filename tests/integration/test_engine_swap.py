"""Hot model swap on the real broker and a LocalCluster: the control topic moves the registry pointer and
every partition group swaps between batches without stopping; a tampered version is refused."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from engine.cluster import dask_client
from engine.config import load
from engine.runtime import RunReport, Runtime
from engine.steps import PartitionFeatures
from streams.broker import EmbeddedBroker, create_topics
from streams.generator import GeneratorSettings
from streams.kafka_sink import KafkaSink
from streams.lake import read_lake
from streams.replay import generated_chunks, replay
from tests.topics import topic_values
from training.detector import Detector

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PHASE = 6_000


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def test_control_topic_swaps_every_worker_between_batches_and_refuses_a_tampered_version(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = "swap-events"
    names = {k: f"swap-{k}" for k in ("scores", "alerts", "stats", "dead_letter", "metrics", "control", "incidents")}
    cfg = load(REPO / "configs" / "demo.yaml", environ={}, overrides={
        "kafka": {"bootstrap": broker.bootstrap, "input_topic": topic, "group_id": "swap", "topics": names,
                  "max_batch_messages": 1_000},
        "lake": {"path": str(tmp_path / "lake")},
        "model": {"fit_on_first": 2_000, "save_dir": str(tmp_path / "models"), "publish_every_s": 3_600},
        "cluster": {"n_workers": 2, "dashboard_address": "127.0.0.1:0"},
        "runtime": {"commit_interval_ms": 200, "metrics_port": 0},
    })
    create_topics(broker.bootstrap, {topic: 4, **{v: 1 for v in names.values()}})
    sink = KafkaSink(cfg.kafka.client_settings(), topic)
    chunks = generated_chunks(2 * PHASE, 1_000, GeneratorSettings(seed=4))

    def produce(n: int) -> None:
        replay((next(chunks) for _ in range(n // 1_000)), sink, key_field=cfg.schema.key)

    produce(PHASE)
    stop = threading.Event()
    out: dict[str, RunReport] = {}
    with dask_client(cfg.cluster) as client:
        runtime = Runtime(cfg, client)
        thread = threading.Thread(target=lambda: out.setdefault("r", runtime.run(stop, max_events=2 * PHASE)))
        thread.start()
        try:
            _wait(lambda: runtime.report.records_in >= PHASE, 120, "phase 1 to be committed")
            first = runtime.report.model_version
            # Prometheus text on loopback while the stream runs: per group, labelled by pipeline
            assert runtime.metrics_port
            _wait(lambda: _records_total(runtime.metrics_port) >= PHASE, 30, "/metrics to count phase 1")
            registry = Path(cfg.model.save_dir)
            feature_names = PartitionFeatures(cfg.features, cfg.schema).names
            rng = np.random.default_rng(0)
            new = Detector.fit(rng.normal(size=(2_000, len(feature_names))), feature_names, n_trees=20)
            new.save(registry / new.version)
            bad = Detector.fit(rng.normal(size=(2_000, len(feature_names))) + 3, feature_names, n_trees=20)
            bad.save(registry / "tampered")
            arrays = registry / "tampered" / "arrays.npz"
            arrays.write_bytes(arrays.read_bytes()[:-10] + b"x" * 10)
            control = KafkaSink(cfg.kafka.client_settings(), names["control"])
            control.write([json.dumps({"action": "swap", "version": "tampered"}).encode()])
            control.flush()
            _wait(lambda: any("tampered" in (g.get("model_error") or "") for g in _latest(runtime)), 60,
                  "the tampered version to be refused")
            control.write([json.dumps({"action": "swap", "version": new.version}).encode()])
            control.close()
            _wait(lambda: {g["model_version"] for g in _latest(runtime)} == {new.version}, 60,
                  "every group to swap to the new version")
            swapped_at = _committed(runtime)
            produce(PHASE)
            thread.join(timeout=180)
        finally:
            stop.set()
            thread.join(timeout=60)
    report = out["r"]
    assert report.records_in == 2 * PHASE and not report.failed

    lake = read_lake(cfg.lake.path)
    assert len(lake) == 2 * PHASE and not lake.duplicated(["kafka_partition", "kafka_offset"]).any()
    assert first is not None and first != new.version and "tampered" not in set(lake["model_version"])
    after = lake[[o >= swapped_at.get(int(p), 0) for p, o in zip(lake["kafka_partition"], lake["kafka_offset"],
                                                                  strict=True)]]
    assert len(after) >= PHASE  # every event of phase 2, and any of phase 1 scored after the swap
    assert set(after["model_version"]) == {new.version}
    scores = [json.loads(v) for v in topic_values(broker.bootstrap, names["scores"], committed_only=True)]
    assert len({(s["partition"], s["offset"]) for s in scores}) == 2 * PHASE
    metrics = [json.loads(v) for v in topic_values(broker.bootstrap, names["metrics"])]
    assert metrics and {m["pipeline"] for m in metrics} == {"default"}


def _records_total(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("isostream_records_total{") and 'pipeline="default"' in line)


def _latest(runtime: Runtime) -> list[dict]:
    return [snap for _, snap in runtime._tasks.values() if snap is not None]


def _committed(runtime: Runtime) -> dict[int, int]:
    return {int(k.split("/")[1]): v for k, v in runtime._done.items()}
