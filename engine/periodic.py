"""One background job on a timer: ``fn()`` every ``every_s`` seconds on a daemon thread, until ``stop()``.

The serve API's registry reloader and the dashboard's heap trimmer share it. An exception from ``fn`` is
logged and the timer goes on: a job that polls something outside the process must outlive a bad moment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Calls ``fn`` every ``every_s`` seconds (the first call one period after ``start``)."""

    def __init__(self, every_s: float, fn: Callable[[], object], name: str, *, join_timeout_s: float = 10.0) -> None:
        if every_s <= 0:
            msg = f"Periodic {name}: every_s must be > 0, got {every_s}"
            raise ValueError(msg)
        self.every_s, self.fn, self.name, self.join_timeout_s = every_s, fn, name, join_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the timer (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer and wait for a call in progress to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.fn()
            except Exception:  # noqa: BLE001 - see the module's docstring
                log.exception("%s: a periodic call failed; the timer goes on", self.name)
