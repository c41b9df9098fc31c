"""The live dashboard: a Panel app over one shared :class:`~dashboards.state.LiveState`.

Every browser session gets its own :class:`Dashboard` (Bokeh models are per document) but no session reads
Kafka or aggregates anything: once per ``refresh_ms`` it takes the shared, cached snapshot and, only if that
changed, pushes the small frames into ``hv.streams.Pipe`` streams, which patch the existing Bokeh data
sources instead of rebuilding plots.

Three ways to run it:

- ``isostream dashboard --config FILE`` (``run_server``: blocks until Ctrl-C);
- ``serve(state, port=...)`` from Python (``isostream demo``, the tests): a server thread with ``.stop()``;
- ``ISOSTREAM_CONFIG=FILE panel serve dashboards/app.py`` (the ``pn.state.served`` block at the bottom).
"""

from __future__ import annotations

import atexit
import html
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import holoviews as hv
import hvplot.pandas  # noqa: F401 - registers DataFrame.hvplot
import numpy as np
import panel as pn
import param

from dashboards.aggregate import Snapshot
from dashboards.state import LiveState
from engine.config import Config

hv.extension("bokeh", logo=False)

TITLE = "isostream · live anomaly detection"
PLOT_OPTS: dict[str, Any] = {
    "responsive": True,
    "height": 260,
    "framewise": True,  # rescale axes to each new frame: counts grow and shrink as the stream moves
    "show_grid": True,
    "toolbar": None,
    "default_tools": [],
}
ACCENT = "#1f77b4"
ALARM = "#d62728"


class Dashboard(pn.viewable.Viewer):
    """Throughput, score distribution, anomalies over time, recent alerts and KPIs for one browser session.

    >>> state = LiveState({"bootstrap.servers": "unused:9092"})
    >>> view = Dashboard(state)  # draws the current snapshot
    >>> state.ingest_scores([b'{"score": 0.8, "is_anomaly": true}'])
    1
    >>> view.refresh()  # what a served session does every refresh_ms; False when nothing changed
    True
    """

    refresh_ms = param.Integer(default=1000, bounds=(100, None), doc="how often this session pulls the snapshot")

    def __init__(self, state: LiveState, **params: Any) -> None:
        super().__init__(**params)
        self.state = state
        self._drawn: Snapshot | None = None
        snap = state.snapshot()
        self._timeline = hv.streams.Pipe(data=snap.timeline)
        self._histogram = hv.streams.Pipe(data=(snap.histogram, snap.threshold))
        self._kpis = {
            name: pn.indicators.String(name=label, value="–", font_size="22pt", title_size="10pt",
                                       css_classes=[f"kpi-{name}"], margin=(5, 20))
            for name, label in (
                ("events", "events scored"), ("anomalies", "anomalies"), ("rate", "events / s"),
                ("dead_letters", "dead letters"), ("lag", "consumer lag"), ("model", "model version"),
            )
        }
        self._alerts = pn.pane.DataFrame(snap.alerts, index=False, sizing_mode="stretch_width",
                                         max_height=420, css_classes=["alerts-table"],
                                         styles={"overflow-x": "auto"})
        # plain HTML, not Markdown: it changes every second in every session, and parsing is not free
        self._status = pn.pane.HTML("", css_classes=["status-line"], margin=(0, 10))
        self._layout = pn.Column(
            pn.pane.Markdown(f"## {TITLE}", margin=(0, 10)),
            self._status,
            pn.FlexBox(*self._kpis.values()),
            pn.GridBox(
                pn.pane.HoloViews(hv.DynamicMap(_throughput, streams=[self._timeline]), sizing_mode="stretch_width"),
                pn.pane.HoloViews(hv.DynamicMap(_anomalies, streams=[self._timeline]), sizing_mode="stretch_width"),
                pn.pane.HoloViews(hv.DynamicMap(_histogram, streams=[self._histogram]),
                                  sizing_mode="stretch_width"),
                ncols=3, sizing_mode="stretch_width",
            ),
            # full width: alerts carry the input fields and an explanation, too wide for a third of a row
            pn.pane.Markdown("#### Most recent alerts", margin=(0, 10)),
            self._alerts,
            sizing_mode="stretch_width",
        )
        self.refresh()

    def refresh(self) -> bool:
        """Pull the shared snapshot and update what changed; False when there was nothing new to draw.

        Each part is compared with what this session last drew (frames by identity: the state reuses the
        same objects while their inputs are unchanged), because every update costs a HoloViews re-render
        of that plot for this session.
        """
        snap = self.state.snapshot()
        last, self._drawn = self._drawn, snap
        if last is snap:
            return False
        # a new snapshot means new data or a new second: the window slides even when the stream is idle
        self._timeline.send(snap.timeline)
        self._status.object = _status_line(snap, self.state)
        if last is None or snap.histogram is not last.histogram or snap.threshold != last.threshold:
            self._histogram.send((snap.histogram, snap.threshold))
        if last is None or snap.alerts is not last.alerts:
            self._alerts.object = snap.alerts
        k = snap.kpis
        values = {
            "events": f"{k.events:,}", "anomalies": f"{k.anomalies:,}",
            "rate": "–" if k.events_per_s is None else f"{k.events_per_s:,.0f}",
            "dead_letters": f"{k.dead_letters:,}", "lag": "–" if k.lag is None else f"{k.lag:,}",
            "model": k.model_version or "–",
        }
        for name, value in values.items():
            if self._kpis[name].value != value:  # unchanged widgets send nothing to the browser
                self._kpis[name].value = value
        return True

    def _tick(self) -> None:
        self.refresh()

    def __panel__(self) -> pn.viewable.Viewable:
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:  # served: one timer per browser session
            pn.state.add_periodic_callback(self._tick, period=self.refresh_ms)
        return self._layout


