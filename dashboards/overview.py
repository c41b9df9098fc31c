"""The Overview page: headline numbers, throughput, anomalies, latency, lag, scores, dead letters, latest alerts.

Every tick streams the ring's new rows into one ``ColumnDataSource`` (``live-timeline``) that the fast time
charts share (drawn by :class:`~dashboards.livechart.LiveChart`: a tab redraws them ten times a second); the
histogram, tables and numbers are re-sent only when their own data changed, at most once a second.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, CustomJS

from dashboards.hub import Hub
from dashboards.live_page import LivePage
from dashboards.livechart import LiveChart, line
from dashboards.state import epoch_ms
from dashboards.theme import (
    ACCENT,
    ALARM,
    CONTAINED,
    MUTED,
    SCROLLED,
    as_lists,
    data_of,
    empty,
    html_pane,
    kpis_html,
    number,
    source,
    table_html,
)
from dashboards.ticks import COLUMNS

#: the engine's gauges change once a second (its metrics records): drawn then, not on every tick
GAUGES = ("t", "seq", "lag", "latency_p50_ms", "latency_p99_ms")
FAST = tuple(c for c in COLUMNS if c not in GAUGES[2:])

SLOW_EVERY_S = 1.0  # tables, histogram and numbers: people do not read faster
#: ticks a browser may be behind before its page holds back: measured with 10 windows on 2 cores, the
#: browsers fell seconds behind and the rows queued up in them; held back, they wait on the server and go
#: out together in one update the browser draws once. Not fewer: under that load an acknowledgement's round
#: trip (ACK_MS, a starved tab, the server's event loop at ~200 ms p95) is itself ~5 ticks, and at 5 the
#: pages held back browsers that were keeping up (quick benchmark: 1,218-1,776 held ticks at 5, 230-454 at
#: 10; the slowest tab's pictures 5.2-6.2/s at 5, 6.2-6.9/s at 10)
IN_FLIGHT_TICKS = 10
#: the browser acknowledges the streamed updates it has applied: a property change Bokeh syncs back, with the
#: newest seq at most every ACK_MS (one message per update was a patch, a reply and a server callback per tick
#: and viewer; on a quiet machine a browser that keeps up stays ~2 ticks behind its acknowledgements).
#: Deferred: a change made while BokehJS applies the server's patch carries the patch's setter and is not sent.
#: Set on a model nothing draws: a tag on the timeline's own source would make its charts redraw for nothing
ACK_MS = 200
ACK_JS = ("ack._isoSeq = cb_obj.data.seq[cb_obj.data.seq.length - 1];"
          "if (!ack._isoDue) { ack._isoDue = true;"
          f" setTimeout(() => {{ ack._isoDue = false; ack.tags = [ack._isoSeq] }}, {ACK_MS}) }}")


def alert_link(key_field: str | None) -> Any:
    """A cell renderer: the alert's key as a link to its Keys view at the alert's time."""

    def cell(value: Any, rec: dict[str, Any]) -> str:
        if value is None:
            return "–"
        at = rec.get("_at_ms")
        query = f"key={quote(str(value))}" + (f"&at={int(at)}" if isinstance(at, int | float) and at == at else "")
        return f'<a href="/keys?{query}">{html.escape(str(value))}</a>'

    return cell


class Overview(LivePage):
    """One browser session's Overview page."""

    title = "Overview"
    path = "/"

    def __init__(self, hub: Hub, **params: Any) -> None:
        super().__init__(hub, **params)
        state = hub.state
        self._seq = -state.ticks.size  # nothing drawn yet: the first update sends the whole ring
        self._slow = self.every(SLOW_EVERY_S)
        self._drawn: dict[str, int] = {}
        self.timeline = source(FAST, name="live-timeline")
        self.gauges = source(GAUGES, name="live-gauges")
        self._gauge_seq = self._seq
        self._acked: int | None = None  # None: no browser acknowledges (not served): no flow control
        self._token: str | None = None  # set when served with the timeline's own socket (dashboards/push.py)
        self._figures = self._time_figures()
        self.hist = ColumnDataSource({"left": [], "right": [], "count": []}, name="live-histogram")
        self._hist = LiveChart(source=self.hist, kind="bars", x="left", x_to="right", x_start=0.0, x_end=1.0,
                               series=[line("count", "events", ACCENT)], heading="Recent scores",
                               x_label="anomaly score", y_label="events", marker_color=ALARM,
                               empty_text="waiting for the engine's first scores")
        # the parts that change every second are contained: their new text is laid out and painted on its own,
        # not with the whole page (measured per tab at 10 updates/s: 16.6 -> 14.5 % of a core)
        self._kpis = html_pane("", sizing_mode="stretch_width", css_classes=["iso-kpi-row"], styles=CONTAINED)
        self._dead = html_pane(empty("no dead letters: every record so far decoded"), sizing_mode="stretch_width")
        self._alerts = html_pane(empty("waiting for the first alert on the alerts topic"),
                                    sizing_mode="stretch_width", css_classes=["alerts-table"],
                                    styles={**SCROLLED, "height": "420px"})
        link = hub.dask_url
        self._dask = html_pane(
            f'<a href="{html.escape(link)}" target="_blank">Dask dashboard (the cluster) ↗</a>' if link else
            empty("the engine's Dask dashboard: set dashboard.dask_url"), margin=(0, 10))

    def _time_figures(self) -> list[LiveChart]:
        # drawn by LiveChart, not Bokeh figures: these redraw every tick in every tab (see dashboards/livechart.py)
        src, gauges = self.timeline, self.gauges
        thr = LiveChart(source=src, heading="Throughput", y_label="events / s",
                        series=[line("events_per_s", "events / s", ACCENT)],
                        empty_text="waiting for the engine's first scores")
        ano = LiveChart(source=src, heading="Anomalies", y_label="anomalies / s",
                        series=[line("anomalies_per_s", "anomalies / s", ALARM)],
                        empty_text="waiting for the engine's first scores")
        lat = LiveChart(source=gauges, heading="Latency: Kafka in → committed (last 10 s)", y_label="ms",
                        series=[line("latency_p50_ms", "p50", ACCENT), line("latency_p99_ms", "p99", "#ff7f0e")],
                        empty_text="waiting for the engine's metrics records")
        lag = LiveChart(source=gauges, heading="Consumer lag", y_label="records not yet read",
                        series=[line("lag", "lag", MUTED)], empty_text="waiting for the engine's metrics records")
        return [thr, ano, lat, lag]

    def attach(self) -> None:
        super().attach()
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            return
        push = self.hub.push
        if push is not None:  # the rows come over the timeline's own socket: no acknowledgements needed
            self._token = push.expect(self)
            for chart in self._figures[:2]:
                chart.feed = push.feed_url(self._token)
            return
        self._acked = self._seq
        ack = ColumnDataSource({}, name="live-ack", tags=[self._seq])
        self.timeline.js_on_change("streaming", CustomJS(args={"ack": ack}, code=ACK_JS))
        ack.on_change("tags", self._on_ack)

    def _ended(self, began: float) -> None:
        if self._token is not None and self.hub.push is not None:
            self.hub.push.forget(self._token)
        super()._ended(began)

    @property
    def pushed(self) -> bool:
        """Whether this page's timeline rows go over the socket (after its first frame) instead of Bokeh."""
        return self._token is not None

    def wants(self, seq: int) -> bool:
        if not self.pushed or self._seq <= 0:
            return True
        return self._slow.pending(seq) or self._status_every.pending(seq)

    def status_line(self) -> str:
        line = super().status_line()
        push = self.hub.push
        if self._token is not None and push is not None and not push.connected(self._token):
            line += " · live rows: the page's socket is not connected"
        return line

    @property
    def behind(self) -> int | None:
        """Ticks sent that the browser has not yet acknowledged (None: no flow control, not served)."""
        return None if self._acked is None else self._seq - self._acked

    def _on_ack(self, _attr: str, _old: Any, new: Any) -> None:
        if new and isinstance(new[0], int | float):
            self._acked = int(new[0])

    def body(self) -> list[Any]:
        return [
            self._kpis,
            pn.GridBox(*self._figures[:2], self._hist, ncols=3, sizing_mode="stretch_width"),
            pn.GridBox(*self._figures[2:], pn.Column(
                pn.pane.Markdown("#### Dead letters by reason", margin=(0, 10)), self._dead, self._dask,
                sizing_mode="stretch_width"), ncols=3, sizing_mode="stretch_width"),
            pn.pane.Markdown("#### Most recent alerts", margin=(0, 10)),
            self._alerts,
        ]

    # -- updates ------------------------------------------------------------------------------------------------
    def draw(self) -> None:
        behind = self.behind
        if behind is not None and self._seq > 0 and behind > IN_FLIGHT_TICKS:
            self.held += 1
            self.coalesced += 1  # drawn late, with the next update the browser can take
            return
        if not (self.pushed and self._seq > 0):  # pushed: the socket sends the rows and counts what a tab missed
            self._draw_timeline()
        if self._slow.due(self.tick):
            self._draw_slow()

    def _draw_timeline(self) -> None:
        """The timeline's rows since the last draw: the whole ring the first time, then a stream."""
        state = self.hub.state
        self.missed += state.ticks.missed(self._seq) if self._seq > 0 else 0
        rows = state.timeline(self._seq)
        if len(rows):
            data = data_of(rows, FAST)
            full = self._seq <= 0
            if full:
                self.timeline.data = data
            else:
                self.timeline.stream(as_lists(data), rollover=state.ticks.size)  # theme.as_lists says why
            self._seq = int(rows["seq"].iloc[-1])
            if full and self._acked is not None:  # only streams are acknowledged: the first frame counts as seen
                self._acked = self._seq

    def _changed(self, part: str, seq: int) -> bool:
        if self._drawn.get(part) == seq:
            return False
        self._drawn[part] = seq
        return True

    def _draw_gauges(self) -> None:
        """The gauges' rows since the last draw, one per second (they change at that rate)."""
        state = self.hub.state
        rows = state.timeline(self._gauge_seq)
        if not len(rows):
            return
        per_s = max(1, round(1000 / state.ticks.tick_ms))
        shown = rows.iloc[::-1].iloc[::per_s].iloc[::-1]  # every per_s-th row, ending with the newest
        data = data_of(shown, GAUGES)
        if self._gauge_seq <= 0:
            self.gauges.data = data
        else:
            self.gauges.stream(as_lists(data), rollover=state.ticks.size // per_s + 1)
        self._gauge_seq = int(rows["seq"].iloc[-1])

    def _draw_slow(self) -> None:
        state = self.hub.state
        self._draw_gauges()
        k = state.kpis()
        text = kpis_html([
            ("events scored", number(k.events), False),
            ("anomalies", number(k.anomalies), bool(k.anomalies)),
            ("events / s", number(k.events_per_s), False),
            ("latency p50 / p99", f"{number(k.latency_p50_ms)} / {number(k.latency_p99_ms)} ms", False),
            ("consumer lag", number(k.lag), False),
            ("dead letters", number(k.dead_letters), bool(k.dead_letters)),
            ("model version", k.model_version or "–", False),
        ])
        if self._kpis.object != text:
            self._kpis.object = text
        seq, hist, threshold = state.histogram()
        if self._changed("hist", seq):
            self.hist.data = data_of(hist, ("left", "right", "count"))
            self._hist.param.update(marker=threshold, heading="Recent scores · " + (
                f"threshold {threshold:.3f}" if threshold is not None else "no threshold yet") +
                f" · {state.scores_in_histogram:,} scores")
        seq, dead = state.dead_letters()
        if self._changed("dead", seq) and dead:
            rows = sorted(dead.items(), key=lambda r: -r[1])
            self._dead.object = ("<table class='iso'><tr><th>reason</th><th>records</th></tr>" + "".join(
                f"<tr><td>{html.escape(r)}</td><td style='color:#d62728'>{n:,}</td></tr>" for r, n in rows) +
                "</table>")
        seq, alerts = state.alerts()
        if self._changed("alerts", seq) and len(alerts):
            self._alerts.object = state.rendered("overview-alerts", seq,
                                                 lambda: alerts_table(alerts, self.hub.key_field))


def alerts_table(alerts: Any, key_field: str | None) -> str:
    """The alerts frame as a table whose key links to that key's view at the alert's time."""
    frame = alerts.copy()
    key_col = key_field if key_field and key_field in frame else ("key" if "key" in frame else None)
    if "event_time" in frame:
        stamps = pd.to_datetime(frame["event_time"], utc=True, errors="coerce", format="ISO8601")
        frame["_at_ms"] = epoch_ms(stamps)
    columns = [c for c in frame.columns if c != "_at_ms"]
    cells = {key_col: alert_link(key_field)} if key_col else {}
    return table_html(frame, columns, empty_text="no alerts yet", cells=cells)
