"""The dashboard as a user sees it: real broker, real Panel server, real headless Chromium (DevTools protocol).

One engine feed (:mod:`tests.integration.dashboard_engine`: the engine's own encoders writing its topics),
one registry and lake, one dashboard server and one browser serve the whole module; each test opens its own
tab. Every page is checked to render, to update (two screenshots taken seconds apart differ, and so does the
data behind them), and to log no console error; the sessions of browsers that never load a page, or leave
early, must end.

Screenshots are test artefacts (``$ISOSTREAM_ARTIFACTS`` or a temporary folder, printed); with
``ISOSTREAM_UPDATE_SCREENSHOTS=1`` the second one of each page is also written to ``docs/screenshots/``.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import platform
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, quote, urlparse

import pytest

from dashboards.app import ServerHandle, hub_for, run_server, serve, serve_config
from dashboards.hub import Hub
from dashboards.overview import IN_FLIGHT_TICKS
from engine.config import Config, Topics, load
from streams.broker import EmbeddedBroker, free_port
from tests.integration.dashboard_engine import EngineFeed, Registry, build_registry_and_lake
from training.current import history

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page

pytestmark = pytest.mark.integration
T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu"]
VIEWPORT = {"width": 1400, "height": 1000}
SCREENSHOTS = REPO / "docs" / "screenshots"
MAX_SCREENSHOT_BYTES = 300_000
#: the value of the ``seed`` fixture (tests/conftest.py): module-scoped fixtures cannot use that function one
SEED = 20261124
REFRESH_MS = 200
#: Bokeh ends a session this long after its websocket closed, or if it never opened. Not 1 s: on a loaded
#: 2-core machine a page's websocket opens 1-3 s after its HTML, and a session that expired before then is
#: built a second time (measured: 2 sessions per tab at 1 s)
SESSION_EXPIRY_S = 5.0
SECONDS_APART = 3.0
#: the engine has run this long when the dashboard starts: the charts open with a history
BACKLOG_S = 45.0
PAGE_TIMEOUT_MS = 60_000
RED = "rgb(214, 39, 40)"  # dashboards.theme.ALARM
KEY_LINK = re.compile(r"^/keys\?key=(?P<key>[^&]+)&at=(?P<at>\d+)$")

#: a named ColumnDataSource's column: its length, its last ``n`` values and the sum of its finite values
SOURCE_JS = """([name, column, n]) => {
  for (const doc of Bokeh.documents) {
    const m = doc.get_model_by_name(name);
    if (m === null) continue;
    const col = Array.from(m.data[column] ?? []);
    const sum = col.reduce((a, v) => (Number.isFinite(v) ? a + v : a), 0);
    return {n: col.length, tail: col.slice(-n), sum: sum};
  }
  return null;
}"""
#: every Bokeh plot title (drawn on the canvas, so not DOM text)
TITLES_JS = """() => {
  const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.title !== null && typeof m.title === "object" && "text" in m.title) out.push(String(m.title.text));
  return out;
}"""
#: the locations of the Span annotations (the Keys page's "at" mark)
#: BokehJS's inline style sheets, after the page's patch: how many times two writes of one text and one of
#: another changed the element (the patch: once)
STYLE_WRITES_JS = """() => new Promise((resolve) => {
  const sheet = new (Bokeh.require("core/dom").InlineStyleSheet)(":host {top: 1px}");
  let writes = 0;
  new MutationObserver((records) => { writes += records.length; }).observe(sheet.el, {childList: true});
  sheet.replace(":host {top: 1px}"); sheet.replace(":host {top: 1px}"); sheet.replace(":host {top: 2px}");
  setTimeout(() => resolve(writes), 50);
})"""
SPANS_JS = """() => {
  const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.constructor.__name__ === "Span") out.push(m.location);
  return out;
}"""


def wait_until(check: Callable[[], T], what: str, timeout_s: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy (returned), failing with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"{what}: not within {timeout_s:.0f} s (last: {value!r})"
            raise AssertionError(msg)
        time.sleep(0.1)


def status(server: ServerHandle) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}status.json", timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


# -- the module's world: topics, registry and lake, the engine feed, the server, the browser -------------------
@dataclass
class World:
    cfg: Config
    registry: Registry


@pytest.fixture(scope="module")
def topics(broker: EmbeddedBroker) -> Topics:
    """Fresh names for every topic the dashboard reads: the broker is shared by the whole session."""
    tag = uuid.uuid4().hex[:8]
    names = Topics(**{name: f"{name}-{tag}" for name in Topics.model_fields})
    for name in ("scores", "stats", "alerts", "incidents", "metrics", "control", "reports"):
        broker.create_topic(getattr(names, name), partitions=2 if name == "scores" else 1)
    return names


def config(broker: EmbeddedBroker, topics: Topics, root: Path, **dashboard: Any) -> Config:
    """The demo's config over ``topics`` and a lake and registry under ``root``, with 5 s windows."""
    return load(REPO / "configs" / "demo.yaml", environ={}, overrides={
        "kafka": {"bootstrap": broker.bootstrap, "topics": topics.model_dump()},
        "lake": {"path": str(root / "lake")},
        "model": {"save_dir": str(root / "models"), "n_trees": 50},
        "windows": {"size_s": 5, "allowed_lateness_s": 1, "alert_anomaly_rate": 0.05, "min_count": 10},
        "dashboard": {"port": free_port(), "refresh_ms": REFRESH_MS, "history_s": 120, **dashboard},
    })


