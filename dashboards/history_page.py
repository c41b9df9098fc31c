"""The History page in the shared template: :class:`dashboards.history_view.HistoryPage` over the hub's lake.

``/history?from=YYYY-MM-DD&to=YYYY-MM-DD&key=K`` opens a range (and a key) directly; the Keys page links here.
Queries run only when the viewer changes a widget, and results are shared between viewers (cached in
:class:`dashboards.history.History`).
"""

from __future__ import annotations

from typing import Any

import panel as pn

from dashboards.hub import Hub
from dashboards.theme import empty, html_pane, template


def history_page(hub: Hub) -> Any:
    """The page one browser session gets at ``/history``."""
    from dashboards.history_view import HistoryPage

    pn.extension("tabulator")  # History's tables; loaded per document, as Panel wants for served apps
    if hub.history is None:
        body: Any = html_pane(empty("no lake configured: set lake.path to see history"))
    else:
        args = {}
        for name, values in (pn.state.session_args or {}).items():
            if values:
                raw = values[0]
                args[str(name)] = raw.decode() if isinstance(raw, bytes) else str(raw)
        doc = pn.state.curdoc
        served = doc is not None and doc.session_context is not None
        # served: the queries wait for the browser to have the page (a first read of a busy lake takes seconds)
        body = HistoryPage.from_query(hub.history, args, load_now=not served)
        if served:
            pn.state.onload(body.refresh_async)
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:  # counted like the live pages; nothing ticks here
        hub.broadcaster.session_created()

        def ended(_ctx: Any) -> None:
            hub.broadcaster.session_destroyed(None)

        doc.on_session_destroyed(ended)
    return template("History", "/history", body)
