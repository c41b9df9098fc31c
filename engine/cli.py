"""``isostream``: thin commands over the library. Options default from the config file and environment."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from engine.config import Config, ConfigError, load

console = Console(stderr=True, soft_wrap=True)

EPILOG = """Configuration precedence: defaults < --config YAML < ISOSTREAM__SECTION__KEY env vars < flags.
Docs: docs/configuration.md. Exit codes: 0 ok, 1 run failed, 2 bad usage or configuration."""


def _common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if getattr(args, "bootstrap", None):
        over.setdefault("kafka", {})["bootstrap"] = args.bootstrap
    if getattr(args, "topic", None):
        over.setdefault("kafka", {})["input_topic"] = args.topic
    if getattr(args, "lake", None):
        over.setdefault("lake", {})["path"] = args.lake
    if getattr(args, "scheduler", None):
        over.setdefault("cluster", {})["scheduler"] = args.scheduler
    if getattr(args, "registry", None):
        over.setdefault("model", {})["save_dir"] = args.registry
    if getattr(args, "delivery", None):
        over.setdefault("runtime", {})["delivery"] = args.delivery
    if getattr(args, "metrics_port", None) is not None:
        over.setdefault("runtime", {})["metrics_port"] = args.metrics_port
    return over


def _config(args: argparse.Namespace) -> Config:
    return load(args.config, overrides=_common_overrides(args))


def _add_config_args(p: argparse.ArgumentParser, *, kafka: bool = True) -> None:
    p.add_argument("--config", type=Path, help="YAML configuration file (see configs/demo.yaml)")
    if kafka:
        p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (kafka.bootstrap)")
        p.add_argument("--topic", help="input topic (kafka.input_topic)")
    p.add_argument("--lake", type=Path, help="Parquet lake folder (lake.path)")
    p.add_argument("--registry", type=Path, help="model registry folder (model.save_dir)")
    p.add_argument("--scheduler", metavar="ADDR", help="existing Dask scheduler (cluster.scheduler)")


# -- commands ---------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    import json

    from engine.cluster import dask_client
    from engine.progress import report_printer
    from engine.runtime import Runtime

    cfg = _config(args)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.seconds:
        timer = threading.Timer(args.seconds, stop.set)
        timer.daemon = True  # an earlier end (--max-events) must not wait for it
        timer.start()
    with dask_client(cfg.cluster) as client:
        console.print(f"dask dashboard: {client.dashboard_link}")
        runtime = Runtime(cfg, client)
        report = runtime.run(stop, max_events=args.max_events,
                             on_progress=None if args.json else report_printer(console, every_s=5.0))
    if args.json:
        print(json.dumps({"records": report.records_in, "events": report.events, "anomalies": report.anomalies,
                          "dead_letters": report.dead_letters, "seconds": round(report.seconds, 3),
                          "model_versions": report.model_versions, "failed": report.failed,
                          "restarts": report.restarts, "commits": report.commits, "nightly": report.nightly},
                         default=str))
    else:
        console.print(
            f"read {report.records_in:,} records: scored {report.events:,} events ({report.anomalies:,} anomalies),"
            f" {report.dead_letters:,} dead letters, in {report.seconds:.1f}s; model {report.model_version}"
        )
    for name, reason in report.failed.items():
        console.print(f"[red]pipeline {name} failed:[/] {reason}")
    return 1 if report.failed else 0


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.broker import create_topics
    from streams.generator import GeneratorSettings
    from streams.kafka_sink import KafkaSink
    from streams.replay import frame_chunks, generated_chunks, read_events, replay

    cfg = _config(args)
    chunk = max(int((args.rate or 50_000) / 10), 1)
    if args.file:
        frame = read_events(args.file)
        total, chunks = len(frame), frame_chunks(frame, chunk)
    else:
        total = args.generate
        chunks = generated_chunks(total, chunk, GeneratorSettings(seed=args.seed))
    if args.partitions:
        create_topics(cfg.kafka.bootstrap, {cfg.kafka.input_topic: args.partitions},
                      settings=cfg.kafka.client_settings())
    sink = KafkaSink(cfg.kafka.client_settings(), cfg.kafka.input_topic)
    with _progress() as bar:
        task = bar.add_task(f"produce -> {cfg.kafka.input_topic}", total=total)
        try:
            sent = replay(chunks, sink, rate=args.rate, key_field=cfg.schema.key,
                          progress=lambda n: bar.advance(task, n))
        finally:
            sink.close()
    console.print(f"produced {sent:,} events to {cfg.kafka.input_topic!r} on {cfg.kafka.bootstrap}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from streams.generator import GeneratorSettings, StationAlarmGenerator

    gen = StationAlarmGenerator(GeneratorSettings(seed=args.seed, anomaly_rate=args.anomaly_rate))
    frame = gen.next_chunk(args.events)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        frame.to_csv(out, index=False)
    elif out.suffix in (".jsonl", ".json", ".ndjson"):
        from streams.jsonl import to_json_lines

        out.write_bytes(b"\n".join(to_json_lines(frame)) + b"\n")
    else:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out)
    console.print(f"wrote {len(frame):,} events ({int(frame['label'].sum()):,} labelled anomalies) to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import DemoOptions, run_demo

    cfg = _config(args)
    opts = DemoOptions(seconds=args.seconds, rate=args.rate, partitions=args.partitions,
                       open_browser=not args.no_browser, dashboard=not args.no_dashboard)
    return run_demo(cfg, opts)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboards.app import run_server

    overrides = _common_overrides(args)
    dash: dict[str, Any] = {}
    if args.address is not None:
        dash["host"] = args.address
    if args.port is not None:
        dash["port"] = args.port
    if args.allow_websocket_origin:
        dash["allow_websocket_origin"] = list(args.allow_websocket_origin)
    auth = {name: getattr(args, name) for name in ("basic_auth", "cookie_secret", "oauth_provider", "oauth_key",
                                                   "oauth_secret", "oauth_redirect_uri", "oauth_encryption_key")
            if getattr(args, name) is not None}
    if auth:
        dash["auth"] = auth
    if dash:
        overrides = {**overrides, "dashboard": {**overrides.get("dashboard", {}), **dash}}
    run_server(load(args.config, overrides=overrides), open_browser=not args.no_browser)
    return 0


def render_table(table: Any) -> str:
    """A rich table as text as wide as it needs: keys, versions and dates are never cut."""
    import io

    width = Console(width=1_000).measure(table).maximum
    buffer = io.StringIO()
    Console(file=buffer, width=width).print(table)
    return buffer.getvalue()


def show_table(table: Any) -> None:
    """On a terminal, fitted to it; elsewhere (a pipe, a log) at full width (:func:`render_table`)."""
    if console.is_terminal:
        console.print(table)
    else:
        console.file.write(render_table(table))


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isostream",
        description="Near-real-time anomaly detection on Kafka event streams (isolation forests on Dask).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the streaming engine against a Kafka cluster",
                       description="Consume the input topic, score every event, write the lake and topics.")
    _add_config_args(p)
    p.add_argument("--seconds", type=float, help="stop (after draining) after this many seconds")
    p.add_argument("--max-events", type=int, help="stop once this many input records (events and dead letters) "
                   "are committed")
    p.add_argument("--delivery", choices=["exactly_once", "at_least_once"], help="runtime.delivery")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus text on this port (runtime.metrics_port)")
    p.add_argument("--json", action="store_true", help="print the run's totals as one JSON document")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("produce", help="replay a file or generated events into a topic at a given rate",
                       description="Produce one JSON message per event (CSV, Parquet or JSON-lines file).")
    _add_config_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", type=Path, help="CSV, Parquet or JSON-lines file to replay")
    src.add_argument("--generate", type=int, metavar="N", help="generate N station-alarm events")
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--partitions", type=int, help="create the topic with this many partitions if missing")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("generate", help="write generated station-alarm events (labelled) to a file",
                       description="Write N events with injected, labelled anomalies to CSV, Parquet or JSONL.")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--out", type=Path, required=True, help="output file (.parquet, .csv or .jsonl)")
    p.add_argument("--anomaly-rate", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="broker + generator + engine + dashboard, end to end",
                       description="Start the embedded broker, replay generated events, run the engine on a Dask "
                       "LocalCluster and serve the dashboard. Ctrl-C stops everything (twice: at once).")
    _add_config_args(p, kafka=False)
    p.add_argument("--seconds", type=float, help="produce for this many seconds, drain, check the lake, exit")
    p.add_argument("--rate", type=float, default=2_000.0, help="events per second (default 2000)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the input topic (default 4)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--no-dashboard", action="store_true", help="do not serve the Panel dashboard")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "dashboard", help="serve the live Panel dashboard for a running engine",
        description="Serve the live pages (Overview, Keys, Incidents, Models) from the engine's output topics and "
                    "History from the lake on dashboard.host:port (127.0.0.1:5006 by default). It binds loopback "
                    "unless --address says otherwise; give it authentication (--basic-auth or --oauth-*, or "
                    "dashboard.auth in the config) before exposing it. Panel's PANEL_OAUTH_* variables work too.")
    _add_config_args(p)
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--address", metavar="HOST", help="address to bind (dashboard.host), e.g. 0.0.0.0 to expose it")
    p.add_argument("--port", type=int, help="port (dashboard.port)")
    p.add_argument("--allow-websocket-origin", metavar="HOST[:PORT]", action="append",
                   help="a browser origin allowed to connect besides the bound address (repeatable), e.g. a proxy's")
    p.add_argument("--basic-auth", metavar="PASSWORD|FILE", help="Panel basic auth: one password, or a JSON file of "
                   "{user: password} (dashboard.auth.basic_auth)")
    p.add_argument("--cookie-secret", metavar="SECRET", help="signs session cookies (needed with any auth)")
    p.add_argument("--oauth-provider", metavar="NAME", help="Panel OAuth provider: github, google, azure, okta, ...")
    p.add_argument("--oauth-key", metavar="KEY", help="OAuth client id")
    p.add_argument("--oauth-secret", metavar="SECRET", help="OAuth client secret")
    p.add_argument("--oauth-redirect-uri", metavar="URI", help="OAuth redirect URI, when behind a proxy")
    p.add_argument("--oauth-encryption-key", metavar="KEY", help="encrypts the OAuth tokens in the cookies")
    p.set_defaults(func=cmd_dashboard)

    from training import evaluate

    p = sub.add_parser("evaluate", help="ROC AUC / average precision of the detector on labelled data",
                       description="Fit and score (batch) or learn prequentially (stream) on a labelled "
                       "CSV/Parquet file; prints and writes AUC, AP, events/s and wall time.")
    evaluate.configure_parser(p)
    p.set_defaults(func=evaluate.run)

    from engine import models_cmd, retrain_cmd

    p = sub.add_parser("retrain", help="the nightly retrain of one lake day on the Dask cluster",
                       description="Integrate one closed lake day into the current model: sample through the "
                       "stream's features, new trees in the oldest slots, score the day in parallel, calibrate, "
                       "evaluate, register, then shadow or gate (docs/retrain.md).")
    retrain_cmd.configure_parser(p)
    p.set_defaults(func=retrain_cmd.run)

    p = sub.add_parser("models", help="the model registry: list, show, promote, rollback",
                       description="Versions with lineage and metrics; promote and rollback move CURRENT, which "
                       "every engine worker and `isostream serve` follow.")
    models_cmd.configure_parser(p)
    p.set_defaults(func=models_cmd.run)

    from engine import replay as replay_cmd

    p = sub.add_parser("replay", help="re-score stored days with one model version into a separate lake prefix",
                       description="Backfill: the lake's events from --from to --to through the stream's feature "
                       "and scoring code, with --model (default: the live version), on the Dask cluster.")
    replay_cmd.configure_parser(p)
    p.set_defaults(func=replay_cmd.run)

    from engine import labels_cmd

    p = sub.add_parser("labels", help="late ground truth: ingest label files, live metrics per model version")
    labels_cmd.configure_parser(p)
    p.set_defaults(func=labels_cmd.run)

    from engine import serve

    p = sub.add_parser("serve", help="REST scoring API (FastAPI on uvicorn) over the registry's current model",
                       description="POST /score, GET /health, /models, /reports; docs/serve.md.")
    serve.configure_parser(p)
    p.set_defaults(func=serve.run)

    from engine import report_cmd

    p = sub.add_parser("report", help="events, alarms and anomalies per key and day/week/month, from the lake",
                       description="Count the lake's events per --by fields and period (docs/reports.md).")
    report_cmd.configure_parser(p)
    p.set_defaults(func=report_cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # distributed installs its own INFO handler; worker processes read the env var when they start
    logging.getLogger("distributed").setLevel(level)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(level).lower())
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        console.print(f"[red]configuration error:[/] {err}")
        return 2
    except RuntimeError as err:  # the source, the cluster or a sink failed: say what, not a traceback
        if args.verbose:
            raise
        console.print(f"[red]error:[/] {err} (run with -v for the traceback)")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
