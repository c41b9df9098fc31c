"""Kafka ingestion throughput: the engine's source path against raw consumption, Quix Streams and naive streamz.

``python -m benchmarks.ingest [--quick] --out benchmarks/results/ingest.json``

Produces ``--events`` realistic station-alarm JSON events (``streams.generator``, ~170 bytes each) to a
local tansu broker, then measures in the same run:

a. raw confluent-kafka ``consume`` loop that touches nothing: the limit (isostream's consumer settings, and
   librdkafka's defaults for reference), in one process and split over ``--groups`` processes;
b. isostream's source path as a partition group runs it (``engine/group.py``): ``KafkaBatchSource.poll_batch``
   then ``Decoder.decode`` to pandas DataFrames (schema enforced, dead letters on) in one thread; and the same
   with the topic's partitions split over ``--groups`` processes, one group each, as that many Dask workers
   run them. Features, scoring, outputs and commits are ``benchmarks/engine.py``'s business;
c. the naive baseline: ``Stream.from_kafka_batched`` + ``json.loads`` + ``pandas.DataFrame`` on a prefix;
d. a Quix Streams 3.28.1 application (JSON deserializer + one per-record step) in its own venv;
e. decoding alone on in-memory batches (MB/s).

Rates in one process are steady-state: records after the first arrival divided by the time from first
arrival to the last record done, so consumer start-up and the ~20 s consumer-group join of Quix (tansu) are
not counted. Split over processes, each process builds its consumer first, then all start together and the
rate is every record over the wall time from that start to the last process done (the slowest share sets it).
Each measurement runs ``--repeats`` times interleaved and the best run counts (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import multiprocessing as mp
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from benchmarks.common import finish, row
from streams.broker import EmbeddedBroker
from streams.decode import Decoder
from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.jsonl import to_json_lines
from streams.kafka_sink import KafkaSink
from streams.kafka_source import CONSUMER_DEFAULTS, KafkaBatchSource
from streams.records import RawBatch
from streams.schema import STATION_ALARM, Schema

HERE = Path(__file__).resolve().parent
QUIX_VENV = HERE / ".venv-quix"
QUIX_VERSION = "3.28.1"
_groups = iter(range(1_000_000))


def log(msg: str) -> None:
    print(f"[ingest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_events(n: int, seed: int = 7, fmt: str = "json", events_per_second: float = 200.0
                ) -> tuple[list[bytes], list[bytes]]:
    """``n`` JSON (or CSV) events and their keys (datapoint ids), seeded and network-free.

    ``events_per_second`` spaces them in event time (the generator's default: 200 events/s).
    """
    gen = StationAlarmGenerator(GeneratorSettings(seed=seed, n_stations=200, events_per_second=events_per_second))
    values: list[bytes] = []
    keys: list[bytes] = []
    while len(values) < n:
        frame = gen.next_chunk(min(200_000, n - len(values))).drop(columns=["label"])
        values += to_json_lines(frame) if fmt == "json" else _csv_lines(frame)
        keys += [k.encode() for k in frame["datapoint_id"]]
    return values, keys


def _csv_lines(frame: Any) -> list[bytes]:
    """One CSV record per event: the schema's fields in order, no header."""
    buf = io.BytesIO()
    table = pa.Table.from_pandas(frame[[f.name for f in STATION_ALARM.fields]], preserve_index=False)
    pacsv.write_csv(table, buf, write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buf.getvalue().splitlines()


def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes], compression: str) -> float:
    started = time.perf_counter()
    with KafkaSink({"bootstrap.servers": bootstrap}, topic, compression=compression) as sink:
        for i in range(0, len(values), 100_000):
            sink.write(values[i : i + 100_000], keys[i : i + 100_000])
    return len(values) / (time.perf_counter() - started)


def _steady(n: int, first_n: int, t_first: float, t_last: float) -> float:
    return (n - first_n) / max(t_last - t_first, 1e-9)


