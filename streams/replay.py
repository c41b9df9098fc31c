"""Replay a file (CSV, Parquet, JSON lines) or the generator into a Kafka topic at a given rate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from streams.generator import GeneratorSettings, StationAlarmGenerator, to_json_lines
from streams.kafka_sink import KafkaSink


class ReplayError(ValueError):
    """The replay input cannot be read."""


def read_events(path: str | Path) -> pd.DataFrame:
    """Read a CSV, Parquet or JSON-lines file of events into a DataFrame (pyarrow readers)."""
    p = Path(path)
    if not p.is_file():
        msg = f"replay: no such file {p}"
        raise ReplayError(msg)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pq.read_table(p).to_pandas()
    if suffix == ".csv":
        return pacsv.read_csv(p).to_pandas()
    if suffix in (".json", ".jsonl", ".ndjson"):
        return pajson.read_json(p).to_pandas()
    msg = f"replay: unsupported file type {suffix!r} for {p} (use .csv, .parquet or .jsonl)"
    raise ReplayError(msg)


def frame_chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def generated_chunks(total: int, size: int, settings: GeneratorSettings | None = None) -> Iterator[pd.DataFrame]:
    gen = StationAlarmGenerator(settings)
    left = total
    while left > 0:
        n = min(size, left)
        left -= n
        yield gen.next_chunk(n)


def replay(
    chunks: Iterator[pd.DataFrame],
    sink: KafkaSink,
    *,
    rate: float | None = None,
    key_field: str | None = None,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Produce every row of ``chunks`` as one JSON message; ``rate`` in events/s (None = as fast as possible).

    Returns the number of events produced; the sink is flushed, so a delivery failure raises.
    """
    sent = 0
    started = time.monotonic()
    for chunk in chunks:
        if should_stop is not None and should_stop():
            break
        values = to_json_lines(chunk)
        keys = [str(k).encode() for k in chunk[key_field].tolist()] if key_field else None
        sink.write(values, keys)
        sent += len(values)
        if progress is not None:
            progress(len(values))
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    sink.flush()
    return sent
