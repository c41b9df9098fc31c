"""The History page: the live pages' charts, drawn from the lake for a range of days picked by the user.

A :class:`HistoryPage` per browser session over one shared :class:`~dashboards.history.History` (its cache
makes sessions asking for the same range share one query). Nothing runs on a timer: the page queries at
construction and then only when a widget changes (``range``: everything; ``key``: the key's charts;
``period``: the report table). Deep links: :meth:`HistoryPage.from_query` reads ``from``, ``to``, ``key`` and
``period`` from a page's query arguments (``pn.state.session_args`` when served).

Times are drawn on the lake's calendar (the axis says which zone): Bokeh shows naive datetimes as they are,
so the frames' aware times are made naive in the lake's zone just before plotting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
from collections.abc import Callable, Mapping
from typing import Any

import holoviews as hv
import hvplot.pandas  # noqa: F401 - registers DataFrame.hvplot
import pandas as pd
import panel as pn

from dashboards.history import History, HistoryError, KeySeries, ScoreHistogram
from streams.reports import PERIODS

hv.extension("bokeh", logo=False)

ACCENT = "#1f77b4"
ALARM = "#d62728"
HEIGHT = 260
PLOT_OPTS: dict[str, Any] = {"responsive": True, "height": HEIGHT, "show_grid": True}
#: given to hvplot itself: otherwise it fixes width=700, which overrides responsive in an overlay
SIZE: dict[str, Any] = {"responsive": True, "height": HEIGHT}
TABLE_OPTS: dict[str, Any] = {"disabled": True, "show_index": False, "pagination": "local", "page_size": 15,
                              "sizing_mode": "stretch_width"}


def _naive(times: pd.Series) -> pd.Series:
    """Aware times as naive wall-clock times of their own zone (what Bokeh draws as given)."""
    return times.dt.tz_localize(None) if isinstance(times.dtype, pd.DatetimeTZDtype) else times


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy for a table: times as text on the lake's clock, no tz objects for the browser to misread."""
    out = frame.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.DatetimeTZDtype):
            out[c] = out[c].dt.strftime("%Y-%m-%d %H:%M:%S")
        elif c == "period_start":
            out[c] = out[c].astype(str)
    return out


# -- charts: pure functions of the model's frames ----------------------------------------------------------
def throughput_chart(timeline: pd.DataFrame, bucket: str, tz: str) -> hv.Area:
    """Events per second (each bucket's mean) over time."""
    frame = timeline.assign(time=_naive(timeline["time"]))
    return frame.hvplot.area(x="time", y="events_per_s", **SIZE).opts(
        title=f"Throughput · events / s ({bucket} means)", xlabel=f"time ({tz})", ylabel="events / s",
        color=ACCENT, alpha=0.6, ylim=(0, None), **PLOT_OPTS)


def anomalies_chart(timeline: pd.DataFrame, bucket: str, tz: str) -> hv.Spikes:
    """Anomalies per bucket: spikes, as anomalies are sparse and an area would smear them over neighbours."""
    frame = timeline.assign(time=_naive(timeline["time"]), anomaly_pct=timeline["anomaly_rate"] * 100.0)
    total, flagged = int(frame["events"].sum()), int(frame["anomalies"].sum())
    pct = 100.0 * flagged / total if total else 0.0
    return hv.Spikes(frame, "time", ["anomalies", "anomaly_pct"]).opts(
        title=f"Anomalies · {flagged:,} of {total:,} events ({pct:.2f} %)", xlabel=f"time ({tz})",
        ylabel=f"anomalies per {bucket}", color=ALARM, line_width=2, ylim=(0, None), **PLOT_OPTS)


