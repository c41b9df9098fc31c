"""End-to-end engine throughput and latency against the raw consumer, Quix Streams + River and naive streamz.

``python -m benchmarks.engine [--quick] [--out benchmarks/results/engine.json]``

One backlog topic of generated station-alarm JSON events (``benchmarks.ingest.make_events``, 4 partitions,
lz4; 300k quick, 1M full) on the embedded tansu broker, and in the same run:

a. the raw confluent-kafka consume-only loop over it (``benchmarks.ingest.bench_raw``): the limit;
b. the engine end to end (``engine.runtime.Runtime`` with ``configs/demo.yaml``: decode, per-key features,
   scoring, explanations, the fsync'd Parquet lake, ``scores``/``alerts``/``stats`` records, checkpoints and
   commits in the partition groups on Dask workers), ``runtime.delivery`` at_least_once and exactly_once, each
   on a fresh LocalCluster of 1 and 2 worker processes (1 thread each). Steady state: input records committed
   from the first progress mark with committed scores (after the initial fit) to the mark that reaches the
   end, over the time between them; whole run: all events over cluster start + ``Runtime.run``. Latency
   quantiles (Kafka timestamp -> outputs committed) come from ``Runtime.hub.totals()``: on a backlog they
   measure the backlog's age, so
c. a paced run produces at a fixed rate (100,000 events/s where the engine sustains well over that, else
   60 % of its measured steady rate) into a fresh topic after a warm-up backlog has been fitted and
   committed, and reports the latency quantiles of the paced events only (histogram difference);
d. a Quix Streams 3.28.1 + River ``HalfSpaceTrees`` per-record pipeline (JSON deserializer, then per record
   ``MinMaxScaler | HalfSpaceTrees`` ``score_one`` + ``learn_one`` on value/valueThreshold, River's own
   example pipeline) in the Quix venv, capped by time;
e. the naive pipeline: streamz ``from_kafka_batched`` + ``json.loads`` per record + ``DataFrame`` + scikit-learn
   ``IsolationForest.score_samples`` per batch (fitted on the first batch), capped by time.

The machine is shared (2 vCPUs, the broker and the other engineers' jobs on them): every figure moves by
tens of per cent between runs; ratios within one run are the meaningful part.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._engine_harness import (
    REPORT_EVERY_S,
    EngineRun,
    engine_config,
    latency_between,
    merged_latency,
    run_engine,
)
from benchmarks.common import finish, row
from benchmarks.ingest import QUIX_VENV, QUIX_VERSION, bench_raw, ensure_quix_venv, make_events, produce
from streams.broker import EmbeddedBroker
from streams.kafka_sink import KafkaSink
from streams.kafka_source import CONSUMER_DEFAULTS

HERE = Path(__file__).resolve().parent
MISSION_MB_S = 10.0
RIVER_VERSION = "0.26.1"
PACED_TARGET = 100_000
_groups = iter(range(1_000_000))


def log(msg: str) -> None:
    print(f"[engine {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- (b) the engine on the backlog -------------------------------------------------------------------------
def bench_engine(bootstrap: str, topic: str, n: int, workdir: Path, delivery: str, workers: int) -> EngineRun:
    tag = f"{delivery.replace('_', '')}-{workers}w-{next(_groups)}"
    cfg = engine_config(bootstrap, topic, workdir, tag, delivery=delivery, n_workers=workers)
    return run_engine(cfg, n)


# -- (c) the paced run -------------------------------------------------------------------------------------
def bench_paced(broker: EmbeddedBroker, partitions: int, workdir: Path, rate: int, seconds: float,
                delivery: str, workers: int, warm: int = 20_000,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Warm-up backlog (fit + commit), then ``rate`` events/s for ``seconds``; latency of the paced events."""
    topic = f"engine-paced-{next(_groups)}"
    broker.create_topic(topic, partitions)
    total = int(rate * seconds)
    values, keys = make_events(warm + total, seed=11)
    produce(broker.bootstrap, topic, values[:warm], keys[:warm], "lz4")
    go = threading.Event()
    state: dict[str, Any] = {}

    def on_progress(runtime: Any, report: Any) -> None:
        if not go.is_set():
            hist = merged_latency(runtime)
            if hist.count >= warm:  # every warm-up event's latency is in: what follows is paced
                state["hist0"] = hist
                go.set()

    def pace() -> None:
        if not go.wait(300):
            return
        i, end, behind = warm, warm + total, 0
        with KafkaSink({"bootstrap.servers": broker.bootstrap}, topic, compression="lz4") as sink:
            t0 = time.perf_counter()
            while i < end:
                due = warm + min(total, int((time.perf_counter() - t0) * rate))
                if due > i:
                    behind = max(behind, due - i)
                    sink.write(values[i:due], keys[i:due])
                    i = due
                else:
                    time.sleep(0.002)
            state["produce_s"] = time.perf_counter() - t0
            state["t_produced"] = time.perf_counter()
            state["max_behind"] = behind

    producer = threading.Thread(target=pace, name="paced-producer", daemon=True)
    producer.start()
    cfg = engine_config(broker.bootstrap, topic, workdir, f"paced-{rate}-{next(_groups)}", delivery=delivery,
                        n_workers=workers, overrides=overrides)
    # a rate the engine does not sustain leaves a growing backlog: give up 60 s past the paced seconds
    run = run_engine(cfg, warm + total, on_progress=on_progress, timeout_s=seconds + 60, complete=False)
    producer.join(30)
    if "hist0" not in state or "t_produced" not in state:
        msg = f"paced run at {rate:,}/s: the warm-up of {warm:,} events was not committed within {seconds + 60:.0f} s"
        raise RuntimeError(msg)
    paced = latency_between(state["hist0"], merged_latency(run.runtime))
    done = next((m.t for m in run.marks if m.records_in >= warm + total), run.t_start + run.run_s)
    drain_s = done - state["t_produced"]
    return {"rate": rate, "seconds": seconds, "events": total, "warmup_events": warm,
            "produced_per_s": round(total / state["produce_s"]), "max_producer_backlog": state["max_behind"],
            "p50_ms": paced.quantile(0.5), "p99_ms": paced.quantile(0.99), "max_ms": paced.max_ms,
            "observed": paced.count, "drain_after_last_produce_s": round(drain_s, 2),
            "committed": run.report.records_in - warm, "sustained": drain_s < 2.0 and paced.count >= total,
            "delivery": delivery, "workers": workers,
            "commit_interval_ms": cfg.runtime.commit_interval_ms, "max_batch_wait_ms": cfg.kafka.max_batch_wait_ms}


