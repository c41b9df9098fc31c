"""`retrain`, `report` and `replay` unchanged against an existing cluster: a real `dask scheduler` and two
`dask worker` processes (the `scheduler` fixture), the lake and registry on a filesystem every worker sees."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from engine.config import load
from engine.synthetic import scored_day_with_champion, station_day
from streams.lake import read_lake
from training.current import read_current
from training.detector import Detector
from training.features import FeatureBuilder

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DAY = dt.date(2026, 11, 24)


def cli(*args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_retrain_report_replay_on_a_scheduler_with_two_workers(scheduler: str, tmp_path: Path, seed: int) -> None:
    cfg = load(REPO / "configs" / "demo.yaml", environ={}, overrides={
        "lake": {"path": str(tmp_path / "lake")}, "model": {"save_dir": str(tmp_path / "models")},
        "retrain": {"shadow_events": 0, "sample_rows": 8_192}, "cluster": {"scheduler": scheduler}})
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
    frame = station_day(DAY, 30_000, seed=seed, partitions=4)
    scored_day_with_champion(cfg, frame, rows=3_000)

    result = cli("retrain", "--config", str(path), "--date", DAY.isoformat(), "--json")
    assert result["status"] == "promoted" and result["rows"] == len(frame) and result["partitions"] == 4
    assert read_current(cfg.registry)["version"] == result["version"]

    report = cli("report", "--config", str(path), "--from", DAY.isoformat(), "--by", "station_id",
                 "--format", "json")
    rows = report if isinstance(report, list) else report["rows"]
    assert sum(r["events"] for r in rows) == len(frame)
    alarms = frame.groupby("station_id")["isActive"].sum().astype(int).to_dict()
    assert {r["station_id"]: r["alarms"] for r in rows} == alarms

    out = tmp_path / "replayed"
    done = cli("replay", "--config", str(path), "--from", DAY.isoformat(), "--out", str(out), "--json")
    assert done["rows"] == len(frame) and done["model_version"] == result["version"]
    replayed = read_lake(out)
    assert len(replayed) == len(frame) and (replayed["model_version"] == result["version"]).all()
    # the same feature and scoring code as the stream: recompute one partition here and compare exactly
    det = Detector.load(cfg.registry / result["version"])
    part = replayed[replayed["kafka_partition"] == 0].sort_values("kafka_offset").reset_index(drop=True)
    original = frame[frame["_partition"] == 0].sort_values("_offset").reset_index(drop=True)
    feats = FeatureBuilder(cfg.features, cfg.schema).compute(original)
    np.testing.assert_array_equal(part["score"].to_numpy(), det.score(feats.X))
    assert (part["is_anomaly"].to_numpy() == ((det.score(feats.X) > det.threshold) & feats.warm)).all()
