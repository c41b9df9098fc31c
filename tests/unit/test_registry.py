"""Persistence: no pickle, checksums catch tampering and truncation, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.detector import Detector
from training.online import OnlineSettings
from training.registry import ARRAYS, META, RegistryError, list_versions, load_version, save_version


@pytest.fixture
def saved(tmp_path: Path, seed: int) -> Path:
    X = np.random.default_rng(seed).normal(size=(1000, 3))
    det = Detector.fit(X, ["x", "y", "z"], n_trees=10, seed=seed, builder="numba")
    return det.save(tmp_path / "models" / det.version)


def test_layout_and_metadata(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [ARRAYS, META]
    meta = json.loads((saved / META).read_text())
    assert meta["feature_names"] == ["x", "y", "z"] and meta["version"] == saved.name
    assert meta["params"]["n_trees"] == 10 and meta["training"]["rows"] == 1000
    assert len(meta["training"]["min"]) == 3 and meta["parent"] is None
    assert set(meta["sha256"]) == {ARRAYS, "meta"}
    with np.load(saved / ARRAYS, allow_pickle=False) as npz:
        assert "forest.feature" in npz.files
    assert list_versions(saved.parent) == [saved]


def test_online_update_records_its_parent(tmp_path: Path, seed: int) -> None:
    X = np.random.default_rng(seed).normal(size=(3000, 3))
    det = Detector.fit(X[:1000], ["x", "y", "z"], n_trees=10, seed=seed, online=OnlineSettings(replace_fraction=0.2))
    det.score_batch(X[1000:2000])
    path = det.save(tmp_path / det.version)
    meta = json.loads((path / META).read_text())
    assert meta["version"].startswith(meta["parent"] + "+u") and meta["updates"] == 1


def test_tampered_array_file_fails(saved: Path) -> None:
    data = bytearray((saved / ARRAYS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (saved / ARRAYS).write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="checksum mismatch for .*arrays.npz"):
        Detector.load(saved)


def test_truncated_array_file_fails(saved: Path) -> None:
    data = (saved / ARRAYS).read_bytes()
    (saved / ARRAYS).write_bytes(data[: len(data) // 3])
    with pytest.raises(RegistryError, match="modified or truncated"):
        Detector.load(saved)


def test_edited_metadata_fails(saved: Path) -> None:
    meta = json.loads((saved / META).read_text())
    meta["feature_names"] = ["x", "z", "y"]
    (saved / META).write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="metadata was edited"):
        Detector.load(saved)


def test_truncated_metadata_fails(saved: Path) -> None:
    text = (saved / META).read_text()
    (saved / META).write_text(text[: len(text) // 2])
    with pytest.raises(RegistryError, match="not valid JSON"):
        Detector.load(saved)


def test_missing_files_and_unknown_format(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(RegistryError, match="is not a model version"):
        Detector.load(tmp_path / "nowhere")
    meta = json.loads((saved / META).read_text())
    meta["format"] = 99
    (saved / META).write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="format 99"):
        load_version(saved)


def test_consistent_but_incomplete_version_is_rejected(tmp_path: Path) -> None:
    path = save_version(tmp_path / "v1", {"forest.feature": np.zeros(3, np.int32)}, {"version": "v1"})
    with pytest.raises(RegistryError, match="not a complete detector version"):
        Detector.load(path)


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="pickle"):
        save_version(tmp_path / "v1", {"bad": np.array([{"a": 1}], dtype=object)}, {})


def test_overwrite_is_whole(tmp_path: Path) -> None:
    save_version(tmp_path / "v1", {"a": np.arange(3)}, {"n": 1})
    save_version(tmp_path / "v1", {"b": np.arange(4)}, {"n": 2})
    arrays, meta = load_version(tmp_path / "v1")
    assert list(arrays) == ["b"] and meta["n"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]  # no temporary directory left behind
