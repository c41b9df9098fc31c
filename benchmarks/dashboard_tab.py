"""One new viewer's tab on a quiet machine: where its main thread goes before the first plot.

The dashboard benchmark measures a new viewer's first plot under load (2-4 s on two cores). This one measures
the same page with nothing else running, so the two together tell a tab's own work from its waiting. An
in-process server with no data feed serves the page; each tab navigates to it with a JavaScript CPU profile
running (DevTools ``Profiler``, 200 µs samples) from navigation until ``--settle-s`` after Bokeh's views exist.
The profile's samples are summed per script (``bokeh.min.js``, ``panel.min.js``, ...; ``(program)`` is
mostly compiling, ``(garbage collector)`` the GC; ``(idle)`` is left out).

Two kinds of tab, ``--tabs`` of each: *cold*, each in a fresh browser context (its own empty cache, as for
a user's first visit), and *warm*, in the browser's own context after one visit filled its cache.

Usage: ``python -m benchmarks dashboard_tab [--quick]`` -> ``benchmarks/results/dashboard_tab.json`` (about
one minute). Without Chromium it writes one row saying why it skipped, and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._browser import Browser, Tab, find_chromium, no_chromium
from benchmarks.common import finish, row, skipped

HERE = Path(__file__).resolve().parent
#: true once Bokeh has built the page's views; its value is ms since navigation started
VIEWS_JS = ("(window.Bokeh !== undefined && Bokeh.documents.length > 0 && Object.keys(Bokeh.index).length > 0)"
            " ? performance.now() : null")
SAMPLE_US = 200
SHOWN = 8  # scripts named in a row; the rest are summed as "(other)"


def log(msg: str) -> None:
    print(f"[dashboard_tab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def by_script(profile: dict[str, Any]) -> dict[str, float]:
    """Milliseconds of samples per script file (query strings dropped) or V8 pseudo-frame, idle left out."""
    where = {}
    for node in profile["nodes"]:
        frame = node["callFrame"]
        name = frame["url"].rsplit("/", 1)[-1].split("?", 1)[0]
        where[node["id"]] = name or f"({frame['functionName'].strip('()')})"
    spent: Counter[str] = Counter()
    for node_id, delta_us in zip(profile["samples"], profile["timeDeltas"], strict=True):
        spent[where[node_id]] += delta_us / 1000.0
    spent.pop("(idle)", None)
    return dict(spent)


def one_tab(tab: Tab, url: str, settle_s: float, timeout_s: float) -> tuple[float, dict[str, float], float]:
    """Load ``url`` in ``tab`` under the profiler: (ms to Bokeh's views, ms per script, JS heap MB)."""
    tab.send("Profiler.enable")
    tab.send("Profiler.setSamplingInterval", {"interval": SAMPLE_US})
    tab.send("Profiler.start")
    tab.navigate(url)
    views_ms = float(tab.wait_for(VIEWS_JS, timeout_s=timeout_s))
    time.sleep(settle_s)
    profile = tab.send("Profiler.stop")["profile"]
    heap_mb = tab.heap_used_bytes() / 1e6
    return views_ms, by_script(profile), heap_mb


def summarise(kind: str, tabs: list[tuple[float, dict[str, float], float]]) -> list[dict[str, Any]]:
    views = [t[0] for t in tabs]
    busy = [sum(t[1].values()) for t in tabs]
    medians = sorted(((n, statistics.median(t[1].get(n, 0.0) for t in tabs)) for n in {n for t in tabs for n in t[1]}),
                     key=lambda item: -item[1])
    shown = {n: round(ms, 1) for n, ms in medians[:SHOWN]}
    shown["(other)"] = round(sum(ms for _, ms in medians[SHOWN:]), 1)
    return [
        row(f"views_ms_{kind}", statistics.median(views), "ms", per_tab=[round(v) for v in views],
            note="navigation start to Bokeh's views, median"),
        row(f"main_thread_ms_{kind}", statistics.median(busy), "ms", per_tab=[round(b) for b in busy],
            by_script_median_ms=shown, note="JavaScript CPU profile from navigation until the settle time, "
                                            "idle left out, median of the tabs"),
        row(f"heap_mb_{kind}", statistics.median(t[2] for t in tabs), "MB"),
    ]


def run(chromium: str, tabs: int, path: str, settle_s: float, timeout_s: float,
        reuse_sessions: bool = True) -> list[dict[str, Any]]:
    from dashboards.app import serve
    from dashboards.hub import Hub
    from dashboards.state import LiveState
    from streams.broker import free_port

    # no feed: the page's empty states, the frameworks' cost alone. Only the clock runs (its state never starts)
    hub = Hub.build(LiveState({"bootstrap.servers": "127.0.0.1:9"}))
    hub.broadcaster.start()
    handle = serve(hub, port=free_port(), reuse_sessions=reuse_sessions)
    url = handle.url.rstrip("/") + path
    rows: list[dict[str, Any]] = []
    try:
        with Browser(chromium) as browser:
            for kind in ("cold", "warm"):
                if kind == "warm":  # one visit fills the shared cache
                    first = browser.new_tab()
                    one_tab(first, url, settle_s, timeout_s)
                    first.close()
                done = []
                for i in range(tabs):
                    tab = browser.new_tab(context=browser.new_context() if kind == "cold" else None)
                    done.append(one_tab(tab, url, settle_s, timeout_s))
                    tab.close()
                    log(f"{kind} tab {i + 1}/{tabs}: views at {done[-1][0]:,.0f} ms, "
                        f"main thread {sum(done[-1][1].values()):,.0f} ms")
                rows += summarise(kind, done)
    finally:
        handle.stop()
        hub.broadcaster.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dashboard_tab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 tabs of each kind instead of 7")
    p.add_argument("--out", type=Path, default=HERE / "results" / "dashboard_tab.json")
    p.add_argument("--tabs", type=int, default=None, help="tabs of each kind (default 7; quick 3)")
    p.add_argument("--path", default="/", help="the page (default /, the Overview)")
    p.add_argument("--settle-s", type=float, default=1.0, help="profile this long after Bokeh's views exist")
    p.add_argument("--chromium", default=None, help="Chromium executable (default /usr/bin/chromium)")
    p.add_argument("--no-reuse-sessions", dest="reuse_sessions", action="store_false",
                   help="serve without the page cache (dashboard.reuse_sessions, on by default)")
    args = p.parse_args(argv)
    started = time.monotonic()
    tabs = args.tabs or (3 if args.quick else 7)
    settings: dict[str, Any] = {"tabs": tabs, "path": args.path, "settle_s": args.settle_s,
                                "sample_us": SAMPLE_US, "reuse_sessions": args.reuse_sessions,
                                "load_average_start": list(os.getloadavg())}
    chromium = find_chromium(args.chromium)
    if chromium is None:
        reason = no_chromium(args.chromium)
        log(f"skipped: {reason}")
        rows = [skipped(reason)]
    else:
        rows = run(chromium, tabs, args.path, args.settle_s, timeout_s=60.0, reuse_sessions=args.reuse_sessions)
    return finish(args.out, "dashboard_tab", rows, settings, started, log=log)


if __name__ == "__main__":
    sys.exit(main())