@pytest.fixture(scope="module")
def world(broker: EmbeddedBroker, topics: Topics, tmp_path_factory: pytest.TempPathFactory) -> World:
    cfg = config(broker, topics, tmp_path_factory.mktemp("dashboard"), session_expiry_s=SESSION_EXPIRY_S)
    return World(cfg, build_registry_and_lake(cfg, seed=SEED))


@pytest.fixture(scope="module")
def feed(world: World) -> Iterator[EngineFeed]:
    reg = world.registry
    engine = EngineFeed(world.cfg, seed=SEED, model_version=reg.live, shadow_version=reg.shadow,
                        backlog_s=BACKLOG_S)
    engine.swap(reg.live)
    engine.catch_up()
    engine.start()
    yield engine
    engine.stop()
    assert engine.errors == [], f"the engine feed failed: {engine.errors!r}"


@pytest.fixture(scope="module")
def hub(world: World, feed: EngineFeed) -> Iterator[Hub]:
    h = hub_for(world.cfg).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def server(world: World, hub: Hub) -> Iterator[ServerHandle]:
    handle = serve_config(world.cfg, hub)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield b
        b.close()
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("ISOSTREAM_ARTIFACTS")
    out = Path(env) if env else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots in {out}")
    return out


@dataclass
class Tab:
    """One browser tab on the server, with the console errors and page errors it logged."""

    page: Page
    base: str
    errors: list[str]

    def open(self, path: str) -> None:
        self.page.goto(self.base + path.lstrip("/"))

    def source(self, name: str, column: str = "t", n: int = 20) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.page.evaluate(SOURCE_JS, [name, column, n])
        return result

    def newest(self, name: str, column: str) -> float:
        """The last value of a named source's column (-inf when it is empty or missing)."""
        s = self.source(name, column, 1)
        return float(s["tail"][0]) if s and s["tail"] else float("-inf")

    def titles(self) -> list[str]:
        return list(self.page.evaluate(TITLES_JS))

    def select(self, label: str) -> Locator:
        """The ``<select>`` of the Panel Select widget labelled ``label`` (locators pierce the shadow DOM)."""
        return self.page.locator(".bk-input-group", has_text=label).locator("select")

    def kpi(self, label: str) -> str:
        """The value shown above the headline-number label ``label``."""
        exact = re.compile(f"^{re.escape(label)}$")
        return self.page.locator(".iso-kpi", has=self.page.locator(".l", has_text=exact)).locator(".v").inner_text()

    def shot(self, artifacts: Path, name: str) -> bytes:
        png = self.page.screenshot()
        (artifacts / f"{name}.png").write_bytes(png)
        return png


@pytest.fixture(scope="module")
def context(browser: Browser) -> Iterator[BrowserContext]:
    """One browser profile for the module's tabs: its cache spares each tab compiling Bokeh's scripts again."""
    ctx = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    yield ctx
    ctx.close()


@pytest.fixture
def tab(context: BrowserContext, server: ServerHandle) -> Iterator[Tab]:
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    # warnings (Bokeh's "could not set initial ranges", WebGL notes) are not errors
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    yield Tab(page, server.url, errors)
    page.close()


def publish(name: str, png: bytes) -> None:
    """The page's picture for the README, when asked for (a normal run does not rewrite tracked files)."""
    if os.environ.get("ISOSTREAM_UPDATE_SCREENSHOTS") != "1":
        return
    assert len(png) < MAX_SCREENSHOT_BYTES, f"screenshot {name}: {len(png):,} bytes, over {MAX_SCREENSHOT_BYTES:,}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / f"{name}.png").write_bytes(png)


def style(locator: Locator, prop: str) -> str:
    """A computed style property of the first element ``locator`` finds."""
    return str(locator.first.evaluate(f"e => getComputedStyle(e).{prop}"))


def number(text: str) -> float:
    return float(text.replace(",", ""))


def paints(canvas: Any) -> int:
    """How many times a LiveChart canvas has drawn itself (it counts them in ``data-paints``)."""
    return int(canvas.get_attribute("data-paints") or 0)


def key_times(hub: Hub, key: str) -> set[float]:
    """The event times (ms) of ``key``'s points in the server's buffer."""
    return set(hub.state.key_series(key)[1]["t"].tolist())


def shows_key(tab: Tab, hub: Hub, key: str, others: list[str]) -> bool:
    """True when the Keys page's plots hold ``key``'s points: its latest points are ``key``'s and no other's."""
    drawn = tab.source("key-points", "t", 20)
    if not drawn or not drawn["tail"]:
        return False
    tail = set(drawn["tail"])
    return tail <= key_times(hub, key) and not any(tail & key_times(hub, o) for o in others)


