"""The live dashboard under load: ten Chromium viewers while the engine runs, on this (two-core) machine.

The load is the whole product, each part its own process so its CPU is measured apart: the embedded tansu
broker; ``isostream produce`` writing generated station-alarm events at ``--rate`` events/s; the engine
(``isostream run``, a LocalCluster) writing the scores, alerts, stats, incidents and metrics topics; the
dashboard server (``isostream dashboard --no-browser``); and one headless Chromium holding the viewers, each
in a window of its own (tabs sharing a window are hidden and draw no frames), driven over the DevTools
protocol (``benchmarks/_browser.py``) without ever waiting on a busy tab. Phases, in order:

1. **idle**: 0 viewers; the dashboard's CPU (process + children, psutil) and RSS: the baseline.
2. **floor** (``--floor-s``): as many tabs of a bare page (``benchmarks/_floor_page.py``) that draws only the
   Overview's two fast charts, with the dashboard's own chart code, from rows a websocket pushes every tick:
   no Bokeh, Panel, numbers or tables. Its pictures a second under the same load are the baseline the
   viewers' are read against: what any page drawing those charts could get on this machine.
3. **viewers**: ``--viewers`` tabs open at once (their first plots are reported), then ``--duration-s`` of
   steady load. Each page carries a collector (installed before the page's own scripts) that watches the
   Bokeh ``ColumnDataSource`` named ``live-timeline``: every new row's ``seq`` (gaps = ticks this viewer
   missed), the time it arrived and the next animation frame after it (``Date.now()``), against the row's
   ``kafka_ts_ms`` (data-to-screen: from the Kafka timestamp of the newest ``scores`` record the row counted,
   which the engine's producer stamps when it writes the record at its commit; the engine's own latency, Kafka
   in to committed, comes before that and is not in it) and ``t`` (tick-to-screen; data-to-tick is the
   difference). JS heap per tab (``Performance.getMetrics``) every few seconds; the server's
   RSS and ``/status.json`` every two. ``--probes`` extra viewers open one at a time during the phase:
   "a new viewer under load", time from navigation start to the timeline holding a row with every root view
   rendered.
4. **orphan drill**: sessions dropped at random moments: plain HTTP GETs of ``/`` (a server session whose
   websocket never connects), tabs closed 0-2 s after navigation start, tabs closed once loaded; then
   ``sessions.live`` of ``/status.json`` must come back to the viewers still open (deadline 60 s: Bokeh
   drops an unused session after ``unused_session_lifetime``). Then every viewer closes, and the server's
   CPU must come back to the idle baseline.

Every goal of the issue is a row with the measured value, the goal and met/missed; nothing is extrapolated
(a quick run's memory growth is over its own minutes, and says so). The machine is shared: the rows also
carry the engine's, browser's and the rest of the machine's CPU over the same phase, to read noise by.

Usage: ``python -m benchmarks dashboard [--quick]`` -> ``benchmarks/results/dashboard.json`` (quick: 120 s of
load and a 60 s floor, about seven minutes in all on a busy two-core machine; full: 1800 s, the issue's 30
minutes, and a 300 s floor: about 43).
``--dashboard-command`` measures another server under the same load. ``--browser-priority`` sets the
browser's CPU priority: ``user`` (default) as for a viewer who is not root; ``chromium`` what Chromium sets
itself, which as root raises its browser and GPU processes above the servers (the rig of runs up to 50);
``idle`` only the CPU the rest leaves, as if the viewers' browsers ran on their own machines. Without Chromium
it writes one row saying why it skipped, and exits 0; a run that fails part-way writes the rows it measured
and a ``failed`` row, and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ALL_COMPLETED, Future, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml

from benchmarks._browser import (
    DEFAULT_ARGS,
    DEFAULT_PRIORITY,
    PRIORITIES,
    Browser,
    BrowserError,
    Priority,
    Tab,
    die_with_parent,
    find_chromium,
    no_chromium,
)
from benchmarks._dashboard_measures import (
    BROWSER_MEM_GOAL,
    CPU_GOAL,
    EXTRA_COUNTS,
    FIRST_PLOT_GOAL,
    FRAMES_GOAL,
    LATENCY_GOAL,
    MISSED_GOAL,
    ORPHAN_GOAL,
    SERVER_MEM_GOAL,
    UPDATES_GOAL,
    BenchError,
    Drain,
    Goal,
    PageRow,
    ServerStatus,
    cpu_pct,
    frames_per_s,
    goal_row,
    growth,
    longest_silence_s,
    parse_drain,
    parse_status,
    per_minute,
    phase_medians,
    print_table,
    quantiles,
    seq_stats,
    slope_per_min,
    worst_page_gaps,
)
from benchmarks.common import row, skipped, write_results

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEMO = REPO / "configs" / "demo.yaml"
SOURCE_NAME = "live-timeline"
MB = 1024 * 1024
#: how often each tab gets a full garbage collection and a heap reading of what it still holds
RETAINED_EVERY_S = 20.0
HEAP_EVERY_S = 5.0  # a plain heap reading (garbage included)
DRAIN_EVERY_S = 0.5  # each viewer's collector is asked for its new rows this often (unless still answering)
PROBE_WAIT_S = 15.0  # a new viewer with no plot by then counts as 15 s
FIRST_PLOT_WAIT_S = 60.0  # the first viewers, all opened at once
FINAL_DRAIN_S = 10.0  # after the load phase: the rows still in the pages


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f} ms"


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _per_s(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def written_rate(before: int, after: int, seconds: float) -> float | None:
    """Records a second between two readings of a topic's high watermark; None when the broker reported a
    lower one the second time (tansu did, once in quick run 47: a rate of -1,030 a second is no reading).

    >>> written_rate(1_000, 21_000, 10.0), written_rate(21_000, 1_000, 10.0)
    (2000.0, None)
    """
    if after < before or seconds <= 0:
        return None
    return (after - before) / seconds


def log(msg: str) -> None:
    print(f"[dashboard {time.strftime('%H:%M:%S')}] {msg}", flush=True)


#: installed before the page's own scripts; watches ``live-timeline`` and keeps the rows a viewer got
COLLECTOR_JS = """(() => {
  if (window.__isoBench) return;
  const NAME = "__NAME__";
  const S = window.__isoBench = {found_ms: null, rendered_ms: null, document_ms: null, last_seq: null, gaps: 0,
                                 resets: 0, rows: [], errors: [], socket_open_ms: null, doc_received_ms: null};
  // the page's first websocket is Bokeh's: when it opened, and when the server's document came on it (the
  // content of PULL-DOC-REPLY); seen before Bokeh's own handler, and only until the document came
  const WS = window.WebSocket;
  if (WS) {
    window.WebSocket = class extends WS {
      constructor(...args) {
        super(...args);
        if (S.socket_open_ms !== null || S.watching) return;
        S.watching = true;
        this.addEventListener("open", () => { S.socket_open_ms = performance.now(); }, {once: true});
        const seen = (e) => {
          if (typeof e.data === "string" && e.data.startsWith('{"doc"')) {
            S.doc_received_ms = performance.now();
            this.removeEventListener("message", seen);
          }
        };
        this.addEventListener("message", seen);
      }
    };
  }
  const unpainted = [];
  let src = null, raf = false, fast = null;
  const num = (v) => (typeof v === "number" && Number.isFinite(v)) ? v : null;
  addEventListener("error", (e) => { if (S.errors.length < 20) S.errors.push(String(e.message)); });
  function rendered(B) {
    // every root view built and finished drawing once (Document.is_idle misses roots without views)
    const views = B.index ? [...B.index] : [];
    return views.length > 0 && views.every((v) => v.has_finished());
  }
  function painted() {
    const now = Date.now();
    for (const r of unpainted) r[2] = now;
    unpainted.length = 0;
    raf = false;
  }
  function scan() {
    const n = src.get_length() || 0;
    if (!n) return;
    const seq = src.get_column("seq"), kts = src.get_column("kafka_ts_ms"), t = src.get_column("t");
    if (!seq) return;
    if (S.found_ms === null) S.found_ms = performance.now();
    const newest = Number(seq[n - 1]);
    if (S.last_seq === null || newest < S.last_seq) {  // first sight (history rows), or a new series
      if (S.last_seq !== null) S.resets++;
      S.last_seq = newest;
      return;
    }
    let i = n - 1;
    while (i >= 0 && Number(seq[i]) > S.last_seq) i--;
    const now = Date.now();
    for (let j = i + 1; j < n; j++) {
      const s = Number(seq[j]);
      if (s > S.last_seq + 1) S.gaps += s - S.last_seq - 1;
      S.last_seq = s;
      const r = [s, now, null, num(Number(kts ? kts[j] : NaN)), num(Number(t ? t[j] : NaN))];
      S.rows.push(r);
      unpainted.push(r);
    }
    if (unpainted.length && !raf) { raf = true; requestAnimationFrame(painted); }
  }
  function poll() {
    const B = window.Bokeh;
    if (!B || !B.documents) return;
    if (S.document_ms === null && B.documents.length) S.document_ms = performance.now();
    if (S.rendered_ms === null && rendered(B)) S.rendered_ms = performance.now();
    if (src === null || src.document === null) {
      src = null;
      for (const d of B.documents) { const m = d.get_model_by_name(NAME); if (m) { src = m; break; } }
      if (src === null) return;
      for (const sig of [src.streaming, src.patching, src.change]) if (sig) sig.connect(scan);
    }
    scan();
    if (S.found_ms !== null && S.rendered_ms !== null && fast !== null) {
      clearInterval(fast); fast = null; setInterval(poll, 250);  // the signals carry it from here
    }
  }
  fast = setInterval(poll, 20);
  S.base = 0;  // the id of S.rows[0]: rows are ids base, base + 1, ...
  S.drain = (ack) => {
    // forget what the other side has received (ids below ack), hand over the rows ready since: a reply
    // lost on the way is asked for again with the same ack, so no row is lost or counted twice
    if (ack > S.base) { S.rows.splice(0, ack - S.base); S.base = ack; }
    // a row waits for its frame one second at most (a hidden page may never draw one)
    const now = Date.now();
    let k = 0;
    while (k < S.rows.length && (S.rows[k][2] !== null || now - S.rows[k][1] > 1000)) k++;
    // where a first plot's time went: the page's own navigation timing (0: that point not reached yet)
    const nav = performance.getEntriesByType("navigation")[0] || {};
    const at = (v) => (typeof v === "number" && v > 0) ? v : null;
    // the last script's last byte: from the HTML's end to it the server served them, after it Chromium ran them
    const scripts = performance.getEntriesByType("resource").filter((r) => r.initiatorType === "script");
    const phases = {response_start_ms: at(nav.responseStart), response_end_ms: at(nav.responseEnd),
                    scripts_ms: at(Math.max(0, ...scripts.map((r) => r.responseEnd))),
                    dom_loaded_ms: at(nav.domContentLoadedEventEnd), load_ms: at(nav.loadEventEnd),
                    socket_open_ms: S.socket_open_ms, doc_received_ms: S.doc_received_ms,
                    document_ms: S.document_ms, rendered_ms: S.rendered_ms, found_ms: S.found_ms};
    return {start: S.base, rows: S.rows.slice(0, k), found_ms: S.found_ms, rendered_ms: S.rendered_ms,
            gaps: S.gaps, resets: S.resets, errors: S.errors.slice(), phases,
            visible: document.visibilityState === "visible"};
  };
})();""".replace("__NAME__", SOURCE_NAME)
#: what a drain asks (``% ack``): the collector's rows from id ``ack`` on
COLLECTOR_DRAIN = "window.__isoBench ? window.__isoBench.drain(%d) : {start: 0, rows: [], errors: ['no collector']}"


# -- processes -------------------------------------------------------------------------------------------
class Tree:
    """A process and its descendants: CPU seconds so far (descendants that exited keep their last reading)."""

    def __init__(self, pid: int, *, children: bool = True) -> None:
        self.root = psutil.Process(pid)
        self.children = children
        self._seen: dict[tuple[int, float], float] = {}

    def cpu_s(self) -> float:
        try:
            procs = [self.root, *(self.root.children(recursive=True) if self.children else [])]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                t = p.cpu_times()
                self._seen[(p.pid, p.create_time())] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return sum(self._seen.values())

    def rss(self) -> int | None:
        try:
            return int(self.root.memory_info().rss)
        except psutil.NoSuchProcess:
            return None


def machine_busy_s() -> float:
    """CPU seconds (all cores) the machine spent busy since boot: everyone's work, ours and the neighbours'."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class Proc:
    """A child process with its output in a log file; ``stop`` ends it and its process group."""

    def __init__(self, name: str, cmd: list[str], log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # its own process group (stop() ends the whole group), and gone with us even if we are killed
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)
        self.tree = Tree(self.proc.pid)

    def check(self) -> None:
        """Raise (with the end of its log) if the process has exited."""
        if self.proc.poll() is not None:
            msg = f"{self.name} exited with code {self.proc.returncode}: {self.tail()}"
            raise BenchError(msg)

    def tail(self, n: int = 1500) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:  # its children (Dask workers, a nanny) must not outlive it
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5,
               alive: Callable[[], None] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy (returned); BenchError naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None:
            alive()
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"dashboard benchmark: {what} not within {timeout_s:.0f} s"
            raise BenchError(msg)
        time.sleep(poll_s)


