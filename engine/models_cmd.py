"""``isostream models list|show|promote|rollback``: the registry for operators, with ``--json`` for scripts.

Promotion and rollback move the registry's ``CURRENT`` pointer atomically (:mod:`training.current`) and append
to its history; every engine worker swaps between micro-batches, ``isostream serve`` within
``serve.reload_poll_s``. A ``swap`` command is also sent on the control topic, for engines that watch it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from engine.config import Config


class ModelsError(RuntimeError):
    """A registry command cannot be carried out (unknown version, nothing to roll back to, damaged version)."""


def _cli() -> Any:
    from engine import cli

    return cli


def configure_parser(p: argparse.ArgumentParser) -> None:
    cli = _cli()
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    q = sub.add_parser("list", help="versions with their parent, data dates and metrics; the live one marked")
    cli._add_config_args(q, kafka=False)
    q.add_argument("--all", action="store_true", help="include the online-adapted versions the engine publishes")
    q.add_argument("--json", action="store_true", help="one JSON document")
    q = sub.add_parser("show", help="one version's metadata and history ('current' for the live one)")
    cli._add_config_args(q, kafka=False)
    q.add_argument("version")
    q.add_argument("--json", action="store_true")
    q = sub.add_parser("promote", help="make VERSION the live model (engines and serve swap to it)")
    cli._add_config_args(q)
    q.add_argument("version")
    q.add_argument("--reason", default="promoted by hand")
    q.add_argument("--no-notify", action="store_true", help="do not send a swap command on the control topic")
    q.add_argument("--json", action="store_true")
    q = sub.add_parser("rollback", help="go back to the version that was live before the last promotion")
    cli._add_config_args(q)
    q.add_argument("--to", metavar="VERSION", help="roll back to this version instead")
    q.add_argument("--reason", default="rolled back by hand")
    q.add_argument("--no-notify", action="store_true")
    q.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    cli = _cli()
    cfg = cli._config(args)
    action = args.models_command
    if action == "list":
        return _emit(args, list_models(cfg, include_online=args.all), _print_list)
    if action == "show":
        return _emit(args, show(cfg, args.version), lambda doc: cli.console.print_json(json.dumps(doc, default=str)))
    if action == "promote":
        doc = promote(cfg, args.version, reason=args.reason, notify=not args.no_notify)
    else:
        doc = rollback(cfg, to=args.to, reason=args.reason, notify=not args.no_notify)
    return _emit(args, doc, lambda d: cli.console.print(f"{d['action']}: {d['previous']} -> [bold]{d['version']}[/]"
                                                         f"{'' if d['notified'] else ' (control topic not reached)'}"))


def _emit(args: argparse.Namespace, doc: Any, show_human: Any) -> int:
    if getattr(args, "json", False):
        print(json.dumps(doc, default=str))
    else:
        show_human(doc)
    return 0


# -- the library functions behind the commands -------------------------------------------------------------
def list_models(cfg: Config, *, include_online: bool = False) -> dict[str, Any]:
    """Every version (summaries), the live one, the shadow candidate, the promotion history, and each version's
    live precision, recall, AP and AUC from late labels (``live_labels``, when ``isostream labels`` has some)."""
    from training.current import history, read_current, read_shadow
    from training.label_metrics import read_metrics
    from training.labels import LabelError
    from training.registry import summaries

    current = read_current(cfg.registry)
    shadow = read_shadow(cfg.registry)
    versions = summaries(cfg.registry, include_online=True)
    try:
        labelled = (read_metrics(cfg.labels_path) or {}).get("versions", {})
    except LabelError:
        labelled = {}
    live = current["version"] if current else None
    shown = [v for v in versions if include_online or v.get("kind") != "online" or v.get("version") == live]
    for v in shown:
        v["live"] = v.get("version") == live
        v["shadow"] = bool(shadow and v.get("version") == shadow["version"])
        v["live_labels"] = labelled.get(v.get("version"))
    return {"registry": str(cfg.registry), "current": current, "shadow": shadow, "versions": shown,
            "online_versions": sum(1 for v in versions if v.get("kind") == "online"),
            "history": history(cfg.registry), "live_labels_all": labelled.get("all")}


def _print_list(doc: dict[str, Any]) -> None:
    from rich.table import Table

    cli = _cli()
    table = Table(title=f"models in {doc['registry']}")
    for col in ("", "version", "kind", "parent", "data dates", "threshold", "AP", "agreement", "saved"):
        table.add_column(col, no_wrap=True)
    for v in doc["versions"]:
        m = v.get("metrics") or {}
        mark = "live" if v.get("live") else ("shadow" if v.get("shadow") else "")
        ap = m.get("candidate_ap")
        table.add_row(mark, str(v.get("version")), str(v.get("kind", "?")), str(v.get("parent") or "-"),
                      ",".join(v.get("data_dates") or []) or "-",
                      f"{v['threshold']:.4f}" if isinstance(v.get("threshold"), float) else "-",
                      f"{ap:.3f}" if isinstance(ap, float) else "-",
                      f"{m['agreement']:.3f}" if isinstance(m.get("agreement"), float) else "-",
                      time.strftime("%Y-%m-%d %H:%M", time.gmtime(v["saved_at"])) if v.get("saved_at") else "-")
    cli.show_table(table)
    if doc["online_versions"]:
        cli.console.print(f"{doc['online_versions']} online-adapted versions not shown (--all)")


def _resolve(cfg: Config, version: str) -> str:
    from training.current import read_current

    if version == "current":
        doc = read_current(cfg.registry)
        if doc is None:
            msg = f"registry {cfg.registry}: no live version yet"
            raise ModelsError(msg)
        return str(doc["version"])
    if not (cfg.registry / version).is_dir():
        from training.registry import list_versions

        known = [p.name for p in list_versions(cfg.registry)][-5:]
        msg = f"registry {cfg.registry}: no version {version!r} (latest: {known})"
        raise ModelsError(msg)
    return version


def show(cfg: Config, version: str) -> dict[str, Any]:
    """A version's metadata (checksums verified) and the history entries that name it."""
    from training.current import history
    from training.registry import RegistryError, load_version

    name = _resolve(cfg, version)
    try:
        _, meta = load_version(cfg.registry / name)
    except RegistryError as err:
        raise ModelsError(str(err)) from None
    meta.pop("sha256", None)
    return {"version": name, "meta": meta, "history": [h for h in history(cfg.registry) if h.get("version") == name
                                                        or h.get("previous") == name]}


