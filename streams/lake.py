"""The Parquet lake: every scored event, partitioned by event date (``date=YYYY-MM-DD/``).

File names derive from the Kafka coordinates of the rows they hold (partition, first and last offset), and each
file is written to a temporary name and atomically renamed. A batch replayed after a crash therefore rewrites
the same file instead of adding a duplicate — the basis of the engine's no-duplicates guarantee.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import cast

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


class LakeError(RuntimeError):
    """The lake could not be written or read."""


class LakeWriter:
    """Writes scored micro-batches into ``root/date=YYYY-MM-DD/part-p{partition}-{first}-{last}.parquet``.

    >>> import tempfile
    >>> frame = pd.DataFrame({"event_time": pd.to_datetime(["2026-11-24T10:00:00Z"]), "value": [1.0],
    ...                       "_partition": [0], "_offset": [41]})
    >>> paths = LakeWriter(tempfile.mkdtemp(), time_field="event_time").write(frame)
    >>> paths[0].parent.name, paths[0].name
    ('date=2026-11-24', 'part-p0-00000000000000000041-00000000000000000041.parquet')
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        time_field: str,
        partition_col: str = "_partition",
        offset_col: str = "_offset",
        compression: str = "zstd",
    ) -> None:
        self.root = Path(root)
        self.partition_col = partition_col
        self.offset_col = offset_col
        self.time_field = time_field
        self.compression = compression
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, frame: pd.DataFrame) -> list[Path]:
        """Write ``frame`` (must carry the partition and offset columns); return the files written."""
        if frame.empty:
            return []
        missing = [c for c in (self.time_field, self.partition_col, self.offset_col) if c not in frame.columns]
        if missing:
            msg = f"lake: frame lacks required columns {missing}"
            raise LakeError(msg)
        dates = frame[self.time_field].dt.strftime("%Y-%m-%d")
        written = []
        for key, part in frame.groupby([dates, frame[self.partition_col]], sort=True):
            date, partition = cast(tuple[str, int], key)  # pandas types group keys as Hashable
            offsets = part[self.offset_col]
            name = f"part-p{int(partition)}-{int(offsets.min()):020d}-{int(offsets.max()):020d}.parquet"
            folder = self.root / f"date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / name
            tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
            table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
            try:
                pq.write_table(table, tmp, compression=self.compression)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(final)
        return written


def read_lake(root: str | os.PathLike[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Read the whole lake (or some columns) into one DataFrame; ``date`` comes back as a column."""
    root = Path(root)
    if not root.is_dir() or not any(root.glob("date=*/*.parquet")):
        return pd.DataFrame(columns=columns or [])
    dataset = ds.dataset(root, format="parquet", partitioning="hive", exclude_invalid_files=True)
    return dataset.to_table(columns=columns).to_pandas()
