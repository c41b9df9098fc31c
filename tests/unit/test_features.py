"""The feature layer against a slow, obviously-correct reference, and its invariants."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.schema import STATION_ALARM, EventTime, FieldSpec, Schema
from training.features import (
    BaselineConfig,
    FeatureBuilder,
    FeatureError,
    FeaturesConfig,
    KeyState,
    ShingleConfig,
)

SCHEMA = Schema(fields=[FieldSpec(name="k", type="string"), FieldSpec(name="t", type="timestamp"),
                        FieldSpec(name="x", type="float"), FieldSpec(name="y", type="float")],
                event_time=EventTime(field="t"), key="k")


def _frame(n: int = 2_000, seed: int = 0) -> pd.DataFrame:
    return StationAlarmGenerator(GeneratorSettings(seed=seed)).next_chunk(n)


def _reference(frame: pd.DataFrame, cfg: FeaturesConfig, fields: list[str]) -> dict[str, np.ndarray]:
    """The per-key features computed one event at a time with plain Python lists (see training/features.py)."""
    b = cfg.baseline
    alpha = 2.0 / (b.ewm_span + 1.0)
    out: dict[str, list[float]] = {}
    state: dict[str, dict] = {}
    secs = frame["t"].dt.as_unit("us").astype("int64").to_numpy() / 1e6
    sh = cfg.shingle_field()
    for i, key in enumerate(frame["k"].astype(str).tolist()):
        t = secs[i]
        ks = state.setdefault(key, {"count": 0, "last_t": 0.0, "ewm_dt": 0.0, "times": [], "hist": [],
                                    **{f: {"ring": [], "mean": 0.0, "var": 0.0, "n": 0, "last": None, "run": 0,
                                           "same": 0, "res": 0.0} for f in fields}})
        c = ks["count"]
        dt = max(t - ks["last_t"], 0.0) if c else math.nan
        out.setdefault("dt_s", []).append(dt)
        out.setdefault("dt_ratio", []).append(math.log((dt + 1e-3) / (ks["ewm_dt"] + 1e-3)) if c > 1 else 0.0)
        out.setdefault("count_w", []).append(sum(1 for u in ks["times"][-b.events:] if t - u <= b.rate_window_s))
        out.setdefault("warm", []).append(c >= cfg.warmup_events)
        for f in fields:
            s = ks[f]
            x = float(frame[f].iat[i])
            miss = not math.isfinite(x)
            if miss:
                x = s["last"] if s["last"] is not None else math.nan
            ring = s["ring"]
            med = float(np.median(ring)) if ring else math.nan
            mad = float(np.median(np.abs(np.asarray(ring) - med))) if ring else 0.0
            sd = math.sqrt(s["var"]) if s["n"] > 1 else 0.0
            scale = max(1.4826 * mad, sd, s["res"]) or ((1e-9 * abs(med) + 1e-12) if ring else 1.0)
            fin = math.isfinite(x)
            rz = (x - med) / scale if len(ring) >= 4 and fin else 0.0
            z = (x - s["mean"]) / max(sd, scale) if s["n"] > 1 and fin else 0.0
            has_last = s["last"] is not None
            delta = (x - s["last"]) / scale if has_last and fin else 0.0
            same = s["same"] + 1 if has_last and fin and x == s["last"] else 0
            out.setdefault(f"{f}_rz", []).append(rz)
            out.setdefault(f"{f}_z", []).append(z)
            out.setdefault(f"{f}_delta", []).append(delta)
            out.setdefault(f"{f}_repeat", []).append(min(same, cfg.baseline.events))
            out.setdefault(f"{f}_missing", []).append(float(miss))
            if f == sh:
                prev = ks["hist"]
                for j in range(1, cfg.shingle.size):
                    v = (prev[-j] - med) / scale if j <= len(prev) and ring else math.nan
                    out.setdefault(f"{f}_lag{j}", []).append(v)
            if miss or not fin:
                continue
            deviant = len(ring) >= 4 and abs(rz) > b.protect_z
            s["run"] = s["run"] + 1 if deviant else 0
            if s["last"] is not None and x != s["last"]:
                s["res"] = abs(x - s["last"]) if s["res"] <= 0 else min(s["res"], abs(x - s["last"]))
            s["same"], s["last"] = same, x
            if f == sh:
                ks["hist"] = (ks["hist"] + [x])[-(cfg.shingle.size - 1):]
            if not deviant or s["run"] > b.protect_max_events:
                s["ring"] = (ring + [x])[-b.events:]
            if deviant and 1 < s["run"] <= b.protect_max_events:
                continue  # a deviant run stays out of the EWM too; a lone deviant value enters it winsorised
            if s["n"] > 1:
                lim = b.protect_z * max(math.sqrt(s["var"]), scale)
                xe = min(max(x, s["mean"] - lim), s["mean"] + lim)
            else:
                xe = x
            a = max(alpha, 1.0 / (s["n"] + 1))
            d = xe - s["mean"]
            s["mean"] += a * d
            s["var"] = (1 - a) * (s["var"] + a * d * d)
            s["n"] += 1
        if c:
            a = max(alpha, 1.0 / c)
            ks["ewm_dt"] = dt if c == 1 else ks["ewm_dt"] + a * (dt - ks["ewm_dt"])
        ks["count"], ks["last_t"] = c + 1, t
        ks["times"] = (ks["times"] + [t])[-b.events:]
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _keyed(draw_keys: list[int], values: list[float | None], gaps: list[float]) -> pd.DataFrame:
    t0 = pd.Timestamp("2026-11-24", tz="UTC")
    times = t0 + pd.to_timedelta(np.cumsum(gaps), unit="s")
    x = np.array([np.nan if v is None else v for v in values])
    # a second field with values on another scale, repeats and sentinels of its own
    y = np.where(np.arange(len(x)) % 7 == 0, 5.0, np.round(x * 100.0))
    return pd.DataFrame({"k": [f"k{j}" for j in draw_keys], "t": times, "x": x, "y": y})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.tuples(st.integers(0, 3),
                            st.one_of(st.none(), st.floats(-50, 50, allow_nan=False), st.sampled_from([1.0, 2.0])),
                            st.floats(0.0, 30.0)), min_size=1, max_size=160),
    split=st.integers(0, 160),
    events=st.sampled_from([4, 5, 8]),
    protect=st.sampled_from([1.5, 6.0]),
)
def test_matches_the_slow_reference_across_batches(data, split, events, protect) -> None:
    """Every per-key feature equals the reference, with the stream cut into two batches anywhere."""
    frame = _keyed([d[0] for d in data], [d[1] for d in data], [d[2] for d in data])
    cfg = FeaturesConfig(numeric=("x", "y"), keep_levels=False, ratio=None, time_of_day=False, warmup_events=3,
                         baseline=BaselineConfig(events=events, ewm_span=6, protect_z=protect, protect_max_events=5,
                                                 rate_window_s=40.0),
                         shingle=ShingleConfig(field="x", size=4))
    fb = FeatureBuilder(cfg, SCHEMA)
    cut = min(split, len(frame))
    parts = [fb.compute(frame.iloc[:cut]), fb.compute(frame.iloc[cut:])]
    X = np.vstack([p.X for p in parts])
    warm = np.concatenate([p.warm for p in parts])
    ref = _reference(frame, cfg, ["x", "y"])
    np.testing.assert_array_equal(warm, ref["warm"].astype(bool))
    for j, name in enumerate(fb.names):
        base = ref[name]
        expect = base if name.endswith(("_missing", "dt_ratio")) else (
            np.log1p(base) if name.endswith("_repeat") else np.arcsinh(base))
        np.testing.assert_allclose(X[:, j], expect, rtol=1e-9, atol=1e-9, err_msg=name)


def test_levels_are_kept_or_dropped() -> None:
    frame = _frame()
    with_levels = FeatureBuilder(FeaturesConfig(keep_levels=True), STATION_ALARM)
    without = FeatureBuilder(FeaturesConfig(keep_levels=False), STATION_ALARM)
    assert {"value", "valueThreshold", "count_w", "dt_s"} <= set(with_levels.names)
    assert not {"value", "valueThreshold", "count_w", "dt_s"} & set(without.names)
    assert with_levels.transform(frame).shape == (len(frame), len(with_levels.names))
    assert without.transform(frame).shape == (len(frame), len(without.names))


def test_names_match_columns_and_input_not_mutated() -> None:
    frame = _frame()
    before = frame.copy()
    fb = FeatureBuilder(FeaturesConfig(day_of_week=True, categorical={"station_id": 16}), STATION_ALARM)
    X = fb.transform(frame)
    assert X.shape == (len(frame), len(fb.names))
    assert fb.names[-1] == "station_id_hash" and set(np.unique(X[:, -1] * 16)) <= set(range(16))
    pd.testing.assert_frame_equal(frame, before)


def test_deviation_is_per_key_whatever_the_level() -> None:
    """Two keys 1000x apart in level: the same relative spike gets the same robust z."""
    t = pd.Timestamp("2026-11-24", tz="UTC") + pd.to_timedelta(np.arange(200), unit="s")
    rng = np.random.default_rng(0)
    noise = rng.normal(size=100)
    x = np.concatenate([1.0 + 0.01 * noise, 1000.0 + 10.0 * noise])
    x[99], x[199] = 1.2, 1200.0
    frame = pd.DataFrame({"k": ["a"] * 100 + ["b"] * 100, "t": t, "x": x, "y": x})
    fb = FeatureBuilder(FeaturesConfig(numeric=("x",), ratio=None, time_of_day=False), SCHEMA)
    rz = fb.transform(frame)[:, fb.names.index("x_rz")]
    assert rz[99] > 3 and abs(rz[99] - rz[199]) < 1e-6


def test_a_sustained_shift_stays_deviant_while_protected_then_rebaselines() -> None:
    n = 400
    t = pd.Timestamp("2026-11-24", tz="UTC") + pd.to_timedelta(np.arange(n), unit="s")
    x = 10.0 + np.random.default_rng(1).normal(0, 0.1, n)
    x[100:] += 5.0  # a level shift that lasts
    frame = pd.DataFrame({"k": "a", "t": t, "x": x, "y": x})
    cfg = FeaturesConfig(numeric=("x",), ratio=None, time_of_day=False,
                         baseline=BaselineConfig(events=32, protect_z=6.0, protect_max_events=150))
    fb = FeatureBuilder(cfg, SCHEMA)
    rz = np.sinh(fb.transform(frame)[:, fb.names.index("x_rz")])
    assert (np.abs(rz[100:250]) > 6).all()  # protected: the shift is not learnt as normal ...
    assert (np.abs(rz[320:]) < 6).mean() > 0.9  # ... until it has lasted protect_max_events, then it is


def test_sentinels_and_missing_are_imputed_and_flagged_never_zero() -> None:
    t = pd.Timestamp("2026-11-24", tz="UTC") + pd.to_timedelta(np.arange(6), unit="s")
    frame = pd.DataFrame({"k": "a", "t": t, "x": [5.0, 5.5, 999999.0, np.nan, 6.0, 999999.0], "y": 1.0})
    cfg = FeaturesConfig(numeric=("x",), ratio=None, time_of_day=False, sentinels=(999999.0,))
    fb = FeatureBuilder(cfg, SCHEMA)
    X = fb.transform(frame)
    np.testing.assert_array_equal(X[:, fb.names.index("x_missing")], [0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(X[:, fb.names.index("x")], [5.0, 5.5, 5.5, 5.5, 6.0, 6.0])  # the last value
    mean = FeatureBuilder(cfg.model_copy(update={"impute": "mean"}), SCHEMA).transform(frame)
    assert mean[2, fb.names.index("x")] == pytest.approx(5.25)  # the running mean of 5.0 and 5.5
    first_missing = pd.DataFrame({"k": "b", "t": t[:1], "x": [np.nan], "y": 1.0})
    assert np.isnan(FeatureBuilder(cfg, SCHEMA).transform(first_missing)[0, fb.names.index("x")])


def test_warm_up_counts_events_per_key() -> None:
    frame = _frame(3_000)
    fb = FeatureBuilder(FeaturesConfig(warmup_events=10), STATION_ALARM)
    warm = fb.compute(frame).warm
    rank = frame.groupby("datapoint_id").cumcount().to_numpy()
    np.testing.assert_array_equal(warm, rank >= 10)


def test_state_spans_batches_exactly() -> None:
    """Two half batches give the same features as one whole batch: the per-key state carries over."""
    frame = _frame(4_000)
    whole = FeatureBuilder(FeaturesConfig(), STATION_ALARM).transform(frame)
    fb = FeatureBuilder(FeaturesConfig(), STATION_ALARM)
    halves = np.vstack([fb.transform(frame.iloc[:1_500]), fb.transform(frame.iloc[1_500:])])
    np.testing.assert_array_equal(halves, whole)


def test_state_round_trips_through_arrays() -> None:
    frame = _frame(2_000)
    cfg = FeaturesConfig(shingle=ShingleConfig(size=5))
    fb = FeatureBuilder(cfg, STATION_ALARM)
    fb.transform(frame.iloc[:1_000])
    arrays = fb.state.to_arrays()
    assert all(a.dtype != object for a in arrays.values())  # checkpointable without pickle
    restored = FeatureBuilder(cfg, STATION_ALARM, KeyState.from_arrays(arrays))
    np.testing.assert_array_equal(restored.transform(frame.iloc[1_000:]), fb.transform(frame.iloc[1_000:]))


def test_state_of_another_shape_is_refused() -> None:
    fb = FeatureBuilder(FeaturesConfig(), STATION_ALARM)
    fb.transform(_frame(100))
    state = KeyState.from_arrays(fb.state.to_arrays())
    with pytest.raises(FeatureError, match="ring"):
        FeatureBuilder(FeaturesConfig(baseline=BaselineConfig(events=16)), STATION_ALARM, state)


def test_missing_column_is_named() -> None:
    frame = _frame(10).drop(columns=["valueThreshold"])
    with pytest.raises(FeatureError, match="valueThreshold"):
        FeatureBuilder(FeaturesConfig(), STATION_ALARM).transform(frame)


def test_config_names_unknown_or_non_numeric_fields() -> None:
    with pytest.raises(FeatureError, match="'nope'"):
        FeatureBuilder(FeaturesConfig(numeric=("nope",)), STATION_ALARM)
    with pytest.raises(FeatureError, match="station_id"):
        FeatureBuilder(FeaturesConfig(numeric=("station_id",)), STATION_ALARM)
    with pytest.raises(FeatureError, match="shingle.field"):
        FeatureBuilder(FeaturesConfig(numeric=("value",), shingle=ShingleConfig(field="valueThreshold", size=3)),
                       STATION_ALARM)


def test_the_repeat_count_is_shown_up_to_the_baseline_length() -> None:
    """A field constant per key (an alarm threshold) must not grow a feature without bound: past the ring's
    length, a repeated value reads as a full ring of repeats."""
    cfg = FeaturesConfig(numeric=("value", "valueThreshold"), ratio=None)
    n = 5 * cfg.baseline.events
    frame = pd.DataFrame({"station_id": "S", "datapoint_id": "k", "alarm_id": "",
                          "event_time": pd.date_range("2026-11-24", periods=n, freq="s", tz="UTC"),
                          "value": np.arange(n, dtype=float), "valueThreshold": 10.0, "isActive": False})
    fb = FeatureBuilder(cfg, STATION_ALARM)
    col = fb.names.index("valueThreshold_repeat")
    rep = fb.compute(frame).X[:, col]
    assert rep[: cfg.baseline.events + 1].tolist() == np.log1p(np.arange(cfg.baseline.events + 1)).tolist()
    assert (rep[cfg.baseline.events:] == np.log1p(cfg.baseline.events)).all()
    assert (fb.compute(frame.assign(event_time=frame["event_time"] + pd.Timedelta(days=1))).X[:, col]
            == np.log1p(cfg.baseline.events)).all()  # and across batches
