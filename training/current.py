"""The registry's CURRENT pointer: which model version every engine worker scores with.

``<registry>/CURRENT`` is a small JSON document ``{"version", "set_at", "reason"}``, replaced atomically.
The engine's coordinator moves it when it publishes an online-adapted version; an operator (or the nightly
retrain) moves it to promote or roll back. Workers read it between micro-batches and swap.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from streams.durable import atomic_write_bytes

POINTER = "CURRENT"


def pointer_path(registry: str | os.PathLike[str]) -> Path:
    return Path(registry) / POINTER


def read_current(registry: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The pointer document, or None when nothing was published yet (or it is unreadable)."""
    try:
        doc = json.loads(pointer_path(registry).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("version"), str) else None


def set_current(registry: str | os.PathLike[str], version: str, *, reason: str = "") -> Path:
    """Point the registry at ``version`` (which must be saved under the registry already)."""
    root = Path(registry)
    if not (root / version).is_dir():
        msg = f"registry {root}: no version {version!r} to point at"
        raise FileNotFoundError(msg)
    doc = {"version": version, "set_at": time.time(), "reason": reason}
    return atomic_write_bytes(pointer_path(root), json.dumps(doc).encode())