# -- plots: pure functions of the piped frames, so each update patches data instead of rebuilding figures --
def _throughput(data: Any) -> hv.Area:
    # size given to hvplot itself: otherwise it fixes width=700, which overrides responsive and clips the plot
    return data.hvplot.area(x="time", y="events", responsive=True, height=PLOT_OPTS["height"]).opts(
        title="Throughput (events / s)", xlabel="time (UTC)", ylabel="events / s", color=ACCENT, alpha=0.6,
        ylim=(0, None), **PLOT_OPTS,
    )


def _anomalies(data: Any) -> hv.Spikes:
    frame = data.assign(anomaly_pct=data["anomaly_rate"] * 100.0)
    total, flagged = int(frame["events"].sum()), int(frame["anomalies"].sum())
    pct = 100.0 * flagged / total if total else 0.0
    # spikes, not an area: anomalies are sparse, and an area would smear one flagged second over its neighbours
    return hv.Spikes(frame, "time", ["anomalies", "anomaly_pct"]).opts(
        title=f"Anomalies / s · {flagged:,} in window ({pct:.2f} %)", xlabel="time (UTC)",
        ylabel="anomalies / s", color=ALARM, line_width=3, ylim=(0, None), **PLOT_OPTS,
    )


def _histogram(data: Any) -> hv.Overlay:
    frame, threshold = data
    edges = np.append(frame["left"].to_numpy(), frame["right"].to_numpy()[-1:])
    # framewise on the element too: in an overlay the histogram's own range otherwise sticks to the first frame.
    # hv.Histogram, not hvplot.hist: the state ships pre-binned counts (41 fixed edges), not raw scores
    hist = hv.Histogram((edges, frame["count"].to_numpy()), kdims="score", vdims="count").opts(
        color=ACCENT, alpha=0.7, line_color="white", framewise=True
    )
    label = "no threshold yet" if threshold is None else f"threshold {threshold:.3f}"
    line = hv.VLine(np.nan if threshold is None else threshold).opts(color=ALARM, line_dash="dashed",
                                                                     line_width=2)
    return (hist * line).opts(
        title=f"Recent scores · {label}", xlabel="anomaly score", ylabel="events",
        xlim=(0.0, 1.0), **PLOT_OPTS,
    )


def _status_line(snap: Snapshot, state: LiveState) -> str:
    at = datetime.fromtimestamp(snap.taken_at, tz=timezone.utc).strftime("%H:%M:%S UTC")
    feed = "consuming" if state.running else "not consuming"
    bad = f" · {snap.kpis.bad_records:,} bad records skipped" if snap.kpis.bad_records else ""
    names = ", ".join(f"<code>{html.escape(t)}</code>" for t in (state.topics.scores, state.topics.stats,
                                                                 state.topics.alerts))
    return (f"{feed} {names} · {snap.scores_in_histogram:,} recent scores · last {state.history_s} s · "
            f"updated {at}{bad}")


