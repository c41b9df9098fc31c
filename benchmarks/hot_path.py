"""The per-row hot path of the nightly retrain on one core: features, forest, hull extension, the whole.

Generated station events (``configs/demo.yaml``: its features, 100 trees, max_samples 256), best of
``--repeat`` wall times of each piece, in rows/s:

- ``features``: :meth:`training.features.FeatureBuilder.compute` on a fresh builder (every key new, as in
  the first batch of a partition), for the key column as pandas strings, as a categorical, and as a
  ``pyarrow.Table`` with dictionary-encoded keys (a Parquet day read with ``read_dictionary``);
- ``forest``: :meth:`training.forest.PackedForest.score` of the feature matrix, on one numba thread and on all;
- ``hull``: :func:`training.detector.hull_extended`;
- ``detector``: :meth:`training.detector.Detector.score` (forest + hull) on one thread;
- ``whole``: features (pandas strings) + ``Detector.score`` on one thread: the rows/s one core sustains.

Compilation is excluded (each piece runs once first). The machine may be shared: the best of the repeats is
the least disturbed, and each row also gives rows per second of process CPU time (all threads together).

Usage: ``python -m benchmarks hot_path [--quick]`` -> ``benchmarks/results/hot_path.json``.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import pyarrow as pa

from benchmarks.common import finish, row
from engine.config import load
from streams.generator import GeneratorSettings, StationAlarmGenerator
from training.detector import Detector, hull_extended
from training.features import FeatureBuilder

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "demo.yaml"


def log(msg: str) -> None:
    print(f"[hot_path {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """The shortest wall time and the shortest process CPU time of ``repeat`` calls (after one untimed call).

    On a shared machine the CPU time is the steadier figure: it leaves out the time other processes held the core.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hot_path", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200k rows (under a minute)")
    p.add_argument("--rows", type=int, default=None, help="rows (200k quick, 1M full)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per piece; the best counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "hot_path.json")
    args = p.parse_args(argv)
    started = time.monotonic()
    n = args.rows or (200_000 if args.quick else 1_000_000)
    cfg = load(CONFIG, environ={})
    frame = StationAlarmGenerator(GeneratorSettings(seed=args.seed)).next_chunk(n)
    key = cfg.schema_.key or ""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(table.column_names.index(key), key, table.column(key).dictionary_encode())
    forms = {"pandas str keys": frame, "categorical keys": frame.astype({key: "category"}),
             "arrow table, dictionary keys": table}

    def features(batch: Any) -> Any:
        return FeatureBuilder(cfg.features, cfg.schema_).compute(batch)

    out = features(frame)
    m = cfg.model
    det = Detector.fit(out.X[out.warm][:65_536], FeatureBuilder(cfg.features, cfg.schema_).names, online=None,
                       builder="numba", n_trees=m.n_trees, max_samples=m.max_samples, seed=args.seed)
    assert det.hull is not None
    lo, hi = det.hull
    log(f"{n:,} rows, {out.X.shape[1]} features, {det.forest.n_trees} trees; best of {args.repeat}")
    threads = numba.get_num_threads()
    rows: list[dict[str, Any]] = []

    def add(name: str, times: tuple[float, float], **extra: Any) -> None:
        wall, cpu = times
        rows.append(row(name, n / wall, "rows/s", seconds=round(wall, 4), cpu_seconds=round(cpu, 4),
                        rows_per_cpu_s=n / cpu, **extra))
        log(f"{name}: {n / wall / 1e6:.2f} M rows/s ({n / cpu / 1e6:.2f} M rows per CPU second)")

    for name, batch in forms.items():
        add(f"features ({name})", best_of(functools.partial(features, batch), args.repeat), threads=1)
    scores = det.forest.score(out.X)
    try:
        numba.set_num_threads(1)
        add("forest", best_of(lambda: det.forest.score(out.X), args.repeat), threads=1)
        add("hull", best_of(lambda: hull_extended(scores, out.X, lo, hi), args.repeat), threads=1)
        add("detector (forest + hull)", best_of(lambda: det.score(out.X), args.repeat), threads=1)
        add("whole (features + detector)", best_of(lambda: det.score(features(frame).X), args.repeat), threads=1)
    finally:
        numba.set_num_threads(threads)
    add(f"forest ({threads} threads)", best_of(lambda: det.forest.score(out.X), args.repeat), threads=threads)
    settings = {"rows": n, "repeat": args.repeat, "config": str(CONFIG.relative_to(HERE.parent)),
                "features": out.X.shape[1], "trees": det.forest.n_trees, "seed": args.seed}
    return finish(args.out, "hot_path", rows, settings, started, log)


if __name__ == "__main__":
    raise SystemExit(main())
