"""What the per-key feature layer, windows and incidents cost end to end (issue 9's goal: at most 20 %).

One backlog on the embedded broker; the engine (configs/demo.yaml, 2 workers, exactly-once) runs over it
twice per round, alternating, each on a fresh LocalCluster:

- **full**: the demo's features (per-key baselines, deltas, repeats, gaps, ratio, warm-up), 60 s windows and
  incidents;
- **features**: the demo's features, windows and incidents off (the split between the two costs);
- **minimal**: the raw ``value`` with its per-key z-scores, nothing else; windows and incidents off.

The cost is ``1 - full / minimal`` on the steady events/s (the median over the rounds). The raw consumer of
the same backlog is measured in the same run, for scale.

Window output grows with windows closed per event, i.e. keys / (window size x event-time rate). A backlog
drained at 60,000 events/s whose events were 1/200 s apart (the generator's default) squeezes 300 s of event
time into each second and closes 300x more windows than a live stream would. ``--event-rate`` sets the
event-time spacing: the default, 50,000 events/s, is a live 10 MB/s stream; ``--event-rate 200`` is the
compressed replay.

Usage: ``python -m benchmarks feature_cost [--quick]`` -> ``benchmarks/results/feature_cost.json``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._engine_harness import engine_config, run_engine
from benchmarks.common import finish, row
from benchmarks.ingest import bench_raw, make_events, produce
from streams.broker import EmbeddedBroker
from streams.kafka_source import CONSUMER_DEFAULTS

HERE = Path(__file__).resolve().parent
MINIMAL: dict[str, Any] = {
    "features": {"numeric": ["value"], "keep_levels": True, "rate": False, "deltas": False, "ratio": None,
                 "time_of_day": False, "warmup_events": 0},
    "windows": {"enabled": False},
    "incidents": {"enabled": False},
}
FEATURES_ONLY: dict[str, Any] = {"windows": {"enabled": False}, "incidents": {"enabled": False}}
KINDS: dict[str, dict[str, Any] | None] = {"full": None, "features": FEATURES_ONLY, "minimal": MINIMAL}


def log(msg: str) -> None:
    print(f"[feature_cost {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.feature_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="300k events, 2 rounds (about 3 min)")
    p.add_argument("--events", type=int, default=None, help="backlog size (300k quick, 1M full)")
    p.add_argument("--rounds", type=int, default=None, help="full/minimal pairs (2 quick, 3 full)")
    p.add_argument("--event-rate", type=float, default=50_000.0,
                   help="event-time spacing of the generated events, events/s (default 50,000: a live stream)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "feature_cost.json")
    args = p.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    n = args.events or (300_000 if args.quick else 1_000_000)
    rounds = args.rounds or (2 if args.quick else 3)
    started = time.monotonic()
    values, keys = make_events(n, events_per_second=args.event_rate)
    fetch_conf = {k: v for k, v in CONSUMER_DEFAULTS.items() if not k.startswith("enable.")}
    steady: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="isostream-fcost-") as tmp:
        topic = "feature-cost"
        broker.create_topic(topic, 4)
        produce(broker.bootstrap, topic, values, keys, "lz4")
        raw = bench_raw(broker.bootstrap, topic, 4, n, fetch_conf)
        log(f"raw consume-only: {raw:,.0f} events/s")
        for r in range(rounds):
            for kind in list(KINDS) if r % 2 == 0 else list(KINDS)[::-1]:
                cfg = engine_config(broker.bootstrap, topic, Path(tmp), f"{kind}-{r}", overrides=KINDS[kind])
                run = run_engine(cfg, n)
                steady[kind].append(run.steady)
                log(f"round {r + 1} {kind}: steady {run.steady:,.0f} events/s")
    full, minimal = statistics.median(steady["full"]), statistics.median(steady["minimal"])
    features = statistics.median(steady["features"])
    rows = [
        row("raw consume-only (same backlog)", raw, "events/s"),
        row("engine, minimal features, no windows/incidents", minimal, "events/s", "raw consume-only", raw,
            runs=steady["minimal"]),
        row("engine, demo features, no windows/incidents", features, "events/s",
            "engine, minimal features, no windows/incidents", minimal, runs=steady["features"],
            cost=round(1.0 - features / minimal, 3)),
        row("engine, demo features + windows + incidents", full, "events/s",
            "engine, minimal features, no windows/incidents", minimal, runs=steady["full"],
            cost=round(1.0 - full / minimal, 3), goal_max_cost=0.2),
    ]
    settings = {"events": n, "rounds": rounds, "event_rate": args.event_rate, "partitions": 4, "workers": 2, "delivery": "exactly_once",
                "overrides": KINDS, "config": "configs/demo.yaml"}
    return finish(args.out, "feature_cost", rows, settings, started, log)


if __name__ == "__main__":
    raise SystemExit(main())
