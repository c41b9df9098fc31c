"""Model benchmark: scoring speed of the packed forest, and streaming speed + AUC against River.

``python -m benchmarks.model [--quick] [--out benchmarks/results/model.json]``

(a) Scoring, one scikit-learn forest (100 trees, psi 256, 8 features) scored by every route on a 200,000-row
    batch and on 1,000-row batches: isostream's numba kernels (1 thread, all cores), scikit-learn
    ``score_samples`` (its default: 1 thread; and a joblib threading backend on all cores), nvForest CPU,
    Treelite GTIL, ONNX Runtime via skl2onnx. Each route's largest score difference to scikit-learn is
    recorded; a route that cannot be installed here is skipped with a note.
(b) Streaming, prequential (score each event/batch with the model as it was, then learn), in file order, on
    each labelled set in ../shared/data/odds and on generated drifting data: isostream (micro-batches of
    1,000, online adaptation) against River ``HalfSpaceTrees`` with its defaults and tuned to the same number
    of trees (features min/max-scaled to [0, 1] from the first 1,000 events, clipped). Plus the batch AUC
    (paper protocol, mean over seeds) against the published iForest figures.

Rows: ``{"name", "value", "unit", "baseline", "baseline_value", "ratio"}`` with ratio = isostream / baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from benchmarks.common import row, write_results
from training.evaluate import evaluate
from training.forest import PackedForest

HERE = Path(__file__).resolve().parent
ODDS = HERE.parent.parent / "shared" / "data" / "odds"
#: iForest AUC: Liu et al. 2008 Table 3 where given, else ADBench 2022 Table D4 (see ../shared/data/README.md)
PUBLISHED = {"shuttle": (1.00, "Liu 2008"), "mammography": (0.86, "Liu 2008"), "annthyroid": (0.82, "Liu 2008"),
             "satellite": (0.71, "Liu 2008"), "pima": (0.67, "Liu 2008"), "ionosphere": (0.85, "Liu 2008"),
             "cardio": (0.9319, "ADBench"), "thyroid": (0.9830, "ADBench"), "pendigits": (0.9476, "ADBench"),
             "landsat": (0.4764, "ADBench")}
ONLINE_IFOREST = {"shuttle": 0.992, "mammography": 0.854, "annthyroid": 0.685, "satellite": 0.651}
BATCH = 1000


def _best(fn: Callable[[], Any], reps: int) -> float:
    """Best wall time of ``reps`` runs (the least disturbed by the other tenants of a shared machine)."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# -- (a) scoring ---------------------------------------------------------------------------------------
