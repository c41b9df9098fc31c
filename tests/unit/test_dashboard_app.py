"""The Dashboard view built over a fed LiveState, without a server: it builds, refreshes only on change."""

from __future__ import annotations

import json

import holoviews as hv
import numpy as np
import panel as pn
import pytest

from dashboards.app import Dashboard, _anomalies, _histogram, _throughput
from dashboards.state import LiveState

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> LiveState:
    return LiveState({}, history_s=30, clock=clock)


def feed(state: LiveState, n: int, *, anomalies: int = 0) -> None:
    recs = [{"score": 0.3, "threshold": 0.65, "is_anomaly": False, "model_version": "v7"}] * (n - anomalies)
    recs += [{"score": 0.8, "threshold": 0.65, "is_anomaly": True, "model_version": "v7"}] * anomalies
    state.ingest_scores(recs, [T0 - 1.5] * n)
    state.ingest_stats([json.dumps({"ts": T0, "events": n, "anomalies": anomalies, "dead_letters": 2,
                                    "lag": 11, "model_version": "v7"})])
    state.ingest_alerts([{"key": "k9", "score": 0.8, "explanation": "value far above threshold"}])


def test_dashboard_builds_over_an_empty_state(state: LiveState) -> None:
    view = Dashboard(state)
    layout = view.__panel__()
    assert isinstance(layout, pn.Column)
    assert view._kpis["events"].value == "0"
    assert view._kpis["lag"].value == "–" and view._kpis["model"].value == "–"
    assert view.refresh() is False  # same snapshot as the one drawn at construction


def test_dashboard_shows_the_fed_numbers(state: LiveState) -> None:
    feed(state, 1_200, anomalies=30)
    view = Dashboard(state, refresh_ms=500)
    kpis = {name: w.value for name, w in view._kpis.items()}
    assert kpis == {"events": "1,200", "anomalies": "30", "rate": "240", "dead_letters": "2", "lag": "11",
                    "model": "v7"}
    hist, threshold = view._histogram.data
    assert hist["count"].sum() == 1_200 and threshold == 0.65
    assert view._timeline.data["events"].sum() == 1_200
    assert view._alerts.object["key"].tolist() == ["k9"]
    assert "1,200 recent scores" in view._status.object


def test_refresh_pushes_new_data_and_skips_when_unchanged(state: LiveState, clock: Clock) -> None:
    view = Dashboard(state)
    feed(state, 100)
    assert view.refresh() is True
    assert view._kpis["events"].value == "100"
    assert view.refresh() is False
    clock.now += 1.0  # same data, next second: only the sliding timeline and status change
    sent = []
    view._histogram.add_subscriber(lambda **kw: sent.append(kw))
    assert view.refresh() is True
    assert sent == []
    feed(state, 50)
    assert view.refresh() is True
    assert view._kpis["events"].value == "150" and len(sent) == 1


def test_plot_callbacks_make_the_expected_elements(state: LiveState) -> None:
    feed(state, 40, anomalies=4)
    snap = state.snapshot()
    area = _throughput(snap.timeline)
    assert isinstance(area, hv.Area) and area.dimension_values("events").sum() == 40
    spikes = _anomalies(snap.timeline)
    assert isinstance(spikes, hv.Spikes) and "4 in window (10.00 %)" in spikes.opts.get().kwargs["title"]
    overlay = _histogram((snap.histogram, snap.threshold))
    hist, line = overlay.get(0), overlay.get(1)
    assert hist.dimension_values("count").sum() == 40
    assert line.data == 0.65
    empty = _histogram((LiveState({}).snapshot().histogram, None))
    assert np.isnan(empty.get(1).data)  # no threshold yet: the line exists (stable overlay) but is not drawn


def test_dashboard_renders_to_bokeh_models(state: LiveState) -> None:
    feed(state, 10)
    model = Dashboard(state).__panel__().get_root()
    assert type(model).__name__ == "Column"