# -- (d) Quix Streams + River -------------------------------------------------------------------------------
QUIX_RIVER_SCRIPT = r'''
import json, sys, time
from quixstreams import Application
from river import anomaly, compose, preprocessing
cfg = json.loads(sys.argv[1])
n, cap = cfg["events"], cfg["cap_s"]
model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=cfg["seed"]))
state = {"count": 0, "t_first": None, "t_last": None, "flagged": 0}
app = Application(broker_address=cfg["bootstrap"], consumer_group=cfg["group"], auto_offset_reset="earliest",
                  consumer_extra_config=cfg["consumer"], loglevel="WARNING", use_changelog_topics=False)
topic = app.topic(cfg["topic"], value_deserializer="json")
sdf = app.dataframe(topic)

def score(value):
    x = {"value": float(value["value"]), "valueThreshold": float(value["valueThreshold"])}
    s = model.score_one(x)
    model.learn_one(x)
    state["count"] += 1
    state["flagged"] += s > 0.9
    now = time.perf_counter()
    if state["t_first"] is None:
        state["t_first"] = now
    if state["t_last"] is None and (state["count"] >= n or now - state["t_first"] >= cap):
        state["t_last"] = now
        app.stop()
    return s

sdf = sdf.apply(score)
app.run()
print("RESULT " + json.dumps(state), flush=True)
'''


def ensure_quix_river_venv() -> Path:
    """The ingest benchmark's Quix venv, plus River (same version as ours) for the per-record scorer."""
    python = ensure_quix_venv()
    probe = [str(python), "-c", f"import river; assert river.__version__ == '{RIVER_VERSION}'"]
    if subprocess.call(probe, stderr=subprocess.DEVNULL) != 0:
        log(f"installing river=={RIVER_VERSION} into {QUIX_VENV} (once)")
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", f"river=={RIVER_VERSION}"])
    return python


