"""A micro-batch exactly as it came off Kafka: message bytes plus their coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RawBatch:
    """Messages of one micro-batch; position ``i`` in every field belongs to message ``i``."""

    topic: str
    values: list[bytes]
    keys: list[bytes | None]
    partitions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    timestamps_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.values)

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.values))

    def next_offsets(self) -> dict[int, int]:
        """Partition -> highest offset + 1: what to commit once this batch's outputs are durable."""
        if len(self.offsets) == 0:
            return {}
        out: dict[int, int] = {}
        for p in np.unique(self.partitions):
            out[int(p)] = int(self.offsets[self.partitions == p].max()) + 1
        return out

    @classmethod
    def concat(cls, batches: list[RawBatch]) -> RawBatch:
        """One batch of several (same topic), in order."""
        values: list[bytes] = []
        keys: list[bytes | None] = []
        for b in batches:
            values += b.values
            keys += b.keys
        return cls(
            topic=batches[0].topic,
            values=values,
            keys=keys,
            partitions=np.concatenate([b.partitions for b in batches]),
            offsets=np.concatenate([b.offsets for b in batches]),
            timestamps_ms=np.concatenate([b.timestamps_ms for b in batches]),
        )

    @classmethod
    def from_values(cls, values: list[bytes], *, topic: str = "test", partition: int = 0, first_offset: int = 0,
                    keys: list[bytes | None] | None = None) -> RawBatch:
        """A batch of in-memory messages (tests, benchmarks, replays of files)."""
        n = len(values)
        return cls(
            topic=topic,
            values=list(values),
            keys=list(keys) if keys is not None else [None] * n,
            partitions=np.full(n, partition, dtype=np.int32),
            offsets=np.arange(first_offset, first_offset + n, dtype=np.int64),
            timestamps_ms=np.zeros(n, dtype=np.int64),
        )
