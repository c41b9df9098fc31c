"""`isostream run --scheduler`: the engine on an existing cluster of real `dask scheduler` and `dask worker`
processes, as a deployment runs it (the lake, registry and checkpoints on a filesystem every worker sees)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client

from streams.broker import EmbeddedBroker, create_topics
from streams.generator import GeneratorSettings
from streams.kafka_sink import KafkaSink
from streams.lake import read_lake
from streams.replay import generated_chunks, replay

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
N = 8_000


def test_run_on_an_existing_scheduler_with_two_worker_processes(broker: EmbeddedBroker, scheduler: str,
                                                                tmp_path: Path) -> None:
    topic = "sched-events"
    create_topics(broker.bootstrap, {topic: 4, **{f"sched-{t}": 1 for t in ("scores", "alerts", "stats", "dead")}})
    sink = KafkaSink({"bootstrap.servers": broker.bootstrap}, topic)
    try:
        replay(generated_chunks(N, 2_000, GeneratorSettings(seed=9)), sink, key_field="datapoint_id")
    finally:
        sink.close()
    env = dict(os.environ, ISOSTREAM__KAFKA__GROUP_ID="sched", ISOSTREAM__KAFKA__TOPICS__SCORES="sched-scores",
               ISOSTREAM__KAFKA__TOPICS__ALERTS="sched-alerts", ISOSTREAM__KAFKA__TOPICS__STATS="sched-stats",
               ISOSTREAM__KAFKA__TOPICS__DEAD_LETTER="sched-dead", ISOSTREAM__KAFKA__TOPICS__METRICS="sched-metrics",
               ISOSTREAM__KAFKA__TOPICS__CONTROL="sched-control", ISOSTREAM__MODEL__FIT_ON_FIRST="2000")
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--config", str(REPO / "configs" / "demo.yaml"),
         "--bootstrap", broker.bootstrap, "--topic", topic, "--lake", str(tmp_path / "lake"),
         "--registry", str(tmp_path / "models"), "--scheduler", scheduler, "--max-events", str(N), "--json"],
        cwd=REPO, env=env, text=True, capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    totals = json.loads(done.stdout.strip().splitlines()[-1])
    assert totals["records"] == N and totals["events"] == N and not totals["failed"]
    lake = read_lake(tmp_path / "lake")
    assert len(lake) == N and not lake.duplicated(["kafka_partition", "kafka_offset"]).any()
    # both worker processes ran partition groups
    with Client(scheduler, timeout="10s") as client:
        logs = client.get_events("isostream-progress")
    assert len({m["worker"] for _, m in logs if isinstance(m, dict)}) == 2