def bench_quix_river(python: Path, bootstrap: str, topic: str, n: int, cap_s: float,
                     consumer: dict[str, Any]) -> tuple[float, int]:
    """Steady events/s (after the first record) and records done, within ``cap_s`` of the first record."""
    cfg = {"bootstrap": bootstrap, "topic": topic, "events": n, "cap_s": cap_s, "seed": 42,
           "group": f"quix-river-{next(_groups)}-{time.time_ns()}", "consumer": consumer}
    script = QUIX_VENV / "quix_river_engine_bench.py"
    script.write_text(QUIX_RIVER_SCRIPT)
    out = subprocess.run([str(python), str(script), json.dumps(cfg)], capture_output=True, text=True,
                         timeout=cap_s + 240, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        msg = f"quix + river run failed (exit {out.returncode}): {out.stderr[-2000:]}"
        raise RuntimeError(msg)
    state = json.loads(line[len("RESULT "):])
    return (state["count"] - 1) / max(state["t_last"] - state["t_first"], 1e-9), int(state["count"])


# -- (e) naive streamz + json.loads + sklearn ----------------------------------------------------------------
def bench_naive_sklearn(bootstrap: str, topic: str, partitions: int, n: int, cap_s: float) -> tuple[float, int]:
    """``from_kafka_batched`` (defaults) + ``json.loads`` + ``DataFrame`` + ``IsolationForest`` per batch."""
    import pandas as pd
    from sklearn.ensemble import IsolationForest
    from streamz import Stream

    params = {"bootstrap.servers": bootstrap, "group.id": f"naive-sk-{next(_groups)}",
              "auto.offset.reset": "earliest"}
    source = Stream.from_kafka_batched(topic, params, npartitions=partitions, start=False)
    seen: dict[str, Any] = {"n": 0, "first_n": 0, "t_first": 0.0, "t_last": 0.0, "model": None}

    def score(batch: list[bytes]) -> None:
        frame = pd.DataFrame([json.loads(m) for m in batch])
        X = frame[["value", "valueThreshold"]].to_numpy(dtype=np.float64)
        if seen["model"] is None:
            seen["model"] = IsolationForest(n_estimators=100, random_state=0).fit(X)
        seen["model"].score_samples(X)
        if not seen["n"]:
            seen["first_n"], seen["t_first"] = len(frame), time.perf_counter()
        seen["n"] += len(frame)
        seen["t_last"] = time.perf_counter()

    source.sink(score)
    source.start()
    deadline = time.monotonic() + cap_s
    try:
        # from_kafka_batched may stop a few records short of the end (seen here: 29 of 300k): stop once idle
        while seen["n"] < n and time.monotonic() < deadline and not (
                seen["n"] and time.perf_counter() - seen["t_last"] > 5.0):
            time.sleep(0.05)
    finally:
        source.stop()
    if seen["n"] <= seen["first_n"]:
        return 0.0, int(seen["n"])
    return (seen["n"] - seen["first_n"]) / max(seen["t_last"] - seen["t_first"], 1e-9), int(seen["n"])


# -- rows ---------------------------------------------------------------------------------------------------
def _label(delivery: str, workers: int) -> str:
    return f"{delivery}, {workers} worker{'s' if workers > 1 else ''}"


def engine_rows(runs: dict[tuple[str, int], EngineRun], raw: float) -> list[dict[str, Any]]:
    rows = []
    for (delivery, workers), r in runs.items():
        rows.append(row(f"engine end to end, {_label(delivery, workers)}: steady state after the initial fit",
                        r.steady, "events/s", "raw consume-only (same topic, same run)", raw, **r.summary()))
        rows.append(row(f"engine end to end, {_label(delivery, workers)}: whole run (cluster start, fit included)",
                        r.whole, "events/s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="300k events, 20 s paced, 45 s Quix/naive caps (< 8 min)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "engine.json")
    p.add_argument("--events", type=int, default=None, help="events in the backlog (default 300k quick, 1M full)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="LocalCluster sizes to measure")
    p.add_argument("--paced-seconds", type=float, default=None, help="paced run length (20 s quick, 60 s full)")
    p.add_argument("--paced-rate", type=int, default=None,
                   help=f"paced input rate (default {PACED_TARGET:,}/s if the engine sustains it, else 60 %% "
                        "of its steady rate)")
    p.add_argument("--cap-seconds", type=float, default=None, help="time cap of Quix+River and naive (45 quick, 60)")
    p.add_argument("--skip-quix", action="store_true", help="do not build or run the Quix Streams venv")
    args = p.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    n = args.events or (300_000 if args.quick else 1_000_000)
    paced_s = args.paced_seconds or (20.0 if args.quick else 60.0)
    cap_s = args.cap_seconds or (45.0 if args.quick else 60.0)
    workers = sorted(set(args.workers))
    fetch_conf = {k: v for k, v in CONSUMER_DEFAULTS.items() if not k.startswith("enable.")}
    t_start = time.monotonic()
    load_start = os.getloadavg()
    log(f"generating {n:,} events (load average {load_start[0]:.1f} on {os.cpu_count()} cpus)")
    values, keys = make_events(n)
    avg = float(np.mean([len(v) for v in values[:100_000]]))
    settings: dict[str, Any] = {
        "events": n, "partitions": args.partitions, "compression": "lz4", "avg_event_bytes": round(avg, 1),
        "quick": args.quick, "workers": workers, "threads_per_worker": 1, "processes": True,
        "config": "configs/demo.yaml (fit_on_first 5000, 100 trees, max_batch_messages 20000, "
                  "commit_interval_ms 500, publish_every_s 10) with own topics/lake/registry per run, "
                  f"runtime.report_every_s {REPORT_EVERY_S}",
        "rate": "steady state: input records committed from the first progress mark with committed scores "
                "to the mark reaching the end; one run per configuration, each on a fresh LocalCluster",
        "latency": "Kafka message timestamp -> outputs committed (MetricsHub totals); backlog runs measure the "
                   "backlog's age, the paced run the latency under load",
        "baseline_time_cap_s": cap_s, "broker": "tansu (in-memory)", "consumer_settings": fetch_conf,
        "quix": f"quixstreams {QUIX_VERSION} + river {RIVER_VERSION}: json deserializer, per record "
                "MinMaxScaler | HalfSpaceTrees(seed=42, defaults) score_one + learn_one on value/valueThreshold",
        "naive": "streamz from_kafka_batched (defaults: 10k per partition per 1 s poll) + json.loads + DataFrame "
                 "+ sklearn IsolationForest(100 trees) fitted on the first batch, score_samples per batch",
    }
    rows: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="isostream-bench-") as tmp:
        workdir = Path(tmp)
        topic = "engine-bench"
        broker.create_topic(topic, args.partitions)
        log(f"producing to {broker.bootstrap} ({args.partitions} partitions, lz4, {avg:.0f} B/event)")
        produce(broker.bootstrap, topic, values, keys, "lz4")
        del values, keys
        gc.collect()
        raw = bench_raw(broker.bootstrap, topic, args.partitions, n, fetch_conf)
        log(f"raw consume-only: {raw:,.0f} events/s")
        rows.append(row("raw consume-only (confluent-kafka, isostream consumer settings): the limit", raw,
                        "events/s"))

        runs: dict[tuple[str, int], EngineRun] = {}
        for w in workers:
            for delivery in ("at_least_once", "exactly_once"):
                r = runs[(delivery, w)] = bench_engine(broker.bootstrap, topic, n, workdir, delivery, w)
                log(f"engine {_label(delivery, w)}: steady {r.steady:,.0f} events/s ({r.steady * avg / 1e6:.1f} MB/s), "
                    f"whole run {r.whole:,.0f} events/s (cluster {r.cluster_s:.1f} s + run {r.run_s:.1f} s), "
                    f"backlog latency p50 {r.totals['latency_p50_ms']:,.0f} ms p99 {r.totals['latency_p99_ms']:,.0f} ms")
        rows += engine_rows(runs, raw)

        alo_w = max(workers, key=lambda w: runs[("at_least_once", w)].steady)
        eos_w = max(workers, key=lambda w: runs[("exactly_once", w)].steady)
        alo, eos = runs[("at_least_once", alo_w)].steady, runs[("exactly_once", eos_w)].steady
        alo_name = f"engine at_least_once ({alo_w} worker{'s' if alo_w > 1 else ''}, best of {workers})"
        rows.append(row(f"{alo_name} vs raw consume-only", alo, "events/s", "raw consume-only", raw,
                        goal_ratio=0.6))
        for w in workers:
            rows.append(row(f"engine exactly_once vs at_least_once, {w} worker{'s' if w > 1 else ''}",
                            runs[("exactly_once", w)].steady, "events/s", f"engine {_label('at_least_once', w)}",
                            runs[("at_least_once", w)].steady, goal_ratio=0.5))
        if 1 in workers and 2 in workers:
            for delivery in ("at_least_once", "exactly_once"):
                rows.append(row(f"engine 2 workers vs 1 worker ({delivery}): scaling", runs[(delivery, 2)].steady,
                                "events/s", f"engine {delivery}, 1 worker", runs[(delivery, 1)].steady))
        rows.append(row(f"{alo_name}, steady state vs the mission's 10 MB/s", alo * avg / 1e6, "MB/s",
                        "mission target 10 MB/s", MISSION_MB_S))
        rows.append(row(f"engine exactly_once ({_label('exactly_once', eos_w).split(', ')[1]}), steady state vs the "
                        "mission's 10 MB/s",
                        eos * avg / 1e6, "MB/s", "mission target 10 MB/s", MISSION_MB_S))

        # the paced run: the default delivery (exactly_once) on its better cluster size
        rate = args.paced_rate or (PACED_TARGET if eos >= 1.25 * PACED_TARGET else int(0.6 * eos) // 1000 * 1000)
        paced = bench_paced(broker, args.partitions, workdir, rate, paced_s, "exactly_once", eos_w)
        log(f"paced {rate:,}/s for {paced_s:.0f} s ({_label('exactly_once', eos_w)}): produced "
            f"{paced['produced_per_s']:,}/s, p50 {paced['p50_ms']:,.0f} ms p99 {paced['p99_ms']:,.0f} ms, "
            f"drained {paced['drain_after_last_produce_s']} s after the last record (sustained: {paced['sustained']})")
        if not paced["sustained"] and args.paced_rate is None and (time.monotonic() - t_start < 300 or not args.quick):
            rate //= 2
            paced = bench_paced(broker, args.partitions, workdir, rate, paced_s, "exactly_once", eos_w)
            log(f"paced again at {rate:,}/s: p50 {paced['p50_ms']:,.0f} ms p99 {paced['p99_ms']:,.0f} ms "
                f"(sustained: {paced['sustained']})")
        note = "" if rate == PACED_TARGET else f" ({PACED_TARGET:,}/s is beyond this machine's engine rate)"
        rows.append(row(f"p99 ingest->committed latency at {rate:,} events/s paced input{note}, "
                        f"{_label('exactly_once', eos_w)}", paced["p99_ms"], "ms", "goal 1 s", 1000.0,
                        goal_ratio="< 1", **paced))

        quix = 0.0
        if not args.skip_quix:
            python = ensure_quix_river_venv()
            log(f"quix streams + river HST (consumer-group join ~20 s on tansu, not counted; cap {cap_s:.0f} s)")
            quix, quix_n = bench_quix_river(python, broker.bootstrap, topic, n, cap_s, fetch_conf)
            log(f"quix streams + river HST: {quix:,.0f} events/s over {quix_n:,} events")
            name = f"quix streams {QUIX_VERSION} + river HalfSpaceTrees per record (first {quix_n:,} events)"
            rows.append(row(name, quix, "events/s", events_done=quix_n))
            rows.append(row(f"{alo_name} vs quix streams + river HST", alo, "events/s", name, quix, goal_ratio=5.0))
        naive, naive_n = bench_naive_sklearn(broker.bootstrap, topic, args.partitions, n, cap_s)
        log(f"naive streamz + json.loads + sklearn: {naive:,.0f} events/s over {naive_n:,} events")
        name = f"naive streamz from_kafka_batched + json.loads + sklearn IsolationForest (first {naive_n:,} events)"
        rows.append(row(name, naive, "events/s", events_done=naive_n))
        rows.append(row(f"{alo_name} vs naive streamz + sklearn", alo, "events/s", name, naive))
    # the machine is shared: the load says how much of it the run had
    settings["load_average_1m_start_end"] = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    return finish(args.out, "engine", rows, settings, t_start, log)


if __name__ == "__main__":
    raise SystemExit(main())
