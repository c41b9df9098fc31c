"""Detection quality and speed on labelled data: ``isostream evaluate --data FILE --label COLUMN``.

* ``batch`` — the isolation-forest paper's protocol: fit on all rows, score the same rows.
* ``stream`` — prequential in arrival order: the first micro-batch fits the initial model (compiled builder;
  the batch is then scored by it), every later batch is scored by the model as it was and then learnt from
  (online adaptation on). events/s covers everything from the first event to the last score (the CLI
  compiles the kernels before it starts the clock).

Reports ROC AUC, average precision, the alert rate / precision / recall of the thresholded flags, events/s
and wall time; the label column holds 1 for an anomaly. Every numeric column except the label is a feature.

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> frame = pd.DataFrame(rng.normal(size=(3000, 3)), columns=["a", "b", "c"])
>>> frame["label"] = 0
>>> frame.loc[:29, ["a", "b"]] += 6.0
>>> frame.loc[:29, "label"] = 1
>>> evaluate(frame, "label", mode="batch", n_trees=50)["roc_auc"] > 0.95
True
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from training.detector import Detector
from training.gpu import BACKENDS, BackendUnavailable
from training.online import OnlineSettings


class EvaluateError(ValueError):
    """The data or the options cannot be evaluated; the message says why."""


def load_frame(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (chosen by extension)."""
    p = Path(path)
    if not p.is_file():
        msg = f"evaluate: data file {p} does not exist"
        raise EvaluateError(msg)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if suffix in (".csv", ".txt") or p.name.lower().endswith(".csv.gz"):
        return pd.read_csv(p)
    msg = f"evaluate: {p.name}: unknown file type {suffix!r}; use .csv or .parquet"
    raise EvaluateError(msg)


def _split(frame: pd.DataFrame, label: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    if label not in frame.columns:
        msg = f"evaluate: label column {label!r} not found; columns are {list(frame.columns)}"
        raise EvaluateError(msg)
    y = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        msg = f"evaluate: label column {label!r} must hold only 0 (normal) and 1 (anomaly)"
        raise EvaluateError(msg)
    if y.min() == y.max():
        msg = f"evaluate: label column {label!r} holds one class only; AUC needs both"
        raise EvaluateError(msg)
    rest = frame.drop(columns=[label])
    numeric = rest.select_dtypes(include=["number", "bool"])
    skipped = [str(c) for c in rest.columns if c not in numeric.columns]
    if numeric.shape[1] == 0:
        msg = f"evaluate: no numeric feature columns besides {label!r}"
        raise EvaluateError(msg)
    return numeric.to_numpy(dtype=np.float64), y.astype(np.int8), [str(c) for c in numeric.columns], skipped


def evaluate(frame: pd.DataFrame, label: str = "label", mode: str = "batch", *, n_trees: int = 100,
             max_samples: int = 256, contamination: float = 0.01, batch_size: int = 1000, seed: int = 0,
             online: OnlineSettings | None = None, progress: bool = False,
             backend: str = "cpu-parallel") -> dict[str, Any]:
    """Evaluate the detector on ``frame`` (see the module docstring); returns the metrics as a dict.

    ``backend`` scores (see :mod:`training.gpu`); the default uses every core for every micro-batch, right for
    an evaluation that has the machine to itself.
    """
    if mode not in ("batch", "stream"):
        msg = f"evaluate: mode must be 'batch' or 'stream', got {mode!r}"
        raise EvaluateError(msg)
    if batch_size < 2:
        msg = f"evaluate: batch_size must be >= 2, got {batch_size}"
        raise EvaluateError(msg)
    X, y, features, skipped = _split(frame, label)
    started = time.perf_counter()
    if mode == "batch":
        det = Detector.fit(X, features, n_trees=n_trees, max_samples=max_samples, contamination=contamination,
                           seed=seed, online=None)
        det.use_backend(backend)
        fitted = time.perf_counter()
        out = det.score_batch(X)
        scores, flags, drifts = out.score, out.is_anomaly, 0
        timing = {"fit_s": fitted - started, "score_s": time.perf_counter() - fitted}
    else:
        settings = online if online is not None else OnlineSettings()
        # the first micro-batch seeds the model with the same compiled builder that renews it later
        det = Detector.fit(X[:batch_size], features, n_trees=n_trees, max_samples=max_samples,
                           contamination=contamination, seed=seed, online=settings, builder="numba")
        det.use_backend(backend)
        scores, flags = np.empty(len(X)), np.zeros(len(X), dtype=bool)
        drifts = 0
        bar = _progress(len(X), progress)
        for lo in range(0, len(X), batch_size):
            out = det.score_batch(X[lo:lo + batch_size])
            scores[lo:lo + len(out.score)] = out.score
            flags[lo:lo + len(out.score)] = out.is_anomaly
            drifts += out.drift
            if bar is not None:
                bar.update(len(out.score))
        if bar is not None:
            bar.close()
        timing = {}
    wall = time.perf_counter() - started
    hits = int((flags & (y == 1)).sum())
    return {
        "mode": mode, "rows": int(len(X)), "features": len(features), "anomalies": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, scores)), "average_precision": float(average_precision_score(y, scores)),
        "alert_rate": float(flags.mean()), "precision_at_threshold": hits / max(int(flags.sum()), 1),
        "recall_at_threshold": hits / max(int(y.sum()), 1), "events_per_s": len(X) / wall if wall > 0 else math.inf,
        "wall_s": wall, **timing, "drift_detections": int(drifts), "model_version": det.version,
        "skipped_columns": skipped, "backend": det.scorer.name,
        "params": {"n_trees": n_trees, "max_samples": max_samples, "contamination": contamination,
                   "batch_size": batch_size if mode == "stream" else None, "seed": seed,
                   "online": (online or OnlineSettings()).to_dict() if mode == "stream" else None},
    }


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, desc="prequential", file=sys.stderr, leave=False)


