"""Online adaptation: the rows new trees are grown on, and the renewal of the oldest trees after each micro-batch.

After each micro-batch (scored first, with the model as it was), ``replace_fraction`` of the forest's trees —
the oldest ones, round-robin — are regrown with the compiled builder and written over their slots in place, so
scoring never pauses and the forest is renewed every ``1 / replace_fraction`` batches. Each slot has a fixed
source: ``memory_fraction`` of the slots (spread evenly) are grown from the *memory*, a uniform reservoir over
everything learnt since the last drift (Vitter's algorithm R), the others from the *recent window* (the last
``window`` rows: follows drift). The memory trees keep what a batch forest fitted on the whole stream would know,
so a slow trend or a burst cannot take the whole model over; the recent trees follow change. While the stream is
young (``catch_up``), each batch renews at least the share of trees that its rows are of everything learnt, so
trees grown on a small first batch fade as 1/t instead of lasting ``1 / replace_fraction`` batches.

Rows flagged as anomalies (scored above the threshold in force) are not learnt unless ``learn_flagged``: new
trees are grown on traffic judged normal, so anomalies keep isolating quickly. When the drift detector fires on
a batch, both sources restart from the new regime, ``drift_renew_fraction`` of the trees are regrown from it at
once, and ``drift_boost`` times the usual share is renewed for the next ``boost_batches`` batches.

``window_kind="reservoir"`` makes the recent window a reservoir too (every tree then has long memory).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from training.builder import build_forest, grow_in_place
from training.forest import PackedForest


class OnlineError(ValueError):
    """An online-adaptation setting is out of range; the message names it."""


@dataclass(frozen=True)
class OnlineSettings:
    """How the forest follows the stream (see docs/model.md, "Online adaptation")."""

    #: adapt at all; with False the forest stays as fitted (the threshold still tracks the scores)
    enabled: bool = True
    #: recent rows that new trees are grown on
    window: int = 4096
    window_kind: Literal["sliding", "reservoir"] = "sliding"
    #: share of the trees renewed (oldest first) after each micro-batch; fractions carry over
    replace_fraction: float = 0.02
    #: share of the trees grown from the memory (uniform reservoir of ``window`` rows over everything learnt
    #: since the last drift) instead of the recent window
    memory_fraction: float = 0.5
    #: while the stream is young, renew at least the share of trees that the batch is of all rows learnt
    catch_up: bool = True
    #: learn from rows scored above the threshold too (False: they never enter the window or the memory)
    learn_flagged: bool = False
    #: scores of an alert storm (far more alerts than the target rate) do not raise the threshold
    threshold_protect: bool = True
    #: an alert storm lasting this many events is a new regime: treated as drift (sources restart, the
    #: threshold is recalibrated without protection); shorter storms keep alerting
    drift_confirm: int = 4096
    #: on drift: restart the window from the drifted batch, and regrow this share of the trees from it at once
    drift_reset_window: bool = True
    drift_renew_fraction: float = 1.0
    #: renewal speed-up while drift is being followed ...
    drift_boost: float = 10.0
    #: ... for this many micro-batches after the detector fires
    boost_batches: int = 5
    #: the threshold's score histogram half-life, in events
    threshold_half_life: float = 50_000.0
    #: on drift, the old scores keep this share of their weight in the threshold (which is then recalibrated
    #: on the drifted batch as scored by the renewed forest)
    threshold_forget: float = 0.05
    #: drift detector: CUSUM limit (in standard deviations of batch mean scores)
    drift_h: float = 12.0
    #: drift detector: alert-rate check, in binomial standard deviations over the target rate
    drift_alert_z: float = 8.0

    def __post_init__(self) -> None:
        checks = [
            ("window", self.window >= 2, "an integer >= 2"),
            ("window_kind", self.window_kind in ("sliding", "reservoir"), "'sliding' or 'reservoir'"),
            ("replace_fraction", 0.0 <= self.replace_fraction <= 1.0, "in [0, 1]"),
            ("memory_fraction", 0.0 <= self.memory_fraction <= 1.0, "in [0, 1]"),
            ("drift_confirm", self.drift_confirm >= 0, "an integer >= 0"),
            ("drift_renew_fraction", 0.0 <= self.drift_renew_fraction <= 1.0, "in [0, 1]"),
            ("drift_boost", self.drift_boost >= 1.0, ">= 1"),
            ("boost_batches", self.boost_batches >= 0, ">= 0"),
            ("threshold_half_life", self.threshold_half_life > 0, "> 0"),
            ("threshold_forget", 0.0 <= self.threshold_forget <= 1.0, "in [0, 1]"),
            ("drift_h", self.drift_h > 0, "> 0"),
            ("drift_alert_z", self.drift_alert_z > 0, "> 0"),
        ]
        for name, ok, want in checks:
            if not ok:
                msg = f"OnlineSettings.{name} must be {want}, got {getattr(self, name)!r}"
                raise OnlineError(msg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecentWindow:
    """The rows new trees are grown on: a sliding ring buffer or a uniform reservoir (order is irrelevant)."""

    def __init__(self, capacity: int, n_features: int, kind: str = "sliding", seed: int = 0) -> None:
        self.rows = np.zeros((capacity, n_features), dtype=np.float32)
        self.kind = kind
        self.filled = 0
        self.seen = 0
        self._pos = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.filled

    def add(self, X: np.ndarray) -> None:
        """Add finite float32 rows (callers drop rows with NaN/inf first)."""
        n, cap = len(X), len(self.rows)
        if n == 0:
            return
        if self.kind == "sliding":
            X = X[-cap:]
            m = len(X)
            end = self._pos + m
            if end <= cap:
                self.rows[self._pos:end] = X
            else:
                cut = cap - self._pos
                self.rows[self._pos:] = X[:cut]
                self.rows[: m - cut] = X[cut:]
            self._pos = end % cap
            self.filled = min(cap, self.filled + m)
        else:
            free = min(cap - self.filled, n)  # fill first, then algorithm R over the rest
            self.rows[self.filled:self.filled + free] = X[:free]
            self.filled += free
            rest = X[free:]
            if len(rest):
                seen_before = self.seen + free + np.arange(1, len(rest) + 1)
                j = (self._rng.random(len(rest)) * seen_before).astype(np.int64)  # uniform in [0, seen)
                keep = j < cap
                # duplicate targets: numpy keeps the last assignment, i.e. the later row, as algorithm R
                self.rows[j[keep]] = rest[keep]
        self.seen += n

    def data(self) -> np.ndarray:
        return self.rows[: self.filled]

    def rng_state(self) -> dict[str, Any]:
        """The sampler's state (JSON-able), so that a saved reservoir continues with the same draws."""
        return dict(self._rng.bit_generator.state)

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state

    def clear(self) -> None:
        """Forget the rows and their count (after drift: a reservoir then samples the new regime uniformly)."""
        self.filled = 0
        self._pos = 0
        self.seen = 0


