"""The timeline's own socket (dashboards/push.py): what it sends, to whom, and what it counts. The sockets here
are stand-ins; the real one, its checks and a real browser are in tests/integration/test_dashboard_browser.py."""

from __future__ import annotations

import json
import math
from concurrent.futures import Future
from typing import Any

import pytest
from tornado.websocket import WebSocketClosedError

from dashboards.broadcast import Broadcaster
from dashboards.hub import Hub
from dashboards.overview import FAST, Overview
from dashboards.push import TickPush, encode
from dashboards.state import LiveState


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Page:
    def __init__(self) -> None:
        self.missed = self.coalesced = self.held = 0


class Sock:
    """Stands in for a TickSocket: keeps what it was sent; its writes leave when ``drain()`` says so. Its futures
    are thread futures: an asyncio one needs an event loop, which an earlier test's ``asyncio.run`` closed."""

    def __init__(self, push: TickPush, page: Page, after: int, *, closed: bool = False) -> None:
        self.push, self.page, self.after, self.token = push, page, after, None
        self.writing, self.closed = False, closed  # writing: bytes the kernel has not taken
        self.sent: list[dict[str, Any]] = []
        self._pending: list[Future[None]] = []

    def write_message(self, message: str) -> Future[None]:
        if self.closed:
            raise WebSocketClosedError
        self.sent.append(json.loads(message))
        self.writing = True
        done: Future[None] = Future()
        self._pending.append(done)
        return done

    def backed_up(self) -> bool:
        return self.writing

    def drain(self) -> None:
        for done in self._pending:
            done.set_result(None)
        self._pending.clear()
        self.writing = False


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> LiveState:
    return LiveState({}, history_s=2, clock=clock)  # a ring of 20 ticks


def tick(state: LiveState, clock: Clock, n: int = 1) -> None:
    for _ in range(n):
        clock.now += 0.1
        state.tick()


def seqs(sock: Sock) -> list[int]:
    return [int(s) for m in sock.sent for s in m["rows"]["seq"]]


def test_encode_sends_numbers_and_missing_values_as_null() -> None:
    import pandas as pd

    text = encode(pd.DataFrame({"seq": [1], "t": [math.inf], "r": [-math.inf]}), ("seq", "t", "r", "absent"), 5)
    assert json.loads(text) == {"rows": {"seq": [1], "t": [None], "r": [None], "absent": [None]}, "rollover": 5}


def test_every_socket_gets_each_row_once_in_order(state: LiveState, clock: Clock) -> None:
    push = TickPush(state, FAST)
    tick(state, clock, 3)
    a, b = Sock(push, Page(), state.ticks.seq), Sock(push, Page(), 1)
    push._sockets = {a: None, b: None}  # type: ignore[dict-item]
    for _ in range(4):
        tick(state, clock)
        push.fan_out()
        a.drain()
        b.drain()
    assert seqs(a) == [4, 5, 6, 7]
    assert seqs(b) == [2, 3, 4, 5, 6, 7]  # first what it lacked, then each tick's
    assert set(b.sent[0]["rows"]) == set(FAST) and b.sent[0]["rollover"] == state.ticks.size
    assert push.messages == 8 and push.held == push.missed == 0


def test_a_socket_still_writing_is_held_and_then_sent_what_it_lacks(state: LiveState, clock: Clock) -> None:
    push = TickPush(state, FAST)
    tick(state, clock)
    page = Page()
    slow = Sock(push, page, state.ticks.seq)
    push._sockets = {slow: None}  # type: ignore[dict-item]
    tick(state, clock)
    push.fan_out()  # sent, not yet drained
    for _ in range(3):
        tick(state, clock)
        push.fan_out()
    assert seqs(slow) == [2] and page.held == page.coalesced == push.held == 3
    slow.drain()
    tick(state, clock)
    push.fan_out()
    assert seqs(slow) == [2, 3, 4, 5, 6] and page.missed == 0  # the held rows, together with the new one


def test_rows_that_left_the_ring_are_counted_missed(state: LiveState, clock: Clock) -> None:
    push = TickPush(state, FAST)
    page = Page()
    tick(state, clock)
    sock = Sock(push, page, state.ticks.seq)
    push._sockets = {sock: None}  # type: ignore[dict-item]
    tick(state, clock, state.ticks.size + 5)
    push.fan_out()
    assert page.missed == push.missed == 5
    assert len(seqs(sock)) == state.ticks.size and seqs(sock)[-1] == state.ticks.seq


def test_a_closed_socket_is_skipped_and_the_others_still_get_their_rows(state: LiveState, clock: Clock) -> None:
    push = TickPush(state, FAST)
    tick(state, clock)
    gone, live = Sock(push, Page(), 1, closed=True), Sock(push, Page(), 1)
    push._sockets = {gone: None, live: None}  # type: ignore[dict-item]
    tick(state, clock)
    push.fan_out()
    assert seqs(live) == [2] and gone.sent == [] and push.errors == 0


def test_tokens_are_the_pages_and_void_once_forgotten() -> None:
    push = TickPush()
    page = Page()
    token = push.expect(page)
    assert push.page_of(token) is page and push.page_of("other") is None and push.page_of(None) is None
    assert token in push.feed_url(token) and not push.connected(token)
    push.forget(token)
    assert push.page_of(token) is None and push.status()["expected_pages"] == 0


def test_the_broadcaster_skips_an_overview_with_nothing_due_when_its_rows_are_pushed(state: LiveState,
                                                                                        clock: Clock) -> None:
    push = TickPush(state, FAST)
    hub = Hub.build(state, push=push)
    view = Overview(hub)
    view._token = push.expect(view)  # as attach() does in a served session
    tick(state, clock)
    view.update()  # the first frame goes with the session
    assert view._seq == state.ticks.seq and view.pushed
    first = list(view.timeline.data["seq"])
    tick(state, clock, 3)
    view._slow.now()
    view.update()
    assert list(view.timeline.data["seq"]) == first  # the socket streams the rows, not the session

    b = Broadcaster(state, 100)
    b.push = push
    b.register(view, None)
    queued: list[Any] = []
    slot = b._slots[id(view)]
    slot.doc = type("Doc", (), {"add_next_tick_callback": lambda _self, f: queued.append(f)})()
    for _ in range(20):
        tick(state, clock)
        b._fan_out()
        for f in queued:
            f()
        queued.clear()
    # 20 ticks of 100 ms: the slow parts and the status line, once a second each, not every tick
    assert 2 <= slot.updates <= 5 and view.coalesced == 0


def test_without_push_the_overview_streams_every_tick(state: LiveState, clock: Clock) -> None:
    view = Overview(Hub.build(state))
    tick(state, clock)
    view.update()
    assert not view.pushed and all(view.wants(s) for s in range(1, 30))
    tick(state, clock, 2)
    view.update()
    assert list(view.timeline.data["seq"])[-1] == state.ticks.seq