def _warm_up() -> None:
    """Compile (or load from numba's cache) every kernel once, so events/s measures the model, not the JIT."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(600, 2)), columns=["a", "b"]).assign(label=[1] + [0] * 599)
    evaluate(frame, "label", "stream", n_trees=4, max_samples=64, batch_size=300)
    Detector.fit(frame[["a", "b"]].to_numpy(), ["a", "b"], n_trees=2, max_samples=64, online=None).explain(
        np.zeros((1, 2)))


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Options of ``isostream evaluate``."""
    p.add_argument("--data", required=True, type=Path, help="labelled CSV or Parquet file")
    p.add_argument("--label", default="label", help="label column: 1 = anomaly, 0 = normal (default: label)")
    p.add_argument("--mode", choices=("batch", "stream"), default="batch",
                   help="batch: fit on all rows and score them; stream: prequential micro-batches (default: batch)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the metrics to this JSON file")
    p.add_argument("--batch-size", type=int, default=1000, help="stream mode micro-batch size (default: 1000)")
    p.add_argument("--n-trees", type=int, default=100, help="trees in the forest (default: 100)")
    p.add_argument("--max-samples", type=int, default=256, help="subsample size psi per tree (default: 256)")
    p.add_argument("--contamination", type=float, default=0.01,
                   help="target alert rate for the threshold (default: 0.01)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--window", type=int, default=OnlineSettings.window, help="stream: recent-data window rows")
    p.add_argument("--window-kind", choices=("sliding", "reservoir"), default=OnlineSettings.window_kind,
                   help="stream: sliding window or uniform reservoir")
    p.add_argument("--replace-fraction", type=float, default=OnlineSettings.replace_fraction,
                   help="stream: share of trees renewed after each micro-batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar in stream mode")
    p.add_argument("--backend", choices=BACKENDS, default="cpu-parallel",
                   help="scoring backend (default: cpu-parallel, every core for every batch)")


def run(args: argparse.Namespace) -> int:
    """Run ``isostream evaluate``; exit code 0 on success, 2 when the data or options are unusable."""
    try:
        frame = load_frame(args.data)
        _warm_up()
        online = OnlineSettings(window=args.window, window_kind=args.window_kind,
                                replace_fraction=args.replace_fraction)
        result = evaluate(frame, args.label, args.mode, n_trees=args.n_trees, max_samples=args.max_samples,
                          contamination=args.contamination, batch_size=args.batch_size, seed=args.seed,
                          online=online, progress=not args.no_progress, backend=args.backend)
    except BackendUnavailable as err:  # e.g. --backend cupy without a GPU: says what is missing
        print(str(err), file=sys.stderr)
        return 2
    except ValueError as err:  # EvaluateError, OnlineError, ForestError: bad data or options (message names it)
        print(str(err), file=sys.stderr)
        return 2
    result["data"] = str(args.data)
    print(f"{args.data} ({result['mode']}, {result['rows']:,} rows, {result['features']} features, "
          f"{result['anomalies']:,} anomalies)")
    for key, fmt in (("roc_auc", ".4f"), ("average_precision", ".4f"), ("alert_rate", ".4f"),
                     ("precision_at_threshold", ".4f"), ("recall_at_threshold", ".4f"), ("events_per_s", ",.0f"),
                     ("wall_s", ".3f")):
        print(f"  {key:<24}{result[key]:{fmt}}")
    if result["skipped_columns"]:
        print(f"  skipped non-numeric columns: {result['skipped_columns']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m training.evaluate``: the same command without the engine's CLI."""
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
