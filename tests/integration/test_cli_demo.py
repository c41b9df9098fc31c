"""`isostream demo --seconds N --no-browser` as a user runs it: a real process tree, exit 0, a complete lake."""

from __future__ import annotations

import os
import re
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
