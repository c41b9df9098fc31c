"""The dashboard as a user sees it: real broker, real Panel server, real headless Chromium.

Records are produced to the ``scores`` / ``stats`` / ``alerts`` topics in the formats of
docs/architecture.md; the page must render the charts, show the produced event count, and then show more
events when more records are produced, without a reload.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from dashboards.app import ServerHandle, run_server, serve
from dashboards.state import LiveState
from engine.config import Topics, load
from streams.broker import EmbeddedBroker, free_port

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def topics(broker: EmbeddedBroker) -> Topics:
    """Fresh topic names per test: the broker is shared by the whole session."""
    tag = uuid.uuid4().hex[:8]
    names = Topics(scores=f"scores-{tag}", stats=f"stats-{tag}", alerts=f"alerts-{tag}", dead_letter=f"dl-{tag}")
    broker.create_topic(names.scores, partitions=2)
    broker.create_topic(names.stats)
    broker.create_topic(names.alerts)
    return names


@pytest.fixture
def live(broker: EmbeddedBroker, topics: Topics) -> Iterator[LiveState]:
    state = LiveState({"bootstrap.servers": broker.bootstrap}, topics, history_s=120).start()
    yield state
    state.stop()


@pytest.fixture
def server(live: LiveState) -> Iterator[ServerHandle]:
    handle = serve(live, port=free_port(), refresh_ms=250)
    yield handle
    handle.stop()


class Engine:
    """Writes what the engine would write for ``n`` events: scores, one stats record, the alerts."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topics = topics
        self.offset = 0

    def batch(self, n: int, *, every: int = 50, extra_scores: list[bytes] | None = None) -> None:
        anomalies = 0
        for i in range(n):
            off = self.offset + i
            flagged = off % every == 0
            anomalies += flagged
            score = 0.8 if flagged else 0.2 + (off % 37) / 100
            rec = {"key": f"dp-{off % 13}", "event_time": "2027-01-15T08:00:00Z", "score": score,
                   "threshold": 0.7, "is_anomaly": flagged, "model_version": "v0001", "partition": off % 2,
                   "offset": off}
            self.producer.produce(self.topics.scores, json.dumps(rec).encode(), key=rec["key"].encode(),
                                  partition=off % 2)
            if flagged:
                alert = {**rec, "station_id": f"st-{off % 5}", "value": 99.5, "valueThreshold": 50.0,
                         "explanation": "value 99.5 is 2.0x its threshold"}
                self.producer.produce(self.topics.alerts, json.dumps(alert).encode())
        for raw in extra_scores or []:
            self.producer.produce(self.topics.scores, raw, partition=0)
        stats = {"ts": time.time(), "events": n, "events_per_s": n / 0.2, "dead_letters": 1, "anomalies": anomalies,
                 "lag": 3, "batch_latency_ms": 20.0, "model_version": "v0001", "threshold": 0.7,
                 "score_hist": {"edges": [0.0, 1.0], "counts": [n]}}
        self.producer.produce(self.topics.stats, json.dumps(stats).encode())
        assert self.producer.flush(30) == 0
        self.offset += n

    def close(self) -> None:
        self.producer.flush(10)
        del self.producer  # librdkafka handles are released on collection, before the broker goes away


#: true once the Bokeh plot whose title starts with arg[0] has a y axis reaching at least arg[1]
Y_AXIS_REACHES = """([title, at_least]) => {
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.title && m.y_range && String(m.title.text).startsWith(title)) return m.y_range.end >= at_least;
  return false;
}"""


#: true once some Bokeh plot's title (drawn on the canvas, so not DOM text) is exactly arg
HAS_PLOT_TITLE = """(text) => {
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.title && m.y_range && String(m.title.text) === text) return true;
  return false;
}"""


