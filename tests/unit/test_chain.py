"""The whole chain on in-memory parts: source, steps, committer, lake, checkpoints, model coordinator.

No Kafka and no Dask: the same :class:`engine.group.GroupRunner` a worker runs, fed by a
:class:`engine.source.MemorySource`, committing into a :class:`engine.committer.MemoryCommitter`.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.checkpoint import CheckpointStore
from engine.committer import MemoryCommitter
from engine.config import Config, load
from engine.coordinator import ModelCoordinator
from engine.group import GroupParts, GroupRunner
from engine.model_holder import ModelError, ModelHolder
from engine.source import MemorySource
from engine.steps import PartitionFeatures
from engine.task import windows_lake
from streams.generator import GeneratorSettings, StationAlarmGenerator, to_json_lines
from streams.lake import LakeWriter, read_lake
from streams.records import RawBatch
from training.current import read_current, set_current
from training.detector import Detector
from training.features import FeatureBuilder

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = [0, 1]


def _cfg(tmp: Path, **runtime) -> Config:
    return load(REPO / "configs" / "demo.yaml", environ={}, overrides={
        "lake": {"path": str(tmp / "lake")},
        # short streams of 160 keys: a key is warm after 8 events, so the first fit has 1,000 warm rows
        "features": {"warmup_events": 8},
        "model": {"save_dir": str(tmp / "models"), "fit_on_first": 1_000, "publish_every_s": 0.001},
        "runtime": {"commit_interval_ms": 1, **runtime},
    })


def _batches(n: int, seed: int, bad_every: int = 0, size: int = 500) -> list[RawBatch]:
    """Generated events keyed like a Kafka producer would (key -> partition), cut into batches per partition."""
    frame = StationAlarmGenerator(GeneratorSettings(seed=seed)).next_chunk(n)
    values = to_json_lines(frame.drop(columns=["label", "anomaly_kind"], errors="ignore"))
    keys = [k.encode() for k in frame["datapoint_id"]]
    if bad_every:
        values = [b"{not json" if i % bad_every == 0 else v for i, v in enumerate(values)]
    part = np.array([zlib.crc32(k) % len(PARTITIONS) for k in keys], dtype=np.int32)
    out: list[RawBatch] = []
    for p in PARTITIONS:
        idx = np.flatnonzero(part == p)
        offsets = np.arange(len(idx), dtype=np.int64)
        for a in range(0, len(idx), size):
            sel = idx[a:a + size]
            out.append(RawBatch("events", [values[i] for i in sel], [keys[i] for i in sel],
                                np.full(len(sel), p, dtype=np.int32), offsets[a:a + len(sel)],
                                np.full(len(sel), 1_000, dtype=np.int64)))
    out.sort(key=lambda b: (int(b.offsets[0]), int(b.partitions[0])))  # interleave the partitions
    return out


class Harness:
    """One pipeline's in-memory parts that outlive a runner, as Kafka, the lake and the registry do."""

    def __init__(self, tmp: Path, batches: list[RawBatch], **runtime) -> None:
        self.tmp = tmp
        self.cfg = _cfg(tmp, **runtime)
        self.batches = batches
        self.names = PartitionFeatures(self.cfg.features, self.cfg.schema).names
        self.coordinator = ModelCoordinator(self.cfg.model, self.names)
        self.committer = MemoryCommitter()
        self.committed: dict[int, int] = {}

    def learn(self, sample: dict) -> None:
        self.coordinator.offer(sample)
        self.coordinator.tick()

    def runner(self) -> tuple[GroupRunner, MemorySource]:
        source = MemorySource(self.batches, partitions=PARTITIONS, committed=self.committed, topic="events")
        self.committer = _Remembering(self.committer, source, self)
        cfg = self.cfg
        parts = GroupParts(
            source=source, committer=self.committer,
            lake=LakeWriter(cfg.lake.path, time_field="event_time"),
            checkpoints=CheckpointStore(cfg.state_dir, "p0.1"),
            holder=ModelHolder(cfg.model.save_dir, self.names), learn=self.learn, dead_dir=cfg.dead_letter_dir,
            windows_lake=windows_lake(cfg))
        return GroupRunner(cfg, PARTITIONS, parts), source

    def run_all(self) -> GroupRunner:
        """Run until every message is committed (as the driver stops a group once its records are done)."""
        runner, _ = self.runner()
        ends = {p: max(int(b.offsets.max()) + 1 for b in self.batches if b.partitions[0] == p) for p in PARTITIONS}
        runner.run(lambda: all(self.committed.get(p, 0) >= e for p, e in ends.items()))
        return runner


