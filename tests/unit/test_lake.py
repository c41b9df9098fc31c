from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from streams.lake import LakeError, LakeWriter, read_lake


def _batch(first: int, n: int, day: str = "2026-11-24", partition: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        "event_time": pd.date_range(f"{day}T23:59:00Z", periods=n, freq="10s"),
        "value": range(first, first + n),
        "_partition": partition,
        "_offset": range(first, first + n),
    })


def test_partitions_by_event_date(tmp_path: Path) -> None:
    paths = LakeWriter(tmp_path, time_field="event_time").write(_batch(0, 12))
    assert sorted(p.parent.name for p in paths) == ["date=2026-11-24", "date=2026-11-25"]
    back = read_lake(tmp_path)
    assert sorted(back["_offset"]) == list(range(12))


def test_replayed_batch_does_not_duplicate(tmp_path: Path) -> None:
    w = LakeWriter(tmp_path, time_field="event_time")
    w.write(_batch(0, 5))
    w.write(_batch(0, 5))  # the same batch again after a crash before the commit
    w.write(_batch(5, 5))
    assert sorted(read_lake(tmp_path)["_offset"]) == list(range(10))
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_columns_rejected(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match="_offset"):
        LakeWriter(tmp_path, time_field="event_time").write(_batch(0, 2).drop(columns=["_offset"]))


def test_empty_lake_reads_empty(tmp_path: Path) -> None:
    assert read_lake(tmp_path / "none").empty