# -- the load --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What one run does (all of it lands in the JSON's settings)."""

    quick: bool
    viewers: int
    rate: float
    duration_s: float
    tick_ms: int
    probes: int
    idle_s: float
    warmup_s: float
    engine_workers: int
    partitions: int
    drill_http: int
    drill_early: int
    drill_loaded: int
    drill_deadline_s: float
    seed: int
    chromium: str | None
    #: the dashboard server's command line ({config}, {port}, {python} replaced); None: ``isostream dashboard``
    dashboard_command: str | None = None
    #: dashboard options over configs/demo.yaml's (``--dashboard-option KEY=VALUE``): an A/B of one setting
    dashboard_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the browser's CPU priority (``--browser-priority``, benchmarks._browser.PRIORITIES)
    browser_priority: Priority = DEFAULT_PRIORITY
    #: seconds of the floor phase (``--floor-s``; 0: none): as many tabs of benchmarks/_floor_page.py
    floor_s: float = 0.0


def write_config(workdir: Path, bootstrap: str, port: int, s: Settings) -> tuple[Path, dict[str, Any]]:
    """``configs/demo.yaml`` pointed at the run's broker, topics, lake, registry and dashboard port."""
    from engine.config import DashboardConfig, load

    doc = yaml.safe_load(DEMO.read_text())
    topics = {k: f"dash-{k}" for k in doc["kafka"]["topics"]}
    dashboard: dict[str, Any] = {"enabled": True, "host": "127.0.0.1", "port": port}
    # the contract's tick; until the config has one, the dashboard's refresh period is the nearest thing
    tick_key = "tick_ms" if "tick_ms" in DashboardConfig.model_fields else "refresh_ms"
    dashboard[tick_key] = s.tick_ms
    dashboard.update(s.dashboard_options)
    over: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap": bootstrap, "input_topic": "dash-events", "group_id": "bench-dashboard",
                  "topics": topics, "dead_letter_dir": None},
        "lake": {"path": str(workdir / "lake")},
        "model": {"save_dir": str(workdir / "models")},
        "cluster": {"n_workers": s.engine_workers, "threads_per_worker": 1, "processes": True,
                    "dashboard_address": "127.0.0.1:0"},
        # the generator's days start at midnight: a nightly retrain would measure the retrain, not the dashboard
        "retrain": {"trigger": "cron"},
        "dashboard": dashboard,
    }
    for section, values in over.items():
        doc[section] = {**doc.get(section, {}), **values}
    path = workdir / "dashboard-bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    load(path, environ={})  # a config the engine would reject fails here, with the engine's own message
    return path, {"tick_key": f"dashboard.{tick_key}", "topics": topics}


