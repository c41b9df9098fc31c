"""The dashboard benchmark's pure parts: statistics, the status and collector documents, rows and the JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from benchmarks._dashboard_measures import (
    CPU_GOAL,
    LATENCY_GOAL,
    MISSED_GOAL,
    UPDATES_GOAL,
    BenchError,
    Goal,
    PageRow,
    cpu_pct,
    frames_per_s,
    goal_row,
    growth,
    parse_drain,
    parse_status,
    print_table,
    quantiles,
    seq_stats,
    slope_per_min,
)
from benchmarks.dashboard import (
    Settings,
    Viewer,
    dashboard_command,
    in_window,
    log_errors,
    main,
    viewer_rates,
    write_config,
)

STATUS: dict[str, Any] = {"sessions": {"live": 3, "created": 9, "destroyed": 6, "loaded": 3}, "tick_ms": 100,
                          "ticks": 1234, "missed_updates": 2, "rss_bytes": 150_000_000, "cpu_s": 12.5}


# -- statistics ------------------------------------------------------------------------------------------
def test_quantiles_ignore_non_finite_values_and_match_numpy(seed: int) -> None:
    values = np.random.default_rng(seed).exponential(200.0, 1_000)
    q = quantiles([*values.tolist(), math.nan, math.inf])
    assert q["n"] == 1_000
    assert q["p95"] == pytest.approx(float(np.percentile(values, 95)))
    assert q["max"] == pytest.approx(float(values.max()))
    assert quantiles([]) == {"p50": None, "p95": None, "p99": None, "max": None, "n": 0.0}


def test_slope_per_min_recovers_a_noisy_line(seed: int) -> None:
    t = np.arange(0.0, 600.0, 5.0)  # ten minutes sampled every 5 s
    v = 100.0 + 0.5 * t / 60.0 + np.random.default_rng(seed).normal(0, 0.05, len(t))
    slope = slope_per_min(t.tolist(), v.tolist())
    assert slope == pytest.approx(0.5, abs=0.01)
    assert slope_per_min([0.0, 1.0, 2.0], [5.0, 5.0, 5.0]) == pytest.approx(0.0)
    assert slope_per_min([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]) is None  # no time span: no slope
    with pytest.raises(BenchError, match="3 values over 2 times"):
        slope_per_min([0.0, 1.0], [1.0, 2.0, 3.0])


def test_growth_compares_the_means_of_both_ends() -> None:
    flat_with_spike = [100.0] * 19 + [180.0]  # one sample caught mid-allocation at the end
    assert growth(flat_with_spike) == pytest.approx(40.0)  # k = 2: (100 + 180) / 2 - 100
    assert growth([100.0] * 50 + [101.0] * 50) == pytest.approx(1.0)
    assert growth([100.0, 90.0]) == pytest.approx(-10.0)  # shrinking is reported as such
    assert growth([]) is None


def test_seq_stats_counts_distinct_ticks_and_gaps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ticks = np.arange(1_000, 1_500)
    seen = ticks[rng.random(len(ticks)) > 0.1]  # about a tenth missed
    repeated = np.concatenate([seen, seen[:50]])  # a row seen twice counts once
    distinct, missed = seq_stats(rng.permutation(repeated).tolist())
    assert distinct == len(seen)
    assert missed == (seen[-1] - seen[0] + 1) - len(seen)
    assert seq_stats([7]) == (1, 0)


def test_frames_per_s_counts_pictures_not_rows() -> None:
    # ten ticks that came together and were drawn on one frame are one picture; an unpainted row counts at arrival
    together = [PageRow(s, 5_000.0, 5_020.0, None, None) for s in range(10)]
    apart = [PageRow(10 + i, 6_000.0 + 100 * i, 6_016.0 + 100 * i, None, None) for i in range(5)]
    unpainted = [PageRow(20, 7_000.0, None, None, None)]
    assert frames_per_s(together, 2.0) == 0.5
    assert frames_per_s(together + apart + unpainted, 2.0) == 3.5
    assert frames_per_s(apart, 0.0) == 0.0


def test_cpu_pct_is_share_of_one_core() -> None:
    assert cpu_pct(0.0, 30.0, 0.0, 60.0) == pytest.approx(50.0)
    assert cpu_pct(0.0, 120.0, 0.0, 60.0) == pytest.approx(200.0)  # two busy cores
    assert cpu_pct(1.0, 2.0, 5.0, 5.0) is None


# -- goals and rows --------------------------------------------------------------------------------------
def test_goals_compare_in_their_own_direction() -> None:
    assert UPDATES_GOAL.met(10.0) is True and UPDATES_GOAL.met(9.99) is False
    assert CPU_GOAL.met(30.0) is True and CPU_GOAL.met(30.1) is False
    assert MISSED_GOAL.met(0.0) is True and MISSED_GOAL.met(1.0) is False
    assert LATENCY_GOAL.met(math.nan) is None
    with pytest.raises(BenchError, match="'<' is not one of"):
        Goal("<", 1.0, "bad").met(0.5)


def test_goal_row_says_measured_goal_and_met_or_why_not() -> None:
    r = goal_row("dashboard_cpu_pct_viewers", 45.0, "% of a core", CPU_GOAL, viewers=10)
    assert (r["value"], r["goal"], r["met"], r["viewers"]) == (45.0, CPU_GOAL.text, False, 10)
    assert r["ratio"] == pytest.approx(1.5)
    missing = goal_row("data_to_screen_p95_ms", None, "ms", LATENCY_GOAL, why_missing="no rows")
    assert (missing["value"], missing["met"], missing["why_missing"], missing["ratio"]) == (None, None, "no rows", None)
    plain = goal_row("server_rss_mb_idle", float("nan"), "MB")
    assert plain["value"] is None and "goal" not in plain and "met" not in plain


def test_print_table_shows_met_missed_and_not_measured(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([goal_row("a", 12.0, "updates/s", UPDATES_GOAL), goal_row("b", 9.0, "updates/s", UPDATES_GOAL),
                 goal_row("c", None, "ms", LATENCY_GOAL, why_missing="no source"), goal_row("d", 3.0, "MB")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].rstrip().endswith(" met") and "MISSED" in lines[1]
    assert "not measured" in lines[2] and "(no source)" in lines[2]
    assert "3.00" in lines[3] and "met" not in lines[3].lower().split("mb", 1)[1]


# -- documents -------------------------------------------------------------------------------------------
def test_parse_status_reads_the_contract() -> None:
    s = parse_status({**STATUS, "extra": "ignored"})  # later fields do not break the benchmark
    assert (s.live, s.created, s.destroyed, s.loaded) == (3, 9, 6, 3)
    assert (s.tick_ms, s.ticks, s.missed_updates, s.rss_bytes, s.cpu_s) == (100, 1234, 2, 150_000_000, 12.5)
    assert parse_status({**STATUS, "cpu_s": 3}).cpu_s == 3.0  # an int is a fine float
    assert s.held_updates is None and s.update_delay_p95_ms is None  # beyond the contract: absent is fine
    more = parse_status({**STATUS, "held_updates": 7, "update_delay_ms": {"n": 9, "p50": 3.5, "p95": 41.0}})
    assert (more.held_updates, more.update_delay_p95_ms) == (7, 41.0)
    assert parse_status({**STATUS, "update_delay_ms": {"n": 0, "p95": None}}).update_delay_p95_ms is None
    feed = parse_status({**STATUS, "feed": {"delay_ms": {"n": 4, "p95": 120.5}, "handler_ms": {"n": 4, "p95": 9.0},
                                            "records": 8_000}})
    assert (feed.feed_delay_p95_ms, feed.feed_handler_p95_ms, feed.feed_records) == (120.5, 9.0, 8_000)
    assert s.feed_records is None
    assert parse_status({**STATUS, "feed": None}).feed_delay_p95_ms is None  # a server without a feed
    page = {"path": "/", "updates": 40, "since_update_s": 0.1, "pending_s": None, "behind": 3}
    assert parse_status({**STATUS, "pages": [page, "not a page"]}).pages == (page,)  # diagnostic: kept as sent
    assert s.pages is None
    with pytest.raises(BenchError, match="feed.delay_ms"):
        parse_status({**STATUS, "feed": {"delay_ms": {"p95": -1}}})
    with pytest.raises(BenchError, match="feed.records is 1.5"):
        parse_status({**STATUS, "feed": {"records": 1.5}})


@pytest.mark.parametrize(("doc", "message"), [
    ([], "expected an object, got list"),
    ({**STATUS, "sessions": None}, "'sessions' is None"),
    ({**STATUS, "sessions": {"live": 1, "created": 1, "destroyed": 0}}, "sessions has no 'loaded'"),
    ({**STATUS, "sessions": {**STATUS["sessions"], "live": -1}}, "sessions.live is -1"),
    ({**STATUS, "sessions": {**STATUS["sessions"], "live": True}}, "sessions.live is True"),
    ({**STATUS, "ticks": 1.5}, "status.ticks is 1.5, not a non-negative int"),
    ({k: v for k, v in STATUS.items() if k != "missed_updates"}, "status has no 'missed_updates'"),
    ({**STATUS, "cpu_s": "1.0"}, "status.cpu_s is '1.0'"),
])
def test_parse_status_rejects_bad_documents_by_name(doc: Any, message: str) -> None:
    with pytest.raises(BenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_status(doc)


def test_parse_drain_reads_rows_and_first_plot() -> None:
    d = parse_drain({"start": 40, "rows": [[5, 1_000.0, 1_012.0, 700.0, 950.0], [6, 1_100.0, None, None, 1_050.0]],
                     "found_ms": 800.0, "rendered_ms": 640.0, "gaps": 2, "resets": 0, "errors": ["x"]})
    first, second = d.rows
    assert (first.seq, first.screen_ms, first.kafka_ts_ms, first.t_ms) == (5, 1_012.0, 700.0, 950.0)  # painted
    assert (second.painted_ms, second.kafka_ts_ms, second.screen_ms) == (None, None, 1_100.0)  # no frame: arrival
    assert (d.start, d.gaps, d.errors, d.first_plot_ms) == (40, 2, ["x"], 800.0)  # later of timeline and render
    assert parse_drain({"rows": [], "found_ms": 800.0, "rendered_ms": None}).first_plot_ms is None
    assert d.visible is None  # an older collector's document: unknown, not hidden
    assert parse_drain({"rows": [], "visible": False}).visible is False
    phased = parse_drain({"rows": [], "phases": {"response_start_ms": 40.0, "doc_received_ms": 700,
                                                 "document_ms": 900, "found_ms": None}})
    assert phased.phases["response_start_ms"] == 40.0 and phased.phases["document_ms"] == 900.0
    assert phased.phases["doc_received_ms"] == 700.0 and phased.phases["socket_open_ms"] is None
    assert phased.phases["found_ms"] is None and phased.phases["load_ms"] is None
    with pytest.raises(BenchError, match=r"phases\.load_ms"):
        parse_drain({"rows": [], "phases": {"load_ms": "soon"}})


@pytest.mark.parametrize(("doc", "message"), [
    (None, "expected"),
    ({"rows": "nope"}, "expected"),
    ({"rows": [[1, 2.0, 3.0]]}, r"row 0 is \[1, 2.0, 3.0\], not \[seq"),
    ({"rows": [[None, 2.0, None, None, None]]}, "seq and arrival time are required"),
    ({"rows": [[1, 2.0, "soon", None, None]]}, "row 0 painted is 'soon'"),
    ({"rows": [], "found_ms": "early"}, "found_ms is 'early'"),
    ({"rows": [], "start": "0"}, "start is '0'"),
])
def test_parse_drain_rejects_bad_documents(doc: Any, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        parse_drain(doc)


# -- the run's inputs and outputs ------------------------------------------------------------------------
def _settings(**over: Any) -> Settings:
    base: dict[str, Any] = dict(quick=True, viewers=10, rate=2_000.0, duration_s=120.0, tick_ms=100, probes=3,
                                idle_s=15.0, warmup_s=10.0, engine_workers=1, partitions=2, drill_http=4,
                                drill_early=4, drill_loaded=3, drill_deadline_s=90.0, seed=0, chromium=None)
    return Settings(**{**base, **over})


def test_write_config_points_everything_at_the_run(tmp_path: Path) -> None:
    path, facts = write_config(tmp_path, "127.0.0.1:19092", 5123, _settings(tick_ms=250, engine_workers=2))
    doc = yaml.safe_load(path.read_text())
    assert doc["kafka"]["bootstrap"] == "127.0.0.1:19092" and doc["kafka"]["input_topic"] == "dash-events"
    assert set(facts["topics"].values()) == set(doc["kafka"]["topics"].values())
    assert all(name.startswith("dash-") for name in facts["topics"].values())
    assert doc["lake"]["path"] == str(tmp_path / "lake") and doc["model"]["save_dir"] == str(tmp_path / "models")
    assert doc["dashboard"]["port"] == 5123 and doc["cluster"]["n_workers"] == 2
    key = facts["tick_key"].split(".", 1)[1]
    assert key in ("tick_ms", "refresh_ms") and doc["dashboard"][key] == 250
    assert doc["retrain"]["trigger"] == "cron"
    assert doc["schema"] == yaml.safe_load((Path(__file__).parents[2] / "configs" / "demo.yaml").read_text())["schema"]


def test_dashboard_command_fills_placeholders(tmp_path: Path) -> None:
    default = dashboard_command(None, tmp_path / "c.yaml", 1)
    assert default[1:] == ["-m", "engine.cli", "dashboard", "--config", str(tmp_path / "c.yaml"), "--no-browser"]
    assert dashboard_command("panel serve app.py --port {port}", Path("c"), 77) == [
        "panel", "serve", "app.py", "--port", "77"]
    with pytest.raises(BenchError, match="--dashboard-command.*placeholders"):
        dashboard_command("serve --at {host}", Path("c"), 77)


def test_without_chromium_it_skips_with_a_row_saying_why(tmp_path: Path) -> None:
    out = tmp_path / "dashboard.json"
    assert main(["--quick", "--chromium", str(tmp_path / "no-chromium"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "dashboard" and doc["settings"]["quick"] is True
    assert doc["settings"]["duration_s"] == 120.0 and doc["settings"]["viewers"] == 10
    assert doc["settings"]["browser_priority"] == "user"  # what a run's figures were measured under
    assert doc["settings"]["floor_s"] == 60.0  # a quick run measures its floor too
    [r] = doc["results"]
    assert r["skipped"] is True and r["value"] is None and "no-chromium" in r["reason"]


def test_bad_arguments_are_refused_by_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--viewers", "0", "--out", str(tmp_path / "x.json")])
    assert exit_.value.code == 2 and "--viewers must be at least 1, not 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--rate", "-5", "--out", str(tmp_path / "x.json")])
    assert "--rate and --duration-s must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--browser-priority", "high", "--out", str(tmp_path / "x.json")])
    assert "--browser-priority: invalid choice: 'high'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--floor-s", "-1", "--out", str(tmp_path / "x.json")])
    assert "--floor-s must be 0 or more, not -1.0" in capsys.readouterr().err


def test_parse_status_reads_the_extras_when_a_server_reports_them() -> None:
    doc = {**STATUS, "sessions": {**STATUS["sessions"], "ticking": 2}, "late_ticks": 4, "coalesced_updates": 7,
           "update_errors": 0}
    s = parse_status(doc)
    assert (s.late_ticks, s.coalesced_updates, s.update_errors, s.ticking) == (4, 7, 0, 2)
    assert parse_status(STATUS).late_ticks is None  # the contract alone is enough
    with pytest.raises(BenchError, match="status.late_ticks is -4"):
        parse_status({**doc, "late_ticks": -4})


def test_parse_status_reads_the_heap_trimmer() -> None:
    trim = {"available": True, "every_s": 60.0, "trims": 3, "released_mb": 12.5, "trim_ms": {"p95": 4.0}}
    s = parse_status({**STATUS, "heap_trim": trim})
    assert (s.heap_trims, s.heap_trim_released_mb) == (3, 12.5)
    assert parse_status(STATUS).heap_trims is None
    with pytest.raises(BenchError, match="heap_trim.released_mb is -1"):
        parse_status({**STATUS, "heap_trim": {**trim, "released_mb": -1}})


def _drain(start: int, seqs: list[int]) -> dict[str, Any]:
    return {"start": start, "rows": [[q, 1_000.0 + q, None, None, None] for q in seqs], "found_ms": 1.0,
            "rendered_ms": 2.0}


def test_a_viewer_counts_each_row_once_when_a_late_reply_repeats_some() -> None:
    v = Viewer(tab=None, label="v")  # type: ignore[arg-type]  # take() never talks to the tab
    v.take(_drain(0, [10, 11, 12]))
    assert v.ack == 3
    v.take(_drain(3, [13]))
    v.take(_drain(2, [12, 13, 14]))  # a round given up on, answered after the next: rows 2 and 3 again
    assert [r.seq for r in v.rows] == [10, 11, 12, 13, 14] and v.ack == 5
    v.take(_drain(5, []))  # nothing new
    assert v.ack == 5 and len(v.rows) == 5 and v.first_plot_ms == 2.0


def test_log_errors_keeps_each_error_with_its_traceback() -> None:
    log = "\n".join([
        "2026-12-01 21:57:22,700 INFO bokeh.server: ok",
        "2026-12-01 21:57:22,768 ERROR dashboards.broadcast: dashboard: page update failed",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in update',
        "RuntimeError: boom",
        "2026-12-01 21:57:23,000 INFO bokeh.server: ok again",
        "a continuation of an INFO record, not kept",
        "2026-12-01 21:57:24,000 ERROR tornado.application: Uncaught exception GET /ws",
    ])
    got = log_errors(log)
    assert got["count"] == 2
    assert got["first"][0].splitlines()[-1] == "RuntimeError: boom"
    assert got["first"][1].endswith("GET /ws")
    assert log_errors(log, keep=1)["first"] == got["first"][:1]


def test_tab_profile_is_summed_per_script_without_idle_or_query_strings() -> None:
    from benchmarks.dashboard_tab import by_script

    def node(i: int, url: str, fn: str) -> dict[str, Any]:
        return {"id": i, "callFrame": {"url": url, "functionName": fn}}

    profile = {
        "nodes": [node(1, "", "(idle)"), node(2, "http://h:1/static/js/bokeh.min.js?v=abc", "require"),
                  node(3, "http://h:1/static/js/bokeh.min.js?v=abc", "define"), node(4, "", "(program)"),
                  node(5, "http://h:1/panel.min.js", "")],
        "samples": [1, 2, 3, 2, 4, 5, 1],
        "timeDeltas": [5_000, 200, 300, 400, 1_000, 250, 9_000],  # µs, one per sample
    }
    assert by_script(profile) == pytest.approx({"bokeh.min.js": 0.9, "(program)": 1.0, "panel.min.js": 0.25})


def test_tab_benchmark_without_chromium_writes_why_it_skipped(tmp_path: Path) -> None:
    from benchmarks.dashboard_tab import main

    out = tmp_path / "tab.json"
    assert main(["--chromium", str(tmp_path / "no-browser"), "--out", str(out)]) == 0
    (skipped,) = json.loads(out.read_text())["results"]
    assert skipped["skipped"] is True and "no Chromium at" in skipped["reason"] and skipped["value"] is None


# -- windows of the sampler ------------------------------------------------------------------------------
class _Tree:
    """Stands in for a process tree whose CPU seconds the test sets."""

    def __init__(self) -> None:
        self.cpu = 0.0

    def cpu_s(self) -> float:
        return self.cpu

    def rss(self) -> int:
        return 1


class _Stack:
    """What the sampler reads of the running stack: its process trees and /status.json."""

    def __init__(self) -> None:
        self.procs: dict[str, Any] = {}
        self.broker_tree = None
        self.answer: Any = None

    def check(self) -> None:
        pass

    def status(self) -> Any:
        return self.answer


def test_a_window_says_what_each_process_used_and_how_fast_the_feed_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import dashboard as bench

    clock = iter([100.0, 100.0, 110.0, 110.0, 120.0, 120.0])  # each sample reads the clock twice
    busy = iter([50.0, 60.0, 68.0])  # the machine: 100 % then 80 % over the two windows
    monkeypatch.setattr(bench, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setattr(bench, "machine_busy_s", lambda: next(busy))
    stack = _Stack()
    smp = bench.Sampler(stack, type("B", (), {"pid": None})())  # type: ignore[arg-type]
    smp.trees = {"dashboard": _Tree(), "engine": _Tree()}
    for dash, engine, records in ((1.0, 2.0, 1_000), (2.0, 6.0, 21_000), (2.5, 7.0, None)):
        smp.trees["dashboard"].cpu, smp.trees["engine"].cpu = dash, engine  # type: ignore[attr-defined]
        stack.answer = parse_status({**STATUS, "feed": {"records": records}} if records else STATUS)
        smp.mark()
    first = smp.breakdown(100.0, 110.0)
    assert first == pytest.approx({"dashboard": 10.0, "engine": 40.0, "machine": 100.0, "neighbours": 50.0})
    assert smp.feed_rate(100.0, 110.0) == pytest.approx(2_000.0)
    # a window the server did not report its feed in, or with one sample, has no rate rather than a made-up one
    assert smp.feed_rate(110.0, 120.0) is None
    assert smp.breakdown(120.0, 120.0) == {"dashboard": None, "engine": None, "machine": None, "neighbours": None}


def test_viewer_rates_count_distinct_rows_and_pictures_inside_the_window() -> None:
    rows = [PageRow(1, 900.0, 910.0, None, None),  # before the window: not counted
            PageRow(2, 1_000.0, 1_016.0, None, None), PageRow(3, 1_050.0, 1_066.0, None, None),
            PageRow(4, 1_070.0, 1_066.0 + 50, None, None), PageRow(5, 1_090.0, 1_116.0, None, None),
            PageRow(5, 1_095.0, 1_116.0, None, None)]  # a row seen twice counts once, as does its picture
    inside = in_window(rows, 1_000.0, 2_000.0)
    assert [r.seq for r in inside] == [2, 3, 4, 5, 5]
    assert viewer_rates(inside, 2.0) == (2.0, 1.5, 0)  # rows 2-5; pictures 1016, 1066, 1116
    assert viewer_rates([PageRow(s, 0.0, None, None, None) for s in (1, 2, 5)], 1.0) == (3.0, 1.0, 2)
    assert viewer_rates([], 1.0) == (0.0, 0.0, 0)
