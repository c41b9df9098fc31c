"""``isostream serve``: the REST scoring API on uvicorn (one worker); see docs/serve.md.

The app is :func:`engine.serve_app.create_app`, the work per request :class:`engine.serve_scoring.ScoringService`.
This module is the command: it imports FastAPI and uvicorn only when it runs, so other commands start fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from engine.config import Config, with_overrides

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)


def create_app(cfg: Config) -> FastAPI:
    """The FastAPI app for ``cfg`` (see :func:`engine.serve_app.create_app`)."""
    from engine.serve_app import create_app as build

    return build(cfg)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_warning(cfg: Config) -> str | None:
    """The warning to log when ``serve.host`` is reachable from other machines without ``serve.api_key``."""
    s = cfg.serve
    if s.api_key is not None or is_loopback(s.host):
        return None
    return (f"isostream serve binds {s.host}:{s.port} WITHOUT an API key: anyone who can reach this address "
            "can score events and read the registry and the lake's reports. Set serve.api_key "
            "(ISOSTREAM__SERVE__API_KEY) or bind 127.0.0.1.")


def configure_parser(p: argparse.ArgumentParser) -> None:
    """The options of ``isostream serve``."""
    from engine.cli import _add_config_args

    _add_config_args(p, kafka=False)
    p.add_argument("--host", help="address to bind (serve.host, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (serve.port, default 8000)")
    p.add_argument("--no-access-log", action="store_true", help="do not log every request (uvicorn's access log)")


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 after a clean shutdown."""
    import uvicorn

    from engine.cli import _config, console

    cfg = _config(args)
    over: dict[str, Any] = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if over:
        cfg = with_overrides(cfg, {"serve": over})
    warning = exposure_warning(cfg)
    if warning is not None:
        log.warning("!" * 20 + " %s " + "!" * 20, warning)
    app = create_app(cfg)
    service = app.state.service
    model = service.holder.version or f"none yet (waiting for {cfg.registry}/CURRENT)"
    console.print(f"isostream serve: model {model} from {cfg.registry}, on http://{cfg.serve.host}:{cfg.serve.port}")
    uvicorn.run(app, host=cfg.serve.host, port=cfg.serve.port, workers=1, access_log=not args.no_access_log,
                log_level="info", timeout_graceful_shutdown=10)
    return 0
