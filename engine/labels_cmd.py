"""``isostream labels ingest|metrics``: load late ground truth from a file, show live metrics per model version."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from engine.cli import _add_config_args, _config
from training.label_metrics import read_metrics, update_metrics
from training.label_store import LabelStore
from training.labels import LabelError, read_labels

DESCRIPTION = """Late ground truth joined with the predictions stored in the lake (docs/labels.md).

  ingest   read a CSV / Parquet / JSON-lines file of labels (columns partition, offset, label or
           key, event_time, label), store them, refresh metrics.json and print it
  metrics  print metrics.json (precision, recall, AP, ROC AUC per model version)

Exit codes: 0 ok, 1 every row of the file was rejected, 2 unreadable file or bad configuration."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    """The ``ingest`` and ``metrics`` actions of ``isostream labels``."""
    p.description = DESCRIPTION
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="labels_action", metavar="ACTION", required=True)
    ingest = sub.add_parser("ingest", help="store the labels of a file and refresh the metrics",
                            description="Read labels from --file (rows that cannot be used are reported with a "
                            "reason and kept in <labels_path>/rejects), store them, refresh metrics.json.")
    _add_config_args(ingest, kafka=False)
    ingest.add_argument("--file", type=Path, required=True, help="CSV, Parquet or JSON-lines file of labels")
    ingest.add_argument("--json", action="store_true", help="print one JSON document")
    metrics = sub.add_parser("metrics", help="print the live metrics per model version",
                             description="Print <labels_path>/metrics.json (computed now if there is none).")
    _add_config_args(metrics, kafka=False)
    metrics.add_argument("--refresh", action="store_true", help="join the store with the lake again first")
    metrics.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    """Run ``isostream labels <action>``; see :data:`DESCRIPTION` for the exit codes."""
    cfg = _config(args)
    try:
        if args.labels_action == "ingest":
            return _ingest(cfg, args)
        doc = None if args.refresh else read_metrics(cfg.labels_path)
        if doc is None:
            doc = update_metrics(cfg)
    except LabelError as err:
        print(str(err), file=sys.stderr)
        return 2
    print(json.dumps(doc) if args.json else format_metrics(doc))
    return 0


def _ingest(cfg: Any, args: argparse.Namespace) -> int:
    parsed = read_labels(args.file)
    store = LabelStore(cfg.labels_path)
    stored = store.add(parsed.labels)
    rejected = store.add_rejects(parsed.rejects)
    doc = update_metrics(cfg)
    reasons = dict(sorted(Counter(parsed.rejects["reason"]).items()))
    if args.json:
        print(json.dumps({"file": str(args.file), "stored": stored, "rejected": rejected, "reasons": reasons,
                          "metrics": doc}))
    else:
        print(f"{args.file}: stored {stored:,} labels, rejected {rejected:,}"
              + (f" ({', '.join(f'{k}: {v}' for k, v in reasons.items())}; kept in {store.root / 'rejects'})"
                 if rejected else ""))
        for _, row in parsed.rejects.head(5).iterrows():
            print(f"  rejected {row['row']}: {row['reason']}  {row['record']}")
        print(format_metrics(doc))
    return 1 if rejected and not stored else 0


def format_metrics(doc: dict[str, Any]) -> str:
    """The metrics document as a small text table.

    >>> print(format_metrics({"labels": 2, "matched": 2, "unmatched": 0, "updated_at": "t",
    ...                       "versions": {"all": {"n": 2, "positives": 1, "precision": None, "recall": 0.0,
    ...                                            "ap": 1.0, "auc": 1.0}}}))
    labels 2: matched 2, unmatched 0 (updated t)
      version                       n  positives  precision   recall       ap      auc
      all                           2          1          -   0.0000   1.0000   1.0000
    """
    lines = [f"labels {doc['labels']:,}: matched {doc['matched']:,}, unmatched {doc['unmatched']:,} "
             f"(updated {doc['updated_at']})",
             f"  {'version':<24}{'n':>7}{'positives':>11}{'precision':>11}{'recall':>9}{'ap':>9}{'auc':>9}"]

    def num(v: float | None, width: int) -> str:
        return f"{'-':>{width}}" if v is None else f"{v:>{width}.4f}"

    for version, m in doc["versions"].items():
        lines.append(f"  {version:<24}{m['n']:>7,}{m['positives']:>11,}{num(m['precision'], 11)}"
                     f"{num(m['recall'], 9)}{num(m['ap'], 9)}{num(m['auc'], 9)}")
    return "\n".join(lines)