def high_watermarks(bootstrap: str, topic: str) -> int:
    """Records ever written to ``topic`` (sum of its partitions' high watermarks; 0 when it has none yet)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-dashboard-watermarks",
                  "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        parts = list(meta.partitions) if meta is not None and meta.error is None else []
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


@dataclass
class Stack:
    """The running load: broker, producer, engine, dashboard (each a process tree), and where they answer."""

    bootstrap: str
    url: str
    config: Path
    topics: dict[str, str]
    procs: dict[str, Proc]
    broker_tree: Tree | None
    tick_key: str
    has_status: bool  # the server answers /status.json (200), rather than 404
    status_timeouts: int = 0
    status_ms: list[tuple[float, float]] = field(default_factory=list)  # (monotonic s, ms to answer)

    def check(self) -> None:
        for p in self.procs.values():
            p.check()

    def status(self, timeout_s: float = 5.0) -> ServerStatus | None:
        """The dashboard's ``/status.json``; None when it has none, or did not answer within ``timeout_s``
        (counted in ``status_timeouts``: a server too busy to answer is a finding, not a failed run)."""
        if not self.has_status:
            return None
        t = time.monotonic()
        try:
            reply = httpx.get(f"{self.url}status.json", timeout=timeout_s)
        except httpx.TimeoutException:
            self.status_timeouts += 1
            return None
        self.status_ms.append((t, (time.monotonic() - t) * 1e3))
        if reply.status_code != 200:
            msg = f"dashboard /status.json answered {reply.status_code}: {reply.text[:200]!r}"
            raise BenchError(msg)
        return parse_status(reply.json())


@contextmanager
def load_stack(s: Settings, workdir: Path) -> Iterator[Stack]:
    """Start broker, producer, engine and dashboard; stop them all (in reverse) on the way out."""
    from streams.broker import EmbeddedBroker, create_topics, free_port

    py = sys.executable
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "tansu.log"))
        port = free_port()
        config, facts = write_config(workdir, broker.bootstrap, port, s)
        topics: dict[str, str] = facts["topics"]
        create_topics(broker.bootstrap, {"dash-events": s.partitions, **dict.fromkeys(topics.values(), 1)})
        procs: dict[str, Proc] = {}

        def start(name: str, *args: str, cmd: list[str] | None = None) -> Proc:
            p = Proc(name, cmd or [py, "-m", "engine.cli", *args], workdir / f"{name}.log")
            procs[name] = p
            stack.callback(p.stop)
            return p

        # enough events for the whole run: the producer is stopped when the run ends
        total = int(s.rate * (s.duration_s + 900))
        start("producer", "produce", "--config", str(config), "--generate", str(total), "--rate", str(s.rate))
        engine = start("engine", "run", "--config", str(config))
        log(f"broker {broker.bootstrap}; producing {s.rate:,.0f} events/s; engine starting "
            f"({s.engine_workers} worker(s))")
        t0 = time.monotonic()
        wait_until(lambda: high_watermarks(broker.bootstrap, topics["scores"]) > 0, 300,
                   "the engine's first scores", poll_s=1.0, alive=lambda: _check_all(procs))
        log(f"engine writes scores after {time.monotonic() - t0:.0f} s ({engine.log_path})")
        dash = start("dashboard", cmd=dashboard_command(s.dashboard_command, config, port))
        url = f"http://127.0.0.1:{port}/"

        def listening() -> int | None:
            # /status.json, never /: a page GET would open a server session before the idle baseline
            code = http_status(f"{url}status.json")
            return code if code in (200, 404) else None

        code = wait_until(listening, 120, f"the dashboard on {url}", alive=dash.check)
        pid = broker.pid
        yield Stack(broker.bootstrap, url, config, topics, procs, Tree(pid) if pid else None, facts["tick_key"],
                    has_status=code == 200)


def dashboard_command(template: str | None, config: Path, port: int) -> list[str]:
    """The dashboard server's argv: ``template`` (shell words; ``{config}``, ``{port}``, ``{python}`` filled in)
    or ``isostream dashboard --config FILE --no-browser``.

    >>> dashboard_command("{python} stub.py --config {config} --port {port}", Path("c.yaml"), 5006)[1:]
    ['stub.py', '--config', 'c.yaml', '--port', '5006']
    """
    if template is None:
        return [sys.executable, "-m", "engine.cli", "dashboard", "--config", str(config), "--no-browser"]
    fill = {"config": str(config), "port": str(port), "python": sys.executable}
    try:
        return [word.format(**fill) for word in shlex.split(template)]
    except (KeyError, ValueError, IndexError) as err:
        msg = f"dashboard benchmark: --dashboard-command {template!r}: {err!r} (placeholders: {sorted(fill)})"
        raise BenchError(msg) from err


def _check_all(procs: dict[str, Proc]) -> None:
    for p in procs.values():
        p.check()


# -- viewers ---------------------------------------------------------------------------------------------
@dataclass
class Viewer:
    """One tab, everything its collector handed over, and the DevTools requests it has not answered yet."""

    tab: Tab
    label: str
    rows: list[PageRow] = field(default_factory=list)
    last: Drain | None = None
    heap: list[tuple[float, float]] = field(default_factory=list)  # (monotonic s, bytes in use)
    retained: list[tuple[float, float]] = field(default_factory=list)  # (monotonic s, bytes after a full GC)
    ack: int = 0  # the collector's id of the next row this side has not received
    draining: Future[Any] | None = None
    weighing: dict[str, Future[float]] = field(default_factory=dict)  # "heap"/"retained": the reading to come
    late: int = 0  # drain rounds this tab had not answered the previous one yet

    def take(self, doc: Any) -> Drain:
        """Keep what the collector handed over (``doc``: its ``drain(ack)`` document); rows already received
        (a reply that came after its round was given up) are not counted twice."""
        d = parse_drain(doc)
        fresh = d.rows[max(0, self.ack - d.start):]
        self.rows.extend(fresh)
        self.ack = max(self.ack, d.start + len(d.rows))
        self.last = d
        return d

    @property
    def first_plot_ms(self) -> float | None:
        return self.last.first_plot_ms if self.last is not None else None

    def poll(self) -> None:
        """Ask the collector for new rows unless the last ask is still unanswered; take the answer if it came."""
        if self.draining is None:
            self.draining = self.tab.evaluate_async(COLLECTOR_DRAIN % self.ack)
        elif not self.draining.done():
            self.late += 1
        if self.draining.done():
            doc, self.draining = self.draining.result(), None  # a page error raises: the run is broken
            self.take(doc)

    def weigh(self, kind: str) -> None:
        """Ask for a heap reading (``retained``: after a full GC) unless one of that kind is still on its way."""
        if kind not in self.weighing:
            self.weighing[kind] = self.tab.heap_used_async(collect=kind == "retained")

    def weighed(self) -> None:
        """Keep the heap readings that have come (stamped when seen: within a drain period of their taking)."""
        for kind, fut in list(self.weighing.items()):
            if fut.done():
                del self.weighing[kind]
                (self.retained if kind == "retained" else self.heap).append((time.monotonic(), fut.result()))


def in_window(rows: Sequence[PageRow], w0_ms: float, w1_ms: float) -> list[PageRow]:
    """The rows that arrived in ``[w0_ms, w1_ms]`` (the page's clock): a phase's share of a viewer's rows."""
    return [r for r in rows if w0_ms <= r.arrived_ms <= w1_ms]


def viewer_rates(rows: Sequence[PageRow], seconds: float) -> tuple[float, float, int]:
    """A viewer's distinct rows a second, pictures a second, and ticks missed, over ``seconds`` of its rows."""
    distinct, missed = seq_stats([r.seq for r in rows])
    return distinct / seconds, frames_per_s(rows, seconds), missed


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The status code of a GET of ``url``; None when nothing answered (not listening yet, or gone)."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code
    except httpx.TransportError:
        return None


def _plotted(v: Viewer) -> bool:
    return v.first_plot_ms is not None


def open_viewer(browser: Browser, url: str, label: str) -> Viewer:
    tab = browser.new_tab(init_script=COLLECTOR_JS)
    v = Viewer(tab, label)
    tab.navigate(url)
    return v


class Sampler:
    """A thread taking, every ``period_s``, CPU seconds of each process tree, the dashboard's RSS and
    ``/status.json`` (a server too busy to answer delays only this thread, not the browser side)."""

    def __init__(self, stack: Stack, browser: Browser, period_s: float = 2.0) -> None:
        self.stack = stack
        self.trees: dict[str, Tree] = {name: p.tree for name, p in stack.procs.items()}
        if stack.broker_tree is not None:
            self.trees["broker"] = stack.broker_tree
        if browser.pid is not None:
            self.trees["browser"] = Tree(browser.pid)
        self.trees["benchmark"] = Tree(os.getpid(), children=False)  # its children are the others
        self.period_s = period_s
        self.samples: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._status: tuple[float, ServerStatus] | None = None  # the latest answer and when it was asked for
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-bench-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.mark()
            except BaseException as err:  # noqa: BLE001 - handed to the main thread, which stops the run
                self.error = err
                return

    def mark(self) -> float:
        """Take a sample now (also from the main thread, at a phase's edges); its time."""
        self.stack.check()
        asked = time.monotonic()
        status = self.stack.status()
        with self._lock:
            now = time.monotonic()
            s: dict[str, Any] = {"t": now, "machine_busy_s": machine_busy_s(),
                                 "rss": self.trees["dashboard"].rss(), "status": status}
            s.update({f"cpu:{name}": tree.cpu_s() for name, tree in self.trees.items()})
            self.samples.append(s)
            if status is not None:
                self._status = (asked, status)
        return now

    def latest(self, after: float) -> ServerStatus | None:
        """The newest ``/status.json`` answer asked for after monotonic time ``after`` (None: none yet)."""
        with self._lock:
            return self._status[1] if self._status is not None and self._status[0] >= after else None

    def check(self) -> None:
        if self.error is not None:
            msg = f"dashboard benchmark: sampling stopped: {self.error}"
            raise BenchError(msg) from self.error

    def between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.samples if t0 <= s["t"] <= t1]

    def cpu(self, name: str, t0: float, t1: float) -> float | None:
        """% of one core ``name`` used between the samples nearest ``t0`` and ``t1`` (machine: all of it)."""
        window = self.between(t0, t1)
        if len(window) < 2:
            return None
        key = "machine_busy_s" if name == "machine" else f"cpu:{name}"
        return cpu_pct(window[0][key], window[-1][key], window[0]["t"], window[-1]["t"])

    def breakdown(self, t0: float, t1: float) -> dict[str, float | None]:
        """% of a core each process tree used between ``t0`` and ``t1``, the machine's (200 = both cores),
        and the neighbours' (the machine less this run's processes)."""
        got = {name: self.cpu(name, t0, t1) for name in self.trees}
        machine = self.cpu("machine", t0, t1)
        ours = sum(v or 0.0 for v in got.values())
        return {**got, "machine": machine, "neighbours": None if machine is None else machine - ours}

    def feed_rate(self, t0: float, t1: float) -> float | None:
        """Records a second the dashboard's feed handed over between ``t0`` and ``t1`` (None: not reported)."""
        seen = [(s["t"], s["status"].feed_records) for s in self.between(t0, t1)
                if s["status"] is not None and s["status"].feed_records is not None]
        if len(seen) < 2 or seen[-1][0] <= seen[0][0]:
            return None
        return (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])


