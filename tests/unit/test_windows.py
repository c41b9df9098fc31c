"""Event-time windows per key: aggregates against pandas and a plain-Python model, lateness, checkpoints."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.windows import (
    PartitionWindows,
    WindowError,
    WindowSpec,
    window_alert_records,
    window_records,
)
from streams.keys import NULL_KEY

S = 1_000_000
T0 = 1_700_000_040 * S  # 2023-11-14T22:14:00Z: a whole minute, so every window size used here starts on it
AGG = ("mean", "min", "max", "std")


def batch(events: list[tuple]) -> dict:
    """Columns for ``update`` from (key, t_us, value, is_anomaly, alarm) tuples."""
    keys, times, values, anomalies, alarms = zip(*events, strict=True) if events else ((),) * 5
    return {"keys": np.array(keys, dtype=object), "times_us": np.array(times, dtype=np.int64),
            "values": {"value": np.array(values, dtype=np.float64)},
            "is_anomaly": np.array(anomalies, dtype=bool), "alarm": np.array(alarms, dtype=bool)}


def ev(key: str, t_s: float, value: float = 1.0, anomaly: bool = False, alarm: bool = False) -> tuple:
    return (key, T0 + round(t_s * S), value, anomaly, alarm)


def spec_of(**kw) -> WindowSpec:
    kw.setdefault("fields", ("value",))
    kw.setdefault("alarm_field", "isActive")
    return WindowSpec(**kw)


def starts_of(spec: WindowSpec, t: int) -> list[int]:
    """Every window start s, a multiple of the slide, with s <= t < s + size (from the definition)."""
    size, slide = spec.size_us, spec.slide_us
    first = math.floor((t - size) / slide) + 1
    out = [k * slide for k in range(first, t // slide + 1)]
    assert all(s <= t < s + size for s in out) and len(out) == size // slide
    return out


def summary(spec: WindowSpec, key: str, start: int, events: list[tuple], revision: int) -> dict:
    vals = pd.Series([e[2] for e in events], dtype=float)
    n = len(events)
    anomalies, alarms = sum(e[3] for e in events), sum(e[4] for e in events)
    row = {"key": key, "window_start": pd.Timestamp(start, unit="us", tz="UTC"),
           "window_end": pd.Timestamp(start + spec.size_us, unit="us", tz="UTC"), "count": n,
           "value_mean": vals.mean(), "value_min": vals.min(), "value_max": vals.max(),
           "value_std": vals.std(),
           "anomalies": anomalies, "alarms": alarms, "revision": revision,
           "anomaly_rate": anomalies / n, "alarm_rate": alarms / n}
    fired = ((spec.alert_anomaly_rate is not None and row["anomaly_rate"] > spec.alert_anomaly_rate)
             or (spec.alert_alarm_rate is not None and row["alarm_rate"] > spec.alert_alarm_rate))
    row["alert"] = bool(fired and n >= spec.min_count)
    return row


class Model:
    """The documented semantics, one event at a time in plain Python: the oracle for the vectorised code."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec, self.wm, self.windows = spec, None, {}

    def update(self, events: list[tuple]) -> tuple[pd.DataFrame, list[bool]]:
        spec, late = self.spec, []
        touched = set()
        for e in events:
            took = False
            for s in starts_of(spec, e[1]):
                age = None if self.wm is None else self.wm - (s + spec.size_us)
                if age is not None and age >= 0 and not (spec.late == "update" and age < spec.retention_us):
                    continue
                self.windows.setdefault((e[0], s), {"events": [], "revision": 0})["events"].append(e)
                touched.add((e[0], s))
                took = True
            late.append(not took)
        if events:
            mark = max(e[1] for e in events) - spec.lateness_us
            self.wm = mark if self.wm is None else max(self.wm, mark)
        rows = []
        for (key, s), w in sorted(self.windows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            end = s + spec.size_us
            if self.wm is not None and end <= self.wm and (w["revision"] == 0 or (key, s) in touched):
                w["revision"] += 1
                rows.append(summary(spec, key, s, w["events"], w["revision"]))
        keep = spec.retention_us if spec.late == "update" else 0
        self.windows = {k: w for k, w in self.windows.items()
                        if self.wm is None or self.wm - (k[1] + spec.size_us) < keep}
        return pd.DataFrame(rows, columns=spec.columns()), late


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert got[["key", "window_start", "revision"]].to_dict("records") == \
        want[["key", "window_start", "revision"]].to_dict("records")
    if len(want):
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True),
                                      check_dtype=False, check_exact=False, rtol=1e-9, atol=1e-9)


# --- random keyed streams, out of order ---------------------------------------------------------------

value = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.just(float("nan")))
event = st.tuples(st.sampled_from("abcd"), st.integers(0, 4000), value, st.booleans(), st.booleans())
stream = st.lists(st.lists(event, max_size=25), min_size=1, max_size=6)  # batches of (key, ms offset, ...)
geometry = st.sampled_from([(1.0, None), (0.5, None), (2.0, 0.5), (1.5, 0.5), (1.0, 1.0)])


def absolute(batches: list[list[tuple]]) -> list[list[tuple]]:
    """Batch ``i`` spans [i s, i s + 4 s): consecutive batches overlap, so times arrive out of order."""
    return [[(k, T0 + i * S + ms * 1000, v, a, al) for k, ms, v, a, al in b] for i, b in enumerate(batches)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=stream, geom=geometry)
def test_aggregates_equal_a_pandas_groupby_when_nothing_is_late(batches, geom) -> None:
    batches = absolute(batches)
    # exactly the largest step back behind the max seen so far: the least lateness under which nothing is late
    seen, disorder = None, 0
    for b in batches:
        if b and seen is not None:
            disorder = max(disorder, seen - min(e[1] for e in b))
        seen = max([e[1] for e in b] + ([] if seen is None else [seen]), default=seen)
    spec = spec_of(size_s=geom[0], slide_s=geom[1], allowed_lateness_s=disorder / S)
    w = PartitionWindows(spec)
    emitted = []
    for b in batches:
        u = w.update(**batch(b))
        assert u.late_count == 0 and not u.late.any() and len(u.late) == len(b)
        assert (u.closed["revision"] == 1).all()
        assert u.closed[["window_start", "key"]].equals(u.closed[["window_start", "key"]].sort_values(
            ["window_start", "key"], ignore_index=True))  # emitted oldest first, then by key
        emitted.append(u.closed)
    emitted.append(w.flush_all())
    got = pd.concat(emitted, ignore_index=True)
    assert not got.duplicated(["key", "window_start"]).any()  # each window emitted once

    rows = [(e[0], s, e[2], e[3], e[4]) for b in batches for e in b for s in starts_of(spec, e[1])]
    ref = pd.DataFrame(rows, columns=["key", "start", "value", "anomalies", "alarms"])
    want = ref.groupby(["key", "start"]).agg(
        count=("value", "size"), value_mean=("value", "mean"), value_min=("value", "min"),
        value_max=("value", "max"), value_std=("value", "std"), anomalies=("anomalies", "sum"),
        alarms=("alarms", "sum")).reset_index()
    got = got.sort_values(["key", "window_start"], ignore_index=True)
    assert got["key"].tolist() == want["key"].tolist()
    assert got["window_start"].tolist() == pd.to_datetime(want["start"], unit="us", utc=True).tolist()
    assert (got["window_end"] - got["window_start"] == pd.Timedelta(microseconds=spec.size_us)).all()
    for col in ["count", "anomalies", "alarms"] + [f"value_{a}" for a in AGG]:
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float),
                                   rtol=1e-9, atol=1e-9, err_msg=col)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=stream, geom=geometry, lateness_ms=st.integers(0, 2500),
       late=st.sampled_from(["dead_letter", "update"]), retention_ms=st.sampled_from([None, 0, 700, 3000]))
def test_every_batch_matches_the_one_event_at_a_time_model(
    batches, geom, lateness_ms, late, retention_ms
) -> None:
    spec = spec_of(size_s=geom[0], slide_s=geom[1], allowed_lateness_s=lateness_ms / 1000, late=late,
                   retention_s=None if retention_ms is None else retention_ms / 1000,
                   alert_anomaly_rate=0.5, min_count=2)
    w, model = PartitionWindows(spec), Model(spec)
    for b in absolute(batches):
        u = w.update(**batch(b))
        want, want_late = model.update(b)
        assert u.late.tolist() == want_late and u.late_count == sum(want_late)
        assert_same(u.closed, want)
        assert w.watermark_us == model.wm


# --- lateness, one case at a time ----------------------------------------------------------------------

def test_watermark_is_the_max_seen_minus_lateness_and_moves_once_per_batch() -> None:
    w = PartitionWindows(spec_of(size_s=10, allowed_lateness_s=3))
    assert w.watermark_us is None
    w.update(**batch([ev("a", 20), ev("a", 7)]))
    assert w.watermark_us == T0 + 17 * S
    w.update(**batch([ev("a", 12)]))  # older than the max: the watermark does not go back
    assert w.watermark_us == T0 + 17 * S
    w.update(**batch([]))
    assert w.watermark_us == T0 + 17 * S
    w.update(**batch([ev("b", 31.5)]))
    assert w.watermark_us == T0 + 28_500_000


