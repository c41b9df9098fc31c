"""The REST scoring API in-process (FastAPI's TestClient): answers, validation, limits, model swaps, the key."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import cli, serve
from engine.config import Config, load
from engine.serve_app import create_app
from engine.serve_scoring import ScoringService, ServeError, split_events
from streams.decode import Decoder
from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.jsonl import to_json_lines
from streams.lake import LakeWriter
from streams.records import RawBatch
from streams.schema import STATION_ALARM
from training.current import set_current
from training.detector import Detector
from training.features import FeatureBuilder

WARMUP = 8
FIELDS = {"score", "threshold", "is_anomaly", "warm", "model_version", "attributions"}


def _events(seed: int, n: int) -> pd.DataFrame:
    """Events of 8 keys: each warms up within a few hundred events."""
    return StationAlarmGenerator(GeneratorSettings(seed=seed, n_stations=2, datapoints_per_station=4)).next_chunk(n)


def _config(registry: Path, **over: Any) -> Config:
    base: dict[str, Any] = {"model": {"save_dir": str(registry)}, "features": {"warmup_events": WARMUP},
                            "serve": {"reload_poll_s": 0.05, "max_batch": 500}}
    for section, values in over.items():
        base.setdefault(section, {}).update(values)
    return load(overrides=base, environ={})


def _fit(cfg: Config, seed: int) -> Detector:
    """A detector fitted on the feature layer's features of warm keys' events (as the engine fits one)."""
    frame = Decoder(cfg.schema).decode(RawBatch.from_values(to_json_lines(_events(seed, 3_000)))).frame
    fb = FeatureBuilder(cfg.features, cfg.schema)
    feats = fb.compute(frame)
    return Detector.fit(feats.X[feats.warm], fb.names, n_trees=40, seed=seed, online=None, builder="numba")


def _publish(cfg: Config, det: Detector, action: str = "promote") -> str:
    det.save(cfg.registry / det.version)
    set_current(cfg.registry, det.version, action=action, reason="test")
    return det.version


def _body(frame: pd.DataFrame) -> bytes:
    return b"[" + b",".join(to_json_lines(frame)) + b"]"


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return _config(tmp_path / "models")


@pytest.fixture
def det(cfg: Config, seed: int) -> Detector:
    det = _fit(cfg, seed)
    _publish(cfg, det)
    return det


@pytest.fixture
def client(cfg: Config, det: Detector) -> TestClient:
    return TestClient(create_app(cfg))


# -- answers ---------------------------------------------------------------------------------------------------
def test_one_event_gets_one_object_and_a_list_gets_a_list(client: TestClient, det: Detector, seed: int) -> None:
    lines = to_json_lines(_events(seed + 1, 5))
    one = client.post("/score", content=lines[0])
    assert one.status_code == 200, one.text
    doc = one.json()
    assert isinstance(doc, dict) and set(doc) == FIELDS
    assert doc["model_version"] == det.version == one.headers["X-Model-Version"]
    assert 0.0 < doc["score"] <= 1.0 and doc["threshold"] == pytest.approx(det.threshold)
    many = client.post("/score", content=b"[" + b",".join(lines[1:]) + b"]")
    assert many.status_code == 200, many.text
    docs = many.json()
    assert isinstance(docs, list) and len(docs) == 4 and all(set(d) == FIELDS for d in docs)
    assert client.post("/score", content=b" [ ] ").json() == []


def test_scores_equal_the_stream_chain_whatever_the_request_sizes(client: TestClient, cfg: Config,
                                                                  det: Detector, seed: int) -> None:
    frame = _events(seed + 2, 400)
    # the stream: one batch through decode -> features -> score
    decoded = Decoder(cfg.schema).decode(RawBatch.from_values(to_json_lines(frame))).frame
    feats = FeatureBuilder(cfg.features, cfg.schema).compute(decoded)
    want = det.score(feats.X)
    want_flag = (want > det.threshold) & feats.warm
    got: list[dict[str, Any]] = []
    bounds = [0, 1, 8, 108, 300, 400]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        reply = client.post("/score", content=_body(frame.iloc[a:b]))
        assert reply.status_code == 200, reply.text
        got += reply.json()
    np.testing.assert_allclose([g["score"] for g in got], want, rtol=0, atol=1e-12)
    assert [g["warm"] for g in got] == feats.warm.tolist()
    assert [g["is_anomaly"] for g in got] == want_flag.tolist()
    assert not feats.warm[:WARMUP].any() and feats.warm[-10:].all()


def test_a_cold_key_is_never_an_anomaly_and_a_warm_outlier_is_flagged_and_explained(
        client: TestClient, det: Detector, seed: int) -> None:
    frame = _events(seed + 3, 200)
    outlier = frame.iloc[[0]].assign(value=1e7)
    cold = client.post("/score", content=to_json_lines(outlier)[0]).json()
    assert cold["warm"] is False and cold["is_anomaly"] is False
    assert client.post("/score", content=_body(frame)).status_code == 200  # every key warms up
    late = outlier.assign(event_time=frame["event_time"].iloc[-1] + pd.Timedelta(seconds=1))
    hot = client.post("/score", content=to_json_lines(late)[0]).json()
    assert hot["warm"] is True and hot["is_anomaly"] is True and hot["score"] > hot["threshold"]
    shares = hot["attributions"]
    assert shares and set(shares) <= set(det.feature_names)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    normal = client.post("/score", content=_body(frame.iloc[-3:])).json()
    assert [r["attributions"] for r in normal if not r["is_anomaly"]] == [None] * sum(
        not r["is_anomaly"] for r in normal)
    every = client.post("/score?explain=all", content=_body(frame.iloc[-3:])).json()
    assert all(r["attributions"] for r in every)
    assert client.post("/score?explain=some", content=b"{}").status_code == 422  # FastAPI's own check


# -- validation and limits -------------------------------------------------------------------------------------
def test_invalid_events_are_422_with_one_reason_each_and_move_no_baseline(cfg: Config, det: Detector,
                                                                         seed: int) -> None:
    frame = _events(seed + 4, 60)
    good = to_json_lines(frame)
    doc = json.loads(good[1])
    bad = [good[0], json.dumps({k: v for k, v in doc.items() if k != "value"}).encode(), b'{oops: 1}',
           json.dumps({**doc, "value": "high"}).encode(), json.dumps({**doc, "event_time": "soon"}).encode(), b"7"]
    hit = TestClient(create_app(cfg))
    reply = hit.post("/score", content=b"[" + b",".join(bad) + b"]")
    assert reply.status_code == 422
    body = reply.json()
    assert "5 of 6 events are invalid" in body["detail"]
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [
        (1, "missing_field"), (2, "invalid_json"), (3, "wrong_type"), (4, "bad_timestamp"), (5, "invalid_json")]
    assert "'value'" in body["errors"][0]["detail"]
    # the rejected request left no trace: both servers now score the same events identically
    fresh = TestClient(create_app(cfg))
    after = [c.post("/score", content=_body(frame)).json() for c in (hit, fresh)]
    assert after[0] == after[1]
    assert hit.get("/health").json()["events_scored"] == len(frame)


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"", 400, "empty body"),
    (b"  \n", 400, "empty body"),
    (b"hello", 400, "not a JSON object or a JSON list"),
    (b'[{"a": 1}', 400, "not a JSON object or a JSON list"),
    (b'[{"a": "x]', 400, "string is not closed"),
    (b'[{"a": 1}}]', 400, "brackets do not balance"),
])
def test_bodies_that_are_not_events_are_400(client: TestClient, body: bytes, status: int, words: str) -> None:
    reply = client.post("/score", content=body)
    assert reply.status_code == status and words in reply.json()["detail"]


def test_more_events_than_max_batch_is_413(client: TestClient, cfg: Config, seed: int) -> None:
    frame = _events(seed + 5, cfg.serve.max_batch + 1)
    reply = client.post("/score", content=_body(frame))
    assert reply.status_code == 413 and "serve.max_batch allows 500" in reply.json()["detail"]
    assert client.post("/score", content=_body(frame.iloc[:-1])).status_code == 200


def test_a_body_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path, seed: int) -> None:
    small = _config(tmp_path / "models", serve={"max_batch": 2}, schema={**STATION_ALARM.model_dump(mode="json"), "max_message_bytes": 300})
    _publish(small, _fit(small, seed))
    reply = TestClient(create_app(small)).post("/score", content=b"[" + b" " * 2_000 + b"]")
    assert reply.status_code == 413 and "body over 604 bytes" in reply.json()["detail"]


# -- models ------------------------------------------------------------------------------------------------------
def test_no_model_is_503_until_one_is_published(cfg: Config, seed: int) -> None:
    client = TestClient(create_app(cfg))
    reply = client.post("/score", content=to_json_lines(_events(seed, 1))[0])
    assert reply.status_code == 503 and "no model to score with" in reply.json()["detail"]
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "no_model"
    version = _publish(cfg, _fit(cfg, seed))
    service: ScoringService = client.app.state.service  # type: ignore[attr-defined]
    assert service.refresh()
    reply = client.post("/score", content=to_json_lines(_events(seed, 1))[0])
    assert reply.status_code == 200 and reply.json()["model_version"] == version
    assert client.get("/health").json()["status"] == "ok"


def test_the_poller_swaps_to_a_promoted_version_and_refuses_an_incompatible_one(
        cfg: Config, det: Detector, seed: int) -> None:
    line = to_json_lines(_events(seed, 1))[0]
    with TestClient(create_app(cfg)) as client:  # the lifespan runs the registry poller
        assert client.post("/score", content=line).json()["model_version"] == det.version
        second = _fit(cfg, seed + 100)
        assert second.version != det.version
        _publish(cfg, second)
        _wait(lambda: client.post("/score", content=line).json()["model_version"] == second.version, 10.0,
              "the poller to swap to the promoted version")
        rng = np.random.default_rng(seed)
        other = Detector.fit(rng.normal(size=(500, 3)), ["a", "b", "c"], n_trees=10, online=None,
                             builder="numba")
        _publish(cfg, other)
        _wait(lambda: client.get("/health").json()["models_refused"] == 1, 10.0, "the poller to refuse it")
        health = client.get("/health").json()
        assert health["model_version"] == second.version
        assert f"model {other.version} refused" in health["last_error"]
        assert client.post("/score", content=line).json()["model_version"] == second.version


def test_models_lists_versions_the_pointer_and_the_history(client: TestClient, cfg: Config, det: Detector,
                                                           seed: int) -> None:
    second = _fit(cfg, seed + 7)
    _publish(cfg, second, action="rollback")
    doc = client.get("/models").json()
    assert doc["serving"] == det.version  # not refreshed yet
    assert doc["current"]["version"] == second.version
    assert {v["version"] for v in doc["versions"]} == {det.version, second.version}
    assert [(h["action"], h["version"]) for h in doc["history"]] == [("promote", det.version),
                                                                      ("rollback", second.version)]


# -- the API key -----------------------------------------------------------------------------------------------
def test_the_api_key_guards_every_route_but_health(tmp_path: Path, seed: int) -> None:
    keyed = _config(tmp_path / "models", serve={"api_key": "s3cret-key"})
    _publish(keyed, _fit(keyed, seed))
    client = TestClient(create_app(keyed))
    line = to_json_lines(_events(seed, 1))[0]
    missing = client.post("/score", content=line)
    assert missing.status_code == 401 and "missing X-API-Key" in missing.json()["detail"]
    wrong = client.post("/score", content=line, headers={"X-API-Key": "s3cret-kez"})
    assert wrong.status_code == 401 and "wrong X-API-Key" in wrong.json()["detail"]
    for path in ("/models", "/reports?from=2026-01-01&to=2026-01-02", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 401, path
    assert client.get("/health").status_code == 200
    assert client.post("/score", content=line, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert client.get("/models", headers={"X-API-Key": "s3cret-key"}).status_code == 200


def test_an_open_host_without_a_key_is_warned_about(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    assert serve.exposure_warning(_config(registry)) is None
    warning = serve.exposure_warning(_config(registry, serve={"host": "0.0.0.0"}))
    assert warning is not None and "0.0.0.0:8000 WITHOUT an API key" in warning
    assert serve.exposure_warning(_config(registry, serve={"host": "0.0.0.0", "api_key": "k"})) is None


def test_the_cli_has_a_serve_command() -> None:
    args = cli.build_parser().parse_args(["serve", "--port", "9001", "--host", "0.0.0.0", "--registry", "r"])
    assert args.func is serve.run and (args.port, args.host, str(args.registry)) == (9001, "0.0.0.0", "r")


# -- reports -----------------------------------------------------------------------------------------------------
def test_reports_count_the_lake_and_name_bad_queries(tmp_path: Path, seed: int) -> None:
    start = dt.datetime(2026, 11, 24, 12, tzinfo=dt.timezone.utc)
    frame = StationAlarmGenerator(GeneratorSettings(seed=seed, start=start, events_per_second=0.02)).next_chunk(
        4_000).drop(columns="label")
    frame = frame.assign(is_anomaly=np.arange(len(frame)) % 50 == 0, kafka_partition=0,
                         kafka_offset=np.arange(len(frame)))
    LakeWriter(tmp_path / "lake", time_field="event_time").write(frame)
    cfg = _config(tmp_path / "models", lake={"path": str(tmp_path / "lake")}, windows={"alarm_field": "isActive"})
    client = TestClient(create_app(cfg))
    reply = client.get("/reports", params={"from": "2026-11-24", "to": "2026-11-30", "by": "station_id",
                                           "period": "week"})
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert doc["alarm_field"] == "isActive" and doc["by"] == ["station_id"]
    rows = doc["rows"]
    days = frame["event_time"].dt.date
    inside = frame[(days >= dt.date(2026, 11, 24)) & (days <= dt.date(2026, 11, 30))]
    assert sum(r["events"] for r in rows) == len(inside)
    assert sum(r["anomalies"] for r in rows) == int(inside["is_anomaly"].sum())
    assert sum(r["alarms"] for r in rows) == int(inside["isActive"].sum())
    assert {r["station_id"] for r in rows} == set(inside["station_id"])
    bad = client.get("/reports", params={"from": "2026-11-24", "to": "2026-11-30", "period": "year"})
    assert bad.status_code == 400 and "unknown period 'year'" in bad.json()["detail"]
    assert client.get("/reports", params={"from": "24.11.2026", "to": "2026-11-30"}).status_code == 400
    empty = client.get("/reports", params={"from": "2020-01-01", "to": "2020-01-31"})
    assert empty.status_code == 404 and "no events" in empty.json()["detail"]
    assert client.get("/reports", params={"to": "2026-11-30"}).status_code == 422  # from is required


# -- the list splitter -------------------------------------------------------------------------------------------
tricky = st.text(st.sampled_from(list('ab,[]{}"\\\n\r\t :é')), max_size=12)
json_docs = st.dictionaries(tricky, st.one_of(tricky, st.integers(-(10**30), 10**30), st.booleans(),
                                              st.lists(tricky, max_size=3)), max_size=4)


@settings(max_examples=150, deadline=None)
@given(st.lists(json_docs, max_size=12), st.sampled_from([None, 2]), st.booleans())
def test_the_splitter_cuts_any_list_of_objects_into_its_exact_events(docs: list[dict[str, Any]],
                                                                      indent: int | None, ascii_only: bool) -> None:
    body = json.dumps(docs, indent=indent, ensure_ascii=ascii_only).encode()
    values, many = split_events(body, 100)
    assert many is True
    assert [json.loads(v) for v in values] == docs
    assert all(b"\n" not in v and b"\r" not in v for v in values)  # the decoder's bulk parse frames by lines
    if indent is None:
        assert values == [json.dumps(d, ensure_ascii=ascii_only).encode() for d in docs]


def test_the_splitter_keeps_bad_events_whole_for_the_decoder() -> None:
    values, _ = split_events(b'[{"a": 1}, {oops}, , 12345678901234567890123]', 10)
    assert values == [b'{"a": 1}', b"{oops}", b"", b"12345678901234567890123"]
    with pytest.raises(ServeError) as err:
        split_events(b"[1, 2, 3]", 2)
    assert err.value.status == 413