# -- the pages ----------------------------------------------------------------------------------------------
def test_overview_renders_updates_and_fills_the_alerts_table(world: World, tab: Tab, artifacts: Path) -> None:
    tab.open("/")
    wait_until(lambda: (s := tab.source("live-timeline", "events")) and s["sum"] > 0, "the live timeline filled")
    ring = (tab.source("live-timeline", "seq") or {}).get("n")
    newest = tab.newest("live-timeline", "seq")
    wait_until(lambda: tab.kpi("events scored") not in ("", "–"), "the events KPI")
    assert tab.kpi("model version") == world.registry.live
    assert re.fullmatch(r"[\d,.]+ / [\d,.]+ ms", tab.kpi("latency p50 / p99")), tab.kpi("latency p50 / p99")
    rows = tab.page.locator(".alerts-table table tbody tr")
    wait_until(lambda: rows.count() > 0, "the alerts table filled")
    href = rows.first.locator("a").first.get_attribute("href") or ""
    assert KEY_LINK.match(href), href
    dead = tab.page.locator("table.iso", has_text="reason")
    wait_until(lambda: dead.count() == 1 and "invalid_json" in dead.inner_text(), "dead letters by reason")
    assert (tab.source("live-histogram", "count") or {}).get("sum", 0) > 0
    events = number(tab.kpi("events scored"))
    # dashboards/livechart.py: throughput, anomalies (the fast two), the score histogram, latency, lag
    charts = tab.page.locator("canvas.iso-livechart")
    assert charts.count() == 5
    fast = [paints(charts.nth(i)) for i in range(2)]
    first = tab.shot(artifacts, "overview-1")

    tab.page.wait_for_timeout(SECONDS_APART * 1000)  # the deliberate gap between the two pictures
    # far more ticks than a page sends ahead of its browser's acknowledgements (its last update before it holds
    # may carry a few late rows too): the acknowledgements come back
    wait_until(lambda: tab.newest("live-timeline", "seq") > newest + 4 * IN_FLIGHT_TICKS,
               "the timeline streamed more ticks than flow control lets out unacknowledged")
    # the fast charts redraw as their rows come (a tick is 100 ms: a few seconds are tens of paints)
    wait_until(lambda: all(paints(charts.nth(i)) > fast[i] + 5 for i in range(2)), "the fast charts redrew")
    assert (tab.source("live-timeline", "seq") or {}).get("n") == ring  # a ring: rows roll over as ticks come
    wait_until(lambda: number(tab.kpi("events scored")) > events, "the events KPI grew")
    second = tab.shot(artifacts, "overview-2")
    assert first != second
    publish("overview", second)
    assert tab.page.evaluate(STYLE_WRITES_JS) == 1  # identical rewrites skipped (theme.STYLE_PATCH_JS)
    scripts = tab.page.evaluate("performance.getEntriesByType('resource').map((r) => r.name)"
                                ".filter((n) => n.includes('.js'))")
    assert any("bokeh.min.js" in s for s in scripts) and not any("mathjax" in s for s in scripts), scripts
    assert tab.errors == []


def handshake(url: str, origin: str | None = None, cookie: str | None = None) -> tuple[int, dict[str, Any] | None]:
    """A websocket handshake at ``url`` (http scheme): its HTTP status (101: it opened) and, if it opened, its
    first message."""
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {k: v for k, v in (("Origin", origin), ("Cookie", cookie)) if v}

    async def go() -> tuple[int, dict[str, Any] | None]:
        try:
            conn = await websocket_connect(HTTPRequest(url.replace("http", "ws", 1), headers=headers))
        except HTTPClientError as exc:
            return exc.code, None
        first = await asyncio.wait_for(conn.read_message(), 10)
        conn.close()
        return 101, json.loads(first) if isinstance(first, str) else None

    result: list[tuple[int, dict[str, Any] | None]] = []
    # a thread of its own: Playwright's sync API already runs an event loop on this one
    worker = threading.Thread(target=lambda: result.append(asyncio.run(go())))
    worker.start()
    worker.join(30)
    return result[0]


def overview_pages(hub: Hub) -> list[Any]:
    """The Overview pages the broadcaster ticks."""
    from dashboards.overview import Overview

    return [s.page for s in list(hub.broadcaster._slots.values()) if isinstance(s.page, Overview)]


def test_the_timeline_comes_over_its_own_socket_to_its_own_page_only(hub: Hub, tab: Tab,
                                                                    server: ServerHandle) -> None:
    assert hub.push is not None  # dashboard.push_timeline is on by default
    wait_until(lambda: status(server)["sessions"]["live"] == 0, "the previous tests' tabs ended",
               timeout_s=4 * SESSION_EXPIRY_S)
    before = status(server)["push"]
    tab.open("/")
    wait_until(lambda: status(server)["push"]["sockets"] == 1, "the page's timeline socket open")
    [page] = wait_until(lambda: overview_pages(hub), "the Overview ticking")
    assert page.pushed
    newest = tab.newest("live-timeline", "seq")
    served = list(page.timeline.data["seq"])  # the first frame, sent with the session
    wait_until(lambda: tab.newest("live-timeline", "seq") > newest + 20, "rows streamed over the socket")
    assert list(page.timeline.data["seq"]) == served  # the session's own source was not streamed
    seqs = (tab.source("live-timeline", "seq", 400) or {}).get("tail", [])
    assert seqs == list(range(int(seqs[0]), int(seqs[0]) + len(seqs)))  # in order, no gap, no duplicate
    now = status(server)["push"]
    assert now["messages"] > before["messages"] and now["errors"] == 0 and now["missed"] == before["missed"]

    # who may open it: the page's own token, from an allowed origin; a missing value is sent as null (NaN)
    url = f"{server.url.rstrip('/')}{hub.push.feed_url(page._token)}"
    code, first = handshake(url, origin=server.url.rstrip("/"))
    assert code == 101 and first is not None and set(first["rows"]) >= {"seq", "t", "events_per_s"}
    assert first["rollover"] == hub.state.ticks.size
    assert handshake(url, origin="http://elsewhere.example:80")[0] == 403
    assert handshake(f"{server.url.rstrip('/')}{hub.push.feed_url('not-a-token')}")[0] == 404
    assert handshake(url + "&after=x")[0] == 400

    # the page goes: its session ends, its socket closes and its token is void
    tab.page.goto("about:blank")
    wait_until(lambda: status(server)["push"]["sockets"] == 0, "the socket closed with its tab",
               timeout_s=4 * SESSION_EXPIRY_S)
    wait_until(lambda: status(server)["push"]["expected_pages"] == before["expected_pages"], "the token void",
               timeout_s=4 * SESSION_EXPIRY_S)
    assert handshake(url)[0] == 404
    assert tab.errors == []


