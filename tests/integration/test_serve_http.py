"""``isostream serve`` for real: the CLI runs uvicorn in its own process; a client posts without pause while a
new model version is promoted, and not one request fails while the answers move to the new version."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from engine.config import Config, load
from streams.decode import Decoder
from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.jsonl import to_json_lines
from streams.records import RawBatch
from training.current import set_current
from training.detector import Detector
from training.features import FeatureBuilder

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fit_and_publish(cfg: Config, seed: int) -> str:
    """Fit on the rows of warm keys (as the engine's coordinator does), save, promote."""
    events = StationAlarmGenerator(GeneratorSettings(seed=seed)).next_chunk(12_000)
    frame = Decoder(cfg.schema).decode(RawBatch.from_values(to_json_lines(events))).frame
    fb = FeatureBuilder(cfg.features, cfg.schema)
    feats = fb.compute(frame)
    det = Detector.fit(feats.X[feats.warm], fb.names, n_trees=50, seed=seed, online=None, builder="numba")
    det.save(cfg.registry / det.version)
    set_current(cfg.registry, det.version, action="promote", reason="integration test")
    return det.version


@pytest.fixture
def server(tmp_path: Path, seed: int) -> Iterator[tuple[str, Config, str, subprocess.Popen[bytes]]]:
    registry = tmp_path / "models"
    cfg = load(overrides={"model": {"save_dir": str(registry)}}, environ={})
    first = _fit_and_publish(cfg, seed)
    port = _free_port()
    env = {**os.environ, "ISOSTREAM__SERVE__RELOAD_POLL_S": "0.1"}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--registry", str(registry),
                             "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        _wait(up, 60.0, "the server to answer /health")
        yield url, cfg, first, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_promoting_a_version_while_a_client_posts_fails_no_request(
        server: tuple[str, Config, str, subprocess.Popen[bytes]], seed: int) -> None:
    url, cfg, first, proc = server
    gen = StationAlarmGenerator(GeneratorSettings(seed=seed + 1))
    bodies = [b"[" + b",".join(to_json_lines(gen.next_chunk(20))) + b"]" for _ in range(200)]
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def post() -> None:
        with httpx.Client(base_url=url, timeout=10.0) as client:  # one keep-alive connection
            i = 0
            while not stop.is_set():
                try:
                    reply = client.post("/score", content=bodies[i % len(bodies)])
                except httpx.HTTPError as err:
                    failures.append(f"request {i}: {type(err).__name__}: {err}")
                    continue
                finally:
                    i += 1
                if reply.status_code != 200:
                    failures.append(f"request {i}: HTTP {reply.status_code}: {reply.text[:200]}")
                    continue
                seen = {r["model_version"] for r in reply.json()}
                if len(seen) != 1:
                    failures.append(f"request {i}: one request scored by {sorted(seen)}")
                versions.append(seen.pop())

    poster = threading.Thread(target=post, daemon=True)
    poster.start()
    try:
        _wait(lambda: len(versions) >= 20, 30.0, "20 answers from the first version")
        second = _fit_and_publish(cfg, seed + 2)
        assert second != first
        _wait(lambda: second in versions, 30.0, f"answers from the promoted version {second}")
        after = versions.index(second)
        _wait(lambda: len(versions) >= after + 20, 30.0, "20 more answers")
    finally:
        stop.set()
        poster.join(timeout=15)
    assert failures == []
    assert versions[0] == first
    switch = versions.index(second)
    assert set(versions[:switch]) == {first} and set(versions[switch:]) == {second}  # no way back
    health = httpx.get(f"{url}/health").json()
    assert health["model_version"] == second and health["events_scored"] == 20 * len(versions)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
