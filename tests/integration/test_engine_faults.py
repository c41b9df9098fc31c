"""Faults on real infrastructure: the engine killed, the broker unreachable, the lake unwritable, a worker killed,
an input of nothing but bad records, one tenant broken. Real tansu broker, real Dask LocalCluster, real
``isostream run`` subprocesses; no mocks.

Every test that streams events ends with the same checks: the lake holds each ``(kafka_partition, kafka_offset)`` exactly once with no
gap, and the ``scores`` topic read with ``read_committed`` holds each at least once. About duplicates in the topic:
tansu 0.6 does not hide the records of an *aborted* transaction from ``read_committed`` readers (measured), so
the records of a transaction open when a process died stay visible and the restart produces them again. The
engine produces an interval's records only inside that interval's commit (engine/committer.py), which keeps the
window to the time of one produce-and-commit; the tests measure the duplicates and check that every one lies in
such a window. On a broker that filters aborted records (Kafka) there would be none.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmarks.crash_drill import (
    OUTPUT_TOPICS,
    DrillPlan,
    Offsets,
    SteadyProducer,
    lake_next_offsets,
    run_drill,
    score_coordinates,
    state_matches,
)
from engine.cluster import dask_client
from engine.config import Config, load
from engine.runtime import RunReport, Runtime
from streams.broker import EmbeddedBroker, create_topics
from streams.deadletter import dead_letter_files
from streams.kafka_sink import KafkaSink
from streams.lake import read_lake
from tests.topics import topic_values

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo.yaml"
#: the generator's events all fall on this day (GeneratorSettings.start; 200 events per event-time second)
DAY = "date=2026-11-24"


# -- helpers ----------------------------------------------------------------------------------------------------
def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def _topics(prefix: str) -> dict[str, str]:
    return {t: f"{prefix}-{t.replace('_', '-')}" for t in OUTPUT_TOPICS}


def _config(bootstrap: str, tmp_path: Path, prefix: str, **runtime: Any) -> Config:
    return load(CONFIG, environ={}, overrides={
        "kafka": {"bootstrap": bootstrap, "input_topic": f"{prefix}-events", "group_id": f"{prefix}-engine",
                  "topics": _topics(prefix), "max_batch_messages": 2_000},
        "lake": {"path": str(tmp_path / "lake")},
        "model": {"fit_on_first": 2_000, "save_dir": str(tmp_path / "models")},
        "cluster": {"n_workers": 2, "processes": True, "dashboard_address": "127.0.0.1:0"},
        "runtime": {"restart_backoff_s": 0.5, **runtime},
    })


def _create_topics(cfg: Config, partitions: int) -> None:
    create_topics(cfg.kafka.bootstrap, {cfg.kafka.input_topic: partitions,
                                        **{v: 1 for v in cfg.kafka.topics.model_dump().values()}})


def _assert_lake_exact(lake_path: Path, n: int) -> pd.DataFrame:
    lake = read_lake(lake_path)
    assert len(lake) == n, f"the lake holds {len(lake):,} rows, not {n:,}"
    assert not lake.duplicated(["kafka_partition", "kafka_offset"]).any()
    per = lake.groupby("kafka_partition")["kafka_offset"].agg(["min", "max", "count"])
    assert (per["min"] == 0).all() and (per["max"] + 1 == per["count"]).all(), f"gaps in the lake:\n{per}"
    return lake


class _Background:
    """``Runtime.run`` in a thread, so the test can break things while it runs."""

    def __init__(self, runtime: Runtime, max_events: int) -> None:
        self.runtime = runtime
        self.stop = threading.Event()
        self.report: RunReport | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(max_events,), name="runtime", daemon=True)
        self._thread.start()

    def _run(self, max_events: int) -> None:
        try:
            self.report = self.runtime.run(self.stop, max_events=max_events)
        except BaseException as err:  # noqa: BLE001 - raised in the test's thread by result()
            self.error = err

    def result(self, timeout_s: float) -> RunReport:
        """The report once the run ended on its own (reaching ``max_events``); fails the test otherwise."""
        self._thread.join(timeout_s)
        ended = not self._thread.is_alive()
        if not ended:  # unblock it, then fail
            self.stop.set()
            self._thread.join(60)
        if self.error is not None:
            raise self.error
        assert ended, f"the run did not reach its target within {timeout_s:.0f}s: {self.runtime.report}"
        assert self.report is not None
        return self.report


def _exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (``renameat2(RENAME_EXCHANGE)``): no moment where either is missing."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def _cli_env(prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISOSTREAM__")}
    env.update({f"ISOSTREAM__KAFKA__TOPICS__{t.upper()}": v for t, v in _topics(prefix).items()},
               ISOSTREAM__KAFKA__GROUP_ID=f"{prefix}-engine", ISOSTREAM__CLUSTER__DASHBOARD_ADDRESS="127.0.0.1:0",
               **extra)
    return env


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", "run", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout_s)


# -- 1. crash drill -----------------------------------------------------------------------------------------------
def test_crash_drill_sigkill_of_the_whole_engine_three_times_loses_and_doubles_nothing(
        broker: EmbeddedBroker, tmp_path: Path, seed: int) -> None:
    """80,000 events at 2,000/s into 4 partitions; ``isostream run`` (driver + 2 LocalCluster workers, its own
    process group) is SIGKILLed with ``os.killpg`` three times at random moments while events are outstanding and
    restarted each time; a last run goes until every event is committed and stops on SIGINT.

    The lake is exact; the scores topic (read_committed) holds every event, and a duplicate may only be a record
    of the transaction a kill left open: tansu 0.6 keeps aborted records visible to read_committed readers, and
    the restart produces that interval again. The drill reads, at each kill, the committed offsets and the lake
    (flushed before the transaction, cleaned only by the restart), so ``[committed, lake end)`` per partition is
    the interval in flight; every duplicate must lie in one, at most once per kill. Per-key feature state in the
    newest checkpoint equals one uninterrupted pass over the lake; no process of the killed tree survives.
    Production lasts 40 s so that all three kills land while events are still produced: a restart of the engine
    takes 8-12 s on 2 cores, and once production has ended it drains its backlog within a commit or two.
    """
    plan = DrillPlan(events=80_000, rate=2_000.0, kills=3, seed=seed, prefix="faults-drill", timeout_s=60.0)
    r = run_drill(broker.bootstrap, tmp_path, plan, say=logging.getLogger(__name__).warning)

    assert r.final_rc == 0, (r.log_dir / "engine-3.log").read_text()[-3000:] if r.log_dir else ""
    assert len(r.kills) == 3
    for k in r.kills:
        assert k.processes >= 2, f"the engine's process tree had only {k.processes} processes below the driver"
        assert not k.survivors, f"processes {k.survivors} outlived the SIGKILL of their process group"
        assert sum(k.committed.values()) < plan.events, "a kill came after every event was committed"
    assert r.lake_rows == r.lake_distinct == plan.events and r.lake_gaps == 0
    assert r.scores_missing == 0 and r.scores_distinct == plan.events
    assert r.duplicates_unexplained == 0, f"{r.duplicates_unexplained} duplicates outside the kills' windows"
    assert r.duplicates <= r.duplicate_bound
    assert sorted(r.state_equal) == [0, 1, 2, 3] and all(r.state_equal.values()), r.state_equal
    logging.getLogger(__name__).warning("crash drill: %d duplicates (bound %d), kills at %s, %.0fs", r.duplicates,
                                        r.duplicate_bound, [round(k.at_s, 1) for k in r.kills], r.wall_s)


# -- 2. broker outage -----------------------------------------------------------------------------------------------
def test_broker_outage_mid_stream_resumes_and_loses_nothing(tmp_path: Path, seed: int) -> None:
    """The broker stops answering for ~10 s mid-stream (SIGSTOP, then SIGCONT): every client's requests stall
    and time out or wait, then resume. The run goes on without losing or doubling an event in the lake, and the
    committed scores are complete; a duplicate could only be a record of a transaction open at the outage
    (aborted records stay visible on tansu), so each lies at or past the offsets committed before it.

    A pause and not a restart: tansu's memory storage loses every topic, offset and transaction on a restart,
    and its only persistent engine compiled in is S3. tansu on moto's S3 server did keep its data over a restart
    (measured), but on 2 cores moto (one Python process serving every fetch as an object listing, and every
    offset commit as a conditional write of one metadata object) became the bottleneck of the whole stream: with
    the engine's 10 ms fetch wait one run committed 554 of 20,000 events in 150 s, and with a 500 ms wait the
    engine still saw its input in one burst ~15 s late, too late to land an outage mid-stream. A SIGSTOP keeps
    the data and still takes the broker away from every client.
    """
    n = 20_000
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as own:
        cfg = _config(own.bootstrap, tmp_path, "outage", commit_interval_ms=300)
        _create_topics(cfg, 4)
        pid = own.pid
        assert pid is not None
        producer = SteadyProducer(own.bootstrap, cfg.kafka.input_topic, n, 2_000.0, seed)
        offsets = Offsets(own.bootstrap, cfg.kafka.group_id, cfg.kafka.input_topic, 4)
        try:
            with dask_client(cfg.cluster) as client:
                run = _Background(Runtime(cfg, client), n)
                producer.start()
                _wait(lambda: run.runtime.report.records_in >= 4_000, 90, "4,000 events committed before the outage")
                before = offsets.committed()
                os.kill(pid, signal.SIGSTOP)
                try:
                    time.sleep(10.0)  # the outage itself, not a wait for a condition
                finally:
                    os.kill(pid, signal.SIGCONT)
                assert producer.finish(90) == n
                report = run.result(120)
        finally:
            offsets.close()
        assert report.failed == {}
        _assert_lake_exact(cfg.lake.path, n)
        scores = score_coordinates(own.bootstrap, cfg.kafka.topics.scores, n)
    seen = Counter(scores)
    assert len(seen) == n
    doubled = [(p, o) for (p, o), c in seen.items() if c > 1]
    assert all(o >= before.get(p, 0) for p, o in doubled), "a record committed before the outage came twice"
    logging.getLogger(__name__).warning("broker outage: %d duplicates, %d group restarts", len(scores) - n,
                                        report.restarts)


# -- 3. unwritable lake ---------------------------------------------------------------------------------------------
def test_unwritable_lake_fails_the_groups_commits_nothing_past_it_and_resumes(
        broker: EmbeddedBroker, tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """The lake's day folder is swapped (atomically) for a regular file for ~10 s: ``mkdir`` of the folder raises
    ``FileExistsError`` in every flush (tests run as root, so permissions would not stop a write). Each group
    fails, the runtime logs it naming the lake path and restarts it with back-off; the committed offsets stand
    still and never pass what the (moved) lake holds. Once the folder is back the run resumes and ends exact. The
    failures come before anything is produced, so the scores topic has no duplicate at all.
    """
    caplog.set_level(logging.WARNING, logger="engine.runtime")
    n = 30_000
    cfg = _config(broker.bootstrap, tmp_path, "lakefault", commit_interval_ms=300)
    _create_topics(cfg, 4)
    day = Path(cfg.lake.path) / DAY
    aside = tmp_path / "aside"
    aside.mkdir()
    blocker = aside / DAY
    blocker.write_bytes(b"not a folder\n")
    producer = SteadyProducer(broker.bootstrap, cfg.kafka.input_topic, n, 2_000.0, seed)
    offsets = Offsets(broker.bootstrap, cfg.kafka.group_id, cfg.kafka.input_topic, 4)
    try:
        with dask_client(cfg.cluster) as client:
            run = _Background(Runtime(cfg, client), n)
            producer.start()
            _wait(lambda: run.runtime.report.records_in >= 3_000 and day.is_dir(), 90, "3,000 events committed")
            _exchange(day, blocker)  # day is now a file; the real folder sits at aside/DAY
            t0 = time.monotonic()
            groups = run.runtime.pipelines["default"].groups
            _wait(lambda: all(g.last_error and str(cfg.lake.path) in g.last_error for g in groups), 30,
                  "every group to fail on the lake")
            frozen = offsets.committed()
            held = lake_next_offsets(aside)
            assert all(frozen[p] <= held.get(p, 0) for p in frozen), (frozen, held)
            while time.monotonic() - t0 < 10.0:
                assert offsets.committed() == frozen, "offsets were committed while the lake was unwritable"
                time.sleep(0.5)
            assert run.runtime.report.restarts >= len(groups)
            _exchange(day, blocker)
            assert producer.finish(60) == n
            report = run.result(90)
    finally:
        offsets.close()
    assert report.failed == {} and report.restarts >= len(groups)
    errors = [g.last_error for g in groups]
    assert all("LakeError" in str(e) and str(day) in str(e) for e in errors), errors
    logged = [r.getMessage() for r in caplog.records if r.name == "engine.runtime"]
    assert any(str(day) in m and "restarting" in m for m in logged), logged
    _assert_lake_exact(cfg.lake.path, n)
    scores = score_coordinates(broker.bootstrap, cfg.kafka.topics.scores, n)
    assert len(scores) == len(set(scores)) == n
    logging.getLogger(__name__).warning("unwritable lake: %d group restarts; last errors %s", report.restarts, errors)


# -- 4. killed worker -----------------------------------------------------------------------------------------------
def test_killed_worker_moves_its_partitions_and_state_survives(broker: EmbeddedBroker, tmp_path: Path,
                                                               seed: int) -> None:
    """A LocalCluster of 2 worker processes; the worker of one partition group is SIGKILLed mid-stream. The
    runtime moves the group to a live worker (a takeover, from its checkpoint); the lake ends exact and each
    partition's per-key state equals one uninterrupted pass. Duplicates in the scores topic (aborted records of
    the killed worker's open transaction, visible on tansu) may only be of its partitions, past their commit.
    """
    n = 24_000
    cfg = _config(broker.bootstrap, tmp_path, "workerloss")
    _create_topics(cfg, 4)
    producer = SteadyProducer(broker.bootstrap, cfg.kafka.input_topic, n, 2_000.0, seed)
    offsets = Offsets(broker.bootstrap, cfg.kafka.group_id, cfg.kafka.input_topic, 4)
    try:
        with dask_client(cfg.cluster) as client:
            run = _Background(Runtime(cfg, client), n)
            producer.start()
            _wait(lambda: run.runtime.report.records_in >= 6_000, 90, "6,000 events committed")
            group = run.runtime.pipelines["default"].groups[0]
            victim = group.worker
            assert victim is not None
            pid = client.run(os.getpid)[victim]
            before = offsets.committed()
            os.kill(pid, signal.SIGKILL)
            assert producer.finish(60) == n
            report = run.result(120)
    finally:
        offsets.close()
    assert report.failed == {}
    moved = [t for t in report.takeovers if t["group"] == group.key]
    assert moved and moved[0]["from"] == victim, report.takeovers
    assert group.worker != victim
    lake = _assert_lake_exact(cfg.lake.path, n)
    equal = state_matches(cfg, lake, cfg.state_dir)
    assert sorted(equal) == [0, 1, 2, 3] and all(equal.values()), equal
    scores = score_coordinates(broker.bootstrap, cfg.kafka.topics.scores, n)
    seen = Counter(scores)
    assert len(seen) == n
    doubled = [(p, o) for (p, o), c in seen.items() if c > 1]
    assert all(p in group.partitions and o >= before[p] for p, o in doubled), doubled[:10]
    logging.getLogger(__name__).warning("killed worker: %d duplicates; takeovers %s; %d restarts", len(scores) - n,
                                        report.takeovers, report.restarts)


# -- 5. all-bad input -----------------------------------------------------------------------------------------------
def test_all_bad_input_is_dead_lettered_committed_and_kept_under_the_lake(broker: EmbeddedBroker,
                                                                          tmp_path: Path) -> None:
    """5,000 JSON records whose ids are fractional numbers where configs/demo.yaml declares strings: every one is a
    ``wrong_type`` dead letter. ``isostream run --max-events 5000 --json`` exits 0 with those counts, commits the
    offsets (a second run finds nothing new and writes no dead letter), the dead-letter topic holds 5,000, and the
    dead-letter Parquet files are under ``--lake``, not in the working directory.
    """
    n = 5_000
    prefix = "allbad"
    topic = f"{prefix}-events"
    create_topics(broker.bootstrap, {topic: 2, **{v: 1 for v in _topics(prefix).values()}})
    sink = KafkaSink({"bootstrap.servers": broker.bootstrap}, topic)
    try:
        sink.write([json.dumps({"station_id": i + 0.5, "datapoint_id": i * 10 + 0.5,
                                "event_time": "2026-11-24T10:00:00Z",
                                "value": 1.5, "valueThreshold": 3.0}).encode() for i in range(n)],
                   [str(i).encode() for i in range(n)])
    finally:
        sink.close()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    lake = tmp_path / "lake"
    args = ["--config", str(CONFIG), "--bootstrap", broker.bootstrap, "--topic", topic, "--lake", str(lake),
            "--registry", str(tmp_path / "models"), "--json"]
    env = _cli_env(prefix)

    first = _cli([*args, "--max-events", str(n)], env, cwd, timeout_s=120)
    assert first.returncode == 0, first.stderr[-3000:]
    counts = json.loads(first.stdout.strip().splitlines()[-1])
    assert counts["dead_letters"] == n and counts["events"] == 0 and counts["records"] == n, counts
    files = dead_letter_files(lake / "_dead_letter")
    assert files, f"no dead-letter Parquet under {lake}"
    table = pd.concat([pq.read_table(f).to_pandas() for *_, f in files])
    assert len(table) == n and set(table["reason"]) == {"wrong_type"}
    assert sorted(p.name for p in cwd.iterdir()) == [], "the run wrote into its working directory"
    stamps = {f: f.stat().st_mtime_ns for *_, f in files}

    second = _cli([*args, "--max-events", "1", "--seconds", "15"], env, cwd, timeout_s=120)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["records"] == 0 and again["dead_letters"] == 0, again
    assert {f: f.stat().st_mtime_ns for *_, f in dead_letter_files(lake / "_dead_letter")} == stamps
    letters = topic_values(broker.bootstrap, _topics(prefix)["dead_letter"], committed_only=True)
    assert len(letters) == n
    assert {json.loads(v)["reason"] for v in letters} == {"wrong_type"}
    assert sorted(p.name for p in cwd.iterdir()) == []


# -- 6. one tenant fails --------------------------------------------------------------------------------------------
def test_one_broken_tenant_is_reported_while_the_other_scores_everything(broker: EmbeddedBroker,
                                                                          tmp_path: Path, seed: int) -> None:
    """Two tenants in one ``isostream run``: ``broken``'s lake path lies under a regular file (its groups cannot
    start, for good), ``healthy`` is fine. ``healthy`` scores every event into its own lake and topic, the report
    names ``broken`` with the lake error, and the command exits 1 saying so.
    """
    n = 6_000
    prefix = "tenants"
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    names = _topics(prefix)
    pipelines = {"healthy": {"kafka": {"input_topic": f"{prefix}-healthy"}},
                 "broken": {"kafka": {"input_topic": f"{prefix}-broken"}, "lake": {"path": str(blocker / "lake")},
                            "runtime": {"max_restarts": 0}}}
    create_topics(broker.bootstrap, {f"{prefix}-healthy": 2, f"{prefix}-broken": 1,
                                     **{f"{t}-{v}": 1 for t in pipelines for v in names.values()}})
    env = _cli_env(prefix, ISOSTREAM__PIPELINES=json.dumps(pipelines), ISOSTREAM__MODEL__FIT_ON_FIRST="1000")
    lake = tmp_path / "lake"
    # produced while the engine starts and runs, so that healthy cannot be done before broken has failed
    producer = SteadyProducer(broker.bootstrap, f"{prefix}-healthy", n, 500.0, seed)
    producer.start()
    done = _cli(["--config", str(CONFIG), "--bootstrap", broker.bootstrap, "--lake", str(lake), "--registry",
                 str(tmp_path / "models"), "--max-events", str(n), "--json"], env, tmp_path, timeout_s=120)
    assert producer.finish(30) == n
    assert done.returncode == 1, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["failed"]) == {"broken"}, report
    assert str(blocker) in report["failed"]["broken"] and "lake" in report["failed"]["broken"]
    assert "pipeline broken failed" in done.stderr
    assert report["events"] == n
    _assert_lake_exact(lake / "healthy", n)
    scores = score_coordinates(broker.bootstrap, f"healthy-{names['scores']}", n)
    assert len(set(scores)) == n
