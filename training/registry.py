"""Model versions on disk without pickle: a directory of ``.npz`` arrays, JSON metadata and a checksum.

```
models/v20261124T101500-3fa2c1/
  arrays.npz      the packed forest and the threshold window (np.savez, allow_pickle=False on load)
  meta.json       features, parameters, training data range, metrics, parent version, sha256 of arrays.npz
```
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ARRAYS = "arrays.npz"
META = "meta.json"
FORMAT = 1


class RegistryError(RuntimeError):
    """A model version is missing, truncated, tampered with or of an unknown format."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_version(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write one version directory atomically (a temporary sibling renamed into place)."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for obj in arrays.values():
        if np.asarray(obj).dtype == object:
            msg = "registry: object arrays would need pickle; convert them to str or numbers first"
            raise RegistryError(msg)
    np.savez(tmp / ARRAYS, **arrays)
    doc = {**meta, "format": FORMAT, "sha256": _sha256(tmp / ARRAYS)}
    (tmp / META).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    if final.exists():
        for f in final.iterdir():
            f.unlink()
        final.rmdir()
    os.replace(tmp, final)
    return final


def load_version(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify one version directory; raise :class:`RegistryError` with the reason if it is bad."""
    p = Path(path)
    meta_path, arrays_path = p / META, p / ARRAYS
    if not meta_path.is_file() or not arrays_path.is_file():
        msg = f"registry: {p} is not a model version (needs {META} and {ARRAYS})"
        raise RegistryError(msg)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        msg = f"registry: {meta_path} is not valid JSON ({err}); the file is damaged"
        raise RegistryError(msg) from None
    if meta.get("format") != FORMAT:
        msg = f"registry: {p} has format {meta.get('format')!r}, this isostream reads format {FORMAT}"
        raise RegistryError(msg)
    digest = _sha256(arrays_path)
    if digest != meta.get("sha256"):
        msg = f"registry: checksum mismatch for {arrays_path} (expected {meta.get('sha256')}, got {digest}): " \
              "the file was modified or truncated"
        raise RegistryError(msg)
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        msg = f"registry: cannot read {arrays_path}: {err}"
        raise RegistryError(msg) from None
    return arrays, meta
