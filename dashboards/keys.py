"""Per-key views of the stream, bounded: each key's recent readings and scores, and its event-time windows.

Memory is ``max_keys`` × (``points`` readings + ``windows`` window rows), whatever the number of keys the
stream carries: the least recently seen key is forgotten first. Frames for a key are built at most once per
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

WINDOW_COLUMNS = ("window_start", "window_end", "count", "anomalies", "alarms", "revision")
MAD_SCALE = 1.4826  # MAD of a normal distribution, as a standard deviation


class _Key:
    """One key's rings; ``n`` counts every point ever added (a viewer's cursor)."""

    __slots__ = ("n", "alerts", "t", "score", "flagged", "values", "windows", "_frame")

    def __init__(self, points: int, n_values: int) -> None:
        self.n = 0
        self.alerts = 0
        self.t = np.full(points, np.nan)
        self.score = np.full(points, np.nan)
        self.flagged = np.zeros(points, dtype=bool)
        self.values = np.full((points, n_values), np.nan)
        self.windows: OrderedDict[float, dict[str, Any]] = OrderedDict()
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
        """Keep a key's window records (a revision replaces its window), the newest ``windows`` of them."""
        entry = self._get(key)
        for row in rows:
            start = row.get("window_start_ms")
            if not isinstance(start, float | int):
                continue
            entry.windows[float(start)] = dict(row)
            entry.windows.move_to_end(float(start))
            while len(entry.windows) > self.max_windows:
                entry.windows.popitem(last=False)

    def keys(self, limit: int = 500) -> list[tuple[str, int, int]]:
        """``(key, events seen, alerts seen)``, the keys with most alerts first, then the busiest."""
        ranked = sorted(((k, e.n, e.alerts) for k, e in self._keys.items()), key=lambda r: (-r[2], -r[1], r[0]))
        return ranked[:limit]

    def cursor(self, key: str) -> int:
        """Points ever added to ``key`` (0 for an unknown key): a viewer's position in its stream."""
        entry = self._keys.get(key)
        return 0 if entry is None else entry.n

    def window_count(self, key: str) -> int:
        entry = self._keys.get(key)
        return 0 if entry is None else len(entry.windows)

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
        """The key's kept windows, oldest first: ``window_start_ms``, ``window_end_ms``, counts and per-field stats."""
        entry = self._keys.get(key)
        rows = list(entry.windows.values()) if entry is not None else []
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["window_start_ms", "window_end_ms", "count",
                                                                     "anomalies", "alarms"])
