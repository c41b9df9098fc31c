"""The one feature layer: a decoded batch -> the model's feature matrix, with per-key state across batches.

The stream builds its features here, and so must the nightly retrain and replays (issue 10: not built yet),
so that a model sees the same columns whichever way its rows came; it lives in ``training/`` for that. Declared per pipeline in the ``features:`` section (:class:`FeaturesConfig`).

What a global forest must see is *how abnormal an event is for its own key*: sensors whose levels differ by
orders of magnitude otherwise look anomalous for their level, not for their behaviour. So every numeric field
gets a per-key baseline, and the features are deviations from it:

- ``<f>_rz``: robust z-score against the median and MAD of the key's last ``baseline.events`` values (no
  older than ``baseline.max_age_s``); ``<f>_z``: z-score against an exponentially weighted mean/std
  (``baseline.ewm_span`` events), the longer memory that still shows a regime after the short window would
  have absorbed it; ``<f>_delta``: the change from the key's previous value, in baseline scales;
  ``<f>_repeat``: how many times in a row the key repeated this exact value (a stuck sensor), up to
  ``baseline.events`` (log1p);
  ``<f>_missing``: 1 when the value was absent or a sentinel and was imputed.
- per key: ``count_w`` (its events in the last ``baseline.rate_window_s``), ``dt_s`` (time since its previous
  event) and ``dt_ratio`` (log of that gap over the key's usual gap).
- ``<field>_lag<j>``: a shingle, the key's previous ``shingle.size - 1`` values as robust z-scores against
  the current baseline (NAB-style series, where the shape of the last few points is the signal).
- optional: the ``ratio`` of two fields, cyclic time of day / day of week, hashed categoricals.

``keep_levels: false`` drops the raw levels (``<f>``, ``count_w``, ``dt_s``), which are what lets a forest
isolate a key for being unusual *among keys*.

**Protection.** A value more than ``baseline.protect_z`` robust deviations from its key's baseline is
*deviant*. A deviant *run* stays out of the baseline (the robust window and the EWM), so a sustained abnormal
regime (a stuck sensor, a level shift) keeps deviating — and alerting — instead of being learned as normal
within ``baseline.events`` events; after ``baseline.protect_max_events`` deviant values in a row the key
accepts them again (a lasting change becomes the new normal rather than alerting forever; ``0`` = no
protection: every change is news once, then the normal). A lone deviant value does enter the EWM, winsorised
at ``protect_z`` of its scale, so a key whose normal is spiky learns the spread it has.

**Scale.** Deviations are in units of the robust scale (1.4826 x MAD), but never less than the key's EWM
standard deviation (a spiky or multi-level key has a small MAD and would read its usual spikes as extreme) nor
than its resolution, the smallest change it has shown (a quantised reading that sat still and then moves one
step is one step off, not a billion deviations).

**Missing values** (NaN, absent, or one of ``sentinels`` such as 999999) are imputed from the key's last value
(``impute: last``) or its EWM mean (``impute: mean``), flagged in ``<f>_missing``, and never enter the
baseline; a key with no history yet keeps NaN (the forest routes it down each split's learned side).

**Warm-up.** :meth:`FeatureBuilder.compute` also says which rows come from keys whose baseline holds fewer than
``warmup_events`` events: those rows must not alert.

Deviations are compressed with ``asinh`` (≈ sign·log(2|z|) beyond 1): an isolation forest draws its split
points uniformly between a feature's min and max, and one z of 10,000 would otherwise leave the splits no
resolution between z = 2 and z = 20.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from streams.keys import key_codes
from streams.schema import Schema
from training import _feature_kernel as K


class FeatureError(ValueError):
    """A batch does not have what the feature layer needs, or the feature settings are inconsistent."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineConfig(_Section):
    """The per-key baseline every numeric field is compared with."""

    #: robust median/MAD over the key's last N accepted values
    events: int = Field(default=32, ge=4, le=4096)
    #: ... no older than this many seconds of event time (null: any age)
    max_age_s: float | None = Field(default=None, gt=0)
    #: span (events) of the exponentially weighted mean/std
    ewm_span: int = Field(default=256, gt=1)
    #: values further than this many robust deviations stay out of the baseline ...
    protect_z: float = Field(default=6.0, gt=0)
    #: ... unless the key has deviated this many events in a row (then it re-baselines)
    protect_max_events: int = Field(default=512, ge=0)
    #: ``count_w`` counts the key's events in this many seconds (at most ``events`` of them)
    rate_window_s: float = Field(default=60.0, gt=0)


