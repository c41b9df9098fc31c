"""``isostream report``: events, alarms and anomalies per key and period, from the lake (docs/reports.md).

A thin command over :func:`streams.reports.build_report`: options default from the config (``reports.by``,
``reports.alarm_field`` or ``windows.alarm_field``, ``lake.timezone`` for ``today``/``yesterday``), the day
tasks run on ``cluster.scheduler`` when one is set, else here. Exit codes: 0 ok, 2 a bad request (range,
period, field, no data), 1 the lake or the cluster failed.
"""

from __future__ import annotations

import argparse
import contextlib
import numbers
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from engine.config import Config
from streams.reports import PERIODS, ReportError, build_report, parse_day, report_records

if TYPE_CHECKING:
    import distributed

FORMATS = ("table", "csv", "parquet", "json")


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``report`` options (and the common --config/--lake/--registry/--scheduler) to ``p``."""
    from engine.cli import _add_config_args

    _add_config_args(p, kafka=False)
    p.add_argument("--from", dest="start", required=True, metavar="DATE",
                   help="first day: YYYY-MM-DD, today or yesterday (in lake.timezone)")
    p.add_argument("--to", dest="end", metavar="DATE", help="last day, included (default: --from)")
    p.add_argument("--by", metavar="FIELD[,FIELD]", help="grouping fields, comma-separated (reports.by)")
    p.add_argument("--period", choices=PERIODS, default="day",
                   help="day, ISO week (from Monday) or month (default: day)")
    p.add_argument("--alarm-field", help="bool field counted as alarms (reports.alarm_field, windows.alarm_field)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--out", type=Path, help="write to this file (needed for parquet; default: stdout)")


def run(args: argparse.Namespace) -> int:
    """Build the report the arguments ask for and print or write it; the exit code."""
    from engine.cli import _config, console

    cfg = _config(args)
    try:
        request = _request(args, cfg)
    except ReportError as err:
        return _refuse(err)
    try:
        client = _connect(cfg.cluster.scheduler)
    except OSError as err:
        console.print(f"[red]error:[/] cannot reach the Dask scheduler {cfg.cluster.scheduler!r}: {err}")
        return 1
    # csv/json on stdout feed another program, often in a terminal pipeline: no bar to mix into its screen
    quiet = args.format in ("csv", "json") and args.out is None
    try:
        with _progress(quiet) as advance:
            frame = build_report(cfg.lake_url, client=client, progress=advance, **request)
    except ReportError as err:
        return _refuse(err)
    finally:
        if client is not None:
            client.close()
    try:
        _write(frame, args.format, args.out)
    except OSError as err:
        console.print(f"[red]error:[/] cannot write the report to {args.out}: {err}")
        return 1
    if args.out is not None:
        console.print(f"wrote {len(frame):,} report rows to {args.out}")
    return 0


def _refuse(err: ReportError) -> int:
    from engine.cli import console

    console.print(f"[red]report:[/] {str(err).removeprefix('report: ')}")
    return 2


def _request(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """:func:`build_report`'s keywords from the options and the config."""
    if args.format == "parquet" and args.out is None:
        msg = "report: --format parquet needs --out FILE"
        raise ReportError(msg)
    tz = cfg.lake.timezone
    start = parse_day(args.start, tz)
    by = [f.strip() for f in args.by.split(",") if f.strip()] if args.by is not None else list(cfg.reports.by)
    return {
        "start": start,
        "end": parse_day(args.end, tz) if args.end else start,
        "by": by,
        "period": args.period,
        "alarm_field": args.alarm_field or cfg.reports.alarm_field or cfg.windows.alarm_field,
    }


def _connect(scheduler: str | None) -> distributed.Client | None:
    if scheduler is None:
        return None
    import distributed

    return distributed.Client(scheduler, timeout="10s")


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    if quiet:
        yield None
        return
    from engine.cli import _progress as bar

    with bar() as progress:
        task = progress.add_task("report days", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def _write(frame: pd.DataFrame, fmt: str, out: Path | None) -> None:
    if fmt == "table":
        _table(frame, out)
    elif fmt == "csv":
        text = frame.to_csv(index=False)
        _emit(text, out)
    elif fmt == "json":
        import json

        _emit(json.dumps(report_records(frame), indent=1) + "\n", out)
    else:
        assert out is not None  # checked before the work
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)  # period_start (datetime.date objects) becomes a date32 column


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def _table(frame: pd.DataFrame, out: Path | None) -> None:
    from rich.table import Table

    from engine.cli import render_table, show_table

    table = Table(show_lines=False)
    for col in frame.columns:
        numeric = col in ("events", "alarms", "anomalies", "alarm_rate", "anomaly_rate")
        table.add_column(str(col), justify="right" if numeric else "left", no_wrap=True)
    for row in frame.itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    if out is None:
        show_table(table)
    else:
        _emit(render_table(table), out)


def _cell(value: Any) -> str:
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    if isinstance(value, numbers.Real):
        return f"{float(value):.2%}"
    return str(value)