def bench_raw(bootstrap: str, topic: str, partitions: int, n: int, conf: dict[str, Any]) -> float:
    """Consume-only: count messages, touch nothing."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{next(_groups)}", **conf})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got, first_n, t_first = 0, 0, 0.0
    try:
        while got < n:
            msgs = c.consume(20_000, 1.0)
            if msgs and not got:
                first_n, t_first = len(msgs), time.perf_counter()
            got += len(msgs)
        return _steady(got, first_n, t_first, time.perf_counter())
    finally:
        c.close()


def bench_group(bootstrap: str, topic: str, n: int, max_messages: int, schema: Schema = STATION_ALARM,
                partitions: list[int] | None = None) -> float:
    """A partition group's loop, in this thread: ``poll_batch`` then ``decode``; counts rows and dead letters."""
    return _steady(*_group_loop(bootstrap, topic, partitions, n, max_messages, schema, f"iso-{next(_groups)}"))


def _group_loop(bootstrap: str, topic: str, partitions: list[int] | None, n: int, max_messages: int,
                schema: Schema, group_id: str, ready: Any = None) -> tuple[int, int, float, float]:
    """``(records, records of the first batch, first arrival, last record decoded)``, ``time.monotonic()``.

    The group's source and decoder as ``engine/task.py`` and ``engine/group.py`` build them: explicit
    assignment, one ``Decoder`` with pyarrow's threads on. With ``ready`` (a barrier) the source is built
    only once everyone passed it: an assigned consumer starts fetching at once, and a head start spent
    prefetching while the other processes start up would flatter the split measurement.
    """
    decoder = Decoder(schema)
    if ready is not None:
        decoder.decode(RawBatch.from_values(make_events(100, fmt=schema.format)[0]))  # warm, as a running group is
        ready.wait(120)
    with KafkaBatchSource({"bootstrap.servers": bootstrap}, topic, group_id=group_id, partitions=partitions,
                          start="earliest", max_messages=max_messages) as source:
        got, first_n, t_first = 0, 0, 0.0
        deadline = time.monotonic() + 300
        while got < n:
            raw = source.poll_batch()
            if raw is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"partition group {partitions} read {got} of {n} events in 300 s")
                continue
            decoded = decoder.decode(raw)
            if not got:
                first_n, t_first = len(raw), time.monotonic()
            got += len(decoded.frame) + len(decoded.dead)
        return got, first_n, t_first, time.monotonic()


def _raw_loop(bootstrap: str, topic: str, partitions: list[int] | None, n: int, max_messages: int,
              schema: Schema, group_id: str, ready: Any = None) -> tuple[int, int, float, float]:
    """``bench_raw``'s loop over ``partitions`` (same settings), timed like :func:`_group_loop`."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id,
                  **{k: v for k, v in CONSUMER_DEFAULTS.items() if not k.startswith("enable.")}})
    assert partitions, "a raw share needs its partitions"
    try:
        if ready is not None:
            ready.wait(120)  # assign (and so start fetching) only once everyone is here, as _group_loop does
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got, first_n, t_first = 0, 0, 0.0
        while got < n:
            msgs = c.consume(20_000, 1.0)
            if msgs and not got:
                first_n, t_first = len(msgs), time.monotonic()
            got += len(msgs)
        return got, first_n, t_first, time.monotonic()
    finally:
        c.close()


_LOOPS: dict[str, Callable[..., tuple[int, int, float, float]]] = {"group": _group_loop, "raw": _raw_loop}


def _share(kind: str, args: tuple[Any, ...], ready: Any, results: Any) -> None:
    """One process's share: build, wait for the others, read; puts ``(timings, error)`` on ``results``."""
    try:
        results.put((_LOOPS[kind](*args, ready=ready), None))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        results.put((None, f"{type(err).__name__}: {err}"))
        ready.abort()  # do not leave the others (or the parent) waiting at the start line
        raise


