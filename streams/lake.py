"""The Parquet lake: every scored event, one folder per event-time day, a manifest per folder.

Layout::

    root/date=YYYY-MM-DD/part-p{partition}-{first:020d}-{last:020d}.parquet
    root/date=YYYY-MM-DD/_manifest.json   {"date", "tz", "files": [...], "rows", "closed", "updated_at"}
    root/date=YYYY-MM-DD/_manifest.lock   flock'd while a writer edits the manifest

The date is the event time's calendar date in the writer's time zone (``tz``). A file holds the rows of one
Kafka partition for one day, sorted by offset, and is named by its first and last offset. Several processes (one
per group of partitions) write the same day folder, each for its own partitions; they edit the shared manifest
read-modify-write under an exclusive ``flock``. Names starting with ``_`` or ``.`` (manifest, lock, temporary
files) are skipped by pyarrow datasets, so any Parquet reader sees only the data files.

Why no committed row is lost or duplicated, whatever the moment of a crash:

* Every file, the manifest included, appears by :mod:`streams.durable`'s fsync + rename + directory fsync: a
  name on disk always holds a complete file.
* :meth:`LakeWriter.flush` writes a file, then lists it in the manifest; the engine commits the Kafka offsets
  only after ``flush`` returns. So each committed row is in a durable, listed file.
* After a crash, :meth:`LakeWriter.recover` with the committed next offsets deletes the files of rows at or past
  them (the replay writes those rows again), and cuts a file that spans the committed offset back to the rows
  before it. Only offsets at or past the commit are removed: nothing committed goes.
* :meth:`LakeWriter.compact` writes the merged file, swaps it for its inputs in the manifest in one atomic
  write, then deletes the inputs. At every instant the manifest lists each row once; on disk, the only extra
  files are either the merged file (before the swap) or its inputs (after it), and both lie inside the offset
  range of another file of the same partition and day. Otherwise ranges never nest, because a partition
  reaches the writer in offset order and merges take consecutive runs; so ``recover`` deletes every file whose
  range lies inside another's and keeps exactly one copy of each row.

:func:`read_lake` reads the files that the manifests list, so it sees no duplicates even in the moment between a
compaction's two steps (a tool that lists the folder may, until the inputs are deleted).

>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> frame = pd.DataFrame({"event_time": pd.to_datetime(["2026-11-24T23:30:00Z"] * 2), "value": [1.0, 2.0],
...                       "kafka_partition": [0, 0], "kafka_offset": [41, 42]})
>>> writer = LakeWriter(root, time_field="event_time", tz="Europe/Berlin")
>>> writer.add(frame)
>>> [p.relative_to(root).as_posix() for p in writer.flush()]
['date=2026-11-25/part-p0-00000000000000000041-00000000000000000042.parquet']
>>> read_manifest(Path(root) / "date=2026-11-25")["rows"], len(read_lake(root))
(2, 2)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from streams.durable import atomic_write_bytes, atomic_writer, remove_durably

MANIFEST = "_manifest.json"
LOCK = "_manifest.lock"
_PART = re.compile(r"^part-p(\d+)-(\d{20})-(\d{20})\.parquet$")
# temporary files of streams.durable are ".{target name}.{hex}.tmp"
_PART_TMP = re.compile(r"^\.part-p(\d+)-.*\.tmp$")
_MANIFEST_TMP = re.compile(rf"^\.{re.escape(MANIFEST)}\..*\.tmp$")
_EPOCH = dt.date(1970, 1, 1)


class LakeError(RuntimeError):
    """The lake could not be written or read."""


def part_name(partition: int, first: int, last: int) -> str:
    """The file name of the rows of ``partition`` from offset ``first`` to ``last``.

    >>> part_name(3, 10, 19)
    'part-p3-00000000000000000010-00000000000000000019.parquet'
    """
    return f"part-p{partition}-{first:020d}-{last:020d}.parquet"


@dataclass(frozen=True)
class _Entry:
    """One data file as the manifest lists it."""

    name: str
    partition: int
    first_offset: int
    last_offset: int
    rows: int
    bytes: int

    def contains(self, other: _Entry) -> bool:
        return self.first_offset <= other.first_offset and other.last_offset <= self.last_offset


def read_manifest(day_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of one day folder as a dict; :class:`LakeError` if it is missing or unreadable."""
    path = Path(day_dir) / MANIFEST
    doc = _load_manifest(Path(day_dir))
    if doc is None:
        msg = f"lake: {path} does not exist"
        raise LakeError(msg)
    return doc


