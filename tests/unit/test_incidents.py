"""Incidents: alert grouping rules, checkpoints, and a sustained level shift through the whole chain."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from engine.config import with_overrides
from engine.incidents import IncidentRecord, IncidentSpec, PartitionIncidents
from streams.generator import to_json_lines
from streams.lake import read_lake
from streams.records import RawBatch
from tests.unit.test_chain import PARTITIONS, Harness

US = 1_000_000


def _update(inc: PartitionIncidents, keys: list[str], secs: list[float], flags: list[int],
            scores: list[float] | None = None) -> list[IncidentRecord]:
    n = len(keys)
    return inc.update(np.array(keys, dtype=object), (np.array(secs) * US).astype(np.int64),
                      np.array(flags, dtype=bool), np.array(scores or [0.7] * n), [f"x={i}" for i in range(n)])


def test_consecutive_alerts_of_a_key_are_one_incident_with_its_peak() -> None:
    inc = PartitionIncidents(IncidentSpec(close_after_events=3, close_after_s=1_000))
    out = _update(inc, ["a", "b", "a", "a", "a"], [0, 1, 2, 3, 4], [1, 0, 0, 1, 1], [0.6, 0.1, 0.2, 0.9, 0.7])
    assert [(r.status, r.key, r.alerts) for r in out] == [("open", "a", 1)]  # one quiet event does not close it
    out = _update(inc, ["a", "a", "a"], [5, 6, 7], [0, 0, 0])
    assert [(r.status, r.alerts, r.peak_score, r.top) for r in out] == [("closed", 3, 0.9, "x=3")]
    closed = out[0]
    assert closed.start.startswith("1970-01-01T00:00:00") and closed.end.startswith("1970-01-01T00:00:04")
    assert IncidentRecord.from_json(closed.to_json()) == closed


def test_a_key_that_goes_quiet_closes_on_event_time() -> None:
    inc = PartitionIncidents(IncidentSpec(close_after_events=100, close_after_s=60))
    assert [r.status for r in _update(inc, ["a"], [0], [1])] == ["open"]
    assert _update(inc, ["b"], [59], [0]) == []
    assert [(r.status, r.key) for r in _update(inc, ["b"], [61], [0])] == [("closed", "a")]


def test_open_incidents_survive_a_checkpoint() -> None:
    spec = IncidentSpec(close_after_events=2, close_after_s=1_000)
    stream = (["a", "b", "a", "b", "a", "a", "b", "b"], list(range(8)), [1, 1, 1, 0, 0, 0, 0, 0])
    whole = PartitionIncidents(spec)
    want = _update(whole, *stream)
    first = PartitionIncidents(spec)
    got = _update(first, stream[0][:3], stream[1][:3], stream[2][:3])
    arrays = first.to_arrays()
    assert all(a.dtype != object for a in arrays.values())
    second = PartitionIncidents.from_arrays(spec, arrays)
    got += _update(second, stream[0][3:], stream[1][3:], stream[2][3:])
    assert [r.to_json() for r in got] == [r.to_json() for r in want]


def _sensor_batches(shift_key: str, shift: tuple[int, int], n_keys: int = 16, per_key: int = 400,
                    size: int = 400) -> tuple[list[RawBatch], pd.DataFrame]:
    """Keys with levels orders of magnitude apart, one event per key per second; one key shifts for a while."""
    rng = np.random.default_rng(11)
    levels = 10.0 ** rng.uniform(0, 4, n_keys)
    rows = []
    for t in range(per_key):
        for k in range(n_keys):
            name = f"DP{k:02d}"
            value = levels[k] * (1.0 + 0.01 * rng.normal())
            if name == shift_key and shift[0] <= t < shift[1]:
                value += 0.3 * levels[k]  # +30 %: thirty noise deviations, for a hundred events in a row
            rows.append((f"ST{k // 4}", name, t, value, levels[k] * 2.0))
    frame = pd.DataFrame(rows, columns=["station_id", "datapoint_id", "t", "value", "valueThreshold"])
    frame["event_time"] = pd.Timestamp("2026-11-24", tz="UTC") + pd.to_timedelta(frame.pop("t"), unit="s")
    frame["alarm_id"] = ""
    frame["isActive"] = frame["value"] > frame["valueThreshold"]
    values = to_json_lines(frame)
    keys = [k.encode() for k in frame["datapoint_id"]]
    part = np.array([zlib.crc32(k) % len(PARTITIONS) for k in keys], dtype=np.int32)
    frame["partition"] = part
    out: list[RawBatch] = []
    for p in PARTITIONS:
        idx = np.flatnonzero(part == p)
        for a in range(0, len(idx), size):
            sel = idx[a:a + size]
            out.append(RawBatch("events", [values[i] for i in sel], [keys[i] for i in sel],
                                np.full(len(sel), p, dtype=np.int32), np.arange(a, a + len(sel), dtype=np.int64),
                                np.full(len(sel), 1_000, dtype=np.int64)))
    out.sort(key=lambda b: (int(b.offsets[0]), int(b.partitions[0])))
    return out, frame


def test_a_sustained_level_shift_keeps_alerting_as_one_incident_until_it_ends(tmp_path: Path) -> None:
    shifted, (start, end) = "DP05", (200, 300)
    batches, _ = _sensor_batches(shifted, (start, end))
    h = Harness(tmp_path, batches)
    # a calibrated threshold flags its contamination share of normal traffic by definition; a fixed one shows
    # what the scores separate (normal events score below 0.75 here, the shifted ones about 0.99)
    h.cfg = with_overrides(h.cfg, {"model": {"fit_on_first": 1_500, "fixed_threshold": 0.8}})
    h.coordinator.cfg = h.cfg.model
    h.run_all()
    lake = read_lake(h.cfg.lake.path)
    t = (lake["event_time"] - lake["event_time"].min()).dt.total_seconds().to_numpy()
    mine = (lake["datapoint_id"] == shifted).to_numpy()
    during = (t >= start) & (t < end)
    flagged = lake["is_anomaly"].to_numpy()
    # the shift is not learnt as normal: it alerts on (nearly) every one of its events, to the end
    assert flagged[mine & during].mean() > 0.9
    assert flagged[mine & during & (t >= end - 20)].all()
    # other keys stay quiet meanwhile, and the shifted key is quiet once it is back
    assert flagged[~mine & during].sum() == 0
    assert flagged[mine & (t >= end + 10)].sum() == 0
    incidents = [IncidentRecord.from_json(v) for v in h.committer.values(h.cfg.kafka.topics.incidents)]
    ours = [r for r in incidents if r.key == shifted]
    assert [r.status for r in ours] == ["open", "closed"]
    closed = ours[1]
    assert pd.Timestamp(closed.start) - pd.Timestamp("2026-11-24", tz="UTC") <= pd.Timedelta(seconds=start + 2)
    assert pd.Timestamp(closed.end) >= pd.Timestamp("2026-11-24", tz="UTC") + pd.Timedelta(seconds=end - 1)
    assert closed.alerts == int(flagged[mine].sum()) and "value" in (closed.top or "")
    # windows of the shifted key count its anomalies; every window is in the lake table and on the stats topic
    windows = read_lake(h.cfg.windows_path)
    records = [json.loads(v) for v in h.committer.values(h.cfg.kafka.topics.stats)]
    assert len([r for r in records if r.get("kind") == "window"]) == len(windows) > 0
    assert windows.loc[windows["key"] == shifted, "anomalies"].sum() == closed.alerts


def test_an_event_behind_the_watermark_is_scored_and_its_window_share_dead_lettered(tmp_path: Path) -> None:
    batches, _ = _sensor_batches("none", (0, 0), per_key=200)
    last = batches[-1]
    late = json.loads(last.values[0])
    late["event_time"] = "2026-11-24T00:00:05Z"  # three minutes behind its partition, lateness 10 s
    batches[-1] = RawBatch(last.topic, [json.dumps(late).encode(), *last.values[1:]], last.keys, last.partitions,
                           last.offsets, last.timestamps_ms)
    h = Harness(tmp_path, batches)
    h.run_all()
    dead = [json.loads(v) for v in h.committer.values(h.cfg.kafka.topics.dead_letter)]
    assert [(d["reason"], d["partition"], d["offset"]) for d in dead] == [
        ("late_event", int(last.partitions[0]), int(last.offsets[0]))]
    lake = read_lake(h.cfg.lake.path)
    assert len(lake) == sum(len(b) for b in batches)  # the late event is still scored and kept
    windows = read_lake(h.cfg.windows_path)
    first = windows[windows["window_start"] == windows["window_start"].min()]
    key = late["datapoint_id"]
    assert int(first.loc[first["key"] == key, "count"].iloc[0]) == 60  # one event a second, the late one not in it
