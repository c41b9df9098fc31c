"""The dashboard server: five pages over one shared :class:`~dashboards.hub.Hub`, served by the Panel server.

Pages: ``/`` (Overview), ``/keys``, ``/incidents``, ``/models``, ``/history``; ``/status.json`` answers how
many sessions exist and how the ticks went (for monitoring, the benchmark and the tests; counts only, no data).

Three ways to run it:

- ``isostream dashboard --config FILE`` (``run_server``: blocks until Ctrl-C);
- ``serve(hub, port=...)`` from Python (``isostream demo``, the tests): a server thread with ``.stop()``;
- ``ISOSTREAM_CONFIG=FILE panel serve dashboards/app.py --keep-alive 5000`` (the ``pn.state.served`` block at
  the bottom: the Overview page only, with Panel's own options; ``--keep-alive``: see :func:`keep_alive_ms`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
import urllib.request
import webbrowser
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import panel as pn
import psutil
from panel.io.resources import get_dist_path
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler
from tornado.websocket import WebSocketClosedError

from dashboards.hub import Hub
from dashboards.models_watch import ModelsWatch
from dashboards.push import TickPush, TickSocket
from dashboards.resources import skip_mathjax
from dashboards.state import LiveState
from engine.config import Config

log = logging.getLogger(__name__)
TITLE = "isostream · live anomaly detection"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def routes(hub: Hub) -> dict[str, Callable[[], Any]]:
    """The page builders, one call per browser session (inside its document)."""
    from dashboards.incidents_page import IncidentsPage
    from dashboards.keys_page import KeysPage
    from dashboards.models_page import ModelsPage
    from dashboards.overview import Overview

    def history() -> Any:
        from dashboards.history_page import history_page

        return history_page(hub)

    builders: dict[str, Callable[[], Any]] = {
        "/": lambda: Overview(hub).page(),
        "/keys": lambda: KeysPage(hub).page(),
        "/incidents": lambda: IncidentsPage(hub).page(),
        "/models": lambda: ModelsPage(hub).page(),
        "/history": history,
    }
    return {path: _served(build, hub) for path, build in builders.items()}


#: the query argument of the server's own first request per page when it keeps a page cache (reuse_sessions)
PRIME_ARG = "isostream-prime"


def _served(build: Callable[[], Any], hub: Hub) -> Callable[[], Any]:
    """``build`` for a served session: its stylesheets from this server, and the page cache told from viewers."""

    def built() -> Any:
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            # Panel points its components' stylesheets at this server's static files only when it renders a
            # page's HTML from the session; a session the page cache builds beside the HTML (reuse_sessions)
            # would point them at Panel's CDN, which an offline or firewalled server cannot reach
            doc.template_variables.setdefault("dist_url", get_dist_path(cdn=False))
        page = build()
        if PRIME_ARG in (pn.state.session_args or {}):
            hub.broadcaster.session_cached()
        return page

    return built


def _write_to_closed_tab(exc: BaseException) -> bool:
    """Tornado's error for a message sent to a websocket that had closed."""
    return isinstance(exc, (WebSocketClosedError, StreamClosedError))


def _message_from_closed_tab(exc: BaseException) -> bool:
    """Bokeh's ``ServerConnection.session`` assertion: a message or a close from a tab whose session was
    detached."""
    if not isinstance(exc, AssertionError) or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return code.co_name == "session" and Path(code.co_filename).parts[-3:] == ("bokeh", "server", "connection.py")


class ClosedTabErrors(logging.Filter):
    """Counts, and keeps out of the log, the errors that only say a tab has just gone.

    Two libraries log one as an ERROR with a traceback. Bokeh sends each update from a task nobody awaits, and
    when the tab has gone, asyncio logs the task's ``WebSocketClosedError`` ("Task exception was never
    retrieved"). And a message from a tab that is closing (an acknowledgement, Panel's browser-info
    properties) can wait for the document's lock while Bokeh drops the connection; handling it then fails
    Bokeh's own ``assert self._session is not None``. So does that tab's close when Bokeh had already ended
    its session (Tornado logs it as "Uncaught exception GET /ws"). Nothing is wrong in any of these (the
    session ends as its socket closed), so an operator should not be paged; ``/status.json`` reports the
    counts instead. Every other record passes.
    """

    def __init__(self, matches: Callable[[BaseException], bool]) -> None:
        super().__init__()
        self.matches = matches
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and self.matches(exc):
            self.count += 1
            return False
        return True


