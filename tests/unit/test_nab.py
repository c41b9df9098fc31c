"""NAB scoring (training/nab.py) on small series whose scores are worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.nab import (
    STANDARD,
    NabError,
    SeriesLabels,
    corpus_score,
    optimize_threshold,
    probation_length,
    scaled_sigmoid,
    window_rows,
)

# 100 rows: probation = floor(0.15 * 100) = 15 rows; one 10-row window at rows 40..49
LAB = SeriesLabels("s", n_rows=100, windows=((40, 49),))
MAX_TP = 2 / (1 + math.exp(-5)) - 1  # S(-1) = 0.98661


def _at(*rows: int, n: int = 100) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[list(rows)] = True
    return out


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_scaled_sigmoid_published_points() -> None:
    got = scaled_sigmoid(np.array([-1.0, -0.5, 0.0, 1.0, 2.999, 3.0, 10.0]))
    want = [0.98661, 0.84828, 0.0, -0.98661, 2 * _sig(-5 * 2.999) - 1, -1.0, -1.0]
    assert got == pytest.approx(want, abs=1e-5)


def test_probation_is_15_percent_capped_at_750_rows() -> None:
    assert [probation_length(n) for n in (100, 1000, 4032, 5000, 22695)] == [15, 150, 604, 750, 750]


def test_detection_at_window_start_earns_a_tp() -> None:
    assert corpus_score([LAB], [_at(40)]).raw == pytest.approx(STANDARD.tp)


def test_detection_at_window_end_earns_the_sigmoid_of_its_position() -> None:
    # position -(49 - 49 + 1) / 10 = -0.1: S = 2 sigmoid(0.5) - 1 = 0.244919, scaled by 1 / S(-1)
    want = (2 * _sig(0.5) - 1) / MAX_TP
    assert want == pytest.approx(0.248241, abs=1e-6)
    assert corpus_score([LAB], [_at(49)]).raw == pytest.approx(want)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    at45 = corpus_score([LAB], [_at(45)]).raw  # position -0.5: 0.84828 / 0.98661 = 0.859793
    assert at45 == pytest.approx((2 * _sig(2.5) - 1) / MAX_TP)
    assert corpus_score([LAB], [_at(45, 49)]).raw == pytest.approx(at45)
    assert corpus_score([LAB], [_at(40, 41, 45, 49)]).raw == pytest.approx(1.0)


def test_fp_right_after_a_window_costs_little() -> None:
    # missed window -A_FN, plus the FP at distance (50 - 49) / (10 - 1): 0.11 * (2 sigmoid(-5/9) - 1)
    fp = STANDARD.fp * (2 * _sig(-5 / 9) - 1)
    assert fp == pytest.approx(-0.029793, abs=1e-6)
    assert corpus_score([LAB], [_at(50)]).raw == pytest.approx(-STANDARD.fn + fp)
    # a detected window and the same FP: 1 + fp
    assert corpus_score([LAB], [_at(40, 50)]).raw == pytest.approx(1.0 + fp)


def test_fp_far_after_or_before_any_window_costs_a_fp() -> None:
    # row 49 + 3 * 9 = 76 is 3 window widths behind: S = -1
    assert corpus_score([LAB], [_at(40, 76)]).raw == pytest.approx(1.0 - STANDARD.fp)
    # row 20: after the probation, before the first window
    assert corpus_score([LAB], [_at(20, 40)]).raw == pytest.approx(1.0 - STANDARD.fp)


def test_detections_in_the_probationary_period_are_ignored() -> None:
    assert corpus_score([LAB], [_at(0, 5, 14, 40)]).raw == pytest.approx(1.0)
    assert corpus_score([LAB], [_at(15, 40)]).raw == pytest.approx(1.0 - STANDARD.fp)


def test_null_and_perfect_detectors_normalise_to_0_and_100() -> None:
    other = SeriesLabels("t", n_rows=1000, windows=((300, 339), (700, 759)))
    empty = SeriesLabels("u", n_rows=500, windows=())
    labels = [LAB, other, empty]
    null = corpus_score(labels, [np.zeros(lab.n_rows, dtype=bool) for lab in labels])
    perfect = corpus_score(labels, [lab.window_starts() for lab in labels])
    assert (null.raw, null.null, null.perfect) == pytest.approx((-3.0, -3.0, 3.0))
    assert null.normalized == pytest.approx(0.0)
    assert perfect.normalized == pytest.approx(100.0)
    assert (perfect.windows, perfect.detected_windows, perfect.false_positives) == (3, 3, 0)


def test_every_row_detected_scores_below_null() -> None:
    # all 85 scored rows: window worth 1.0; the 25 FPs before it cost 0.11 each, the 50 after a little less
    everything = corpus_score([LAB], [np.ones(100, dtype=bool)])
    assert everything.false_positives == 75
    assert everything.raw < 1.0 - 25 * STANDARD.fp


def test_optimized_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    labels = [LAB, SeriesLabels("t", n_rows=300, windows=((100, 119), (200, 229)))]
    scores = [np.round(rng.random(lab.n_rows), 2) for lab in labels]  # rounded: many ties
    scores[1][[105, 201]] = 0.995
    scores[0][3] = np.nan
    best = optimize_threshold(labels, scores)
    brute = max(corpus_score(labels, [np.nan_to_num(s, nan=-1) >= t for s in scores]).raw
                for t in np.unique(np.concatenate(scores)[~np.isnan(np.concatenate(scores))]))
    assert best.raw == pytest.approx(max(brute, best.null))
    assert best.threshold is not None
    again = corpus_score(labels, [np.nan_to_num(s, nan=-1) >= best.threshold for s in scores])
    assert again.raw == pytest.approx(best.raw)


def test_optimized_threshold_finds_the_perfect_detector() -> None:
    scores = np.full(100, 0.2)
    scores[40], scores[70] = 0.9, 0.5
    best = optimize_threshold([LAB], [scores])
    assert best.threshold == 0.9
    assert best.normalized == pytest.approx(100.0)


def test_no_useful_threshold_returns_the_null_score() -> None:
    scores = np.zeros(100)
    scores[80] = 1.0  # the only candidate is a false positive
    best = optimize_threshold([LAB], [scores])
    assert best.threshold is None
    assert best.normalized == pytest.approx(0.0)


def test_window_rows_from_timestamps() -> None:
    ts = pd.Series(pd.date_range("2014-01-01", periods=100, freq="5min").strftime("%Y-%m-%d %H:%M:%S"))
    rows = window_rows(ts, [["2014-01-01 03:20:00.000000", "2014-01-01 04:05:00.000000"]], "s")
    assert rows == ((40, 49),)
    with pytest.raises(NabError, match="holds no rows"):
        window_rows(ts, [["2015-01-01 00:00:00", "2015-01-02 00:00:00"]], "s")


def test_bad_labels_and_shapes_are_rejected_with_the_series_name() -> None:
    with pytest.raises(NabError, match="'bad'"):
        SeriesLabels("bad", n_rows=10, windows=((5, 8), (7, 9)))
    with pytest.raises(NabError, match="'s': 99 detections for 100 rows"):
        corpus_score([LAB], [np.zeros(99, dtype=bool)])