def memory_slots(n_trees: int, fraction: float) -> np.ndarray:
    """Boolean mask of the slots grown from the memory: ``floor(n_trees * fraction)`` of them, spread evenly.

    Spread rather than in one block so that every round-robin renewal regrows both kinds in proportion.

    >>> memory_slots(6, 0.5).astype(int).tolist()
    [0, 1, 0, 1, 0, 1]
    """
    t = np.arange(n_trees)
    return np.floor((t + 1) * fraction + 1e-9) > np.floor(t * fraction + 1e-9)


class TreeRenewal:
    """Which trees to renew after a batch, and growing them (oldest first, with drift boost and catch-up)."""

    def __init__(self, settings: OnlineSettings, n_trees: int, seed: int) -> None:
        self.settings = settings
        self.n_trees = n_trees
        self.seed = seed
        self.from_memory = memory_slots(n_trees, settings.memory_fraction)
        self.next_tree = 0  # round-robin pointer: trees at and after it are the oldest
        self.due = 0.0  # fractional trees carried to the next batch
        self.boost_left = 0
        self.pending = 0  # trees to regrow at once because of drift
        self.grown = 0  # trees grown so far (seeds the builder)

    def drifted(self) -> None:
        self.boost_left = self.settings.boost_batches
        self.pending = int(np.ceil(self.settings.drift_renew_fraction * self.n_trees))

    def renew(self, forest: PackedForest, window: RecentWindow, memory: RecentWindow | None = None,
              learnt: int = 0) -> np.ndarray:
        """Grow this batch's share of trees and overwrite the oldest ones; returns their slots.

        ``learnt`` rows of this batch entered the sources; with ``catch_up`` the share renewed is at least
        ``learnt / memory.seen``. Memory slots are grown from ``memory`` (from ``window`` while the memory holds
        fewer than psi rows, or when there is none).
        """
        s = self.settings
        boost = s.drift_boost if self.boost_left > 0 else 1.0
        self.boost_left = max(0, self.boost_left - 1)
        share = s.replace_fraction * boost
        pool = memory if memory is not None else window
        if s.catch_up and learnt and pool.seen:
            # the trees' ages then follow the data: those grown on the first n rows are ~n / seen of the forest
            share = max(share, learnt / pool.seen)
        self.due += share * self.n_trees
        k = min(max(int(self.due), self.pending), self.n_trees)
        if k == 0 or len(window) < forest.max_samples:  # too few rows for a psi-sample tree yet
            self.due = min(self.due, float(self.n_trees))
            return np.zeros(0, dtype=np.int64)
        self.due = max(self.due - k, 0.0)
        self.pending = 0
        slots = (self.next_tree + np.arange(k)) % self.n_trees
        use_memory = memory is not None and len(memory) >= forest.max_samples
        mem = self.from_memory[slots] if use_memory else np.zeros(k, dtype=bool)
        for part, source, offset in ((slots[mem], memory, 0), (slots[~mem], window, 1)):
            if len(part):
                assert source is not None
                # distinct seeds per source: both parts of one renewal must not draw the same rows
                self._grow(forest, source.data(), part, self.seed * 1_000_003 + 2 * self.grown + offset)
        self.next_tree = int((self.next_tree + k) % self.n_trees)
        self.grown += k
        return slots

    @staticmethod
    def _grow(forest: PackedForest, rows: np.ndarray, slots: np.ndarray, seed: int) -> None:
        if forest.slot == 2 * forest.max_samples - 1:  # grow straight into the slots
            grow_in_place(forest, rows, slots, seed)
        else:
            forest.overwrite_trees(slots, build_forest(rows, n_trees=len(slots), max_samples=forest.max_samples,
                                                       seed=seed))

    def state(self) -> dict[str, Any]:
        return {"next_tree": self.next_tree, "due": self.due, "boost_left": self.boost_left, "grown": self.grown,
                "pending": self.pending}

    def restore(self, state: dict[str, Any]) -> None:
        self.next_tree = int(state["next_tree"]) % max(self.n_trees, 1)
        self.due = float(state["due"])
        self.boost_left = int(state["boost_left"])
        self.grown = int(state["grown"])
        self.pending = int(state.get("pending", 0))
