"""Feature engineering per micro-batch, including per-key state that spans batches.

Stateless features (numeric fields, value/threshold ratio, time of day) are pure functions of the batch.
Stateful ones (exponentially weighted mean/std, z-score, seconds since the key's previous event) live in
:class:`KeyState`, an explicit, checkpointable object keyed by entity: arrays indexed by a key code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
import pandas as pd

from engine.config import FeaturesConfig
from streams.schema import Schema


class FeatureError(ValueError):
    """A batch does not have what the feature step needs."""


# numba: this recurrence is sequential per key, so it cannot be vectorised with pandas; ~50M rows/s compiled
@numba.njit(cache=True, nogil=True)
def _ewm_update(codes, values, times, alpha, mean, var, last_t, count, out):  # pragma: no cover - compiled
    for i in range(codes.shape[0]):
        k = codes[i]
        x = values[i]
        if count[k] == 0:
            out[i, 0] = x
            out[i, 1] = 0.0
            out[i, 2] = 0.0
            out[i, 3] = 0.0
        else:
            sd = np.sqrt(var[k])
            out[i, 0] = mean[k]
            out[i, 1] = sd
            out[i, 2] = (x - mean[k]) / sd if sd > 0 else 0.0
            out[i, 3] = max(times[i] - last_t[k], 0.0)
        if np.isfinite(x):
            if count[k] == 0:
                mean[k] = x
                var[k] = 0.0
            else:
                d = x - mean[k]
                incr = alpha * d
                mean[k] += incr
                var[k] = (1.0 - alpha) * (var[k] + d * incr)
            count[k] += 1
        last_t[k] = times[i]


@dataclass
class KeyState:
    """Per-key running statistics: index ``i`` in the arrays belongs to ``keys[i]``."""

    keys: dict[str, int] = field(default_factory=dict)
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    var: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def codes_for(self, keys: pd.Series) -> np.ndarray:
        """Integer codes for ``keys``, growing the arrays for keys never seen before."""
        codes, uniques = pd.factorize(keys.astype("string").fillna("<null>"), use_na_sentinel=False)
        mapping = np.empty(len(uniques), dtype=np.int64)
        for j, key in enumerate(uniques):
            mapping[j] = self.keys.setdefault(str(key), len(self.keys))
        grow = len(self.keys) - len(self.mean)
        if grow > 0:
            self.mean = np.concatenate([self.mean, np.zeros(grow)])
            self.var = np.concatenate([self.var, np.zeros(grow)])
            self.last_t = np.concatenate([self.last_t, np.zeros(grow)])
            self.count = np.concatenate([self.count, np.zeros(grow, dtype=np.int64)])
        return mapping[codes]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Checkpointable form (no pickle): plain arrays, keys in code order."""
        names = np.array(sorted(self.keys, key=self.keys.__getitem__), dtype=object).astype(str)
        return {"keys": names, "mean": self.mean, "var": self.var, "last_t": self.last_t, "count": self.count}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> KeyState:
        keys = {str(k): i for i, k in enumerate(arrays["keys"].tolist())}
        return cls(keys, arrays["mean"].copy(), arrays["var"].copy(), arrays["last_t"].copy(),
                   arrays["count"].astype(np.int64).copy())


class FeatureBuilder:
    """Turns a decoded batch into the model's feature matrix, keeping per-key state across batches.

    >>> from streams.schema import STATION_ALARM
    >>> fb = FeatureBuilder(FeaturesConfig(), STATION_ALARM)
    >>> fb.names[:3]
    ('value', 'valueThreshold', 'ratio_value_valueThreshold')
    """

    def __init__(self, cfg: FeaturesConfig, schema: Schema, state: KeyState | None = None) -> None:
        self.cfg = cfg
        self.schema = schema
        self.state = state or KeyState()
        self._alpha = 2.0 / (cfg.rolling_window + 1.0)
        names = list(cfg.numeric)
        if cfg.ratio:
            names.append(f"ratio_{cfg.ratio[0]}_{cfg.ratio[1]}")
        if cfg.time_of_day:
            names += ["tod_sin", "tod_cos"]
        self._rolled = cfg.numeric[0]
        if cfg.rolling and schema.key:
            names += [f"{self._rolled}_ewm_mean", f"{self._rolled}_ewm_std", f"{self._rolled}_z", "dt_s"]
        self.names: tuple[str, ...] = tuple(names)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The (n_rows, n_features) float64 matrix for ``frame``; updates the per-key state."""
        needed = set(self.cfg.numeric) | set(self.cfg.ratio or ()) | {self.schema.event_time.field}
        missing = sorted(needed - set(frame.columns))
        if missing:
            msg = f"features: batch lacks columns {missing} (has {list(frame.columns)})"
            raise FeatureError(msg)
        n = len(frame)
        cols: list[np.ndarray] = [frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in self.cfg.numeric]
        if self.cfg.ratio:
            num = frame[self.cfg.ratio[0]].to_numpy(dtype=np.float64, na_value=np.nan)
            den = frame[self.cfg.ratio[1]].to_numpy(dtype=np.float64, na_value=np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                cols.append(np.where(den != 0, num / den, 0.0))
        ts = frame[self.schema.event_time.field]
        seconds = ts.dt.as_unit("us").astype("int64").to_numpy() / 1e6
        if self.cfg.time_of_day:
            phase = 2 * np.pi * (seconds % 86_400.0) / 86_400.0
            cols += [np.sin(phase), np.cos(phase)]
        if self.cfg.rolling and self.schema.key:
            codes = self.state.codes_for(frame[self.schema.key])
            out = np.empty((n, 4))
            s = self.state
            _ewm_update(codes, cols[0], seconds, self._alpha, s.mean, s.var, s.last_t, s.count, out)
            cols += [out[:, j] for j in range(4)]
        return np.column_stack(cols) if cols else np.empty((n, 0))