def test_with_basic_auth_the_timeline_socket_needs_the_login(world: World, context: BrowserContext) -> None:
    own = hub_for(world.cfg).start()
    handle = serve(own, port=free_port(), auth={"basic_auth": "open-sesame", "cookie_secret": "test-cookie"})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        assert own.push is not None
        token = own.push.expect(overview_pages(own) or object())  # a valid token: the login is what is missing
        assert handshake(f"{handle.url.rstrip('/')}{own.push.feed_url(token)}")[0] == 403
        page.goto(handle.url)
        page.fill("input[name=username]", "operator")
        page.fill("input[name=password]", "open-sesame")
        page.click("button[type=submit]")
        wait_until(lambda: own.push.status()["sockets"] == 1, "the logged-in page's socket open")
        wait_until(lambda: page.evaluate(
            "(() => { const m = Bokeh.documents[0].get_model_by_name('live-timeline');"
            " return m.data.seq[m.get_length() - 1]; })()") > own.state.ticks.seq - 5, "rows on the page")
    finally:
        page.close()
        handle.stop()
        own.stop()


def test_keys_page_updates_and_its_selector_switches_the_plots(hub: Hub, tab: Tab, artifacts: Path) -> None:
    tab.open("/keys")
    selector = tab.select("station / sensor key")
    wait_until(lambda: selector.locator("option").count() == 6, "all six live keys in the selector")
    keys = selector.locator("option").all_inner_texts()
    shown = selector.input_value()  # the busiest alerting key (the order may change as alerts come)
    assert shown in keys
    others = [k for k in keys if k != shown]
    wait_until(lambda: shows_key(tab, hub, shown, others), f"the plots showing {shown}")
    newest = tab.newest("key-points", "t")
    first = tab.shot(artifacts, "keys-1")

    tab.page.wait_for_timeout(SECONDS_APART * 1000)
    wait_until(lambda: tab.newest("key-points", "t") > newest, f"new points of {shown} streamed")
    second = tab.shot(artifacts, "keys-2")
    assert first != second
    publish("keys", second)

    other = others[1]
    selector.select_option(other)
    wait_until(lambda: shows_key(tab, hub, other, [k for k in keys if k != other]), f"the plots switched to {other}")
    link = tab.page.locator("a", has_text="in the lake (history)")
    wait_until(lambda: other in link.inner_text(), "the history link follows the key")
    assert tab.errors == []


def test_keys_deep_link_opens_the_key_at_a_time(hub: Hub, tab: Tab) -> None:
    _, listed = hub.state.key_list()
    key = listed[-1][0]  # not the default (the busiest alerting key)
    at = int(time.time() * 1000) - 5_000
    tab.open(f"/keys?key={quote(key)}&at={at}")
    wait_until(lambda: tab.select("station / sensor key").input_value() == key, f"{key} selected")
    wait_until(lambda: shows_key(tab, hub, key, [k for k, _, _ in listed if k != key]), f"the plots showing {key}")
    assert tab.page.evaluate(SPANS_JS) == [at]

    tab.open("/keys?key=no-such-key&at=not-a-time")  # bad input is answered, not a crash
    tab.page.get_by_text("no recent events of no-such-key").wait_for()
    assert tab.select("station / sensor key").input_value() == "no-such-key"
    assert tab.errors == []


def test_incidents_open_first_in_red_and_link_to_their_key(hub: Hub, tab: Tab, artifacts: Path) -> None:
    tab.open("/incidents")
    # the pane's own element is the shadow host: its text is in the table inside
    table = tab.page.locator(".incidents-table table")
    badges = table.locator(".iso-badge")
    wait_until(lambda: {"open", "closed"} <= set(badges.all_inner_texts()), "open and closed incidents listed")
    statuses = badges.all_inner_texts()
    assert statuses == sorted(statuses, key=lambda s: s != "open"), statuses  # open ones first
    # the table is redrawn every 2 s: an element read during a redraw has no style, so read until one has
    wait_until(lambda: style(table.locator(".iso-badge.open"), "backgroundColor") == RED, "open badges red")
    wait_until(lambda: style(table.locator(".iso-badge.closed"), "backgroundColor") not in ("", RED),
               "closed badges not red")
    wait_until(lambda: style(table.locator("tr.open td"), "borderLeftColor") == RED, "open rows marked red")
    wait_until(lambda: number(tab.kpi("open incidents")) == table.locator(".iso-badge.open").count(),
               "the open-incidents number matches the table")
    text = table.inner_text()
    first = tab.shot(artifacts, "incidents-1")

    tab.page.wait_for_timeout(SECONDS_APART * 1000)
    wait_until(lambda: table.inner_text() != text, "the incidents table changed")
    second = tab.shot(artifacts, "incidents-2")
    assert first != second
    publish("incidents", second)

    link = table.locator("a").first
    href = link.get_attribute("href") or ""
    assert KEY_LINK.match(href), href
    link.click()  # the table may have been redrawn since: check where the click went, not the href read
    tab.page.wait_for_url(re.compile(r"/keys\?key="))
    query = parse_qs(urlparse(tab.page.url).query)
    key, at = query["key"][0], int(query["at"][0])
    wait_until(lambda: tab.select("station / sensor key").input_value() == key, f"{key} selected")
    wait_until(lambda: tab.page.evaluate(SPANS_JS) == [at], "the incident's start marked")
    _, listed = hub.state.key_list()
    wait_until(lambda: shows_key(tab, hub, key, [k for k, _, _ in listed if k != key]), f"the plots showing {key}")
    assert tab.errors == []