def _check_loadable(cfg: Config, name: str) -> None:
    """Refuse a version the engine would refuse: damaged files or other features than the config makes."""
    from training.detector import Detector
    from training.features import FeatureBuilder

    try:
        det = Detector.load(cfg.registry / name)
    except Exception as err:
        msg = f"cannot promote {name}: {err}"
        raise ModelsError(msg) from None
    names = FeatureBuilder(cfg.features, cfg.schema).names
    if tuple(det.feature_names) != tuple(names):
        msg = f"cannot promote {name}: its features {list(det.feature_names)} differ from the config's {list(names)}"
        raise ModelsError(msg)


def promote(cfg: Config, version: str, *, reason: str = "promoted by hand", notify: bool = True,
            action: str = "promote") -> dict[str, Any]:
    """Point CURRENT at ``version`` (checked first), clear a shadow request for it, tell the engine."""
    from training.current import clear_shadow, read_current, set_current

    name = _resolve(cfg, version)
    _check_loadable(cfg, name)
    before = read_current(cfg.registry)
    set_current(cfg.registry, name, action=action, reason=reason)
    clear_shadow(cfg.registry, name)
    notified = notify_engine(cfg, name) if notify else False
    return {"action": action, "version": name, "previous": before["version"] if before else None,
            "reason": reason, "notified": notified}


def rollback_target(registry: Path) -> str:
    """The version live before the last promotion (its base version if that online update was pruned)."""
    from training.current import history

    for entry in reversed(history(registry)):
        if entry.get("action") == "promote" and entry.get("previous"):
            prev = str(entry["previous"])
            if (registry / prev).is_dir():
                return prev
            base = prev.split("+u", 1)[0]
            if (registry / base).is_dir():
                return base
            msg = f"registry {registry}: the version before the last promotion ({prev}) is gone"
            raise ModelsError(msg)
    msg = f"registry {registry}: no promotion in the history to roll back (use --to VERSION)"
    raise ModelsError(msg)


def rollback(cfg: Config, *, to: str | None = None, reason: str = "rolled back by hand",
             notify: bool = True) -> dict[str, Any]:
    """Go back to ``to`` or to the version live before the last promotion."""
    target = to if to is not None else rollback_target(cfg.registry)
    return promote(cfg, target, reason=reason, notify=notify, action="rollback")


def notify_engine(cfg: Config, version: str, *, timeout_s: float = 5.0) -> bool:
    """Send ``{"action": "swap", "version"}`` on the control topic; False (not raised) when Kafka is away."""
    from confluent_kafka import KafkaException, Producer

    try:
        producer = Producer({**cfg.kafka.client_settings(), "message.timeout.ms": int(timeout_s * 1000),
                             "socket.timeout.ms": int(timeout_s * 1000)})
        producer.produce(cfg.kafka.topics.control, json.dumps({"action": "swap", "version": version}).encode())
        return producer.flush(timeout_s + 1.0) == 0
    except (KafkaException, BufferError, ValueError):
        return False