class Run:
    """The phases of one run over a started stack, browser and sampler; results land in ``rows``."""

    def __init__(self, s: Settings, stack: Stack, browser: Browser, sampler: Sampler) -> None:
        self.s, self.stack, self.browser, self.sampler = s, stack, browser, sampler
        self.viewers: list[Viewer] = []
        self.rows: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}
        self.rng = random.Random(s.seed)
        self.probe_ms: list[float | None] = []
        self.probe_phases: list[dict[str, float | None]] = []  # per probe: where its first plot's time went
        self.load_wall_ms = (0.0, 0.0)
        self.idle_scores_per_s: float | None = None  # scores the engine wrote a second over the idle baseline
        self._next_heap = self._next_retained = 0.0

    # the one loop everything waits in: it keeps every open viewer drained; nothing in it blocks on a tab
    def idle_for(self, seconds: float, until: Callable[[], bool] | None = None, *, heap: bool = False,
                 extra: Sequence[Viewer] = ()) -> bool:
        """Poll the viewers (and ``extra`` ones) for ``seconds``, or until ``until()``; True if it came."""
        end = time.monotonic() + seconds
        while True:
            self.sampler.check()
            viewers = [*self.viewers, *extra]
            for v in viewers:
                v.poll()
                v.weighed()
            now = time.monotonic()
            if heap and now >= self._next_heap:
                for v in self.viewers:
                    v.weigh("heap")
                self._next_heap = now + HEAP_EVERY_S
            if heap and now >= self._next_retained:
                # what a tab still holds after a full collection: the heap's sawtooth (garbage waiting for
                # the collector) otherwise dominates a slope over a few minutes
                for v in self.viewers:
                    v.weigh("retained")
                self._next_retained = now + RETAINED_EVERY_S
            if until is not None and until():
                return True
            if now >= end:
                return False
            pending = [v.draining for v in viewers if v.draining is not None]
            wait(pending, timeout=min(DRAIN_EVERY_S, max(0.0, end - now)), return_when=ALL_COMPLETED)
            time.sleep(max(0.0, min(DRAIN_EVERY_S - (time.monotonic() - now), end - time.monotonic())))

    def phases(self) -> None:
        s = self.s
        log(f"warm-up {s.warmup_s:.0f} s, then the idle baseline over {s.idle_s:.0f} s (0 viewers)")
        self.idle_for(s.warmup_s)
        written0 = self.scores_written()
        t0 = self.sampler.mark()
        self.idle_for(s.idle_s)
        idle = (t0, self.sampler.mark())
        self.idle_scores_per_s = written_rate(written0, self.scores_written(), idle[1] - idle[0])
        idle_cpu = self.sampler.cpu("dashboard", *idle)
        self.facts["status_json"] = self.stack.has_status
        log(f"idle: dashboard {idle_cpu or 0:.1f} % of a core; /status.json "
            f"{'present' if self.facts['status_json'] else 'absent (404)'}")
        self.floor()
        self.open_viewers()
        load = self.steady_load()
        self.report_idle_and_load(idle, load)
        self.orphan_drill()
        self.after_all_closed(idle)

    def floor(self) -> None:
        """The floor phase: ``viewers`` tabs of a bare page that draws only the Overview's two fast charts
        (``benchmarks/_floor_page.py``: the dashboard's chart code, rows from a websocket, no framework) under
        the same load, the dashboard server idle beside it. Its pictures a second are what any page drawing
        those charts could get here: a goal the floor misses is the machine's, not the page's."""
        s = self.s
        if s.floor_s <= 0:
            return
        from engine.config import load
        from streams.broker import free_port

        ring = load(self.stack.config, environ={}).dashboard.history_s * 1000 // s.tick_ms
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        server = Proc("floor", [sys.executable, "-m", "benchmarks._floor_page", "--port", str(port),
                                "--tick-ms", str(s.tick_ms), "--ring", str(ring)],
                      self.stack.config.parent / "floor.log")
        viewers: list[Viewer] = []
        try:
            wait_until(lambda: http_status(url) == 200, 60, f"the floor page on {url}", alive=server.check)
            log(f"floor: {s.viewers} tabs of the bare page for {s.floor_s:.0f} s")
            viewers = [open_viewer(self.browser, url, f"floor-{i}") for i in range(s.viewers)]
            self.idle_for(FIRST_PLOT_WAIT_S, until=lambda: all(map(_plotted, viewers)), extra=viewers)
            self.idle_for(s.warmup_s, extra=viewers)
            for v in viewers:
                v.rows.clear()
            wall0, t0, cpu0 = time.time() * 1e3, self.sampler.mark(), server.tree.cpu_s()
            self.idle_for(s.floor_s, extra=viewers)
            wall1, t1, cpu1 = time.time() * 1e3, self.sampler.mark(), server.tree.cpu_s()
            self.idle_for(FINAL_DRAIN_S, until=lambda: all(v.draining is None for v in viewers), extra=viewers)
        finally:
            for v in viewers:
                v.tab.close()
            server.stop()
        seconds = t1 - t0
        inside = [in_window(v.rows, wall0, wall1) for v in viewers]
        rates = [viewer_rates(rows, seconds) for rows in inside]
        frames = [f for _, f, _ in rates]
        tick = [r.screen_ms - r.t_ms for rows in inside for r in rows if r.t_ms is not None]
        cpu = self.sampler.breakdown(t0, t1)
        browser = cpu.get("browser")
        why = None if tick else "no rows reached the floor page's tabs"
        common = {"seconds": round(seconds, 1), "viewers": len(viewers), "ring_rows": ring}
        self.rows += [
            goal_row("floor_frames_per_s_slowest_viewer", min(frames) if tick else None, "frames/s", FRAMES_GOAL,
                     why_missing=why, per_viewer=[round(f, 2) for f in frames], **common,
                     note="the floor page (only the two fast charts, no framework) under the same load: what "
                          "any page drawing them gets on this machine"),
            goal_row("floor_frames_per_s_mean_viewer", float(np.mean(frames)) if tick else None, "frames/s",
                     FRAMES_GOAL, why_missing=why),
            goal_row("floor_updates_per_s_slowest_viewer", min(u for u, _, _ in rates) if tick else None, "updates/s",
                     UPDATES_GOAL, why_missing=why),
            goal_row("floor_tick_to_screen_p95_ms", quantiles(tick)["p95"], "ms", why_missing=why),
            goal_row("floor_cpu_pct_browser", browser, "% of a core",
                     per_viewer=None if browser is None else round(browser / len(viewers), 2)),
            goal_row("floor_cpu_pct_server", cpu_pct(cpu0, cpu1, t0, t1), "% of a core",
                     note="the floor page's own server (one websocket push per tick and tab)"),
            goal_row("floor_cpu_pct_machine", cpu.get("machine"), "% of a core", engine=_round(cpu.get("engine")),
                     broker=_round(cpu.get("broker")), producer=_round(cpu.get("producer")),
                     dashboard_idle=_round(cpu.get("dashboard")), neighbours=_round(cpu.get("neighbours"))),
        ]
        log(f"floor: slowest tab {min(frames) if tick else 0:.2f} pictures/s, mean "
            f"{float(np.mean(frames)) if tick else 0:.2f}; browser {browser or 0:.0f} % of a core")

    def scores_written(self) -> int:
        """Records the engine has written to its ``scores`` topic so far."""
        return high_watermarks(self.stack.bootstrap, self.stack.topics["scores"])

    def open_viewers(self) -> None:
        log(f"opening {self.s.viewers} viewers at once")
        self.viewers = [open_viewer(self.browser, self.stack.url, f"viewer-{i}") for i in range(self.s.viewers)]
        self.idle_for(FIRST_PLOT_WAIT_S, until=lambda: all(v.first_plot_ms is not None for v in self.viewers))
        firsts = [v.first_plot_ms for v in self.viewers]
        q = quantiles([f for f in firsts if f is not None])
        got = sum(f is not None for f in firsts)
        # the page alone (every root view drawn once), whether or not the timeline came: tells the two apart
        drawn = quantiles([v.last.rendered_ms for v in self.viewers if v.last and v.last.rendered_ms is not None])
        self.rows.append(goal_row("first_plot_initial_max_ms", q["max"], "ms", None,
                                  why_missing=f"{got} of {len(firsts)} viewers showed a plot within "
                                              f"{FIRST_PLOT_WAIT_S:.0f} s",
                                  viewers=len(firsts), plotted=got, p50=q["p50"], rendered_p50=drawn["p50"],
                                  rendered_max=drawn["max"], note="all viewers opened at the same moment"))
        log(f"{got}/{len(firsts)} viewers plotted; first plots p50 {_ms(q['p50'])}, max {_ms(q['max'])}")

    def steady_load(self) -> tuple[float, float]:
        s = self.s
        self.idle_for(s.warmup_s, heap=True)
        for v in self.viewers:
            v.heap.clear()
            v.retained.clear()
            v.rows.clear()
        self._next_heap = self._next_retained = 0.0  # first readings at the start of the phase
        log(f"steady load: {s.viewers} viewers for {s.duration_s:.0f} s, {s.probes} new-viewer probes")
        wall0 = time.time() * 1e3
        w0 = high_watermarks(self.stack.bootstrap, "dash-events")
        written0 = self.scores_written()
        t0 = self.sampler.mark()
        end = t0 + s.duration_s
        for i in range(s.probes):
            self.idle_for(max(0.0, t0 + s.duration_s * (i + 1) / (s.probes + 1) - time.monotonic()), heap=True)
            self.probe_ms.append(self.probe(min(PROBE_WAIT_S, max(1.0, end - time.monotonic()))))
        self.idle_for(max(0.0, end - time.monotonic()), heap=True)
        t1 = self.sampler.mark()
        self.load_wall_ms = (wall0, time.time() * 1e3)  # the pages' clock: Date.now()
        self.facts["events_per_s_produced"] = written_rate(w0, high_watermarks(self.stack.bootstrap, "dash-events"),
                                                           t1 - t0)
        # what the engine kept up with: the dashboard can only show what the engine wrote (the test broker,
        # tansu in memory, slowed the engine in the last minutes of 30-minute run 42)
        self.facts["scores_per_s_written"] = written_rate(written0, self.scores_written(), t1 - t0)
        log(f"load: {_per_s(self.facts['events_per_s_produced'])} events/s produced, the engine wrote "
            f"{_per_s(self.facts['scores_per_s_written'])} scores/s")
        for v in self.viewers:  # and one reading at its end
            v.weigh("retained")
        # the rows that arrived before the end, still in the pages: a few seconds to hand them over
        self.idle_for(FINAL_DRAIN_S, until=lambda: all(v.draining is None and not v.weighing for v in self.viewers))
        return t0, t1

    def probe(self, wait_s: float) -> float | None:
        """A new viewer under load: ms from navigation start to its first plot (None: none within ``wait_s``)."""
        v = open_viewer(self.browser, self.stack.url, f"probe-{len(self.probe_ms)}")
        self.idle_for(wait_s, until=lambda: v.first_plot_ms is not None, extra=[v])
        v.tab.close()
        phases = v.last.phases if v.last is not None else {}
        self.probe_phases.append(phases)
        log(f"probe {v.label}: first plot {_ms(v.first_plot_ms)} ("
            + ", ".join(f"{k.removesuffix('_ms')} {_ms(t)}" for k, t in phases.items()) + ")")
        return v.first_plot_ms

    def report_idle_and_load(self, idle: tuple[float, float], load: tuple[float, float]) -> None:
        s, smp = self.s, self.sampler
        t0, t1 = load
        minutes = (t1 - t0) / 60.0
        per_viewer: list[tuple[float, int]] = []
        silences: list[float] = []
        latency: list[float] = []
        tick: list[float] = []
        to_tick: list[float] = []  # the scores record's Kafka timestamp to the tick that counted it
        frames: list[float] = []
        painted = total = 0
        w0, w1 = self.load_wall_ms
        for v in self.viewers:
            rows = in_window(v.rows, w0, w1)
            rate, pictures, missed = viewer_rates(rows, t1 - t0)
            per_viewer.append((rate, missed))
            silences.append(round(longest_silence_s(rows, w0, w1), 1))
            frames.append(pictures)
            latency += [r.screen_ms - r.kafka_ts_ms for r in rows if r.kafka_ts_ms is not None]
            tick += [r.screen_ms - r.t_ms for r in rows if r.t_ms is not None]
            to_tick += [r.t_ms - r.kafka_ts_ms for r in rows if r.t_ms is not None and r.kafka_ts_ms is not None]
            painted += sum(r.painted_ms is not None for r in rows)
            total += len(rows)
        rates = [r for r, _ in per_viewer]
        no_rows = None if total else f"no {SOURCE_NAME} rows reached any viewer (the page has no such source?)"
        self.rows += [
            goal_row("updates_per_s_slowest_viewer", min(rates) if total else None, "updates/s", UPDATES_GOAL,
                     why_missing=no_rows, per_viewer=[round(r, 2) for r in rates], tick_ms=s.tick_ms,
                     longest_silence_s_per_viewer=silences),
            goal_row("updates_per_s_mean_viewer", float(np.mean(rates)) if total else None, "updates/s",
                     UPDATES_GOAL, why_missing=no_rows),
            goal_row("frames_per_s_slowest_viewer", min(frames) if total else None, "frames/s", FRAMES_GOAL,
                     why_missing=no_rows, per_viewer=[round(f, 2) for f in frames],
                     note="pictures with new rows a viewer saw per second (ticks that arrived or were drawn "
                          "together count once): the strict reading of updates/s"),
            goal_row("frames_per_s_mean_viewer", float(np.mean(frames)) if total else None, "frames/s",
                     FRAMES_GOAL, why_missing=no_rows),
            goal_row("missed_ticks_browser", float(sum(m for _, m in per_viewer)) if total else None, "ticks",
                     MISSED_GOAL, why_missing=no_rows, per_viewer=[m for _, m in per_viewer],
                     note="seq gaps seen by the viewers, summed"),
        ]
        st = [x["status"] for x in smp.between(t0, t1) if x["status"] is not None]
        self.rows.append(goal_row(
            "missed_updates_server", float(st[-1].missed_updates - st[0].missed_updates) if len(st) > 1 else None,
            "ticks", MISSED_GOAL, why_missing="the dashboard has no /status.json",
            ticks=st[-1].ticks - st[0].ticks if len(st) > 1 else None))
        # where a viewer that stopped updating stopped: its page's updates, a queued update that never ran, or
        # ticks held for an acknowledgement that never came (closed tabs awaiting expiry are left out)
        gaps = worst_page_gaps(st)
        if gaps:
            self.rows.append(goal_row("server_page_longest_gap_s", gaps[0]["since_update_s"], "s", pages=gaps,
                                      note="per connected page over the phase (/status.json every 2 s): its longest "
                                           "time without an update, longest-waiting queued update, and most "
                                           "ticks its browser had not acknowledged"))
            quiet = [g for g in gaps if g["since_update_s"] > 5 or g["pending_s"] > 5]
            if quiet:
                log(f"load: {len(quiet)} page(s) went over 5 s without an update: {quiet}")
        if len(st) > 1:
            self.rows.append(goal_row("server_ticks_per_s", (st[-1].ticks - st[0].ticks) / (t1 - t0), "ticks/s",
                                      UPDATES_GOAL, tick_ms=st[-1].tick_ms,
                                      note="ticks the server's clock closed: a starved clock folds late ticks"))
        for name, unit in EXTRA_COUNTS.items():
            ends = [getattr(x, name) for x in (st[:1] + st[-1:]) if getattr(x, name) is not None]
            if len(ends) == 2:
                self.rows.append(goal_row(f"{name}_server", float(ends[1] - ends[0]), unit,
                                          MISSED_GOAL if name == "update_errors" else None,
                                          note="the server's own count over the phase"))
        for name, why, note in (
                ("update_delay_p95_ms", "the server reports no update delays",
                 "how long a page's update waited for the server's event loop after its tick"),
                ("update_p95_ms", "the server reports no update durations",
                 "how long a page's update held the server's event loop (every other update and push waits)"),
                ("push_delay_p95_ms", "the server has no timeline socket",
                 "how long a tick's rows waited for the server's event loop before going out on the socket"),
                ("feed_delay_p95_ms", "the server reports no feed delays",
                 "from a consumed batch's newest Kafka timestamp to the server's feed handing it over"),
                ("feed_handler_p95_ms", "the server reports no feed handler times",
                 "how long the server's feed took to fold a consumed batch into the live state")):
            got = [getattr(x, name) for x in st if getattr(x, name) is not None]
            self.rows.append(goal_row(f"{name}_server", float(np.median(got)) if got else None, "ms", why_missing=why,
                                      max=max(got, default=None), samples=len(got),
                                      note=f"{note}: the median over the phase of the server's p95 of its last 1,000"))
        trims = [(x.heap_trims, x.heap_trim_released_mb) for x in (st[:1] + st[-1:]) if x.heap_trims is not None]
        if len(trims) == 2:
            self.rows.append(goal_row("heap_trim_released_mb_server", trims[1][1] - trims[0][1], "MB",
                                      trims=trims[1][0] - trims[0][0],
                                      note="RSS the server's heap trims gave back to the system over the phase"))
        answer = quantiles([ms for t, ms in self.stack.status_ms if t0 <= t <= t1])
        self.rows.append(goal_row("status_json_p95_ms", answer["p95"], "ms", why_missing="no /status.json",
                                  max=answer["max"], n=answer["n"], timeouts_whole_run=self.stack.status_timeouts,
                                  note="how long the server took to answer /status.json under the load"))
        cpu_load, cpu_idle = smp.cpu("dashboard", t0, t1), smp.cpu("dashboard", *idle)
        self.rows += [
            goal_row("dashboard_cpu_pct_viewers", cpu_load, "% of a core", CPU_GOAL, viewers=s.viewers),
            goal_row("dashboard_cpu_pct_idle", cpu_idle, "% of a core", None, note="0 viewers, engine running"),
            goal_row("dashboard_cpu_pct_per_viewer",
                     (cpu_load - cpu_idle) / s.viewers if cpu_load is not None and cpu_idle is not None else None,
                     "% of a core"),
        ]
        if len(st) > 1:  # the server's own account of its CPU, beside psutil's
            self.rows.append(goal_row("dashboard_cpu_pct_viewers_self_reported",
                                      cpu_pct(st[0].cpu_s, st[-1].cpu_s, t0, t1), "% of a core"))
        by_process = smp.breakdown(t0, t1)
        for name in ("engine", "browser", "broker", "producer", "benchmark", "machine"):
            self.rows.append(goal_row(f"cpu_pct_{name}_viewers", by_process.get(name), "% of a core",
                                      note="all cores together (200 = both)" if name == "machine" else None))
        self.rows.append(goal_row("cpu_pct_neighbours_viewers", by_process["neighbours"],
                                  "% of a core", note="machine busy minus this run's processes: other work "
                                                      "on the shared machine"))
        q = quantiles([p if p is not None else 15_000.0 for p in self.probe_ms])  # a timeout counts as 15 s
        timeouts = sum(p is None for p in self.probe_ms)
        self.rows += [
            goal_row("first_plot_new_viewer_p95_ms", q["p95"], "ms", FIRST_PLOT_GOAL, why_missing="no probes",
                     probes=[None if p is None else round(p) for p in self.probe_ms], timeouts_15s=timeouts,
                     phases_p50=phase_medians(self.probe_phases), phases=self.probe_phases),
            goal_row("first_plot_new_viewer_max_ms", q["max"], "ms", FIRST_PLOT_GOAL, why_missing="no probes"),
        ]
        lq, tq, dq = quantiles(latency), quantiles(tick), quantiles(to_tick)
        self.rows += [
            goal_row("data_to_screen_p95_ms", lq["p95"], "ms", LATENCY_GOAL, why_missing=no_rows or "no kafka_ts_ms",
                     rows=int(lq["n"] or 0), painted_share=round(painted / total, 4) if total else None),
            goal_row("data_to_screen_p50_ms", lq["p50"], "ms", why_missing=no_rows),
            goal_row("data_to_screen_p99_ms", lq["p99"], "ms", why_missing=no_rows),
            goal_row("tick_to_screen_p50_ms", tq["p50"], "ms", why_missing=no_rows),
            goal_row("tick_to_screen_p95_ms", tq["p95"], "ms", why_missing=no_rows),
            goal_row("tick_to_screen_p99_ms", tq["p99"], "ms", why_missing=no_rows),
            goal_row("data_to_tick_p50_ms", dq["p50"], "ms", why_missing=no_rows,
                     note="the scores record's Kafka timestamp to the end of the server tick that counted it"),
            goal_row("data_to_tick_p95_ms", dq["p95"], "ms", why_missing=no_rows),
        ]
        rss = [(x["t"], x["rss"] / MB) for x in smp.between(t0, t1) if x["rss"] is not None]
        idle_rss = [x["rss"] / MB for x in smp.between(*idle) if x["rss"] is not None]
        over = f"measured over {minutes:.1f} min (not extrapolated)"
        self.rows += [
            goal_row("server_rss_growth_mb", growth([r for _, r in rss]), "MB", SERVER_MEM_GOAL, note=over,
                     samples=len(rss), per_minute_mb=per_minute(rss, t0)),
            goal_row("server_rss_slope_mb_per_min", slope_per_min(*zip(*rss, strict=True)) if len(rss) > 2 else None,
                     "MB/min", note=over),
            goal_row("server_rss_mb_idle", float(np.mean(idle_rss)) if idle_rss else None, "MB"),
            goal_row("server_rss_mb_per_viewer",
                     (float(np.mean([r for _, r in rss])) - float(np.mean(idle_rss))) / s.viewers
                     if rss and idle_rss else None, "MB"),
        ]
        slopes = {v.label: slope_per_min([t for t, _ in v.heap], [b / MB for _, b in v.heap]) for v in self.viewers}
        known = [x for x in slopes.values() if x is not None]
        retained = {v.label: slope_per_min([t for t, _ in v.retained], [b / MB for _, b in v.retained])
                    for v in self.viewers}
        kept = [x for x in retained.values() if x is not None]
        self.rows += [
            goal_row("browser_heap_slope_mb_per_min_max", max(known) if known else None, "MB/min", BROWSER_MEM_GOAL,
                     why_missing="fewer than 3 readings per tab",
                     note=f"JSHeapUsedSize every 5 s, least squares per tab, after warm-up; {over}",
                     per_tab={k: None if x is None else round(x, 3) for k, x in slopes.items()}),
            goal_row("browser_heap_slope_mb_per_min_median", float(np.median(known)) if known else None, "MB/min"),
            goal_row("browser_heap_retained_slope_mb_per_min_max", max(kept) if kept else None, "MB/min",
                     BROWSER_MEM_GOAL, why_missing="fewer than 3 readings per tab", note=f"JSHeapUsedSize after a full GC every {RETAINED_EVERY_S:.0f} s, least "
                                            f"squares per tab; {over}",
                     per_tab={k: None if x is None else round(x, 3) for k, x in retained.items()}),
        ]
        errors = {v.label: v.tab.exceptions + (v.last.errors if v.last else []) for v in self.viewers}
        self.facts["page_errors"] = {k: e[:5] for k, e in errors.items() if e}
        # a hidden page gets no animation frames: the measurement needs every viewer on screen
        self.facts["hidden_viewers"] = sum(v.last is not None and v.last.visible is False for v in self.viewers)
        log(f"load: slowest viewer {min(rates) if total else 0:.1f} updates/s, dashboard {cpu_load or 0:.1f} % "
            f"of a core, data-to-screen p95 {lq['p95']} ms, machine {by_process['machine'] or 0:.0f} %")


    def orphan_drill(self) -> None:
        s = self.s
        actions = ["http"] * s.drill_http + ["early"] * s.drill_early + ["loaded"] * s.drill_loaded
        self.rng.shuffle(actions)
        log(f"orphan drill: {s.drill_http} page GETs, {s.drill_early} tabs closed 0-2 s in, "
            f"{s.drill_loaded} closed once loaded ({len(self.viewers)} viewers stay open)")
        before = self.stack.status(timeout_s=30.0)
        for kind in actions:
            if kind == "http":
                httpx.get(self.stack.url, timeout=30.0)
                continue
            v = open_viewer(self.browser, self.stack.url, f"drill-{kind}")
            if kind == "early":
                self.idle_for(self.rng.uniform(0.0, 2.0))
            else:
                self.idle_for(PROBE_WAIT_S, until=functools.partial(_plotted, v), extra=[v])
            v.tab.close()
        dropped = time.monotonic()
        open_now = len(self.viewers)
        if before is None:
            why = "no /status.json" if not self.stack.has_status else "/status.json did not answer within 30 s"
            self.rows.append(goal_row("orphan_sessions_left", None, "sessions", ORPHAN_GOAL,
                                      why_missing=f"{why} (sessions.live)"))
            return

        def clean() -> bool:  # the sampler's answers: waiting on the server here would stall the viewers
            st = self.sampler.latest(after=dropped)
            return st is not None and st.live <= open_now

        done = self.idle_for(s.drill_deadline_s, until=clean)
        after = self.stack.status(timeout_s=30.0)
        if after is None:
            self.rows.append(goal_row("orphan_sessions_left", None, "sessions", ORPHAN_GOAL,
                                      why_missing="/status.json did not answer within 30 s after the drill"))
            return
        left = after.live - open_now
        self.rows += [
            goal_row("orphan_sessions_left", float(max(left, 0)), "sessions", ORPHAN_GOAL,
                     live=after.live, viewers_open=open_now, deadline_s=s.drill_deadline_s,
                     created=after.created - before.created, destroyed=after.destroyed - before.destroyed,
                     dropped={"http": s.drill_http, "early": s.drill_early, "loaded": s.drill_loaded}),
            goal_row("orphan_cleanup_s", time.monotonic() - dropped if done else None, "s",
                     why_missing=f"sessions.live still {after.live} after {s.drill_deadline_s:.0f} s"),
        ]
        log(f"drill: {after.live} live sessions for {open_now} viewers "
            f"({'clean' if done else 'NOT clean'} after {time.monotonic() - dropped:.0f} s)")

    def after_all_closed(self, idle: tuple[float, float]) -> None:
        for v in self.viewers:
            v.tab.close()
        late = {v.label: v.late for v in self.viewers if v.late}
        self.viewers = []
        if self.stack.has_status:
            closed = time.monotonic()
            self.idle_for(self.s.drill_deadline_s,
                          until=lambda: (x := self.sampler.latest(after=closed)) is not None and x.live == 0)
        st = self.stack.status(timeout_s=30.0)
        log(f"all viewers closed; the dashboard's CPU over {self.s.idle_s:.0f} s")
        written0 = self.scores_written()
        t0 = self.sampler.mark()
        self.idle_for(self.s.idle_s)
        t1 = self.sampler.mark()
        written = written_rate(written0, self.scores_written(), t1 - t0)
        after = self.sampler.cpu("dashboard", t0, t1)
        idle_cpu = self.sampler.cpu("dashboard", *idle)
        # back to idle, within the noise of a shared machine: 25 % of the baseline or 2 points, the larger
        bound = None if idle_cpu is None else idle_cpu + max(2.0, 0.25 * idle_cpu)
        goal = Goal("<=", bound, f"<= idle {idle_cpu:.1f} % + noise") if bound is not None else None
        # the server's work with no one watching is its feed: after the load the engine may still be working
        # off the backlog the load left, and the feed reads what it writes. Both windows, side by side
        rate, rate_idle = self.sampler.feed_rate(t0, t1), self.sampler.feed_rate(*idle)
        by_process, by_process_idle = self.sampler.breakdown(t0, t1), self.sampler.breakdown(*idle)
        self.rows.append(goal_row("dashboard_cpu_pct_after_all_closed", after, "% of a core", goal,
                                  idle_pct=idle_cpu, sessions_live=None if st is None else st.live,
                                  machine_pct=by_process["machine"], machine_pct_idle=by_process_idle["machine"],
                                  feed_records_per_s=_round(rate), feed_records_per_s_idle=_round(rate_idle),
                                  scores_per_s_written=_round(written),
                                  scores_per_s_written_idle=_round(self.idle_scores_per_s),
                                  cpu_pct_by_process={k: _round(v) for k, v in by_process.items()},
                                  cpu_pct_by_process_idle={k: _round(v) for k, v in by_process_idle.items()}))
        log(f"after all closed: dashboard {after or 0:.1f} % of a core (idle {idle_cpu or 0:.1f} %), its feed "
            f"{rate or 0:,.0f} records/s (idle {rate_idle or 0:,.0f}); the engine wrote {_per_s(written)} scores/s "
            f"(idle {_per_s(self.idle_scores_per_s)}) at {by_process.get('engine') or 0:.0f} % of a core "
            f"(idle {by_process_idle.get('engine') or 0:.0f} %), machine {by_process['machine'] or 0:.0f} %")
        self.facts["drain_rounds_late"] = late


