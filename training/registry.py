"""Model versions on disk without pickle: a directory of arrays, JSON metadata and sha256 checksums.

```
models/v20261124T101500-3fa2c1/
  arrays.npz   the packed forest, threshold histogram, window (np.savez; read with allow_pickle=False)
  meta.json    format, version, parent, feature names, parameters, training data range, metrics, and
               "sha256": {"arrays.npz": <hex of the file>, "meta": <hex of this JSON without "sha256">}
```

A version is written to a hidden sibling directory and renamed into place, so a reader never sees half of
one. Loading verifies both checksums before anything is parsed further: a truncated, edited or swapped file
raises :class:`RegistryError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from streams.durable import atomic_write_bytes, atomic_writer, fsync_dir

ARRAYS = "arrays.npz"
META = "meta.json"
FORMAT = 2


class RegistryError(RuntimeError):
    """A model version is missing, truncated, tampered with or of an unknown format."""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _meta_sha256(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_version(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write one version directory atomically; returns its path. ``meta`` must be JSON-serialisable."""
    final = Path(path)
    for name, arr in arrays.items():
        if np.asarray(arr).dtype.hasobject:
            msg = f"registry: array {name!r} holds Python objects, which would need pickle; store numbers or str"
            raise RegistryError(msg)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # both files (and their names in the hidden directory) are on disk before the directory is renamed
        with atomic_writer(tmp / ARRAYS) as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs as bool
        doc = {**meta, "format": FORMAT}
        try:
            doc["sha256"] = {ARRAYS: _file_sha256(tmp / ARRAYS), "meta": _meta_sha256(doc)}
            text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            msg = f"registry: metadata is not plain JSON ({err})"
            raise RegistryError(msg) from None
        atomic_write_bytes(tmp / META, text.encode())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)  # the rename itself
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_version(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify one version directory; raise :class:`RegistryError` with the reason if it is bad."""
    p = Path(path)
    meta_path, arrays_path = p / META, p / ARRAYS
    if not meta_path.is_file() or not arrays_path.is_file():
        msg = f"registry: {p} is not a model version (it needs {META} and {ARRAYS})"
        raise RegistryError(msg)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = f"registry: {meta_path} is not valid JSON ({err}); the file is damaged or truncated"
        raise RegistryError(msg) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        msg = f"registry: {meta_path} has format {found!r}; this isostream reads format {FORMAT}"
        raise RegistryError(msg)
    sums = meta.get("sha256")
    if not isinstance(sums, dict):
        msg = f"registry: {meta_path} carries no checksums"
        raise RegistryError(msg)
    if _meta_sha256(meta) != sums.get("meta"):
        msg = f"registry: checksum mismatch for {meta_path}: the metadata was edited after it was saved"
        raise RegistryError(msg)
    digest = _file_sha256(arrays_path)
    if digest != sums.get(ARRAYS):
        msg = (f"registry: checksum mismatch for {arrays_path} (expected {sums.get(ARRAYS)}, got {digest}): "
               "the file was modified or truncated")
        raise RegistryError(msg)
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        msg = f"registry: cannot read {arrays_path}: {err}"
        raise RegistryError(msg) from None
    return arrays, meta


def list_versions(root: str | os.PathLike[str]) -> list[Path]:
    """Version directories under ``root`` (those holding a meta.json), oldest first by name."""
    r = Path(root)
    if not r.is_dir():
        return []
    return sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / META).is_file())


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A version's metadata without loading (or verifying) its arrays; :func:`load_version` verifies both."""
    p = Path(path) / META
    try:
        meta = json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = f"registry: cannot read {p} ({type(err).__name__}: {err})"
        raise RegistryError(msg) from None
    if not isinstance(meta, dict):
        msg = f"registry: {p} is not a JSON object"
        raise RegistryError(msg)
    return meta


def summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The fields of a version that ``isostream models`` and ``GET /models`` show."""
    return {
        "version": meta.get("version"),
        "parent": meta.get("parent"),
        "kind": "online" if meta.get("updates") else meta.get("kind", "fit"),
        "saved_at": meta.get("saved_at"),
        "data_dates": meta.get("data_dates", []),
        "params": meta.get("params", {}),
        "metrics": meta.get("metrics", {}),
        "feature_names": meta.get("feature_names", []),
        "n_trees": (meta.get("forest") or {}).get("n_trees"),
        "threshold": (meta.get("threshold") or {}).get("value"),
    }


def summaries(root: str | os.PathLike[str], *, include_online: bool = True) -> list[dict[str, Any]]:
    """:func:`summary` of every version under ``root``, oldest first; unreadable ones say why."""
    out = []
    for d in list_versions(root):
        try:
            s = summary(read_meta(d))
        except RegistryError as err:
            s = {"version": d.name, "error": str(err)}
        if include_online or s.get("kind") != "online":
            out.append(s)
    out.sort(key=lambda s: (s.get("saved_at") or 0.0, str(s.get("version"))))
    return out
