"""Detection quality through the real engine on the real broker, beside simple baselines on the same events.

``python -m benchmarks detect [--quick] [--out benchmarks/results/detect.json] [--json]``

Every engine figure is of events produced to the embedded tansu broker, drained by ``engine.runtime.Runtime``
on a LocalCluster (2 workers) and read back from its Parquet lake (``streams.lake.read_lake``), joined to the
labels by (partition, offset) (``benchmarks.detection_engine.engine_scores``). Baselines score exactly those
events in the same per-key order (``benchmarks._detect_baselines``): the per-key robust z-score over the
key's previous 32 events (alert at z > 4) and River ``HalfSpaceTrees`` (per-key min-max scaling, one global
model).

a. **demo**: ``StationAlarmGenerator`` events (its ``label`` column kept aside) with ``configs/demo.yaml``
   (``--demo-config``): ROC AUC, average precision, and precision / recall / F1 of the engine's own alerts
   (the lake's ``is_anomaly``), on all events and with each key's first 32 events (its per-key warm-up)
   excluded; the table shows the latter.
b. **nab**: the 58 NAB series as one stream keyed by series name (event time = the file's timestamp,
   series interleaved by relative position, each in file order), scored with ``configs/nab.yaml``
   (``--nab-config``): mean per-series ROC AUC (label = inside an anomaly window, probationary rows left
   out, series without windows skipped), and the NAB standard-profile score (``training.nab``): with the
   one corpus-wide threshold on the score that maximises it (how NAB's published figures are made) and of
   the detector's own alerts (engine ``is_anomaly``; z > 4), printed beside published detectors' scores.
c. **odds**: each ODDS set through ``training.evaluate.evaluate`` in ``stream`` (prequential micro-batches,
   file order) and ``batch`` mode, and River HST (one min-max scaler, one model) in the same order: ROC AUC,
   average precision, events/s; ADBench's published batch iForest AUC beside them.

A scenario whose data is absent (``../shared/data``, or ``$ISOSTREAM_DATA``) is skipped, and so is the
engine part of a scenario whose config the engine rejects: the JSON rows say ``skipped`` and why.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._detect_baselines import alert_quality, half_space_trees, rank_in_key, ranking, robust_z
from benchmarks._detect_data import (
    DEMO_CONFIG,
    NAB_CONFIG,
    MissingData,
    cluster_config,
    load_nab,
    odds_sets,
    per_series,
    run_config,
)
from benchmarks.common import row, write_results
from benchmarks.detection_engine import engine_scores, labelled_stream, produce_in_order
from engine.cluster import dask_client
from engine.config import ConfigError
from streams.broker import EmbeddedBroker
from training.evaluate import evaluate
from training.nab import STANDARD, corpus_score, optimize_threshold

HERE = Path(__file__).resolve().parent
WARMUP_EVENTS = 32
Z_ALERT = 4.0
#: NAB scoreboard (numenta/NAB README, standard profile, NAB v1.1)
NAB_PUBLISHED = {"AWS Random Cut Forest": 51.7, "Numenta HTM": 70.5, "CAD OSE": 69.9}
#: batch iForest ROC AUC, ADBench 2022 Table D4 (copied into ../shared/data/README.md)
ODDS_ADBENCH_IFOREST = {"shuttle": 0.9956, "mammography": 0.8639, "annthyroid": 0.8201, "satellite": 0.7043,
                        "cardio": 0.9319, "thyroid": 0.9830, "pendigits": 0.9476, "pima": 0.7287,
                        "ionosphere": 0.8450, "landsat": 0.4764}
ENGINE = "engine (isolation forest)"
ZSCORE = f"robust z (32 prev, alert z>{Z_ALERT:g})"
HST = "river HalfSpaceTrees"
RANDOM = "uniform random scores"
#: NAB's own random detector on its scoreboard: a check that this scorer reproduces NAB's scale
NAB_PUBLISHED_RANDOM = 11.0
SHORT = {ENGINE: "engine", ZSCORE: "robust z>4", HST: "HST", RANDOM: "random (NAB: 11.0)",
         "isostream evaluate --mode stream": "evaluate stream", "isostream evaluate --mode batch": "evaluate batch"}


@dataclass
class Bench:
    """What every engine scenario shares: the broker, one LocalCluster, a scratch folder, a log."""

    broker: EmbeddedBroker
    client: Any
    workdir: Path
    workers: int
    partitions: int
    log: Callable[[str], None]


def _skipped(scenario: str, method: str, reason: str, **extra: Any) -> dict[str, Any]:
    return row(f"{scenario} / {method}", None, "skipped", scenario=scenario, method=method, skipped=True,
               reason=reason, **extra)


def _mean(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Key-wise mean of numeric metrics over seeds (None stays None)."""
    out: dict[str, Any] = {}
    for k in dicts[0]:
        vals = [d[k] for d in dicts]
        if all(isinstance(v, dict) for v in vals):
            out[k] = _mean(vals)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            out[k] = float(np.mean(vals))
        else:
            out[k] = vals[0]
    return out


