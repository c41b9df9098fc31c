"""The look every page shares: one template, one palette (anomalies in red), figures with units, empty states.

Live charts stream rows into ``ColumnDataSource``s: the Overview's, redrawn every tick, are canvases
(:mod:`dashboards.livechart`), the Keys page's plain Bokeh figures (:func:`time_figure`). A HoloViews or hvPlot
element re-renders its whole plot per update (measured 10-25 ms per plot and session), a streamed row costs well
under a millisecond. hvPlot draws the history page, whose charts change only when a viewer asks.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import panel as pn
from bokeh.events import DocumentReady
from bokeh.models import ColumnDataSource, CustomJS, DatetimeTickFormatter, NumeralTickFormatter
from bokeh.plotting import figure

TITLE = "isostream"
ACCENT = "#1f77b4"  # normal traffic
ALARM = "#d62728"  # anomalies, alerts, open incidents: the only red on a page
MUTED = "#7f7f7f"
BAND = "#aec7e8"
SECOND = "#2ca02c"
PAGES = (("/", "Overview"), ("/keys", "Keys"), ("/incidents", "Incidents"), ("/models", "Models"),
         ("/history", "History"))
#: styles of a part that changes every second: laid out and painted apart from the page (CSS containment)
CONTAINED = {"contain": "content"}
#: a fixed-height part that scrolls (give it a ``height``): a relayout boundary, so new rows move nothing else
SCROLLED = {"overflow": "auto", "contain": "strict"}
CSS = """
.iso-kpis {display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 4px 10px;}
.iso-kpi .v {font-size: 20pt; font-weight: 600;} .iso-kpi .l {font-size: 9pt; color: #555;}
.iso-kpi.alarm .v {color: #d62728;} .iso-kpi.long .v {font-size: 12pt; padding-top: 9pt;}
.iso-status {font-size: 9pt; color: #555; margin: 0 10px;}
.iso-empty {color: #777; font-style: italic; margin: 8px 10px;}
table.iso {border-collapse: collapse; font-size: 10pt; width: 100%;}
table.iso th {text-align: left; border-bottom: 2px solid #ccc; padding: 3px 8px; white-space: nowrap;}
table.iso td {border-bottom: 1px solid #eee; padding: 3px 8px; vertical-align: top;}
table.iso tr.open td:first-child {border-left: 4px solid #d62728;}
.iso-badge {padding: 1px 6px; border-radius: 8px; font-size: 9pt; color: white; background: #7f7f7f;}
.iso-badge.open {background: #d62728;} .iso-badge.live {background: #2ca02c;} .iso-badge.shadow {background: #ff7f0e;}
"""

#: BokehJS (3.9) rewrites each renderer's inline ``<style>`` on every paint, even with the same text; each
#: rewrite invalidates the page's styles, and the colours read back from CSS on the next paint then force a
#: full style recalculation. Profiled on the Overview: 23 % of a tab's CPU in ``getPropertyValue`` and 20 % in
#: style recalculation. Skipping identical rewrites leaves the drawing as it was. Guarded: a BokehJS without
#: that class or method is left alone.
STYLE_PATCH_JS = """
const dom = window.Bokeh && Bokeh.require ? Bokeh.require("core/dom") : null;
const proto = dom && dom.InlineStyleSheet ? dom.InlineStyleSheet.prototype : null;
if (proto && typeof proto._update === "function" && !proto._isoSkipsSame) {
  const update = proto._update;
  proto._update = function (css) { if (this.el.textContent !== css) update.call(this, css); };
  proto._isoSkipsSame = true;
}
"""


def patch_document() -> None:
    """Install :data:`STYLE_PATCH_JS` in the served document's browser, once it has rendered."""
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:
        doc.js_on_event(DocumentReady, CustomJS(code=STYLE_PATCH_JS))


def template(title: str, active: str, *main: Any, sidebar: Sequence[Any] = ()) -> pn.template.BaseTemplate:
    """The one page template: title, the page links (``active`` marked), then ``main``."""
    links = "".join(
        f'<a href="{path}" style="display:block;padding:4px 0;{"font-weight:700;" if path == active else ""}">'
        f"{html.escape(name)}</a>" for path, name in PAGES)
    tpl = pn.template.BootstrapTemplate(
        title=f"{TITLE} · {title}", header_background="#1f3b57", sidebar_width=190,
        sidebar=[html_pane(f"<nav class='iso-nav'>{links}</nav>", margin=(5, 10)), *sidebar],
        raw_css=[CSS], main=[pn.Column(*main, sizing_mode="stretch_width")],
    )
    patch_document()
    return tpl


def html_pane(text: str = "", **params: Any) -> pn.pane.HTML:
    """An HTML pane with the shared styles (each pane renders in its own shadow DOM: page CSS does not reach it)."""
    return pn.pane.HTML(text, stylesheets=[CSS], **params)


def time_figure(title: str, y_label: str, *, height: int = 220, y_format: str | None = "0,0",
                zero: bool = True) -> Any:
    """A responsive figure with a UTC time axis, grid, no toolbar clutter, and a labelled y axis (from 0)."""
    fig: Any = figure(title=title, height=height, sizing_mode="stretch_width", x_axis_type="datetime",
                 toolbar_location=None, tools="", min_border_left=60)
    fig.xaxis.axis_label = "time (UTC)"
    fig.yaxis.axis_label = y_label
    fig.xaxis.formatter = DatetimeTickFormatter(seconds="%H:%M:%S", minsec="%H:%M:%S", minutes="%H:%M",
                                                hours="%H:%M", days="%d %b")
    if y_format:
        fig.yaxis.formatter = NumeralTickFormatter(format=y_format)
    if zero:
        fig.y_range.start = 0
    fig.title.text_font_size = "11pt"
    return fig


def source(columns: Iterable[str], name: str | None = None) -> ColumnDataSource:
    """An empty data source with ``columns`` (named, so a browser test can find it)."""
    return ColumnDataSource({c: [] for c in columns}, name=name)


def data_of(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """``frame``'s ``columns`` as the dict a ColumnDataSource takes (missing ones as NaN)."""
    return {c: (frame[c].to_numpy() if c in frame else [float("nan")] * len(frame)) for c in columns}


def as_lists(data: Mapping[str, Any]) -> dict[str, Any]:
    """Columns as plain lists: what a stream of a few rows should carry.

    Bokeh sends each numpy column as a binary frame of its own, lists inside the message: for one row per tick,
    nine columns were nine more websocket frames per tick and viewer (py-spy: a quarter of the server in socket
    writes). A whole frame (a page's first) keeps numpy.

    >>> as_lists({"t": np.array([1.0, 2.0]), "k": ["a", "b"]})
    {'t': [1.0, 2.0], 'k': ['a', 'b']}
    """
    return {c: (v.tolist() if isinstance(v, np.ndarray) else list(v)) for c, v in data.items()}


def kpis_html(items: Sequence[tuple[str, str, bool]]) -> str:
    """A row of headline numbers: ``(label, value, alarm)``; alarm values are red."""
    cells = "".join(
        f'<div class="iso-kpi{" alarm" if alarm else ""}{" long" if len(value) > 14 else ""}">'
        f'<div class="v">{html.escape(value)}</div>'
        f'<div class="l">{html.escape(label)}</div></div>' for label, value, alarm in items)
    return f'<div class="iso-kpis">{cells}</div>'


def empty(text: str) -> str:
    """An empty state that says what the part waits for."""
    return f'<div class="iso-empty">{html.escape(text)}</div>'


def table_html(frame: pd.DataFrame, columns: Sequence[str], *, empty_text: str,
               cells: Mapping[str, Callable[[Any, Mapping[str, Any]], str]] | None = None,
               row_class: Callable[[Mapping[str, Any]], str] | None = None, labels: Mapping[str, str] | None = None
               ) -> str:
    """A plain HTML table (cheaper to send and draw than a grid widget); ``cells`` render columns as HTML."""
    if frame.empty:
        return empty(empty_text)
    cells = cells or {}
    labels = labels or {}
    head = "".join(f"<th>{html.escape(labels.get(c, c))}</th>" for c in columns)
    body = []
    for rec in cast(list[dict[str, Any]], frame.to_dict("records")):
        tds = "".join(f"<td>{cells[c](rec.get(c), rec) if c in cells else _plain(rec.get(c))}</td>" for c in columns)
        cls = row_class(rec) if row_class else ""
        body.append(f'<tr class="{cls}">{tds}</tr>')
    return f'<table class="iso"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _plain(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def number(value: float | int | None, fmt: str = "{:,.0f}") -> str:
    """``value`` formatted, or an en dash when there is none yet."""
    return "–" if value is None or value != value else fmt.format(value)