class _Remembering(MemoryCommitter):
    """A MemoryCommitter that also moves the harness's committed offsets (what Kafka keeps across a crash)."""

    def __init__(self, inner: MemoryCommitter, source: MemorySource, harness: Harness) -> None:
        super().__init__()
        self.topics, self.offsets, self.commits = inner.topics, inner.offsets, inner.commits
        self.source, self.harness = source, harness

    def commit(self, offsets: dict[int, int], records: list) -> None:
        super().commit(offsets, records)
        self.harness.committed.update(offsets)


def _key_state(runner: GroupRunner, partition: int) -> dict[str, np.ndarray]:
    """Everything partition ``partition`` checkpoints: per-key features, open windows, open incidents."""
    return runner._state(partition)


def test_whole_chain_scores_every_event_once_and_commits_offsets(tmp_path: Path) -> None:
    batches = _batches(6_000, seed=3, bad_every=97)
    h = Harness(tmp_path, batches)
    h.run_all()
    n_bad = sum(1 for b in batches for v in b.values if v == b"{not json")
    n_good = sum(len(b) for b in batches) - n_bad
    lake = read_lake(h.cfg.lake.path)
    assert len(lake) == n_good
    assert not lake.duplicated(["kafka_partition", "kafka_offset"]).any()
    scores = [json.loads(v) for v in h.committer.values(h.cfg.kafka.topics.scores)]
    assert len(scores) == n_good
    assert {s["model_version"] for s in scores} <= {p.name for p in Path(h.cfg.model.save_dir).iterdir()}
    dead = h.committer.values(h.cfg.kafka.topics.dead_letter)
    assert len(dead) == n_bad and all(json.loads(d)["reason"] == "invalid_json" for d in dead)
    ends = {p: max(int(b.offsets.max()) + 1 for b in batches if b.partitions[0] == p) for p in PARTITIONS}
    assert h.committed == ends
    alerts = h.committer.values(h.cfg.kafka.topics.alerts)
    assert len(alerts) == int(lake["is_anomaly"].sum())
    # the coordinator learned from the groups' samples and published more than the first version
    assert h.coordinator.status.published >= 2 and h.coordinator.status.rows_learned > 0


def test_a_crash_at_any_point_resumes_to_the_results_of_an_uninterrupted_run(tmp_path: Path) -> None:
    batches = _batches(5_000, seed=5)
    reference = Harness(tmp_path / "ref", batches).run_all()

    h = Harness(tmp_path / "crash", batches)
    rng = np.random.default_rng(0)
    for _ in range(3):  # three crashes: each after a random number of batches, at a random point of a commit
        runner, source = h.runner()
        runner.recover()
        for _ in range(int(rng.integers(2, 6))):
            raw = source.poll_batch()
            if raw is None:
                break
            runner.process(raw)
            if rng.random() < 0.5:
                runner.commit()
        point = rng.integers(0, 3)
        if point >= 1:  # lake files written, not committed
            runner.parts.lake.flush()
        if point >= 2:  # ... and the checkpoint too
            runner.parts.checkpoints.save({p: _state(runner, p) for p in PARTITIONS})
        # the process dies here: nothing else of this runner survives
    final = h.run_all()

    lake = read_lake(h.cfg.lake.path)
    assert len(lake) == sum(len(b) for b in batches)
    assert not lake.duplicated(["kafka_partition", "kafka_offset"]).any()
    offsets = [(json.loads(v)["partition"], json.loads(v)["offset"]) for v in h.committer.values("scores")]
    assert len(offsets) == len(set(offsets)) == len(lake)
    for p in PARTITIONS:
        got, want = _key_state(final, p), _key_state(reference, p)
        assert sorted(got) == sorted(want) and any(k.startswith("w.") for k in got)
        # features and window contents depend on the events only; anomaly counts and incidents also on which
        # online-adapted model version scored each batch, which depends on timing
        for name in [k for k in got if k.startswith("f.") or k in ("w.key", "w.count", "w.watermark")]:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"partition {p} {name}")


