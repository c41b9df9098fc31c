"""The driver's nightly duties: close lake days as event time passes midnight, retrain on them, judge shadows.

:class:`EndOfDay` watches the pipeline's *committed* watermark (the minimum over its groups of the watermark as of
their last commit, so every on-time row of a day is in a listed lake file when it passes that day's midnight in
``lake.timezone``). It then closes every earlier day folder that is still open and, with
``retrain.trigger: engine``, queues its retrain; one background thread runs the queue in date order on the
engine's own Dask client, so the stream goes on meanwhile. With ``trigger: cron`` it only closes days.

:class:`ShadowJudge` ends a shadow period (``<registry>/SHADOW``) once the candidate was scored beside the
champion on ``events`` live events or for ``max_s`` seconds, applies :func:`training.gate.decide` to the live
agreement and alert rate (and the retrain's labelled metrics), then promotes or refuses, saying why.

:class:`ReportTrigger` turns the rate trigger's window alerts into reports on the ``reports`` topic.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import threading
import time
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.batch_jobs import retrain_job
from engine.config import Config
from streams.lake import close_day
from streams.lake_days import LakeDay, read_day
from training import gate, retrain
from training.current import clear_shadow, read_shadow, record, set_current

log = logging.getLogger(__name__)


def _open_days(lake: Path, before: dt.date) -> list[dt.date]:
    """Day folders of the lake earlier than ``before`` whose manifest is not closed, oldest first."""
    out = []
    for d in sorted(lake.glob("date=*")):
        try:
            day = dt.date.fromisoformat(d.name.removeprefix("date="))
        except ValueError:
            continue
        if day >= before:
            continue
        try:
            info: LakeDay = read_day(lake, day)
        except Exception:  # noqa: BLE001 - a folder without a manifest yet: its writer makes one soon
            continue
        if not info.closed:
            out.append(day)
    return out


class EndOfDay:
    """Closes the lake's days behind the committed watermark and runs their retrains in the background."""

    def __init__(self, cfg: Config, client: Any, *, run: Callable[..., Any] = retrain.run) -> None:
        self.cfg = cfg
        self.client = client
        self.tz = zoneinfo.ZoneInfo(cfg.lake.timezone)
        self._run = run
        self._day: dt.date | None = None
        self.closed: list[str] = []
        self.results: list[dict[str, Any]] = []
        self._queue: queue.Queue[dt.date | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def observe(self, committed_watermark_ms: float | None) -> list[dt.date]:
        """Close what the watermark left behind; returns the days closed now."""
        if committed_watermark_ms is None:
            return []
        today = dt.datetime.fromtimestamp(committed_watermark_ms / 1000.0, tz=self.tz).date()
        if self._day is not None and today <= self._day:
            return []
        self._day = today
        closed = []
        for day in _open_days(self.cfg.lake.path, today):
            if close_day(self.cfg.lake.path, day):
                closed.append(day)
                self.closed.append(day.isoformat())
                log.info("lake day %s closed (committed watermark %s)", day, today)
                if self.cfg.retrain.trigger == "engine":
                    self._submit(day)
        return closed

    def _submit(self, day: dt.date) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="isostream-retrain", daemon=True)
            self._thread.start()
        self._queue.put(day)

    def _worker(self) -> None:
        while True:
            day = self._queue.get()
            if day is None:
                return
            t0 = time.time()
            try:
                result = self._run(retrain_job(self.cfg, day), self.client)
                doc = result.to_json()
                log.warning("nightly retrain %s: %s %s (%s)", day, result.status, result.version, result.reason)
            except Exception as err:  # noqa: BLE001 - a failed retrain keeps the current model; say so
                doc = {"date": day.isoformat(), "status": "failed", "reason": f"{type(err).__name__}: {err}"}
                log.error("nightly retrain %s failed: %s", day, err)
            doc["started_at"] = t0
            self.results.append(doc)

    def close(self, timeout_s: float = 0.0) -> None:
        """Stop the retrain thread after the queue (waiting up to ``timeout_s`` for a retrain in progress)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=timeout_s)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._queue.empty()


class ShadowJudge:
    """Promotes or refuses the shadowed candidate once its period is over (see the module doc)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.decisions: list[dict[str, Any]] = []

    def check(self, shadow_totals: dict[str, list[int]], *, now: float | None = None) -> gate.Decision | None:
        """Decide if the period is over; ``shadow_totals`` maps versions to [events, agree, cand, champ]."""
        registry = self.cfg.registry
        doc = read_shadow(registry)
        if doc is None:
            return None
        version = doc["version"]
        events, agree, cand, champ = (list(shadow_totals.get(version, [])) + [0, 0, 0, 0])[:4]
        elapsed = (time.time() if now is None else now) - float(doc.get("since", 0.0))
        if events < int(doc.get("events", 0)) and elapsed < float(doc.get("max_s", 0.0)):
            return None
        live = {"events": events, "agreement": agree / events, "candidate_alert_rate": cand / events,
                "champion_alert_rate": champ / events} if events else None
        decision = gate.decide(self.cfg.retrain, doc.get("offline") or {}, live)
        what = f"after {events:,} shadow events in {elapsed:.0f} s"
        if decision.promote and self.cfg.retrain.auto_promote:
            set_current(registry, version, action="promote", reason=f"{decision.reason} ({what})",
                        metrics=decision.metrics, shadow=live)
            action = "promote"
        else:
            action = "refused" if not decision.promote else "held"
            record(registry, action, version, reason=f"{decision.reason} ({what})", shadow=live)
        clear_shadow(registry, version)
        self.decisions.append({"version": version, "action": action, "reason": decision.reason, "shadow": live})
        log.warning("shadow %s: %s (%s)", version, action, decision.reason)
        return decision


