"""Dead letters: records that failed decoding, kept with their original bytes, coordinates and reason."""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from streams.durable import atomic_writer
from streams.metrics import Metrics


class Reason(str, Enum):
    """Why a record became a dead letter: it could not be decoded, or it came too late for its window."""

    INVALID_JSON = "invalid_json"
    INVALID_CSV = "invalid_csv"
    INVALID_ENCODING = "invalid_encoding"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    OVERSIZE = "oversize"
    BAD_TIMESTAMP = "bad_timestamp"
    #: decoded and scored, but its event-time window had closed (windows.late_events: dead_letter)
    LATE_EVENT = "late_event"


@dataclass(frozen=True)
class DeadLetter:
    """One rejected record."""

    reason: Reason
    detail: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    def to_json(self) -> bytes:
        """The dead-letter topic format (bytes base64-encoded so any input survives)."""
        return json.dumps({
            "reason": self.reason.value,
            "detail": self.detail,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": base64.b64encode(self.key).decode() if self.key is not None else None,
            "value": base64.b64encode(self.value).decode(),
        }).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DeadLetter:
        d = json.loads(raw)
        return cls(Reason(d["reason"]), d["detail"], d["topic"], d["partition"], d["offset"],
                   base64.b64decode(d["key"]) if d["key"] is not None else None, base64.b64decode(d["value"]))


_FILE = re.compile(r"^dead-p(\d+)-(\d{20})-(\d{20})\.parquet$")


def write_dead_letters(directory: str | os.PathLike[str], letters: list[DeadLetter]) -> list[Path]:
    """Keep ``letters`` as Parquet, one durable file per partition named by its offset range.

    The name derives from the offsets, so a batch read again after a crash rewrites its file instead of
    adding a second copy (as the lake does).
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for partition in sorted({d.partition for d in letters}):
        mine = sorted((d for d in letters if d.partition == partition), key=lambda d: d.offset)
        table = pa.table({
            "reason": [d.reason.value for d in mine],
            "detail": [d.detail for d in mine],
            "topic": [d.topic for d in mine],
            "partition": pa.array([d.partition for d in mine], pa.int32()),
            "offset": pa.array([d.offset for d in mine], pa.int64()),
            "key": pa.array([d.key for d in mine], pa.binary()),
            "value": pa.array([d.value for d in mine], pa.binary()),
        })
        path = root / f"dead-p{partition}-{mine[0].offset:020d}-{mine[-1].offset:020d}.parquet"
        with atomic_writer(path) as fh:
            pq.write_table(table, fh)
        written.append(path)
    return written


def dead_letter_files(directory: str | os.PathLike[str]) -> list[tuple[int, int, int, Path]]:
    """``(partition, first offset, last offset, path)`` of every dead-letter file in ``directory``."""
    root = Path(directory)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob("dead-p*.parquet")):
        m = _FILE.match(path.name)
        if m:
            out.append((int(m[1]), int(m[2]), int(m[3]), path))
    return out


class _Writer(Protocol):
    def write(self, values: list[bytes], keys: list[bytes | None] | None = None) -> None: ...
    def flush(self, timeout_s: float = 30.0) -> None: ...
    def close(self) -> None: ...


class DeadLetterSink:
    """Sends dead letters to a Kafka topic (any ``KafkaSink``) and/or Parquet files in ``directory``."""

    def __init__(self, topic_sink: _Writer | None, *, directory: str | os.PathLike[str] | None = None,
                 metrics: Metrics | None = None) -> None:
        if topic_sink is None and directory is None:
            msg = "dead letters need somewhere to go: a topic sink, a directory, or both"
            raise ValueError(msg)
        self.topic_sink = topic_sink
        self.directory = Path(directory) if directory is not None else None
        self.metrics = metrics or Metrics()

    def write(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        for letter in letters:
            self.metrics.inc("dead_letters", reason=letter.reason.value)
        if self.topic_sink is not None:
            self.topic_sink.write([d.to_json() for d in letters], [d.key for d in letters])
        if self.directory is not None:
            self._write_parquet(letters)

    def _write_parquet(self, letters: list[DeadLetter]) -> None:
        assert self.directory is not None
        write_dead_letters(self.directory, letters)

    def flush(self, timeout_s: float = 30.0) -> None:
        if self.topic_sink is not None:
            self.topic_sink.flush(timeout_s)

    def close(self) -> None:
        if self.topic_sink is not None:
            self.topic_sink.close()
