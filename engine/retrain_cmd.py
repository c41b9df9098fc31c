"""``isostream retrain --date YYYY-MM-DD``: the nightly retrain as a command (cron, systemd timers, by hand).

The engine submits the same job itself when its watermark passes midnight (``retrain.trigger: engine``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

EXAMPLES = """examples:
  isostream retrain --date yesterday --config deploy.yaml
  isostream retrain --date 2026-11-30 --scheduler tcp://scheduler:8786 --json
  isostream retrain --date 2026-11-30 --force        # a day not closed yet, or a second version of one

cron (02:15 every night; the engine's own trigger off with retrain.trigger: cron):
  15 2 * * *  cd /srv/isostream && .venv/bin/isostream retrain --date yesterday --config deploy.yaml --json >> retrain.log"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    from engine import cli

    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    cli._add_config_args(p, kafka=False)
    p.add_argument("--date", required=True, metavar="DATE",
                   help="the lake day to retrain on: YYYY-MM-DD, 'yesterday' or 'today' (in lake.timezone)")
    p.add_argument("--force", action="store_true",
                   help="retrain a day that is not closed yet, or add another version for a retrained day")
    p.add_argument("--no-notify", action="store_true",
                   help="after a promotion, do not send a swap command on the control topic (CURRENT moves anyway)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")


def run(args: argparse.Namespace) -> int:
    from engine import cli
    from engine.batch_jobs import retrain_job
    from engine.cluster import dask_client
    from streams.reports import parse_day
    from training import retrain

    cfg = cli._config(args)
    day = parse_day(args.date, cfg.lake.timezone)
    job = retrain_job(cfg, day, force=args.force)
    with dask_client(cfg.cluster) as client:
        if args.json:
            result = retrain.run(job, client)
        else:
            cli.console.print(f"retrain {day}: lake {job.lake}, registry {job.registry}, "
                              f"dask dashboard {client.dashboard_link}")
            with cli._progress() as bar:
                tasks: dict[str, Any] = {}

                def progress(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        tasks[stage] = bar.add_task(f"{stage} (partitions)", total=total)
                    bar.update(tasks[stage], completed=done)

                result = retrain.run(job, client, progress=progress)
    doc = result.to_json()
    if result.status == "promoted" and not args.no_notify:
        from engine.models_cmd import notify_engine

        doc["notified"] = notify_engine(cfg, str(result.version))  # engines follow CURRENT either way
    if args.json:
        print(json.dumps(doc, default=str))
    else:
        m = result.metrics
        cli.console.print(f"[bold]{result.status}[/] {result.version} (parent {result.parent}): {result.reason}")
        if result.status != "exists":
            cli.console.print(
                f"{doc['rows']:,} rows from {doc['partitions']} partitions in {doc['seconds']:.1f}s "
                f"({doc['rows_per_s']:,} rows/s); threshold {m.get('threshold', float('nan')):.4f}, alert rate "
                f"{m.get('candidate_alert_rate', float('nan')):.4f} (champion {m.get('champion_alert_rate', float('nan')):.4f}), "
                f"agreement {m.get('agreement') or float('nan'):.4f}")
    return 0
