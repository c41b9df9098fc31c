"""The registry's CURRENT pointer: which model version every engine worker scores with.

``<registry>/CURRENT`` is a small JSON document ``{"version", "set_at", "reason", "action"}``, replaced
atomically. The engine's coordinator moves it when it publishes an online-adapted version; an operator (or the
nightly retrain) moves it to promote or roll back. Workers read it between micro-batches and swap.

Every move happens under ``<registry>/_pointer.lock`` (an exclusive ``flock``), and a move may name the version
it expects to replace: the coordinator publishing its online update then cannot overwrite a promotion that
landed a moment before (it gets :class:`PointerMoved` and adopts the promoted version instead). Moves other than
online publishes (promote, rollback, control, import) are appended to ``<registry>/HISTORY.jsonl``, the
promotion history that ``isostream models`` and rollback read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.durable import atomic_write_bytes, fsync_dir

POINTER = "CURRENT"
HISTORY = "HISTORY.jsonl"
LOCK = "_pointer.lock"


class PointerMoved(RuntimeError):
    """CURRENT no longer names the version the caller expected to replace."""


def pointer_path(registry: str | os.PathLike[str]) -> Path:
    return Path(registry) / POINTER


@contextlib.contextmanager
def pointer_lock(registry: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the registry's pointer lock (processes on one host or a shared POSIX file system)."""
    root = Path(registry)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_current(registry: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The pointer document, or None when nothing was published yet (or it is unreadable)."""
    try:
        doc = json.loads(pointer_path(registry).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("version"), str) else None


def set_current(registry: str | os.PathLike[str], version: str, *, reason: str = "", action: str = "online",
                expected: str | None = None, **extra: Any) -> Path:
    """Point the registry at ``version`` (which must be saved under the registry already).

    ``expected``: refuse with :class:`PointerMoved` unless CURRENT names that version now. ``action`` other than
    ``"online"`` appends the move to the history, with ``extra`` (e.g. the gate's metrics).
    """
    root = Path(registry)
    if not (root / version).is_dir():
        msg = f"registry {root}: no version {version!r} to point at"
        raise FileNotFoundError(msg)
    with pointer_lock(root):
        before = read_current(root)
        previous = before["version"] if before else None
        if expected is not None and previous != expected:
            msg = f"registry {root}: CURRENT is {previous!r}, not {expected!r} (moved by someone else)"
            raise PointerMoved(msg)
        now = time.time()
        doc = {"version": version, "set_at": now, "reason": reason, "action": action}
        path = atomic_write_bytes(pointer_path(root), json.dumps(doc).encode())
        if action != "online":
            _append_history(root, {**extra, "version": version, "previous": previous, "at": now,
                                   "action": action, "reason": reason})
    return path


def _append_history(root: Path, entry: dict[str, Any]) -> None:
    path = root / HISTORY
    new = not path.exists()
    with open(path, "ab") as fh:
        fh.write(json.dumps(entry, sort_keys=True, default=str).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    if new:
        fsync_dir(root)


def record(registry: str | os.PathLike[str], action: str, version: str, *, reason: str = "", **extra: Any) -> None:
    """Append a decision that did not move CURRENT (a refused candidate, a shadow start) to the history."""
    root = Path(registry)
    with pointer_lock(root):
        current = read_current(root)
        _append_history(root, {**extra, "version": version, "previous": current["version"] if current else None,
                               "at": time.time(), "action": action, "reason": reason})


def history(registry: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The history entries, oldest first (a torn last line, from a crash mid-append, is skipped)."""
    try:
        lines = (Path(registry) / HISTORY).read_bytes().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            doc = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


SHADOW = "SHADOW"


def set_shadow(registry: str | os.PathLike[str], version: str, *, champion: str | None, events: int, max_s: float,
               offline: dict[str, Any] | None = None) -> Path:
    """Ask the engine to score ``version`` beside the champion on live traffic (its scores reach no alert).

    ``<registry>/SHADOW`` names the candidate, the champion it was compared with offline, and how long to
    shadow it (``events`` live events or ``max_s`` seconds); the engine then applies the gate and clears it.
    """
    root = Path(registry)
    if not (root / version).is_dir():
        msg = f"registry {root}: no version {version!r} to shadow"
        raise FileNotFoundError(msg)
    doc = {"version": version, "champion": champion, "events": int(events), "max_s": float(max_s),
           "since": time.time(), "offline": offline or {}}
    with pointer_lock(root):
        before = read_shadow(root)
        if before is not None and before["version"] != version:  # a newer candidate takes its place
            _append_history(root, {"version": before["version"], "previous": champion, "at": doc["since"],
                                   "action": "superseded", "reason": f"shadow replaced by {version}"})
        path = atomic_write_bytes(root / SHADOW, json.dumps(doc, default=str).encode())
        _append_history(root, {"version": version, "previous": champion, "at": doc["since"], "action": "shadow",
                               "reason": f"shadow-scored for {events} events or {max_s:g} s"})
    return path


def read_shadow(registry: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The shadow request, or None."""
    try:
        doc = json.loads((Path(registry) / SHADOW).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("version"), str) else None


def clear_shadow(registry: str | os.PathLike[str], version: str | None = None) -> bool:
    """Remove the shadow request (only if it names ``version``, when given); True if one was removed."""
    root = Path(registry)
    with pointer_lock(root):
        doc = read_shadow(root)
        if doc is None or (version is not None and doc["version"] != version):
            return False
        (root / SHADOW).unlink(missing_ok=True)
        fsync_dir(root)
    return True
