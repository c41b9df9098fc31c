"""Writes that survive a crash: the one place isostream makes a file durable.

A file is durable only once three things have reached the disk: its bytes, its name in the directory and, for a
rename, the directory entry that the rename changed. ``os.replace`` alone is atomic for readers but not durable:
after a power cut the directory may still hold the old name (or none), so a writer that commits Kafka offsets
after a bare rename can lose the rows it thought were safe. Every helper here therefore writes to a unique
temporary name in the same directory, fsyncs the file, renames it over the target and fsyncs the directory.

Temporary names start with ``.`` and end with ``.tmp``: pyarrow datasets skip names starting with ``.`` or ``_``,
and a crash-recovery pass can find and delete leftovers by the suffix.

>>> import tempfile
>>> target = Path(tempfile.mkdtemp()) / "hello.txt"
>>> atomic_write_bytes(target, b"hi").read_bytes()
b'hi'
>>> with atomic_writer(target) as fh:
...     _ = fh.write(b"bye")
>>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
(b'bye', ['hello.txt'])
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

#: suffix of every temporary file written here (recovery deletes leftovers by it)
TMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    """The unique hidden temporary sibling that a write of ``path`` goes through.

    The target's name is kept inside it (``.NAME.<hex>.tmp``) so a recovery pass can tell whose leftover a
    temporary file is; the random part lets concurrent writers of the same target not collide.
    """
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush directory ``path``'s entries (names created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` durably when the block ends without an exception.

    For writers that want a handle (``pyarrow.parquet.write_table``, ``numpy.savez``). Readers see either the
    old file or the complete new one, never a part; if the block raises, the target is untouched and the
    temporary file is removed.
    """
    final = Path(path)
    tmp = temp_name(final)
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        # the rename is only on disk once the directory is
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Durably replace ``path`` with ``data`` (see :func:`atomic_writer`); return the path."""
    with atomic_writer(path) as fh:
        fh.write(data)
    return Path(path)


def remove_durably(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Unlink every path (missing ones are fine), then fsync each parent directory once.

    Without the directory fsync a deleted file can reappear after a power cut, next to the file that
    replaced it: for the lake that is a duplicated row.
    """
    parents: dict[Path, None] = {}  # ordered set
    for p in paths:
        path = Path(p)
        path.unlink(missing_ok=True)
        parents[path.parent] = None
    for parent in parents:
        if parent.is_dir():
            fsync_dir(parent)