class ShingleConfig(_Section):
    """The key's previous ``size - 1`` values of ``field`` as features (``size: 0`` = off)."""

    field: str | None = None
    size: int = Field(default=0, ge=0, le=64)


class FeaturesConfig(_Section):
    """The ``features:`` section: which features the model sees (see the module doc)."""

    #: numeric fields; each gets a per-key baseline and its deviation features
    numeric: tuple[str, ...] = ("value", "valueThreshold")
    #: keep the raw levels beside the deviations (false: only how abnormal an event is for its key)
    keep_levels: bool = True
    baseline: BaselineConfig = BaselineConfig()
    #: per key: events in the rate window, time since the previous event and its ratio to the usual gap
    rate: bool = True
    #: per field: change from the key's previous value, and the repeat count of identical values
    deltas: bool = True
    shingle: ShingleConfig = ShingleConfig()
    #: numerator / denominator field, e.g. value / valueThreshold (null: none)
    ratio: tuple[str, str] | None = ("value", "valueThreshold")
    #: values that mean "no reading" (treated as missing), e.g. 999999
    sentinels: tuple[float, ...] = ()
    time_of_day: bool = True
    day_of_week: bool = False
    #: string fields hashed into this many buckets each, as one feature in [0, 1)
    categorical: dict[str, int] = Field(default_factory=dict)
    impute: Literal["last", "mean"] = "last"
    #: a key raises no alert until its baseline holds this many events
    warmup_events: int = Field(default=32, ge=0)

    def shingle_field(self) -> str | None:
        if self.shingle.size < 2:
            return None
        return self.shingle.field or self.numeric[0]

    def check_against(self, schema: Schema) -> None:
        """Every named field exists in ``schema`` with a usable type (raises :class:`FeatureError`)."""
        types = {f.name: f.type for f in schema.fields}
        wanted = list(self.numeric) + list(self.ratio or ())
        if (sh := self.shingle_field()) is not None:
            wanted.append(sh)
            if sh not in self.numeric:
                msg = f"features.shingle.field: {sh!r} must be one of features.numeric {list(self.numeric)}"
                raise FeatureError(msg)
        for name in wanted:
            if name not in types:
                msg = f"features: field {name!r} is not declared in schema.fields ({sorted(types)})"
                raise FeatureError(msg)
            if types[name] not in ("int", "float", "bool"):
                msg = f"features: field {name!r} has type {types[name]!r}; features must be numeric"
                raise FeatureError(msg)
        for name, buckets in self.categorical.items():
            if name not in types:
                msg = f"features.categorical: field {name!r} is not declared in schema.fields ({sorted(types)})"
                raise FeatureError(msg)
            if buckets < 2:
                msg = f"features.categorical.{name}: needs at least 2 buckets, got {buckets}"
                raise FeatureError(msg)


@dataclass(frozen=True)
class Features:
    """One batch's features: the matrix, and which rows come from keys past their warm-up."""

    X: np.ndarray
    warm: np.ndarray


