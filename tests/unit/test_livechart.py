"""LiveChart: its streamed source belongs to the served document (so streams reach the browser), its series."""

from __future__ import annotations

import pytest
from bokeh.document import Document
from bokeh.models import ColumnDataSource

from dashboards.livechart import LiveChart, line


def test_the_source_joins_the_document_so_its_streams_reach_the_browser() -> None:
    src = ColumnDataSource({"t": [1.0], "rate": [2.0]}, name="live-timeline")
    doc = Document()
    doc.add_root(LiveChart(source=src, series=[line("rate", "events / s", "#1f77b4")]).get_root(doc))
    # without the reference, Bokeh sends the source once and then streams into a copy nobody sees
    assert src.document is doc
    assert doc.get_model_by_name("live-timeline") is src


def test_one_source_shared_by_two_charts_is_one_model() -> None:
    src = ColumnDataSource({"t": [], "a": [], "b": []})
    doc = Document()
    for col in ("a", "b"):
        doc.add_root(LiveChart(source=src, series=[line(col, col, "#000")]).get_root(doc))
    assert sum(m is src for m in doc.models) == 1


def test_height_and_empty_text_default_and_validate() -> None:
    chart = LiveChart(source=ColumnDataSource({"t": []}), chart_height=150)
    assert chart.height == 150 and chart.sizing_mode == "stretch_width"
    assert chart.empty_text.startswith("waiting")
    with pytest.raises(ValueError, match="chart_height"):
        LiveChart(chart_height=10)


def test_bars_need_their_right_edges() -> None:
    with pytest.raises(ValueError, match="x_to"):
        LiveChart(source=ColumnDataSource({"left": [], "count": []}), kind="bars", x="left")
    chart = LiveChart(source=ColumnDataSource({"left": [], "right": [], "count": []}), kind="bars", x="left",
                      x_to="right", x_start=0.0, x_end=1.0, marker=None)
    assert chart.kind == "bars" and chart.marker is None
    with pytest.raises(ValueError):
        LiveChart(kind="pie")
