"""A live page's own check that its updates still come: a banner once the server has been silent too long.

The server sends every live page a beat with its status line, once a second. When beats stop, the page's
charts and numbers stay as they were, and nothing on it would say so: the server fell behind, stopped, or the
connection went (the 30-minute benchmark saw one tab of ten get no update for ten minutes while its server
queued them; see ``/status.json`` ``pages``). The browser measures the silence itself, so the banner comes
whatever the cause, and goes as soon as a beat does.

>>> dog = Watchdog(after_s=5.0)
>>> dog.beat, dog.after_s
(0, 5.0)
"""

from __future__ import annotations

from typing import Any

import panel as pn
import param

#: seconds without a beat before the banner shows: healthy tabs under the benchmark's load (ten viewers on two
#: cores) went at most 3.4 s without a new row, so this does not cry wolf there
SILENT_S = 10.0


class Watchdog(pn.custom.JSComponent):
    """Hidden while ``beat`` keeps changing; after ``after_s`` without a change, a banner that says how long."""

    beat = param.Integer(default=0, doc="changed by the server with each status line (once a second)")
    after_s = param.Number(default=SILENT_S, bounds=(1.0, None), doc="silence before the banner shows")

    _esm = """
export function render({ model, el }) {
  const banner = document.createElement("div");
  banner.className = "iso-stale";
  banner.setAttribute("role", "alert");
  banner.style.cssText = "display:none; margin:4px 10px; padding:6px 10px; border-left:4px solid #d62728;" +
    " background:#fdecea; color:#7f1d1d; font-size:10pt;";
  let last = Date.now();
  model.on("beat", () => {
    last = Date.now();
    banner.style.display = "none";
  });
  const check = () => {
    const quiet = Math.floor((Date.now() - last) / 1000);
    if (quiet < model.after_s) return;
    banner.textContent = `No update from the dashboard server for ${quiet} s: it is behind, stopped, or the ` +
      "connection was lost. What this page shows is that old. It catches up by itself if the server does; " +
      "reload it if it does not.";
    banner.style.display = "block";
  };
  const timer = setInterval(check, 1000);
  model.on("remove", () => clearInterval(timer));
  return banner;
}
"""

    def __init__(self, **params: Any) -> None:
        params.setdefault("sizing_mode", "stretch_width")
        super().__init__(**params)
