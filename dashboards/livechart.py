"""A live chart that a tab can afford to redraw ten times a second: streamed rows drawn on one canvas, as lines
over time or as bars over a number (a histogram, with a marked value such as the alert threshold).

The rows still travel as Bokeh ``ColumnDataSource`` streams (one row per tick, only what changed crosses the
websocket, and the browser test and benchmark read the same named source); only the drawing is ours
(``livechart.js``). Measured in headless Chromium on this 2-core machine, two charts streaming 10 rows/s:
Bokeh figures 28 % of a core per tab, the same two charts on plain canvases 8.5 %.

>>> from bokeh.models import ColumnDataSource
>>> chart = LiveChart(source=ColumnDataSource({"t": [], "rate": []}), heading="Throughput",
...                   y_label="events / s", series=[line("rate", "events/s", "#1f77b4")])
>>> chart.series[0]["column"], chart.chart_height
('rate', 220)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import panel as pn
import param
from bokeh.models import ColumnDataSource


def line(column: str, label: str, color: str) -> dict[str, str]:
    """One series of a :class:`LiveChart`: ``column`` of its source, drawn in ``color``, named ``label``."""
    return {"column": column, "label": label, "color": color}


class LiveChart(pn.custom.JSComponent):
    """Lines over time from ``source`` (x: ``x``, epoch ms), or bars (``kind="bars"``: each row from ``x`` to
    ``x_to``, as high as its series' column), redrawn on the browser's next frame after rows come."""

    source = param.ClassSelector(class_=ColumnDataSource, doc="the streamed rows (shared with other charts)")
    series = param.List(default=[], doc="the lines: dicts made by line()")
    kind: param.Selector = param.Selector(default="lines", objects=["lines", "bars"],
                                          doc="lines over time, or bars over a number")
    x = param.String(default="t", doc="the time column, ms since the epoch (UTC); bars: each bar's left edge")
    x_to = param.String(default="", doc="bars: the column of each bar's right edge")
    x_start = param.Number(default=None, allow_None=True, doc="a fixed start of the x axis (else the data's)")
    x_end = param.Number(default=None, allow_None=True, doc="a fixed end of the x axis (else the data's)")
    marker = param.Number(default=None, allow_None=True, doc="an x value drawn as a dashed line (None: none)")
    marker_color = param.String(default="#d62728")
    heading = param.String(default="", doc="the title drawn above the chart")
    y_label = param.String(default="", doc="the y axis, with its unit")
    x_label = param.String(default="time (UTC)")
    empty_text = param.String(default="waiting for the first rows", doc="what the empty chart waits for")
    feed = param.String(default="", doc="a path of this server whose websocket streams the source's rows "
                        "(dashboards/push.py); empty: they come with the Bokeh session")
    chart_height = param.Integer(default=220, bounds=(60, None), doc="canvas height in CSS pixels")

    _esm = Path(__file__).with_name("livechart.js")

    def __init__(self, **params: Any) -> None:
        if params.get("kind") == "bars" and not params.get("x_to"):
            msg = "LiveChart: kind='bars' needs x_to, the column of each bar's right edge"
            raise ValueError(msg)
        params.setdefault("sizing_mode", "stretch_width")
        params.setdefault("height", params.get("chart_height", LiveChart.param["chart_height"].default))
        super().__init__(**params)

    def _get_model(self, doc: Any, root: Any = None, parent: Any = None, comm: Any = None) -> Any:
        model = super()._get_model(doc, root, parent, comm)
        # Panel syncs a ClassSelector as an untyped property, which Bokeh does not search for models: the source
        # would reach the browser once but never join the document, and its streams would stay on the server.
        # ``tags`` holds references, so the document finds it there
        if self.source is not None and self.source not in model.tags:
            model.tags = [*model.tags, self.source]
        return model