def _state(runner: GroupRunner, p: int):
    from engine.checkpoint import PartitionState

    return PartitionState(runner.done.get(p, 0) + 10**9, runner._state(p))  # ahead of any commit


def test_per_partition_features_equal_one_builder_per_partition(tmp_path: Path) -> None:
    batches = _batches(3_000, seed=8)
    h = Harness(tmp_path, batches)
    runner = h.run_all()
    frame = read_lake(h.cfg.lake.path).sort_values(["kafka_partition", "kafka_offset"])
    for p in PARTITIONS:
        fb = FeatureBuilder(h.cfg.features, h.cfg.schema)
        fb.transform(frame[frame["kafka_partition"] == p].rename(columns={"datapoint_id": "datapoint_id"}))
        np.testing.assert_array_equal(fb.state.to_arrays()["kstate"], runner.features.state(p)["kstate"])


def test_all_bad_input_commits_its_dead_letters_without_a_model(tmp_path: Path) -> None:
    batches = _batches(2_000, seed=1, bad_every=1)
    h = Harness(tmp_path, batches)
    h.run_all()
    assert h.coordinator.master is None  # no event ever asked for one
    assert len(h.committer.values(h.cfg.kafka.topics.dead_letter)) == 2_000
    assert sum(h.committed.values()) == 2_000
    assert list(Path(h.cfg.dead_letter_dir).glob("*.parquet"))


def test_model_holder_refuses_other_features_and_tampered_versions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    registry = tmp_path / "models"
    good = Detector.fit(rng.normal(size=(500, 2)), ["a", "b"], n_trees=10)
    good.save(registry / good.version)
    set_current(registry, good.version)
    holder = ModelHolder(registry, ("a", "b"))
    assert holder.refresh() and holder.version == good.version

    other = Detector.fit(rng.normal(size=(500, 3)), ["a", "b", "c"], n_trees=10)
    with pytest.raises(ModelError, match="differ"):
        holder.swap(other)
    other.save(registry / "other")
    set_current(registry, "other")
    assert not holder.refresh() and holder.version == good.version and holder.refused == 1

    tampered = Detector.fit(rng.normal(size=(500, 2)) + 5, ["a", "b"], n_trees=10)
    tampered.save(registry / "tampered")
    meta = registry / "tampered" / "meta.json"
    meta.write_text(meta.read_text().replace('"seed": 0', '"seed": 1'))
    set_current(registry, "tampered")
    assert not holder.refresh() and holder.version == good.version
    assert "checksum" in (holder.last_error or "")
    assert read_current(registry)["version"] == "tampered"


def test_arrow_scores_format_carries_every_event_in_one_record_per_batch(tmp_path: Path) -> None:
    from engine.config import with_overrides
    from engine.outputs import decode_scores

    batches = _batches(3_000, seed=2)
    h = Harness(tmp_path, batches)
    h.cfg = with_overrides(h.cfg, {"kafka": {"scores_format": "arrow"}})
    h.run_all()
    records = h.committer.values(h.cfg.kafka.topics.scores)
    frames = [decode_scores(v) for v in records]
    assert len(records) < len(batches) + 1 and sum(len(f) for f in frames) == 3_000
    lake = read_lake(h.cfg.lake.path)
    got = sorted(zip(*(pd.concat(frames)[c] for c in ("partition", "offset")), strict=True))
    assert got == sorted(zip(lake["kafka_partition"], lake["kafka_offset"], strict=True))