def histogram_chart(hist: ScoreHistogram) -> hv.Overlay:
    """The score histogram with the mean threshold as a dashed red line."""
    bins = hist.bins
    edges = [*bins["left"].tolist(), float(bins["right"].iloc[-1])]
    bars = hv.Histogram((edges, bins["count"].to_numpy()), kdims="score", vdims="count").opts(
        color=ACCENT, alpha=0.7, line_color="white")
    label = "no threshold" if hist.threshold is None else f"mean threshold {hist.threshold:.3f}"
    line = hv.VLine(float("nan") if hist.threshold is None else hist.threshold).opts(
        color=ALARM, line_dash="dashed", line_width=2)
    return (bars * line).opts(title=f"Scores · {hist.events:,} events · {label}", xlabel="anomaly score",
                              ylabel="events", xlim=(0.0, 1.0), **PLOT_OPTS)


def key_chart(series: KeySeries, key: str, field: str, tz: str) -> hv.Overlay:
    """One key's ``field``: bucket min–max band and mean line, its events as points when few, anomalies red."""
    b = series.buckets.assign(time=_naive(series.buckets["time"]))
    lo, mean, hi = f"{field}_min", f"{field}_mean", f"{field}_max"
    layers: list[Any] = [
        b.hvplot.area(x="time", y=lo, y2=hi, label=f"min–max per {series.bucket.label}", **SIZE).opts(
            color=ACCENT, alpha=0.2, line_alpha=0),
        b.hvplot.line(x="time", y=mean, label=f"mean per {series.bucket.label}", **SIZE).opts(color=ACCENT),
    ]
    if len(series.points):
        p = series.points.assign(time=_naive(series.points["time"]))
        layers.append(p.hvplot.scatter(x="time", y=field, label="events", **SIZE).opts(color=ACCENT, size=3, alpha=0.6))
        flagged = p[p["is_anomaly"].to_numpy(bool)]
        alerts = flagged.hvplot.scatter(x="time", y=field, label="anomalies", hover_cols=["score"], **SIZE)
    else:  # too many events to draw one by one: mark each bucket holding anomalies at its maximum
        flagged = b[b["anomalies"] > 0]
        alerts = flagged.hvplot.scatter(x="time", y=hi, label="buckets with anomalies", hover_cols=["anomalies"], **SIZE)
    layers.append(alerts.opts(color=ALARM, size=8))
    n_alerts = int(series.buckets["anomalies"].sum())
    return hv.Overlay(layers).opts(
        title=f"{key} · {field} · {series.events:,} events, {n_alerts:,} anomalies", xlabel=f"time ({tz})",
        ylabel=field, legend_position="top_left", **PLOT_OPTS)


def window_stats_chart(windows: pd.DataFrame, key: str, field: str, tz: str) -> hv.Overlay:
    """The key's closed windows: ``field`` mean line and min–max band per window."""
    w = windows.assign(time=_naive(windows["window_start"]))
    band = w.hvplot.area(x="time", y=f"{field}_min", y2=f"{field}_max", label="min–max", **SIZE).opts(
        color=ACCENT, alpha=0.2, line_alpha=0)
    line = w.hvplot.line(x="time", y=f"{field}_mean", label="mean", **SIZE).opts(color=ACCENT)
    merged = " (merged per bucket)" if (windows["windows"] > 1).any() else ""
    return (band * line).opts(title=f"{key} · windows{merged} · {field}", xlabel=f"window start ({tz})",
                              ylabel=field, legend_position="top_left", **PLOT_OPTS)


def window_alarms_chart(windows: pd.DataFrame, key: str, tz: str) -> hv.Rectangles:
    """Alarms per window as bars as wide as their windows."""
    w = pd.DataFrame({"x0": _naive(windows["window_start"]), "y0": 0, "x1": _naive(windows["window_end"]),
                      "alarms": windows["alarms"].astype(float)})
    total = int(windows["alarms"].sum())
    return hv.Rectangles(w, kdims=["x0", "y0", "x1", "alarms"]).opts(
        title=f"{key} · alarms per window · {total:,} in all", xlabel=f"window start ({tz})",
        ylabel="alarms per window", color=ALARM, line_color=ALARM, ylim=(0, None), **PLOT_OPTS)