def test_models_page_shows_the_live_version_and_the_promotion_history(world: World, tab: Tab,
                                                                       artifacts: Path) -> None:
    reg = world.registry
    tab.open("/models")
    live = tab.page.locator(".models-live .iso-kpis")
    wait_until(lambda: reg.live in live.inner_text(), "the live version")
    assert tab.kpi("how it went live") == "promote"
    versions = tab.page.locator(".models-versions tbody tr")
    assert versions.count() == 3
    assert reg.live in versions.filter(has=tab.page.locator(".iso-badge.live")).inner_text()
    assert reg.shadow in versions.filter(has=tab.page.locator(".iso-badge.shadow")).inner_text()
    promotions = tab.page.locator("table.iso", has_text="reason").locator("tbody tr")
    actions = [r.locator("td").nth(1).inner_text() for r in promotions.all()]
    assert actions == [h["action"] for h in reversed(history(world.cfg.registry))]  # newest first
    promoted = promotions.filter(has_text="promote")
    assert reg.live in promoted.inner_text() and "gate passed" in promoted.inner_text()
    swaps = tab.page.locator("table.iso", has_text="pipeline")
    wait_until(lambda: "swap" in swaps.inner_text() and reg.live in swaps.inner_text(), "the control-topic swap")
    shadow_row = tab.page.locator("table.iso", has_text="candidate alert rate").locator("tbody tr").first
    wait_until(lambda: reg.shadow in shadow_row.inner_text(), "the shadow's live counts")
    events = number(shadow_row.locator("td").nth(1).inner_text())
    first = tab.shot(artifacts, "models-1")

    tab.page.wait_for_timeout(SECONDS_APART * 1000)
    wait_until(lambda: number(shadow_row.locator("td").nth(1).inner_text()) > events, "the shadow scored more events")
    second = tab.shot(artifacts, "models-2")
    assert first != second
    publish("models", second)
    assert tab.errors == []


def test_history_page_reads_the_lake_and_switches_keys(world: World, hub: Hub, tab: Tab, artifacts: Path) -> None:
    first_day, last_day = world.registry.lake_days
    key = "ST0000-DP00"
    tab.open(f"/history?from={first_day}&to={last_day}&key={key}")
    selector = tab.select("Key (datapoint_id)")
    wait_until(lambda: selector.input_value() == key, f"{key} picked from the link")
    assert hub.history is not None
    events = int(hub.history.timeline(first_day, last_day)["events"].sum())
    assert events > 0
    tab.page.get_by_text(f"{first_day} … {last_day} (UTC) · {events:,} events").wait_for()
    lake = hub.history

    def charted(k: str) -> bool:  # the key's chart, titled with its event count in the lake
        return f"{k} · value · {lake.key_series(first_day, last_day, k).events:,} events" in " | ".join(
            tab.titles())

    wait_until(lambda: charted(key), f"the chart of {key}")
    tab.page.locator(".tabulator").first.wait_for()  # the report and windows tables
    first = tab.shot(artifacts, "history-1")

    other = next(k for k in selector.locator("option").all_inner_texts() if k != key)
    selector.select_option(other)
    # the browser's document still lists the replaced plots among its models: look for the new one
    wait_until(lambda: charted(other), f"the key's chart switched to {other}")
    second = tab.shot(artifacts, "history-2")
    assert first != second
    publish("history", first)  # the deep-linked view
    assert tab.errors == []


# -- sessions -------------------------------------------------------------------------------------------------
def test_sessions_end_when_a_browser_never_loads_or_leaves_early(browser: Browser, tab: Tab,
                                                                  server: ServerHandle) -> None:
    wait_until(lambda: status(server)["sessions"]["live"] == 0, "the previous tests' tabs ended",
               timeout_s=4 * SESSION_EXPIRY_S)
    leaver = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    try:
        tab.open("/")
        wait_until(lambda: status(server)["sessions"]["ticking"] == 1, "the open tab ticking")
        before = status(server)["sessions"]

        with urllib.request.urlopen(f"{server.url}keys", timeout=30) as resp:  # a session whose websocket never opens
            assert resp.status == 200
        quick = leaver.new_page()
        quick.goto(f"{server.url}incidents", wait_until="commit")
        quick.wait_for_timeout(200)  # the tab closes ~200 ms after navigating, before the page has loaded
        leaver.close()
        started = time.monotonic()
        samples: list[dict[str, int]] = []

        def ended() -> bool:
            s = status(server)["sessions"]
            samples.append(s)
            return s["live"] == 1 and s["destroyed"] >= before["destroyed"] + 2

        wait_until(ended, "the two sessions ended", timeout_s=6 * SESSION_EXPIRY_S)
        print(f"orphan sessions ended {time.monotonic() - started:.1f} s after the tab closed")
        after = samples[-1]
        assert after["created"] >= before["created"] + 2 and after["ticking"] == 1
        # the plain GET never loads: only the quick tab could have (it had 200 ms), and only what loaded ticks
        assert after["loaded"] - before["loaded"] <= 1
        assert all(s["ticking"] <= 1 + (s["loaded"] - before["loaded"]) for s in samples), samples
    finally:
        leaver.close()
    assert tab.errors == []


