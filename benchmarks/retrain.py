"""The nightly retrain's throughput over a lake day, against the naive Dask + scikit-learn job, in one run.

Writes a day of N station events in the lake layout (quick: 5M, full: 50M; 8 Kafka partitions, scored by a
first model as the engine scores them), then on a LocalCluster of 1 and of 2 worker processes (one thread
each) times, best of ``--repeat``:

- **isostream retrain** (``training.retrain.run``, forced so each repeat does the whole job): read, per-key
  features through the stream's layer, uniform sample, fit and integrate, score every row, calibrate, evaluate;
- **naive job** (the issue's anchor): ``dd.read_parquet(8 numeric columns)`` -> ``sample`` 65,536 rows ->
  scikit-learn ``IsolationForest(100, 256).fit`` -> ``map_partitions(score_samples)`` -> 0.99 quantile.

Rows: rows/s of each (and per worker), the ratio retrain/naive, and each one's 2-worker/1-worker scaling.
Each worker first runs the feature layer, builder and scorer on a few rows, so timings exclude compiling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import finish, row

DAY = dt.date(2026, 11, 24)
NAIVE_COLUMNS = ["value", "valueThreshold", "isActive", "score", "threshold", "kafka_partition", "kafka_offset",
                 "kafka_timestamp_ms"]


def write_day(cfg: Any, n: int, seed: int, partitions: int) -> int:
    """A day of ``n`` events in the lake layout, chunk by chunk, scored by a first model fitted on its start."""
    from engine.synthetic import day_chunks, fit_champion, write_scored_day
    from training.current import set_current
    from training.features import FeatureBuilder

    rows = 0
    champion = None
    builders: dict[int, FeatureBuilder] = {}
    for frame in day_chunks(DAY, n, seed=seed, partitions=partitions, chunk=2_500_000):
        if champion is None:
            champion = fit_champion(cfg, frame.iloc[:200_000])
            champion.save(cfg.registry / champion.version)
            set_current(cfg.registry, champion.version)
        write_scored_day(cfg, frame, champion, builders=builders, close=False)
        rows += len(frame)
    from streams.lake import close_day

    close_day(cfg.lake.path, DAY)
    return rows


def naive_job(files: list[str]) -> float:
    """The issue's naive job; returns its seconds."""
    import dask.dataframe as dd
    from sklearn.ensemble import IsolationForest

    t0 = time.perf_counter()
    ddf = dd.read_parquet(files, columns=NAIVE_COLUMNS)
    n = len(ddf)
    sample = ddf.sample(frac=min(1.0, 65_536 / n), random_state=0).compute().to_numpy(dtype=np.float64)
    model = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(sample)
    scores = ddf.map_partitions(lambda df: pd.Series(-model.score_samples(df.to_numpy(dtype=np.float64)),
                                                     index=df.index), meta=(None, "f8"))
    scores.quantile(0.99).compute()
    return time.perf_counter() - t0


def warm_up(cfg: Any) -> None:
    """The job's own per-partition path once on a small lake day (its kernels' first calls: compiling or
    loading numba's cache for the Arrow inputs the lake gives), so timings measure running, not compiling."""
    import tempfile

    from engine.synthetic import fit_champion, station_day, write_scored_day
    from streams.lake_days import read_day
    from training.batch import draw_sample, partition_features, score_partition

    with tempfile.TemporaryDirectory() as tmp:
        small = cfg.model_copy(update={"lake": cfg.lake.model_copy(update={"path": Path(tmp)})})
        frame = station_day(DAY, 12_000, seed=1)  # enough events per key to pass their warm-up
        det = fit_champion(small, frame, rows=1_000)
        write_scored_day(small, frame, det)
        for p, paths in read_day(tmp, DAY).partitions.items():
            rows = partition_features(tmp, paths, p, cfg.features, cfg.schema)
            draw_sample(rows, 100, 0)
            score_partition(rows, det, det)


def measure(cfg: Any, workers: int, repeat: int, files: list[str]) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from engine.batch_jobs import retrain_job
    from training import retrain

    out: dict[str, Any] = {"retrain_s": [], "naive_s": [], "stages": []}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(warm_up, cfg)  # compile (or load from numba's cache) every kernel on each worker first
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = retrain.run(retrain_job(cfg, DAY, force=True), client)
            out["retrain_s"].append(time.perf_counter() - t0)
            out["stages"].append(result.stages)
            out["rows"] = result.rows
            out["naive_s"].append(naive_job(files))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5M events (default: 50M)")
    p.add_argument("--events", type=int, default=None)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/retrain.json"))
    args = p.parse_args(argv)
    n = args.events or (5_000_000 if args.quick else 50_000_000)
    started = time.monotonic()
    from engine.config import load
    from streams.lake import LakeWriter

    with tempfile.TemporaryDirectory(prefix="isostream-retrain-bench-") as tmp:
        cfg = load("configs/demo.yaml", environ={}, overrides={
            "lake": {"path": f"{tmp}/lake"}, "model": {"save_dir": f"{tmp}/models"},
            "retrain": {"shadow_events": 0, "gate_min_agreement": 0.0, "gate_alert_rate_max": 1.0}})
        t = time.perf_counter()
        rows = write_day(cfg, n, args.seed, partitions=8)
        print(f"wrote {rows:,} events in {time.perf_counter() - t:.0f}s", flush=True)
        files = [str(f) for f in LakeWriter(cfg.lake.path, time_field="event_time").files(DAY)]
        runs = {w: measure(cfg, w, args.repeat, files) for w in (1, 2)}
    results = []
    for w, r in runs.items():
        best, naive = min(r["retrain_s"]), min(r["naive_s"])
        results.append(row(f"retrain, {w} worker(s)", rows / best, "rows/s", f"naive Dask + sklearn, {w} worker(s)",
                           rows / naive, per_worker=rows / best / w, naive_per_worker=rows / naive / w,
                           seconds=best, naive_seconds=naive, runs_s=r["retrain_s"], naive_runs_s=r["naive_s"],
                           stages=r["stages"][int(np.argmin(r["retrain_s"]))]))
    one, two = (min(runs[w]["retrain_s"]) for w in (1, 2))
    n1, n2 = (min(runs[w]["naive_s"]) for w in (1, 2))
    results.append(row("retrain scaling 1 -> 2 workers", one / two, "x", "naive job scaling", n1 / n2))
    return finish(args.out, "retrain", results, {"events": rows, "partitions": 8, "repeat": args.repeat,
                                                 "quick": args.quick}, started)


if __name__ == "__main__":
    raise SystemExit(main())
