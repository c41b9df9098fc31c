"""One model across workers: the pipeline's coordinator fits, adapts and publishes versions.

Partition groups score with the registry's current version and send the coordinator a uniform sample of
each scored batch (feature rows and their scores). The coordinator holds the *master* detector: it learns
from the samples of every partition (threshold, drift detector, recent window, tree renewal — what
:meth:`training.detector.Detector.score_batch` does after scoring in a single process) and every
``model.publish_every_s`` saves the master as a new version and moves ``CURRENT``. Every worker swaps
between batches, so all score with one version at any moment but for the one batch in flight, and every
scored event carries the version that scored it; versions stay in the registry, so a replay reproduces its
scores.

Before any version exists, groups send the feature rows of their first batches; the coordinator fits on the
first ``model.fit_on_first`` rows from all partitions (or on what came, once nothing new came for
``model.fit_idle_s``).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ModelConfig
from training.current import PointerMoved, read_current, set_current
from training.detector import Detector

log = logging.getLogger(__name__)


@dataclass
class CoordinatorStatus:
    version: str | None = None
    published: int = 0
    samples: int = 0
    rows_learned: int = 0
    fit_rows: int = 0
    errors: list[str] = field(default_factory=list)


class ModelCoordinator:
    """The master model of one pipeline; :meth:`offer` samples, :meth:`tick` fits and publishes when due.

    >>> import tempfile
    >>> from engine.config import ModelConfig
    >>> coord = ModelCoordinator(ModelConfig(fit_on_first=100, save_dir=tempfile.mkdtemp()), ("x", "y"))
    >>> coord.offer({"X": np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32), "fit": True})
    >>> coord.tick() is not None and read_current(coord.registry)["version"] == coord.status.version
    True
    """

    def __init__(self, cfg: ModelConfig, feature_names: tuple[str, ...], *, registry: Path | None = None,
                 groups: int = 1) -> None:
        self.cfg = cfg
        self.feature_names = tuple(feature_names)
        self.registry = Path(registry if registry is not None else cfg.save_dir)
        self.registry.mkdir(parents=True, exist_ok=True)
        self.master: Detector | None = None
        self.status = CoordinatorStatus()
        #: partition groups of the pipeline: the first fit waits for rows of each (keys differ by partition)
        self.groups = max(int(groups), 1)
        self._fit_rows: dict[str, list[np.ndarray]] = {}
        self._fit_warm: dict[str, list[np.ndarray]] = {}
        self._learned_from: set[str] = set()
        self._adapted_once = False
        self._last_offer = time.monotonic()
        self._last_publish = time.monotonic()
        self._learned_since_publish = False
        self._published_as: str | None = None
        self._load_existing()

    # -- start ------------------------------------------------------------------------------------------------
    def _load_existing(self) -> None:
        """Resume from the registry's current version, or import ``model.path`` as the first one."""
        doc = read_current(self.registry)
        if doc is not None:
            self.master = Detector.load(self.registry / doc["version"])
        elif self.cfg.path is not None:
            loaded = Detector.load(self.cfg.path)
            target = self.registry / loaded.version
            if not target.exists():
                shutil.copytree(self.cfg.path, target)
            set_current(self.registry, loaded.version, reason=f"model.path {self.cfg.path}")
            self.master = loaded
        if self.master is not None:
            if tuple(self.master.feature_names) != self.feature_names:
                msg = (f"model {self.master.version} in {self.registry} has features "
                       f"{list(self.master.feature_names)}, the pipeline makes {list(self.feature_names)}")
                raise ValueError(msg)
            self.status.version = self._published_as = self.master.version

    # -- samples ----------------------------------------------------------------------------------------------
    def offer(self, sample: dict[str, Any]) -> None:
        """Take one sample from a partition group (fit rows before the first model, learning rows after)."""
        self._last_offer = time.monotonic()
        self.status.samples += 1
        X = np.asarray(sample["X"], dtype=np.float64)
        group = str(sample.get("group", ""))
        if self.master is None:
            if len(X):
                warm = sample.get("warm")
                warm = np.ones(len(X), dtype=bool) if warm is None else np.asarray(warm, dtype=bool)
                self._fit_rows.setdefault(group, []).append(X)
                self._fit_warm.setdefault(group, []).append(warm)
            return
        scores = sample.get("scores")
        if scores is None or not len(X):  # fit rows that arrived after the fit: already represented
            return
        self.master.learn(X, np.asarray(scores), sample.get("flagged"))
        self.status.rows_learned += len(X)
        self._learned_since_publish = True
        self._learned_from.add(group)

    def tick(self) -> str | None:
        """Fit or publish if due; returns the version published now, if any."""
        if self.master is None:
            return self._maybe_fit()
        if not self._adapted_once and len(self._learned_from) >= self.groups:
            # the first fit's threshold rests on the scores of its own training rows; once every group has
            # sent scores of events the model never saw, publish at once rather than a publish interval later
            self._adapted_once = True
            return self.publish("first adaptation: the threshold on unseen events of every group")
        if self._learned_since_publish and time.monotonic() - self._last_publish >= self.cfg.publish_every_s:
            return self.publish("online adaptation")
        return None

    def _maybe_fit(self) -> str | None:
        """Fit once ``fit_on_first`` rows of warm keys came from every group (or on what came, once nothing new
        comes).

        Rows of keys still in their warm-up carry no baseline yet (their deviations read 0): the first model is
        fitted on warm rows, and only falls back to every row when too few warm ones came to grow a tree on.
        """
        per_group = {g: sum(int(w.sum()) for w in ws) for g, ws in self._fit_warm.items()}
        rows = sum(per_group.values())
        every = sum(len(x) for xs in self._fit_rows.values() for x in xs)
        idle = time.monotonic() - self._last_offer >= self.cfg.fit_idle_s
        complete = rows >= self.cfg.fit_on_first and len(per_group) >= self.groups
        if not complete and not (idle and every >= 2):
            return None
        enough_warm = rows >= min(self.cfg.fit_on_first, self.cfg.max_samples)
        chosen = {}
        for g, xs in self._fit_rows.items():
            X = np.concatenate(xs)
            chosen[g] = X[np.concatenate(self._fit_warm[g])] if enough_warm else X
        X = _even_share({g: x for g, x in chosen.items() if len(x)}, max(self.cfg.fit_on_first, 2))
        self._fit_rows, self._fit_warm = {}, {}
        m = self.cfg
        log.info("coordinator: fitting the first model on %d rows from %d groups", len(X), len(per_group))
        self.master = Detector.fit(X, self.feature_names, n_trees=m.n_trees, max_samples=min(m.max_samples, len(X)),
                                   contamination=m.contamination, seed=m.seed, fixed_threshold=m.fixed_threshold)
        self.status.fit_rows = len(X)
        return self.publish(f"fitted on the first {len(X)} events of {len(per_group)} partition groups")

    def publish(self, reason: str) -> str:
        """Save the master as a version and point CURRENT at it."""
        assert self.master is not None
        # the threshold may move without a tree renewal, and an adopted old version's lineage may exist
        # already: a published version is never overwritten
        while self.master.version == self._published_as or (self.registry / self.master.version).exists():
            self.master.updates += 1
        version = self.master.version
        self.master.save(self.registry / version)
        try:
            # an operator or the retrain may have promoted another version since we last looked: theirs wins
            set_current(self.registry, version, reason=reason, expected=self._published_as)
        except PointerMoved:
            shutil.rmtree(self.registry / version, ignore_errors=True)
            adopted = self.follow_pointer()
            log.info("coordinator: CURRENT moved to %s before publishing %s; learning on from it", adopted, version)
            return adopted or version
        self._published_as = self.status.version = version
        self.status.published += 1
        self._last_publish = time.monotonic()
        self._learned_since_publish = False
        self._prune(keep=version)
        return version

    def _prune(self, keep: str) -> None:
        """Drop the oldest online-adapted versions beyond ``model.keep_online_versions``."""
        limit = self.cfg.keep_online_versions
        if limit is None:
            return
        online = [p for p in self.registry.iterdir() if p.is_dir() and "+u" in p.name and p.name != keep
                  and not p.name.startswith(".")]
        if len(online) < limit:
            return
        online.sort(key=lambda p: p.stat().st_mtime)
        for old in online[: len(online) - limit + 1]:
            shutil.rmtree(old, ignore_errors=True)

    def follow_pointer(self) -> str | None:
        """Adopt the version CURRENT names if someone else moved it; returns it then."""
        doc = read_current(self.registry)
        if doc is None or doc["version"] == self._published_as:
            return None
        try:
            self.adopt(doc["version"])
        except Exception as err:  # noqa: BLE001 - the workers refuse it too; keep learning on ours
            self.status.errors.append(f"cannot adopt {doc['version']}: {err}")
            self._published_as = doc["version"]  # do not retry every tick
            return None
        return doc["version"]

    def adopt(self, version: str) -> None:
        """An operator moved CURRENT (promote, rollback, control topic): learn on from that version."""
        self.master = Detector.load(self.registry / version)
        self._published_as = self.status.version = version
        self._learned_since_publish = False


def _even_share(rows: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Up to ``n`` rows, the first ones of each group in equal shares (a short group's share goes to the others).

    >>> _even_share({"a": np.zeros((10, 1)), "b": np.ones((2, 1))}, 6).ravel().tolist()
    [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    """
    left = {g: len(x) for g, x in sorted(rows.items())}
    take = dict.fromkeys(left, 0)
    budget = min(n, sum(left.values()))
    while budget > 0:
        open_groups = [g for g in left if left[g] > take[g]]
        share = max(budget // len(open_groups), 1)
        for g in open_groups:
            k = min(share, left[g] - take[g], budget)
            take[g] += k
            budget -= k
            if budget == 0:
                break
    return np.concatenate([rows[g][: take[g]] for g in sorted(rows) if take[g]])
