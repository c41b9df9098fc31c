"""One engine run for the benchmarks: ``engine.runtime.Runtime`` over a topic, with its progress marks.

Shared by ``benchmarks/engine.py`` (throughput, latency) and ``benchmarks/detection_engine.py`` (detection).
Every run gets its own consumer group, output topics, lake, checkpoints and model registry under ``workdir``,
so runs over the same input topic never see each other's state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client

from engine.cluster import dask_client
from engine.config import Config, load
from engine.runtime import RunReport, Runtime
from engine.telemetry import LatencyHistogram
from streams.broker import create_topics

REPO = Path(__file__).resolve().parent.parent
#: how often groups report progress and the driver calls on_progress (demo.yaml: 1 s); finer marks make the
#: steady-state window of a 300k-event quick run (a few seconds) measurable to a few per cent
REPORT_EVERY_S = 0.25


@dataclass(frozen=True)
class Mark:
    """One ``on_progress`` call: when, input records committed, events scored."""

    t: float
    records_in: int
    events: int


@dataclass
class EngineRun:
    """What one run measured."""

    cfg: Config
    runtime: Runtime
    report: RunReport
    totals: dict[str, Any]
    marks: list[Mark]
    n: int
    t_start: float  # perf_counter when Runtime.run began
    run_s: float  # Runtime.run, from plan to the last group drained
    cluster_s: float  # LocalCluster start (0 when the client was given)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steady(self) -> float:
        """events/s from the first mark with committed scores (after the initial fit) to the mark reaching ``n``."""
        after = [m for m in self.marks if m.events > 0]
        end = next((m for m in after if m.records_in >= self.n), None)
        if end is None:  # the run ended between two marks: its end is the last one
            end = Mark(self.t_start + self.run_s, self.report.records_in, self.report.events)
        if not after or end.t - after[0].t <= 0:
            return self.whole
        return (end.records_in - after[0].records_in) / (end.t - after[0].t)

    @property
    def whole(self) -> float:
        """events/s over the whole run, cluster start and initial fit included."""
        return self.n / (self.run_s + self.cluster_s)

    def summary(self) -> dict[str, Any]:
        return {"steady_events_per_s": round(self.steady), "whole_run_events_per_s": round(self.whole),
                "run_s": round(self.run_s, 2), "cluster_start_s": round(self.cluster_s, 2),
                "latency_p50_ms": self.totals.get("latency_p50_ms"),
                "latency_p99_ms": self.totals.get("latency_p99_ms"),
                "anomalies": self.report.anomalies, "commits": self.report.commits,
                "takeovers": len(self.report.takeovers),
                "model_versions_published": self.extra.get("published"), "restarts": self.report.restarts,
                **{k: v for k, v in self.extra.items() if k != "published"}}


def engine_config(bootstrap: str, topic: str, workdir: Path, tag: str, *, delivery: str = "exactly_once",
                  n_workers: int = 2, overrides: dict[str, Any] | None = None) -> Config:
    """``configs/demo.yaml`` pointed at ``topic``, with everything the run writes named by ``tag``."""
    base: dict[str, Any] = {
        "kafka": {"bootstrap": bootstrap, "input_topic": topic, "group_id": f"bench-{tag}",
                  "topics": {k: f"bench-{tag}-{k}" for k in ("scores", "alerts", "stats", "dead_letter", "metrics",
                                                              "control", "incidents")},
                  "dead_letter_dir": None},
        "lake": {"path": str(workdir / tag / "lake")},
        "model": {"save_dir": str(workdir / tag / "models")},
        "dashboard": {"enabled": False},
        "cluster": {"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                    "dashboard_address": "127.0.0.1:0"},
        "runtime": {"delivery": delivery, "report_every_s": REPORT_EVERY_S},
        # replays of old data pass many midnights: the stream benchmarks measure the stream, not nightly retrains
        "retrain": {"trigger": "cron"},
    }
    return load(REPO / "configs" / "demo.yaml", environ={}, overrides=_merge(base, overrides or {}))


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_engine(cfg: Config, n: int, *, client: Client | None = None, timeout_s: float = 600.0,
               on_progress: Callable[[Runtime, RunReport], None] | None = None, complete: bool = True) -> EngineRun:
    """Run the engine until ``n`` input records are committed (a fresh LocalCluster unless ``client``).

    Stops after ``timeout_s`` of ``Runtime.run``; then raises unless ``complete`` is False.
    """
    t = cfg.kafka.topics
    create_topics(cfg.kafka.bootstrap, {t.scores: 1, t.alerts: 1, t.stats: 1, t.dead_letter: 1, t.incidents: 1})
    marks: list[Mark] = []
    holder: dict[str, Runtime] = {}

    def progress(report: RunReport) -> None:
        marks.append(Mark(time.perf_counter(), report.records_in, report.events))
        if on_progress is not None:
            on_progress(holder["rt"], report)

    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)  # a hung run must not hang the benchmark
    timer.daemon = True
    t0 = time.perf_counter()
    try:
        if client is None:
            with dask_client(cfg.cluster) as own:
                cluster_s = time.perf_counter() - t0
                report, runtime, t_start, run_s = _run(cfg, own, n, stop, timer, holder, progress)
        else:
            cluster_s = 0.0
            report, runtime, t_start, run_s = _run(cfg, client, n, stop, timer, holder, progress)
    finally:
        timer.cancel()
    if (complete and report.records_in < n) or report.failed:
        msg = (f"engine run {cfg.kafka.group_id}: {report.records_in:,} of {n:,} records committed in {run_s:.0f} s "
               f"(failed: {report.failed or 'none'}, restarts {report.restarts})")
        raise RuntimeError(msg)
    published = runtime.pipelines["default"].coordinator.status.published
    return EngineRun(cfg, runtime, report, runtime.hub.totals(), marks, n, t_start, run_s, cluster_s, {"published": published})


def _run(cfg: Config, client: Client, n: int, stop: threading.Event, timer: threading.Timer,
         holder: dict[str, Runtime], progress: Callable[[RunReport], None]
         ) -> tuple[RunReport, Runtime, float, float]:
    runtime = holder["rt"] = Runtime(cfg, client)
    timer.start()
    t = time.perf_counter()
    report = runtime.run(stop, max_events=n, on_progress=progress)
    return report, runtime, t, time.perf_counter() - t


def merged_latency(runtime: Runtime) -> LatencyHistogram:
    """Every group's ingest -> committed latency histogram, merged (what ``hub.totals()`` quantiles read)."""
    out = LatencyHistogram()
    for m in runtime.hub.groups().values():
        out = out.merge(m.latency)
    return out


def latency_between(start: LatencyHistogram, end: LatencyHistogram) -> LatencyHistogram:
    """The events observed after ``start`` was taken (bucket counts subtracted; min/max bound them from outside)."""
    out = LatencyHistogram(end.lo_ms, end.hi_ms, end.buckets)
    out.counts = end.counts - start.counts
    out.sum_ms = end.sum_ms - start.sum_ms
    out.min_ms, out.max_ms = end.min_ms, end.max_ms
    return out
