"""When a page redraws its slow parts (numbers, tables, the histogram, its status line): once every so many
ticks of the shared clock, each page at a phase of its own.

Why not "a second since this page last did": tabs opened together (ten viewers after a restart, the
benchmark's ten at once) then redraw their slow parts on the same tick, every second. That tick's updates
take the server's event loop several times longer than the others, the next tick waits for them, and every
tab gets the two ticks merged into one picture; the browsers, too, all parse and lay out their new tables in
the same 100 ms. Spread over the ticks of a period, each tick carries about one page's slow work.

>>> a, b = Every(1.0, 100, phase=0), Every(1.0, 100, phase=3)
>>> [seq for seq in range(1, 25) if a.due(seq)]  # the first call is always due: a new page draws at once
[1, 10, 20]
>>> [seq for seq in range(1, 25) if b.due(seq)]
[1, 7, 17]
>>> b.pending(26), b.pending(27)  # asks without taking the turn
(False, True)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

#: phases handed to pages in the order they are made: ten pages with a period of ten ticks get one tick each
_PHASES: Iterator[int] = itertools.count()


def next_phase() -> int:
    """A phase for a new page: the pages of one server process take turns."""
    return next(_PHASES)


class Every:
    """Due once every ``period_s`` of ticks (``tick_ms`` each), when ``seq + phase`` crosses a multiple of the
    period; a page whose update ran late draws at its next one, so none is skipped."""

    __slots__ = ("period", "phase", "_epoch")

    def __init__(self, period_s: float, tick_ms: int, phase: int) -> None:
        if period_s <= 0 or tick_ms <= 0:
            msg = f"Every: period_s and tick_ms must be positive, got {period_s!r} and {tick_ms!r}"
            raise ValueError(msg)
        self.period = max(1, round(period_s * 1000 / tick_ms))
        self.phase = phase % self.period
        self._epoch: int | None = None

    def due(self, seq: int) -> bool:
        """Whether the slow parts are due at tick ``seq`` (True once per period, and on the first call)."""
        epoch = (seq + self.phase) // self.period
        if epoch == self._epoch:
            return False
        self._epoch = epoch
        return True

    def pending(self, seq: int) -> bool:
        """Whether :meth:`due` would say True at ``seq``, without taking the turn."""
        return (seq + self.phase) // self.period != self._epoch

    def now(self) -> None:
        """Make the next call due, whatever its tick (the tests' way to draw the slow parts at once)."""
        self._epoch = None