def _esc(text: str) -> str:
    return html.escape(text, quote=False)  # quotes are plain text in HTML content; keep messages readable


def _message(text: str) -> pn.pane.Alert:
    return pn.pane.Alert(text, alert_type="light", sizing_mode="stretch_width", margin=(5, 10))


def _one(value: Any) -> str | None:
    """A query argument as text: Tornado gives ``[b"..."]``, a hand-made dict may give ``"..."``."""
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return None if value is None else str(value)


class HistoryPage(pn.viewable.Viewer):
    """Pick days (``range``), a key (``key``) and a report period (``period``); see the module doc.

    >>> import tempfile
    >>> page = HistoryPage(History(tempfile.mkdtemp(), key_field="id"), start=dt.date(2027, 1, 14))
    >>> page.range.value, page.key.options, "no lake data between 2027-01-14 and" in page.status.object
    ... # doctest: +ELLIPSIS
    ((datetime.date(2027, 1, 14), ...), [], True)
    """

    def __init__(self, history: History, *, start: dt.date | None = None, end: dt.date | None = None,
                 key: str | None = None, period: str = "day", notice: str = "", load_now: bool = True,
                 **params: Any) -> None:
        super().__init__(**params)
        self.history = history
        # no start: the day before the end; no end: today, or as far as max_days reaches from the start
        yesterday, today = history.default_range()
        first = start if start is not None else end - dt.timedelta(days=1) if end is not None else yesterday
        last = end if end is not None else min(max(today, first), first + dt.timedelta(days=history.max_days - 1))
        self.range = pn.widgets.DateRangePicker(name="Days", value=(first, last), width=260)
        self.key = pn.widgets.Select(name=f"Key ({history.key_field or 'none'})", options=[], width=260)
        self.period = pn.widgets.RadioButtonGroup(name="Report period", options=list(PERIODS),
                                                  value=period if period in PERIODS else "day")
        self.status = pn.pane.HTML("", sizing_mode="stretch_width", margin=(0, 10))
        #: what each chart and table last drew (the model's frames): for tests and for the lead's hub
        self.drawn: dict[str, Any] = {}
        self._notice = notice
        self._wanted_key = key
        self._quiet = False
        names = ("throughput", "anomalies", "histogram", "key", "window_stats", "window_alarms", "report",
                 "windows", "alerts")
        self.slots = {n: pn.Column(sizing_mode="stretch_width") for n in names}
        s = self.slots
        self._layout = pn.Column(
            pn.pane.Markdown("## History", margin=(0, 10)),
            pn.Row(self.range, self.key, pn.Column(pn.pane.Markdown("Report period", margin=(0, 5)), self.period)),
            self.status,
            pn.GridBox(s["throughput"], s["anomalies"], s["histogram"], ncols=3, sizing_mode="stretch_width"),
            pn.pane.Markdown("#### The key's values", margin=(0, 10)), s["key"],
            pn.GridBox(s["window_stats"], s["window_alarms"], ncols=2, sizing_mode="stretch_width"),
            pn.pane.Markdown("#### Report", margin=(0, 10)), s["report"],
            pn.pane.Markdown("#### Windows per key", margin=(0, 10)), s["windows"],
            pn.pane.Markdown("#### Top alerts (highest scores)", margin=(0, 10)), s["alerts"],
            sizing_mode="stretch_width",
        )
        if load_now:
            self.refresh()
            self.range.param.watch(lambda _e: self.refresh(), "value")
            self.key.param.watch(lambda _e: None if self._quiet else self._draw_key(), "value")
            self.period.param.watch(lambda _e: self._draw_report(), "value")
        else:
            # served: the page goes out at once and the queries run on a thread (``refresh_async``), so a slow
            # lake never blocks the server's event loop, which every live page's updates go through
            self.status.object = "reading the lake …"
            self.range.param.watch(lambda _e: pn.state.execute(self.refresh_async), "value")
            self.key.param.watch(lambda _e: None if self._quiet else pn.state.execute(self._draw_key_async), "value")
            self.period.param.watch(lambda _e: pn.state.execute(self._draw_report_async), "value")

    @classmethod
    def from_query(cls, history: History, query: Mapping[str, Any], **params: Any) -> HistoryPage:
        """A page set from query arguments ``from``, ``to`` (``YYYY-MM-DD``, ``today``, ``yesterday``), ``key``
        and ``period``; a bad value is named on the page and its default used instead."""
        bad: list[str] = []
        days: dict[str, dt.date | None] = {}
        for name in ("from", "to"):
            text = _one(query.get(name))
            days[name] = None
            if text:
                try:
                    days[name] = history.day(text)
                except HistoryError as err:
                    bad.append(f"{name}={text!r}: {err}")
        period = _one(query.get("period")) or "day"
        if period not in PERIODS:
            bad.append(f"period={period!r} is not one of {', '.join(PERIODS)}")
            period = "day"
        return cls(history, start=days["from"], end=days["to"], key=_one(query.get("key")) or None,
                   period=period, notice="; ".join(bad), **params)

    # -- drawing ------------------------------------------------------------------------------------------
    def _days(self) -> tuple[dt.date, dt.date]:
        value = self.range.value
        if not value or value[0] is None or value[1] is None:
            raise HistoryError("history: pick a first and a last day")
        return self.history.check_range(value[0], value[1])

    def _fill(self, name: str, make: Callable[[], Any], empty: str | None) -> None:
        """Put ``make()`` in slot ``name``, or the ``empty`` message when there is nothing to draw."""
        if empty:
            self.slots[name].objects = [_message(empty)]
            return
        made = make()
        # unlinked: Panel links the axes of HoloViews panes by default, so a new key's chart kept the old
        # key's value range (found by the browser test)
        pane = (pn.pane.HoloViews(made, sizing_mode="stretch_width", linked_axes=False)
                if isinstance(made, hv.core.Dimensioned) else pn.panel(made, sizing_mode="stretch_width"))
        self.slots[name].objects = [pane]

    def _error(self, err: Exception) -> None:
        self.status.object = f'<span style="color:{ALARM}">{_esc(str(err))}</span>'
        for slot in self.slots.values():
            slot.objects = [_message("nothing to show until the range is fixed")]

    async def refresh_async(self) -> None:
        """:meth:`refresh` with its queries run on a thread first (they land in the shared cache)."""
        self.status.object = "reading the lake …"
        await asyncio.to_thread(self._prefetch)
        self.refresh()

    async def _draw_key_async(self) -> None:
        await asyncio.to_thread(self._prefetch, key_only=True)
        self._draw_key()

    async def _draw_report_async(self) -> None:
        await asyncio.to_thread(self._prefetch, report_only=True)
        self._draw_report()

    def _prefetch(self, *, key_only: bool = False, report_only: bool = False) -> None:
        """Run the queries the next draw will make, so that it finds them cached (errors are drawn then)."""
        h = self.history
        try:
            first, last = self._days()
            if report_only:
                h.report(first, last, self.period.value)
                return
            key = self.key.value
            if not key_only:
                for query in (h.timeline, h.score_histogram, h.top_alerts, h.windows):
                    query(first, last)
                keys = h.keys(first, last)["key"].astype(str).tolist()
                key = self._wanted_key if self._wanted_key is not None else key
                key = key if key is not None else (keys[0] if keys else None)
                h.report(first, last, self.period.value)
            if key is not None and h.key_field is not None:
                h.key_series(first, last, key)
                h.windows(first, last, key)
        except HistoryError:
            return

    def refresh(self) -> None:
        """Draw everything for the picked range (what changing ``range`` does)."""
        h = self.history
        try:
            first, last = self._days()
            timeline = h.timeline(first, last)
            hist = h.score_histogram(first, last)
            keys = h.keys(first, last)
            alerts = h.top_alerts(first, last)
            windows = h.windows(first, last)
        except HistoryError as err:
            self._error(err)
            return
        bucket, tz = h.bucket(first, last).label, h.timezone
        self.drawn.update(timeline=timeline, histogram=hist, keys=keys, alerts=alerts, windows=windows)
        nothing = f"no lake data between {first} and {last} in {h.lake}" if timeline.empty else None
        self._fill("throughput", lambda: throughput_chart(timeline, bucket, tz), nothing)
        self._fill("anomalies", lambda: anomalies_chart(timeline, bucket, tz), nothing)
        self._fill("histogram", lambda: histogram_chart(hist), nothing)
        self._fill("alerts", lambda: pn.widgets.Tabulator(_shown(alerts), **TABLE_OPTS),
                   nothing or (f"no anomalies between {first} and {last}" if alerts.empty else None))
        self._fill("windows", lambda: pn.widgets.Tabulator(_shown(windows), **TABLE_OPTS),
                   f"no closed windows between {first} and {last} in {h.windows_table}" if windows.empty else None)
        events, flagged = int(timeline["events"].sum()), int(timeline["anomalies"].sum())
        line = (f"{_esc(h.lake)} · {first} … {last} ({tz}) · {events:,} events · {flagged:,} anomalies · "
                f"{bucket} buckets · {len(keys):,} keys")
        notice = f' · <span style="color:{ALARM}">{_esc(self._notice)}</span>' if self._notice else ""
        self.status.object = (_esc(nothing) if nothing else line) + notice
        options = keys["key"].astype(str).tolist()
        wanted = self._wanted_key if self._wanted_key is not None else self.key.value
        if wanted is not None and wanted not in options and wanted == self._wanted_key:
            options = [wanted, *options]  # a deep-linked key may be rarer than the top keys listed
        self._wanted_key = None
        self._quiet = True  # options and value change together: draw the key once, below
        try:
            self.key.options = options
            self.key.value = wanted if wanted in options else (options[0] if options else None)
        finally:
            self._quiet = False
        self._draw_key()
        self._draw_report()

    def _draw_key(self) -> None:
        h, key = self.history, self.key.value
        try:
            first, last = self._days()
            if key is None or h.key_field is None:
                why = "no key field in the schema" if h.key_field is None else f"no keys between {first} and {last}"
                for name in ("key", "window_stats", "window_alarms"):
                    self._fill(name, lambda: None, f"pick a key: {why}")
                self.drawn.update(key=None, key_windows=None)
                return
            series = h.key_series(first, last, key)
            windows = h.windows(first, last, key)
        except HistoryError as err:
            self._error(err)
            return
        self.drawn.update(key=series, key_windows=windows)
        tz, fields = h.timezone, h.value_fields
        none = f"no events of {key} between {first} and {last}" if series.buckets.empty else None
        if not fields:
            none = none or "no value fields configured (features.numeric)"
        self._fill("key", lambda: pn.Column(*(pn.pane.HoloViews(key_chart(series, key, f, tz), linked_axes=False,
                                                                sizing_mode="stretch_width") for f in fields),
                                            sizing_mode="stretch_width"), none)
        wnone = (f"no closed windows of {key} between {first} and {last} in {h.windows_table}"
                 if windows.empty else None)
        self._fill("window_stats", lambda: window_stats_chart(windows, key, fields[0], tz),
                   wnone or (None if fields else "no value fields configured"))
        self._fill("window_alarms", lambda: window_alarms_chart(windows, key, tz), wnone)

    def _draw_report(self) -> None:
        try:
            first, last = self._days()
            report = self.history.report(first, last, self.period.value)
        except HistoryError as err:
            self._error(err)
            return
        self.drawn["report"] = report
        empty = f"no events between {first} and {last} for a {self.period.value} report" if report.empty else None
        self._fill("report", lambda: pn.widgets.Tabulator(_shown(report), **TABLE_OPTS), empty)

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout
