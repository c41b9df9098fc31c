"""The pages built over a fed LiveState without a server, the broadcaster's accounting, and the server options."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tornado.websocket import WebSocketClosedError

from dashboards.app import CLOSED_TAB_MESSAGES, CLOSED_TAB_WRITES, auth_options, routes, websocket_origins
from dashboards.broadcast import Broadcaster
from dashboards.hub import Hub
from dashboards.incidents_page import IncidentsPage, incidents_html
from dashboards.keys_page import KeysPage
from dashboards.models_page import ModelsPage
from dashboards.models_watch import ModelsWatch
from dashboards.overview import IN_FLIGHT_TICKS, Overview
from dashboards.resources import skip_mathjax
from dashboards.state import LiveState
from engine.config import Config, load
from engine.synthetic import scored_day_with_champion, station_day
from training.current import record

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def scores(n: int, keys: int = 3, *, start: int = 0) -> list[bytes]:
    return [json.dumps({"key": f"dp-{i % keys}", "event_time": f"2027-01-15T08:{(start + i) // 60 % 60:02d}:"
                        f"{(start + i) % 60:02d}Z", "score": 0.9 if i % 10 == 0 else 0.3, "threshold": 0.7,
                        "is_anomaly": i % 10 == 0, "model_version": "v1", "value": float(i)}).encode()
            for i in range(n)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hub(clock: Clock) -> Hub:
    state = LiveState({}, history_s=10, clock=clock, key_field="datapoint_id", value_fields=("value",))
    return Hub.build(state)


def tick(hub: Hub, clock: Clock, n: int = 1) -> None:
    for _ in range(n):
        clock.now += 0.1
        hub.state.tick()


# -- pages ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", [Overview, KeysPage, IncidentsPage, ModelsPage])
def test_every_page_builds_over_an_empty_state_with_empty_states(hub: Hub, page: type) -> None:
    view = page(hub)
    view.update()
    layout = view.page()
    assert layout is not None and view.updates == 2
    assert "waiting" in view.status_line() or "no missed updates" in view.status_line()


def test_a_live_page_beats_with_its_status_line_unless_its_banner_is_off(hub: Hub) -> None:
    view = KeysPage(hub)
    view.update()
    view.update()  # within the second: no second status line, no second beat
    assert view._watchdog is not None and view._watchdog.beat == 1
    assert view._watchdog.after_s == hub.stale_after_s == 10.0
    view._status_every.now()
    view.update()
    assert view._watchdog.beat == 2
    hub.stale_after_s = 0.0
    quiet = KeysPage(hub)
    quiet.update()
    assert quiet._watchdog is None and quiet._top() == [quiet._status]


def test_overview_sends_the_whole_ring_then_one_row_per_tick(hub: Hub, clock: Clock) -> None:
    hub.state.ingest_scores(scores(50))
    tick(hub, clock, 3)
    view = Overview(hub)
    view.update()
    first = len(view.timeline.data["seq"])
    assert first == hub.state.ticks.size  # the prefilled history and the three ticks
    tick(hub, clock)
    view.update()
    assert len(view.timeline.data["seq"]) == first  # rolled over: the ring's size, one row in, one out
    assert view.timeline.data["seq"][-1] == 4 and view.missed == 0
    tick(hub, clock, hub.state.ticks.size + 5)  # the page fell far behind: those rows are gone
    view.update()
    assert view.missed == 5
    assert "5 missed" in view.status_line()


def test_overview_numbers_histogram_and_alerts_follow_the_data(hub: Hub, clock: Clock) -> None:
    view = Overview(hub)
    hub.state.ingest_scores(scores(40))
    hub.state.ingest_alerts([json.dumps({"event_time": "2027-01-15T08:00:00Z", "datapoint_id": "dp-1",
                                         "score": 0.91, "explanation": "value_z=0.5"}).encode()])
    tick(hub, clock)
    view._slow.now()
    view.update()
    assert ">40<" in view._kpis.object and "dp-1" in view._alerts.object
    assert 'href="/keys?key=dp-1&amp;at=' in view._alerts.object or 'href="/keys?key=dp-1&at=' in view._alerts.object
    assert sum(view.hist.data["count"]) == 40 and "threshold 0.700" in view._hist.heading
    assert view._hist.marker == pytest.approx(0.7)  # the dashed line on the histogram


def test_key_selector_switches_the_plots(hub: Hub, clock: Clock) -> None:
    hub.state.ingest_scores(scores(30))
    view = KeysPage(hub)
    assert view.selector.options == ["dp-0", "dp-1", "dp-2"] and view.key == "dp-0"  # alerting keys first
    values_0 = list(view.points.data["value"])
    view.selector.value = "dp-2"
    values_2 = list(view.points.data["value"])
    assert values_0 == [float(i) for i in range(0, 30, 3)] and values_2 == [float(i) for i in range(2, 30, 3)]
    hub.state.ingest_scores(scores(3, start=30))  # dp-0, dp-1, dp-2 once more
    view.update()
    assert list(view.points.data["value"])[-1] == 2.0
    assert np.isnan(view.points.data["value_alert"][0]) or view.points.data["is_anomaly"][0]


def test_keys_page_opens_the_key_of_a_link(hub: Hub) -> None:
    hub.state.ingest_scores(scores(30))
    view = KeysPage(hub, key="dp-1", at_ms=T0 * 1000)
    assert view.key == "dp-1" and view._at.location == T0 * 1000
    unknown = KeysPage(hub, key="nobody")
    assert unknown.key == "nobody" and "no recent events of nobody" in unknown._empty.object


def test_incidents_are_listed_open_first_with_links_to_the_key(hub: Hub, clock: Clock) -> None:
    for iid, status, key in (("a", "closed", "dp-1"), ("b", "open", "dp-2")):
        hub.state.ingest_incidents([json.dumps({"incident_id": iid, "status": status, "key": key,
                                                "start": "2027-01-15T08:00:00Z", "end": "2027-01-15T08:02:00Z",
                                                "alerts": 3, "peak_score": 0.95, "top": "value_z=0.4"}).encode()])
    view = IncidentsPage(hub)
    view.update()
    text = view.table.object
    assert text.index("dp-2") < text.index("dp-1") and 'class="open"' in text and "2.0 min" in text
    assert "/keys?key=dp-2&at=" in text and ">1<" in view._summary.object
    assert "no incidents yet" in incidents_html(hub.state.incidents()[1].iloc[:0])


@pytest.fixture(scope="module")
def registry_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    tmp = tmp_path_factory.mktemp("models")
    cfg = load("configs/demo.yaml", environ={}, overrides={"lake": {"path": str(tmp / "lake")},
                                                            "model": {"save_dir": str(tmp / "models")}})
    champion = scored_day_with_champion(cfg, station_day(dt.date(2027, 1, 15), 6_000, seed=3), rows=3_000)
    record(cfg.registry, "promote", champion.version, reason="promoted by hand")
    return cfg


def test_models_page_shows_the_live_version_and_history(registry_cfg: Config, hub: Hub) -> None:
    watch = ModelsWatch(registry_cfg)
    assert watch.poll() and not watch.poll()  # read once; again only when the files change
    view = ModelsPage(Hub.build(hub.state, models=watch))
    view.update()
    live = watch.document()[1]["current"]["version"]  # type: ignore[index]
    assert live in view._live.object and "promoted by hand" in view._history.object
    assert 'class="iso-badge live"' in view._versions.object
    assert "no shadow candidate" in view._shadow.object


def test_models_page_without_a_registry_says_what_it_waits_for(tmp_path: Path, hub: Hub) -> None:
    cfg = load(environ={}, overrides={"model": {"save_dir": str(tmp_path / "none")}})
    watch = ModelsWatch(cfg)
    watch.poll()
    view = ModelsPage(Hub.build(hub.state, models=watch))
    view.update()
    assert "no model registry at" in view._live.object


# -- the broadcaster -----------------------------------------------------------------------------------------
class Doc:
    """Stands in for a Bokeh document: queues callbacks as the server's IOLoop would."""

    def __init__(self) -> None:
        self.queued: list[Any] = []

    def add_next_tick_callback(self, cb: Any) -> None:
        self.queued.append(cb)

    def run(self) -> None:
        queued, self.queued = self.queued, []
        for cb in queued:
            cb()


class Page:
    def __init__(self) -> None:
        self.missed = self.coalesced = self.held = self.calls = 0

    def update(self) -> None:
        self.calls += 1

    def wants(self, seq: int) -> bool:
        return True


def test_broadcaster_ticks_only_loaded_pages_and_coalesces(hub: Hub) -> None:
    b = Broadcaster(hub.state, 100)
    early, loaded, doc = Page(), Page(), Doc()
    b.session_created()
    b.session_created()
    b.register(loaded, doc)  # ``early`` never loads: it is never ticked
    b._fan_out()
    b._fan_out()  # the first update has not run yet: not queued twice
    assert len(doc.queued) == 1 and loaded.coalesced == 1
    doc.run()
    assert loaded.calls == 1 and early.calls == 0
    status = b.status()
    assert status["sessions"] == {"live": 2, "created": 2, "loaded": 1, "destroyed": 0, "ticking": 1, "cached": 0}
    assert status["coalesced_updates"] == 1
    assert b.session_destroyed(loaded)  # it had loaded: it was being ticked
    assert not b.session_destroyed(None)  # the page that never loaded
    b._fan_out()
    assert doc.queued == [] and b.status()["sessions"]["live"] == 0
    assert b.status()["coalesced_updates"] == 1  # a gone page's counts are kept


def test_the_page_cache_sessions_are_not_counted_as_viewers(hub: Hub) -> None:
    b = Broadcaster(hub.state, 100)
    for _ in range(3):  # the server primes the cache: each page builds as a session, then is marked cached
        b.session_created()
        b.session_cached()
    b.session_created()  # a viewer
    sessions = b.status()["sessions"]
    assert sessions["live"] == 1 and sessions["cached"] == 3 and sessions["created"] == 4


def test_every_tick_starts_with_the_next_page(hub: Hub) -> None:
    """The server runs queued updates in order, and on a busy one the last are still queued at the next tick:
    a fixed order would make the same tabs draw fewer pictures every time."""
    order: list[int] = []

    class Recording(Doc):
        def __init__(self, label: int) -> None:
            super().__init__()
            self.label = label

        def add_next_tick_callback(self, cb: Any) -> None:
            order.append(self.label)
            super().add_next_tick_callback(cb)

    b = Broadcaster(hub.state, 100)
    docs = [Recording(i) for i in range(3)]
    for doc in docs:
        b.register(Page(), doc)
    for _ in range(3):
        b._fan_out()
        for doc in docs:
            doc.run()
    assert order == [0, 1, 2, 1, 2, 0, 2, 0, 1]


def test_status_says_where_each_page_stands(hub: Hub, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    import dashboards.broadcast as broadcast

    b = Broadcaster(hub.state, 100)
    page, doc = Page(), ServedDoc()
    page.path = "/keys"  # type: ignore[attr-defined]
    b.register(page, doc)
    monkeypatch.setattr(broadcast, "STUCK_S", 0.02)
    b._fan_out()
    time.sleep(0.05)
    session = doc.session_context.session
    session._lock = lock(True)  # an earlier update holds the document, its write to the browser unfinished
    [conn] = session._subscribed_connections
    conn._socket.write_lock = lock(True)
    conn._socket.ws_connection.stream._write_buffer = bytes(4_096)
    with caplog.at_level(logging.WARNING, logger="dashboards.broadcast"):
        b._fan_out()  # the first update has not run: coalesced, and it has waited past STUCK_S
        b._fan_out()
    assert [r.getMessage() for r in caplog.records if "waited" in r.getMessage()] == [
        "dashboard: a /keys page's update has waited 0 s to run; its viewer sees no new data meanwhile "
        "(session None: document lock held True, websocket write lock held True, 4096 bytes not yet sent)"]
    [queued] = b.status()["pages"]
    assert queued["path"] == "/keys" and queued["updates"] == 0 and queued["pending_s"] >= 0.05
    assert queued["coalesced"] == 2 and queued["behind"] is None  # a page without flow control
    assert (queued["doc_locked"], queued["write_locked"], queued["unsent_bytes"]) == (True, True, 4_096)
    session._lock = conn._socket.write_lock = lock(False)
    conn._socket.ws_connection.stream._write_buffer = b""
    doc.run()
    doc.leave()
    b._fan_out()  # its browser is gone: skipped, and counted
    [ran] = b.status()["pages"]
    assert ran["updates"] == 1 and ran["pending_s"] is None and ran["since_update_s"] < 1.0
    assert ran["disconnected_ticks"] == 1 and ran["connected"] is False and doc.queued == []


def test_overview_says_how_far_its_browser_is_behind(hub: Hub) -> None:
    view = Overview(hub)
    assert view.behind is None  # not served: no browser acknowledges, no flow control
    view._acked, view._seq = 40, 47
    assert view.behind == 7


def test_broadcaster_tells_a_late_server_from_a_browser_behind(hub: Hub) -> None:
    b = Broadcaster(hub.state, 100)
    assert b.status()["update_delay_ms"] == {"n": 0, "p50": None, "p95": None, "max": None}
    page, doc = Page(), Doc()
    page.held = 3  # ticks the page held back for its browser (Overview's flow control)
    b.register(page, doc)
    b._fan_out()
    time.sleep(0.05)  # the server's event loop runs the update 50 ms after its tick
    doc.run()
    delay = b.status()["update_delay_ms"]
    assert delay["n"] == 1 and 45 <= delay["p50"] == delay["max"] < 1_000
    assert b.status()["held_updates"] == 3
    b.session_destroyed(page)
    assert b.status()["held_updates"] == 3  # kept when the page goes


def test_broadcaster_survives_a_failing_page(hub: Hub) -> None:
    class Broken(Page):
        def update(self) -> None:
            raise RuntimeError("boom")

    b = Broadcaster(hub.state, 100)
    doc = Doc()
    b.register(Broken(), doc)
    b._fan_out()
    doc.run()
    assert b.errors == 1


def lock(held: bool) -> Any:
    """Stands in for a Tornado lock: the field the server reads to tell whether it is held."""
    return SimpleNamespace(_block=SimpleNamespace(_value=0 if held else 1))


class Session:
    def __init__(self) -> None:
        self.destroyed, self.connection_count = False, 1
        # what a wedged update may wait on: the document lock, the websocket's write lock, unsent bytes
        self._lock = lock(False)
        socket = SimpleNamespace(write_lock=lock(False),
                                 ws_connection=SimpleNamespace(stream=SimpleNamespace(_write_buffer=b"")))
        self._subscribed_connections = [SimpleNamespace(_socket=socket)]


class ServedDoc(Doc):
    """A document whose session a browser can leave."""

    def __init__(self) -> None:
        super().__init__()
        self.session_context = type("Context", (), {"session": Session()})()

    def leave(self) -> None:
        self.session_context.session.connection_count = 0


def test_an_update_for_a_browser_that_left_is_dropped_not_an_error(hub: Hub) -> None:
    b = Broadcaster(hub.state, 100)
    stays, leaves, doc_stays, doc_leaves = Page(), Page(), ServedDoc(), ServedDoc()
    b.register(stays, doc_stays)
    b.register(leaves, doc_leaves)
    b._fan_out()
    doc_leaves.leave()  # between the tick and its update
    doc_stays.run()
    doc_leaves.run()
    assert (stays.calls, leaves.calls) == (1, 0)
    b._fan_out()
    assert doc_leaves.queued == []  # not scheduled again while it is gone

    class LeavesWhileSending(Page):
        def update(self) -> None:
            doc.leave()
            raise RuntimeError("connection.session is None")  # what sending to a gone browser raises

    doc = ServedDoc()
    b.register(LeavesWhileSending(), doc)
    b._fan_out()
    doc.run()
    assert b.errors == 0 and b.status()["abandoned_updates"] == 2


def test_a_served_pages_updates_are_queued_from_its_event_loop_never_from_the_clock(hub: Hub) -> None:
    """A document on hold loses a callback announced from another thread (see Broadcaster._dispatch): the
    clock's thread only asks the loop to queue the updates."""
    from tornado.ioloop import IOLoop

    queued_on: list[int] = []

    class LoopDoc(Doc):
        def add_next_tick_callback(self, cb: Any) -> None:
            queued_on.append(threading.get_ident())
            loop.add_callback(cb)  # as Bokeh's session does: the update runs on the loop

    started = threading.Event()
    loop_thread: dict[str, Any] = {}

    def serve_loop() -> None:
        loop_thread["loop"] = IOLoop()
        loop_thread["ident"] = threading.get_ident()
        loop_thread["loop"].add_callback(started.set)
        loop_thread["loop"].start()

    server = threading.Thread(target=serve_loop, daemon=True)
    server.start()
    assert started.wait(10)
    loop = loop_thread["loop"]
    b = Broadcaster(hub.state, 20)
    page = Page()
    loop.add_callback(b.register, page, LoopDoc())  # as Panel's onload does: on the server's loop
    b.start()
    try:
        wait = time.monotonic() + 10
        while page.calls < 5 and time.monotonic() < wait:
            time.sleep(0.02)
    finally:
        b.stop()
        loop.add_callback(loop.stop)
        server.join(10)
    assert page.calls >= 5
    assert set(queued_on) == {loop_thread["ident"]}  # every update queued on the loop's own thread


def test_broadcaster_thread_ticks_the_state(hub: Hub) -> None:
    b = Broadcaster(hub.state, 20).start()
    try:
        end = time.monotonic() + 10
        while hub.state.ticks.seq < 5 and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        b.stop()
    assert hub.state.ticks.seq >= 5


# -- serving options --------------------------------------------------------------------------------------------
def test_routes_are_the_five_pages(hub: Hub) -> None:
    assert set(routes(hub)) == {"/", "/keys", "/incidents", "/models", "/history"}


def test_websocket_origins_default_to_the_bound_address() -> None:
    assert websocket_origins("127.0.0.1", 5006) == ["127.0.0.1:5006", "localhost:5006"]
    assert websocket_origins("10.0.0.5", 80, ["dash.example.com"]) == ["10.0.0.5:80", "dash.example.com"]


def test_a_write_to_a_closed_tab_is_counted_not_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio's "Task exception was never retrieved" for a closed websocket is counted; other errors still log."""

    async def fail(exc: Exception) -> None:
        raise exc

    async def leave_unretrieved(exc: Exception) -> None:
        asyncio.ensure_future(fail(exc))  # nobody awaits it, as Bokeh's sends
        await asyncio.sleep(0.01)

    before = CLOSED_TAB_WRITES.count
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(leave_unretrieved(WebSocketClosedError()))
        gc.collect()  # the task's finaliser is what logs
        assert CLOSED_TAB_WRITES.count == before + 1
        assert not [r for r in caplog.records if r.name == "asyncio"]
        asyncio.run(leave_unretrieved(ValueError("a real bug")))
        gc.collect()
    assert CLOSED_TAB_WRITES.count == before + 1
    assert [r for r in caplog.records if r.name == "asyncio" and "never retrieved" in r.getMessage()]


def test_a_message_from_a_closing_tab_is_counted_not_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """Bokeh's handler, given a message on a connection whose session it detached, fails its own assertion:
    counted as a closing tab's message; an assertion raised anywhere else still logs."""
    from bokeh.protocol import Protocol
    from bokeh.server.connection import ServerConnection
    from bokeh.server.protocol_handler import ProtocolHandler

    class Session:  # the connection only subscribes and unsubscribes (a real session needs a server)
        def subscribe(self, connection: Any) -> None: ...
        def unsubscribe(self, connection: Any) -> None: ...

    protocol = Protocol()
    conn = ServerConnection(protocol, socket=None, application_context=None, session=Session())  # type: ignore[arg-type]
    conn.detach_session()  # what Bokeh does when the tab's websocket closes
    before = CLOSED_TAB_MESSAGES.count
    with caplog.at_level(logging.ERROR, logger="bokeh.server.protocol_handler"):
        reply = asyncio.run(ProtocolHandler().handle(protocol.create("PULL-DOC-REQ"), conn))
        assert reply.msgtype == "ERROR"  # Bokeh answers the message; the socket is gone anyway
        assert CLOSED_TAB_MESSAGES.count == before + 1
        assert not caplog.records
        try:
            raise AssertionError("a real bug")
        except AssertionError:
            logging.getLogger("bokeh.server.protocol_handler").error("error handling message", exc_info=True)
    assert CLOSED_TAB_MESSAGES.count == before + 1
    assert [r.getMessage() for r in caplog.records] == ["error handling message"]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="tornado.application"):
        try:  # the tab's close, when Bokeh had ended its session first: WSHandler.on_close reads it too
            conn.session.notify_connection_lost()
        except AssertionError:
            logging.getLogger("tornado.application").error("Uncaught exception GET /ws", exc_info=True)
    assert CLOSED_TAB_MESSAGES.count == before + 2 and not caplog.records


def test_served_pages_leave_out_mathjax_and_keep_bokeh() -> None:
    import panel as pn
    import panel.io.resources as panel_resources
    import panel.io.server as panel_server
    from bokeh.document import Document
    from bokeh.resources import Resources

    doc = Document()
    pn.pane.HTML("<nav>a $ in a key</nav>").server_doc(doc)  # a root HTML pane, as the template's sidebar is
    res = Resources(mode="server", root_url="/")
    scripts = lambda bundle: " ".join(str(f) for f in bundle.js_files)  # noqa: E731
    # Panel's own choice for these panes is to load it: the case the switch is for
    assert "bokeh-mathjax" in scripts(panel_resources.bundle_resources(doc.roots, res))
    assert skip_mathjax() and skip_mathjax()  # twice: wrapped once
    assert not hasattr(panel_server.bundle_resources.__wrapped__, "__wrapped__")
    served = scripts(panel_server.bundle_resources(doc.roots, res))
    assert "bokeh-mathjax" not in served and "bokeh.min.js" in served and "panel.min.js" in served


def test_auth_options_pass_through_and_stay_secret() -> None:
    cfg = load(environ={}, overrides={"dashboard": {"auth": {"basic_auth": "s3cret", "cookie_secret": "c",
                                                             "oauth_provider": "github", "oauth_key": "id"}}})
    assert auth_options(cfg) == {"basic_auth": "s3cret", "cookie_secret": "c", "oauth_provider": "github",
                                 "oauth_key": "id"}
    assert "s3cret" not in repr(cfg.dashboard)
    assert auth_options(load(environ={})) == {}


def test_overview_holds_back_while_its_browser_is_behind(hub: Hub, clock: Clock) -> None:
    tick(hub, clock)
    view = Overview(hub)
    view.update()  # the whole ring: counts as seen
    view._acked = view._seq  # what attach() does in a served session
    drawn = view._seq
    tick(hub, clock, 3)
    view.update()  # 3 rows streamed, none acknowledged yet: still within the window
    assert view._seq == drawn + 3 and view.held == 0
    ahead = IN_FLIGHT_TICKS + 1
    tick(hub, clock, ahead - 3)
    view.update()
    assert view._seq == drawn + ahead
    tick(hub, clock, 2)
    view.update()  # more ticks unacknowledged than IN_FLIGHT_TICKS: the rows wait on the server
    assert view._seq == drawn + ahead and view.held == 1 and view.coalesced == 1
    view._on_ack("tags", [], [drawn + ahead])  # the browser applied them
    view.update()  # both waiting rows go out together
    assert view._seq == drawn + ahead + 2 and view.missed == 0