def test_the_page_cache_is_the_servers_own_and_never_a_viewers(server: ServerHandle, hub: Hub, tab: Tab) -> None:
    import panel as pn

    pages = ("/", "/keys", "/incidents", "/models", "/history")
    # primed as the server started (by this server or an earlier one in the process: Panel's cache is global)
    assert all(p in pn.state._session_key_funcs for p in pages)
    cached = {id(session.document) for session in pn.state._sessions.values()}
    assert len(cached) == len(pages)
    assert status(server)["sessions"]["cached"] in (0, len(pages))
    wait_until(lambda: status(server)["sessions"]["live"] == 0, "the previous tests' tabs ended",
               timeout_s=4 * SESSION_EXPIRY_S)
    tab.open("/keys")
    wait_until(lambda: status(server)["sessions"]["ticking"] == 1, "the tab ticking")
    ticking = [slot.doc for slot in hub.broadcaster._slots.values()]
    assert len(ticking) == 1 and id(ticking[0]) not in cached  # the tab has a session of its own
    assert status(server)["sessions"]["live"] == 1  # the cached pages are not viewers
    assert {id(session.document) for session in pn.state._sessions.values()} == cached  # and stay as they were
    assert tab.errors == []


def test_a_page_says_when_its_updates_stop_coming(world: World, context: BrowserContext, artifacts: Path) -> None:
    """The page's watchdog: silent while beats come, a banner once they stop, gone when they come again. Its
    own hub and server, so that stopping its clock stops no other test's pages."""
    own = hub_for(world.cfg)
    own.stale_after_s = 2.0
    own.start()
    handle = serve(own, port=free_port())
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(handle.url + "incidents")
        banner = page.locator(".iso-stale")
        wait_until(lambda: status(handle)["sessions"]["ticking"] == 1, "the tab ticking")
        time.sleep(3 * own.stale_after_s)
        assert not banner.is_visible()  # beats come: no banner, however long
        [where] = status(handle)["pages"]
        # where a wedged update would wait, read from this Bokeh and Tornado (None would mean they hide it)
        assert where["doc_locked"] in (False, True) and where["write_locked"] in (False, True)
        assert isinstance(where["unsent_bytes"], int)
        own.broadcaster.stop()
        wait_until(banner.is_visible, "the banner once the server stopped updating", timeout_s=10)
        assert re.match(r"No update from the dashboard server for \d+ s", banner.inner_text())
        page.screenshot(path=str(artifacts / "incidents-stale.png"))
        own.broadcaster.start()
        wait_until(lambda: not banner.is_visible(), "the banner gone once updates came again", timeout_s=10)
        assert errors == []
    finally:
        page.close()
        handle.stop()
        own.stop()


