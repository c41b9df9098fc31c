"""`isostream demo --seconds N --no-browser` as a user runs it: a real process tree, exit 0, a complete lake."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from streams.broker import free_port
from streams.lake import read_lake

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_for_n_seconds_and_lake_holds_every_event(tmp_path: Path) -> None:
    port = free_port()
    env = dict(
        os.environ,
        ISOSTREAM__LAKE__PATH=str(tmp_path / "lake"),
        ISOSTREAM__MODEL__SAVE_DIR=str(tmp_path / "models"),
        ISOSTREAM__KAFKA__DEAD_LETTER_DIR=str(tmp_path / "dead"),
        ISOSTREAM__DASHBOARD__PORT=str(port),
        ISOSTREAM__CLUSTER__DASHBOARD_ADDRESS="127.0.0.1:0",
    )
    cmd = [sys.executable, "-m", "engine.cli", "demo", "--config", str(REPO / "configs" / "demo.yaml"),
           "--seconds", "12", "--rate", "1500", "--no-browser"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pages: list[int] = []

    def probe() -> None:  # the dashboard answers while the demo runs
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not pages:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    pages.append(resp.status)
            except OSError:
                time.sleep(0.5)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    out, _ = proc.communicate(timeout=300)
    prober.join(timeout=5)
    assert proc.returncode == 0, out
    assert "demo done" in out
    assert pages == [200], out
    found = re.search(r"produced ([\d,]+), scored ([\d,]+), lake rows ([\d,]+)", out)
    assert found, out
    produced, scored, rows = (int(g.replace(",", "")) for g in found.groups())
    lake = read_lake(tmp_path / "lake")
    assert produced > 10_000
    assert produced == scored == rows == len(lake)
    assert not lake.duplicated(["kafka_partition", "kafka_offset"]).any()


def test_ctrl_c_drains_and_stops_every_process(tmp_path: Path) -> None:
    """`make demo` runs until Ctrl-C: one SIGINT stops producing, drains, checks the lake and ends the broker."""
    env = dict(
        os.environ,
        ISOSTREAM__LAKE__PATH=str(tmp_path / "lake"),
        ISOSTREAM__MODEL__SAVE_DIR=str(tmp_path / "models"),
        ISOSTREAM__KAFKA__DEAD_LETTER_DIR=str(tmp_path / "dead"),
        ISOSTREAM__CLUSTER__DASHBOARD_ADDRESS="127.0.0.1:0",
    )
    cmd = [sys.executable, "-m", "engine.cli", "demo", "--config", str(REPO / "configs" / "demo.yaml"),
           "--rate", "1000", "--no-browser", "--no-dashboard"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until events are being scored
            line = proc.stdout.readline()
            lines.append(line)
            if re.match(r"events\s+[1-9]", line):
                break
        broker = re.search(r"broker.* on (127\.0\.0\.1):(\d+)", "".join(lines))
        assert broker, "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + out
    assert proc.returncode == 0, out
    assert "demo done" in out
    with pytest.raises(OSError):  # the broker it started is gone
        socket.create_connection((broker.group(1), int(broker.group(2))), timeout=2).close()