# -- serving ----------------------------------------------------------------------------------------------
class ServerHandle:
    """A Panel server running on its own thread; ``stop()`` shuts it down and frees the port."""

    def __init__(self, thread: Any, host: str, port: int) -> None:
        self._thread = thread
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return bool(self._thread.is_alive())

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._thread.is_alive():
            self._thread.stop()
            self._thread.join(timeout=timeout_s)


def _wait_listening(host: str, port: int, thread: Any, timeout_s: float) -> None:
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and thread.is_alive():
        try:
            with socket.create_connection((probe, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    msg = f"dashboard: Panel server did not listen on {host}:{port} within {timeout_s:.0f}s"
    raise RuntimeError(msg)


def serve(
    state: LiveState,
    host: str = "127.0.0.1",
    port: int = 5006,
    show: bool = False,
    threaded: bool = True,
    *,
    refresh_ms: int = 1000,
    ready_timeout_s: float = 30.0,
) -> ServerHandle:
    """Serve :class:`Dashboard` at ``http://host:port/``, one session per browser tab, all over ``state``.

    ``threaded=True`` (default) returns once the server listens; ``threaded=False`` blocks until Ctrl-C.
    The caller starts and stops ``state`` (its consumer outlives any one server).
    """
    origins = ["*"] if host in ("0.0.0.0", "::", "") else [f"{host}:{port}", f"localhost:{port}",
                                                              f"127.0.0.1:{port}"]

    def session() -> Dashboard:  # called per browser session, inside its document
        return Dashboard(state, refresh_ms=refresh_ms)

    server = pn.serve(session, port=port, address=host, websocket_origin=origins, show=show, start=True,
                      title=TITLE, verbose=False, location=False, threaded=threaded)
    if not threaded:  # the IOLoop ran until Ctrl-C and has stopped
        server.stop()
        return ServerHandle(_Finished(), host, port)
    _wait_listening(host, port, server, ready_timeout_s)
    return ServerHandle(server, host, port)


class _Finished:
    """Stands in for the server thread of a blocking ``serve`` that already returned."""

    def is_alive(self) -> bool:
        return False


def run_server(cfg: Config, *, open_browser: bool, stop: threading.Event | None = None) -> None:
    """``isostream dashboard``: consume ``cfg``'s output topics and serve until Ctrl-C, SIGTERM or ``stop``.

    ``stop`` lets a caller on another thread (tests, an embedding program) end it; signals only reach the
    main thread.
    """
    state = LiveState(cfg.kafka.client_settings(), cfg.kafka.topics, history_s=cfg.dashboard.history_s)
    state.start()
    done = stop if stop is not None else threading.Event()
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda *_: done.set())
        except ValueError:  # not the main thread: whoever called us owns the signals
            pass
    handle = None
    try:
        handle = serve(state, host=cfg.dashboard.host, port=cfg.dashboard.port, show=open_browser,
                       refresh_ms=cfg.dashboard.refresh_ms)
        print(f"isostream dashboard on {handle.url} (Ctrl-C stops)", file=sys.stderr)
        while handle.running and not done.wait(0.5):
            pass
    finally:
        if handle is not None:
            handle.stop()
        state.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)


def _served_state(cfg: Config) -> LiveState:
    """The process-wide LiveState for ``panel serve``, which re-runs this file for every session."""
    state = LiveState(cfg.kafka.client_settings(), cfg.kafka.topics, history_s=cfg.dashboard.history_s)
    atexit.register(state.stop)  # close the consumer when the server process exits normally
    return state.start()


if pn.state.served:
    from engine.config import load

    pn.extension()
    _cfg = load(os.environ.get("ISOSTREAM_CONFIG") or None)
    _state: LiveState = pn.state.as_cached("isostream-live-state", lambda: _served_state(_cfg))
    Dashboard(_state, refresh_ms=_cfg.dashboard.refresh_ms).servable(title=TITLE)
