"""Crash drill: SIGKILL the whole ``isostream run`` process group mid-stream, restart it, and count what survived.

Events are produced at a steady rate (keyed by ``datapoint_id``) into a fresh 4-partition topic of the embedded
broker while ``isostream run --config configs/demo.yaml`` consumes it as a subprocess in its own process group
(the driver and its Dask LocalCluster workers). At random moments while events are still outstanding the whole
group is killed with SIGKILL (``os.killpg``) and the engine is started again; after the last kill one more run
goes until every event is committed and is then stopped with SIGINT. Then:

- the lake must hold every ``(kafka_partition, kafka_offset)`` exactly once, with no gap;
- the ``scores`` topic, read with ``read_committed``, must hold every one at least once. tansu 0.6 does not hide
  the records of an aborted transaction from ``read_committed`` readers, so the records of the transaction a
  kill left open (the engine produces a commit's records only inside that commit's short transaction) stay
  visible and are produced again by the restart: duplicates are allowed only there. At each kill the drill
  reads the group's committed offsets and the lake (which is flushed *before* the transaction and cleaned only
  by the restart's recovery), so the offsets ``[committed, lake end)`` of each partition are exactly the
  interval that was in flight; every duplicate must lie in such a window, at most once per kill;
- per partition, the newest checkpoint's per-key state must equal a :class:`~training.features.FeatureBuilder` run
  once over that partition's lake rows in offset order (what an uninterrupted run computes);
- no process of the killed tree may outlive the kill (the LocalCluster workers are children of the driver).

    python -m benchmarks.crash_drill [--quick] [--events N] [--rate R] [--out FILE]

Full size: 500,000 events at 5,000/s; ``--quick``: 100,000 at 5,000/s. A restart of the engine takes 8-12 s on 2
cores, so the quick drill's 20 s of production leave room for two kills while events are produced; its third may
come once everything is committed (the ``kills`` row says how many were mid-stream). ``tests/integration/
test_engine_faults.py`` runs the same drill at CI size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from benchmarks.common import finish, row
from engine.checkpoint import CheckpointStore
from engine.config import Config, load
from streams.broker import EmbeddedBroker, create_topics
from streams.generator import GeneratorSettings
from streams.kafka_sink import KafkaSink
from streams.lake import read_lake
from streams.replay import generated_chunks, replay
from training.features import FeatureBuilder

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = REPO / "configs" / "demo.yaml"
OUTPUT_TOPICS = ("scores", "alerts", "stats", "dead_letter", "metrics", "control", "incidents")
#: the Kafka coordinates at the end of a JSON ``scores`` record (engine/outputs.py writes them last, in order)
_COORDS = re.compile(rb'"partition":(\d+),"offset":(\d+)[,}]')  # the input values may follow
_STATE_ARRAYS = ("keys", "fstate", "ring_v", "ring_t", "ring_s", "kstate", "tring", "shring")


def log(msg: str) -> None:
    print(f"[crash-drill {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- processes ------------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> list[tuple[int, int]]:
    """Every process below ``root`` as (pid, start time): the start time tells a reused pid apart."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[1], []).append((int(entry), st[2]))
    out: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            out.append((pid, started))
            todo.append(pid)
    return out


def running(pid: int, started: int) -> bool:
    """The process ``pid`` that started at ``started`` still runs (a zombie does not)."""
    st = _stat(pid)
    return st is not None and st[2] == started and st[0] not in ("Z", "X")