def test_rows_of_one_batch_are_judged_against_the_watermark_before_it() -> None:
    w = PartitionWindows(spec_of(size_s=10))
    u = w.update(**batch([ev("a", 25), ev("a", 3)]))  # 3 s is behind 25 s, but in the same batch
    assert not u.late.any()
    assert u.closed["window_start"].tolist() == [pd.Timestamp(T0, unit="us", tz="UTC")]
    assert u.closed["count"].tolist() == [1] and w.open_windows == 1


def test_out_of_order_event_within_lateness_lands_in_its_window() -> None:
    w = PartitionWindows(spec_of(size_s=10, allowed_lateness_s=5))
    w.update(**batch([ev("a", 12, 1.0)]))  # watermark 7 s: [0, 10) still open
    u = w.update(**batch([ev("a", 8, 5.0)]))
    assert not u.late.any() and u.closed.empty
    u = w.update(**batch([ev("a", 30)]))
    got = u.closed.set_index(u.closed["window_start"].map(lambda t: (t.value // 1000 - T0) // S))
    assert got.loc[0, "count"] == 1 and got.loc[0, "value_mean"] == 5.0
    assert got.loc[10, "count"] == 1 and got.loc[10, "value_mean"] == 1.0


def test_dead_letter_mode_flags_late_rows_and_leaves_their_window_alone() -> None:
    w = PartitionWindows(spec_of(size_s=10))
    w.update(**batch([ev("a", 5, 2.0)]))
    u = w.update(**batch([ev("a", 15)]))
    assert u.closed["count"].tolist() == [1] and u.closed["revision"].tolist() == [1]
    u = w.update(**batch([ev("a", 3, 100.0), ev("b", 12), ev("a", 9.999)]))
    assert u.late.tolist() == [True, False, True] and u.late_count == 2
    assert u.closed.empty  # [0, 10) is not emitted again
    final = w.flush_all()
    assert final[["key", "count"]].to_dict("records") == [{"key": "a", "count": 1}, {"key": "b", "count": 1}]


def test_update_mode_reemits_the_corrected_window_then_flags_beyond_retention() -> None:
    w = PartitionWindows(spec_of(size_s=10, late="update"))  # retention defaults to the size, 10 s
    w.update(**batch([ev("a", 5, 2.0)]))
    u = w.update(**batch([ev("a", 15, 0.0)]))
    assert u.closed[["count", "value_mean", "revision"]].to_dict("records") == \
        [{"count": 1, "value_mean": 2.0, "revision": 1}]
    assert w.open_windows == 1  # [10, 20); the closed [0, 10) is kept but not open

    u = w.update(**batch([ev("a", 3, 4.0, anomaly=True), ev("c", 1, 7.0)]))  # 5 s after [0, 10) closed
    assert not u.late.any()
    # the full corrected aggregate, not a delta; "c" had no window there yet, so this is its first emission
    assert u.closed[["key", "count", "value_mean", "anomalies", "revision"]].to_dict("records") == [
        {"key": "a", "count": 2, "value_mean": 3.0, "anomalies": 1, "revision": 2},
        {"key": "c", "count": 1, "value_mean": 7.0, "anomalies": 0, "revision": 1},
    ]
    assert u.closed["value_std"].iloc[0] == pytest.approx(math.sqrt(2.0))
    assert np.isnan(u.closed["value_std"].iloc[1])

    u = w.update(**batch([ev("a", 40)]))  # [10, 20) closes; [0, 10) (30 s ago) is dropped, not re-emitted
    assert u.closed[["count", "revision"]].to_dict("records") == [{"count": 1, "revision": 1}]
    # watermark 40 s: [0, 10) and [20, 30) closed 30 s and exactly 10 s ago (not kept), [30, 40) just now
    u = w.update(**batch([ev("a", 4), ev("a", 25), ev("a", 31, 9.0)]))
    assert u.late.tolist() == [True, True, False] and u.late_count == 2
    assert u.closed[["value_mean", "revision"]].to_dict("records") == [{"value_mean": 9.0, "revision": 1}]


def test_sliding_row_is_late_only_when_none_of_its_windows_takes_it() -> None:
    w = PartitionWindows(spec_of(size_s=10, slide_s=5))
    w.update(**batch([ev("a", 12)]))  # watermark 12 s: [0, 10) closed, [5, 15) and [10, 20) open
    u = w.update(**batch([ev("a", 7), ev("a", 2)]))  # 7 s: [0, 10) closed, [5, 15) open; 2 s: all closed
    assert u.late.tolist() == [False, True]
    final = w.flush_all()
    starts = final["window_start"].map(lambda t: (t.value // 1000 - T0) // S).tolist()
    assert starts == [5, 10] and final["count"].tolist() == [2, 1]


# --- checkpoints ---------------------------------------------------------------------------------------

def random_batches(seed: int, n: int = 8) -> list[list[tuple]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = int(rng.integers(0, 300))
        t = T0 + i * 2 * S + rng.integers(-6 * S, 2 * S, m)  # some rows late, some beyond retention
        vals = np.where(rng.random(m) < 0.1, np.nan, rng.normal(50, 10, m))
        out.append(list(zip(rng.choice([f"k{j}" for j in range(40)], m).tolist(), t.tolist(), vals.tolist(),
                            (rng.random(m) < 0.2).tolist(), (rng.random(m) < 0.3).tolist(), strict=True)))
    return out


@pytest.mark.parametrize("late", ["dead_letter", "update"])
@pytest.mark.parametrize("slide_s", [None, 0.5])
def test_checkpoint_round_trip_mid_stream_matches_an_uninterrupted_run(seed, late, slide_s) -> None:
    spec = spec_of(size_s=2, slide_s=slide_s, allowed_lateness_s=0.5, late=late, alert_anomaly_rate=0.25)
    batches = random_batches(seed)
    straight = PartitionWindows(spec)
    want = [straight.update(**batch(b)) for b in batches]
    want_final = straight.flush_all()

    w = PartitionWindows(spec)
    got = [w.update(**batch(b)) for b in batches[:4]]
    arrays = w.to_arrays()
    assert all(not a.dtype.hasobject for a in arrays.values())
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        w = PartitionWindows.from_arrays(spec, {k: npz[k] for k in npz.files})
    got += [w.update(**batch(b)) for b in batches[4:]]
    assert sum(u.late_count for u in want) > 0  # the stream does exercise lateness ...
    if late == "update":  # ... and revisions, whose count must survive the checkpoint
        assert any((u.closed["revision"] > 1).any() for u in want)
    for g, x in zip(got, want, strict=True):
        assert g.late.tolist() == x.late.tolist()
        assert_same(g.closed, x.closed)
    assert_same(w.flush_all(), want_final)


def test_checkpoint_for_other_windows_is_refused() -> None:
    w = PartitionWindows(spec_of(size_s=2))
    w.update(**batch([ev("a", 1)]))
    arrays = w.to_arrays()
    with pytest.raises(WindowError, match="size/slide"):
        PartitionWindows.from_arrays(spec_of(size_s=3), arrays)
    with pytest.raises(WindowError, match="fields"):
        PartitionWindows.from_arrays(spec_of(size_s=2, fields=("other",)), arrays)
    with pytest.raises(WindowError, match="lacks"):
        PartitionWindows.from_arrays(spec_of(size_s=2), {k: v for k, v in arrays.items() if k != "count"})


def test_key_churn_keeps_results_and_does_not_grow_the_key_vocabulary() -> None:
    spec = spec_of(size_s=1)
    w = PartitionWindows(spec)
    for i in range(6):  # 3000 new keys a second, each seen once
        u = w.update(**batch([ev(f"k{i}-{j}", i + 0.5, float(j)) for j in range(3000)]))
        if i:
            assert len(u.closed) == 3000 and u.closed["key"].str.startswith(f"k{i - 1}-").all()
            assert (u.closed["value_mean"].to_numpy() == np.arange(3000)[np.argsort(
                [f"k{i - 1}-{j}" for j in range(3000)])]).all()
    assert len(w._vocab) <= 2 * 3000 + 1024  # private, but the memory bound is the point


# --- spec, inputs, alerts, records ---------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "field"), [
    ({"size_s": 0}, "size_s"),
    ({"size_s": float("nan")}, "size_s"),
    ({"size_s": "60"}, "size_s"),
    ({"size_s": 10, "slide_s": 20}, "slide_s"),
    ({"size_s": 10, "slide_s": 3}, "slide_s"),
    ({"size_s": 10, "slide_s": 0}, "slide_s"),
    ({"size_s": 10, "allowed_lateness_s": -1}, "allowed_lateness_s"),
    ({"size_s": 10, "late": "drop"}, "late"),
    ({"size_s": 10, "fields": ["value"]}, "fields"),
    ({"size_s": 10, "fields": ("value", "value")}, "fields"),
    ({"size_s": 10, "alarm_field": ""}, "alarm_field"),
    ({"size_s": 10, "retention_s": -0.5}, "retention_s"),
    ({"size_s": 10, "alert_anomaly_rate": 1.5}, "alert_anomaly_rate"),
    ({"size_s": 10, "alert_alarm_rate": -0.1}, "alert_alarm_rate"),
    ({"size_s": 10, "min_count": 0}, "min_count"),
    ({"size_s": 10, "min_count": True}, "min_count"),
])
def test_spec_errors_name_the_field_and_value(kwargs, field) -> None:
    with pytest.raises(WindowError, match=rf"WindowSpec\.{field} .*got") as info:
        WindowSpec(**kwargs)
    assert repr(kwargs[field])[:4] in str(info.value)


def test_bad_batch_inputs_name_what_is_wrong() -> None:
    w = PartitionWindows(spec_of(size_s=1))
    good = batch([ev("a", 1)])
    with pytest.raises(WindowError, match="'value'"):
        w.update(**{**good, "values": {}})
    with pytest.raises(WindowError, match="alarm"):
        w.update(**{**good, "alarm": None})
    with pytest.raises(WindowError, match="is_anomaly has shape"):
        w.update(**{**good, "is_anomaly": np.zeros(2, bool)})
    with pytest.raises(WindowError, match="times_us"):
        w.update(**{**good, "times_us": np.array([1.5])})


def test_missing_keys_and_datetime_times_are_accepted() -> None:
    w = PartitionWindows(spec_of(size_s=1))
    b = batch([ev("a", 0.1), ev("a", 0.2), ev("a", 0.3)])
    b["keys"] = np.array([None, float("nan"), "a"], dtype=object)
    b["times_us"] = b["times_us"].astype("datetime64[us]")
    w.update(**b)
    final = w.flush_all()
    assert final[["key", "count"]].to_numpy().tolist() == [[NULL_KEY, 2], ["a", 1]]


def test_rate_trigger_fires_only_above_the_rate_and_from_min_count() -> None:
    spec = spec_of(size_s=10, alert_anomaly_rate=0.5, alert_alarm_rate=0.5, min_count=4)
    rows = ([ev("above", 1, anomaly=i < 3) for i in range(4)]     # 3/4 anomalies: fires
            + [ev("at", 1, anomaly=i < 2) for i in range(4)]      # 2/4 = the rate, not above it
            + [ev("few", 1, anomaly=True) for _ in range(3)]      # 3/3 but fewer than min_count
            + [ev("alarms", 1, alarm=i < 3) for i in range(4)])   # the alarm share fires on its own
    w = PartitionWindows(spec)
    w.update(**batch(rows))
    closed = w.update(**batch([ev("x", 20)])).closed
    assert dict(zip(closed["key"], closed["alert"], strict=True)) == \
        {"above": True, "alarms": True, "at": False, "few": False}
    alerts = [json.loads(r) for r in window_alert_records(closed, key_field="stationId")]
    assert [(a["kind"], a["stationId"], a["revision"]) for a in alerts] == \
        [("window_alert", "above", 1), ("window_alert", "alarms", 1)]
    assert alerts[0]["anomaly_rate"] == 0.75 and alerts[1]["alarm_rate"] == 0.75
    assert window_alert_records(closed[~closed["alert"]], key_field="stationId") == []


def test_window_records_are_compact_json_with_utc_times_and_null_for_nan() -> None:
    w = PartitionWindows(spec_of(size_s=1.5))
    rows = [ev("s1", 0.25, 3.0, anomaly=True, alarm=True), ev("s2", 1.6, float("nan"))]
    closed = w.update(**batch(rows)).closed
    assert window_records(closed.iloc[:0], key_field="stationId") == []
    raw = window_records(pd.concat([closed, w.flush_all()], ignore_index=True), key_field="stationId")
    assert all(b" " not in r for r in raw)
    docs = [json.loads(r) for r in raw]
    assert [(d["kind"], d["stationId"]) for d in docs] == [("window", "s1"), ("window", "s2")]
    assert pd.Timestamp(docs[0]["window_start"]) == pd.Timestamp(T0, unit="us", tz="UTC")
    assert [d["window_end"] for d in docs] == ["2023-11-14T22:14:01.500Z", "2023-11-14T22:14:03.000Z"]
    assert (docs[0]["count"], docs[0]["value_mean"], docs[0]["value_std"], docs[0]["anomalies"],
            docs[0]["alarms"], docs[0]["revision"], docs[0]["alert"]) == (1, 3.0, None, 1, 1, 1, False)
    assert docs[1]["value_mean"] is None and docs[1]["value_min"] is None
    one = pd.DataFrame([summary(spec_of(size_s=1), "a", T0, [ev("a", 0)], 1)])
    with pytest.raises(WindowError, match="'count' collides"):
        window_records(one, key_field="count")
