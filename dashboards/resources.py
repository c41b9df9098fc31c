"""What a page makes its browser load: Panel's server pages without the 1.8 MB MathJax bundle.

Panel adds ``bokeh-mathjax.min.js`` to every served page with an HTML or Markdown pane among its document's
roots, in case its text has TeX in it. Every isostream page has one (the template's navigation), and none
shows math (keys, reasons and numbers only: a ``$`` in a key must show as a ``$``). Measured in headless
Chromium on this 2-core machine, 12 fresh tabs of the Overview each (quiet machine, warm HTTP cache): without
the bundle a tab spent 438 ms instead of 523 ms on its main thread before its first plot (rendered at 797 ms
instead of 903 ms, median), and held 13.3 MB of JavaScript heap instead of 20.7 MB. In a tab starved of CPU
(ten viewers beside the engine) those milliseconds stretch.

Panel decides this inside ``panel.io.server``, in ``bundle_resources``, with an ``enable_mathjax`` switch its
server path never sets; :func:`skip_mathjax` sets it there. Without the bundle BokehJS's MathJax provider
reports "failed" and the panes show their text as it is: nothing is fetched from elsewhere.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

log = logging.getLogger(__name__)

_MARK = "_isostream_without_mathjax"


def skip_mathjax() -> bool:
    """Make the Panel server's pages leave out ``bokeh-mathjax`` (idempotent); False when Panel has no such switch."""
    import panel.io.server as server

    bundle = getattr(server, "bundle_resources", None)
    if bundle is None:
        log.debug("dashboard: panel.io.server has no bundle_resources; pages keep Panel's scripts")
        return False
    if getattr(bundle, _MARK, False):
        return True
    if "enable_mathjax" not in inspect.signature(bundle).parameters:
        log.debug("dashboard: this Panel's bundle_resources has no enable_mathjax; pages keep MathJax")
        return False

    @functools.wraps(bundle)
    def without_mathjax(roots: Any, resources: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("enable_mathjax", False)
        return bundle(roots, resources, *args, **kwargs)

    setattr(without_mathjax, _MARK, True)
    server.bundle_resources = without_mathjax
    return True
