"""``python -m benchmarks [--quick] [NAME ...] [--out PATH] [--json]``: run benchmark scripts, one after another.

Each ``benchmarks/<name>.py`` (found by name: a new script is registered by being there) is run as
``python -m benchmarks.<name> [--quick] --out results/<name>.json`` in its own process, so one failing
benchmark does not hide the others. ``--out`` (one benchmark only) replaces the results path; ``--json`` is
passed on to benchmarks that print their results JSON (``detect``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"__init__", "__main__", "common"}


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP and not p.stem.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {discover()})")
    parser.add_argument("--quick", action="store_true", help="quick mode (minutes, smaller workloads)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="folder for the JSON results")
    parser.add_argument("--out", type=Path, default=None, help="results JSON of the one benchmark named")
    parser.add_argument("--json", action="store_true", help="pass --json on: print the results JSON (detect)")
    args = parser.parse_args(argv)
    names = args.names or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {discover()}")
    if args.out is not None and len(names) != 1:
        parser.error(f"--out names one results file: give one benchmark, not {names}")
    failed = []
    for name in names:
        out = args.out or args.results / f"{name}.json"
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out", str(out)] + (["--quick"] if args.quick else [])
        cmd += ["--json"] if args.json else []
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"== {name}: exit {rc} in {time.monotonic() - t0:.0f}s -> {out}", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
