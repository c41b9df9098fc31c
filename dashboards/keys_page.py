"""The Keys page: one station or sensor: its readings with its alerts and baseline band, scores, windows.

``/keys?key=K&at=MS`` opens key ``K`` with the time ``MS`` (ms since the epoch) marked: what an incident or
an alert links to. Each tick streams the key's new points (if it has any); the windows chart is re-sent when
the key closes a window.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource
from bokeh.models.annotations import Span

from dashboards.hub import Hub
from dashboards.live_page import LivePage
from dashboards.overview import alerts_table
from dashboards.theme import (
    ACCENT,
    ALARM,
    BAND,
    MUTED,
    SECOND,
    as_lists,
    data_of,
    empty,
    html_pane,
    time_figure,
)

KEY_LIST_EVERY_S = 2.0
WINDOW_COLUMNS = ("start", "end", "mid", "w", "count", "alarms", "anomalies", "mean", "lo", "hi")
VALUE_COLORS = (ACCENT, SECOND, "#9467bd", "#8c564b")


class KeysPage(LivePage):
    """One browser session's Keys page."""

    title = "Keys"
    path = "/keys"

    def __init__(self, hub: Hub, key: str | None = None, at_ms: float | None = None, **params: Any) -> None:
        super().__init__(hub, **params)
        state = hub.state
        self.fields = state.keys.value_fields
        query = _query()
        key = key if key is not None else query.get("key")
        at = at_ms if at_ms is not None else _float(query.get("at"))
        self.selector = pn.widgets.Select(name="station / sensor key", options=[], sizing_mode="fixed", width=320)
        self._list_seq = -1
        self._list = self.every(KEY_LIST_EVERY_S)
        self._cursor = 0
        self._windows_drawn = -1
        self._alerts_drawn = -1
        self.points = ColumnDataSource(self._point_data(pd.DataFrame()), name="key-points")
        self.windows = ColumnDataSource({c: [] for c in WINDOW_COLUMNS}, name="key-windows")
        self._at = Span(location=np.nan if at is None else at, dimension="height", line_color=MUTED,
                        line_dash="dotted", line_width=2)
        self._figures = self._build_figures()
        self._empty = html_pane("", sizing_mode="stretch_width")
        self._alerts = html_pane("", sizing_mode="stretch_width", styles={"overflow-x": "auto"})
        self._history = html_pane("", margin=(0, 10))
        self._refresh_options(force=True)
        if key is not None:
            if key not in self.selector.options:
                self.selector.options = [key, *self.selector.options]
            self.selector.value = key
        self.selector.param.watch(self._switch, "value")
        self._load_key()

    # -- figures ------------------------------------------------------------------------------------------------
    def _point_data(self, frame: pd.DataFrame) -> dict[str, Any]:
        cols = ["t", "score", "is_anomaly"]
        for f in self.fields:
            cols += [f, f"{f}_lo", f"{f}_hi"]
        data = data_of(frame, cols)
        for f in self.fields:  # the reading again where it alerted, NaN elsewhere: the red marks
            v = np.asarray(data[f], dtype=np.float64)
            data[f"{f}_alert"] = np.where(np.asarray(data["is_anomaly"], dtype=bool), v, np.nan)
        data["score_alert"] = np.where(np.asarray(data["is_anomaly"], dtype=bool),
                                       np.asarray(data["score"], dtype=np.float64), np.nan)
        return data

    def _build_figures(self) -> list[Any]:
        src = self.points
        values = time_figure("Readings, with the key's baseline band and its alerts", "value", height=260,
                             y_format=None, zero=False)
        for i, f in enumerate(self.fields):
            color = VALUE_COLORS[i % len(VALUE_COLORS)]
            values.varea(x="t", y1=f"{f}_lo", y2=f"{f}_hi", source=src, color=BAND, alpha=0.5,
                         legend_label=f"{f} baseline (median ± 3 MAD)")
            values.line("t", f, source=src, color=color, line_width=1.5, legend_label=f)
            values.scatter("t", f"{f}_alert", source=src, color=ALARM, size=8, legend_label="alert")
        if self.fields:
            values.legend.location = "top_left"
            values.legend.background_fill_alpha = 0.5  # the readings show through where the legend sits
        scores = time_figure("Anomaly score", "score (0–1)", height=200, y_format="0.00")
        scores.line("t", "score", source=src, color=MUTED, line_width=1)
        scores.scatter("t", "score_alert", source=src, color=ALARM, size=7)
        scores.y_range.end = 1.0
        win = self.windows
        counts = time_figure("Windows: events and alarms", "per window", height=200)
        counts.vbar(x="mid", width="w", top="count", source=win, color=ACCENT, alpha=0.5, legend_label="events")
        counts.vbar(x="mid", width="w", top="alarms", source=win, color=ALARM, alpha=0.8, legend_label="alarms")
        counts.legend.location = "top_left"
        stats = time_figure(f"Windows: {self.fields[0]} mean, min–max" if self.fields else "Window statistics",
                            "value", height=200, y_format=None, zero=False)
        stats.varea(x="mid", y1="lo", y2="hi", source=win, color=BAND, alpha=0.6, legend_label="min–max")
        stats.line("mid", "mean", source=win, color=ACCENT, line_width=2, legend_label="mean")
        stats.legend.location = "top_left"
        for fig in (values, scores, counts, stats):
            fig.add_layout(self._at)
        return [values, scores, counts, stats]

    def body(self) -> list[Any]:
        pane = lambda f: pn.pane.Bokeh(f, sizing_mode="stretch_width")  # noqa: E731
        return [
            pn.Row(self.selector, self._history, sizing_mode="stretch_width"),
            self._empty,
            pane(self._figures[0]),
            pn.GridBox(*(pane(f) for f in self._figures[1:]), ncols=3, sizing_mode="stretch_width"),
            pn.pane.Markdown("#### This key's recent alerts", margin=(0, 10)),
            self._alerts,
        ]

    # -- data -----------------------------------------------------------------------------------------------------
    @property
    def key(self) -> str | None:
        return self.selector.value or None

    def _refresh_options(self, force: bool = False) -> None:
        seq, keys = self.hub.state.key_list()
        if seq == self._list_seq and not force:
            return
        self._list_seq = seq
        names = [k for k, _, _ in keys]
        current = self.selector.value
        if current and current not in names:
            names.insert(0, current)
        if names != self.selector.options:
            self.selector.options = names
        if not current and names:
            self.selector.value = names[0]

    def _switch(self, _event: Any) -> None:
        self._load_key()

    def _load_key(self) -> None:
        """Draw the selected key from scratch (a switch, or the first draw)."""
        key = self.key
        self._windows_drawn = self._alerts_drawn = -1
        if key is None:
            self._cursor = 0
            self.points.data = self._point_data(pd.DataFrame())
            self.windows.data = {c: [] for c in WINDOW_COLUMNS}
            self._empty.object = empty("waiting for scores records with a key: no key has been seen yet")
            return
        self._cursor, frame = self.hub.state.key_series(key)
        self.points.data = self._point_data(frame)
        self._empty.object = "" if len(frame) else empty(f"no recent events of {key} in this server's buffer")
        if self.hub.history is not None:
            at = float(self._at.location) if isinstance(self._at.location, int | float) else float("nan")
            if at != at and len(frame):  # no time asked for: the day of the key's latest event
                at = float(frame["t"].iloc[-1])
            day = (dt.datetime.fromtimestamp(at / 1000, dt.timezone.utc).date() if at == at else
                   dt.datetime.now(dt.timezone.utc).date())
            self._history.object = (f'<a href="/history?key={quote(key)}&from={day}&to={day}">'
                                    f"{html.escape(key)} on {day} in the lake (history) →</a>")
        self._draw_windows(force=True)
        self._draw_alerts(force=True)

    def draw(self) -> None:
        if self._list.due(self.tick):
            self._refresh_options()
            if self.key is not None and not self.points.data["t"].__len__():
                self._load_key()
        key = self.key
        if key is None:
            return
        cursor, new = self.hub.state.key_series(key, self._cursor)
        if cursor != self._cursor and len(new):
            self.points.stream(as_lists(self._point_data(new)), rollover=self.hub.state.keys.points)
            self._empty.object = ""
        self._cursor = cursor
        self._draw_windows()
        self._draw_alerts()

    def _draw_windows(self, force: bool = False) -> None:
        key = self.key
        if key is None:
            return
        version, frame = self.hub.state.key_windows(key)
        if version == self._windows_drawn and not force:
            return
        self._windows_drawn = version
        self.windows.data = _window_data(frame, self.fields[0] if self.fields else None)

    def _draw_alerts(self, force: bool = False) -> None:
        seq = self.hub.state.seq.alerts
        if seq == self._alerts_drawn and not force:
            return
        self._alerts_drawn = seq
        key = self.key
        frame = self.hub.state.key_alerts(key) if key is not None else pd.DataFrame()
        self._alerts.object = (alerts_table(frame, self.hub.key_field) if len(frame) else
                               empty(f"no alerts of {html.escape(key or '')} among the recent alerts"))


def _window_data(frame: pd.DataFrame, field: str | None) -> dict[str, Any]:
    if frame.empty:
        return {c: [] for c in WINDOW_COLUMNS}
    start = frame["window_start_ms"].to_numpy(dtype=np.float64)
    end = frame["window_end_ms"].to_numpy(dtype=np.float64)

    def col(name: str) -> np.ndarray:
        return frame[name].to_numpy(dtype=np.float64) if name in frame else np.full(len(frame), np.nan)

    return {"start": start, "end": end, "mid": (start + end) / 2, "w": 0.8 * (end - start), "count": col("count"), "alarms": col("alarms"),
            "anomalies": col("anomalies"), "mean": col(f"{field}_mean"), "lo": col(f"{field}_min"),
            "hi": col(f"{field}_max")}


def _query() -> dict[str, str]:
    """The page URL's query parameters (``?key=...&at=...``); empty outside a served session."""
    try:
        args = pn.state.session_args
    except AttributeError:
        return {}
    out = {}
    for name, values in (args or {}).items():
        if values:
            raw = values[0]
            out[str(name)] = raw.decode() if isinstance(raw, bytes) else str(raw)
    return out


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