# -- entry point -----------------------------------------------------------------------------------------
def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    return Settings(
        quick=quick, viewers=args.viewers, rate=args.rate,
        duration_s=args.duration_s if args.duration_s is not None else (120.0 if quick else 1800.0),
        tick_ms=args.tick_ms, probes=args.probes if args.probes is not None else (3 if quick else 15),
        idle_s=15.0 if quick else 60.0, warmup_s=10.0 if quick else 30.0, engine_workers=args.engine_workers,
        partitions=args.partitions, drill_http=4 if quick else 20, drill_early=4 if quick else 20,
        drill_loaded=3 if quick else 10, drill_deadline_s=60.0, seed=args.seed, chromium=args.chromium,
        dashboard_command=args.dashboard_command, dashboard_options=dict(args.dashboard_option),
        browser_priority=args.browser_priority,
        floor_s=args.floor_s if args.floor_s is not None else (60.0 if quick else 300.0),
    )


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--dashboard-option``, the value read as YAML (``true``, ``30``, ``warm``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="120 s of load, 3 probes, a 60 s floor, short drill (about 7 minutes)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "dashboard.json")
    p.add_argument("--viewers", type=int, default=10, help="tabs open during the load (default 10)")
    p.add_argument("--rate", type=float, default=2_000.0, help="events/s produced into the input topic")
    p.add_argument("--duration-s", type=float, default=None, help="steady-load phase (default 1800; quick 120)")
    p.add_argument("--tick-ms", type=int, default=100, help="the dashboard's tick (default 100: 10 updates/s)")
    p.add_argument("--probes", type=int, default=None, help="new viewers opened during the load (quick 3)")
    p.add_argument("--engine-workers", type=int, default=1, help="Dask workers of the engine (default 1)")
    p.add_argument("--partitions", type=int, default=2, help="partitions of the input topic (default 2)")
    p.add_argument("--chromium", default=None, help="Chromium executable (default /usr/bin/chromium)")
    p.add_argument("--dashboard-command", default=None, metavar="CMD",
                   help="another dashboard server to measure: its command line, with {config}, {port} and {python} "
                        "filled in (default: python -m engine.cli dashboard --config {config} --no-browser)")
    p.add_argument("--keep", type=Path, default=None, help="keep the run's logs and config in this folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dashboard-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="a dashboard setting over configs/demo.yaml's, e.g. reuse_sessions=false (repeatable)")
    p.add_argument("--browser-priority", choices=PRIORITIES, default=DEFAULT_PRIORITY,
                   help="the browser's CPU priority. user (default): as for a viewer who is not root; chromium: "
                        "what Chromium sets itself, which as root raises its browser and GPU processes above the "
                        "servers (the rig of runs up to 50); idle: only the CPU the engine, broker and servers "
                        "leave, as if the viewers' browsers ran on their own machines (a diagnostic that tells "
                        "the servers' delays from those of ten tabs sharing their cores)")
    p.add_argument("--floor-s", type=float, default=None,
                   help="seconds of the floor phase before the viewers open (default 300; quick 60; 0: none): as "
                        "many tabs of a bare page that draws only the Overview's two fast charts with the "
                        "dashboard's own code, from a websocket, under the same load (benchmarks/_floor_page.py). "
                        "What they get is what any page drawing those charts could get on this machine")
    args = p.parse_args(argv)
    if args.floor_s is not None and args.floor_s < 0:
        p.error(f"--floor-s must be 0 or more, not {args.floor_s}")
    for name in ("viewers", "tick_ms", "engine_workers", "partitions"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.rate <= 0 or (args.duration_s is not None and args.duration_s <= 0):
        p.error(f"--rate and --duration-s must be positive, not {args.rate} and {args.duration_s}")
    started = time.monotonic()
    s = settings_from(args)
    settings: dict[str, Any] = dataclasses.asdict(s)
    settings.update(browser_args=" ".join(DEFAULT_ARGS), browser_window="1400x1000, one window per viewer",
                    config="configs/demo.yaml, own topics, lake and registry")
    chromium = find_chromium(args.chromium)
    if chromium is None:
        reason = no_chromium(args.chromium)
        log(f"skipped: {reason}")
        rows = [skipped(reason)]
        return _finish(args.out, rows, settings, started)
    settings["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    rows, facts, error = run(s, chromium, args.keep)
    settings.update(facts)
    settings["load_average_end"] = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 min: the neighbours' noise
    _finish(args.out, rows, settings, started)
    return 1 if error is not None else 0


def run(s: Settings, chromium: str, keep: Path | None) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    """One whole run (load, browser, phases): the rows, the facts for the settings, and why it failed (None: it
    did not). A run that fails part-way keeps the rows it measured."""
    rows: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}
    error: str | None = None
    try:
        with ExitStack() as stack:
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                workdir = keep
            else:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="isostream-dash-bench-")))
            load = stack.enter_context(load_stack(s, workdir))
            browser = stack.enter_context(Browser(chromium, priority=s.browser_priority))
            sampler = stack.enter_context(Sampler(load, browser))
            r = Run(s, load, browser, sampler)
            rows, facts = r.rows, r.facts
            try:
                r.phases()
            except (BrowserError, BenchError, httpx.HTTPError) as err:
                error = f"{type(err).__name__}: {err}"
                for name, proc in load.procs.items():  # while the logs still exist
                    log(f"{name} log tail: {proc.tail(600)}")
            facts.update(tick_key=load.tick_key, workdir=str(workdir) if keep else None,
                         dashboard_log_errors=_log_errors(load.procs["dashboard"]),
                         status_json_timeouts=load.status_timeouts)
    except (BrowserError, BenchError, httpx.HTTPError) as err:  # the load or the browser did not start
        error = f"{type(err).__name__}: {err}"
    if error is not None:
        log(f"failed: {error}")
        rows.append(row("failed", None, "failed", failed=True, reason=error))  # type: ignore[arg-type]
    return rows, facts, error


