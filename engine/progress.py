"""One progress line every few seconds while the engine runs (``isostream run`` and ``isostream demo``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console

from engine.runtime import RunReport


def report_printer(console: Console, every_s: float = 2.0) -> Callable[[RunReport], None]:
    """A ``Runtime.run(on_progress=...)`` callback printing totals and the rate since its last line."""
    last = {"t": time.monotonic(), "events": 0}

    def show(report: RunReport) -> None:
        now = time.monotonic()
        if now - last["t"] < every_s:
            return
        rate = (report.events - last["events"]) / (now - last["t"])
        last["t"], last["events"] = now, report.events
        failed = f"  FAILED {', '.join(report.failed)}" if report.failed else ""
        restarts = f"  restarts {report.restarts}" if report.restarts else ""
        console.print(
            f"events {report.events:>11,}  {rate:>9,.0f}/s  anomalies {report.anomalies:>8,}  "
            f"dead {report.dead_letters:>6,}  model {report.model_version}{restarts}{failed}"
        )

    return show