def test_coordinator_keeps_base_versions_and_prunes_old_online_ones(tmp_path: Path) -> None:
    from engine.config import ModelConfig

    coord = ModelCoordinator(ModelConfig(fit_on_first=300, save_dir=tmp_path, keep_online_versions=3,
                                         publish_every_s=0.0001), ("x", "y"))
    rng = np.random.default_rng(0)
    coord.offer({"X": rng.normal(size=(400, 2)), "fit": True})
    base = coord.tick()
    for _ in range(8):
        X = rng.normal(size=(300, 2))
        coord.offer({"X": X, "scores": coord.master.score(X)})
        coord.tick()
    names = {p.name for p in tmp_path.iterdir() if p.is_dir()}
    assert base in names and coord.status.version in names
    assert len([n for n in names if "+u" in n]) == 3 and coord.status.published == 9


def test_first_fit_waits_for_every_group_and_takes_an_even_share(tmp_path: Path) -> None:
    from engine.config import ModelConfig

    coord = ModelCoordinator(ModelConfig(fit_on_first=1_000, save_dir=tmp_path, fit_idle_s=60), ("x", "y"),
                             groups=2)
    rng = np.random.default_rng(1)
    coord.offer({"group": "p0", "X": rng.normal(size=(5_000, 2)), "fit": True})
    assert coord.tick() is None and coord.master is None  # one group's keys are not the pipeline's
    coord.offer({"group": "p1", "X": rng.normal(size=(300, 2)) + 10, "fit": True})
    assert coord.tick() is not None
    rows = coord.master.meta["training"]["rows"]
    assert rows == 1_000 and coord.master.meta["training"]["max"][0] > 5  # p1's 300 rows are in it
    # the first scores of unseen events from every group publish an adapted threshold at once
    X = rng.normal(size=(500, 2))
    coord.offer({"group": "p0", "X": X, "scores": coord.master.score(X)})
    assert coord.tick() is None
    coord.offer({"group": "p1", "X": X + 10, "scores": coord.master.score(X + 10)})
    assert coord.tick() is not None and coord.status.published == 2


def test_no_checkpoint_runs_ahead_of_its_offsets_while_rows_wait_for_the_first_model(tmp_path: Path) -> None:
    """A batch of dead letters passes the model gate at once; rows behind it wait, but their features are in the
    state already. Committing then would checkpoint that state at the dead letters' offsets, and a restart would
    count those rows twice: the commit waits until they are scored, and the run ends exact."""
    batches = _batches(3_000, seed=4)
    first = batches[0]
    batches[0] = RawBatch(first.topic, [b"{not json"] * len(first), first.keys, first.partitions, first.offsets,
                          first.timestamps_ms)
    h = Harness(tmp_path, batches)
    runner, source = h.runner()
    runner.recover()
    runner.process(source.poll_batch())  # dead letters only: through the gate, interval dirty
    runner.process(source.poll_batch())  # rows: featured, waiting for a model
    assert runner.gate and runner.interval.dirty
    runner.commit()
    assert h.committed == {} and not list(Path(h.cfg.state_dir).glob("ckpt-*.npz"))
    final = h.run_all()
    lake = read_lake(h.cfg.lake.path).sort_values(["kafka_partition", "kafka_offset"])
    assert len(lake) == sum(len(b) for b in batches) - len(first)
    for p in PARTITIONS:
        fb = FeatureBuilder(h.cfg.features, h.cfg.schema)
        fb.transform(lake[lake["kafka_partition"] == p])
        np.testing.assert_array_equal(fb.state.to_arrays()["kstate"], final.features.state(p)["kstate"])
