"""One clock for every viewer: a thread closes a tick every ``tick_ms``, and the server's event loop then queues
each live page's update.

Why not a periodic callback per browser session (Panel's usual way): N timers drift apart, each wakes to find
nothing new half the time, and a session that never finished loading keeps its timer. Here a page is
registered only once its browser has loaded it (``pn.state.onload``) and unregistered when Bokeh destroys its
session; ticks go only to registered pages. Measured on 2 cores: 10 tabs at 10 ticks/s cost the server ~20 %
of a core with one streamed row per tick and page.

A page whose previous update has not run yet when the next tick comes is not scheduled twice: the tick is
counted as *coalesced*, and its next update draws every row it has not drawn (nothing is lost while the ring
holds them). Rows that fell out of the ring before a page drew them are *missed*, counted per page and in
total, and shown on the page. Of the coalesced ticks, those a page held back because its browser had not yet
acknowledged what it was sent are *held* (the browser was behind, not the server); how long each update waited
for the server's event loop after its tick is the *update delay* (the server was behind).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from tornado.ioloop import IOLoop

from dashboards.push import TickPush
from dashboards.state import LiveState
from dashboards.timings import Timings

log = logging.getLogger(__name__)

#: the update delays /status.json summarises: the most recent ones (10 pages at 10 ticks/s: about 10 s)
DELAYS_KEPT = 1_000


class Page(Protocol):
    """What the broadcaster drives: a page of one browser session."""

    missed: int
    coalesced: int  # held ticks included
    held: int  # ticks held back for a browser behind (a page without flow control holds none)

    def update(self) -> None: ...

    def wants(self, seq: int) -> bool:
        """Whether the page has anything to draw at tick ``seq`` (one that does not is not queued)."""


#: an update queued this long without running is reported (logged once per page, and in ``/status.json``)
STUCK_S = 10.0


class _Slot:
    """A registered page, its document and the event loop serving it, whether an update is already queued on
    it, and how its updates went."""

    __slots__ = ("page", "doc", "loop", "pending", "queued_at", "registered_at", "ran_at", "updates",
                 "disconnected", "stuck_logged")

    def __init__(self, page: Page, doc: Any, loop: Any = None) -> None:
        self.page, self.doc, self.loop, self.pending = page, doc, loop, False
        self.queued_at = 0.0  # time.monotonic() of the tick that queued the pending update
        self.registered_at = self.ran_at = time.monotonic()
        self.updates = 0
        self.disconnected = 0  # ticks skipped while its browser had no connection
        self.stuck_logged = False

    def detail(self, now: float) -> dict[str, Any]:
        """This page's side of the ticks, for ``/status.json``: where a viewer that stopped updating stopped."""
        p = self.page
        return {"session": _session_id(self.doc) or f"{id(p):x}", "path": getattr(p, "path", None),
                "age_s": round(now - self.registered_at, 1),
                "updates": self.updates, "since_update_s": round(now - self.ran_at, 1),
                "pending_s": round(now - self.queued_at, 1) if self.pending else None,
                "coalesced": p.coalesced, "held": p.held, "missed": p.missed,
                "behind": getattr(p, "behind", None), "connected": _connected(self.doc),
                "disconnected_ticks": self.disconnected, **_wedge(self.doc)}


def _held(lock: Any) -> bool | None:
    """Whether a Tornado lock is held (None: not a lock this can read)."""
    block = getattr(lock, "_block", None)  # Tornado's Lock has no public test; Panel reads the same field
    value = getattr(block, "_value", None)
    return None if value is None else value == 0


def _unsent(stream: Any) -> int | None:
    """Bytes a Tornado stream holds that the kernel has not taken (None: not a stream this can read)."""
    buffer = getattr(stream, "_write_buffer", None)
    return None if buffer is None else len(buffer)


def _wedge(doc: Any) -> dict[str, Any]:
    """Where an update that does not run may be waiting: the session's document lock (held by an earlier
    update or message that has not finished), its websockets' write locks, and the bytes Tornado has not yet
    handed to the kernel (a browser that stopped reading). None where this Bokeh or Tornado hides it."""
    context = getattr(doc, "session_context", None)
    session = getattr(context, "session", None) if context is not None else None
    if session is None:
        return {"doc_locked": None, "write_locked": None, "unsent_bytes": None}
    sockets = [getattr(c, "_socket", None) for c in list(getattr(session, "_subscribed_connections", ()))]
    writes = [_held(getattr(s, "write_lock", None)) for s in sockets]
    unsent = [_unsent(getattr(getattr(s, "ws_connection", None), "stream", None)) for s in sockets]
    return {"doc_locked": _held(getattr(session, "_lock", None)),
            "write_locked": any(w for w in writes) if writes and None not in writes else None,
            "unsent_bytes": sum(unsent) if unsent and None not in unsent else None}


