"""The model registry as the Models page shows it: read again only when its files change, once per process.

``engine.models_cmd.list_models`` (what ``isostream models list --json`` and ``GET /models`` print) reads
every version's metadata; here it runs on the broadcaster's thread, at most every couple of seconds, and only
when ``CURRENT``, ``HISTORY.jsonl``, ``SHADOW``, the registry folder or the label metrics changed.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from engine.config import Config

log = logging.getLogger(__name__)


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime, st.st_size


class ModelsWatch:
    """The latest ``list_models`` document of ``cfg``'s registry, with a sequence number that moves on change."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.registry = Path(cfg.registry)
        self._lock = threading.Lock()
        self._signature: tuple[Any, ...] | None = None
        self._doc: dict[str, Any] | None = None
        self.seq = 0
        self.error: str | None = None

    def _files(self) -> tuple[Any, ...]:
        root = self.registry
        labels = Path(self.cfg.labels_path) / "metrics.json"
        return tuple(_stamp(p) for p in (root, root / "CURRENT", root / "HISTORY.jsonl", root / "SHADOW", labels))

    def poll(self) -> bool:
        """Re-read the registry if its files changed; True when the document changed."""
        from engine.models_cmd import list_models

        signature = self._files()
        if signature == self._signature:
            return False
        try:
            doc = list_models(self.cfg) if self.registry.is_dir() else None
            error = None
        except Exception as exc:  # noqa: BLE001 - a half-written registry must not stop the page
            doc, error = self._doc, f"{type(exc).__name__}: {exc}"
            log.warning("dashboard: reading the registry %s failed: %s", self.registry, error)
        with self._lock:
            self._signature, self._doc, self.error = signature, doc, error
            self.seq += 1
        return True

    def document(self) -> tuple[int, dict[str, Any] | None, str | None]:
        """``(seq, the list_models document or None when there is no registry yet, the last read error)``."""
        with self._lock:
            return self.seq, self._doc, self.error
