"""The Incidents page: open incidents first, then the recent ones; a key opens its Keys view at that time.

An incident is what the engine pages on (``engine.incidents``): a key's consecutive alerts, opened by the first
and closed after a quiet spell. Each row's key links to ``/keys?key=K&at=START``; window alerts (a key's
anomaly or alarm rate over a window) are listed below.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any, cast
from urllib.parse import quote

import pandas as pd
import panel as pn

from dashboards.hub import Hub
from dashboards.live_page import LivePage
from dashboards.theme import empty, html_pane, kpis_html, table_html

REDRAW_EVERY_S = 2.0
SHOWN = 100  # rows: the page is re-sent whole when it changes, so keep it small (the lake has the rest)
COLUMNS = ("status", "key", "start", "end", "duration", "alerts", "peak_score", "top", "model_version")
LABELS = {"peak_score": "peak score", "top": "attributions (share of the peak score)", "model_version": "model"}


def _time(ms: Any) -> str:
    if not isinstance(ms, int | float) or ms != ms:
        return "–"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _duration(rec: dict[str, Any]) -> str:
    s = max(0.0, (rec.get("end_ms", 0) - rec.get("start_ms", 0)) / 1000)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def incidents_html(frame: pd.DataFrame) -> str:
    """The incidents table (open first); keys link to their view at the incident's start."""
    if frame.empty:
        return empty("no incidents yet: the engine opens one on a key's first alert")
    frame = frame.head(SHOWN)
    records = cast(list[dict[str, Any]], frame.to_dict("records"))
    frame = frame.assign(duration=[_duration(r) for r in records])
    cells = {
        "status": lambda v, r: f'<span class="iso-badge {html.escape(str(v))}">{html.escape(str(v))}</span>',
        "key": lambda v, r: (f'<a href="/keys?key={quote(str(v))}&at={int(r["start_ms"])}">'
                             f"{html.escape(str(v))}</a>"),
        "start": lambda v, r: _time(r.get("start_ms")),
        "end": lambda v, r: _time(r.get("end_ms")),
        "peak_score": lambda v, r: "–" if v is None else f"{float(v):.3f}",
    }
    return table_html(frame, COLUMNS, empty_text="", cells=cells, labels=LABELS,
                      row_class=lambda r: "open" if r.get("status") == "open" else "")


class IncidentsPage(LivePage):
    """One browser session's Incidents page."""

    title = "Incidents"
    path = "/incidents"

    def __init__(self, hub: Hub, **params: Any) -> None:
        super().__init__(hub, **params)
        self._summary = html_pane("", sizing_mode="stretch_width")
        self.table = html_pane(empty("no incidents yet: the engine opens one on a key's first alert"),
                                  sizing_mode="stretch_width", css_classes=["incidents-table"],
                                  styles={"overflow-x": "auto"})
        self._windows = html_pane(empty("no window alerts yet"), sizing_mode="stretch_width",
                                     styles={"overflow-x": "auto"})
        self._drawn = (-1, -1)
        self._redraw = self.every(REDRAW_EVERY_S)

    def body(self) -> list[Any]:
        return [self._summary, pn.pane.Markdown("#### Incidents: open first, then the most recent", margin=(0, 10)),
                self.table, pn.pane.Markdown("#### Window alerts (rate triggers)", margin=(0, 10)), self._windows]

    def draw(self) -> None:
        if not self._redraw.due(self.tick):
            return
        state = self.hub.state
        seq, frame = state.incidents()
        wseq, windows = state.window_alerts()
        if (seq, wseq) == self._drawn:
            return
        self._drawn = (seq, wseq)
        open_n = int((frame["status"] == "open").sum()) if len(frame) else 0
        self._summary.object = kpis_html([("open incidents", f"{open_n:,}", open_n > 0),
                                          ("recent incidents kept", f"{len(frame):,}", False),
                                          ("window alerts kept", f"{len(windows):,}", False)])
        self.table.object = state.rendered("incidents", seq, lambda: incidents_html(frame))
        if windows:
            w = pd.DataFrame(list(reversed(windows))[:50])
            cols = [c for c in (self.hub.key_field, "window_start", "window_end", "count", "anomaly_rate",
                                "alarm_rate", "revision") if c and c in w]
            self._windows.object = table_html(w, cols, empty_text="no window alerts yet")