def _load_manifest(day: Path) -> dict[str, Any] | None:
    path = day / MANIFEST
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        msg = f"lake: cannot read manifest {path}: {err}"
        raise LakeError(msg) from err
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        msg = f"lake: manifest {path} has no 'files' list"
        raise LakeError(msg)
    return doc


def _entry_from_disk(day: Path, name: str) -> _Entry:
    """An entry for a file found on disk but not (or wrongly) in the manifest: counts come from its footer."""
    m = _PART.match(name)
    assert m is not None, name
    path = day / name
    try:
        rows = pq.read_metadata(path).num_rows
        size = path.stat().st_size
    except (OSError, pa.ArrowException) as err:
        msg = f"lake: cannot read the footer of {path}: {err}"
        raise LakeError(msg) from err
    return _Entry(name, int(m[1]), int(m[2]), int(m[3]), rows, size)


def _parts_on_disk(day: Path) -> list[str]:
    return sorted(n for n in os.listdir(day) if _PART.match(n))


def _live_files(day: Path) -> list[Path]:
    """The data files of a day: those its manifest lists, or (a folder without one) every visible Parquet file."""
    doc = _load_manifest(day)
    if doc is None:
        return sorted(p for p in day.glob("*.parquet") if not p.name.startswith(("_", ".")))
    return [day / str(e["name"]) for e in doc["files"]]


def _sorted_unique(table: pa.Table, offset_col: str, unique: bool = True) -> pa.Table:
    """Rows sorted by offset, one per offset (the last added wins: a replay carries the same record)."""
    table = table.sort_by(offset_col)  # a stable sort
    offsets = table[offset_col].to_numpy()
    if unique and len(offsets) > 1:
        keep = np.append(offsets[1:] != offsets[:-1], True)
        if not keep.all():
            table = table.filter(pa.array(keep))
    return table


