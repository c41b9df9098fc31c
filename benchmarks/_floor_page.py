"""The floor of a live page, for the dashboard benchmark: the Overview's two fast charts (throughput and
anomalies), drawn by the dashboard's own code (``dashboards/livechart.js``) from rows that a bare websocket
pushes every tick, with no Bokeh, Panel, numbers, tables or acknowledgements.

Why: the benchmark's ten tabs share two cores with the engine, the broker and the servers. What ten tabs of
*this* page draw under that load says whether any page could meet the issue's 10 pictures a second there,
or whether the machine cannot. A frame here costs what the real page's frames cost at the least: the same
two canvases, the same size, the same drawing, the same ring of rows.

The page presents its ring to the benchmark's collector (``benchmarks.dashboard.COLLECTOR_JS``) as a Bokeh
document would: ``window.Bokeh.documents`` holds one document whose model ``live-timeline`` has the columns
(``get_length``, ``get_column``) and a ``streaming`` signal. So its rows, frames and latencies are counted by
the same code as the real page's.

Usage: ``python -m benchmarks._floor_page --port P [--tick-ms 100] [--ring 1200]`` (serves until stopped).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import tornado.ioloop
import tornado.web
import tornado.websocket

LIVECHART_JS = Path(__file__).resolve().parent.parent / "dashboards" / "livechart.js"
COLUMNS = ("t", "seq", "kafka_ts_ms", "events_per_s", "anomalies_per_s")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>isostream floor page</title>
<style>
body { margin: 10px; font-family: sans-serif; }
.grid { display: grid; grid-template-columns: 1fr 1fr 1fr; gap: 10px; }
canvas { display: block; width: 100%; height: 220px; }
</style></head>
<body><h3>Floor: the Overview's two fast charts, nothing else</h3>
<div class="grid"><div><canvas id="thr"></canvas></div><div><canvas id="ano"></canvas></div><div></div></div>
<script type="module">
import {paint} from "/livechart.js";
const RING = __RING__;
const data = {};
for (const c of __COLUMNS__) data[c] = [];
const listeners = [];
const doc = {get_model_by_name: (name) => (name === "live-timeline" ? src : null)};
const src = {
  data, document: doc,
  get_length: () => data.t.length,
  get_column: (c) => data[c],
  streaming: {connect: (f) => listeners.push(f)},
};
let painted = false;
// what the benchmark's collector looks for: a document with the source, and views that have drawn
window.Bokeh = {documents: [doc], index: [{has_finished: () => painted}]};
const charts = [
  ["thr", {heading: "Throughput", y_label: "events / s", kind: "lines", x: "t", x_label: "time (UTC)",
           series: [{column: "events_per_s", label: "events / s", color: "#1f77b4"}],
           empty_text: "waiting for the first rows"}],
  ["ano", {heading: "Anomalies", y_label: "anomalies / s", kind: "lines", x: "t", x_label: "time (UTC)",
           series: [{column: "anomalies_per_s", label: "anomalies / s", color: "#d62728"}],
           empty_text: "waiting for the first rows"}],
].map(([id, model]) => { const c = document.getElementById(id); return [c, c.getContext("2d"), model]; });
let queued = false;
function draw() {
  queued = false;
  for (const [canvas, ctx, model] of charts) paint(canvas, ctx, model, src);
  painted = true;
}
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.onmessage = (e) => {
  const rows = JSON.parse(e.data);
  for (const c of __COLUMNS__) {
    const col = data[c];
    col.push(...rows[c]);
    if (col.length > RING) col.splice(0, col.length - RING);
  }
  for (const f of listeners) f();
  if (!queued) { queued = true; requestAnimationFrame(draw); }
};
</script></body></html>
"""


class Ticker:
    """The rows: one per tick, a ring of the last ``ring``, sent to every open socket as it is made."""

    def __init__(self, tick_ms: int, ring: int, seed: int = 0) -> None:
        self.tick_ms = tick_ms
        self.rows: deque[tuple[float, ...]] = deque(maxlen=ring)
        self.sockets: set[Socket] = set()
        self._rng = random.Random(seed)
        self._seq = 0
        now = time.time() * 1e3
        for back in range(ring, 0, -1):  # a full ring from the start: a page draws what the real one does
            self.rows.append(self._row(now - back * tick_ms))

    def _row(self, at_ms: float) -> tuple[float, ...]:
        self._seq += 1
        rate = 2_000.0 + 150.0 * math.sin(at_ms / 20_000.0) + self._rng.gauss(0.0, 40.0)
        return (at_ms, float(self._seq), at_ms, rate, float(self._rng.randint(0, 40)))

    def tick(self) -> None:
        row = self._row(time.time() * 1e3)
        self.rows.append(row)
        message = columns([row])
        for sock in list(self.sockets):
            sock.send(message)


def columns(rows: Any) -> str:
    """Rows as the page reads them: a JSON object of column lists."""
    return json.dumps({c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)})


class Socket(tornado.websocket.WebSocketHandler):
    def initialize(self, ticker: Ticker) -> None:
        self.ticker = ticker

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.send(columns(self.ticker.rows))  # the whole ring first, as the real page's first frame
        self.ticker.sockets.add(self)

    def send(self, message: str) -> None:
        try:
            self.write_message(message)
        except tornado.websocket.WebSocketClosedError:
            self.ticker.sockets.discard(self)

    def on_close(self) -> None:
        self.ticker.sockets.discard(self)


class Page(tornado.web.RequestHandler):
    def initialize(self, html: str) -> None:
        self.html = html

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(self.html)


def page_html(ring: int) -> str:
    """The floor page for a ring of ``ring`` rows."""
    return PAGE.replace("__RING__", str(ring)).replace("__COLUMNS__", json.dumps(list(COLUMNS)))


def app(ticker: Ticker) -> tornado.web.Application:
    """The page at ``/``, the dashboard's chart module at ``/livechart.js``, the rows at ``/ws``."""
    return tornado.web.Application([
        (r"/", Page, {"html": page_html(ticker.rows.maxlen or 0)}),
        (r"/(livechart\.js)", tornado.web.StaticFileHandler, {"path": str(LIVECHART_JS.parent)}),
        (r"/ws", Socket, {"ticker": ticker}),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks._floor_page", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tick-ms", type=int, default=100, help="a row every this many ms (default 100)")
    p.add_argument("--ring", type=int, default=1_200, help="rows a page keeps (default 1200: the dashboard's)")
    args = p.parse_args(argv)
    ticker = Ticker(args.tick_ms, args.ring)
    app(ticker).listen(args.port, address="127.0.0.1")
    loop = tornado.ioloop.IOLoop.current()
    tornado.ioloop.PeriodicCallback(ticker.tick, args.tick_ms).start()
    print(f"floor page on http://127.0.0.1:{args.port}/, a row every {args.tick_ms} ms", flush=True)
    loop.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
