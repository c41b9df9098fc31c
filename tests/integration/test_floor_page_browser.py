"""The dashboard benchmark's floor page in a real Chromium: its rows reach the benchmark's collector, each on a
frame, and its two charts are drawn (skipped without Chromium)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._browser import Browser, find_chromium
from benchmarks._dashboard_measures import parse_drain
from benchmarks.dashboard import COLLECTOR_DRAIN, COLLECTOR_JS, Proc, http_status, wait_until
from streams.broker import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium (apt-get install chromium, or $CHROMIUM)"),
]
RING = 300

#: pixels of a chart's plot area that are not the background: a drawn line leaves some
INKED = """(() => {
  const c = document.getElementById("%s");
  const d = c.getContext("2d").getImageData(70, 30, c.width - 90, c.height - 70).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) n++;
  return n;
})()"""


@pytest.fixture
def floor_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = Proc("floor", [sys.executable, "-m", "benchmarks._floor_page", "--port", str(port), "--tick-ms", "100",
                            "--ring", str(RING)], tmp_path / "floor.log")
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: http_status(url) == 200, 30, f"the floor page on {url}", poll_s=0.2, alive=server.check)
        yield url
    finally:
        server.stop()


def test_rows_reach_the_collector_each_on_a_frame_and_both_charts_are_drawn(floor_url: str) -> None:
    with Browser() as browser:
        tab = browser.new_tab(init_script=COLLECTOR_JS)
        tab.navigate(floor_url)
        tab.wait_for("window.__isoBench && window.__isoBench.rendered_ms !== null", timeout_s=30)
        time.sleep(3.0)
        d = parse_drain(tab.evaluate(COLLECTOR_DRAIN % 0))
        assert not d.errors and d.gaps == 0 and d.resets == 0
        assert d.found_ms is not None and d.rendered_ms is not None
        seqs = [r.seq for r in d.rows]
        assert len(seqs) >= 15 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # ~10 a second, none lost
        assert all(r.painted_ms is not None and r.painted_ms >= r.arrived_ms for r in d.rows)
        assert all(r.kafka_ts_ms == r.t_ms for r in d.rows)
        # the page keeps the ring it was sent (full from the start), rolling over as rows come
        assert tab.evaluate("window.Bokeh.documents[0].get_model_by_name('live-timeline').get_length()") == RING
        for chart in ("thr", "ano"):
            assert tab.evaluate(INKED % chart) > 200, f"nothing drawn in the {chart} chart"
        assert tab.exceptions == []