class KeyState:
    """Per-key baselines of one input partition: arrays indexed by a key code (checkpointable, no pickle)."""

    def __init__(self, n_fields: int, ring: int, shingle: int) -> None:
        self.index: pd.Index = pd.Index([], dtype=object)  # the keys, in code order
        self.n_fields, self.ring, self.shingle = n_fields, ring, max(shingle - 1, 1)
        self._alloc(0)

    def _alloc(self, cap: int) -> None:
        f, r = self.n_fields, self.ring
        self.fstate = np.zeros((cap, f, K.N_FSTATE))
        self.ring_v = np.zeros((cap, f, r))
        self.ring_t = np.zeros((cap, f, r))
        self.ring_s = np.zeros((cap, f, r))
        self.kstate = np.zeros((cap, K.N_KSTATE))
        self.tring = np.zeros((cap, r))
        self.shring = np.zeros((cap, self.shingle))

    _ARRAYS = ("fstate", "ring_v", "ring_t", "ring_s", "kstate", "tring", "shring")

    def codes_for(self, keys: Any) -> np.ndarray:
        """Integer codes for ``keys``, growing the arrays (by doubling) for keys never seen before."""
        codes, self.index = key_codes(keys, self.index)
        if len(self.index) > len(self.kstate):
            cap = max(64, 2 * len(self.kstate), len(self.index))
            old = {name: getattr(self, name) for name in self._ARRAYS}
            self._alloc(cap)
            for name, arr in old.items():
                getattr(self, name)[: len(arr)] = arr
        return codes

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Checkpointable form: keys in code order, then each array cut to the keys in use."""
        n = len(self.index)
        names = self.index.to_numpy().astype(str)
        out = {"keys": names, "shape": np.array([self.n_fields, self.ring, self.shingle])}
        out.update({name: getattr(self, name)[:n] for name in self._ARRAYS})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> KeyState:
        n_fields, ring, shingle = (int(v) for v in arrays["shape"])
        state = cls(n_fields, ring, shingle + 1)
        keys = [str(k) for k in arrays["keys"].tolist()]
        state.index = pd.Index(keys, dtype=object)
        state._alloc(max(len(keys), 64))
        for name in cls._ARRAYS:
            src = arrays[name]
            dst = getattr(state, name)
            if src.shape[1:] != dst.shape[1:]:
                msg = f"features: saved state {name!r} has shape {src.shape}, expected (*, {dst.shape[1:]})"
                raise FeatureError(msg)
            dst[: len(src)] = src
        return state


class FeatureBuilder:
    """Turns a decoded batch into the model's feature matrix, keeping per-key state across batches.

    >>> from streams.schema import STATION_ALARM
    >>> fb = FeatureBuilder(FeaturesConfig(), STATION_ALARM)
    >>> fb.names[:4]
    ('value', 'value_z', 'value_rz', 'value_delta')
    """

    def __init__(self, cfg: FeaturesConfig, schema: Schema, state: KeyState | None = None) -> None:
        cfg.check_against(schema)
        self.cfg = cfg
        self.schema = schema
        self._fields = list(cfg.numeric)
        sh = cfg.shingle_field()
        self._sh_field = self._fields.index(sh) if sh is not None else -1
        self._sh_size = cfg.shingle.size if sh is not None else 0
        self.state = state or KeyState(len(self._fields), cfg.baseline.events, self._sh_size)
        if (self.state.n_fields, self.state.ring) != (len(self._fields), cfg.baseline.events):
            msg = (f"features: saved state has {self.state.n_fields} fields and a ring of {self.state.ring}, the "
                   f"config {len(self._fields)} and {cfg.baseline.events}")
            raise FeatureError(msg)
        self.names: tuple[str, ...] = tuple(self._names())
        self._sentinels = np.asarray(cfg.sentinels, dtype=np.float64)

    def _names(self) -> list[str]:
        """The feature names in matrix order; records the column each kernel output goes to (-1: not kept)."""
        c = self.cfg
        names: list[str] = []

        def add(name: str) -> int:
            names.append(name)
            return len(names) - 1

        self._fcols = np.full((len(self._fields), K.N_FOUT), -1, dtype=np.int64)
        for j, f in enumerate(self._fields):
            cols = self._fcols[j]
            if c.keep_levels:
                cols[K.O_LEVEL] = add(f)
            cols[K.O_Z], cols[K.O_RZ] = add(f"{f}_z"), add(f"{f}_rz")
            if c.deltas:
                cols[K.O_DELTA], cols[K.O_REPEAT] = add(f"{f}_delta"), add(f"{f}_repeat")
            cols[K.O_MISSING] = add(f"{f}_missing")
        self._kcols = np.full(K.N_KOUT, -1, dtype=np.int64)
        if c.rate:
            if c.keep_levels:
                self._kcols[K.O_COUNT_W], self._kcols[K.O_DT] = add("count_w"), add("dt_s")
            self._kcols[K.O_DT_RATIO] = add("dt_ratio")
        sh = c.shingle_field()
        self._shcol = len(names) if sh is not None else -1
        if sh is not None:
            names += [f"{sh}_lag{j}" for j in range(1, self._sh_size)]
        self._ratio_col = add(f"ratio_{c.ratio[0]}_{c.ratio[1]}") if c.ratio else -1
        # the columns filled in Python, after the kernel
        self._extra_col = len(names)
        if c.time_of_day:
            names += ["tod_sin", "tod_cos"]
        if c.day_of_week:
            names += ["dow_sin", "dow_cos"]
        names += [f"{name}_hash" for name in c.categorical]
        return names

    def transform(self, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """The (n_rows, n_features) float64 matrix for ``frame``; updates the per-key state."""
        return self.compute(frame).X

    def compute(self, frame: pd.DataFrame | pa.Table) -> Features:
        """Features and warm-up flags for ``frame`` (rows in arrival order); updates the per-key state.

        ``frame`` is a decoded batch (the stream's), or a ``pyarrow.Table`` as read from the lake (no pandas
        conversion); either gives the same features. A dictionary-encoded key column (pandas ``Categorical``,
        or Parquet read with ``read_dictionary=[key]``) is coded through its dictionary instead of hashing every
        row's key (see :func:`streams.keys.key_codes`).
        """
        c = self.cfg
        time_field = self.schema.event_time.field
        columns = frame.column_names if isinstance(frame, pa.Table) else list(frame.columns)
        needed = set(self._fields) | set(c.ratio or ()) | {time_field} | set(c.categorical)
        missing_cols = sorted(needed - set(columns))
        if missing_cols:
            msg = f"features: batch lacks columns {missing_cols} (has {columns})"
            raise FeatureError(msg)
        n = len(frame)
        micros = _micros(_column(frame, time_field), time_field)
        fields = [np.ascontiguousarray(_floats(_column(frame, name), name)) for name in self._fields]
        # (n_fields, n_rows): one field (the usual case) is its column itself, without a copy
        vals = fields[0][None, :] if len(fields) == 1 else np.stack(fields) if fields else np.empty((0, n))
        if c.ratio:
            num, den = (_floats(_column(frame, name), name) for name in c.ratio)
        else:
            num = den = np.zeros(0)
        keys = _column(frame, self.schema.key) if self.schema.key else np.zeros(n, dtype=np.int8)
        codes = self.state.codes_for(keys)
        s, b = self.state, c.baseline
        X = np.empty((n, len(self.names)))
        warm = np.empty(n, dtype=np.bool_)
        K.update(codes, micros, vals, self._sentinels, num, den, 2.0 / (b.ewm_span + 1.0), c.impute == "mean",
                 b.protect_z, float(b.protect_max_events), float(b.max_age_s or 0.0), b.rate_window_s,
                 c.rate and c.keep_levels, float(c.warmup_events), self._sh_field, self._sh_size, s.fstate,
                 s.ring_v, s.ring_t, s.ring_s, s.kstate, s.tring, s.shring, X, self._fcols, self._kcols,
                 self._shcol, self._ratio_col, warm, K.LOG1P_TABLE)
        j = self._extra_col
        if c.time_of_day or c.day_of_week:
            seconds = micros / 1e6
        if c.time_of_day:
            phase = 2 * np.pi * (seconds % 86_400.0) / 86_400.0
            X[:, j], X[:, j + 1] = np.sin(phase), np.cos(phase)
            j += 2
        if c.day_of_week:
            # 1970-01-01 was a Thursday: shift so the phase starts on Monday
            phase = 2 * np.pi * (((seconds / 86_400.0) + 3.0) % 7.0) / 7.0
            X[:, j], X[:, j + 1] = np.sin(phase), np.cos(phase)
            j += 2
        for name, buckets in c.categorical.items():
            values = _column(frame, name)
            if not isinstance(values, pd.Series):
                values = values.to_pandas()
            hashed = pd.util.hash_array(values.astype("string").fillna("").to_numpy(dtype=object))
            X[:, j] = (hashed % np.uint64(buckets)).astype(np.float64) / buckets
            j += 1
        return Features(X, warm)


def _column(frame: pd.DataFrame | pa.Table, name: str) -> pd.Series | pa.ChunkedArray:
    return frame.column(name) if isinstance(frame, pa.Table) else frame[name]


def _floats(column: pd.Series | pa.ChunkedArray, name: str) -> np.ndarray:
    """A numeric field as float64, missing values as NaN (a float64 column as it is, without a copy)."""
    if isinstance(column, pa.ChunkedArray):
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type)):
            msg = f"features: field {name!r} has arrow type {column.type}; features must be numeric"
            raise FeatureError(msg)
        # unsafe: a large integer rounds to the nearest float64, as pandas' to_numpy does, instead of raising
        column = pc.fill_null(column.cast(pa.float64(), safe=False), np.nan)
        return np.asarray(column.to_numpy())
    if column.dtype == np.float64:
        return column.to_numpy()
    try:
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as err:
        msg = f"features: field {name!r} of dtype {column.dtype} is not numeric ({err})"
        raise FeatureError(msg) from None


def _micros(column: pd.Series | pa.ChunkedArray, name: str) -> np.ndarray:
    """Event times as int64 µs since the epoch."""
    if isinstance(column, pa.ChunkedArray):
        column = column.to_pandas()
    if not isinstance(column.dtype, pd.DatetimeTZDtype) and column.dtype.kind != "M":
        msg = f"features: event time field {name!r} has dtype {column.dtype}, expected timestamps"
        raise FeatureError(msg)
    return column.dt.as_unit("us").astype("int64").to_numpy()