def kill_tree(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> tuple[int, list[int]]:
    """SIGKILL ``proc``'s whole process group; returns (processes below it, pids still running after the wait)."""
    below = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(running(p, s) for p, s in below):
        time.sleep(0.05)
    return len(below), [p for p, s in below if running(p, s)]


# -- reading back ---------------------------------------------------------------------------------------------
class Offsets:
    """The engine's committed offsets, read with a consumer of its group that never joins it."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]

    def committed(self) -> dict[int, int]:
        return {tp.partition: max(tp.offset, 0) for tp in self._consumer.committed(self._tps, timeout=30)}

    def total(self) -> int:
        return sum(self.committed().values())

    def close(self) -> None:
        self._consumer.close()


def lake_next_offsets(lake: Path) -> dict[int, int]:
    """Per partition, one past the highest offset the lake's manifests list."""
    frame = read_lake(lake, columns=["kafka_partition", "kafka_offset"])
    if frame.empty:
        return {}
    top = frame.groupby("kafka_partition")["kafka_offset"].max()
    return {int(p): int(o) + 1 for p, o in zip(top.index.tolist(), top.tolist(), strict=True)}


def score_coordinates(bootstrap: str, topic: str, expected: int, *, idle_s: float = 3.0,
                      timeout_s: float = 300.0) -> list[tuple[int, int]]:
    """(partition, offset) of every record of the 1-partition ``scores`` topic, read with ``read_committed``.

    Reads until ``expected`` records arrived and then nothing more for ``idle_s`` (duplicates come on top).
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"crash-drill-read-{os.getpid()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    out: list[tuple[int, int]] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        idle_until = time.monotonic() + max(idle_s, 10.0)  # the first fetch can take a few seconds
        while time.monotonic() < deadline and (len(out) < expected or time.monotonic() < idle_until):
            got = [m for m in consumer.consume(10_000, 0.5) if m.error() is None]
            for m in got:
                found = _COORDS.search(m.value() or b"")
                if found is None:
                    msg = f"a {topic!r} record without Kafka coordinates: {(m.value() or b'')[:120]!r}"
                    raise ValueError(msg)
                out.append((int(found[1]), int(found[2])))
            if got:
                idle_until = time.monotonic() + idle_s
    finally:
        consumer.close()
    return out


def newest_state(state_dir: Path) -> dict[int, tuple[int, dict[str, np.ndarray]]]:
    """Per partition, the checkpointed (next offset, state arrays) of the newest checkpoint that covers it."""
    best: dict[int, tuple[tuple[int, int], dict[str, np.ndarray]]] = {}
    for path in sorted(state_dir.glob("ckpt-*.npz")):
        meta, arrays = CheckpointStore.read(path)
        for key, entry in meta["partitions"].items():
            p, rank = int(key), (int(entry["offset"]), int(meta["seq"]))
            if p not in best or rank > best[p][0]:
                prefix = f"p{p}."
                best[p] = (rank, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    return {p: (rank[0], arrays) for p, (rank, arrays) in best.items()}


def state_matches(cfg: Config, lake: pd.DataFrame, state_dir: Path) -> dict[int, bool]:
    """Per partition: the newest checkpoint is at the lake's end and holds what one uninterrupted pass computes."""
    saved = newest_state(state_dir)
    out: dict[int, bool] = {}
    for part in sorted(int(p) for p in lake["kafka_partition"].unique()):
        rows = lake[lake["kafka_partition"] == part]
        builder = FeatureBuilder(cfg.features, cfg.schema)
        builder.transform(rows.sort_values("kafka_offset", kind="stable").reset_index(drop=True))
        want = builder.state.to_arrays()
        if part not in saved:
            out[part] = False
            continue
        offset, got = saved[part]
        out[part] = offset == int(rows["kafka_offset"].max()) + 1 and all(
            f"f.{name}" in got and np.array_equal(np.asarray(want[name]), np.asarray(got[f"f.{name}"]))
            for name in _STATE_ARRAYS)
    return out


# -- the drill ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DrillPlan:
    """What to run: ``events`` at ``rate``/s into ``partitions`` partitions, ``kills`` SIGKILLs mid-stream."""

    events: int
    rate: float
    partitions: int = 4
    kills: int = 3
    seed: int = 0
    #: prefix of the topics and consumer group, so drills on one broker do not collide
    prefix: str = "drill"
    #: limit of each wait (engine up, a commit of this run, every event committed)
    timeout_s: float = 180.0


@dataclass
class Kill:
    """One SIGKILL: when, what was committed and written then, and what outlived it."""

    at_s: float
    committed: dict[int, int]
    lake_next: dict[int, int]
    processes: int
    survivors: list[int]

    @property
    def windows(self) -> dict[int, tuple[int, int]]:
        """Per partition, the offsets of the interval in flight: from the commit to the end of the lake."""
        return {p: (c, max(c, self.lake_next.get(p, 0))) for p, c in self.committed.items()}

    @property
    def in_flight(self) -> int:
        return sum(hi - lo for lo, hi in self.windows.values())


@dataclass
class DrillResult:
    events: int
    lake_rows: int
    lake_distinct: int
    #: offsets missing from 0..end of some partition
    lake_gaps: int
    scores_records: int
    scores_distinct: int
    #: lake coordinates absent from the scores topic
    scores_missing: int
    duplicates: int
    #: duplicated records not explained by a kill's in-flight window (must be 0)
    duplicates_unexplained: int
    #: the most duplicates the windows allow: the records in flight at the kills
    duplicate_bound: int
    state_equal: dict[int, bool]
    kills: list[Kill]
    final_rc: int
    final: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    log_dir: Path | None = None

    @property
    def survivors(self) -> list[int]:
        return [p for k in self.kills for p in k.survivors]


class SteadyProducer(threading.Thread):
    """Produces ``events`` generated station-alarm events at ``rate``/s, keyed by ``datapoint_id`` (a thread)."""

    def __init__(self, bootstrap: str, topic: str, events: int, rate: float, seed: int = 0) -> None:
        super().__init__(name="steady-producer", daemon=True)
        self.bootstrap, self.topic, self.events, self.rate, self.seed = bootstrap, topic, events, rate, seed
        self.sent = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        sink = KafkaSink({"bootstrap.servers": self.bootstrap}, self.topic)
        self.started_at = time.monotonic()
        try:
            chunk = max(int(self.rate / 10), 1)
            self.sent = replay(generated_chunks(self.events, chunk, GeneratorSettings(seed=self.seed)), sink,
                               rate=self.rate, key_field="datapoint_id", should_stop=self.stop.is_set)
        except BaseException as err:  # noqa: BLE001 - the caller raises it
            self.error = err
        finally:
            try:
                sink.close()
            except BaseException as err:  # noqa: BLE001 - the caller raises it
                self.error = self.error or err

    def finish(self, timeout_s: float) -> int:
        """Wait until every event is produced; returns how many, or raises what went wrong."""
        self.join(timeout=timeout_s)
        if self.is_alive():
            msg = f"the producer did not finish {self.events:,} events within {timeout_s:.0f}s"
            raise TimeoutError(msg)
        if self.error is not None:
            raise self.error
        return self.sent


def _wait(cond: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None,
          log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text()[-3000:] if log_path is not None and log_path.exists() else ""
            msg = f"the engine exited with {proc.returncode} while waiting for {what}:\n{tail}"
            raise RuntimeError(msg)
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout_s:.0f}s waiting for {what}"
            raise TimeoutError(msg)
        time.sleep(0.1)


def engine_config(bootstrap: str, workdir: Path, plan: DrillPlan) -> tuple[Config, dict[str, str], list[str]]:
    """The engine's configuration (as the drill's runs see it), their environment and their arguments."""
    env = dict(os.environ, ISOSTREAM__KAFKA__GROUP_ID=f"{plan.prefix}-engine",
               ISOSTREAM__CLUSTER__DASHBOARD_ADDRESS="127.0.0.1:0",
               **{f"ISOSTREAM__KAFKA__TOPICS__{t.upper()}": f"{plan.prefix}-{t.replace('_', '-')}"
                  for t in OUTPUT_TOPICS})
    args = ["--config", str(CONFIG), "--bootstrap", bootstrap, "--topic", f"{plan.prefix}-events",
            "--lake", str(workdir / "lake"), "--registry", str(workdir / "models")]
    cfg = load(CONFIG, environ={k: v for k, v in env.items() if k.startswith("ISOSTREAM__")}, overrides={
        "kafka": {"bootstrap": bootstrap, "input_topic": f"{plan.prefix}-events"},
        "lake": {"path": str(workdir / "lake")}, "model": {"save_dir": str(workdir / "models")}})
    return cfg, env, args


def run_drill(bootstrap: str, workdir: Path, plan: DrillPlan, say: Callable[[str], None] = log) -> DrillResult:
    """Run the drill described in the module docstring against the broker at ``bootstrap``."""
    t_start = time.monotonic()
    cfg, env, args = engine_config(bootstrap, workdir, plan)
    t = cfg.kafka.topics
    topic = cfg.kafka.input_topic
    create_topics(bootstrap, {topic: plan.partitions, t.scores: 1, t.alerts: 1, t.stats: 1, t.dead_letter: 1,
                              t.metrics: 1, t.control: 1})
    rng = random.Random(plan.seed)
    production_s = plan.events / plan.rate
    # kill moments spread over the production, each moved later if that run has not committed anything yet
    targets = sorted(rng.uniform(0.1, 0.8) * production_s for _ in range(plan.kills))
    offsets = Offsets(bootstrap, cfg.kafka.group_id, topic, plan.partitions)
    producer = SteadyProducer(bootstrap, topic, plan.events, plan.rate, plan.seed)
    kills: list[Kill] = []
    handles: list[IO[bytes]] = []

    def start(i: int) -> tuple[subprocess.Popen[bytes], Path, Path]:
        err, out = workdir / f"engine-{i}.log", workdir / f"engine-{i}.json"
        handles.extend([open(err, "wb"), open(out, "wb")])  # noqa: SIM115 - closed at the end of the drill
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", *args, "--json"], cwd=REPO, env=env,
                                stdout=handles[-1], stderr=handles[-2], start_new_session=True)
        _wait(lambda: b"dask dashboard" in err.read_bytes(), plan.timeout_s, f"engine run {i} to start", proc, err)
        return proc, err, out

    try:
        for i in range(plan.kills):
            proc, err, _ = start(i)
            if i == 0:
                producer.start()
            base = offsets.total()
            _wait(lambda: offsets.total() > base, plan.timeout_s, f"a commit of engine run {i}", proc, err)  # noqa: B023
            now = time.monotonic() - producer.started_at
            time.sleep(max(targets[i] - now, 0.0) + rng.uniform(0.0, 0.5))
            if proc.poll() is not None:
                msg = f"engine run {i} exited with {proc.returncode} before its kill:\n{err.read_text()[-3000:]}"
                raise RuntimeError(msg)
            at = time.monotonic() - producer.started_at
            processes, survivors = kill_tree(proc)
            kill = Kill(at, offsets.committed(), lake_next_offsets(workdir / "lake"), processes, survivors)
            kills.append(kill)
            say(f"kill {i + 1} at {at:.1f}s: {processes} processes below the driver, {len(survivors)} survived; "
                f"committed {sum(kill.committed.values()):,} of {plan.events:,}, {kill.in_flight:,} in flight")
        proc, err, out = start(plan.kills)
        producer.finish(production_s + plan.timeout_s)
        _wait(lambda: offsets.total() >= plan.events, plan.timeout_s, "every event to be committed", proc, err)
        proc.send_signal(signal.SIGINT)
        final_rc = proc.wait(timeout=plan.timeout_s)
    finally:
        producer.stop.set()
        offsets.close()
        for h in handles:
            h.close()
        if producer.is_alive():
            producer.join(timeout=30)
    text = out.read_text().strip()
    final = json.loads(text.splitlines()[-1]) if text else {}
    say(f"final run exit {final_rc}: {final}")

    lake = read_lake(workdir / "lake")
    coords = lake[["kafka_partition", "kafka_offset"]].astype(np.int64)
    distinct = coords.drop_duplicates()
    per = distinct.groupby("kafka_partition")["kafka_offset"].agg(["max", "count"])
    gaps = int((per["max"] + 1 - per["count"]).sum())
    lake_set = set(map(tuple, distinct.to_numpy().tolist()))
    scores = score_coordinates(bootstrap, t.scores, len(lake_set))
    seen = Counter(scores)
    duplicates = len(scores) - len(seen)
    unexplained = 0
    for (p, o), n in seen.items():
        allowed = 1 + sum(1 for k in kills if k.windows.get(p, (0, 0))[0] <= o < k.windows.get(p, (0, 0))[1])
        unexplained += max(n - allowed, 0)
    result = DrillResult(
        events=plan.events, lake_rows=len(lake), lake_distinct=len(lake_set), lake_gaps=gaps,
        scores_records=len(scores), scores_distinct=len(seen), scores_missing=len(lake_set - set(seen)),
        duplicates=duplicates, duplicates_unexplained=unexplained,
        duplicate_bound=sum(k.in_flight for k in kills),
        state_equal=state_matches(cfg, lake, cfg.state_dir), kills=kills, final_rc=final_rc, final=final,
        wall_s=time.monotonic() - t_start, log_dir=workdir)
    say(f"lake {result.lake_rows:,} rows ({result.lake_distinct:,} distinct, {gaps} gaps); scores "
        f"{result.scores_records:,} records ({result.scores_distinct:,} distinct, {duplicates:,} duplicates, "
        f"{unexplained} outside the kills' windows, bound {result.duplicate_bound:,}); state equal "
        f"{result.state_equal}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.crash_drill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100,000 events at 5,000/s")
    p.add_argument("--events", type=int, default=None, help="events to produce (default 500,000; quick 100,000)")
    p.add_argument("--rate", type=float, default=5_000.0, help="events per second (default 5,000)")
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "crash_drill.json")
    args = p.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    t_start = time.monotonic()
    plan = DrillPlan(events=args.events or (100_000 if args.quick else 500_000), rate=args.rate, kills=args.kills,
                     seed=args.seed, timeout_s=600.0)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="isostream-drill-") as tmp:
        r = run_drill(broker.bootstrap, Path(tmp), plan)
    equal = all(r.state_equal.values()) and len(r.state_equal) == plan.partitions
    rows = [
        row("lake rows", r.lake_rows, "rows", "events produced", r.events),
        row("distinct (partition, offset) in the lake", r.lake_distinct, "rows", "events produced", r.events,
            gaps=r.lake_gaps),
        row("scores records read_committed", r.scores_records, "records", "events produced", r.events),
        row("distinct (partition, offset) in scores", r.scores_distinct, "records", "events produced", r.events,
            missing=r.scores_missing),
        row("duplicates in scores (aborted records tansu shows)", r.duplicates, "records",
            "records in flight at the kills", r.duplicate_bound, outside_windows=r.duplicates_unexplained),
        row("per-key state equal to an uninterrupted pass", 1.0 if equal else 0.0, "bool",
            partitions={str(k): v for k, v in r.state_equal.items()}),
        row("kills (SIGKILL of the whole process group)", len(r.kills), "kills",
            at_s=[round(k.at_s, 1) for k in r.kills], processes=[k.processes for k in r.kills],
            committed_at_kill=[sum(k.committed.values()) for k in r.kills],
            mid_stream=sum(sum(k.committed.values()) < r.events for k in r.kills),
            in_flight=[k.in_flight for k in r.kills],
            survivors=len(r.survivors), final_exit=r.final_rc, restarts_in_final_run=r.final.get("restarts")),
        row("drill wall time", r.wall_s, "s"),
    ]
    settings: dict[str, Any] = {"events": plan.events, "rate": plan.rate, "partitions": plan.partitions,
                                "kills": plan.kills, "seed": plan.seed, "quick": args.quick,
                                "config": "configs/demo.yaml (exactly_once, 2 LocalCluster workers)"}
    code = finish(args.out, "crash_drill", rows, settings, t_start, log)
    ok = (r.lake_distinct == r.lake_rows == r.events and r.lake_gaps == 0 and r.scores_missing == 0
          and r.scores_distinct == r.events and r.duplicates_unexplained == 0 and equal and not r.survivors
          and r.final_rc == 0)
    if not ok:
        log("FAILED: the drill lost, doubled or diverged (see the rows above)")
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