#: one each per process, as the loggers they filter
CLOSED_TAB_WRITES = ClosedTabErrors(_write_to_closed_tab)
CLOSED_TAB_MESSAGES = ClosedTabErrors(_message_from_closed_tab)
logging.getLogger("asyncio").addFilter(CLOSED_TAB_WRITES)
logging.getLogger("bokeh.server.protocol_handler").addFilter(CLOSED_TAB_MESSAGES)
logging.getLogger("tornado.application").addFilter(CLOSED_TAB_MESSAGES)  # the close of such a tab, in on_close


class _StatusHandler(RequestHandler):
    """``GET /status.json``: sessions, ticks, missed updates and the server's own CPU and memory."""

    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self) -> None:
        proc = psutil.Process()
        cpu = proc.cpu_times()
        doc = {**self.hub.broadcaster.status(), "rss_bytes": proc.memory_info().rss,
               "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "cpu_s": cpu.user + cpu.system, "consuming": self.hub.state.running,
               "bad_records": self.hub.state.bad_records, "keys_tracked": self.hub.state.key_list(0)[0],
               "feed_errors": self.hub.state.feed.errors if self.hub.state.feed is not None else 0,
               "feed": self.hub.state.feed.status() if self.hub.state.feed is not None else None,
               "closed_tab_writes": CLOSED_TAB_WRITES.count, "closed_tab_messages": CLOSED_TAB_MESSAGES.count,
               "heap_trim": self.hub.trimmer.status(),
               "push": self.hub.push.status() if self.hub.push is not None else None}
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(doc))


