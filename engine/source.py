"""Sources of raw micro-batches for a partition group: Kafka, or in memory for tests and replays."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from streams.records import RawBatch


class Source(Protocol):
    """What a partition group reads from: raw batches of its partitions, and where to commit their offsets."""

    topic: str

    def poll_batch(self) -> RawBatch | None: ...
    def committed(self) -> dict[int, int]: ...
    def commit(self, offsets: dict[int, int]) -> None: ...
    def group_metadata(self) -> Any: ...
    def lag(self) -> dict[int, int]: ...
    def close(self) -> None: ...


class MemorySource:
    """Serves the messages of in-memory batches from the committed offsets on, one batch per poll.

    Like a Kafka partition, it remembers committed offsets across "restarts": build a new one over the same
    batches with ``committed=`` the old one's :attr:`committed_offsets` to resume.

    >>> b = RawBatch.from_values([b"a", b"b", b"c"], topic="t")
    >>> src = MemorySource([b], partitions=[0], committed={0: 1})
    >>> src.poll_batch().values, src.poll_batch()
    ([b'b', b'c'], None)
    """

    def __init__(self, batches: list[RawBatch], *, partitions: list[int], committed: dict[int, int] | None = None,
                 topic: str | None = None) -> None:
        self.topic = topic or (batches[0].topic if batches else "memory")
        self.partitions = list(partitions)
        self.committed_offsets = {p: 0 for p in self.partitions}
        self.committed_offsets.update({p: o for p, o in (committed or {}).items() if p in self.partitions})
        self._queue: list[RawBatch] = []
        for b in batches:
            keep = np.isin(b.partitions, self.partitions)
            for p in self.partitions:
                keep &= ~((b.partitions == p) & (b.offsets < self.committed_offsets[p]))
            if keep.any():
                idx = np.flatnonzero(keep)
                self._queue.append(RawBatch(b.topic, [b.values[i] for i in idx], [b.keys[i] for i in idx],
                                            b.partitions[idx], b.offsets[idx], b.timestamps_ms[idx]))
        self._queue.reverse()
        self.closed = False

    def poll_batch(self) -> RawBatch | None:
        return self._queue.pop() if self._queue else None

    def committed(self) -> dict[int, int]:
        return dict(self.committed_offsets)

    def commit(self, offsets: dict[int, int]) -> None:
        self.committed_offsets.update(offsets)

    def group_metadata(self) -> Any:
        return None

    def lag(self) -> dict[int, int]:
        left = {p: 0 for p in self.partitions}
        for b in self._queue:
            for p in self.partitions:
                left[p] += int((b.partitions == p).sum())
        return left

    def close(self) -> None:
        self.closed = True
