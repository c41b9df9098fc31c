"""The live timeline's rows pushed to every Overview tab over one plain websocket per tab, once per tick.

Why not Bokeh's own session for them: each tick, every tab's row went through its document (a lock, a patch
message built and serialised per tab, Bokeh's send path). py-spy over ten Overview tabs on 2 cores (run 63):
half the server's samples were page updates, a third of them the patch sends, and the slowest tab drew 8.3
pictures a second. A bare page fed one JSON row per tick over a websocket (the benchmark's floor) drew 10.0 in
every tab with the server at 0.6 % of a core. So the rows are built and encoded once per tick, and the same
message is written to every tab that is up to date; Bokeh still carries everything else (the numbers, tables,
histogram, gauges, status line), once a second per page.

Who may connect: the socket checks the same allowed origins as Bokeh's websocket, the same authentication
(Panel's basic auth or OAuth, through Bokeh's auth provider), and a token that only the server's own Overview
page knows: handed to its browser in the page's document, valid while that page's Bokeh session lives. A
client that stops reading is not written to while the kernel has not taken its last message (Tornado's stream
still writing); the rows it did not get go out together once it drains, or are counted missed when they left
the ring.

>>> push = TickPush(path="/live/ticks")
>>> class Page: missed = coalesced = held = 0
>>> token = push.expect(Page())
>>> push.feed_url(token).startswith("/live/ticks?page=")
True
>>> push.status()["expected_pages"]
1
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from bokeh.server.util import check_allowlist
from bokeh.server.views.auth_request_handler import AuthRequestHandler
from tornado.ioloop import IOLoop
from tornado.web import HTTPError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from dashboards.timings import Timings

if TYPE_CHECKING:
    import pandas as pd

    from dashboards.state import LiveState

log = logging.getLogger(__name__)
PATH = "/live/ticks"


def encode(rows: pd.DataFrame, columns: Sequence[str], rollover: int) -> str:
    """``rows``' ``columns`` as one JSON message: ``{"rows": {column: [values]}, "rollover": n}``.

    JSON has no NaN: a missing value (a tick without Kafka timestamps) goes as null, and the page reads it back
    as NaN (``livechart.js``), so a line breaks there instead of dropping to zero.

    >>> import pandas as pd
    >>> encode(pd.DataFrame({"seq": [3, 4], "t": [1.5, float("nan")]}), ("seq", "t"), 1200)
    '{"rows": {"seq": [3, 4], "t": [1.5, null]}, "rollover": 1200}'
    """
    cols = {c: rows[c].tolist() if c in rows else [None] * len(rows) for c in columns}
    # numbers only, so the only non-JSON words json.dumps can write are these: cheaper than a pass over values
    text = json.dumps({"rows": cols, "rollover": int(rollover)})
    return text.replace("-Infinity", "null").replace("Infinity", "null").replace("NaN", "null")


class TickPush:
    """The tabs whose timeline rows come over a :class:`TickSocket`, and the per-tick fan-out to them."""

    def __init__(self, state: LiveState | None = None, columns: Sequence[str] = (), *, path: str = PATH) -> None:
        self.state = state
        self.columns = tuple(columns)
        self.path = path
        self._lock = threading.Lock()
        self._pages: dict[str, Any] = {}  # token -> the Overview page it was handed to
        self._sockets: dict[TickSocket, None] = {}  # open sockets, in the order they opened
        self._loop: Any = None  # the server's event loop (the first socket's): fan-outs run there
        self.opened = self.closed = self.refused = 0
        self.messages = self.bytes = 0
        self.held = 0  # sends skipped because the tab's previous write had not left yet
        self.missed = 0  # ticks that fell out of the ring before their tab could be sent them
        self.errors = 0
        self.delays = Timings()  # ms from a tick to its fan-out running on the server's event loop

    # -- pages ------------------------------------------------------------------------------------------------
    def expect(self, page: Any) -> str:
        """A token for ``page`` (an Overview in a served session): its browser opens the socket with it."""
        token = secrets.token_urlsafe(18)
        with self._lock:
            self._pages[token] = page
        return token

    def forget(self, token: str) -> None:
        """``token``'s page ended (its Bokeh session was destroyed): its socket closes, the token is void."""
        with self._lock:
            self._pages.pop(token, None)
            gone = [s for s in self._sockets if s.token == token]
        for sock in gone:
            if self._loop is not None:
                self._loop.add_callback(sock.close, 1000, "the page's session ended")

    def feed_url(self, token: str) -> str:
        """The socket's path with ``token``, as the page's script opens it."""
        return f"{self.path}?page={token}"

    def oldest(self) -> int:
        """The seq before the ring's oldest row: a socket starting there is sent the whole ring."""
        ring = self.state.ticks if self.state is not None else None
        return 0 if ring is None else ring.seq - ring.size

    def connected(self, token: str) -> bool:
        """Whether ``token``'s page has its socket open."""
        with self._lock:
            return any(s.token == token for s in self._sockets)

    def page_of(self, token: str | None) -> Any:
        with self._lock:
            return self._pages.get(token) if token else None

    # -- sockets ------------------------------------------------------------------------------------------------
    def opened_socket(self, sock: TickSocket) -> None:
        with self._lock:
            self._sockets[sock] = None
            self.opened += 1
            self._loop = IOLoop.current()

    def closed_socket(self, sock: TickSocket) -> None:
        with self._lock:
            if self._sockets.pop(sock, 0) is None:
                self.closed += 1

    def status(self) -> dict[str, Any]:
        """Counts for ``/status.json``."""
        with self._lock:
            return {"path": self.path, "sockets": len(self._sockets), "expected_pages": len(self._pages),
                    "opened": self.opened, "closed": self.closed, "refused": self.refused,
                    "messages": self.messages, "bytes": self.bytes, "held": self.held, "missed": self.missed,
                    "errors": self.errors, "delay_ms": self.delays.summary()}

    # -- the ticks ----------------------------------------------------------------------------------------------
    def dispatch(self) -> None:
        """Called on the clock's thread after each tick: queue the fan-out on the server's event loop."""
        loop = self._loop
        if loop is not None and self._sockets:
            loop.add_callback(self.fan_out, time.monotonic())  # the one IOLoop method safe from another thread

    def fan_out(self, tick_at: float | None = None) -> None:
        """Send every open socket the rows it has not had: built and encoded once per distinct start."""
        if tick_at is not None:
            self.delays.add((time.monotonic() - tick_at) * 1000.0)
        with self._lock:
            socks = list(self._sockets)
        built: dict[int, tuple[str, int] | None] = {}
        for sock in socks:
            if sock.backed_up():
                self.held += 1
                sock.page.coalesced += 1
                sock.page.held += 1
                continue
            self.send_due(sock, built)

    def send_due(self, sock: TickSocket, built: dict[int, tuple[str, int] | None] | None = None) -> None:
        """Send ``sock`` the rows after its newest, if any (``built``: messages already encoded this tick)."""
        if self.state is None:
            return
        ring = self.state.ticks
        lost = ring.missed(sock.after)
        if lost:
            self.missed += lost
            sock.page.missed += lost
        built = {} if built is None else built
        if sock.after not in built:
            rows = self.state.timeline(sock.after)
            built[sock.after] = (encode(rows, self.columns, ring.size), int(rows["seq"].iloc[-1])) \
                if len(rows) else None
        message = built[sock.after]
        if message is not None:
            self._send(sock, *message)

    def _send(self, sock: TickSocket, message: str, newest: int) -> None:
        try:
            done = sock.write_message(message)
        except WebSocketClosedError:
            return  # it closed since the list was taken: on_close has run or is about to
        except Exception:  # noqa: BLE001 - one tab's failed write must not stop the others
            self.errors += 1
            log.exception("dashboard: pushing the timeline to a tab failed")
            return
        sock.after = newest
        self.messages += 1
        self.bytes += len(message)
        if done is not None:
            done.add_done_callback(_retrieved)


