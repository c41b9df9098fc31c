"""Everything one dashboard server process shares between its browser sessions.

One :class:`Hub` per process: the live state and its one consumer, the broadcaster's clock, the registry
watcher, the lake's history queries and the heap trimmer. Pages hold a reference to it and nothing else that
is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dashboards.broadcast import Broadcaster
from dashboards.heap_trim import HeapTrimmer
from dashboards.models_watch import ModelsWatch
from dashboards.push import TickPush
from dashboards.state import LiveState
from dashboards.watchdog import SILENT_S


@dataclass
class Hub:
    """The shared parts; ``start``/``stop`` run the consumer and the clock."""

    state: LiveState
    broadcaster: Broadcaster
    models: ModelsWatch | None = None
    history: Any = None  # dashboards.history.History, when a lake is configured
    dask_url: str | None = None
    key_field: str | None = None
    trimmer: HeapTrimmer = field(default_factory=lambda: HeapTrimmer(0.0))
    #: a live page shows its no-update banner after this long without one (0: never; dashboards/watchdog.py)
    stale_after_s: float = SILENT_S
    #: the live timeline's own websocket (None: its rows go with each page's Bokeh session)
    push: TickPush | None = None

    @classmethod
    def build(cls, state: LiveState, *, tick_ms: int = 100, models: ModelsWatch | None = None, history: Any = None,
              dask_url: str | None = None, heap_trim_s: float = 60.0, stale_after_s: float = SILENT_S,
              push: TickPush | None = None) -> Hub:
        """A hub over ``state`` whose clock also polls ``models`` (every 2 s, off the server's event loop) and
        fans each tick out to ``push``'s sockets, and whose trimmer gives the C heap's free pages back every
        ``heap_trim_s`` (0: never)."""
        broadcaster = Broadcaster(state, tick_ms, on_tick=models.poll if models is not None else None)
        broadcaster.push = push
        return cls(state, broadcaster, models, history, dask_url, state.key_field, HeapTrimmer(heap_trim_s),
                   stale_after_s, push)

    def start(self) -> Hub:
        self.state.start()
        self.broadcaster.start()
        self.trimmer.start()
        return self

    def stop(self) -> None:
        self.trimmer.stop()
        self.broadcaster.stop()
        self.state.stop()
