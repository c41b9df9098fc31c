"""The driver's nightly parts on their own: end of day on the committed watermark, and the rate trigger's
reports (a real in-process Dask cluster; the retrain itself is replaced by a recorder here, it has its own
tests)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster

from engine.config import Config, load
from engine.nightly import EndOfDay, ReportTrigger
from engine.synthetic import fit_champion, station_days, write_scored_day
from streams.lake import read_manifest

D1, D2 = dt.date(2026, 11, 24), dt.date(2026, 11, 25)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture
def two_days(tmp_path: Path, seed: int) -> tuple[Config, list[Any]]:
    cfg = load("configs/demo.yaml", environ={}, overrides={
        "lake": {"path": str(tmp_path / "lake")}, "model": {"save_dir": str(tmp_path / "models")}})
    days = station_days(D1, 2, 8_000, seed=seed, partitions=2)
    det = fit_champion(cfg, days[0], rows=1_000)
    for frame in days:
        write_scored_day(cfg, frame, det, close=False)
    return cfg, days


def ms(day: dt.date, seconds: float = 0.0) -> float:
    return (dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).timestamp() + seconds) * 1000.0


def test_end_of_day_closes_what_the_watermark_passed_and_retrains_it_once(two_days: tuple[Config, Any],
                                                                         client: Client) -> None:
    cfg, _ = two_days
    ran: list[dt.date] = []
    done = threading.Event()

    class Result:
        status, version, reason = "registered", "v", ""

        def to_json(self) -> dict[str, Any]:
            return {"status": self.status}

    def run(job: Any, _client: Any) -> Result:
        ran.append(job.day)
        done.set()
        return Result()

    eod = EndOfDay(cfg, client, run=run)
    assert eod.observe(None) == [] and eod.observe(ms(D1, 3_600)) == []  # day 1 still running: nothing closes
    assert not read_manifest(cfg.lake.path / f"date={D1}").get("closed")
    assert eod.observe(ms(D2, 5)) == [D1]  # the committed watermark passed midnight
    assert read_manifest(cfg.lake.path / f"date={D1}")["closed"] is True
    assert not read_manifest(cfg.lake.path / f"date={D2}").get("closed")
    assert done.wait(10) and ran == [D1]
    assert eod.observe(ms(D2, 60)) == []  # the same day again: nothing more
    eod.close(timeout_s=5)
    assert eod.results and eod.results[0]["status"] == "registered"
    # a restarted engine finds day 1 closed already and does not retrain it again
    again = EndOfDay(cfg, client, run=run)
    assert again.observe(ms(D2, 120)) == []
    assert ran == [D1]


def test_cron_trigger_only_closes_the_day(two_days: tuple[Config, Any], client: Client) -> None:
    cfg, _ = two_days
    cron = cfg.model_copy(update={"retrain": cfg.retrain.model_copy(update={"trigger": "cron"})})
    ran: list[Any] = []
    eod = EndOfDay(cron, client, run=lambda job, c: ran.append(job))
    assert eod.observe(ms(D2, 5)) == [D1]
    time.sleep(0.5)
    assert ran == [] and read_manifest(cfg.lake.path / f"date={D1}")["closed"] is True


def test_a_window_alert_publishes_its_key_report_once_per_period(two_days: tuple[Config, Any],
                                                                client: Client) -> None:
    cfg, days = two_days
    published: list[tuple[bytes, bytes]] = []
    got = threading.Event()

    def publish(value: bytes, key: bytes) -> None:
        published.append((value, key))
        got.set()

    trigger = ReportTrigger(cfg, client, publish)
    key = str(days[0]["datapoint_id"].iloc[0])
    assert trigger.submit(key, ms(D1, 3_600))
    assert not trigger.submit(key, ms(D1, 7_200))  # the same key and day: one report
    assert got.wait(30), f"no report published ({trigger.failed} failed)"
    doc = json.loads(published[0][0])
    assert published[0][1] == key.encode() and doc["kind"] == "report" and doc["key"] == key
    assert doc["period"] == "day" and doc["period_start"] == D1.isoformat()
    mine = days[0][days[0]["datapoint_id"] == key]
    assert doc["events"] == len(mine) and doc["alarms"] == int(mine["isActive"].sum())