def _retrieved(done: Any) -> None:
    """Read a write's outcome: a tab that closed mid-write fails it, and asyncio logs a failure nobody read as an
    error."""
    if not done.cancelled():
        done.exception()


class TickSocket(AuthRequestHandler, WebSocketHandler):
    """``GET /live/ticks?page=TOKEN&after=SEQ``: the timeline rows after ``SEQ`` (none: the whole ring), then
    each tick's new ones."""

    def initialize(self, push: TickPush) -> None:
        self.push = push
        self.page: Any = None
        self.token: str | None = None
        self.after = 0

    def check_origin(self, origin: str) -> bool:
        # the origins Bokeh's own websocket allows (the bound address, --allow-websocket-origin)
        host = urlparse(origin).netloc.lower()
        if check_allowlist(host, getattr(self.application, "websocket_origins", ())):  # BokehTornado's
            return True
        self.push.refused += 1
        log.warning("dashboard: refused a timeline socket from origin %r (not an allowed websocket origin)", origin)
        return False

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if not self.current_user:  # Panel's basic auth or OAuth: the same check as its pages
            self.push.refused += 1
            raise HTTPError(403)
        self.token = self.get_query_argument("page", None)
        self.page = self.push.page_of(self.token)
        if self.page is None:  # a token the server never handed out, or whose page has ended
            self.push.refused += 1
            raise HTTPError(404)
        after = self.get_query_argument("after", None)
        try:
            # none: the page holds no rows yet, so it gets the whole ring
            self.after = self.push.oldest() if after is None else int(after)
        except ValueError as exc:
            self.push.refused += 1
            raise HTTPError(400) from exc
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)  # one small message per tick: Nagle would hold it for the browser's ACK
        self.push.opened_socket(self)
        self.push.send_due(self)  # what it lacks now, not at the next tick: a new tab's first picture

    def on_message(self, message: str | bytes) -> None:
        pass  # the page sends nothing; its rows' pace is the write futures'

    def on_close(self) -> None:
        self.push.closed_socket(self)

    def backed_up(self) -> bool:
        """Whether bytes of an earlier message are still waiting for the kernel to take them: the tab (or its
        network) is not reading. Not the write's future: that resolves on the event loop, so a busy loop would
        hold back tabs that keep up."""
        stream = getattr(self.ws_connection, "stream", None)
        return bool(stream is not None and stream.writing())

