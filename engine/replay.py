"""``isostream replay``: re-score stored days through the stream's feature and scoring code, into another lake.

One Dask task per Kafka partition walks that partition's files day after day in offset order through one
:class:`training.features.FeatureBuilder` (its per-key state carries across the days of the range, starting
cold on the first), scores with one fixed version (no online adaptation: a replay is reproducible) and writes
the rows, with the same columns as the live lake, under the output prefix (``<lake>/_replay/<version>`` by
default; names starting with ``_`` are outside the live lake's ``date=`` folders). A key's first
``features.warmup_events`` events of the range are warm-up, as for a new key live, and raise no alert.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import Config
from engine.outputs import lake_frame


class ReplayError(RuntimeError):
    """The replay cannot run: no data in the range, an unknown version, a bad output prefix."""


def replay_partition(lake: str, days: list[list[str]], partition: int, cfg: Config, detector: Any,
                     out: str) -> dict[str, int]:
    """Re-score one partition's files of every day in order; returns its counts."""
    import numba

    from streams.lake import LakeWriter
    from streams.lake_days import read_partition
    from training.features import FeatureBuilder

    numba.set_num_threads(1)  # a task per partition is the parallelism (see training.batch.score_partition)
    fields = [f.name for f in cfg.schema.fields]
    builder = FeatureBuilder(cfg.features, cfg.schema)
    writer = LakeWriter(out, time_field=cfg.schema.event_time.field, tz=cfg.lake.timezone)
    rows = alerts = 0
    for path in (p for paths in days for p in paths):  # file by file: memory holds one file's frame
        frame = read_partition(lake, [path]).to_pandas()
        feats = builder.compute(frame)
        score = detector.score(feats.X)
        flagged = (score > detector.threshold) & feats.warm
        frame = frame.rename(columns={"kafka_partition": "_partition", "kafka_offset": "_offset",
                                      "kafka_timestamp_ms": "_kafka_ts"})
        writer.write(lake_frame(frame, [f for f in fields if f in frame.columns], score,
                                np.full(len(frame), detector.threshold), flagged, detector.version))
        rows += len(frame)
        alerts += int(flagged.sum())
    return {"partition": partition, "rows": rows, "anomalies": alerts}


def run_replay(cfg: Config, start: dt.date, end: dt.date, client: Any, *, version: str | None = None,
               out: Path | None = None, progress: Any = None) -> dict[str, Any]:
    """Replay ``start``..``end`` (inclusive) with ``version`` (default: the live one) on ``client``'s cluster."""
    from distributed import as_completed

    from streams.lake import LakeError
    from streams.lake_days import read_day
    from training.current import read_current
    from training.detector import Detector

    if start > end:
        msg = f"replay: --from {start} is after --to {end}"
        raise ReplayError(msg)
    if version is None:
        doc = read_current(cfg.registry)
        if doc is None:
            msg = f"replay: the registry {cfg.registry} has no live version; name one with --model"
            raise ReplayError(msg)
        version = str(doc["version"])
    try:
        detector = Detector.load(cfg.registry / version)
    except Exception as err:
        msg = f"replay: cannot load model {version!r} from {cfg.registry}: {err}"
        raise ReplayError(msg) from None
    detector.use_backend("cpu")
    target = out if out is not None else cfg.lake.path / "_replay" / version
    dates = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    listed = {}
    for d in dates:
        try:
            listed[d] = read_day(cfg.lake_url, d)
        except LakeError:
            continue  # a day without data in the range: nothing to replay for it
    if not listed:
        msg = f"replay: the lake {cfg.lake.path} has no data from {start} to {end}"
        raise ReplayError(msg)
    partitions = sorted({p for day in listed.values() for p in day.partitions})
    t0 = time.perf_counter()
    model = client.scatter(detector, broadcast=True)
    futures = [client.submit(replay_partition, cfg.lake_url,
                             [listed[d].partitions.get(p, []) for d in sorted(listed)], p, cfg, model, str(target),
                             key=f"replay-{version}-{start}-{end}-p{p}-{time.time_ns()}") for p in partitions]
    done = 0
    for _ in as_completed(futures):
        done += 1
        if progress is not None:
            progress(done, len(futures))
    parts = [f.result() for f in futures]
    seconds = time.perf_counter() - t0
    rows = sum(p["rows"] for p in parts)
    return {"from": start.isoformat(), "to": end.isoformat(), "model_version": version, "out": str(target),
            "days": [d.isoformat() for d in sorted(listed)], "partitions": len(partitions), "rows": rows,
            "anomalies": sum(p["anomalies"] for p in parts), "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds) if seconds else 0}


def configure_parser(p: argparse.ArgumentParser) -> None:
    from engine import cli

    cli._add_config_args(p, kafka=False)
    p.add_argument("--from", dest="start", required=True, metavar="DATE", help="first day (YYYY-MM-DD, yesterday)")
    p.add_argument("--to", dest="end", metavar="DATE", help="last day, inclusive (default: --from)")
    p.add_argument("--model", metavar="VERSION", help="registry version to score with (default: the live one)")
    p.add_argument("--out", type=Path, help="output lake prefix (default: <lake>/_replay/<version>)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")


def run(args: argparse.Namespace) -> int:
    from engine import cli
    from engine.cluster import dask_client
    from streams.reports import parse_day

    cfg = cli._config(args)
    start = parse_day(args.start, cfg.lake.timezone)
    end = parse_day(args.end, cfg.lake.timezone) if args.end else start
    with dask_client(cfg.cluster) as client:
        if args.json:
            doc = run_replay(cfg, start, end, client, version=args.model, out=args.out)
            print(json.dumps(doc))
            return 0
        with cli._progress() as bar:
            task = bar.add_task("replay (partitions)", total=None)
            doc = run_replay(cfg, start, end, client, version=args.model, out=args.out,
                             progress=lambda d, n: bar.update(task, completed=d, total=n))
    cli.console.print(f"replayed {doc['rows']:,} events of {len(doc['days'])} days with {doc['model_version']} "
                      f"({doc['anomalies']:,} anomalies) into {doc['out']} in {doc['seconds']:.1f}s")
    return 0
