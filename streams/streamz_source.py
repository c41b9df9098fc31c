"""``Stream.from_kafka_columnar``: a streamz source emitting decoded columnar micro-batches from Kafka.

One long-lived :class:`~streams.kafka_source.KafkaBatchSource` is polled in its own thread while the previous
batch decodes in another (librdkafka and pyarrow both release the GIL), so fetching and decoding overlap. At
most ``max_in_flight`` batches are polled-but-not-yet-emitted, and each emit is awaited: a slow downstream
stops the polling (backpressure). Each element is a :class:`ColumnarBatch` ``(raw, decoded)``.

Offsets: with ``commit="on_done"`` a batch's offsets are committed once streamz reports every downstream
branch done with it (its reference count drops to zero, i.e. the sinks returned), and only in emit order, so a
crash never skips a batch that was not finished. With ``commit="manual"`` call :meth:`from_kafka_columnar.commit`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal, NamedTuple

from streamz import Stream
from streamz.core import RefCounter
from streamz.sources import Source

from streams.deadletter import DeadLetter, DeadLetterSink
from streams.decode import Decoded, Decoder
from streams.kafka_source import KafkaBatchSource
from streams.metrics import Metrics
from streams.records import RawBatch
from streams.schema import Schema

log = logging.getLogger(__name__)


class ColumnarBatch(NamedTuple):
    """One emitted element: the batch as read (coordinates, bytes) and as decoded (frame, dead letters)."""

    raw: RawBatch
    decoded: Decoded

    @property
    def frame(self) -> Any:
        return self.decoded.frame

    @property
    def dead(self) -> list[DeadLetter]:
        return self.decoded.dead

    @property
    def offsets(self) -> dict[int, int]:
        """Partition -> next offset: what to commit once this batch's outputs are durable."""
        return self.raw.next_offsets()


