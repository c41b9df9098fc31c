"""The Parquet lake on real files: layout, manifests, crash recovery, compaction, failed writes."""

from __future__ import annotations

import math
import multiprocessing
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.lake import LakeError, LakeWriter, part_name, read_lake, read_manifest

DAY = "2026-11-24"


def _rows(partition: int, offsets: Iterable[int], when: str = f"{DAY}T10:00:00Z") -> pd.DataFrame:
    offs = np.asarray(list(offsets), dtype=np.int64)
    return pd.DataFrame({
        "event_time": pd.Timestamp(when) + pd.to_timedelta(np.arange(len(offs)), unit="s"),
        "value": partition * 1_000_000.0 + offs,
        "kafka_partition": np.full(len(offs), partition, dtype=np.int32),
        "kafka_offset": offs,
    })


def _writer(root: Path, **kw: Any) -> LakeWriter:
    return LakeWriter(root, time_field="event_time", **kw)


def _keys(root: Path) -> list[tuple[int, int]]:
    frame = read_lake(root, columns=["kafka_partition", "kafka_offset"])
    return sorted(zip(frame["kafka_partition"].tolist(), frame["kafka_offset"].tolist(), strict=True))


def _expected(ends: dict[int, int]) -> list[tuple[int, int]]:
    return sorted((p, o) for p, end in ends.items() for o in range(end))


def _check_manifests(root: Path) -> None:
    """Every day's manifest lists exactly the data files on disk, with their true counts."""
    for day in sorted(root.glob("date=*")):
        m = read_manifest(day)
        on_disk = {p.name for p in day.glob("part-*.parquet")}
        assert {e["name"] for e in m["files"]} == on_disk, day
        for e in m["files"]:
            path = day / e["name"]
            offsets = pq.read_table(path, columns=["kafka_offset"])["kafka_offset"].to_numpy()
            assert e["rows"] == len(offsets) == pq.read_metadata(path).num_rows
            assert e["bytes"] == path.stat().st_size
            assert e["name"] == part_name(e["partition"], int(offsets.min()), int(offsets.max()))
            assert (np.diff(offsets) > 0).all(), "rows sorted by offset, one per offset"
        assert m["rows"] == sum(e["rows"] for e in m["files"])
        assert m["date"] == day.name.removeprefix("date=") and m["closed"] is False


# ---- layout and reading --------------------------------------------------------------------------------------


def test_rows_round_trip_with_one_file_per_date_and_partition_per_flush(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.add(_rows(0, range(0, 5)))
    w.add(_rows(1, range(0, 3)))
    w.add(_rows(0, range(5, 8), when=f"{DAY}T23:59:58Z"))  # 23:59:58, 59 and then the next day
    assert w.buffered_rows == 11
    first = w.flush()
    assert w.buffered_rows == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in first) == [
        f"date={DAY}/{part_name(0, 0, 6)}",
        f"date={DAY}/{part_name(1, 0, 2)}",
        f"date=2026-11-25/{part_name(0, 7, 7)}",
    ]
    w.add(_rows(0, range(8, 10)))
    assert [p.name for p in w.flush()] == [part_name(0, 8, 9)]
    back = read_lake(tmp_path)
    assert _keys(tmp_path) == _expected({0: 10, 1: 3})
    assert (back["value"] == back["kafka_partition"] * 1_000_000.0 + back["kafka_offset"]).all()
    assert sorted(back.loc[back["kafka_offset"] == 7, "date"]) == ["2026-11-25"]
    assert len(w.files()) == 4 and len(w.files(DAY)) == 3 and w.files("2030-01-01") == []
    _check_manifests(tmp_path)


@pytest.mark.parametrize(("tz", "day"), [("UTC", DAY), ("Europe/Berlin", "2026-11-25"),
                                         ("America/New_York", DAY)])