class ReportTrigger:
    """The rate trigger's reports: a window alert of a key submits that key's report for its period (once per
    key and period in a run) to the cluster, and the result is published on ``topics.reports``.

    Best effort, like the metrics: a report lost with a crashed driver is not redone (``isostream report`` gives
    the same figures on demand).
    """

    def __init__(self, cfg: Config, client: Any, publish: Callable[[bytes, bytes], None]) -> None:
        self.cfg = cfg
        self.client = client
        self.publish = publish
        self.tz = zoneinfo.ZoneInfo(cfg.lake.timezone)
        self._seen: set[tuple[str, dt.date]] = set()
        self.submitted = 0
        self.published = 0
        self.failed = 0

    def submit(self, key: str, window_start_ms: float) -> bool:
        """Submit ``key``'s report for the period holding ``window_start_ms``; False if it was submitted already."""
        import functools

        from streams.reports import key_report, period_start

        r = self.cfg.reports
        if not r.on_trigger or not self.cfg.schema.key:
            return False
        day = dt.datetime.fromtimestamp(window_start_ms / 1000.0, tz=self.tz).date()
        mark = (key, period_start(day, r.trigger_period))
        if mark in self._seen:
            return False
        self._seen.add(mark)
        # the report's own ``key`` argument goes in a partial: ``submit(key=...)`` would name the Dask task
        task = functools.partial(key_report, self.cfg.lake_url, key_field=self.cfg.schema.key, key=key,
                                 day=day, period=r.trigger_period,
                                 alarm_field=r.alarm_field or self.cfg.windows.alarm_field)
        future = self.client.submit(task, pure=False)
        future.add_done_callback(lambda f, k=key: self._done(f, k))
        self.submitted += 1
        return True

    def _done(self, future: Any, key: str) -> None:
        try:
            doc = future.result()
            self.publish(json.dumps(doc, default=str).encode(), key.encode())
            self.published += 1
        except Exception as err:  # noqa: BLE001 - a report is not worth stopping the stream for
            self.failed += 1
            log.warning("triggered report for %s failed: %s", key, err)