# -- (a) the demo generator ----------------------------------------------------------------------------------
def _demo_metrics(y: np.ndarray, score: np.ndarray, flags: np.ndarray | None, keep: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part, mask in (("all_events", np.ones(len(y), dtype=bool)), ("after_warmup", keep)):
        m = ranking(y[mask], score[mask])
        if flags is not None:
            m["alerts"] = alert_quality(y[mask], flags[mask])
        out[part] = m
    return out


def scenario_demo(b: Bench, config: Path, events: int, seeds: list[int]) -> list[dict[str, Any]]:
    """(a): per seed, a labelled generator stream through the engine and the baselines; means over seeds."""
    per_method: dict[str, list[dict[str, Any]]] = {ENGINE: [], ZSCORE: [], HST: []}
    facts: list[dict[str, Any]] = []
    positives = []
    for seed in seeds:
        stream = labelled_stream(events, seed, b.partitions)
        topic = f"detect-demo-{seed}"
        b.broker.create_topic(topic, b.partitions)
        produce_in_order(b.broker.bootstrap, topic, stream, b.partitions)
        b.log(f"demo seed {seed}: {events:,} events produced to {topic}; engine running ({config.name})")
        cfg = run_config(config, b.broker.bootstrap, topic, b.workdir, f"demo-{seed}", b.workers,
                         overrides={"model": {"seed": seed}})
        score, flags, run_facts = engine_scores(cfg, stream, b.client)
        facts.append(run_facts)
        y = stream["label"].to_numpy()
        positives.append(int(y.sum()))
        keys = stream["key"].tolist()
        keep = rank_in_key(keys) >= WARMUP_EVENTS
        b.log(f"demo seed {seed}: engine done ({run_facts['steady_events_per_s']:,} events/s steady); baselines")
        z = robust_z(keys, stream["value"].to_numpy())
        hst, hst_s = half_space_trees(keys, stream[["value"]], seed=seed)
        per_method[ENGINE].append(_demo_metrics(y, score, flags, keep) | {"events_per_s": run_facts["whole_run_events_per_s"]})
        per_method[ZSCORE].append(_demo_metrics(y, z, z > Z_ALERT, keep))
        per_method[HST].append(_demo_metrics(y, hst, None, keep) | {"events_per_s": events / hst_s})
    rows = []
    for method, runs in per_method.items():
        m = _mean(runs)
        rows.append(row(f"demo / {method}", m["after_warmup"]["roc_auc"], "roc_auc (after per-key warm-up)",
                        scenario="demo", method=method, metrics=m, per_seed=runs, seeds=seeds, events=events,
                        positives=positives, warmup_excluded=f"each key's first {WARMUP_EVENTS} events",
                        **({"engine": facts, "config": str(config)} if method == ENGINE else {})))
    return rows


# -- (b) NAB ----------------------------------------------------------------------------------------------
def _nab_metrics(corpus: Any, score: np.ndarray, flags: np.ndarray | None) -> dict[str, Any]:
    scores = per_series(corpus, score)
    aucs = {}
    for lab, s in zip(corpus.labels, scores, strict=True):
        y = lab.in_window()[lab.probation:]
        if y.any() and not y.all():
            aucs[lab.name] = ranking(y, s[lab.probation:])["roc_auc"]
    swept = optimize_threshold(corpus.labels, scores, STANDARD)
    out: dict[str, Any] = {"mean_series_roc_auc": float(np.mean(list(aucs.values()))), "series_with_auc": len(aucs),
                           "series_roc_auc": aucs, "nab_standard_swept": swept.to_dict(),
                           "nab_standard_swept_per_series": swept.per_series}
    if flags is not None:
        out["nab_standard_alerts"] = corpus_score(corpus.labels, per_series(corpus, flags), STANDARD).to_dict()
    return out


def scenario_nab(b: Bench, config: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """(b): the NAB corpus as one keyed stream through the engine (one run per model seed) and the baselines."""
    corpus = load_nab(b.partitions)
    stream = corpus.stream
    keys = stream["series"].tolist()
    common = {"scenario": "nab", "events": len(stream), "series": len(corpus.names),
              "windows": sum(len(lab.windows) for lab in corpus.labels), "point_labels": corpus.point_labels,
              "point_labels_outside_windows": list(corpus.points_outside), "published_standard": NAB_PUBLISHED}
    rows = []
    try:
        run_config(config, b.broker.bootstrap, "probe", b.workdir, "nab-probe", b.workers)
    except ConfigError as err:
        reason = f"the engine rejects {config}: {err}"
        b.log(f"nab: engine skipped: {reason}")
        rows.append(_skipped("nab", ENGINE, reason, config=str(config)))
    else:
        topic = "detect-nab"
        b.broker.create_topic(topic, b.partitions)
        produce_in_order(b.broker.bootstrap, topic, stream, b.partitions)
        runs, facts = [], []
        for seed in seeds:
            b.log(f"nab: {len(stream):,} events of {len(corpus.names)} series on {topic}; engine run, model seed "
                  f"{seed} ({config})")
            cfg = run_config(config, b.broker.bootstrap, topic, b.workdir, f"nab-{seed}", b.workers,
                             overrides={"model": {"seed": seed}})
            score, flags, run_facts = engine_scores(cfg, stream, b.client)
            runs.append(_nab_metrics(corpus, score, flags))
            facts.append(run_facts | {"features": cfg.features.model_dump(mode="json")})
        m = _mean(runs)
        rows.append(row(f"nab / {ENGINE}", m["nab_standard_swept"]["normalized"], "NAB standard (threshold swept)",
                        method=ENGINE, metrics=m, per_seed=runs if len(runs) > 1 else None, seeds=seeds,
                        engine=facts, config=str(config), **common))
    b.log("nab: baselines")
    z = robust_z(keys, stream["value"].to_numpy())
    rows.append(row(f"nab / {ZSCORE}", None, "NAB standard (threshold swept)", method=ZSCORE,
                    metrics=_nab_metrics(corpus, z, z > Z_ALERT), **common))
    hst, hst_s = half_space_trees(keys, stream[["value"]], seed=0)
    rows.append(row(f"nab / {HST}", None, "NAB standard (threshold swept)", method=HST,
                    metrics=_nab_metrics(corpus, hst, None) | {"events_per_s": len(stream) / hst_s}, **common))
    noise = np.random.default_rng(0).random(len(stream))
    rows.append(row(f"nab / {RANDOM}", None, "NAB standard (threshold swept)", method=RANDOM,
                    metrics=_nab_metrics(corpus, noise, None), published_random=NAB_PUBLISHED_RANDOM, **common))
    for r in rows[-3:]:
        r["value"] = r["metrics"]["nab_standard_swept"]["normalized"]
    return rows


# -- (c) ODDS -----------------------------------------------------------------------------------------------
def scenario_odds(log: Callable[[str], None], seeds: list[int]) -> list[dict[str, Any]]:
    """(c): every ODDS set through evaluate (stream and batch) and River HST, in file order."""
    sets = odds_sets()
    rng = np.random.default_rng(0)
    warm = pd.DataFrame(rng.normal(size=(2000, 2)), columns=["a", "b"]).assign(label=[1] + [0] * 1999)
    evaluate(warm, "label", mode="stream", n_trees=4, max_samples=64)  # compile first: events/s is the model's
    rows = []
    for path in sets:
        name = path.stem
        frame = pd.read_parquet(path)
        y = frame["label"].to_numpy()
        ref = {"adbench_batch_iforest_roc_auc": ODDS_ADBENCH_IFOREST.get(name)}
        for mode in ("stream", "batch"):
            res = [evaluate(frame, "label", mode=mode, seed=s) for s in seeds]
            m = {"roc_auc": float(np.mean([r["roc_auc"] for r in res])),
                 "average_precision": float(np.mean([r["average_precision"] for r in res])),
                 "events_per_s": float(np.mean([r["events_per_s"] for r in res])),
                 "alerts": {"precision": float(np.mean([r["precision_at_threshold"] for r in res])),
                            "recall": float(np.mean([r["recall_at_threshold"] for r in res]))}}
            m["alerts"]["f1"] = (2 * m["alerts"]["precision"] * m["alerts"]["recall"]
                                 / max(m["alerts"]["precision"] + m["alerts"]["recall"], 1e-12))
            rows.append(row(f"odds/{name} / isostream {mode}", m["roc_auc"], "roc_auc", "ADBench batch iForest",
                            ref["adbench_batch_iforest_roc_auc"], scenario=f"odds/{name}",
                            method=f"isostream evaluate --mode {mode}", metrics=m, seeds=seeds, rows=len(frame),
                            **ref))
        hst = [half_space_trees(None, frame.drop(columns="label"), seed=s) for s in seeds]
        m = {**_mean([ranking(y, s) for s, _ in hst]), "events_per_s": float(np.mean([len(y) / t for _, t in hst]))}
        rows.append(row(f"odds/{name} / {HST}", m["roc_auc"], "roc_auc", "ADBench batch iForest",
                        ref["adbench_batch_iforest_roc_auc"], scenario=f"odds/{name}", method=HST, metrics=m,
                        seeds=seeds, rows=len(frame), **ref))
        log(f"odds {name}: AUC stream {rows[-3]['value']:.3f} batch {rows[-2]['value']:.3f} "
            f"HST {rows[-1]['value']:.3f}")
    return rows


# -- the table ----------------------------------------------------------------------------------------------
def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict[str, Any]]) -> Any:
    """One compact rich table: a line per scenario x method."""
    from rich.table import Table

    t = Table(title="detection quality (demo: after per-key warm-up; nab: standard profile)", title_justify="left")
    for col in ("scenario", "method", "ROC AUC", "AP", "alert P", "alert R", "alert F1", "NAB swept",
                "NAB alerts", "events/s", "reference"):
        t.add_column(col, justify="left" if col in ("scenario", "method", "reference") else "right")
    for r in rows:
        if r.get("skipped"):
            t.add_row(r["scenario"], SHORT.get(r["method"], r["method"]), *["-"] * 8, f"skipped: {r['reason'][:60]}")
            continue
        m = r["metrics"]
        ref = ""
        if r["scenario"] == "demo":
            m = {**m["after_warmup"], "events_per_s": m.get("events_per_s")}
        if r["scenario"] == "nab":
            auc, ap = m["mean_series_roc_auc"], None
            ref = "AUC per-series mean; NAB: RCF 51.7 HTM 70.5 CAD 69.9"
        else:
            auc, ap = m["roc_auc"], m["average_precision"]
            if r.get("adbench_batch_iforest_roc_auc") is not None:
                ref = f"ADBench iForest {r['adbench_batch_iforest_roc_auc']:.3f}"
        al = m.get("alerts") or {}
        t.add_row(r["scenario"], SHORT.get(r["method"], r["method"]), _fmt(auc), _fmt(ap), _fmt(al.get("precision")), _fmt(al.get("recall")),
                  _fmt(al.get("f1")), _fmt(m.get("nab_standard_swept", {}).get("normalized"), ".1f"),
                  _fmt(m.get("nab_standard_alerts", {}).get("normalized"), ".1f"),
                  _fmt(m.get("events_per_s"), ",.0f"), ref)
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.detect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="demo 60k events x 1 seed, NAB 1 engine run, ODDS 1 seed (under 10 minutes on 2 cores)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "detect.json", help="results JSON")
    p.add_argument("--json", action="store_true", help="also print the results JSON to stdout")
    p.add_argument("--scenarios", nargs="+", choices=("demo", "nab", "odds"), default=["demo", "nab", "odds"])
    p.add_argument("--demo-config", type=Path, default=DEMO_CONFIG, help="engine config of scenario a")
    p.add_argument("--nab-config", type=Path, default=NAB_CONFIG, help="engine config of scenario b")
    p.add_argument("--events", type=int, default=None, help="demo events per seed (60k quick, 200k full)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    logging.getLogger("distributed").setLevel(logging.ERROR)
    # stdout carries the JSON with --json: progress and the table go to stderr then
    console = Console(stderr=args.json, width=None if sys.stderr.isatty() else 150)
    events = args.events or (60_000 if args.quick else 200_000)
    demo_seeds = [1] if args.quick else [1, 2, 3]
    nab_seeds = [0] if args.quick else [0, 1]
    odds_seeds = [0] if args.quick else [0, 1, 2]
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("detect", total=len(args.scenarios))

        def log(msg: str) -> None:
            progress.console.print(f"[detect {time.strftime('%H:%M:%S')}] {msg}")
            progress.update(task, description=msg[:70])

        engine_scenarios = [s for s in args.scenarios if s in ("demo", "nab")]
        with tempfile.TemporaryDirectory(prefix="isostream-detect-") as tmp:
            if engine_scenarios:
                with EmbeddedBroker() as broker:
                    with dask_client(cluster_config(args.workers)) as client:
                        b = Bench(broker, client, Path(tmp), args.workers, args.partitions, log)
                        for name in engine_scenarios:
                            t0 = time.monotonic()
                            try:
                                if name == "demo":
                                    rows += scenario_demo(b, args.demo_config, events, demo_seeds)
                                else:
                                    rows += scenario_nab(b, args.nab_config, nab_seeds)
                            except MissingData as err:
                                log(f"{name}: skipped: {err}")
                                rows.append(_skipped(name, "all", str(err)))
                            except ConfigError as err:
                                log(f"{name}: skipped: the engine rejects {args.demo_config}: {err}")
                                rows.append(_skipped(name, ENGINE, f"the engine rejects {args.demo_config}: {err}"))
                            seconds[name] = round(time.monotonic() - t0, 1)
                            progress.advance(task)
            if "odds" in args.scenarios:
                t0 = time.monotonic()
                try:
                    rows += scenario_odds(log, odds_seeds)
                except MissingData as err:
                    log(f"odds: skipped: {err}")
                    rows.append(_skipped("odds", "all", str(err)))
                seconds["odds"] = round(time.monotonic() - t0, 1)
                progress.advance(task)
    settings = {"quick": args.quick, "scenarios": args.scenarios, "demo_events_per_seed": events,
                "demo_seeds": demo_seeds, "nab_model_seeds": nab_seeds, "odds_seeds": odds_seeds,
                "demo_config": str(args.demo_config), "nab_config": str(args.nab_config),
                "partitions": args.partitions, "workers": args.workers, "warmup_events_excluded": WARMUP_EVENTS,
                "z_alert": Z_ALERT, "hst": "river 0.26.1 HalfSpaceTrees defaults; MinMaxScaler per key (demo, nab) "
                                          "or one (odds), learnt before transform; one global model",
                "nab_profile": STANDARD.__dict__, "nab_published_standard": NAB_PUBLISHED,
                "seconds_per_scenario": seconds, "seconds": round(time.monotonic() - started, 1),
                "load_average_1m_end": round(os.getloadavg()[0], 2)}
    out = write_results(args.out, "detect", rows, settings)
    console.print(table(rows))
    console.print(f"wrote {out} in {settings['seconds']:.0f} s")
    if args.json:
        sys.stdout.write(json.dumps(json.loads(out.read_text()), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
