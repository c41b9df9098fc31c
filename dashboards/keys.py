"""Per-key views of the stream, bounded: each key's recent readings and scores, and its event-time windows.

Memory is ``max_keys`` × (``points`` readings + ``windows`` window rows), whatever the number of keys the
stream carries: the least recently seen key is forgotten first. A window row is the numbers the Keys page draws,
in a float array (about 100 bytes), not the decoded record: a ``stats`` window record decodes to about 2 KB of
Python objects, which for the demo's 160 keys filled to 37 MB over two hours of 60 s windows. Frames for a key are built at most once per
new data (cached on the key, shared by every viewer of it), with the baseline band computed there.

The band is the dashboard's own robust baseline, the engine's definition (median ± ``band_k`` × 1.4826 × MAD
over the key's previous ``baseline_events`` readings) recomputed from the readings the ``scores`` records
carry; unlike the engine's, it does not hold outliers out of the baseline.

>>> store = KeyStore(("value",), points=4, baseline_events=3)
>>> store.add_points(np.array(["a", "a", "b"], dtype=object), np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.9, 0.2]),
...                  np.array([False, True, False]), {"value": np.array([10.0, 50.0, 7.0])})
>>> store.series("a")[["score", "is_anomaly", "value"]].to_dict("list")
{'score': [0.1, 0.9], 'is_anomaly': [False, True], 'value': [10.0, 50.0]}
>>> [k for k, _, _ in store.keys()]  # busiest alerting keys first
['a', 'b']
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: the numbers kept of a window record, before the per-value-field ``<f>_mean``, ``<f>_min``, ``<f>_max``
KEPT_WINDOW_COLUMNS = ("window_start_ms", "window_end_ms", "count", "anomalies", "alarms", "revision")
WINDOW_STATS = ("mean", "min", "max")
MAD_SCALE = 1.4826  # MAD of a normal distribution, as a standard deviation


class _Key:
    """One key's rings; ``n`` counts every point ever added (a viewer's cursor)."""

    __slots__ = ("n", "alerts", "t", "score", "flagged", "values", "wins", "win_version", "_frame")

    def __init__(self, points: int, n_values: int) -> None:
        self.n = 0
        self.alerts = 0
        self.t = np.full(points, np.nan)
        self.score = np.full(points, np.nan)
        self.flagged = np.zeros(points, dtype=bool)
        self.values = np.full((points, n_values), np.nan)
        self.wins: np.ndarray | None = None  # (windows, columns) rows, NaN start = free; made at the first window
        self.win_version = 0  # windows ever added or revised (a viewer redraws when it changes)
        self._frame: tuple[int, pd.DataFrame] | None = None


class KeyStore:
    """Readings, scores and windows per key; not thread-safe (the live state holds its lock)."""

    def __init__(self, value_fields: Sequence[str], *, max_keys: int = 2_000, points: int = 600, windows: int = 120,
                 baseline_events: int = 32, band_k: float = 3.0) -> None:
        if max_keys <= 0 or points <= 0 or windows <= 0 or baseline_events <= 0:
            msg = (f"KeyStore: max_keys, points, windows and baseline_events must be positive, got {max_keys}, "
                   f"{points}, {windows}, {baseline_events}")
            raise ValueError(msg)
        self.value_fields = tuple(value_fields)
        self.window_columns = KEPT_WINDOW_COLUMNS + tuple(f"{f}_{s}" for f in self.value_fields for s in WINDOW_STATS)
        self.max_keys, self.points, self.max_windows = max_keys, points, windows
        self.baseline_events, self.band_k = baseline_events, band_k
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self.version = 0  # changes when a key is added or forgotten (the selector's options)
        self.forgotten = 0

    def _get(self, key: str) -> _Key:
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Key(self.points, len(self.value_fields))
            self.version += 1
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
                self.forgotten += 1
        else:
            self._keys.move_to_end(key)
        return entry

    def add_points(self, keys: np.ndarray, t_ms: np.ndarray, score: np.ndarray, flagged: np.ndarray,
                   values: Mapping[str, np.ndarray]) -> None:
        """Append events (in arrival order) to their keys' rings; events without a key are not kept per key."""
        if not len(keys):
            return
        vals = np.column_stack([np.asarray(values.get(f, np.full(len(keys), np.nan)), dtype=np.float64)
                                for f in self.value_fields]) if self.value_fields else np.empty((len(keys), 0))
        codes, uniq = pd.factorize(pd.Series(keys, dtype=object), use_na_sentinel=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
        for j, key in enumerate(uniq.tolist()):  # a batch holds few keys: the loop is over keys, not events
            group = order[bounds[j]:bounds[j + 1]]
            rows = group[-self.points:]  # older ones would be overwritten within this same call
            entry = self._get(str(key))
            slots = (entry.n + len(group) - len(rows) + np.arange(len(rows))) % self.points
            entry.t[slots], entry.score[slots], entry.flagged[slots] = t_ms[rows], score[rows], flagged[rows]
            entry.values[slots] = vals[rows]
            entry.n += len(group)
            entry.alerts += int(flagged[group].sum())

    def add_windows(self, key: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Keep a key's window records (a revision replaces its window), the ``windows`` latest-starting ones.

        Only the numbers of :attr:`window_columns` are kept (a missing or non-numeric one as NaN); a record
        without a numeric ``window_start_ms`` is skipped.
        """
        entry = self._get(key)
        for row in rows:
            start = row.get("window_start_ms")
            if isinstance(start, bool) or not isinstance(start, float | int):
                continue
            if entry.wins is None:
                entry.wins = np.full((self.max_windows, len(self.window_columns)), np.nan)
            starts = entry.wins[:, 0]
            slot = np.flatnonzero(starts == start)
            if not len(slot):
                slot = np.flatnonzero(np.isnan(starts))
            if not len(slot):
                oldest = int(np.argmin(starts))
                if starts[oldest] > start:  # older than every kept window: it would be the one to go
                    continue
                slot = np.array([oldest])
            entry.wins[slot[0]] = [_float(row.get(c)) for c in self.window_columns]
            entry.win_version += 1
    def keys(self, limit: int = 500) -> list[tuple[str, int, int]]:
        """``(key, events seen, alerts seen)``, the keys with most alerts first, then the busiest."""
        ranked = sorted(((k, e.n, e.alerts) for k, e in self._keys.items()), key=lambda r: (-r[2], -r[1], r[0]))
        return ranked[:limit]

    def cursor(self, key: str) -> int:
        """Points ever added to ``key`` (0 for an unknown key): a viewer's position in its stream."""
        entry = self._keys.get(key)
        return 0 if entry is None else entry.n

    def window_version(self, key: str) -> int:
        """Windows ever added to or revised in ``key`` (0 for an unknown key): changes whenever they do."""
        entry = self._keys.get(key)
        return 0 if entry is None else entry.win_version

    def series(self, key: str, after: int | None = None) -> pd.DataFrame:
        """The key's kept points, oldest first (``after``: only points past that cursor), with the band.

        Columns: ``t`` (event time, ms), ``score``, ``is_anomaly``, each value field, and per value field
        ``<f>_lo`` / ``<f>_hi`` (the band, NaN until ``baseline_events`` readings precede the point).
        """
        entry = self._keys.get(key)
        if entry is None:
            return self._empty()
        if entry._frame is None or entry._frame[0] != entry.n:
            entry._frame = (entry.n, self._frame(entry))
        frame = entry._frame[1]
        if after is None:
            return frame
        return frame.iloc[max(len(frame) - (entry.n - after), 0):] if entry.n > after else frame.iloc[:0]

    def _frame(self, entry: _Key) -> pd.DataFrame:
        kept = min(entry.n, self.points)
        slots = (entry.n - kept + np.arange(kept)) % self.points
        out = pd.DataFrame({"t": entry.t[slots], "score": entry.score[slots], "is_anomaly": entry.flagged[slots]})
        for j, f in enumerate(self.value_fields):
            v = entry.values[slots, j]
            lo, hi = np.full(kept, np.nan), np.full(kept, np.nan)
            w = self.baseline_events
            if kept > w:
                # row i's band is from the w readings before it: windows [i - w, i)
                win = np.lib.stride_tricks.sliding_window_view(v[:-1], w)
                med = np.nanmedian(win, axis=1)
                half = self.band_k * MAD_SCALE * np.nanmedian(np.abs(win - med[:, None]), axis=1)
                lo[w:], hi[w:] = med - half, med + half
            out[f], out[f"{f}_lo"], out[f"{f}_hi"] = v, lo, hi
        return out

    def _empty(self) -> pd.DataFrame:
        cols: dict[str, Any] = {"t": [], "score": [], "is_anomaly": pd.Series([], dtype=bool)}
        for f in self.value_fields:
            cols.update({f: [], f"{f}_lo": [], f"{f}_hi": []})
        return pd.DataFrame(cols)

    def windows(self, key: str) -> pd.DataFrame:
        """The key's kept windows by start: the columns of :attr:`window_columns` (times as ms since the epoch)."""
        entry = self._keys.get(key)
        rows = entry.wins if entry is not None and entry.wins is not None else np.empty((0, len(self.window_columns)))
        rows = rows[~np.isnan(rows[:, 0])]
        return pd.DataFrame(rows[np.argsort(rows[:, 0], kind="stable")], columns=list(self.window_columns))


def _float(value: Any) -> float:
    """A record's number as a float; NaN for null, text, bools or anything else."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan
