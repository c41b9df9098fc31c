"""Scale-out on a real Dask LocalCluster (2 worker processes): partitions spread, a killed worker's taken over."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from streams.broker import EmbeddedBroker
from streams.distributed import ConsumerSpec, ParquetBatchWriter, PartitionSupervisor
from streams.faults import encode, good_event
from streams.kafka_sink import KafkaSink
from streams.schema import STATION_ALARM

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _produce(broker: EmbeddedBroker, topic: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with KafkaSink({"bootstrap.servers": broker.bootstrap}, topic) as sink:
        for start in range(0, n, 1_000):  # many small producer batches: consumers see a steady stream
            docs = [good_event(rng) for _ in range(min(1_000, n - start))]
            sink.write([encode(d) for d in docs], partitions=[i % PARTITIONS for i in range(len(docs))])
            sink.flush()


def _written(directory: Path) -> list[tuple[int, int]]:
    files = sorted(directory.glob("p*.parquet"))
    if not files:
        return []
    table = pq.read_table(files, columns=["_partition", "_offset"])
    return list(zip(table.column("_partition").to_pylist(), table.column("_offset").to_pylist(), strict=True))


def _wait_for(predicate, timeout_s: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_partitions_spread_over_workers_and_a_killed_workers_are_taken_over(
    broker: EmbeddedBroker, tmp_path: Path, seed: int
) -> None:
    topic, first, second = "dist-events", 20_000, 10_000
    broker.create_topic(topic, PARTITIONS)
    _produce(broker, topic, first, seed)
    out = tmp_path / "out"
    spec = ConsumerSpec(settings={"bootstrap.servers": broker.bootstrap}, topic=topic, schema=STATION_ALARM,
                        group_id="dist", handler=ParquetBatchWriter(str(out)), max_messages=500,
                        report_every_s=0.5)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        sup = PartitionSupervisor(client, spec)
        assignment = sup.start()
        assert len(assignment) == 2 and sorted(p for ps in assignment.values() for p in ps) == [0, 1, 2, 3]
        sup.watch(interval_s=0.5)
        try:
            _wait_for(lambda: len(_written(out)) >= 2_000, 60)
            victim, victim_parts = next(iter(assignment.items()))
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)
            _produce(broker, topic, second, seed + 1)
            _wait_for(lambda: len(set(_written(out))) >= first + second, 120)
            progress = sup.progress()
        finally:
            results = sup.stop()
        assert [t["partitions"] for t in sup.takeovers] == [victim_parts]
        assert sup.takeovers[0]["from"] == victim and sup.takeovers[0]["to"] != victim
        assert sup.takeovers[0]["reason"] == "worker lost"
        assert all(victim not in ws for ws in [sup.assignment()])
    written = _written(out)
    by_partition: dict[int, set[int]] = {}
    for p, o in written:
        by_partition.setdefault(p, set()).add(o)
    # nothing lost: every offset of every partition is in the output (duplicates allowed: at-least-once)
    assert {p: len(s) for p, s in by_partition.items()} == {p: max(s) + 1 for p, s in by_partition.items()}
    assert sum(len(s) for s in by_partition.values()) == first + second
    assert progress and all("lag" in m for m in progress.values())
    assert sum(r["records"] for r in results) >= second  # the surviving tasks' totals came back
