"""The model a partition group scores with, swapped between micro-batches when the registry pointer moves."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from training.current import SHADOW, pointer_path, read_current, read_shadow
from training.detector import Detector
from training.forest import ForestError
from training.registry import RegistryError

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model version was refused (incompatible features, damaged or tampered files)."""


class ModelHolder:
    """Holds the current :class:`Detector`; :meth:`refresh` follows ``<registry>/CURRENT``.

    A version that fails its checksums or whose feature names differ from the pipeline's is refused with a
    clear error (kept in :attr:`last_error`, counted in :attr:`refused`) and the old model stays in use.
    """

    def __init__(self, registry: str | os.PathLike[str], feature_names: tuple[str, ...], *,
                 backend: str = "cpu") -> None:
        self.registry = Path(registry)
        self.feature_names = tuple(feature_names)
        self.backend = backend
        self.current: Detector | None = None
        self.refused = 0
        self.swaps = 0
        self.last_error: str | None = None
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of the pointer last read
        self._refused_version: str | None = None
        #: a candidate scored beside the current model (its scores reach no output), while SHADOW names it
        self.shadow: Detector | None = None
        self._shadow_seen: tuple[int, int, int] | None = None

    @property
    def version(self) -> str | None:
        return self.current.version if self.current is not None else None

    def swap(self, detector: Detector) -> None:
        """Use ``detector`` from the next batch on; refuses one whose features differ."""
        if tuple(detector.feature_names) != self.feature_names:
            msg = (f"model {detector.version}: features {list(detector.feature_names)} differ from the "
                   f"pipeline's {list(self.feature_names)}; keeping {self.version}")
            raise ModelError(msg)
        # "cpu" keeps small batches on the calling thread: the cores are shared with the consumer and Kafka
        detector.use_backend("cupy" if self.backend == "gpu" else "cpu")
        self.current = detector
        self.swaps += 1

    def refresh(self) -> bool:
        """Swap to the pointer's version if it moved; True when the model changed. Never raises for a bad one.

        Also follows ``<registry>/SHADOW``: the candidate it names is loaded (or dropped when it goes).
        """
        self._refresh_shadow()
        try:
            st = pointer_path(self.registry).stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return False
        self._seen = stamp
        doc = read_current(self.registry)
        if doc is None or doc["version"] == self.version or doc["version"] == self._refused_version:
            return False
        version = doc["version"]
        try:
            self.swap(Detector.load(self.registry / version))
        except (RegistryError, ForestError, ModelError, OSError) as err:
            self.refused += 1
            self._refused_version = version
            self.last_error = f"model {version} refused: {err}"
            log.error("%s (still scoring with %s)", self.last_error, self.version)
            return False
        log.info("swapped to model %s", version)
        return True

    def _refresh_shadow(self) -> None:
        try:
            st = (self.registry / SHADOW).stat()
        except FileNotFoundError:
            self.shadow, self._shadow_seen = None, None
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._shadow_seen:
            return
        self._shadow_seen = stamp
        doc = read_shadow(self.registry)
        if doc is None:
            self.shadow = None
            return
        try:
            det = Detector.load(self.registry / doc["version"])
            if tuple(det.feature_names) != self.feature_names:
                msg = f"features {list(det.feature_names)} differ from the pipeline's {list(self.feature_names)}"
                raise ModelError(msg)
        except (RegistryError, ForestError, ModelError, OSError) as err:
            self.shadow = None
            self.last_error = f"shadow model {doc['version']} refused: {err}"
            log.error("%s", self.last_error)
            return
        det.use_backend("cpu")
        self.shadow = det
        log.info("shadow-scoring %s beside %s", det.version, self.version)
