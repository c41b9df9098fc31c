"""The HTTP face of ``isostream serve``: a FastAPI app over one :class:`~engine.serve_scoring.ScoringService`.

Routes: ``POST /score``, ``GET /health``, ``GET /models``, ``GET /reports`` (see docs/serve.md). With
``serve.api_key`` set, every route but ``/health`` (docs and the OpenAPI schema included) needs the
``X-API-Key`` header; the check is a plain ASGI wrapper, compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.config import Config
from engine.serve_scoring import ScoringService, ServeError

#: routes open without the API key (a load balancer's probe carries none)
OPEN_PATHS = frozenset({"/health"})
#: bodies up to this size (~150 events, a few ms) are scored on the event loop itself: the hop to a worker
#: thread cost 0.6 ms of a one-event request's ~5.5 ms (p50, one core)
INLINE_BYTES = 32 * 1024


class ApiKeyGuard:
    """ASGI middleware: 401 for any HTTP request outside :data:`OPEN_PATHS` without the right ``X-API-Key``."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            sent = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"")
            if not hmac.compare_digest(sent, self.key):
                why = "wrong X-API-Key header" if sent else "missing X-API-Key header"
                reply = JSONResponse({"detail": f"{why}: this server needs its API key (serve.api_key)"},
                                     status_code=401, headers={"WWW-Authenticate": "X-API-Key"})
                await reply(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(cfg: Config, service: ScoringService | None = None) -> FastAPI:
    """The app for ``cfg``; its lifespan starts and stops the service's registry poller.

    ``service`` defaults to a new :class:`ScoringService` (kept on ``app.state.service``).
    """
    svc = service or ScoringService(cfg)
    # the largest body that can still be valid: every event at max_message_bytes, plus separators
    max_body = cfg.serve.max_batch * (cfg.schema.max_message_bytes + 1) + 2

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        svc.start()
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(title="isostream scoring API", version="1", lifespan=lifespan,
                  description="Scores events with the model the registry's CURRENT pointer names.")
    app.state.service = svc
    if cfg.serve.api_key is not None:
        app.add_middleware(ApiKeyGuard, key=cfg.serve.api_key.get_secret_value())

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, err: ServeError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.post("/score", summary="score one event (a JSON object) or a JSON list of events")
    async def score(request: Request, explain: Literal["flagged", "all", "none"] = "flagged") -> Response:
        body = await _read_body(request, max_body)
        if len(body) <= INLINE_BYTES and not svc.busy:  # busy: waiting for the lock would stall the loop
            out = svc.score(body, explain=explain)
        else:  # off the event loop: /health stays answered during a large batch
            out = await run_in_threadpool(svc.score, body, explain=explain)
        return Response(out.body, media_type="application/json",
                        headers={"X-Model-Version": out.model_version})

    @app.get("/health", summary="status, model version, events scored, uptime")
    async def health() -> JSONResponse:
        doc = svc.health()
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    @app.get("/models", summary="registry versions, the CURRENT pointer and the promotion history")
    def models() -> dict[str, Any]:
        return svc.models()

    @app.get("/reports", summary="events, alarms and anomalies per key and period, from the lake")
    def reports(start: str = Query(..., alias="from", description="first day, YYYY-MM-DD (or today/yesterday)"),
                end: str = Query(..., alias="to", description="last day, inclusive"),
                by: str | None = Query(None, description="comma-separated fields (default reports.by)"),
                period: str = Query("day", description="day, week or month")) -> dict[str, Any]:
        return _report(cfg, start, end, by, period)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes rather than read whole into memory."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"body over {limit:,} bytes: more than serve.max_batch events of "
                                  "schema.max_message_bytes each")
        chunks.append(chunk)
    return b"".join(chunks)


def _report(cfg: Config, start: str, end: str, by: str | None, period: str) -> dict[str, Any]:
    """``GET /reports``: :func:`streams.reports.build_report` over the lake; 400 for a bad query, 404 for no data."""
    # imported here: DuckDB and fsspec load only when a report is asked for
    from streams.lake import LakeError
    from streams.reports import Period, ReportError, build_report, parse_day, report_records

    fields = tuple(f.strip() for f in by.split(",") if f.strip()) if by is not None else cfg.reports.by
    alarm = cfg.reports.alarm_field or cfg.windows.alarm_field
    try:
        first, last = parse_day(start, cfg.lake.timezone), parse_day(end, cfg.lake.timezone)
        frame = build_report(cfg.lake_url, start=first, end=last, by=fields, period=cast(Period, period),
                             alarm_field=alarm, anomaly_field="is_anomaly", client=None)
    except ReportError as err:
        text = str(err)
        # build_report raises one error class; the range without events and the missing lake are "not found"
        missing = "no events in the lake" in text or "does not exist" in text
        raise ServeError(404 if missing else 400, text) from None
    except LakeError as err:
        raise ServeError(500, str(err)) from None
    return {"from": first.isoformat(), "to": last.isoformat(), "by": list(fields), "period": period,
            "alarm_field": alarm, "rows": report_records(frame)}
