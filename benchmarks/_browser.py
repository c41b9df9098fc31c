"""A small headless-Chromium driver over the DevTools protocol (CDP): launch, open tabs, evaluate, measure.

Why not Playwright here: Playwright puts a Node.js driver between us and the browser and enables the Network
and Runtime domains of every page, so each websocket frame of every tab is also relayed to that driver. With
ten tabs at ten updates a second on a two-core machine that relay is measurable CPU, charged to the browser
side of a benchmark about CPU. Here one websocket carries only what we ask for (``Page``, ``Runtime``,
``Performance``; no ``Network``), and a reader thread hands replies back to the caller that waits on them.

>>> with Browser() as browser:  # doctest: +SKIP
...     tab = browser.new_tab()
...     tab.navigate("http://127.0.0.1:5006/")
...     tab.wait_for("window.Bokeh !== undefined", timeout_s=30)
...     tab.heap_used_bytes()
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

import psutil
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
#: no sandbox and no GPU (containers), no background traffic; and background tabs run like the front one:
#: the benchmark's ten tabs share one window, and a throttled tab would be measured as a slow dashboard
DEFAULT_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
)


Priority = Literal["chromium", "user", "idle"]
#: what ``Browser(priority=...)`` means. ``user`` (the default): as for a viewer who is not root; Chromium may
#: lower its threads' priority but not raise it. ``chromium``: whatever Chromium sets itself, which as root
#: (containers, CI) raises its browser and GPU processes to nice -8, above every other process on the machine;
#: the dashboard benchmark's runs up to 50 ran so. ``idle``: Linux ``SCHED_IDLE``, only the CPU that other
#: work leaves, as if the browser ran on another machine.
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
DEFAULT_PRIORITY: Priority = "user"


class BrowserError(RuntimeError):
    """Chromium could not be started or reached, or a DevTools command failed (the message says which)."""


class BrowserTimeout(BrowserError):
    """A DevTools command got no answer in time (a renderer starved of CPU, or hung); the browser is still up."""


def no_chromium(path: str | None = None) -> str:
    """Why a benchmark that needs Chromium skips: what was looked for, and how to get it."""
    return f"no Chromium at {path or CHROMIUM} (apt-get install chromium, or --chromium)"


def find_chromium(path: str | None = None) -> str | None:
    """The Chromium executable to use: ``path``, else ``$CHROMIUM``, ``/usr/bin/chromium`` or one on PATH.

    >>> find_chromium("/no/such/browser") is None
    True
    """
    if path is not None:
        return path if os.access(path, os.X_OK) else None
    for candidate in (os.environ.get("CHROMIUM"), CHROMIUM):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium process and its browser-level DevTools websocket.

    ``priority`` is the CPU priority of the browser and every process it forks (see :data:`PRIORITIES`).
    """

    def __init__(self, executable: str | None = None, args: tuple[str, ...] = DEFAULT_ARGS,
                 window: tuple[int, int] = (1400, 1000), timeout_s: float = 30.0,
                 priority: Priority = DEFAULT_PRIORITY) -> None:
        found = find_chromium(executable)
        if found is None:
            msg = f"browser: no Chromium executable (asked for {executable or CHROMIUM!r}; set $CHROMIUM)"
            raise BrowserError(msg)
        self.executable = found
        self.args = args
        self.window = window
        self.timeout_s = timeout_s
        if priority not in PRIORITIES:
            msg = f"browser: priority must be one of {', '.join(PRIORITIES)}, not {priority!r}"
            raise BrowserError(msg)
        self.priority = priority
        self._proc: subprocess.Popen[bytes] | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._ws: ClientConnection | None = None
        self._reader: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, Future[dict[str, Any]]]] = {}  # id -> (method, its answer)
        self._lock = threading.Lock()
        self._exceptions: dict[str, list[str]] = {}  # session id -> uncaught page exceptions and console errors
        self.closed_reason: str | None = None

    @property
    def pid(self) -> int | None:
        """The browser process's id while it runs (its renderers are its children)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> Browser:
        """Launch Chromium on a fresh profile and connect to its DevTools endpoint."""
        # a helper still writing its cache into the profile must not turn cleanup into an error
        self._profile = tempfile.TemporaryDirectory(prefix="isostream-chromium-", ignore_cleanup_errors=True)
        profile = Path(self._profile.name)
        cmd = [self.executable, *self.args, f"--window-size={self.window[0]},{self.window[1]}",
               f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=_PREPARE[self.priority])
        # Chromium picks the port itself and writes it, with the browser target's path, into the profile
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self._proc.poll() is not None:
                self._cleanup()
                msg = f"browser: {self.executable} exited with code {self._proc.returncode} while starting"
                raise BrowserError(msg)
            lines = active.read_text().split() if active.exists() else []
            if len(lines) >= 2:
                break
            if time.monotonic() > deadline:
                self.close()
                msg = f"browser: {self.executable} wrote no DevToolsActivePort within {self.timeout_s:.0f} s"
                raise BrowserError(msg)
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        self._ws = connect(url, max_size=None, compression=None, open_timeout=self.timeout_s)
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        return self

    # -- the protocol ------------------------------------------------------------------------------------
    def request(self, method: str, params: dict[str, Any] | None = None,
                session_id: str | None = None) -> Future[dict[str, Any]]:
        """Send one DevTools command and return at once: the Future gets its result, or a BrowserError.

        Nothing waits here, so a renderer starved of CPU delays only its own answer: a caller can ask ten tabs,
        take the answers that came, and ask again only the tabs that answered.
        """
        if self._ws is None:
            msg = f"browser: {method}: not started (call start() or use the browser as a context manager)"
            raise BrowserError(msg)
        cid = next(self._ids)
        fut: Future[dict[str, Any]] = Future()
        with self._lock:
            if self.closed_reason is not None:
                msg = f"browser: {method}: the DevTools connection is closed ({self.closed_reason})"
                raise BrowserError(msg)
            self._pending[cid] = (method, fut)
        message: dict[str, Any] = {"id": cid, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        try:
            self._ws.send(json.dumps(message))
        except ConnectionClosed as err:
            with self._lock:
                self._pending.pop(cid, None)
            msg = f"browser: {method}: the DevTools connection closed ({err})"
            raise BrowserError(msg) from err
        return fut

    def send(self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
        """Send one DevTools command and wait for its result; a protocol error raises :class:`BrowserError`,
        no answer within ``timeout_s`` :class:`BrowserTimeout`."""
        return self.send_many([(method, params, session_id)], timeout_s)[0]

    def send_many(self, calls: list[tuple[str, dict[str, Any] | None, str | None]],
                  timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Send every ``(method, params, session_id)`` at once, then wait for all (one deadline for all)."""
        futures = [(method, self.request(method, params, session_id)) for method, params, session_id in calls]
        limit = timeout_s if timeout_s is not None else self.timeout_s
        deadline = time.monotonic() + limit
        out = []
        for method, fut in futures:
            try:
                out.append(fut.result(timeout=max(0.0, deadline - time.monotonic())))
            except FutureTimeout as err:
                msg = f"browser: {method} got no answer within {limit:.0f} s"
                raise BrowserTimeout(msg) from err
        return out

    def _read(self) -> None:
        assert self._ws is not None
        try:
            for raw in self._ws:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        method, fut = self._pending.pop(msg["id"], ("", None))
                    if fut is None or fut.done():
                        continue
                    if "error" in msg:
                        problem = msg["error"]
                        text = f"browser: {method} failed: {problem.get('message')} ({problem.get('data', '')})"
                        fut.set_exception(BrowserError(text))
                    else:
                        fut.set_result(dict(msg.get("result", {})))
                elif msg.get("method") == "Runtime.exceptionThrown":
                    details = msg["params"]["exceptionDetails"]
                    text = details.get("exception", {}).get("description") or details.get("text", "")
                    self._page_error(msg.get("sessionId", ""), str(text))
                elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"].get("type") == "error":
                    # BokehJS catches what fails while it applies a server message and logs it here, not as an
                    # uncaught exception: a tab whose updates stop silently would otherwise show nothing
                    args = msg["params"].get("args", [])
                    text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
                    self._page_error(msg.get("sessionId", ""), f"console.error: {text}")
        except ConnectionClosed as err:
            reason = f"closed: {err}"
        except Exception as err:  # noqa: BLE001 - the reader must hand every waiter a reason, not die quietly
            reason = f"reader failed: {err!r}"
        else:
            reason = "closed"
        with self._lock:
            self.closed_reason = reason
            waiting = list(self._pending.values())
            self._pending.clear()
        for method, fut in waiting:
            if not fut.done():
                fut.set_exception(BrowserError(f"browser: {method}: the DevTools connection {reason}"))

    def _page_error(self, session_id: str, text: str) -> None:
        errors = self._exceptions.setdefault(session_id, [])
        if len(errors) < 50:  # a page throwing on every tick must not grow this without bound
            errors.append(text[:500])

    # -- tabs --------------------------------------------------------------------------------------------
    def new_context(self) -> str:
        """A new browser context (like an incognito window: its own cache and cookies); returns its id."""
        return str(self.send("Target.createBrowserContext", {"disposeOnDetach": True})["browserContextId"])

    def new_tab(self, init_script: str | None = None, *, new_window: bool = True, context: str | None = None) -> Tab:
        """A new blank tab, attached; ``init_script`` runs in every document it loads, before the page's own.

        ``context``: a :meth:`new_context` id (a cold cache); by default the browser's own, shared by its tabs.

        ``new_window`` (default): the tab gets a window of its own, so it is visible and draws frames. Tabs
        sharing a window are hidden but for the front one (``document.visibilityState == "hidden"``), and a
        hidden page gets no animation frames at all, whatever the throttling flags say: ten viewers would be
        one drawing viewer and nine that only receive.
        """
        params: dict[str, Any] = {"url": "about:blank", "newWindow": new_window, "background": False}
        if context is not None:
            params["browserContextId"] = context
        target = self.send("Target.createTarget", params)["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tab = Tab(self, target, session)
        for method in ("Page.enable", "Runtime.enable", "Performance.enable"):
            tab.send(method)
        if init_script is not None:
            tab.send("Page.addScriptToEvaluateOnNewDocument", {"source": init_script})
        return tab

    def exceptions(self, session_id: str) -> list[str]:
        """Uncaught exceptions the tab's pages threw and errors they logged to the console (the first 50)."""
        return list(self._exceptions.get(session_id, []))

    # -- life cycle --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection, stop Chromium and its helper processes (SIGTERM, then SIGKILL), remove its profile."""
        helpers = _children(self._proc.pid) if self._proc is not None and self._proc.poll() is None else []
        if self._ws is not None:
            try:
                self._ws.send(json.dumps({"id": next(self._ids), "method": "Browser.close"}))
            except ConnectionClosed:
                pass
            self._ws.close()
            self._ws = None
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
        # renderers and helpers outlive the browser process by a moment: wait for them, then kill the rest
        _gone, alive = psutil.wait_procs(helpers, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self._cleanup()

    def _cleanup(self) -> None:
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def __enter__(self) -> Browser:
        return self.start() if self._ws is None else self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Tab:
    """One page target of a :class:`Browser`, driven through its flattened DevTools session."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.closed = False

    def send(self, method: str, params: dict[str, Any] | None = None, timeout_s: float | None = None
             ) -> dict[str, Any]:
        """One DevTools command to this tab's session."""
        return self.browser.send(method, params, self.session_id, timeout_s)

    def navigate(self, url: str) -> None:
        """Start loading ``url``; returns once the navigation is under way, not when the page has loaded."""
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            msg = f"browser: navigating to {url} failed: {result['errorText']}"
            raise BrowserError(msg)

    def evaluate(self, expression: str, timeout_s: float | None = None) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited); a page exception raises."""
        return _value(self.send("Runtime.evaluate", _evaluate(expression), timeout_s), expression)

    def evaluate_async(self, expression: str) -> Future[Any]:
        """:meth:`evaluate` without waiting: the Future gets the value, or the BrowserError."""
        out: Future[Any] = Future()

        def done(fut: Future[dict[str, Any]]) -> None:
            try:
                out.set_result(_value(fut.result(), expression))
            except Exception as err:  # noqa: BLE001 - whatever went wrong, the waiter must hear of it
                out.set_exception(err)

        self.browser.request("Runtime.evaluate", _evaluate(expression), self.session_id).add_done_callback(done)
        return out

    def heap_used_async(self, *, collect: bool = False) -> Future[float]:
        """``JSHeapUsedSize`` without waiting; with ``collect``, after a full garbage collection (the two
        commands go in order on the tab's session, so the reading follows the collection)."""
        if collect:
            self.browser.request("HeapProfiler.collectGarbage", None, self.session_id)
        out: Future[float] = Future()

        def done(fut: Future[dict[str, Any]]) -> None:
            try:
                out.set_result(_heap_used(fut.result()))
            except Exception as err:  # noqa: BLE001 - whatever went wrong, the waiter must hear of it
                out.set_exception(err)

        self.browser.request("Performance.getMetrics", None, self.session_id).add_done_callback(done)
        return out

    def wait_for(self, expression: str, timeout_s: float = 30.0, poll_s: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy; returns that value, or raises after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                msg = f"browser: {expression[:80]!r} still false after {timeout_s:.0f} s"
                raise BrowserError(msg)
            time.sleep(poll_s)

    def metrics(self) -> dict[str, float]:
        """The page's ``Performance.getMetrics`` (``JSHeapUsedSize``, ``Nodes``, ``LayoutCount``...)."""
        return {m["name"]: float(m["value"]) for m in self.send("Performance.getMetrics")["metrics"]}

    def heap_used_bytes(self) -> float:
        """Bytes of the page's JavaScript heap in use now (garbage not yet collected included)."""
        return _heap_used(self.send("Performance.getMetrics"))

    def collect_garbage(self) -> None:
        """Run a full garbage collection in the page (so a heap reading is what the page still holds)."""
        self.send("HeapProfiler.collectGarbage")

    @property
    def exceptions(self) -> list[str]:
        """Uncaught exceptions of this tab's pages, and errors they logged to the console, so far."""
        return self.browser.exceptions(self.session_id)

    def close(self) -> None:
        """Close the tab at once (as a user closing it: the page gets no chance to finish anything)."""
        if not self.closed:
            self.closed = True
            self.browser.send("Target.closeTarget", {"targetId": self.target_id})


def _heap_used(metrics: dict[str, Any]) -> float:
    for m in metrics.get("metrics", []):
        if m["name"] == "JSHeapUsedSize":
            return float(m["value"])
    msg = f"browser: Performance.getMetrics has no JSHeapUsedSize (got {[m['name'] for m in metrics.get('metrics', [])]})"
    raise BrowserError(msg)


def _evaluate(expression: str) -> dict[str, Any]:
    return {"expression": expression, "returnByValue": True, "awaitPromise": True}


def _value(result: dict[str, Any], expression: str) -> Any:
    if "exceptionDetails" in result:
        details = result["exceptionDetails"]
        text = details.get("exception", {}).get("description") or details.get("text")
        msg = f"browser: evaluating {expression[:80]!r} threw: {text}"
        raise BrowserError(msg)
    return result.get("result", {}).get("value")


def _children(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _as_user() -> None:
    """``preexec_fn``: :func:`die_with_parent`, without the right to raise a priority (``CAP_SYS_NICE``), which a
    root process's children keep only if its bounding set has it; Chromium's own attempts then fail quietly."""
    die_with_parent()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(24, 23)  # PR_CAPBSET_DROP, CAP_SYS_NICE; a process without CAP_SETPCAP keeps its set: no harm


def _idle() -> None:
    """``preexec_fn``: :func:`die_with_parent`, and ``SCHED_IDLE``, which forked children inherit and under which
    nice values do not count."""
    die_with_parent()
    if sys.platform.startswith("linux"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: Linux SIGTERMs it when its parent dies, even by SIGKILL (no orphans).

    Linux ties this to the thread that started the child: start it from a thread that outlives it.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


_PREPARE: dict[Priority, Callable[[], None]] = {"chromium": die_with_parent, "user": _as_user, "idle": _idle}