def _session_id(doc: Any) -> str | None:
    """The first characters of ``doc``'s Bokeh session id (enough to tell a server's sessions apart)."""
    context = getattr(doc, "session_context", None)
    sid = getattr(context, "id", None) if context is not None else None
    return str(sid)[:12] if sid else None


def _connected(doc: Any) -> bool:
    """Whether ``doc``'s session still has a browser connected (True when that cannot be told)."""
    context = getattr(doc, "session_context", None)
    session = getattr(context, "session", None) if context is not None else None
    if session is None:
        return context is None  # a stand-in document (tests), or a session not attached yet
    return not session.destroyed and session.connection_count > 0


class Broadcaster:
    """Ticks ``state`` every ``tick_ms`` and fans the tick out to every loaded page, on its own document."""

    def __init__(self, state: LiveState, tick_ms: int = 100, *, on_tick: Callable[[], object] | None = None,
                 every_s: float = 2.0) -> None:
        self.state = state
        self.tick_ms = int(tick_ms)
        self._on_tick = on_tick  # slower, shared work (the registry poll), run on this thread every ``every_s``
        self._every_s = every_s
        self._lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}
        self.created = self.loaded = self.destroyed = self.errors = self.cached = 0
        self._missed_gone = self._coalesced_gone = self._held_gone = 0  # of pages that have gone
        self._delays = Timings(DELAYS_KEPT)  # ms from a tick to its update running
        self._durations = Timings(DELAYS_KEPT)  # ms each update held the event loop (what the others wait for)
        self.late_ticks = 0  # ticks this thread could not close on time (it was starved of CPU)
        self.abandoned = 0  # updates dropped because their browser had gone (its rows are not owed to anyone)
        self._turn = 0  # fan-outs so far: where the next one starts
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.push: TickPush | None = None  # the timeline's own socket, when the server has one

    # -- sessions ---------------------------------------------------------------------------------------------
    def session_created(self) -> None:
        with self._lock:
            self.created += 1

    def session_cached(self) -> None:
        """The session just created is the server's page cache (``dashboard.reuse_sessions``): it serves
        every new tab's first HTML, lives as long as the server, and is not a viewer."""
        with self._lock:
            self.cached += 1

    def register(self, page: Page, doc: Any) -> None:
        """Start ticking ``page`` (its browser has loaded it). Called on the server's event loop (Panel's
        ``onload``), which then queues the page's updates; elsewhere (tests) the clock's thread queues them."""
        loop = IOLoop.current(instance=False)
        with self._lock:
            self._slots[id(page)] = _Slot(page, doc, loop)
            self.loaded += 1

    def session_destroyed(self, page: Page | None) -> bool:
        """Bokeh destroyed a session (its page loaded or not): stop ticking it and keep its counts.

        Returns whether its page had loaded (was being ticked).
        """
        with self._lock:
            self.destroyed += 1
            slot = self._slots.pop(id(page), None) if page is not None else None
            if slot is not None:
                self._missed_gone += slot.page.missed
                self._coalesced_gone += slot.page.coalesced
                self._held_gone += slot.page.held
            return slot is not None

    @property
    def live_pages(self) -> int:
        with self._lock:
            return len(self._slots)

    def status(self) -> dict[str, Any]:
        """Sessions and tick accounting, for ``/status.json`` and the pages' status line."""
        now = time.monotonic()
        with self._lock:
            slots = list(self._slots.values())
            pages = [s.page for s in slots]
            return {
                "sessions": {"live": self.created - self.destroyed - self.cached, "created": self.created,
                             "loaded": self.loaded, "destroyed": self.destroyed, "ticking": len(pages),
                             "cached": self.cached},
                "tick_ms": self.tick_ms,
                "ticks": self.state.ticks.seq,
                "late_ticks": self.late_ticks,
                "missed_updates": self._missed_gone + sum(p.missed for p in pages),
                "coalesced_updates": self._coalesced_gone + sum(p.coalesced for p in pages),
                "held_updates": self._held_gone + sum(p.held for p in pages),
                "update_delay_ms": self._delays.summary(),
                "update_ms": self._durations.summary(),
                "update_errors": self.errors,
                "abandoned_updates": self.abandoned,
                "pages": [s.detail(now) for s in slots],
            }

    # -- the thread ---------------------------------------------------------------------------------------------
    def start(self) -> Broadcaster:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="isostream-dashboard-ticks", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        period = self.tick_ms / 1000.0
        due = time.monotonic() + period
        slow_due = 0.0
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            late = time.monotonic() - due
            if late > period:  # starved: close one tick for the whole gap, count the rest as late
                skipped = int(late // period)
                self.late_ticks += skipped
                due += skipped * period
            due += period
            try:
                self.state.tick(late_ms=max(late, 0.0) * 1000.0)
                if self._on_tick is not None and time.monotonic() >= slow_due:
                    slow_due = time.monotonic() + self._every_s
                    self._on_tick()
            except Exception:  # noqa: BLE001 - the clock of every viewer must keep going
                self.errors += 1
                log.exception("dashboard: tick failed")
            try:
                self._dispatch()
            except Exception:  # noqa: BLE001 - nor may one page's queueing stop it
                self.errors += 1
                log.exception("dashboard: queueing the tick's updates failed")

    def _dispatch(self) -> None:
        """Queue this tick's page updates from the event loop that serves them, never from this thread.

        Bokeh allows ``add_next_tick_callback`` from any thread, but a document that is on hold (every page
        update runs inside Panel's ``unlocked()``, which holds its document) collects the callback's
        announcement in a list that the loop's thread empties with a copy and a reset: an announcement
        appended between the two is lost, and that page's update is never run. The 30-minute run 42 lost one
        page that way for 580 s, quick run 44 for 50 s, with no lock held and nothing unsent.
        """
        tick_at = time.monotonic()
        if self.push is not None:  # first: the rows every tab draws this tick (dashboards/push.py)
            self.push.dispatch()
        with self._lock:
            loops = {id(s.loop): s.loop for s in self._slots.values() if s.loop is not None}
            unserved = any(s.loop is None for s in self._slots.values())
        for loop in loops.values():
            loop.add_callback(self._fan_out, tick_at, loop)  # the one IOLoop method safe from another thread
        if unserved:
            self._fan_out(tick_at)

    def _fan_out(self, tick_at: float | None = None, loop: Any = None) -> None:
        """Queue an update for every page served by ``loop`` (None: pages outside a server) that is due."""
        tick_at = time.monotonic() if tick_at is None else tick_at
        with self._lock:
            slots = [s for s in self._slots.values() if s.loop is loop]
        # each tick starts with the next page: the IOLoop runs the updates in the order they are queued, and
        # on a busy server the last ones are still queued at the next tick, so a fixed order made the same
        # tabs draw fewer pictures every time (30-minute run 39: 6,799 updates for the first of ten, 5,247
        # for the last)
        if slots:
            turn = self._turn % len(slots)
            slots = slots[turn:] + slots[:turn]
            self._turn += 1
        seq = self.state.ticks.seq
        for slot in slots:
            if not slot.page.wants(seq):
                continue  # nothing due: not even the event loop's turn and the document's lock
            if not _connected(slot.doc):
                # the browser went away; Bokeh destroys the session after its expiry. Sending to it meanwhile
                # only fails (measured: thousands of "connection.session is None" errors as 10 tabs closed)
                slot.disconnected += 1
                continue
            if slot.pending:
                slot.page.coalesced += 1
                if not slot.stuck_logged and time.monotonic() - slot.queued_at > STUCK_S:
                    slot.stuck_logged = True
                    wedge = _wedge(slot.doc)
                    log.warning("dashboard: a %s page's update has waited %.0f s to run; its viewer sees no "
                                "new data meanwhile (session %s: document lock held %s, websocket write lock "
                                "held %s, %s bytes not yet sent)", getattr(slot.page, "path", "?"), STUCK_S,
                                _session_id(slot.doc), wedge["doc_locked"], wedge["write_locked"],
                                wedge["unsent_bytes"])
                continue
            slot.pending = True
            slot.queued_at = tick_at
            try:
                # runs next on the server's IOLoop, with the document locked, and sends what the update changed
                # to that browser only
                slot.doc.add_next_tick_callback(lambda s=slot: self._update(s))
            except Exception:  # noqa: BLE001 - a document being torn down refuses callbacks
                slot.pending = False

    def _update(self, slot: _Slot) -> None:
        slot.pending = False
        slot.ran_at = time.monotonic()
        slot.updates += 1
        self._delays.add((slot.ran_at - slot.queued_at) * 1000.0)
        if not _connected(slot.doc):
            self.abandoned += 1  # the browser left between the tick and this update
            return
        try:
            slot.page.update()
            self._durations.add((time.monotonic() - slot.ran_at) * 1000.0)
        except Exception:  # noqa: BLE001 - one page's bad frame must not stop the others
            if not _connected(slot.doc):
                # it left during the update, and sending the change failed. Seen in the 30-minute benchmark:
                # two "page update failed" within 2 s of a probe's tab closing, and none otherwise
                self.abandoned += 1
                log.debug("dashboard: update of a page whose browser left", exc_info=True)
                return
            self.errors += 1
            log.exception("dashboard: page update failed")
