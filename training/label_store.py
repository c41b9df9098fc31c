"""The label store: labels kept as durable Parquet files, the latest label of an event wins.

Labels come in normalised by :func:`training.labels.parse_labels`; :mod:`training.label_metrics` reads them back
to join them with the lake.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from streams.durable import atomic_writer, remove_durably
from streams.timestamps import TS_TYPE
from training.labels import (
    KEY_COLUMNS,
    LABEL_SCHEMA,
    OFFSET_COLUMNS,
    REJECT_SCHEMA,
    LabelError,
    concat_rejects,
    table_to_frame,
)

#: what the store adds to each row: a number that orders every label ever added (later wins), and the wall time
STORED_SCHEMA = LABEL_SCHEMA.append(pa.field("seq", pa.int64())).append(pa.field("received_at", TS_TYPE))


_seq_lock = threading.Lock()
_last_seq = 0


def _next_seq(n: int) -> int:
    """The first of ``n`` increasing numbers, later than any handed out before in this process (~ns since epoch)."""
    global _last_seq
    with _seq_lock:
        first = max(time.time_ns(), _last_seq + 1)
        _last_seq = first + max(n, 1) - 1
        return first


class LabelStore:
    """Labels kept as durable Parquet files under ``root``; the latest label of an event wins.

    Each :meth:`add` writes one ``labels-<seq>-<id>.parquet`` file (fsync'd, renamed, directory fsync'd) and
    stamps its rows with increasing ``seq`` numbers. Once ``compact_min_files`` files exist they are merged into
    one (latest label per event only), the merged file first and the inputs deleted after, so a crash in
    between leaves duplicates that :meth:`read` resolves the same way. Rejected rows go to ``rejects/``.

    >>> import tempfile
    >>> from training.labels import parse_labels
    >>> store = LabelStore(tempfile.mkdtemp())
    >>> first = parse_labels(pd.DataFrame({"partition": [0, 0], "offset": [1, 2], "label": [0, 1]})).labels
    >>> later = parse_labels(pd.DataFrame({"partition": [0], "offset": [1], "label": [1]})).labels
    >>> store.add(first), store.add(later), store.count_rows()
    (2, 1, 3)
    >>> store.read()[["offset", "label"]].values.tolist()
    [[2, 1], [1, 1]]
    """

    def __init__(self, root: str | os.PathLike[str], *, compact_min_files: int = 64) -> None:
        if compact_min_files < 2:
            msg = f"labels: compact_min_files must be >= 2, got {compact_min_files}"
            raise LabelError(msg)
        self.root = Path(root)
        self.compact_min_files = compact_min_files
        try:
            (self.root / "rejects").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            msg = f"labels: cannot create the label store {self.root}: {err}"
            raise LabelError(msg) from err

    def files(self) -> list[Path]:
        """The label files, oldest first."""
        return sorted(self.root.glob("labels-*.parquet"))

    def add(self, labels: pd.DataFrame) -> int:
        """Append normalised labels (:func:`parse_labels` output) durably; returns the rows written."""
        missing = [c for c in LABEL_SCHEMA.names if c not in labels.columns]
        if missing:
            msg = f"labels: LabelStore.add needs the columns {LABEL_SCHEMA.names}; missing {missing}"
            raise LabelError(msg)
        if labels.empty:
            return 0
        n = len(labels)
        first = _next_seq(n)
        frame = labels[LABEL_SCHEMA.names].reset_index(drop=True).copy()
        frame["seq"] = np.arange(first, first + n, dtype=np.int64)
        frame["received_at"] = pd.Timestamp(first // 1000, unit="us", tz="UTC")
        try:
            table = pa.Table.from_pandas(frame, schema=STORED_SCHEMA, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as err:
            msg = f"labels: cannot store the labels (use parse_labels first): {err}"
            raise LabelError(msg) from err
        self._write(self.root / f"labels-{first:020d}-{uuid.uuid4().hex[:8]}.parquet", table)
        if len(self.files()) >= self.compact_min_files:
            self.compact()
        return n

    def add_rejects(self, rejects: pd.DataFrame) -> int:
        """Keep rejected rows (:data:`REJECT_SCHEMA` columns) in ``rejects/``; returns the rows written."""
        if rejects.empty:
            return 0
        table = pa.Table.from_pandas(rejects[REJECT_SCHEMA.names].astype(str), schema=REJECT_SCHEMA,
                                     preserve_index=False)
        self._write(self.root / "rejects" / f"rejects-{_next_seq(1):020d}-{uuid.uuid4().hex[:8]}.parquet", table)
        return len(rejects)

    def read_rejects(self) -> pd.DataFrame:
        """Every rejected row kept so far."""
        files = sorted((self.root / "rejects").glob("rejects-*.parquet"))
        return concat_rejects([pq.read_table(f).to_pandas() for f in files])

    def count_rows(self) -> int:
        """Rows in the label files, superseded labels included (from the footers)."""
        return sum(pq.read_metadata(f).num_rows for f in self.files())

    def read(self) -> pd.DataFrame:
        """The latest label of every event (by ``seq``), oldest first; :data:`STORED_SCHEMA` columns."""
        table = self._read_all()
        return _latest(table_to_frame(table)) if table.num_rows else table_to_frame(STORED_SCHEMA.empty_table())

    def compact(self) -> bool:
        """Merge every label file into one holding the latest label per event; False if another process is."""
        lock = os.open(self.root / "_store.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            files = self.files()
            if len(files) < 2:
                return False
            tables = [pq.read_table(f) for f in files]
            merged = _latest(table_to_frame(pa.concat_tables(tables)))
            table = pa.Table.from_pandas(merged, schema=STORED_SCHEMA, preserve_index=False)
            first = int(merged["seq"].min())
            self._write(self.root / f"labels-{first:020d}-{uuid.uuid4().hex[:8]}.parquet", table)
            remove_durably(files)  # only once the merged file is durable: see the class docstring
            return True
        except (OSError, pa.ArrowException) as err:
            msg = f"labels: cannot compact {self.root}: {err}"
            raise LabelError(msg) from err
        finally:
            os.close(lock)

    def _write(self, path: Path, table: pa.Table) -> None:
        try:
            with atomic_writer(path) as fh:
                pq.write_table(table, fh, compression="zstd")
        except (OSError, pa.ArrowException) as err:
            msg = f"labels: cannot write {path}: {err}"
            raise LabelError(msg) from err

    def _read_all(self) -> pa.Table:
        for _ in range(5):
            try:
                tables = [pq.read_table(f, schema=STORED_SCHEMA) for f in self.files()]
            except FileNotFoundError:
                continue  # a compaction replaced the files while we listed them: list again
            except (OSError, pa.ArrowException) as err:
                msg = f"labels: cannot read the label store {self.root}: {err}"
                raise LabelError(msg) from err
            return pa.concat_tables(tables) if tables else STORED_SCHEMA.empty_table()
        msg = f"labels: files under {self.root} kept disappearing while reading"
        raise LabelError(msg)


def _latest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per event (Kafka coordinates, or key + time): the one with the highest ``seq``."""
    frame = frame.sort_values("seq", kind="stable")
    by_offset = frame["partition"].notna()
    parts = [frame[by_offset].drop_duplicates(list(OFFSET_COLUMNS), keep="last"),
             frame[~by_offset].drop_duplicates(list(KEY_COLUMNS), keep="last")]
    return pd.concat(parts).sort_values("seq", kind="stable").reset_index(drop=True)

