"""The evaluation library function and CLI on small generated files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.evaluate import EvaluateError, configure_parser, evaluate, load_frame, main, run


def _frame(seed: int, n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    frame["label"] = 0
    idx = rng.choice(n, 40, replace=False)
    frame.loc[idx, "a"] += 7.0
    frame.loc[idx, "label"] = 1
    frame["host"] = "h1"  # non-numeric: skipped, and reported
    return frame


@pytest.mark.parametrize("mode", ["batch", "stream"])
def test_evaluate_modes(seed: int, mode: str) -> None:
    r = evaluate(_frame(seed), "label", mode, n_trees=40, batch_size=500, seed=seed)
    assert r["mode"] == mode and r["rows"] == 4000 and r["features"] == 3 and r["anomalies"] == 40
    assert r["roc_auc"] > 0.97 and r["average_precision"] > 0.5
    assert r["events_per_s"] > 0 and r["wall_s"] > 0
    assert r["skipped_columns"] == ["host"]
    assert 0 < r["alert_rate"] < 0.05 and r["recall_at_threshold"] > 0.5


def test_cli_writes_json_for_csv_and_parquet(tmp_path: Path, seed: int, capsys: pytest.CaptureFixture) -> None:
    frame = _frame(seed)
    for path in (tmp_path / "d.csv", tmp_path / "d.parquet"):
        frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)
        out = tmp_path / f"{path.stem}{path.suffix}.json"
        rc = main(["--data", str(path), "--label", "label", "--mode", "stream", "--json", str(out),
                   "--batch-size", "1000", "--n-trees", "30", "--no-progress"])
        assert rc == 0
        doc = json.loads(out.read_text())
        assert doc["roc_auc"] > 0.95 and doc["data"] == str(path)
    printed = capsys.readouterr().out
    assert "roc_auc" in printed and "events_per_s" in printed


def test_parser_is_wireable() -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    args = p.parse_args(["--data", "x.csv", "--label", "y"])
    assert args.mode == "batch" and args.batch_size == 1000 and args.json is None


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns="label"), "label column 'label' not found"),
    (lambda f: f.assign(label=0), "one class only"),
    (lambda f: f.assign(label=2), "only 0 .normal. and 1"),
    (lambda f: f[["label", "host"]], "no numeric feature columns"),
])
def test_bad_data_is_a_clear_error(seed: int, change, message: str) -> None:
    with pytest.raises(EvaluateError, match=message):
        evaluate(change(_frame(seed)), "label")


def test_cli_exit_code_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    assert run(p.parse_args(["--data", str(tmp_path / "missing.csv")])) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(EvaluateError, match="unknown file type"):
        load_frame(tmp_path / "d.xlsx")