def bench_split(kind: str, bootstrap: str, topic: str, counts: dict[int, int], processes: int,
                max_messages: int, schema: Schema = STATION_ALARM) -> tuple[float, list[float]]:
    """``kind`` (``group`` or ``raw``) in ``processes`` processes, each over a contiguous share of the partitions
    (as ``engine/runtime.py`` splits them over workers). Returns (all records / wall time from the common
    start to the last process done, each process's own steady rate)."""
    parts = sorted(counts)
    size = -(-len(parts) // processes)
    shares = [parts[i:i + size] for i in range(0, len(parts), size)]
    ctx = mp.get_context("spawn")  # a fresh interpreter each, as on a worker; never fork a librdkafka client
    ready = ctx.Barrier(len(shares) + 1)
    results = ctx.Queue()
    group_id = f"{kind}-split-{next(_groups)}"
    procs = [ctx.Process(target=_share, daemon=True,
                         args=(kind, (bootstrap, topic, share, sum(counts[p] for p in share), max_messages,
                                      schema, group_id), ready, results))
             for share in shares]
    for proc in procs:
        proc.start()
    got: list[tuple[Any, str | None]] = []
    try:
        try:
            ready.wait(180)
        except threading.BrokenBarrierError:
            got.append(results.get(timeout=30))
        else:
            t_start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on Linux
            got = [results.get(timeout=360) for _ in procs]
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    errors = [err for _, err in got if err is not None]
    if errors:
        raise RuntimeError(f"{kind} split over {len(shares)} processes failed: {errors}")
    timings = [t for t, _ in got if t is not None]
    total = sum(t[0] for t in timings)
    return total / max(max(t[3] for t in timings) - t_start, 1e-9), [_steady(*t) for t in timings]


def partition_counts(bootstrap: str, topic: str, n: int) -> dict[int, int]:
    """Records per partition, read once (tansu's high watermarks under-report, see docs/ingestion.md)."""
    counts: dict[int, int] = {}
    with KafkaBatchSource({"bootstrap.servers": bootstrap}, topic, group_id=f"count-{next(_groups)}",
                          start="earliest") as source:
        got = 0
        while got < n:
            batch = source.poll_batch()
            if batch is not None:
                for p, k in zip(*np.unique(batch.partitions, return_counts=True), strict=True):
                    counts[int(p)] = counts.get(int(p), 0) + int(k)
                got += len(batch)
        for p in source.assignment:
            counts.setdefault(p, 0)
    return counts


def bench_batches(bootstrap: str, topic: str, n: int, max_messages: int) -> float:
    """``KafkaBatchSource.poll_batch`` alone (RawBatch, no decoding): what the source machinery costs."""
    with KafkaBatchSource({"bootstrap.servers": bootstrap}, topic, group_id=f"batches-{next(_groups)}",
                          start="earliest", max_messages=max_messages) as source:
        got, first_n, t_first = 0, 0, 0.0
        while got < n:
            batch = source.poll_batch()
            if batch is None:
                continue
            if not got:
                first_n, t_first = len(batch), time.perf_counter()
            got += len(batch)
        return _steady(got, first_n, t_first, time.perf_counter())


def bench_naive(bootstrap: str, topic: str, partitions: int, cap_events: int, cap_s: float) -> tuple[float, int]:
    """``from_kafka_batched`` + ``json.loads`` per message + ``pandas.DataFrame``, on a prefix."""
    import pandas as pd
    from streamz import Stream

    params = {"bootstrap.servers": bootstrap, "group.id": f"naive-{next(_groups)}",
              "auto.offset.reset": "earliest"}
    source = Stream.from_kafka_batched(topic, params, npartitions=partitions, start=False)
    seen = {"n": 0, "first_n": 0, "t_first": 0.0, "t_last": 0.0}

    def to_frame(batch: list[bytes]) -> None:
        frame = pd.DataFrame([json.loads(m) for m in batch])
        if not seen["n"]:
            seen["first_n"], seen["t_first"] = len(frame), time.perf_counter()
        seen["n"] += len(frame)
        seen["t_last"] = time.perf_counter()

    source.sink(to_frame)
    source.start()
    deadline = time.monotonic() + cap_s
    try:
        while seen["n"] < cap_events and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        source.stop()
    if seen["n"] <= seen["first_n"]:
        return 0.0, int(seen["n"])
    return _steady(int(seen["n"]), int(seen["first_n"]), seen["t_first"], seen["t_last"]), int(seen["n"])


QUIX_SCRIPT = r'''
import json, sys, time
from quixstreams import Application
cfg = json.loads(sys.argv[1])
n = cfg["events"]
state = {"count": 0, "t_first": None, "t_last": None}
app = Application(broker_address=cfg["bootstrap"], consumer_group=cfg["group"], auto_offset_reset="earliest",
                  consumer_extra_config=cfg["consumer"], loglevel="WARNING", use_changelog_topics=False)
topic = app.topic(cfg["topic"], value_deserializer="json")
sdf = app.dataframe(topic)

def step(value):
    state["count"] += 1
    if state["t_first"] is None:
        state["t_first"] = time.perf_counter()
    if state["count"] >= n and state["t_last"] is None:
        state["t_last"] = time.perf_counter()
        app.stop()

sdf = sdf.update(step)
app.run()
print("RESULT " + json.dumps(state), flush=True)
'''


def ensure_quix_venv() -> Path:
    """``benchmarks/.venv-quix`` with quixstreams pinned (it pins an older confluent-kafka than ours)."""
    python = QUIX_VENV / "bin" / "python"
    probe = [str(python), "-c", f"import quixstreams as q; assert q.__version__ == '{QUIX_VERSION}'"]
    if python.exists() and subprocess.call(probe, stderr=subprocess.DEVNULL) == 0:
        return python
    log(f"creating {QUIX_VENV} with quixstreams=={QUIX_VERSION} (once)")
    subprocess.check_call([sys.executable, "-m", "venv", str(QUIX_VENV)])
    subprocess.check_call([str(python), "-m", "pip", "install", "-q", f"quixstreams=={QUIX_VERSION}"])
    return python


def bench_quix(python: Path, bootstrap: str, topic: str, n: int, consumer: dict[str, Any]) -> float:
    cfg = {"bootstrap": bootstrap, "topic": topic, "events": n, "group": f"quix-{next(_groups)}-{time.time_ns()}",
           "consumer": consumer}
    script = QUIX_VENV / "quix_ingest_bench.py"
    script.write_text(QUIX_SCRIPT)
    out = subprocess.run([str(python), str(script), json.dumps(cfg)], capture_output=True, text=True, timeout=400,
                         check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"quix run failed (exit {out.returncode}): {out.stderr[-2000:]}")
    state = json.loads(line[len("RESULT "):])
    return _steady(state["count"], 1, state["t_first"], state["t_last"])


def bench_decode(values: list[bytes], batch: int, seconds: float,
                 schema: Schema = STATION_ALARM) -> tuple[float, float, float]:
    """Decode in-memory batches in passes over ``values`` for about ``seconds``.

    Returns (best pass MB/s, its rows/s, mean MB/s over all passes): the best pass, like the best run of the
    consumer measurements, is the figure least disturbed by other jobs on a shared machine.
    """
    batches = [RawBatch.from_values(values[i : i + batch], first_offset=i) for i in range(0, len(values), batch)]
    nbytes = sum(b.nbytes for b in batches)
    decoder = Decoder(schema)
    decoder.decode(batches[0])  # warm-up
    passes: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or not passes:
        t = time.perf_counter()
        for b in batches:
            decoder.decode(b)
        passes.append(time.perf_counter() - t)
    best = min(passes)
    return nbytes / best / 1e6, len(values) / best, nbytes * len(passes) / sum(passes) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="best of 2 runs, shorter naive and decode runs (~3 min)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "ingest.json")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--compression", default="lz4", choices=["lz4", "zstd", "snappy", "gzip", "none"])
    p.add_argument("--max-messages", type=int, default=20_000, help="isostream micro-batch size bound")
    p.add_argument("--groups", type=int, default=2,
                   help="processes (partition groups, as Dask workers run them) for the split measurements")
    p.add_argument("--repeats", type=int, default=None, help="runs per measurement (default 2 quick, 3 full)")
    p.add_argument("--naive-events", type=int, default=None, help="naive baseline prefix (default 300k)")
    p.add_argument("--naive-seconds", type=float, default=None, help="naive baseline time cap (20 s quick)")
    p.add_argument("--skip-quix", action="store_true", help="do not build or run the Quix Streams venv")
    p.add_argument("--format", choices=["json", "csv"], default="json",
                   help="message encoding (csv: isostream and raw only; the baselines decode JSON)")
    args = p.parse_args(argv)
    schema = STATION_ALARM.model_copy(update={"format": args.format})
    baselines = args.format == "json"
    repeats = args.repeats or (2 if args.quick else 3)
    naive_events = args.naive_events or 300_000
    naive_s = args.naive_seconds or (20.0 if args.quick else 120.0)
    fetch_conf = {k: v for k, v in CONSUMER_DEFAULTS.items() if not k.startswith("enable.")}
    settings = {"events": args.events, "partitions": args.partitions, "compression": args.compression,
                "max_messages": args.max_messages, "repeats": repeats, "best_of": True, "quick": args.quick,
                "naive_prefix_events": naive_events, "naive_time_cap_s": naive_s, "broker": "tansu (in-memory)",
                "consumer_settings": fetch_conf, "rate": "steady state: after first arrival, best of repeats",
                "split_rate": "all records / wall time from the common start to the last process done",
                "groups": args.groups, "format": args.format}
    t_start = time.monotonic()
    log(f"generating {args.events:,} events")
    values, keys = make_events(args.events, fmt=args.format)
    avg = float(np.mean([len(v) for v in values[:100_000]]))
    settings["avg_event_bytes"] = round(avg, 1)
    rows: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        topic = "ingest-bench"
        broker.create_topic(topic, args.partitions)
        log(f"producing to {broker.bootstrap} ({args.partitions} partitions, {args.compression}, {avg:.0f} B/event)")
        rate = produce(broker.bootstrap, topic, values, keys, args.compression)
        rows.append(row("produce (KafkaSink, keyed)", rate, "events/s"))
        # keep only what the decode benchmark needs: a million live events would make every cyclic-GC pass of
        # the in-process consumers walk them, a cost that a real consumer process does not have
        sample = values[:200_000]
        del values, keys
        gc.collect()
        counts = partition_counts(broker.bootstrap, topic, args.events)
        settings["partition_events"] = {str(p): k for p, k in sorted(counts.items())}
        g = args.groups
        raw, raw_default, raw_split, iso, split, batches = [], [], [], [], [], []
        split_shares: list[list[float]] = []
        for i in range(repeats):
            raw.append(bench_raw(broker.bootstrap, topic, args.partitions, args.events, fetch_conf))
            log(f"raw consume-only (isostream consumer settings) run {i + 1}: {raw[-1]:,.0f}/s")
            iso.append(bench_group(broker.bootstrap, topic, args.events, args.max_messages, schema))
            log(f"isostream partition group (poll_batch + decode, 1 thread) run {i + 1}: {iso[-1]:,.0f}/s")
            rate, shares = bench_split("group", broker.bootstrap, topic, counts, g, args.max_messages, schema)
            split.append(rate)
            split_shares.append(shares)
            log(f"isostream {g} partition groups in {g} processes run {i + 1}: {rate:,.0f}/s "
                f"(each: {', '.join(f'{r:,.0f}' for r in shares)}/s)")
            raw_split.append(bench_split("raw", broker.bootstrap, topic, counts, g, args.max_messages)[0])
            log(f"raw consume-only in {g} processes run {i + 1}: {raw_split[-1]:,.0f}/s")
            batches.append(bench_batches(broker.bootstrap, topic, args.events, args.max_messages))
            log(f"isostream KafkaBatchSource, raw batches only run {i + 1}: {batches[-1]:,.0f}/s")
        raw_default.append(bench_raw(broker.bootstrap, topic, args.partitions, args.events, {}))
        log(f"raw consume-only (librdkafka defaults): {raw_default[-1]:,.0f}/s")
        best_raw, best_iso, best_split, best_raw_split = max(raw), max(iso), max(split), max(raw_split)
        share_rates = split_shares[split.index(best_split)]
        group_name = "isostream partition group (poll_batch + decode, 1 thread) -> decoded DataFrames"
        split_name = f"isostream {g} partition groups in {g} processes -> decoded DataFrames"
        raw_split_name = f"raw consume-only in {g} processes (isostream consumer settings)"
        rows.append(row("raw consume-only (isostream consumer settings)", best_raw, "events/s", runs=raw))
        rows.append(row("raw consume-only (librdkafka defaults)", max(raw_default), "events/s"))
        rows.append(row(raw_split_name, best_raw_split, "events/s", runs=raw_split))
        rows.append(row(f"{group_name} vs raw consume-only", best_iso, "events/s",
                        "raw consume-only (same consumer settings)", best_raw, runs=iso, goal_ratio=0.9))
        rows.append(row(f"{split_name} vs raw consume-only in {g} processes", best_split, "events/s",
                        raw_split_name, best_raw_split, runs=split, goal_ratio=0.9,
                        per_process_steady=share_rates, sum_of_per_process_steady=sum(share_rates)))
        rows.append(row(f"{split_name} vs raw consume-only (1 process)", best_split, "events/s",
                        "raw consume-only (same consumer settings)", best_raw))
        rows.append(row(f"{split_name} vs 1 partition group", best_split, "events/s", group_name, best_iso))
        rows.append(row("isostream KafkaBatchSource raw batches, no decoding (diagnostic)", max(batches), "events/s",
                        "raw consume-only (same consumer settings)", best_raw, runs=batches))
        rows.append(row("isostream partition group vs raw consume-only (librdkafka defaults)", best_iso, "events/s",
                        "raw consume-only (librdkafka defaults)", max(raw_default)))
        if baselines and not args.skip_quix:
            python = ensure_quix_venv()
            log("quix streams run (consumer-group join takes ~20 s on tansu; not counted)")
            quix = bench_quix(python, broker.bootstrap, topic, args.events, fetch_conf)
            log(f"quix streams: {quix:,.0f}/s")
            rows.append(row("quix streams 3.28.1 (json deserializer + 1 per-record step)", quix, "events/s"))
            rows.append(row("isostream partition group vs quix streams", best_iso, "events/s",
                            "quix streams 3.28.1", quix, goal_ratio=1.15))
        if baselines:
            naive, naive_n = bench_naive(broker.bootstrap, topic, args.partitions, naive_events, naive_s)
            log(f"naive streamz from_kafka_batched + json.loads: {naive:,.0f}/s on the first {naive_n:,} events")
            prefix = f"naive streamz from_kafka_batched + json.loads + DataFrame (first {naive_n:,} events, cap {naive_s:.0f} s)"
            rows.append(row(prefix, naive, "events/s", prefix_events=naive_n))
            rows.append(row("isostream partition group vs naive streamz", best_iso, "events/s", prefix, naive,
                            goal_ratio=100))
    mbs, rps, mean_mbs = bench_decode(sample, args.max_messages, 4.0 if args.quick else 10.0, schema)
    log(f"decode alone: {mbs:,.0f} MB/s, {rps:,.0f} rows/s (best pass; mean {mean_mbs:,.0f} MB/s)")
    rows.append(row(f"decode alone (pyarrow {args.format.upper()} -> pandas, schema enforced; best 200k-event pass)",
                    mbs, "MB/s",
                    "goal 150 MB/s on 2 cores", 150.0, rows_per_s=rps, mean_mb_per_s=mean_mbs))
    return finish(args.out, "ingest", rows, settings, t_start, log)


if __name__ == "__main__":
    sys.exit(main())
