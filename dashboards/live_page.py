"""What every live page shares: its life cycle with the broadcaster, its status line, and the banner that says
when its updates stopped coming (:mod:`dashboards.watchdog`).

A page does no work until its browser has loaded it, and none after Bokeh destroys its session (the browser
went away, before or after the page loaded): see :mod:`dashboards.broadcast`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import panel as pn

from dashboards.cadence import Every, next_phase
from dashboards.hub import Hub
from dashboards.theme import CONTAINED, html_pane, template
from dashboards.watchdog import Watchdog

log = logging.getLogger(__name__)
STATUS_EVERY_S = 1.0


class LivePage(pn.viewable.Viewer):
    """Base of the live pages: ``draw()`` runs on every tick the page is due; ``body()`` builds the layout."""

    title = "live"
    path = "/"

    def __init__(self, hub: Hub, **params: Any) -> None:
        super().__init__(**params)
        self.hub = hub
        self.missed = 0  # ticks this page never drew (they left the ring before it could)
        self.coalesced = 0  # ticks drawn late, together with the next one
        self.held = 0  # of them, ticks held back because the browser had not caught up (Overview's flow control)
        self.updates = 0
        self._status = html_pane("", css_classes=["iso-status"], sizing_mode="stretch_width", styles=CONTAINED)
        self._phase = next_phase()  # this page's turn for its slow parts (dashboards/cadence.py says why)
        self._status_every = self.every(STATUS_EVERY_S)
        # the browser's own check that updates still come: the beat goes with the status line
        self._watchdog = Watchdog(after_s=hub.stale_after_s) if hub.stale_after_s > 0 else None

    # -- the broadcaster's side ---------------------------------------------------------------------------
    def attach(self) -> None:
        """Hook this page to its browser session (no-op outside a served document, e.g. in tests)."""
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            return
        b = self.hub.broadcaster
        b.session_created()
        began = time.monotonic()
        pn.state.onload(lambda: b.register(self, doc))
        doc.on_session_destroyed(lambda _ctx: self._ended(began))

    def _ended(self, began: float) -> None:
        """Bokeh ended this page's session: unregister it, and say how long the session lived (a session that
        lives long after its browser left is what the orphan drill looks for)."""
        loaded = self.hub.broadcaster.session_destroyed(self)
        log.info("dashboard: %s session ended %.0f s after it began (%s)", self.path, time.monotonic() - began,
                 "its page had loaded" if loaded else "its page never loaded")

    def update(self) -> None:
        """One tick: draw what changed, and the status line once a second, sent to the browser as one message."""
        self.updates += 1
        # Bokeh sends each change as a message of its own; Panel's unlocked() sends what the block changed as
        # one. Measured with one Overview tab at 10 ticks/s: 17.7 -> 13.6 websocket messages a second
        with pn.io.unlocked():
            self.draw()
            if self._status_every.due(self.tick):
                self._status.object = self.status_line()
                if self._watchdog is not None:
                    self._watchdog.beat += 1

    def wants(self, seq: int) -> bool:
        """Whether this page has anything to draw at tick ``seq``: most pages stream something every tick."""
        return True

    def every(self, period_s: float) -> Every:
        """A cadence for a slow part of this page: due once every ``period_s`` of ticks, at this page's phase."""
        return Every(period_s, self.hub.state.ticks.tick_ms, self._phase)

    @property
    def tick(self) -> int:
        """The newest tick the shared clock has closed."""
        return self.hub.state.ticks.seq

    def draw(self) -> None:  # pragma: no cover - every page has its own
        raise NotImplementedError

    def status_line(self) -> str:
        state = self.hub.state
        at = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
        feed = "consuming the engine's topics" if state.running else "not consuming (no broker?)"
        bad = sum(state.bad_records.values())
        parts = [feed, f"updated {at}", f"{self.hub.broadcaster.tick_ms} ms ticks"]
        if self.missed or self.coalesced:
            parts.append(f"this page: {self.missed:,} missed, {self.coalesced:,} late updates")
        else:
            parts.append("no missed updates")
        if bad:
            parts.append(f"{bad:,} bad records skipped")
        return " · ".join(parts)

    # -- the layout --------------------------------------------------------------------------------------------
    def body(self) -> list[Any]:  # pragma: no cover - every page has its own
        raise NotImplementedError

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(*self._top(), *self.body(), sizing_mode="stretch_width")

    def _top(self) -> list[Any]:
        return [self._status] if self._watchdog is None else [self._watchdog, self._status]

    def page(self) -> pn.template.BaseTemplate:
        """This page in the shared template, hooked to its session: what a route serves."""
        self.attach()
        self.update()
        return template(self.title, self.path, *self._top(), *self.body())
