"""`isostream generate`, `produce --file` (CSV, Parquet, JSON lines) and `run` as a user runs them, on the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, create_topics
from streams.lake import read_lake
from tests.topics import topic_values

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo.yaml"
PER_FILE = 1_500


def _cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)


def _env(tmp_path: Path, broker: EmbeddedBroker, topic: str) -> dict[str, str]:
    prefix = topic.replace("_", "-")
    return dict(
        os.environ,
        ISOSTREAM__KAFKA__GROUP_ID=f"{prefix}-engine",
        ISOSTREAM__KAFKA__TOPICS__SCORES=f"{prefix}-scores",
        ISOSTREAM__KAFKA__TOPICS__ALERTS=f"{prefix}-alerts",
        ISOSTREAM__KAFKA__TOPICS__STATS=f"{prefix}-stats",
        ISOSTREAM__KAFKA__TOPICS__DEAD_LETTER=f"{prefix}-dead",
        ISOSTREAM__KAFKA__DEAD_LETTER_DIR=str(tmp_path / "dead"),
        ISOSTREAM__MODEL__SAVE_DIR=str(tmp_path / "models"),
        ISOSTREAM__MODEL__FIT_ON_FIRST="1000",
        ISOSTREAM__CLUSTER__N_WORKERS="1",
        ISOSTREAM__CLUSTER__DASHBOARD_ADDRESS="127.0.0.1:0",
    )


def test_generate_produce_every_format_then_run_scores_them_all(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = "cli_events"
    env = _env(tmp_path, broker, topic)
    kafka = ["--config", str(CONFIG), "--bootstrap", broker.bootstrap, "--topic", topic]
    for i, suffix in enumerate((".csv", ".parquet", ".jsonl")):
        path = tmp_path / f"events{suffix}"
        done = _cli("generate", "--events", str(PER_FILE), "--seed", str(i), "--out", str(path), env=env)
        assert done.returncode == 0, done.stderr
        assert path.stat().st_size > 0
        done = _cli("produce", *kafka, "--file", str(path), "--partitions", "2", env=env)
        assert done.returncode == 0, done.stderr
        assert f"produced {PER_FILE:,} events" in done.stderr

    values = topic_values(broker.bootstrap, topic, 2)
    assert len(values) == 3 * PER_FILE
    assert all(v.startswith(b"{") and b'"station_id"' in v for v in values)

    lake = tmp_path / "lake"
    done = _cli("run", *kafka, "--lake", str(lake), "--max-events", str(3 * PER_FILE), "--seconds", "150",
                env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    assert f"scored {3 * PER_FILE:,} events" in done.stderr
    frame = read_lake(lake)
    assert len(frame) == 3 * PER_FILE
    assert not frame.duplicated(["kafka_partition", "kafka_offset"]).any()
    assert frame["score"].between(0, 1).all()


def test_run_stops_cleanly_on_sigint(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Ctrl-C while waiting for input: the engine drains, closes its cluster and exits 0 promptly."""
    topic = "cli_idle"
    create_topics(broker.bootstrap, {topic: 1})
    env = _env(tmp_path, broker, topic)
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", "--config", str(CONFIG), "--bootstrap", broker.bootstrap,
         "--topic", topic, "--lake", str(tmp_path / "lake")],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while "dask dashboard" not in line and time.monotonic() < deadline:  # the engine is up
            line = proc.stderr.readline()
        assert "dask dashboard" in line
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "scored 0 events" in err
