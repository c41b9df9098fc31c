"""``isostream demo``: broker + generated events + engine on Dask + live dashboard, in one process tree."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from engine.cluster import dask_client
from engine.config import Config, with_overrides
from engine.progress import report_printer
from engine.runtime import RunReport, Runtime
from streams.broker import EmbeddedBroker, create_topics
from streams.generator import GeneratorSettings
from streams.kafka_sink import KafkaSink
from streams.lake import read_lake
from streams.replay import generated_chunks, replay

log = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)  # progress lines stay one line in logs and pipes


@dataclass(frozen=True)
class DemoOptions:
    seconds: float | None = None  # None: until Ctrl-C
    rate: float = 2_000.0
    partitions: int = 4
    open_browser: bool = True
    dashboard: bool = True
    seed: int = 0


class _Stopper:
    """First Ctrl-C: stop producing and drain. Second: stop at once."""

    def __init__(self) -> None:
        self.produce_stop = threading.Event()
        self.engine_stop = threading.Event()
        self._hits = 0

    def __call__(self, signum: int, frame: object) -> None:
        self._hits += 1
        self.produce_stop.set()
        if self._hits == 1:
            console.print("[yellow]stopping: draining what was produced (Ctrl-C again to stop at once)")
        else:
            self.engine_stop.set()


def run_demo(cfg: Config, opts: DemoOptions) -> int:
    """Run the demo; returns the process exit code (0 = every produced event is in the lake once)."""
    stopper = _Stopper()
    previous = signal.signal(signal.SIGINT, stopper)
    previous_term = signal.signal(signal.SIGTERM, stopper)
    try:
        with EmbeddedBroker() as broker:
            return _run(cfg, opts, broker, stopper)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def _run(cfg: Config, opts: DemoOptions, broker: EmbeddedBroker, stopper: _Stopper) -> int:
    lake = Path(cfg.lake.path)
    if lake.exists() and any(lake.glob("date=*/*.parquet")):
        console.print(f"[red]lake {lake} is not empty; the demo needs an empty lake to check its counts")
        return 2
    cfg = with_overrides(cfg, {"kafka": {"bootstrap": broker.bootstrap}})
    t = cfg.kafka.topics
    create_topics(broker.bootstrap, {cfg.kafka.input_topic: opts.partitions, t.scores: 1, t.alerts: 1,
                                     t.stats: 1, t.dead_letter: 1, t.metrics: 1, t.control: 1})
    console.print(f"[green]broker[/] tansu on {broker.bootstrap}")
    produced = {"n": 0}

    def produce() -> None:
        chunk = max(int(opts.rate / 10), 1)
        sink = KafkaSink(cfg.kafka.client_settings(), cfg.kafka.input_topic)
        try:
            total = int(opts.rate * opts.seconds) if opts.seconds else 10**12
            produced["n"] = replay(
                generated_chunks(total, chunk, GeneratorSettings(seed=opts.seed)), sink, rate=opts.rate,
                key_field=cfg.schema.key, should_stop=stopper.produce_stop.is_set,
                progress=lambda n: produced.__setitem__("live", produced.get("live", 0) + n),
            )
        finally:
            sink.close()

    with dask_client(cfg.cluster) as client:
        console.print(f"[green]dask[/] dashboard {client.dashboard_link}")
        server = hub = None
        if opts.dashboard and cfg.dashboard.enabled:
            from dashboards.app import hub_for, serve_config

            hub = hub_for(cfg, dask_url=client.dashboard_link).start()
            server = serve_config(cfg, hub, show=opts.open_browser)
            console.print(f"[green]panel[/] dashboard http://{cfg.dashboard.host}:{cfg.dashboard.port}")
        runtime = Runtime(cfg, client)
        target: dict[str, int | None] = {"n": None}
        producer = threading.Thread(target=produce, name="demo-producer", daemon=True)
        producer.start()

        def watch() -> None:
            deadline = time.monotonic() + opts.seconds if opts.seconds else None
            while producer.is_alive():
                if deadline is not None and time.monotonic() > deadline + 5:
                    stopper.produce_stop.set()
                producer.join(timeout=0.5)
            target["n"] = produced["n"]
            console.print(f"producer done: {produced['n']:,} events; draining")

        watcher = threading.Thread(target=watch, name="demo-watch", daemon=True)
        watcher.start()
        printer = report_printer(console)

        def on_progress(report: RunReport) -> None:
            printer(report)
            if target["n"] is not None and report.records_in >= target["n"]:
                stopper.engine_stop.set()

        report = runtime.run(stopper.engine_stop, on_progress=on_progress)
        watcher.join(timeout=5)
        if server is not None:
            server.stop()
        if hub is not None:
            hub.stop()
    rows = len(read_lake(cfg.lake.path, columns=["kafka_offset"]))
    console.print(
        f"[bold]demo done[/]: produced {produced['n']:,}, scored {report.events:,}, lake rows {rows:,}, "
        f"anomalies {report.anomalies:,}, dead letters {report.dead_letters:,} in {report.seconds:.1f}s"
    )
    if rows != produced["n"]:
        console.print(f"[red]lake rows {rows:,} != produced {produced['n']:,}")
        return 1
    return 0