def websocket_origins(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """Origins allowed to open the websocket: the bound address (and loopback names), plus ``extra``."""
    if host in ("0.0.0.0", "::", ""):
        names = [socket.gethostname(), *LOOPBACK[:2]]
    else:
        names = [host, *(LOOPBACK[:2] if host in LOOPBACK else ())]
    return sorted({f"{n}:{port}" for n in names} | set(extra))


def auth_options(cfg: Config | None) -> dict[str, Any]:
    """Panel's ``basic_auth`` / ``cookie_secret`` / ``oauth_*`` options from ``dashboard.auth`` (unset: none)."""
    if cfg is None:
        return {}
    a = cfg.dashboard.auth
    out: dict[str, Any] = {}
    for name in ("basic_auth", "cookie_secret", "oauth_secret", "oauth_encryption_key"):
        value = getattr(a, name)
        if value is not None:
            out[name] = value.get_secret_value()
    for name in ("oauth_provider", "oauth_key", "oauth_redirect_uri"):
        if getattr(a, name) is not None:
            out[name] = getattr(a, name)
    if a.oauth_extra_params:
        out["oauth_extra_params"] = dict(a.oauth_extra_params)
    return out


class ServerHandle:
    """A Panel server running on its own thread; ``stop()`` shuts it down and frees the port."""

    def __init__(self, thread: Any, host: str, port: int) -> None:
        self._thread = thread
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def running(self) -> bool:
        return bool(self._thread.is_alive())

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._thread.is_alive():
            self._thread.stop()
            self._thread.join(timeout=timeout_s)


def _wait_listening(host: str, port: int, thread: Any, timeout_s: float) -> None:
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and thread.is_alive():
        try:
            with socket.create_connection((probe, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    msg = f"dashboard: Panel server did not listen on {host}:{port} within {timeout_s:.0f}s"
    raise RuntimeError(msg)


def keep_alive_ms(expiry_ms: int) -> int:
    """How often Bokeh pings every websocket: the longest a session can outlive a socket that closed unseen.

    Bokeh 3.9 opens its side of a websocket in a callback after the handshake. A tab that closes in between
    (it navigated away or shut while the page connected: seen under load, once in 50 drill sessions) closes
    the socket before that callback runs; the callback then subscribes the session to the dead socket and no
    close event follows. Only the keep-alive ping notices, and Bokeh's default is every 37 s: the session
    outlived the orphan drill's 60 s. Pinging ten tabs every few seconds costs nothing measurable.
    """
    return max(500, min(5_000, expiry_ms // 2))


def serve(
    hub: Hub,
    host: str = "127.0.0.1",
    port: int = 5006,
    show: bool = False,
    threaded: bool = True,
    *,
    allow_websocket_origin: Sequence[str] = (),
    session_expiry_s: float = 30.0,
    auth: dict[str, Any] | None = None,
    ready_timeout_s: float = 30.0,
    reuse_sessions: bool = True,
) -> ServerHandle:
    """Serve the pages at ``http://host:port/``, one session per browser tab, all over ``hub``.

    ``threaded=True`` (default) returns once the server listens; ``threaded=False`` blocks until Ctrl-C.
    The caller starts and stops ``hub``. ``auth`` holds Panel's own options (see :func:`auth_options`).
    ``reuse_sessions`` answers a new tab's page from a cached session and builds the tab's own while its browser
    loads the scripts (Panel's ``reuse_sessions="warm"``); the server primes the cache itself.
    """
    authenticated = bool((auth or {}).get("basic_auth") or (auth or {}).get("oauth_provider"))
    if host not in LOOPBACK and not authenticated:
        log.warning("dashboard: serving on %s without authentication: anyone who reaches it sees the stream; "
                    "set dashboard.auth (basic_auth or oauth_*)", host)
    expiry_ms = int(session_expiry_s * 1000)
    # the page cache is primed by the server's own requests, which authentication would turn away; then the
    # first viewer's session would become the cache and outlive its tab (an orphan)
    reuse = reuse_sessions and threaded and not authenticated
    if reuse_sessions and not reuse:
        log.info("dashboard: reuse_sessions is off: it needs a threaded server without authentication")
    if reuse:
        pn.config.reuse_sessions = "warm"
    skip_mathjax()  # no page shows math: 1.8 MB less script for each new tab (dashboards/resources.py)
    pages = routes(hub)
    server = pn.serve(
        pages, port=port, address=host, websocket_origin=websocket_origins(host, port, allow_websocket_origin),
        # with the page cache, the browser opens once the cache is primed: its request must not be the one cached
        show=show and not reuse, start=True, title=TITLE, verbose=False, location=True, threaded=threaded,
        extra_patterns=[(r"/status\.json", _StatusHandler, {"hub": hub}),
                        *([(hub.push.path, TickSocket, {"push": hub.push})] if hub.push is not None else [])],
        # Bokeh ends a session whose websocket closed, or never opened, this long after: a browser that
        # went away before the page loaded leaves nothing behind
        unused_session_lifetime_milliseconds=expiry_ms,
        check_unused_sessions_milliseconds=max(500, expiry_ms // 2),
        keep_alive_milliseconds=keep_alive_ms(expiry_ms),
        **(auth or {}),
    )
    if not threaded:  # the IOLoop ran until Ctrl-C and has stopped
        server.stop()
        return ServerHandle(_Finished(), host, port)
    _wait_listening(host, port, server, ready_timeout_s)
    handle = ServerHandle(server, host, port)
    if reuse:
        _prime_page_cache(handle, list(pages), ready_timeout_s)
        if show:
            webbrowser.open(handle.url)
    return handle


def _prime_page_cache(handle: ServerHandle, paths: Sequence[str], timeout_s: float) -> None:
    """Request every page once, so that the session Panel caches for it is the server's own, never a viewer's.

    With ``reuse_sessions``, Panel answers a tab's page request from the session it cached for that path and
    builds the tab's own session meanwhile, while the browser loads the scripts. Whatever request misses the
    cache fills it, with a session that never expires: unprimed, that would be the first viewer's. Panel's
    switch and cache are process-wide, keyed by path: a second server in the process (tests, an embedding
    program) shares the first one's cached pages, which only render the HTML; each tab's session is its own
    server's.
    """
    for path in paths:
        if path in pn.state._session_key_funcs:  # cached already (Panel has no public way to ask)
            continue
        url = f"{handle.url.rstrip('/')}{path}?{PRIME_ARG}=1"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                resp.read()
        except OSError as exc:  # the server still serves; that page's first viewer just waits for its build
            log.warning("dashboard: could not prime the page cache for %s: %s", path, exc)


class _Finished:
    """Stands in for the server thread of a blocking ``serve`` that already returned."""

    def is_alive(self) -> bool:
        return False


def hub_for(cfg: Config, *, dask_url: str | None = None, push: bool | None = None) -> Hub:
    """The hub ``cfg`` describes: its topics, the registry watcher and the lake's history (not started).

    ``push`` (default ``dashboard.push_timeline``): the timeline's own socket, which :func:`serve` routes.
    """
    from dashboards.history import History
    from dashboards.overview import FAST

    state = LiveState(cfg.kafka.client_settings(), cfg.kafka.topics, history_s=cfg.dashboard.history_s,
                      tick_ms=cfg.dashboard.refresh_ms, key_field=cfg.schema.key,
                      value_fields=tuple(cfg.features.numeric), baseline_events=cfg.features.baseline.events)
    url = dask_url or cfg.dashboard.dask_url
    if url is None and cfg.cluster.scheduler is None:
        url = f"http://{cfg.cluster.dashboard_address}/status"
    return Hub.build(state, tick_ms=cfg.dashboard.refresh_ms, models=ModelsWatch(cfg),
                     history=History.from_config(cfg), dask_url=url, heap_trim_s=cfg.dashboard.heap_trim_s,
                     stale_after_s=cfg.dashboard.stale_after_s,
                     push=TickPush(state, FAST) if (cfg.dashboard.push_timeline if push is None else push) else None)


def serve_config(cfg: Config, hub: Hub, *, show: bool = False) -> ServerHandle:
    """:func:`serve` with ``cfg``'s dashboard section (address, origins, expiry, auth)."""
    d = cfg.dashboard
    return serve(hub, host=d.host, port=d.port, show=show, allow_websocket_origin=d.allow_websocket_origin,
                 session_expiry_s=d.session_expiry_s, auth=auth_options(cfg), reuse_sessions=d.reuse_sessions)


def run_server(cfg: Config, *, open_browser: bool, stop: threading.Event | None = None) -> None:
    """``isostream dashboard``: consume ``cfg``'s output topics and serve until Ctrl-C, SIGTERM or ``stop``.

    ``stop`` lets a caller on another thread (tests, an embedding program) end it; signals only reach the
    main thread.
    """
    hub = hub_for(cfg).start()
    done = stop if stop is not None else threading.Event()
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda *_: done.set())
        except ValueError:  # not the main thread: whoever called us owns the signals
            pass
    handle = None
    try:
        handle = serve_config(cfg, hub, show=open_browser)
        print(f"isostream dashboard on {handle.url} (Ctrl-C stops)", file=sys.stderr)
        while handle.running and not done.wait(0.5):
            pass
    finally:
        if handle is not None:
            handle.stop()
        hub.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)


def _served_hub(cfg: Config) -> Hub:
    """The process-wide hub for ``panel serve``, which re-runs this file for every session."""
    skip_mathjax()  # once per process, as serve() does
    hub = hub_for(cfg, push=False).start()  # `panel serve` has no route for the timeline's socket
    atexit.register(hub.stop)  # close the consumer when the server process exits normally
    return hub


if pn.state.served:
    from dashboards.overview import Overview
    from engine.config import load

    _cfg = load(os.environ.get("ISOSTREAM_CONFIG") or None)
    _hub: Hub = pn.state.as_cached("isostream-hub", lambda: _served_hub(_cfg))
    Overview(_hub).page().servable(title=TITLE)