def test_date_follows_the_time_zone(tmp_path: Path, tz: str, day: str) -> None:
    w = _writer(tmp_path, tz=tz)
    w.write(_rows(0, [0], when=f"{DAY}T23:30:00Z"))
    assert [p.name for p in tmp_path.iterdir()] == [f"date={day}"]
    assert read_manifest(tmp_path / f"date={day}")["tz"] == tz
    assert read_lake(tmp_path)["date"].tolist() == [day]


def test_manifest_row_counts_equal_rows_on_disk(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    for start in range(0, 60, 20):
        for p in (0, 1, 2):
            w.add(_rows(p, range(start, start + 20 - p)))
        w.flush()
    _check_manifests(tmp_path)
    assert read_manifest(tmp_path / f"date={DAY}")["rows"] == len(read_lake(tmp_path)) == 3 * 60 - 3 * 3


def test_readers_ignore_manifest_lock_and_temp_files(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write(_rows(0, range(4)))
    day = tmp_path / f"date={DAY}"
    (day / f".{part_name(0, 4, 9)}.0123abcd.tmp").write_bytes(b"half a parquet file")
    assert {p.name for p in day.iterdir()} >= {"_manifest.json", "_manifest.lock"}
    raw = ds.dataset(tmp_path, format="parquet", partitioning="hive")
    assert [Path(f).name for f in raw.files] == [part_name(0, 0, 3)]
    assert raw.to_table().num_rows == 4
    assert _keys(tmp_path) == _expected({0: 4})


def test_replayed_batch_overwrites_instead_of_duplicating(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write(_rows(0, range(5)))
    w.write(_rows(0, range(5)))  # the same batch again after a crash before the commit
    w.add(_rows(0, range(5, 10)))
    w.add(_rows(0, range(8, 10)))  # and a re-read inside one buffer
    w.flush()
    assert _keys(tmp_path) == _expected({0: 10})
    assert not list(tmp_path.rglob("*.tmp"))
    _check_manifests(tmp_path)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match=r"\['event_time', 'kafka_offset'\]"):
        _writer(tmp_path).add(_rows(0, range(2)).drop(columns=["kafka_offset", "event_time"]))


def test_bad_event_time_and_time_zone_are_rejected(tmp_path: Path) -> None:
    naive = _rows(0, range(2)).assign(event_time=lambda f: f["event_time"].dt.tz_localize(None))
    with pytest.raises(LakeError, match="event_time.*timezone-aware"):
        _writer(tmp_path).add(naive)
    with pytest.raises(LakeError, match="'Mars/Olympus'"):
        _writer(tmp_path, tz="Mars/Olympus")


def test_empty_lake_reads_empty(tmp_path: Path) -> None:
    assert read_lake(tmp_path / "none").empty
    assert _writer(tmp_path).flush() == []


# ---- failed writes -------------------------------------------------------------------------------------------


def test_failed_flush_keeps_the_buffer_and_a_later_flush_writes_it_once(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.add(_rows(0, range(5)))
    w.add(_rows(0, range(5, 8), when="2026-11-25T10:00:00Z"))
    blocker = tmp_path / f"date={DAY}"
    blocker.write_text("a file where the day folder must go")  # root ignores chmod; this stops anyone
    with pytest.raises(LakeError, match=rf"cannot write .*date={DAY}/part-p0-.*File exists"):
        w.flush()
    assert w.buffered_rows == 8
    blocker.unlink()
    assert len(w.flush()) == 2
    assert w.buffered_rows == 0 and w.flush() == []
    assert _keys(tmp_path) == _expected({0: 8})
    assert not list(tmp_path.rglob("*.tmp"))
    _check_manifests(tmp_path)


# ---- recovery ------------------------------------------------------------------------------------------------


def test_recover_removes_files_past_the_next_offsets_and_keeps_the_rest(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    for start in (0, 10, 20):
        w.write(_rows(0, range(start, start + 10)))
    w.write(_rows(1, range(10)))
    w.write(_rows(1, range(10, 12), when="2026-11-25T01:00:00Z"))
    removed = _writer(tmp_path).recover({0: 20, 1: 10})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == [
        f"date={DAY}/{part_name(0, 20, 29)}", f"date=2026-11-25/{part_name(1, 10, 11)}"]
    assert _keys(tmp_path) == _expected({0: 20, 1: 10})
    assert read_manifest(tmp_path / "date=2026-11-25")["files"] == []
    _check_manifests(tmp_path)
    assert _writer(tmp_path).recover({0: 20, 1: 10}) == []  # idempotent


def test_recover_cuts_back_a_file_that_spans_the_next_offset(tmp_path: Path) -> None:
    w = _writer(tmp_path, compact_min_files=2)
    w.write(_rows(0, range(10)))
    w.write(_rows(0, range(10, 20)))  # flushed, not committed
    assert [p.name for p in w.compact()] == [part_name(0, 0, 19)]
    removed = _writer(tmp_path).recover({0: 15})
    assert [p.name for p in removed] == [part_name(0, 0, 19)]
    assert [p.name for p in _writer(tmp_path).files()] == [part_name(0, 0, 14)]
    assert _keys(tmp_path) == _expected({0: 15})
    _check_manifests(tmp_path)


def _small_files_then_compacted(root: Path) -> tuple[Path, list[Path]]:
    """Four flushed files of partition 0 (offsets 0..19), a copy of the lake as it was, then a compaction."""
    w = _writer(root, compact_min_files=2)
    for start in range(0, 20, 5):
        w.write(_rows(0, range(start, start + 5)))
    w.write(_rows(1, range(3)))
    before = root.parent / "before"
    shutil.copytree(root, before)
    merged = w.compact([0])
    assert [p.name for p in merged] == [part_name(0, 0, 19)]
    return before, merged


def test_recover_repairs_a_compaction_interrupted_before_its_manifest_swap(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    lake, merged = _small_files_then_compacted(root)
    shutil.copy2(merged[0], lake / merged[0].relative_to(root))  # merged file durable, manifest not yet swapped
    assert ds.dataset(lake, format="parquet", partitioning="hive").count_rows() == 43  # a folder listing doubles
    assert _keys(lake) == _expected({0: 20, 1: 3})  # read_lake follows the manifest
    removed = _writer(lake).recover({0: 20})
    assert sorted(p.name for p in removed) == [part_name(0, s, s + 4) for s in range(0, 20, 5)]
    assert _keys(lake) == _expected({0: 20, 1: 3})
    assert ds.dataset(lake, format="parquet", partitioning="hive").count_rows() == 23
    _check_manifests(lake)


def test_recover_repairs_a_compaction_interrupted_before_deleting_its_inputs(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    before, _ = _small_files_then_compacted(root)
    for small in (before / f"date={DAY}").glob("part-p0-*.parquet"):
        shutil.copy2(small, root / f"date={DAY}" / small.name)  # manifest swapped, inputs still there
    assert _keys(root) == _expected({0: 20, 1: 3})
    removed = _writer(root).recover({0: 20, 1: 3})
    assert sorted(p.name for p in removed) == [part_name(0, s, s + 4) for s in range(0, 20, 5)]
    assert ds.dataset(root, format="parquet", partitioning="hive").count_rows() == 23
    _check_manifests(root)


def test_recover_drops_stray_temp_files_and_resyncs_the_manifest(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write(_rows(0, range(10)))
    w.write(_rows(0, range(10, 20)))
    day = tmp_path / f"date={DAY}"
    (day / part_name(0, 10, 19)).unlink()  # listed, gone
    other = tmp_path.parent / f"{tmp_path.name}-other"
    shutil.copy2(_writer(other).write(_rows(0, range(20, 30)))[0], day)  # on disk, unlisted
    stray = [day / f".{part_name(0, 30, 39)}.abc.tmp", day / "._manifest.json.abc.tmp"]
    theirs = day / f".{part_name(1, 0, 9)}.abc.tmp"  # partition 1's writer may be mid-write
    for p in [*stray, theirs]:
        p.write_bytes(b"partial")
    removed = _writer(tmp_path).recover({0: 30})
    assert sorted(removed) == sorted(stray)
    assert theirs.exists()
    assert [e["name"] for e in read_manifest(day)["files"]] == [part_name(0, 0, 9), part_name(0, 20, 29)]
    assert _keys(tmp_path) == [(0, o) for o in [*range(10), *range(20, 30)]]
    theirs.unlink()
    _check_manifests(tmp_path)


def test_recover_touches_only_the_partitions_it_is_given(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write(pd.concat([_rows(0, range(10)), _rows(1, range(10)), _rows(2, range(10))]))
    (tmp_path / f"date={DAY}" / part_name(2, 0, 9)).unlink()
    removed = _writer(tmp_path).recover({0: 0})
    assert [p.name for p in removed] == [part_name(0, 0, 9)]
    names = [e["name"] for e in read_manifest(tmp_path / f"date={DAY}")["files"]]
    assert names == [part_name(1, 0, 9), part_name(2, 0, 9)]  # partition 2 is not ours to re-sync


def test_recover_refuses_partitions_with_buffered_rows(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.add(_rows(3, range(2)))
    with pytest.raises(LakeError, match=r"partitions \[3\]"):
        w.recover({3: 0})
    assert w.recover({4: 0}) == []


# ---- compaction ----------------------------------------------------------------------------------------------


def test_compaction_merges_small_files_without_loss_or_duplicates(tmp_path: Path) -> None:
    w = _writer(tmp_path, compact_min_files=4, compact_target_rows=60)
    for start in range(0, 120, 5):
        for p in (0, 1):
            w.write(_rows(p, range(start, start + 5)))
    w.write(_rows(2, range(5)))
    assert len(w.files()) == 49
    assert w.compact([1]) == [tmp_path / f"date={DAY}" / part_name(1, s, s + 59) for s in (0, 60)]
    merged = w.compact()  # the rest of what this writer wrote; partition 2 has too few files
    assert [p.name for p in merged] == [part_name(0, 0, 59), part_name(0, 60, 119)]
    assert len(w.files()) == 5
    assert _keys(tmp_path) == _expected({0: 120, 1: 120, 2: 5})
    assert w.compact() == []
    _check_manifests(tmp_path)


def test_repeated_compaction_rewrites_each_row_a_bounded_number_of_times(tmp_path: Path) -> None:
    w = _writer(tmp_path, compact_min_files=4, compact_target_rows=100_000)
    flushes, per_flush, rewritten = 128, 4, 0
    for i in range(flushes):
        w.write(_rows(0, range(i * per_flush, (i + 1) * per_flush)))
        rewritten += sum(pq.read_metadata(p).num_rows for p in w.compact())
    total = flushes * per_flush
    assert rewritten <= total * math.log2(flushes)  # compacting everything every time would be ~flushes / 2
    assert len(w.files()) <= 4 + math.log2(flushes) * 2
    assert _keys(tmp_path) == _expected({0: total})
    _check_manifests(tmp_path)


# ---- several processes, one day folder -----------------------------------------------------------------------


def _write_partition(root: str, partition: int) -> int:
    w = _writer(Path(root))
    for start in range(0, 30, 3):
        w.write(_rows(partition, range(start, start + 3)))
    return partition


def test_processes_writing_one_day_share_its_manifest(tmp_path: Path) -> None:
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert sorted(pool.map(_write_partition, [str(tmp_path)] * 3, range(3))) == [0, 1, 2]
    manifest = read_manifest(tmp_path / f"date={DAY}")
    assert len(manifest["files"]) == 30 and manifest["rows"] == 90
    assert _keys(tmp_path) == _expected({0: 30, 1: 30, 2: 30})
    _check_manifests(tmp_path)


# ---- crash anywhere, recover from any committed point --------------------------------------------------------

BASE = pd.Timestamp("2026-11-24T20:00:00Z")
# one step: its kind (adds and flushes weighted up: a crash needs files behind it to be interesting), the
# partition and row count of an add, and for a crash which commit had reached Kafka: the last one seen, all
# that was durable, or a point in between (a fraction per partition)
_KINDS = ["add"] * 6 + ["flush"] * 6 + ["commit", "compact", "crash", "crash_mid_compaction_early",
                                        "crash_mid_compaction_late"]
_ops = st.lists(
    st.tuples(st.sampled_from(_KINDS), st.integers(0, 1), st.integers(1, 6),
              st.sampled_from(["last", "durable", "between"]), st.floats(0, 1), st.floats(0, 1)),
    min_size=12, max_size=40,
)


def _log(partition: int, offsets: range) -> pd.DataFrame:
    """What Kafka holds: the same record at the same offset on every read (event times straddle midnights)."""
    offs = np.arange(offsets.start, offsets.stop, dtype=np.int64)
    seconds = (offs * 7919 + partition * 104_729) % (4 * 3600)
    return pd.DataFrame({
        "event_time": BASE + pd.to_timedelta(seconds, unit="s"),
        "value": partition * 1_000_000.0 + offs,
        "kafka_partition": np.full(len(offs), partition, dtype=np.int32),
        "kafka_offset": offs,
    })


def _crash_mid_compaction(root: Path, writer: LakeWriter, late: bool) -> None:
    """Leave the lake as a crash inside ``compact`` would: merged files beside their inputs."""
    before = root.with_name(root.name + "-before")
    shutil.copytree(root, before)
    merged = writer.compact()
    if late:  # the manifest was swapped, the inputs not yet deleted
        for f in before.rglob("part-*.parquet"):
            if not (root / f.relative_to(before)).exists():
                shutil.copy2(f, root / f.relative_to(before))
        shutil.rmtree(before)
    else:  # the merged files were durable, the manifest not yet swapped
        for f in merged:
            shutil.copy2(f, before / f.relative_to(root))
        shutil.rmtree(root)
        before.rename(root)


def _check_exactly(root: Path, ends: dict[int, int], tz: str) -> None:
    frame = read_lake(root, columns=["kafka_partition", "kafka_offset", "value", "event_time", "date"])
    keys = sorted(zip(frame["kafka_partition"].tolist(), frame["kafka_offset"].tolist(), strict=True))
    assert keys == _expected(ends)
    if len(frame):
        assert (frame["value"] == frame["kafka_partition"] * 1_000_000.0 + frame["kafka_offset"]).all()
        local = frame["event_time"].dt.tz_convert(tz).dt.strftime("%Y-%m-%d")
        assert (local == frame["date"].astype(str)).all()
    raw = ds.dataset(root, format="parquet", partitioning="hive").count_rows()
    assert raw == sum(ends.values()), "after recovery a plain folder listing holds each row once too"
    _check_manifests(root)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_crash_and_recover_never_loses_or_duplicates_a_committed_row(
        ops: list[tuple[str, int, int, str, float, float]]) -> None:
    tz = "Europe/Berlin"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lake"

        def new_writer() -> LakeWriter:
            return _writer(root, tz=tz, compact_min_files=2, compact_target_rows=40)

        writer = new_writer()
        read = {0: 0, 1: 0}  # next offset the consumer reads
        durable = dict(read)  # every row below is in a flushed file
        committed = dict(read)
        for kind, p, n, reached, f0, f1 in ops:
            if kind == "add":
                writer.add(_log(p, range(read[p], read[p] + n)))
                read[p] += n
            elif kind == "flush":
                writer.flush()
                durable = dict(read)
            elif kind == "commit":
                committed = dict(durable)
            elif kind == "compact":
                writer.compact()
            else:
                if kind != "crash":
                    _crash_mid_compaction(root, writer, late=kind.endswith("late"))
                share = {"last": (0.0, 0.0), "durable": (1.0, 1.0), "between": (f0, f1)}[reached]
                nxt = {q: committed[q] + round(f * (durable[q] - committed[q]))
                       for q, f in zip((0, 1), share, strict=True)}
                writer = new_writer()
                writer.recover(nxt)
                _check_exactly(root, nxt, tz)
                read, durable, committed = dict(nxt), dict(nxt), dict(nxt)
        writer.flush()
        _check_exactly(root, {p: n for p, n in read.items() if n}, tz)