@Stream.register_api(staticmethod)
class from_kafka_columnar(Source):  # noqa: N801 - streamz API names are lower case
    """Emit :class:`ColumnarBatch` elements decoded from ``topic`` against ``schema``.

    >>> from streams.schema import STATION_ALARM
    >>> node = Stream.from_kafka_columnar({"bootstrap.servers": "127.0.0.1:9092"}, "events",
    ...                                   STATION_ALARM, group_id="isostream")  # doctest: +SKIP
    >>> node.map(lambda b: len(b.frame)).sink(print); node.start()  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: dict[str, Any],
        topic: str,
        schema: Schema,
        *,
        group_id: str,
        partitions: list[int] | None = None,
        subscribe: bool = False,
        start: Literal["committed", "earliest", "latest"] = "committed",
        max_messages: int = 20_000,
        max_wait_ms: int = 200,
        max_in_flight: int = 4,
        backend: str = "cpu",
        decode_threads: int = 2,
        commit: Literal["on_done", "manual"] = "on_done",
        dead_letters: DeadLetterSink | None = None,
        metrics: Metrics | None = None,
        lag_interval_s: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if max_in_flight < 1:
            msg = f"from_kafka_columnar: max_in_flight must be >= 1, got {max_in_flight}"
            raise ValueError(msg)
        if decode_threads < 1:
            msg = f"from_kafka_columnar: decode_threads must be >= 1, got {decode_threads}"
            raise ValueError(msg)
        if commit not in ("on_done", "manual"):
            msg = f"from_kafka_columnar: commit must be 'on_done' or 'manual', got {commit!r}"
            raise ValueError(msg)
        self.metrics = metrics or Metrics()
        self._open_source = partial(
            KafkaBatchSource, settings, topic, group_id=group_id, partitions=partitions, subscribe=subscribe,
            max_messages=max_messages, max_wait_ms=max_wait_ms, start=start, metrics=self.metrics,
        )
        # one decoder per decode thread (a decoder remembers the event-time layout that parsed last); with
        # several threads each parses single-threaded: batches in parallel beat blocks in parallel on 2 cores
        self._make_decoder = partial(Decoder, schema, backend, threads=decode_threads == 1)
        Decoder(schema, backend)  # fail here, not in a thread, on a bad schema default or backend
        self._decoders = threading.local()
        self.decode_threads = decode_threads
        self.max_in_flight = max_in_flight
        self.commit_mode = commit
        self.dead_letters = dead_letters
        self.lag_interval_s = lag_interval_s
        self.source: KafkaBatchSource | None = None
        self.error: BaseException | None = None
        self.closed = threading.Event()
        self._emitted = 0
        self._done: dict[int, dict[int, int]] = {}  # emit seq -> offsets, finished but not yet committed
        self._next_commit = 0
        self._lag_at = 0.0
        self._commit_pool: ThreadPoolExecutor | None = None
        self._poll_thread: int | None = None  # ident of the thread that owns the consumer
        self.stopped: bool = True
        super().__init__(**kwargs)

    # -- the loop --------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.closed.clear()
        poll_pool = ThreadPoolExecutor(1, thread_name_prefix="kafka-poll")
        decode_pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="kafka-decode")
        # commits go through the poll thread: confluent-kafka >= 2.13 gates a consumer to one calling thread
        # at a time, and a second thread waiting on that gate starved behind back-to-back consume() calls
        self._commit_pool = poll_pool
        pending: deque[asyncio.Future[ColumnarBatch]] = deque()
        polling: asyncio.Future[RawBatch | None] | None = None
        try:
            self.source = await loop.run_in_executor(poll_pool, self._open_source)
            self._poll_thread = await loop.run_in_executor(poll_pool, threading.get_ident)
            while not self.stopped or pending:
                if polling is None and not self.stopped and len(pending) < self.max_in_flight:
                    polling = loop.run_in_executor(poll_pool, self._poll)
                self.metrics.set_gauge("in_flight", len(pending) + (polling is not None))
                waiting = [f for f in (polling, pending[0] if pending else None) if f is not None]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if polling is not None and polling.done():
                    raw, polling = polling.result(), None
                    if raw is not None:
                        pending.append(loop.run_in_executor(decode_pool, self._decode, raw))
                while pending and pending[0].done():
                    await self._emit_batch(pending.popleft().result())
        except Exception as err:  # noqa: BLE001 - kept on the node and logged; the graph cannot raise it
            self.error = err
            self.stopped = True
            log.exception("from_kafka_columnar: stopped by an error")
        finally:
            if polling is not None:
                await asyncio.wait([polling])
            self._commit_pool = None
            await loop.run_in_executor(poll_pool, self._close)  # FIFO: queued commits land first
            for pool in (poll_pool, decode_pool):
                pool.shutdown(wait=True)
            self.closed.set()

    def _poll(self) -> RawBatch | None:
        assert self.source is not None
        raw = self.source.poll_batch()
        now = time.monotonic()
        if now - self._lag_at >= self.lag_interval_s:
            self._lag_at = now
            self.source.lag()  # sets the lag{partition=...} gauges
        return raw

    def _decode(self, raw: RawBatch) -> ColumnarBatch:
        started = time.perf_counter()
        decoder = getattr(self._decoders, "decoder", None)
        if decoder is None:
            decoder = self._decoders.decoder = self._make_decoder()
        decoded = decoder.decode(raw)
        for letter in decoded.dead:
            self.metrics.inc("dead_letters", reason=letter.reason.value)
        if decoded.dead and self.dead_letters is not None:
            # durable before the batch is emitted, so committing after downstream covers the dead letters too
            self.dead_letters.write(decoded.dead)
            self.dead_letters.flush()
        self.metrics.inc("decoded_records", len(decoded.frame))
        self.metrics.inc("decode_seconds", time.perf_counter() - started)
        return ColumnarBatch(raw, decoded)

    async def _emit_batch(self, batch: ColumnarBatch) -> None:
        seq, self._emitted = self._emitted, self._emitted + 1
        metadata = None
        if self.commit_mode == "on_done":
            ref = RefCounter(cb=partial(self._finished, seq, batch.offsets), loop=self.loop)
            metadata = [{"ref": ref}]
        results = self._emit(batch, metadata=metadata)
        if results:
            await asyncio.gather(*results)  # backpressure: wait while downstream is busy
        self.metrics.inc("batches_emitted")

    # -- offsets ---------------------------------------------------------------------------------------
    def _finished(self, seq: int, offsets: dict[int, int]) -> None:
        """A batch is done downstream: commit the longest run of finished batches, in emit order."""
        self._done[seq] = offsets
        merged: dict[int, int] = {}
        while self._next_commit in self._done:
            merged.update(self._done.pop(self._next_commit))
            self._next_commit += 1
        if merged and self._commit_pool is not None:
            self._commit_pool.submit(self._commit_logged, merged)
        elif merged:  # finished after the source closed: the next run re-reads these (at-least-once)
            log.info("from_kafka_columnar: batch finished after close; offsets %s not committed", merged)

    def _commit_logged(self, offsets: dict[int, int]) -> None:
        try:
            self.commit(offsets)
        except Exception:  # noqa: BLE001 - the next commit carries these offsets forward anyway
            log.exception("from_kafka_columnar: commit of %s failed", offsets)
            self.metrics.inc("commit_errors")

    def commit(self, offsets: dict[int, int] | ColumnarBatch) -> None:
        """Synchronously commit ``partition -> next offset`` (or a batch's offsets) for the group."""
        if isinstance(offsets, ColumnarBatch):
            offsets = offsets.offsets
        if self.source is None:
            msg = "from_kafka_columnar: commit before the source started"
            raise RuntimeError(msg)
        pool = self._commit_pool
        if pool is None or threading.get_ident() == self._poll_thread:
            self.source.commit(offsets)
        else:
            pool.submit(self.source.commit, offsets).result()

    def _close(self) -> None:
        if self.source is not None:
            self.source.close()

    def wait_closed(self, timeout_s: float = 60.0) -> None:
        """Block until the source has stopped, emitted what it had decoded and closed its consumer."""
        if not self.closed.wait(timeout_s):
            msg = f"from_kafka_columnar: not closed within {timeout_s:.0f}s"
            raise TimeoutError(msg)