def wait_until(check, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_page_renders_and_updates_live_in_chromium(
    broker: EmbeddedBroker, topics: Topics, live: LiveState, server: ServerHandle, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    from playwright.sync_api import expect, sync_playwright

    engine = Engine(broker.bootstrap, topics)
    engine.batch(400, extra_scores=[b"not json", b'{"score": "high"}'])  # bad records are skipped, not fatal
    wait_until(lambda: live.snapshot().kpis.events == 400)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url)
            events = page.locator(".kpi-events div").last  # Playwright locators pierce Panel's shadow DOM
            expect(events).to_have_text("400", timeout=30_000)
            expect(page.locator("canvas").first).to_be_visible(timeout=30_000)
            assert page.locator("canvas").count() >= 3  # throughput, anomalies, histogram
            expect(page.locator(".kpi-anomalies div").last).to_have_text("8")
            expect(page.locator(".kpi-model div").last).to_have_text("v0001")
            expect(page.locator(".alerts-table").get_by_text("value 99.5 is 2.0x its threshold").first).to_be_visible()
            expect(page.get_by_text("2 bad records skipped")).to_be_visible()
            page.screenshot(path=str(tmp_path / "dashboard-400.png"), full_page=True)

            engine.batch(600)  # the same page, no reload: the streamed KPI must move
            expect(events).to_have_text("1,000", timeout=30_000)
            expect(page.locator(".kpi-anomalies div").last).to_have_text("20")
            expect(page.locator(".kpi-dead_letters div").last).to_have_text("2")
            page.wait_for_function(HAS_PLOT_TITLE, arg="Anomalies / s · 20 in window (2.00 %)")
            # the plots were patched with the new frames and rescaled, not frozen at the first frame's axes
            tallest_bin = int(live.snapshot().histogram["count"].max())
            page.wait_for_function(Y_AXIS_REACHES, arg=["Recent scores", tallest_bin], timeout=15_000)
            page.wait_for_function(Y_AXIS_REACHES, arg=["Throughput", 600], timeout=15_000)
            page.wait_for_timeout(600)  # let the plots take the last frame before the picture
            page.screenshot(path=str(tmp_path / "dashboard-1000.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
            engine.close()
    assert live.bad_records["scores"] == 2
    assert live.feed is not None and live.feed.errors == 0
    print(f"screenshots in {tmp_path}")


def test_server_stops_and_frees_its_port(live: LiveState) -> None:
    port = free_port()
    handle = serve(live, port=port)
    with urllib.request.urlopen(handle.url, timeout=10) as resp:
        assert resp.status == 200 and b"bokeh" in resp.read().lower()
    handle.stop()
    assert not handle.running
    again = serve(live, port=port)  # the port is free again: stop really closed the listener
    again.stop()


def test_run_server_serves_until_stopped(broker: EmbeddedBroker, topics: Topics) -> None:
    port = free_port()
    cfg = load(environ={}, overrides={
        "kafka": {"bootstrap": broker.bootstrap, "topics": topics.model_dump()},
        "dashboard": {"port": port, "refresh_ms": 500, "history_s": 60},
    })
    stop = threading.Event()
    runner = threading.Thread(target=run_server, args=(cfg,), kwargs={"open_browser": False, "stop": stop})
    runner.start()
    try:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_until(answers)
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()


def test_panel_serve_reads_isostream_config(broker: EmbeddedBroker, topics: Topics, tmp_path: Path) -> None:
    config = tmp_path / "dash.yaml"
    config.write_text(f"kafka:\n  bootstrap: {broker.bootstrap}\n  topics: {json.dumps(topics.model_dump())}\n")
    port = free_port()
    env = dict(os.environ, ISOSTREAM_CONFIG=str(config))
    cmd = [sys.executable, "-m", "panel", "serve", str(REPO / "dashboards" / "app.py"), "--port", str(port),
           "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page: list[str] = []

        def answers() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/app", timeout=10) as resp:
                    page.append(resp.read().decode())
                    return True
            except OSError:
                return False

        wait_until(answers, timeout_s=60)
        assert "<title>isostream · live anomaly detection</title>" in page[0]  # the served branch ran
        assert "Traceback" not in page[0]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