@contextlib.contextmanager
def _locked(day: Path) -> Iterator[None]:
    """Hold the day's manifest lock (exclusive, across processes) for the block."""
    fd = os.open(day / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class LakeWriter:
    """Buffers scored rows and writes them into the lake, one file per (day, partition) per flush.

    ``tz`` is any IANA time zone name; it decides which day folder an event lands in. ``compact`` merges a
    (day, partition) once it has ``compact_min_files`` files, into files of at most ``compact_target_rows`` rows.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> writer = LakeWriter(root, time_field="event_time", compact_min_files=2)
    >>> for offset in range(3):
    ...     writer.add(pd.DataFrame({"event_time": pd.to_datetime(["2026-11-24T10:00:00Z"]), "value": [1.0],
    ...                              "kafka_partition": [0], "kafka_offset": [offset]}))
    ...     _ = writer.flush()
    >>> len(writer.files()), [p.name for p in writer.compact([0])], len(writer.files())
    (3, ['part-p0-00000000000000000000-00000000000000000002.parquet'], 1)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        time_field: str,
        partition_col: str = "kafka_partition",
        offset_col: str = "kafka_offset",
        tz: str = "UTC",
        compression: str = "zstd",
        compact_min_files: int = 8,
        compact_target_rows: int = 1_000_000,
        unique_offsets: bool = True,
    ) -> None:
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            msg = f"lake: tz {tz!r} is not an IANA time zone name (such as 'UTC' or 'Europe/Berlin')"
            raise LakeError(msg) from None
        if compact_min_files < 2 or compact_target_rows < 1:
            msg = (f"lake: compact_min_files must be >= 2 and compact_target_rows >= 1, "
                   f"got {compact_min_files} and {compact_target_rows}")
            raise LakeError(msg)
        self.root = Path(root)
        self.time_field = time_field
        self.partition_col = partition_col
        self.offset_col = offset_col
        self.tz = tz
        self.compression = compression
        self.compact_min_files = compact_min_files
        self.compact_target_rows = compact_target_rows
        #: one row per offset (events); False for derived tables whose rows share the offset that made them
        self.unique_offsets = unique_offsets
        self._buffer: dict[tuple[str, int], list[pa.Table]] = {}
        self._owned: set[int] = set()  # partitions this writer has added or recovered
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            msg = f"lake: cannot create {self.root}: {err}"
            raise LakeError(msg) from err

    # ---- writing -------------------------------------------------------------------------------------------

    def add(self, frame: pd.DataFrame) -> None:
        """Buffer ``frame``'s rows, split by (event-time day, partition); nothing is written until :meth:`flush`."""
        if frame.empty:
            return
        missing = [c for c in (self.time_field, self.partition_col, self.offset_col) if c not in frame.columns]
        if missing:
            msg = f"lake: frame lacks required columns {missing}"
            raise LakeError(msg)
        times = frame[self.time_field]
        if not isinstance(times.dtype, pd.DatetimeTZDtype):
            msg = f"lake: event time column {self.time_field!r} must hold timezone-aware timestamps, not {times.dtype}"
            raise LakeError(msg)
        if times.isna().any():
            msg = f"lake: event time column {self.time_field!r} has {int(times.isna().sum())} missing values"
            raise LakeError(msg)
        for col in (self.partition_col, self.offset_col):
            if not pd.api.types.is_integer_dtype(frame[col].dtype):
                msg = f"lake: column {col!r} must be integer, not {frame[col].dtype}"
                raise LakeError(msg)
        # the wall-clock time in tz, as days since the epoch: fast for a whole batch, unlike strftime
        local = times.dt.tz_convert(self.tz).dt.tz_localize(None)
        days = local.to_numpy().astype("datetime64[D]").astype(np.int64)
        partitions = frame[self.partition_col].to_numpy().astype(np.int64)
        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as err:
            msg = f"lake: cannot convert the frame to Arrow: {err}"
            raise LakeError(msg) from err
        # one int64 key per (day, partition): np.unique on a 2-column array sorts row views, ~30x slower
        combined = days * (1 << 32) + partitions
        if combined[0] == combined[-1] and (combined == combined[0]).all():  # the usual batch: one group
            groups = [(int(days[0]), int(partitions[0]), np.arange(len(combined)))]
        else:
            keys, inverse, counts = np.unique(combined, return_inverse=True, return_counts=True)
            order = np.argsort(inverse.ravel(), kind="stable")  # rows of each group together, in frame order
            groups = [(int(k >> 32), int(k & 0xFFFFFFFF), rows)
                      for k, rows in zip(keys.tolist(), np.split(order, np.cumsum(counts)[:-1]), strict=True)]
        for day, partition, rows in groups:
            date = (_EPOCH + dt.timedelta(days=day)).isoformat()
            self._buffer.setdefault((date, partition), []).append(table.take(pa.array(rows)))
            self._owned.add(partition)

    @property
    def buffered_rows(self) -> int:
        """Rows added and not yet flushed."""
        return sum(t.num_rows for tables in self._buffer.values() for t in tables)

    def flush(self) -> list[Path]:
        """Write each buffered (day, partition) as one durable file and list it in the day's manifest.

        Returns the files written. If a write fails, raises :class:`LakeError` naming the file and the OS error;
        the groups not yet written stay buffered, so a later ``flush`` writes them (the caller must not commit
        offsets until one succeeds).
        """
        return self.flush_buffer(self._buffer)

    def take_buffer(self) -> dict[tuple[str, int], list[pa.Table]]:
        """Hand over what is buffered (to be written by :meth:`flush_buffer`, e.g. on another thread)."""
        buffer, self._buffer = self._buffer, {}
        return buffer

    def flush_buffer(self, buffer: dict[tuple[str, int], list[pa.Table]]) -> list[Path]:
        """:meth:`flush` for a buffer taken with :meth:`take_buffer`; what fails stays in ``buffer``."""
        written = []
        for key in sorted(buffer):
            date, partition = key
            tables = buffer[key]
            try:
                table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
            except pa.ArrowException as err:
                msg = f"lake: batches for date={date} partition {partition} have clashing columns: {err}"
                raise LakeError(msg) from err
            written.append(self._write_part(self.root / f"date={date}", partition, table))
            del buffer[key]  # only once its file is durable and listed
        return written

    def write(self, frame: pd.DataFrame) -> list[Path]:
        """:meth:`add` then :meth:`flush` (the engine's one-call form)."""
        self.add(frame)
        return self.flush()

    def _write_file(self, day: Path, partition: int, table: pa.Table) -> _Entry:
        """Write ``table`` (rows of one partition) as a durable data file in ``day``; the manifest is not touched."""
        table = _sorted_unique(table, self.offset_col, self.unique_offsets)
        offsets = table[self.offset_col]
        first, last = int(offsets[0].as_py()), int(offsets[-1].as_py())
        path = day / part_name(partition, first, last)
        try:
            day.mkdir(parents=True, exist_ok=True)
            with atomic_writer(path) as fh:
                pq.write_table(table, fh, compression=self.compression)
            size = path.stat().st_size
        except (OSError, pa.ArrowException) as err:
            msg = f"lake: cannot write {path}: {err}"
            raise LakeError(msg) from err
        return _Entry(path.name, partition, first, last, table.num_rows, size)

    def _write_part(self, day: Path, partition: int, table: pa.Table, *, replaces: Iterable[str] = ()) -> Path:
        """Write a data file, then list it in the manifest in place of ``replaces`` (one atomic manifest write)."""
        entry = self._write_file(day, partition, table)
        try:
            with self._manifest(day) as entries:
                for name in replaces:
                    entries.pop(name, None)
                entries[entry.name] = entry
        except OSError as err:
            msg = f"lake: cannot update {day / MANIFEST} with {entry.name} (written, not yet listed): {err}"
            raise LakeError(msg) from err
        return day / entry.name

    @contextlib.contextmanager
    def _manifest(self, day: Path) -> Iterator[dict[str, _Entry]]:
        """Edit a day's manifest entries under its lock; written back (atomically) if the block changed them.

        A folder without a manifest (a lake from before manifests) starts from every data file on disk, so the
        first manifest hides nothing that readers saw before it.
        """
        with _locked(day):
            doc = _load_manifest(day)
            if doc is None:
                entries = {n: _entry_from_disk(day, n) for n in _parts_on_disk(day)}
                closed = False
                carried: dict[str, Any] = {}
            else:
                if doc.get("tz") != self.tz:
                    msg = f"lake: {day} was written with tz {doc.get('tz')!r}; this writer uses {self.tz!r}"
                    raise LakeError(msg)
                entries = {str(e["name"]): _Entry(**e) for e in doc["files"]}
                closed = bool(doc.get("closed", False))
                carried = {k: doc[k] for k in ("closed_at", "rows_at_close") if k in doc}
            before = dict(entries)
            yield entries
            if doc is None or entries != before:
                files = sorted(entries.values(), key=lambda e: (e.partition, e.first_offset, e.last_offset))
                new = {
                    "date": day.name.removeprefix("date="),
                    "tz": self.tz,
                    "files": [asdict(e) for e in files],
                    "rows": sum(e.rows for e in files),
                    "closed": closed,
                    **carried,
                    "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                }
                atomic_write_bytes(day / MANIFEST, json.dumps(new, indent=1).encode() + b"\n")

    # ---- crash recovery ------------------------------------------------------------------------------------

    def recover(self, next_offsets: dict[int, int]) -> list[Path]:
        """Repair this writer's partitions after a crash; call before reading them again. Returns removed files.

        ``next_offsets`` maps each partition to its committed next offset. In every day folder, for those
        partitions only: files of rows at or past the next offset go, a file spanning it is cut back, files lying
        inside another file's offset range (an interrupted compaction) go, as do leftover temporary files; the
        manifest is then made to list exactly the files on disk.
        """
        wanted = {int(p): int(n) for p, n in next_offsets.items()}
        pending = {p for (_, p) in self._buffer} & set(wanted)
        if pending:
            msg = f"lake: recover must run before add: partitions {sorted(pending)} have buffered rows"
            raise LakeError(msg)
        self._owned |= set(wanted)
        removed: list[Path] = []
        for day in self._days():
            try:
                removed += self._recover_day(day, wanted)
            except OSError as err:
                msg = f"lake: cannot recover {day}: {err}"
                raise LakeError(msg) from err
        return removed

    def _recover_day(self, day: Path, wanted: dict[int, int]) -> list[Path]:
        def ours(name: str, pattern: re.Pattern[str]) -> int | None:
            m = pattern.match(name)
            return int(m[1]) if m is not None and int(m[1]) in wanted else None

        listed = _load_manifest(day)
        if (not (listed is not None and any(int(e["partition"]) in wanted for e in listed["files"]))
                and all(ours(n, _PART) is None and ours(n, _PART_TMP) is None for n in os.listdir(day))):
            return []  # nothing of ours here: leave the folder (and its lock) alone
        live: set[str] = set()
        with self._manifest(day) as entries:
            names = sorted(os.listdir(day))
            # under the lock no manifest is being written, so a manifest temp file is a crash's leftover
            drop = {n for n in names if ours(n, _PART_TMP) is not None or _MANIFEST_TMP.match(n)}
            for p, next_offset in wanted.items():
                found = [self._disk_entry(day, n, entries.get(n)) for n in names if ours(n, _PART) == p]
                found.sort(key=lambda e: (e.first_offset, -e.last_offset))
                widest: _Entry | None = None
                for e in found:
                    if e.first_offset >= next_offset:
                        drop.add(e.name)  # written past the commit: the replay writes these rows again
                    elif widest is not None and widest.contains(e):
                        drop.add(e.name)  # input or output of an interrupted compaction: widest has its rows
                    elif e.last_offset >= next_offset:
                        # spans the commit: keep the rows before it, the replay brings the rest
                        widest = e
                        table = pq.read_table(day / e.name)
                        kept = self._write_file(day, p, table.filter(pc.less(table[self.offset_col], next_offset)))
                        drop.add(e.name)
                        live.add(kept.name)
                        entries[kept.name] = kept
                    else:
                        # sorted by (first, -last), a file not inside widest reaches further: the new widest
                        widest = e
                        live.add(e.name)
                        entries[e.name] = e
            for name in [n for n, e in entries.items() if e.partition in wanted and n not in live]:
                del entries[name]  # listed but not (or no longer) on disk
        # deleted only once the manifest no longer lists them
        doomed = [day / n for n in sorted(drop - live)]
        remove_durably(doomed)
        return doomed

    @staticmethod
    def _disk_entry(day: Path, name: str, listed: _Entry | None) -> _Entry:
        """The manifest's entry for a file on disk if it matches the file, else one read from the file."""
        if listed is not None and listed.bytes == (day / name).stat().st_size:
            return listed
        return _entry_from_disk(day, name)

    # ---- compaction ----------------------------------------------------------------------------------------

    def compact(self, partitions: Iterable[int] | None = None) -> list[Path]:
        """Merge the small files of ``partitions`` (default: those this writer added or recovered).

        Returns the merged files. Only a (day, partition) with at least ``compact_min_files`` files is touched;
        its consecutive files (by offset) are merged into files of at most ``compact_target_rows`` rows. A file is
        only rewritten into one at least twice its size, so a row is rewritten at most
        ``log2(compact_target_rows / rows per flush)`` times however often ``compact`` runs.
        """
        wanted = set(self._owned if partitions is None else (int(p) for p in partitions))
        merged: list[Path] = []
        for day in self._days():
            doc = _load_manifest(day)
            if doc is None:
                continue  # recover (or the first flush) gives a folder its manifest
            for p in sorted(wanted):
                entries = sorted((_Entry(**e) for e in doc["files"] if e["partition"] == p),
                                 key=lambda e: (e.first_offset, e.last_offset))
                if len(entries) < self.compact_min_files:
                    continue
                for run in self._plan(entries):
                    merged.append(self._merge(day, p, run))
        return merged

    def _plan(self, entries: list[_Entry]) -> list[list[_Entry]]:
        """Runs of consecutive files to merge: packed up to the target size, each at least double its largest."""
        packs: list[list[_Entry]] = [[]]
        for e in entries:
            if packs[-1] and sum(x.rows for x in packs[-1]) + e.rows > self.compact_target_rows:
                packs.append([])
            packs[-1].append(e)

        def doubling(run: list[_Entry]) -> list[list[_Entry]]:
            if len(run) < 2:
                return []
            big = max(range(len(run)), key=lambda i: run[i].rows)
            if 2 * run[big].rows <= sum(e.rows for e in run):
                return [run]
            return doubling(run[:big]) + doubling(run[big + 1:])  # leave the big file as it is

        return [run for pack in packs for run in doubling(pack)]

    def _merge(self, day: Path, partition: int, run: list[_Entry]) -> Path:
        try:
            tables = [pq.read_table(day / e.name) for e in run]
            table = pa.concat_tables(tables, promote_options="permissive")
        except (OSError, pa.ArrowException) as err:
            msg = f"lake: cannot read {day} partition {partition} for compaction: {err}"
            raise LakeError(msg) from err
        # merged file, then the manifest swap, then the inputs: see the module docstring
        path = self._write_part(day, partition, table, replaces=[e.name for e in run])
        try:
            remove_durably(day / e.name for e in run)
        except OSError as err:
            msg = f"lake: cannot delete the compacted inputs in {day}: {err}"
            raise LakeError(msg) from err
        return path

    # ---- reading -------------------------------------------------------------------------------------------

    def files(self, date: str | dt.date | None = None) -> list[Path]:
        """The data files of the lake (or of one day), as the manifests list them."""
        if date is None:
            days = self._days()
        else:
            day = self.root / f"date={date.isoformat() if isinstance(date, dt.date) else date}"
            days = [day] if day.is_dir() else []
        return [p for day in days for p in _live_files(day)]

    def _days(self) -> list[Path]:
        return sorted(d for d in self.root.glob("date=*") if d.is_dir())


def read_lake(root: str | os.PathLike[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Read the whole lake (or some columns) into one DataFrame; ``date`` comes back as a column."""
    root = Path(root)
    for _ in range(3):
        paths = [str(p) for day in sorted(root.glob("date=*")) if day.is_dir() for p in _live_files(day)]
        if not paths:
            return pd.DataFrame(columns=columns or [])
        try:
            dataset = ds.dataset(paths, format="parquet", partitioning="hive", partition_base_dir=str(root))
            return dataset.to_table(columns=columns).to_pandas()
        except FileNotFoundError:
            continue  # a compaction swapped files after we read the manifest: read it again
        except (OSError, pa.ArrowException) as err:
            msg = f"lake: cannot read {root}: {err}"
            raise LakeError(msg) from err
    msg = f"lake: files under {root} kept disappearing while reading (is a compaction looping?)"
    raise LakeError(msg)


def close_day(root: str | os.PathLike[str], date: str | dt.date) -> bool:
    """Mark a day closed in its manifest: its event time is past (the engine's watermark passed midnight).

    Returns False when the day has no folder or no manifest (nothing was written for it). Rows that still arrive for a closed
    day (late events) are written as ever, and counted in the manifest's ``rows_after_close``, so a retrain can
    say its day changed after it closed.
    """
    day = Path(root) / f"date={date.isoformat() if isinstance(date, dt.date) else date}"
    if not day.is_dir():
        return False
    with _locked(day):
        doc = _load_manifest(day)
        if doc is None:  # a folder from before manifests: the writer makes one on its next edit
            return False
        if doc.get("closed"):
            return True
        doc.update(closed=True, closed_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                   rows_at_close=int(doc.get("rows", 0)))
        atomic_write_bytes(day / MANIFEST, json.dumps(doc, indent=1).encode() + b"\n")
    return True