def _log_errors(proc: Proc) -> dict[str, Any]:
    """ERROR lines of the dashboard server's log: how many, and the first few with their tracebacks (the
    run's folder, and so the log, is gone afterwards unless ``--keep``)."""
    return log_errors(proc.tail(10_000_000))


def log_errors(text: str, keep: int = 5, lines_each: int = 40) -> dict[str, Any]:
    """The ERROR records of a log: how many, and the first ``keep``, each with the lines that follow it up to
    the next record (a traceback).

    >>> log_errors("2026-12-01 10:00:00 INFO a\\n2026-12-01 10:00:01 ERROR b\\nTraceback:\\n  x\\n2026-12-01 10:00:02 INFO c")
    {'count': 1, 'first': ['2026-12-01 10:00:01 ERROR b\\nTraceback:\\n  x']}
    """
    records: list[list[str]] = []
    inside = False
    for ln in text.splitlines():
        starts = len(ln) > 19 and ln[:4].isdigit() and ln[4] == "-" and ln[10] == " "
        if starts:
            inside = " ERROR " in ln
            if inside:
                records.append([ln])
        elif inside and len(records) <= keep and len(records[-1]) < lines_each:
            records[-1].append(ln)
    return {"count": len(records), "first": ["\n".join(r) for r in records[:keep]]}


def _finish(out: Path, rows: list[dict[str, Any]], settings: dict[str, Any], started: float) -> int:
    settings["seconds"] = round(time.monotonic() - started, 1)
    path = write_results(out, "dashboard", rows, settings)
    log(f"wrote {path} in {settings['seconds']:.0f} s")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
