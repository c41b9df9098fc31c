"""The nightly retrain on a real in-process Dask cluster: integration of trees, idempotence, refusals, gate,
shadow, registry commands."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.metrics import roc_auc_score

from engine import models_cmd
from engine.batch_jobs import retrain_job
from engine.config import Config, load
from engine.nightly import ShadowJudge
from engine.synthetic import scored_day_with_champion, station_day
from streams.lake import close_day
from training import retrain
from training.current import history, read_current, read_shadow, set_current
from training.detector import Detector
from training.registry import list_versions

DAY = dt.date(2026, 11, 24)
N = 40_000


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def config(tmp: Path, **retrain_over: object) -> Config:
    fields = load(environ={}).schema.model_dump()["fields"]
    return load("configs/demo.yaml", environ={}, overrides={
        "schema": {"fields": [*fields, {"name": "label", "type": "int", "required": False, "default": 0}]},
        "lake": {"path": str(tmp / "lake")}, "model": {"save_dir": str(tmp / "models")},
        "retrain": {"shadow_events": 0, "label_field": "label", "sample_rows": 8_192, **retrain_over}})


@pytest.fixture
def day1(tmp_path: Path, seed: int) -> tuple[Config, Detector]:
    cfg = config(tmp_path)
    frame = station_day(DAY, N, seed=seed)
    champion = scored_day_with_champion(cfg, frame)
    return cfg, champion


def test_retrain_keeps_the_youngest_trees_and_replaces_the_oldest(day1: tuple[Config, Detector],
                                                                   client: Client) -> None:
    cfg, champion = day1
    result = retrain.run(retrain_job(cfg, DAY), client)
    assert result.status == "promoted", result.reason
    cand = Detector.load(cfg.registry / result.version)
    meta = json.loads((cfg.registry / result.version / "meta.json").read_text())
    assert meta["kind"] == "retrain" and meta["parent"] == champion.version and meta["data_dates"] == [DAY.isoformat()]
    lineage = meta["lineage"]
    assert lineage["kept_trees"] == 50 and lineage["new_trees"] == 50 and lineage["rows"] == result.rows
    replaced = set(lineage["replaced_slots"])
    oldest = {(champion.renewal.next_tree + i) % champion.forest.n_trees for i in range(50)}
    assert replaced == oldest
    old_trees, new_trees = champion.forest.trees(), cand.forest.trees()
    for i in range(champion.forest.n_trees):
        same = all(np.array_equal(old_trees[i][k], new_trees[i][k]) for k in old_trees[i])
        assert same == (i not in replaced), f"tree {i}"
    # calibrated on the day: about contamination of the warm rows alert, as live
    assert abs(result.metrics["candidate_alert_rate"] - cfg.model.contamination) < 0.004
    assert result.metrics["candidate_auc"] is not None and result.metrics["candidate_auc"] > 0.9
    assert read_current(cfg.registry)["version"] == result.version
    assert [h["action"] for h in history(cfg.registry)] == ["registered", "promote"]


def test_the_same_date_again_adds_no_version_unless_forced(day1: tuple[Config, Detector], client: Client) -> None:
    cfg, _ = day1
    first = retrain.run(retrain_job(cfg, DAY), client)
    before = list_versions(cfg.registry)
    again = retrain.run(retrain_job(cfg, DAY), client)
    assert again.status == "exists" and again.version == first.version
    assert list_versions(cfg.registry) == before
    forced = retrain.run(retrain_job(cfg, DAY, force=True), client)
    assert forced.version not in {p.name for p in before} and len(list_versions(cfg.registry)) == len(before) + 1


def test_a_rerun_on_the_same_champion_gives_the_same_model(day1: tuple[Config, Detector], client: Client,
                                                             tmp_path: Path) -> None:
    cfg, champion = day1
    a = retrain.run(retrain_job(cfg, DAY), client)
    set_current(cfg.registry, champion.version)  # the same champion again
    b = retrain.run(retrain_job(cfg, DAY, force=True), client)
    da, db = Detector.load(cfg.registry / a.version), Detector.load(cfg.registry / b.version)
    for k, v in da.forest.arrays().items():
        assert np.array_equal(v, db.forest.arrays()[k]), k
    assert da.threshold == db.threshold and a.metrics == b.metrics


def test_a_day_not_closed_is_refused_unless_forced(tmp_path: Path, seed: int, client: Client) -> None:
    cfg = config(tmp_path)
    frame = station_day(DAY, 10_000, seed=seed)
    scored_day_with_champion(cfg, frame, rows=2_000, close=False)
    with pytest.raises(retrain.RetrainError, match="not closed"):
        retrain.run(retrain_job(cfg, DAY), client)
    assert retrain.run(retrain_job(cfg, DAY, force=True), client).version is not None
    close_day(cfg.lake.path, DAY)


def test_a_date_without_data_is_a_clear_error(tmp_path: Path, client: Client) -> None:
    cfg = config(tmp_path)
    with pytest.raises(retrain.RetrainError, match="no data for 2026-11-23"):
        retrain.run(retrain_job(cfg, dt.date(2026, 11, 23)), client)


def test_a_second_run_waits_for_the_lock(day1: tuple[Config, Detector], client: Client) -> None:
    cfg, _ = day1
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with retrain.retrain_lock(cfg.registry, "test"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(retrain.RetrainError, match="another retrain holds"):
            retrain.run(retrain_job(cfg, DAY), client)
    finally:
        release.set()
        t.join()


def test_the_gate_refuses_and_keeps_the_champion(tmp_path: Path, seed: int, client: Client) -> None:
    cfg = config(tmp_path, label_field=None, gate_min_agreement=1.0)
    frame = station_day(DAY, N, seed=seed)
    champion = scored_day_with_champion(cfg, frame)
    result = retrain.run(retrain_job(cfg, DAY), client)
    assert result.status == "refused" and "agreement" in result.reason
    assert read_current(cfg.registry)["version"] == champion.version
    assert history(cfg.registry)[-1]["action"] == "refused"


def test_binned_auc_matches_scikit_learn(day1: tuple[Config, Detector], client: Client) -> None:
    from streams.lake_days import read_day
    from training.batch import partition_features, score_partition
    from training.binned import roc_auc

    cfg, champion = day1
    day = read_day(cfg.lake.path, DAY)
    rows = [partition_features(str(cfg.lake.path), paths, p, cfg.features, cfg.schema, "label")
            for p, paths in day.partitions.items()]
    warm = np.concatenate([r.warm for r in rows])  # keys past their warm-up: the only ones that can alert
    s = np.concatenate([champion.score(r.X) for r in rows])[warm]
    y = np.concatenate([r.label for r in rows])[warm]
    total = sum((score_partition(r, champion) for r in rows[1:]), score_partition(rows[0], champion))
    assert roc_auc(total.cand_pos, total.cand_neg) == pytest.approx(roc_auc_score(y, s), abs=2e-3)


def test_shadow_then_judged_on_live_counts(tmp_path: Path, seed: int, client: Client) -> None:
    cfg = config(tmp_path, shadow_events=1_000, label_field=None)
    frame = station_day(DAY, N, seed=seed)
    champion = scored_day_with_champion(cfg, frame)
    result = retrain.run(retrain_job(cfg, DAY), client)
    assert result.status == "shadowing" and read_shadow(cfg.registry)["version"] == result.version
    judge = ShadowJudge(cfg)
    assert judge.check({result.version: [500, 500, 5, 5]}) is None  # the period is not over
    assert read_current(cfg.registry)["version"] == champion.version
    decision = judge.check({result.version: [1_000, 995, 10, 9]})
    assert decision is not None and decision.promote, decision
    assert read_current(cfg.registry)["version"] == result.version and read_shadow(cfg.registry) is None


def test_shadow_with_poor_agreement_is_refused(tmp_path: Path, seed: int, client: Client) -> None:
    cfg = config(tmp_path, shadow_events=1_000, label_field=None)
    frame = station_day(DAY, N, seed=seed)
    champion = scored_day_with_champion(cfg, frame)
    result = retrain.run(retrain_job(cfg, DAY), client)
    decision = ShadowJudge(cfg).check({result.version: [1_000, 900, 100, 10]})
    assert decision is not None and not decision.promote and "agreement 0.900" in decision.reason
    assert read_current(cfg.registry)["version"] == champion.version
    assert history(cfg.registry)[-1]["action"] == "refused"


def test_models_promote_and_rollback(day1: tuple[Config, Detector], client: Client) -> None:
    cfg, champion = day1
    result = retrain.run(retrain_job(cfg, DAY), client)  # promoted by the gate
    listing = models_cmd.list_models(cfg)
    live = [v["version"] for v in listing["versions"] if v["live"]]
    assert live == [result.version]
    back = models_cmd.rollback(cfg, notify=False)
    assert back["version"] == champion.version and back["previous"] == result.version
    assert read_current(cfg.registry)["version"] == champion.version
    again = models_cmd.promote(cfg, result.version, notify=False)
    assert again["version"] == result.version and history(cfg.registry)[-1]["action"] == "promote"
    with pytest.raises(models_cmd.ModelsError, match="no version 'nope'"):
        models_cmd.promote(cfg, "nope", notify=False)
    shown = models_cmd.show(cfg, "current")
    assert shown["meta"]["lineage"]["kept_trees"] == 50


def test_the_lake_is_read_through_a_url(day1: tuple[Config, Detector], client: Client) -> None:
    cfg, _ = day1
    url = config(cfg.lake.path.parent, label_field="label")
    url = load("configs/demo.yaml", environ={}, overrides={**url.model_dump(mode="json", by_alias=True),
                                                           "lake": {"path": str(cfg.lake.path),
                                                                    "read_url": cfg.lake.path.as_uri()}})
    assert url.lake_url.startswith("file://")
    result = retrain.run(retrain_job(url, DAY), client)
    assert result.status == "promoted" and result.rows > 0
    assert json.loads((cfg.registry / result.version / "meta.json").read_text())["lineage"]["lake"] == url.lake_url


def test_late_labels_from_the_store_join_the_evaluation(tmp_path: Path, seed: int, client: Client) -> None:
    from training.label_store import LabelStore
    from training.labels import parse_labels

    cfg = config(tmp_path, label_field=None)
    frame = station_day(DAY, N, seed=seed)
    scored_day_with_champion(cfg, frame)
    labelled = frame.sample(n=10_000, random_state=0)  # a desk confirms a part of the day, late
    store = LabelStore(cfg.labels_path)
    store.add(parse_labels(labelled.rename(columns={"_partition": "partition", "_offset": "offset"})
                           [["partition", "offset", "label"]]).labels)
    result = retrain.run(retrain_job(cfg, DAY), client)
    meta = json.loads((cfg.registry / result.version / "meta.json").read_text())
    assert meta["lineage"]["stored_labels"] == 10_000
    assert 0 < result.metrics["labelled_rows"] <= 10_000
    assert result.metrics["labelled_anomalies"] > 0 and result.metrics["candidate_auc"] is not None
    assert "labels" in result.reason  # the gate decided on them


def test_models_list_prints_whole_versions_and_json(day1: tuple[Config, Detector], client: Client,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    cfg, champion = day1
    result = retrain.run(retrain_job(cfg, DAY), client)
    assert main(["models", "list", "--registry", str(cfg.registry)]) == 0
    text = capsys.readouterr().err
    assert result.version in text and champion.version in text and "live" in text and DAY.isoformat() in text
    assert main(["models", "list", "--registry", str(cfg.registry), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in doc["versions"] if v["live"]] == [result.version]
    assert [h["action"] for h in doc["history"]] == ["registered", "promote"]


def test_models_carry_live_label_metrics_per_version(tmp_path: Path, seed: int) -> None:
    from training.label_metrics import update_metrics
    from training.label_store import LabelStore
    from training.labels import parse_labels

    cfg = config(tmp_path, label_field=None)
    frame = station_day(DAY, N, seed=seed)
    champion = scored_day_with_champion(cfg, frame)
    confirmed = frame.sample(n=5_000, random_state=0).rename(columns={"_partition": "partition",
                                                                     "_offset": "offset"})
    LabelStore(cfg.labels_path).add(parse_labels(confirmed[["partition", "offset", "label"]]).labels)
    update_metrics(cfg)
    listing = models_cmd.list_models(cfg)
    live = {v["version"]: v["live_labels"] for v in listing["versions"]}
    assert live[champion.version]["n"] == 5_000 and live[champion.version]["auc"] is not None
    assert listing["live_labels_all"]["n"] == 5_000