def scoring(quick: bool, notes: list[str]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    model = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(rng.normal(size=(20_000, 8)))
    forest = PackedForest.from_sklearn(model)
    big = (rng.normal(size=(200_000, 8)) * 1.5).astype(np.float32)
    small = [big[i:i + BATCH] for i in range(0, 200 * BATCH if not quick else 100 * BATCH, BATCH)]
    reps = 3 if quick else 5
    reference = model.score_samples(big)
    cores = os.cpu_count() or 1
    routes: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] = {}  # name -> (score, numba threads)

    def measure(name: str, score: Callable[[np.ndarray], np.ndarray], threads: int = 1) -> None:
        routes[name] = (score, threads)

    forest.score_samples(big[:10])  # compile / load the cache outside the timings
    measure("isostream 1 thread", forest.score_samples, 1)
    # every batch size on every core: the "cpu-parallel" backend (the default "cpu" keeps small batches on one)
    measure(f"isostream {cores} threads", lambda X: -forest.score(X, parallel_min_rows=1), cores)
    measure("sklearn 1 thread", model.score_samples)
    from joblib import parallel_backend

    def sk_all(X: np.ndarray) -> np.ndarray:
        with parallel_backend("threading", n_jobs=cores):
            return model.score_samples(X)

    measure(f"sklearn {cores} threads", sk_all)
    try:
        import nvforest

        fm = nvforest.load_from_sklearn(model, device="cpu", precision="double")

        def nvf(X: np.ndarray) -> np.ndarray:
            return -np.asarray(fm.predict(X), dtype=np.float64).reshape(-1)

        measure("nvForest CPU", nvf)
    except Exception as err:  # noqa: BLE001 - any import/load failure means: route not available here
        notes.append(f"nvForest CPU skipped: {type(err).__name__}: {err}")
    try:
        import treelite
        import treelite.gtil

        tl = treelite.sklearn.import_model(model)

        def gtil(n_thread: int) -> Callable[[np.ndarray], np.ndarray]:
            return lambda X: -np.asarray(treelite.gtil.predict(tl, X, nthread=n_thread), dtype=np.float64).ravel()

        for n_thread, label in ((1, "1 thread"), (cores, f"{cores} threads")):
            measure(f"Treelite GTIL {label}", gtil(n_thread))
    except Exception as err:  # noqa: BLE001
        notes.append(f"Treelite GTIL skipped: {type(err).__name__}: {err}")
    try:
        import onnxruntime as ort
        from skl2onnx import to_onnx

        onx = to_onnx(model, big[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()

        def onnx(n_thread: int) -> Callable[[np.ndarray], np.ndarray]:
            so = ort.SessionOptions()
            so.intra_op_num_threads = n_thread  # 0 = all cores
            sess = ort.InferenceSession(onx, so, providers=["CPUExecutionProvider"])
            # skl2onnx's "scores" is decision_function = score_samples - offset_
            return lambda X: sess.run(["scores"], {"X": X})[0].ravel().astype(np.float64) + model.offset_

        for n_thread, label in ((1, "1 thread"), (0, f"{cores} threads")):
            measure(f"ONNX Runtime {label}", onnx(n_thread))
    except Exception as err:  # noqa: BLE001
        notes.append(f"ONNX Runtime skipped: {type(err).__name__}: {err}")

    # rounds over all routes, best time per route: the other tenants of a shared machine disturb every
    # route alike instead of whichever happened to run during a busy spell
    best = {name: [np.inf, np.inf] for name in routes}
    diffs = {}
    for name, (score, threads) in routes.items():
        numba.set_num_threads(threads)
        diffs[name] = float(np.max(np.abs(score(big) - reference)))
    for _ in range(reps):
        for name, (score, threads) in routes.items():
            numba.set_num_threads(threads)
            best[name][0] = min(best[name][0], _best(lambda: score(big), 1))  # noqa: B023 - called at once
            best[name][1] = min(best[name][1], _best(lambda: [score(b) for b in small], 1))  # noqa: B023
    numba.set_num_threads(cores)
    n_small = sum(map(len, small))
    rates = {name: (len(big) / b[0], n_small / b[1], diffs[name]) for name, b in best.items()}
    for name, (r_big, r_small, diff) in rates.items():
        print(f"  {name:<24} {r_big:>12,.0f} rows/s (200k) {r_small:>12,.0f} rows/s (1k batches)"
              f"  max|diff| {diff:.1e}", flush=True)

    rows = []
    ours1, oursN = rates["isostream 1 thread"], rates[f"isostream {cores} threads"]
    for idx, size in ((0, "200k"), (1, "1k_batches")):
        rows.append(row(f"score_{size}_1thread", ours1[idx], "rows/s", "sklearn score_samples 1 thread",
                        rates["sklearn 1 thread"][idx]))
        rows.append(row(f"score_{size}_allcores", oursN[idx], "rows/s", f"sklearn score_samples {cores} threads",
                        rates[f"sklearn {cores} threads"][idx]))
        for other in rates:
            if other.startswith(("nvForest", "Treelite", "ONNX")):
                mine = ours1 if other.endswith("1 thread") else oursN
                rows.append(row(f"score_{size}_vs_{other.replace(' ', '_')}", mine[idx], "rows/s", other,
                                rates[other][idx]))
    for name, (_, _, diff) in rates.items():
        rows.append(row(f"max_abs_score_diff_vs_sklearn[{name}]", diff, "abs"))
    return rows


# -- (b) streaming -------------------------------------------------------------------------------------
def drifting_stream(seed: int = 0, n: int = 100_000, d: int = 8) -> pd.DataFrame:
    """Four regimes (shifted and re-scaled, one rotated); 1% anomalies 5-7 sigma off the current regime."""
    rng = np.random.default_rng(seed)
    parts = []
    regimes = [(0.0, 1.0), (4.0, 1.0), (4.0, 2.5), (-3.0, 1.0)]
    rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
    size = n // len(regimes)
    for r, (shift, scale) in enumerate(regimes):
        X = rng.normal(size=(size, d)) * scale + shift
        if r == 3:
            X = X @ rot
        y = np.zeros(size, dtype=np.int8)
        idx = rng.choice(size, size // 100, replace=False)
        cols = rng.integers(0, d, len(idx))
        X[idx, cols] += rng.choice([-1.0, 1.0], len(idx)) * rng.uniform(5, 7, len(idx)) * scale
        y[idx] = 1
        parts.append(pd.DataFrame(X, columns=[f"f{i}" for i in range(d)]).assign(label=y))
    return pd.concat(parts, ignore_index=True)


def river_hst(X: np.ndarray, n_trees: int, height: int, seed: int) -> tuple[np.ndarray, float]:
    """Prequential River HalfSpaceTrees: scores and events/s (score_one + learn_one, dicts prepared outside)."""
    from river.anomaly import HalfSpaceTrees

    warm = X[:BATCH]
    lo, span = warm.min(axis=0), np.ptp(warm, axis=0)
    Xs = np.clip((X - lo) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    names = [f"f{i}" for i in range(X.shape[1])]
    rows = [dict(zip(names, r, strict=True)) for r in Xs.tolist()]
    model = HalfSpaceTrees(n_trees=n_trees, height=height, seed=seed)
    scores = np.empty(len(rows))
    t = time.perf_counter()
    for i, r in enumerate(rows):
        scores[i] = model.score_one(r)
        model.learn_one(r)
    return scores, len(rows) / (time.perf_counter() - t)


def streaming(quick: bool) -> list[dict[str, Any]]:
    sets: dict[str, pd.DataFrame] = {}
    if ODDS.is_dir():
        for path in sorted(ODDS.glob("*.parquet")):
            sets[path.stem] = pd.read_parquet(path)
    else:
        print(f"  {ODDS} missing: only generated data", flush=True)
    sets["drifting(generated)"] = drifting_stream()
    # AUC of either method moves by a few hundredths from seed to seed (HST more): compare means over seeds
    seeds = [0, 1, 2]
    tuned_seeds = [0] if quick else [0, 1, 2]  # 100-tree HST runs at ~2k events/s
    evaluate(sets["drifting(generated)"].iloc[:3000], "label", "stream")  # compile outside the timings
    rows: list[dict[str, Any]] = []
    total = {"rows": 0, "iso_s": 0.0, "hst_s": 0.0}
    for name, frame in sets.items():
        runs = [evaluate(frame, "label", "stream", batch_size=BATCH, seed=s) for s in seeds]
        auc = float(np.mean([r["roc_auc"] for r in runs]))
        eps = float(np.median([r["events_per_s"] for r in runs]))
        X = frame.drop(columns="label").to_numpy(dtype=np.float64)
        y = frame["label"].to_numpy()
        default = [river_hst(X, 10, 8, seed=s) for s in seeds]
        tuned = [river_hst(X, 100, 8, seed=s) for s in tuned_seeds]
        auc_def = float(np.mean([roc_auc_score(y, sc) for sc, _ in default]))
        auc_tun = float(np.mean([roc_auc_score(y, sc) for sc, _ in tuned]))
        eps_def = float(np.median([e for _, e in default]))
        eps_tun = float(np.median([e for _, e in tuned]))
        total["rows"] += len(X)
        total["iso_s"] += len(X) / eps
        total["hst_s"] += len(X) / eps_def
        print(f"  {name:<20} isostream AUC {auc:.4f} {eps:>9,.0f} ev/s | HST default AUC {auc_def:.4f} "
              f"{eps_def:>7,.0f} ev/s | HST 100 trees AUC {auc_tun:.4f} {eps_tun:>6,.0f} ev/s", flush=True)
        extra = {"seeds": len(seeds), "baseline_seeds": len(seeds)}
        rows += [
            row(f"stream_{name}_events_per_s", eps, "events/s", "River HalfSpaceTrees default", eps_def),
            row(f"stream_{name}_events_per_s_vs_hst100", eps, "events/s", "River HalfSpaceTrees 100 trees", eps_tun),
            row(f"stream_{name}_auc", auc, "roc_auc", "River HalfSpaceTrees default", auc_def, **extra),
            row(f"stream_{name}_auc_vs_hst100", auc, "roc_auc", "River HalfSpaceTrees 100 trees", auc_tun,
                seeds=len(seeds), baseline_seeds=len(tuned_seeds)),
        ]
        if name in ONLINE_IFOREST:
            rows.append(row(f"stream_{name}_auc_vs_online_iforest", auc, "roc_auc",
                            "Online-iForest (Leveni et al. 2024)", ONLINE_IFOREST[name]))
    rows.append(row("stream_all_events_per_s", total["rows"] / total["iso_s"], "events/s",
                    "River HalfSpaceTrees default", total["rows"] / total["hst_s"]))
    return rows


def batch_auc(quick: bool) -> list[dict[str, Any]]:
    rows = []
    seeds = range(3 if quick else 10)
    for name, (published, source) in PUBLISHED.items():
        path = ODDS / f"{name}.parquet"
        if not path.is_file():
            continue
        frame = pd.read_parquet(path)
        aucs = [evaluate(frame, "label", "batch", seed=s)["roc_auc"] for s in seeds]
        print(f"  {name:<12} batch AUC {np.mean(aucs):.4f} ± {np.std(aucs):.4f} (published {published}, {source})",
              flush=True)
        rows.append(row(f"batch_{name}_auc", float(np.mean(aucs)), "roc_auc", f"iForest {source}", published,
                        std=float(np.std(aucs)), seeds=len(seeds)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, 1 seed for 100-tree HST, 3 for batch AUC (< 5 minutes)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "model.json", help="JSON results file")
    args = parser.parse_args(argv)
    notes: list[str] = []
    started = time.perf_counter()
    print("(a) scoring, 100 trees, psi 256, 8 features", flush=True)
    rows = scoring(args.quick, notes)
    print("(b) streaming, prequential, micro-batches of 1,000 (River: event by event)", flush=True)
    rows += streaming(args.quick)
    print("(c) batch AUC, paper protocol", flush=True)
    rows += batch_auc(args.quick)
    for note in notes:
        print(f"  note: {note}", flush=True)
    settings = {"quick": args.quick, "trees": 100, "max_samples": 256, "micro_batch": BATCH,
                "numba_threads": numba.get_num_threads(), "notes": notes,
                "wall_s": time.perf_counter() - started}
    path = write_results(args.out, "model", rows, settings)
    print(f"wrote {len(rows)} rows to {path} in {settings['wall_s']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
