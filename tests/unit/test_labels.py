"""Late labels: reading files, the store (latest wins), the join with a real lake, metrics against scikit-learn."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

from engine.cli import main
from engine.config import Config, load
from engine.outputs import lake_frame
from streams.lake import LakeWriter
from streams.schema import STATION_ALARM
from training.label_metrics import (
    JoinResult,
    join_predictions,
    metrics_by_version,
    read_metrics,
    update_metrics,
)
from training.label_store import LabelStore
from training.labels import LabelError, parse_labels, read_labels, records_to_frame

FIELDS = STATION_ALARM.names
EVENTS = 600  # 300 per partition; offsets below 150 scored by v1, the rest by v2
START = pd.Timestamp("2026-11-24T20:00:00.123456Z")


def _events(rng: np.random.Generator) -> pd.DataFrame:
    """Decoded events as the engine holds them, two partitions, spanning midnight (two lake days)."""
    i = np.arange(EVENTS)
    times = START + pd.to_timedelta(i * 97, unit="s") + pd.to_timedelta(rng.integers(0, 999, EVENTS), unit="us")
    return pd.DataFrame({
        "station_id": [f"s{k % 3}" for k in i],
        "datapoint_id": [f"dp{k % 11}" for k in i],
        "alarm_id": "",
        "event_time": times.astype("datetime64[us, UTC]"),
        "value": rng.normal(size=EVENTS),
        "valueThreshold": 1.0,
        "isActive": False,
        "_partition": (i % 2).astype(np.int64),
        "_offset": (i // 2).astype(np.int64),
        "_kafka_ts": np.int64(0),
    })


@pytest.fixture
def lake(tmp_path: Path, seed: int) -> tuple[Path, pd.DataFrame]:
    """A lake written as the engine writes it (lake_frame + LakeWriter), and the rows with a true label each."""
    rng = np.random.default_rng(seed)
    events = _events(rng)
    truth = (rng.random(EVENTS) < 0.2).astype(np.int8)
    score = np.clip(0.4 + 0.25 * truth + rng.normal(0, 0.12, EVENTS), 0, 1)  # informative, not perfect
    root = tmp_path / "lake"
    writer = LakeWriter(root, time_field="event_time")
    rows = []
    for version, part in (("v1", events["_offset"] < 150), ("v2", events["_offset"] >= 150)):
        decoded = events[part]
        frame = lake_frame(decoded, FIELDS, score[part], np.full(part.sum(), 0.6), score[part] > 0.6, version)
        writer.add(frame)
        rows.append(frame.assign(label=truth[part]))
    writer.flush()
    assert len({p.parent.name for p in writer.files()}) == 2  # the fixture must span two days
    return root, pd.concat(rows, ignore_index=True)


def _cfg(root: Path) -> Config:
    return load(overrides={"lake": {"path": str(root)}}, environ={})


def _join(root: Path, labels: pd.DataFrame, days: list[dt.date] | None = None) -> JoinResult:
    return join_predictions(root, labels, key_field="datapoint_id", time_field="event_time", days=days)


# -- reading ----------------------------------------------------------------------------------------------
def test_csv_by_offset_with_rejects_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text("partition,offset,label\n0,5,1\n1,7,false\n0,x,1\n-1,3,0\n0,8,maybe\n0,9,\n,,1\n")
    labels, rejects = read_labels(path)
    assert labels[["partition", "offset", "label"]].values.tolist() == [[0, 5, 1], [1, 7, 0]]
    assert rejects[["row", "reason"]].values.tolist() == [
        ["4", "bad_offset"], ["5", "bad_partition"], ["6", "bad_label"], ["7", "missing_label"],
        ["8", "missing_coordinates"]]
    assert (rejects["source"] == str(path)).all()


def test_parquet_and_jsonl_by_key_and_time(tmp_path: Path) -> None:
    frame = pd.DataFrame({"key": ["a", "b", "c"], "label": [True, False, True],
                          "event_time": pd.to_datetime(["2026-11-24T10:00:00.5Z", "2026-11-24T11:00:00Z",
                                                        "2026-11-24T12:00:00Z"], format="ISO8601")})
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "l.parquet")
    labels, rejects = read_labels(tmp_path / "l.parquet")
    assert rejects.empty and labels["label"].tolist() == [1, 0, 1]
    assert labels["event_time"].iloc[0] == pd.Timestamp("2026-11-24T10:00:00.5Z")
    assert labels["partition"].isna().all()

    (tmp_path / "l.jsonl").write_text(
        '{"key": "a", "event_time": "2026-11-24T10:00:00.5Z", "label": 1}\n'
        '{"key": 7, "event_time": 1795428000, "label": 0}\n'  # epoch seconds, a numeric key
        'not json\n[1, 2]\n'
        '{"key": "b", "event_time": "yesterday", "label": 1}\n'
        '{"partition": 2, "offset": 40, "label": "TRUE"}\n')
    labels, rejects = read_labels(tmp_path / "l.jsonl")
    assert labels["key"].tolist()[:2] == ["a", "7"] and labels["offset"].tolist()[2] == 40
    assert labels["event_time"].iloc[1] == pd.Timestamp(1795428000, unit="s", tz="UTC")
    assert sorted(rejects[["row", "reason"]].values.tolist()) == [
        ["line 3", "invalid_json"], ["line 4", "not_an_object"], ["line 5", "bad_event_time"]]


def test_topic_records_of_both_kinds_in_one_batch() -> None:
    values = [b'{"key": "a", "event_time": "2026-11-24T10:00:00Z", "label": 1}',
              b'{"partition": 1, "offset": 4, "label": 0}', b"", b'{"key": "b", "label": 1}']
    frame, kept, undecodable = records_to_frame(values, ["t@0", "t@1", "t@2", "t@3"], source="kafka:t")
    labels, rejects = parse_labels(frame, source="kafka:t", rows=kept)
    assert labels["key"].tolist()[0] == "a" and pd.isna(labels["key"].tolist()[1])
    assert labels["offset"].tolist()[1] == 4 and pd.isna(labels["event_time"].iloc[1])
    assert undecodable[["row", "reason"]].values.tolist() == [["t@2", "invalid_json"]]
    assert rejects[["row", "reason"]].values.tolist() == [["t@3", "missing_coordinates"]]


def test_a_file_with_neither_column_set_names_its_columns(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("id,when,is_fraud\n1,2,1\n")
    with pytest.raises(LabelError, match=r"\['id', 'is_fraud', 'when'\]"):
        read_labels(tmp_path / "l.csv")
    (tmp_path / "l.jsonl").write_text('{"offset": 1, "label": 1}\n')
    with pytest.raises(LabelError, match=r"\['label', 'offset'\]"):
        read_labels(tmp_path / "l.jsonl")
    with pytest.raises(LabelError, match="unknown file type '.txt'"):
        (tmp_path / "l.txt").write_text("x")
        read_labels(tmp_path / "l.txt")
    with pytest.raises(LabelError, match="not found"):
        read_labels(tmp_path / "missing.csv")


# -- the store --------------------------------------------------------------------------------------------
def test_store_keeps_the_latest_label_per_event_through_compaction(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "store", compact_min_files=3)
    t = "2026-11-24T10:00:00Z"
    assert store.add(parse_labels(pd.DataFrame({"partition": [0, 0], "offset": [1, 2], "label": [0, 0]})).labels) == 2
    assert store.add(parse_labels(pd.DataFrame({"key": ["a"], "event_time": [t], "label": [1]})).labels) == 1
    assert len(store.files()) == 2
    # the third file triggers a compaction: one file, superseded labels gone
    store.add(parse_labels(pd.DataFrame({"partition": [0], "offset": [1], "label": [1],
                                         "key": [None], "event_time": [None]})).labels)
    assert len(store.files()) == 1 and store.count_rows() == 3
    store.add(parse_labels(pd.DataFrame({"key": ["a", "a"], "event_time": [t, t], "label": [1, 0]})).labels)
    got = store.read()
    assert len(got) == 3 and store.count_rows() == 5
    assert got.loc[got["key"] == "a", "label"].tolist() == [0]  # the last row of the last add wins
    assert got.loc[got["offset"] == 1, "label"].tolist() == [1]
    assert got["seq"].is_monotonic_increasing


def test_store_rejects_frames_without_the_label_columns(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match=r"missing \['key', 'event_time'\]"):
        LabelStore(tmp_path).add(pd.DataFrame({"partition": [0], "offset": [1], "label": [1]}))


# -- the join and the metrics -----------------------------------------------------------------------------
def test_join_by_offset_and_by_key_and_time_and_count_unmatched(lake: tuple[Path, pd.DataFrame]) -> None:
    root, rows = lake
    half = rows.iloc[::2]
    other = rows.iloc[1::2]
    labels = pd.concat([
        parse_labels(pd.DataFrame({"partition": half["kafka_partition"], "offset": half["kafka_offset"],
                                   "label": half["label"]})).labels,
        parse_labels(pd.DataFrame({"key": other["datapoint_id"], "event_time": other["event_time"],
                                   "label": other["label"]})).labels,
        parse_labels(pd.DataFrame({"partition": [0, 5], "offset": [10_000, 0], "label": [1, 0]})).labels,
        parse_labels(pd.DataFrame({"key": ["dp1"], "event_time": ["2020-01-01T00:00:00Z"], "label": [1]})).labels,
    ], ignore_index=True)
    result = _join(root, labels)
    assert len(result.matched) == EVENTS and len(result.unmatched) == 3 and result.superseded == 0
    expect = rows.sort_values(["kafka_partition", "kafka_offset"]).reset_index(drop=True)
    got = result.matched
    assert got[["kafka_partition", "kafka_offset", "model_version", "label"]].values.tolist() == \
        expect[["kafka_partition", "kafka_offset", "model_version", "label"]].values.tolist()
    np.testing.assert_array_equal(got["score"].to_numpy(), expect["score"].to_numpy())
    assert (got["datapoint_id"] == expect["datapoint_id"]).all()
    assert (got["event_time"] == expect["event_time"]).all()
    assert sorted(result.unmatched["offset"].dropna().tolist()) == [0, 10_000]


def test_an_event_labelled_both_ways_keeps_its_latest_label(lake: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, rows = lake
    row = rows.iloc[3]
    store = LabelStore(tmp_path / "store")
    store.add(parse_labels(pd.DataFrame({"partition": [row["kafka_partition"]], "offset": [row["kafka_offset"]],
                                         "label": [1]})).labels)
    store.add(parse_labels(pd.DataFrame({"key": [row["datapoint_id"]], "event_time": [row["event_time"]],
                                         "label": [0]})).labels)
    result = _join(root, store.read())
    assert result.matched["label"].tolist() == [0] and result.superseded == 1 and result.unmatched.empty


def test_key_and_time_match_a_lake_written_in_nanoseconds(tmp_path: Path) -> None:
    times = pd.to_datetime(["2026-11-24T10:00:00.123456789Z", "2026-11-24T10:00:01Z"], format="ISO8601")
    frame = pd.DataFrame({"datapoint_id": ["a", "a"], "event_time": times.astype("datetime64[ns, UTC]"),
                          "score": [0.2, 0.9], "threshold": 0.5, "is_anomaly": [False, True],
                          "model_version": "v1", "kafka_partition": 0, "kafka_offset": [0, 1]})
    LakeWriter(tmp_path, time_field="event_time").write(frame)
    labels = parse_labels(pd.DataFrame({"key": ["a", "a"], "label": [0, 1],
                                        "event_time": ["2026-11-24T10:00:00.123456Z", "2026-11-24T10:00:01Z"]}))
    assert _join(tmp_path, labels.labels).matched["kafka_offset"].tolist() == [0, 1]


def test_without_a_key_field_only_offset_labels_match(lake: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, rows = lake
    labels = pd.concat([parse_labels(pd.DataFrame({"partition": [0], "offset": [3], "label": [1]})).labels,
                        parse_labels(pd.DataFrame({"key": ["dp0"], "event_time": [rows["event_time"].iloc[0]],
                                                   "label": [1]})).labels], ignore_index=True)
    result = join_predictions(root, labels, key_field=None, time_field="event_time")
    assert result.matched["kafka_offset"].tolist() == [3] and result.unmatched["key"].tolist() == ["dp0"]
    assert "datapoint_id" not in result.matched.columns
    bare = tmp_path / "bare"
    LakeWriter(bare, time_field="event_time").write(rows[["event_time", "kafka_partition", "kafka_offset"]])
    with pytest.raises(LabelError, match=r"lacks the columns \['score', 'is_anomaly', 'model_version'\]"):
        join_predictions(bare, labels, key_field="datapoint_id", time_field="event_time")


def test_metrics_per_version_equal_sklearn_on_the_same_rows(lake: tuple[Path, pd.DataFrame]) -> None:
    root, rows = lake
    labels = parse_labels(pd.DataFrame({"partition": rows["kafka_partition"], "offset": rows["kafka_offset"],
                                        "label": rows["label"]})).labels
    metrics = metrics_by_version(_join(root, labels).matched)
    assert set(metrics) == {"v1", "v2", "all"}
    for version, part in (("v1", rows[rows["model_version"] == "v1"]), ("v2", rows[rows["model_version"] == "v2"]),
                          ("all", rows)):
        y, s, flagged = part["label"], part["score"], part["is_anomaly"]
        m = metrics[version]
        assert m["n"] == len(part) and m["positives"] == int(y.sum()) and m["flagged"] == int(flagged.sum())
        assert m["precision"] == pytest.approx(precision_score(y, flagged))
        assert m["recall"] == pytest.approx(recall_score(y, flagged))
        assert m["ap"] == pytest.approx(average_precision_score(y, s))
        assert m["auc"] == pytest.approx(roc_auc_score(y, s))
        assert 0.6 < m["auc"] < 1.0  # the fixture's scores are informative but imperfect


def test_one_class_leaves_ap_and_auc_undefined() -> None:
    joined = pd.DataFrame({"model_version": ["v1"] * 3 + ["v2"] * 2, "label": [0, 0, 0, 1, 1],
                           "score": [0.1, 0.7, 0.2, 0.9, 0.3], "is_anomaly": [False, True, False, True, False]})
    m = metrics_by_version(joined)
    assert m["v1"]["ap"] is None and m["v1"]["auc"] is None and m["v1"]["recall"] is None
    assert m["v1"]["precision"] == 0.0
    assert m["v2"]["ap"] is None and m["v2"]["recall"] == 0.5 and m["v2"]["precision"] == 1.0
    assert m["all"]["auc"] == pytest.approx(roc_auc_score(joined["label"], joined["score"]))
    empty = metrics_by_version(joined.iloc[:0])
    assert empty == {"all": {"n": 0, "positives": 0, "flagged": 0, "precision": None, "recall": None,
                             "ap": None, "auc": None}}


def test_only_manifest_listed_files_and_the_given_days_are_read(lake: tuple[Path, pd.DataFrame]) -> None:
    root, rows = lake
    day = sorted(root.glob("date=*"))[0]
    stray = rows.iloc[:1].assign(kafka_partition=9, kafka_offset=0)
    pq.write_table(pa.Table.from_pandas(stray, preserve_index=False),
                   day / "part-p9-00000000000000000000-00000000000000000000.parquet")  # not in the manifest
    labels = parse_labels(pd.DataFrame({"partition": [9, *rows["kafka_partition"]],
                                        "offset": [0, *rows["kafka_offset"]], "label": 1})).labels
    assert len(_join(root, labels).matched) == EVENTS
    first_day = dt.date.fromisoformat(day.name.removeprefix("date="))
    on_first = (rows["event_time"].dt.date == first_day).sum()
    assert 0 < len(_join(root, labels, days=[first_day]).matched) == on_first < EVENTS


def test_update_and_read_metrics(lake: tuple[Path, pd.DataFrame]) -> None:
    root, rows = lake
    cfg = _cfg(root)
    assert read_metrics(cfg.labels_path) is None
    LabelStore(cfg.labels_path).add(parse_labels(pd.DataFrame({
        "partition": [*rows["kafka_partition"], 3], "offset": [*rows["kafka_offset"], 3],
        "label": [*rows["label"], 1]})).labels)
    doc = update_metrics(cfg)
    assert (doc["labels"], doc["matched"], doc["unmatched"]) == (EVENTS + 1, EVENTS, 1)
    assert read_metrics(cfg.labels_path / "metrics.json") == json.loads(json.dumps(doc)) == read_metrics(cfg.labels_path)
    assert doc["versions"]["v2"]["n"] == (rows["model_version"] == "v2").sum()
    (cfg.labels_path / "metrics.json").write_text("[]")
    with pytest.raises(LabelError, match="not a metrics document"):
        read_metrics(cfg.labels_path)


# -- the command ------------------------------------------------------------------------------------------
def test_cli_ingest_and_metrics(lake: tuple[Path, pd.DataFrame], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    root, rows = lake
    path = tmp_path / "labels.csv"
    pd.DataFrame({"key": rows["datapoint_id"], "event_time": rows["event_time"].map(lambda t: t.isoformat()),
                  "label": rows["label"]}).to_csv(path, index=False)
    with path.open("a") as fh:
        fh.write("dp1,never,1\n")
    assert main(["labels", "ingest", "--file", str(path), "--lake", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["stored"], out["rejected"], out["reasons"]) == (EVENTS, 1, {"bad_event_time": 1})
    assert out["metrics"]["matched"] == EVENTS
    assert out["metrics"]["versions"]["all"]["auc"] == pytest.approx(roc_auc_score(rows["label"], rows["score"]))
    assert len(LabelStore(_cfg(root).labels_path).read_rejects()) == 1

    assert main(["labels", "metrics", "--lake", str(root)]) == 0
    text = capsys.readouterr().out
    assert f"matched {EVENTS}" in text and "v1" in text and "v2" in text

    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["labels", "ingest", "--file", str(tmp_path / "bad.csv"), "--lake", str(root)]) == 2
    assert "it has ['a', 'b']" in capsys.readouterr().err
    (tmp_path / "all_bad.csv").write_text("partition,offset,label\n0,1,2\n")
    assert main(["labels", "ingest", "--file", str(tmp_path / "all_bad.csv"), "--lake", str(root)]) == 1
