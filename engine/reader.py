"""The reader of a partition group: owns the Kafka consumer on a thread of its own, polls and decodes ahead.

Polling (librdkafka hands over the messages) and decoding (pyarrow parses the JSON without the GIL) overlap
with the loop's features, scoring and outputs. The reader is the only thread that touches the consumer:
confluent-kafka lets one thread at a time into a consumer, and a second thread's calls starved behind
back-to-back ``consume()`` calls, so offset commits and lag reads are handed to it and done between polls.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from engine import steps
from engine.source import Source
from streams.decode import Decoder

log = logging.getLogger(__name__)


class Reader:
    """Reads decoded :class:`~engine.steps.Batch` es ahead of the loop, at most ``depth`` of them."""

    def __init__(self, source: Source, decoder: Decoder, *, depth: int = 2) -> None:
        self.source = source
        self.decoder = decoder
        self.topic = source.topic
        self.batches: queue.Queue[steps.Batch] = queue.Queue(maxsize=depth)
        self.lag: dict[int, int] = {}
        self.error: BaseException | None = None
        self._commits: queue.Queue[tuple[dict[int, int], threading.Event]] = queue.Queue()
        self._reading = threading.Event()  # cleared: hold off polling (stopping, or rows wait for a model)
        self._reading.set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="isostream-reader", daemon=True)

    def start(self) -> Reader:
        self._thread.start()
        return self

    def pause(self, paused: bool) -> None:
        """Stop (or resume) polling; commits and lag reads go on."""
        if paused:
            self._reading.clear()
        else:
            self._reading.set()

    def get(self, timeout_s: float) -> steps.Batch | None:
        """The next decoded batch, or None within ``timeout_s``; raises what the reader failed with."""
        if self.error is not None:
            raise self.error
        try:
            return self.batches.get(timeout=timeout_s)
        except queue.Empty:
            if self.error is not None:
                raise self.error from None
            return None

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit ``offsets`` on the reader's thread; returns once they are committed (raises its error)."""
        done = threading.Event()
        self._commits.put((offsets, done))
        while not done.wait(0.2):
            if self.error is not None or not self._thread.is_alive():
                msg = f"reader stopped before committing {offsets}: {self.error}"
                raise RuntimeError(msg) from self.error
        if self.error is not None:
            raise self.error

    def group_metadata(self) -> Any:
        return self.source.group_metadata()

    def _serve_commits(self) -> None:
        while True:
            try:
                offsets, done = self._commits.get_nowait()
            except queue.Empty:
                return
            try:
                self.source.commit(offsets)
            finally:
                done.set()

    def _loop(self) -> None:
        try:
            lag_due = 0
            while not self._done.is_set():
                self._serve_commits()
                lag_due -= 1
                if lag_due <= 0:
                    self.lag, lag_due = self.source.lag(), 10
                if not self._reading.is_set():
                    self._reading.wait(0.05)
                    continue
                raw = self.source.poll_batch()
                if raw is None or not len(raw):
                    continue
                batch = steps.decode(steps.Batch(raw), self.decoder)
                while not self._done.is_set():
                    try:
                        self.batches.put(batch, timeout=0.05)
                        break
                    except queue.Full:
                        self._serve_commits()
            self._serve_commits()
        except BaseException as err:  # noqa: BLE001 - handed to the loop, which raises it
            self.error = err
            log.debug("reader failed", exc_info=True)
            # wake a committer waiting on us
            while True:
                try:
                    _, done = self._commits.get_nowait()
                except queue.Empty:
                    break
                done.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop reading (batches still queued are dropped: their offsets were never committed)."""
        self._done.set()
        self._reading.set()
        self._thread.join(timeout_s)


def route_commits(committer: Any, reader: Reader) -> Callable[[], None]:
    """Point a committer that commits through its source at the reader instead; returns an undo."""
    old = getattr(committer, "source", None)
    if old is None:
        return lambda: None
    committer.source = reader
    return lambda: setattr(committer, "source", old)
