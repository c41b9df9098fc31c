from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "produce", "generate", "demo", "dashboard", "evaluate"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["run", "produce", "generate", "demo", "dashboard", "evaluate"])
def test_each_command_has_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: isostream " + cmd in capsys.readouterr().out


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lake:\n  pth: x\n")
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--config", str(bad)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "lake.pth" in proc.stderr


def test_generate_writes_labelled_file(tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "ev.parquet"
    assert main(["generate", "--events", "2000", "--out", str(out), "--seed", "4"]) == 0
    frame = pd.read_parquet(out)
    assert len(frame) == 2000 and frame["label"].sum() > 0


def test_parser_builds_without_side_effects() -> None:
    assert build_parser().prog == "isostream"
