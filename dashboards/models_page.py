"""The Models page: the live version, the shadow candidate, promotion history, live label metrics per version.

The registry comes from :class:`dashboards.models_watch.ModelsWatch` (the same document as ``isostream models
list --json``), the shadow's live counts from the engine's ``metrics`` records, and the swaps the engine was
told to make from the ``control`` topic.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

import pandas as pd
import panel as pn

from dashboards.hub import Hub
from dashboards.live_page import LivePage
from dashboards.theme import empty, html_pane, kpis_html, table_html

REDRAW_EVERY_S = 1.0


def _when(value: Any) -> str:
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return html.escape(str(value)) if value else "–"


def _metric(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "–"


def versions_html(doc: dict[str, Any]) -> str:
    """Every version shown by ``models list``: live and shadow marked, with live precision/recall/AP/AUC."""
    rows = []
    for v in doc.get("versions", []):
        live = v.get("live_labels") or {}
        mark = "live" if v.get("live") else "shadow" if v.get("shadow") else ""
        rows.append({"mark": mark, "version": v.get("version"), "kind": v.get("kind"), "parent": v.get("parent"),
                     "data": ",".join(v.get("data_dates") or []) or "–", "threshold": v.get("threshold"),
                     "labelled": live.get("labelled"), "precision": live.get("precision"), "recall": live.get("recall"),
                     "ap": live.get("ap"), "auc": live.get("auc")})
    frame = pd.DataFrame(rows)
    cells = {"mark": lambda v, r: f'<span class="iso-badge {v}">{v}</span>' if v else "",
             **{m: (lambda v, r: _metric(v)) for m in ("threshold", "precision", "recall", "ap", "auc")}}
    return table_html(frame, list(frame.columns) if len(frame) else [], empty_text="no model versions registered yet",
                      cells=cells, labels={"ap": "AP (late labels)", "auc": "AUC (late labels)", "data": "data dates"})


def history_html(entries: list[dict[str, Any]], limit: int = 50) -> str:
    """Promotions, rollbacks, shadows and refusals, newest first, with their reasons."""
    shown = [e for e in entries if e.get("action") != "online"][-limit:]
    frame = pd.DataFrame(list(reversed(shown)))
    if frame.empty:
        return empty("no promotions yet: the nightly retrain and `isostream models promote` write them")
    cols = [c for c in ("at", "action", "version", "previous", "reason") if c in frame]
    return table_html(frame, cols, empty_text="", cells={"at": lambda v, r: _when(v)})


class ModelsPage(LivePage):
    """One browser session's Models page."""

    title = "Models"
    path = "/models"

    def __init__(self, hub: Hub, **params: Any) -> None:
        super().__init__(hub, **params)
        self._live = html_pane("", sizing_mode="stretch_width", css_classes=["models-live"])
        self._shadow = html_pane("", sizing_mode="stretch_width")
        self._versions = html_pane("", sizing_mode="stretch_width", styles={"overflow-x": "auto"},
                                      css_classes=["models-versions"])
        self._history = html_pane("", sizing_mode="stretch_width", styles={"overflow-x": "auto"})
        self._events = html_pane("", sizing_mode="stretch_width")
        self._drawn: tuple[int, int] = (-1, -1)
        self._redraw = self.every(REDRAW_EVERY_S)

    def body(self) -> list[Any]:
        return [self._live, pn.pane.Markdown("#### Shadow candidate", margin=(0, 10)), self._shadow,
                pn.pane.Markdown("#### Versions (live precision and AUC from late labels)", margin=(0, 10)),
                self._versions, pn.pane.Markdown("#### Promotion history", margin=(0, 10)), self._history,
                pn.pane.Markdown("#### Swaps sent to the engine (control topic)", margin=(0, 10)), self._events]

    def draw(self) -> None:
        if not self._redraw.due(self.tick):
            return
        watch = self.hub.models
        mseq, doc, error = watch.document() if watch is not None else (0, None, None)
        eseq, events, shadow_counts = self.hub.state.model_events()
        if (mseq, eseq) == self._drawn:
            return
        self._drawn = (mseq, eseq)
        if doc is None:
            where = html.escape(str(watch.registry)) if watch is not None else "(no registry configured)"
            self._live.object = empty(f"no model registry at {where} yet: the engine creates it with its first model")
            self._versions.object = self._history.object = ""
        else:
            self._draw_registry(doc, error)
        self._shadow.object = self._shadow_html(doc, shadow_counts)
        self._events.object = table_html(
            pd.DataFrame(list(reversed(events))[:20]), ["at", "action", "version", "pipeline"],
            empty_text="no swaps sent on the control topic yet", cells={"at": lambda v, r: _when(v)})

    def _draw_registry(self, doc: dict[str, Any], error: str | None) -> None:
        current = doc.get("current") or {}
        live: dict[str, Any] = next((v for v in doc.get("versions", []) if v.get("live")), {})
        labels = live.get("live_labels") or {}
        self._live.object = kpis_html([
            ("live version", str(current.get("version") or "none yet"), False),
            ("how it went live", str(current.get("action") or current.get("reason") or "–"), False),
            ("since", _when(current.get("set_at")), False),
            ("threshold", _metric(live.get("threshold")), False),
            ("live precision", _metric(labels.get("precision")), False),
            ("live AUC", _metric(labels.get("auc")), False),
            ("online versions", f"{doc.get('online_versions', 0):,}", False),
        ]) + (empty(f"last read failed: {error}") if error else "")
        self._versions.object = versions_html(doc)
        self._history.object = history_html(doc.get("history") or [])

    def _shadow_html(self, doc: dict[str, Any] | None, counts: dict[str, list[int]]) -> str:
        shadow = (doc or {}).get("shadow")
        if not shadow and not counts:
            return empty("no shadow candidate: a nightly retrain puts one here before the gate decides")
        rows = []
        for version, c in counts.items():
            events, agree, cand, champ = (c + [0, 0, 0, 0])[:4]
            rows.append({"version": version, "events": events,
                         "agreement": agree / events if events else None,
                         "candidate alert rate": cand / events if events else None,
                         "champion alert rate": champ / events if events else None})
        head = ""
        if shadow:
            head = kpis_html([("candidate", str(shadow.get("version")), False),
                              ("champion", str(shadow.get("champion") or "–"), False),
                              ("events to score", f"{shadow.get('events', 0):,}", False),
                              ("started", _when(shadow.get("since")), False)])
        pct = lambda v, r: "–" if v is None else f"{100 * v:.2f} %"  # noqa: E731
        table = table_html(pd.DataFrame(rows), ["version", "events", "agreement", "candidate alert rate",
                                                "champion alert rate"],
                           empty_text="no shadow counts in the engine's metrics yet",
                           cells={"agreement": pct, "candidate alert rate": pct, "champion alert rate": pct})
        return head + table