def handshake_and_close_at_once(url: str) -> bytes:
    """GET ``url`` (a session), then send its websocket handshake and a close frame in one TCP write.

    A tab that shuts while its page connects does the same: Bokeh reads the close before its callback attaches
    the session to the socket (see :func:`dashboards.app.keep_alive_ms`). Returns the server's first answer.
    """
    with urllib.request.urlopen(url, timeout=30) as resp:
        html = resp.read().decode()
    token = re.search(r'"token"\s*:\s*"([^"]+)"', html)
    assert token is not None, "no session token in the page"
    u = urlparse(url)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (f"GET {u.path.rstrip('/')}/ws HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                 f"Origin: {u.scheme}://{u.netloc}\r\nSec-WebSocket-Protocol: bokeh, {token[1]}\r\n\r\n")
    mask = os.urandom(4)
    going_away = bytes(b ^ mask[i % 4] for i, b in enumerate(struct.pack("!H", 1001)))
    close = bytes([0x88, 0x80 | len(going_away)]) + mask + going_away  # a masked close frame, code 1001
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(handshake.encode() + close)
        return sock.recv(64)


def test_a_tab_that_closes_during_its_websocket_handshake_leaves_no_session(server: ServerHandle) -> None:
    wait_until(lambda: status(server)["sessions"]["live"] == 0, "the previous tests' tabs ended",
               timeout_s=4 * SESSION_EXPIRY_S)
    before = status(server)["sessions"]
    answer = handshake_and_close_at_once(server.url)
    assert answer.startswith(b"HTTP/1.1 101"), answer  # the socket opened: the case under test, not a refusal
    started = time.monotonic()
    # Bokeh's own keep-alive (37 s) would keep the session past this; the server's pings end it within
    # expiry + check + ping (12.5 s here)
    wait_until(lambda: (s := status(server)["sessions"])["live"] == 0 and s["destroyed"] > before["destroyed"],
               "the session of a socket that closed during its handshake ended", timeout_s=25.0)
    print(f"the session ended {time.monotonic() - started:.1f} s after its socket closed")


def test_a_bad_record_is_skipped_and_the_page_keeps_updating(topics: Topics, feed: EngineFeed, server: ServerHandle,
                                                            tab: Tab) -> None:
    bad_before = status(server)["bad_records"]["scores"]
    feed.send_raw(topics.scores, [b"not json", b'{"score": "high"}'])
    wait_until(lambda: status(server)["bad_records"]["scores"] == bad_before + 2, "two bad scores records counted")
    tab.open("/")
    tab.page.locator(".iso-status", has_text=f"{bad_before + 2} bad records skipped").wait_for()
    events = wait_until(lambda: tab.kpi("events scored") not in ("", "–") and number(tab.kpi("events scored")),
                        "the events KPI")
    wait_until(lambda: number(tab.kpi("events scored")) > events, "the page still updating")
    st = status(server)
    assert st["feed_errors"] == 0
    assert st["feed"]["delay_ms"]["n"] > 0 and st["feed"]["handler_ms"]["n"] > 0  # the server says how fresh
    assert tab.errors == []


# -- the ways to run it -------------------------------------------------------------------------------------
def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` (connections the server closed may linger in TIME_WAIT: a server may bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_server_stops_and_frees_its_port(hub: Hub) -> None:
    port = free_port()
    handle = serve(hub, port=port)
    with urllib.request.urlopen(f"{handle.url}status.json", timeout=10) as resp:
        assert resp.status == 200 and json.loads(resp.read())["consuming"] is True
    handle.stop()
    assert not handle.running and port_is_free(port)
    again = serve(hub, port=port)  # the port is free again: stop really closed the listener
    again.stop()


def test_run_server_serves_until_stopped(broker: EmbeddedBroker, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    names = Topics(**{name: f"run-{name}-{tag}" for name in Topics.model_fields})
    broker.create_topic(names.scores)
    cfg = config(broker, names, tmp_path, heap_trim_s=0.2)
    stop = threading.Event()
    runner = threading.Thread(target=run_server, args=(cfg,), kwargs={"open_browser": False, "stop": stop})
    runner.start()
    url = f"http://127.0.0.1:{cfg.dashboard.port}/"
    try:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{url}status.json", timeout=5) as resp:
                    return bool(json.loads(resp.read())["consuming"])
            except OSError:
                return False

        wait_until(answers, "run_server answering /status.json")
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.status == 200 and "isostream · Overview" in resp.read().decode()

        def trimmed() -> dict[str, Any] | None:  # the config's heap_trim_s reaches the server's trimmer
            with urllib.request.urlopen(f"{url}status.json", timeout=5) as resp:
                trim: dict[str, Any] = json.loads(resp.read())["heap_trim"]
            return trim if trim["trims"] >= 2 or not trim["available"] else None

        trim = wait_until(trimmed, "the heap trimmer's second trim")
        assert trim["every_s"] == 0.2
        assert trim["available"] == (sys.platform == "linux" and platform.libc_ver()[0] == "glibc")
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert port_is_free(cfg.dashboard.port)


def test_panel_serve_serves_the_overview_at_app(broker: EmbeddedBroker, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    names = Topics(**{name: f"panel-{name}-{tag}" for name in Topics.model_fields})
    config_file = tmp_path / "dash.yaml"
    config_file.write_text(json.dumps({"kafka": {"bootstrap": broker.bootstrap, "topics": names.model_dump()},
                                       "lake": {"path": str(tmp_path / "lake")},
                                       "model": {"save_dir": str(tmp_path / "models")}}))  # JSON is YAML
    port = free_port()
    env = dict(os.environ, ISOSTREAM_CONFIG=str(config_file))
    cmd = [sys.executable, "-m", "panel", "serve", str(REPO / "dashboards" / "app.py"), "--port", str(port),
           "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}", "--keep-alive", "5000"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page: list[str] = []

        def answers() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/app", timeout=30) as resp:
                    page.append(resp.read().decode())
                    return True
            except OSError:
                return False

        wait_until(answers, "panel serve answering /app", timeout_s=90)
        # the served branch ran and built the Overview page (the page template's title is the document's)
        assert "<title>isostream · Overview</title>" in page[0]
        assert "Traceback" not in page[0]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# -- LiveChart's line, in the browser that runs it --------------------------------------------------------------
TRACE_JS = """async ([code, n, width]) => {
  const url = "data:text/javascript;base64," + btoa(code);
  const {trace} = await import(url);
  const t = [], v = [];
  for (let i = 0; i < n; i++) { t.push(i); v.push(i === 1200 || i === 1201 ? NaN : Math.sin(i / 7) * 50 + (i % 13)); }
  const X = (x) => 10 + (x / (n - 1)) * width, Y = (y) => 200 - y;
  const calls = [];  // what a canvas path would have been told
  const ctx = {moveTo: (x, y) => calls.push(["M", x, y]), lineTo: (x, y) => calls.push(["L", x, y])};
  trace(ctx, t, v, n, X, Y);
  // the full path's extremes per pixel column, to compare with the decimated one's
  const full = {}, drawn = {}, per = {};
  const add = (m, x, y) => { const c = Math.floor(x); const e = m[c] || (m[c] = [Infinity, -Infinity]);
                             e[0] = Math.min(e[0], y); e[1] = Math.max(e[1], y); };
  for (let i = 0; i < n; i++) if (Number.isFinite(v[i])) add(full, X(t[i]), Y(v[i]));
  for (const [, x, y] of calls) { add(drawn, x, y); per[Math.floor(x)] = (per[Math.floor(x)] || 0) + 1; }
  return {calls: calls.length, moves: calls.filter((c) => c[0] === "M").length, first: calls[0],
          last: calls[calls.length - 1], most_per_column: Math.max(...Object.values(per)),
          same_extremes: JSON.stringify(full) === JSON.stringify(drawn), expected_last: [X(n - 1), Y(v[n - 1])]};
}"""


def run_livechart_js(context: BrowserContext, script: str, *calls: list[Any]) -> list[Any]:
    """``script`` (given livechart.js's code first, then each of ``calls``' arguments) run in a fresh page."""
    code = (Path(__file__).parents[2] / "dashboards" / "livechart.js").read_text()
    page = context.new_page()
    try:
        return [page.evaluate(script, [code, *args]) for args in calls]
    finally:
        page.close()


def test_livechart_draws_a_long_line_as_its_extremes_per_pixel(context: BrowserContext) -> None:
    [out] = run_livechart_js(context, TRACE_JS, [3000, 300])
    # 3,000 points over 300 px, one missing pair: at most 4 points per column, and one more column-start
    # where the line breaks (each side of the gap has its own column's points)
    assert out["most_per_column"] <= 8 and out["calls"] <= 4 * 301 + 4, out
    assert out["moves"] == 2  # the start, and again after the missing values: the gap is not bridged
    assert out["same_extremes"]  # every pixel column spans what the 3,000 points span: the same picture
    assert out["first"][:1] == ["M"] and out["last"][1:] == out["expected_last"]


BARS_JS = """async ([code, marker, n]) => {
  const url = "data:text/javascript;base64," + btoa(code);
  const {paint} = await import(url);
  document.body.innerHTML = '<canvas style="display:block;width:400px;height:220px"></canvas>';
  const canvas = document.querySelector("canvas");
  const real = canvas.getContext("2d");
  const calls = [];  // each drawing call, with the colours it was made in
  const ctx = new Proxy(real, {
    get(target, prop) {
      const v = target[prop];
      if (typeof v !== "function") return v;
      return (...args) => {
        calls.push([prop, args, target.fillStyle, target.strokeStyle, target.textAlign]);
        return v.apply(target, args);
      };
    },
    set(target, prop, value) { target[prop] = value; return true; },
  });
  const left = [], right = [], count = [];
  for (let i = 0; i < n; i++) { left.push(i / n); right.push((i + 1) / n); count.push(i === 3 ? 0 : 10 + i); }
  const src = {data: {left, right, count}, get_length: () => n};
  const model = {kind: "bars", heading: "Recent scores", x: "left", x_to: "right", x_start: 0, x_end: 1,
                 series: [{column: "count", label: "events", color: "#1f77b4"}], marker, marker_color: "#d62728",
                 x_label: "anomaly score", y_label: "events", empty_text: "waiting"};
  paint(canvas, ctx, model, src);
  calls.length = 0;  // the second paint: it starts from the first one's context settings, as a live chart does
  const drawn = paint(canvas, ctx, model, src);
  const heading = calls.find((c) => c[0] === "fillText" && c[1][0] === model.heading);
  const bars = calls.filter((c) => c[0] === "fillRect" && c[2] === "#1f77b4").map((c) => c[1]);
  const dashed = calls.findIndex((c) => c[0] === "setLineDash" && c[1][0].length > 0);
  const markerAt = dashed >= 0 ? calls.slice(dashed).find((c) => c[0] === "moveTo") : null;
  return {drawn, bars, heading_align: heading ? heading[4] : null, marker_x: markerAt ? markerAt[1][0] : null,
          marker_colour: markerAt ? markerAt[3] : null,
          texts: calls.filter((c) => c[0] === "fillText").map((c) => String(c[1][0]))};
}"""


def test_livechart_draws_bars_over_a_fixed_range_and_marks_the_threshold(context: BrowserContext) -> None:
    marked, unmarked, empty = run_livechart_js(context, BARS_JS, [0.7, 20], [None, 20], [0.7, 0])
    assert marked["drawn"]
    assert marked["heading_align"] == "left"  # a repaint once drew it centred on the plot's left edge, cut off
    # 20 bins, one of them empty: 19 bars, side by side from x = 0 to 1 (the plot's 62..388 px)
    assert len(marked["bars"]) == 19, marked["bars"]
    lefts = sorted(b[0] for b in marked["bars"])
    assert lefts[0] == pytest.approx(62.5, abs=0.01)
    assert max(b[0] + b[2] for b in marked["bars"]) == pytest.approx(387.5, abs=0.6)
    assert all(b[3] > 0 for b in marked["bars"])  # from the axis up
    assert marked["marker_x"] == pytest.approx(290.5)  # round(62 + 0.7 × 326) + 0.5: the threshold
    assert marked["marker_colour"] == "#d62728"
    assert {"0.0", "0.5", "1.0", "anomaly score", "events"} <= set(marked["texts"]), marked["texts"]
    assert unmarked["marker_x"] is None and len(unmarked["bars"]) == 19
    assert empty["bars"] == [] and "waiting" in empty["texts"]
