"""The benchmarks' Chromium driver: the CPU priority its browser runs at (a real Chromium; skipped without one)."""

from __future__ import annotations

import os
import sys
import time

import psutil
import pytest

from benchmarks._browser import PRIORITIES, Browser, BrowserError, find_chromium

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium (apt-get install chromium, or $CHROMIUM)"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scheduling policies are Linux's"),
]


def _threads(browser: Browser) -> list[int]:
    """Every thread of the browser and of the processes it forked, once a page has loaded in a tab."""
    tab = browser.new_tab()
    tab.navigate("data:text/html,<canvas></canvas>")
    time.sleep(1.0)  # Chromium sets its threads' priorities as they start
    assert browser.pid is not None
    root = psutil.Process(browser.pid)
    tids = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            tids += [t.id for t in proc.threads()]
        except psutil.NoSuchProcess:  # a helper that has just exited
            continue
    return tids


def _nice(tid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return None


def test_priority_user_the_default_keeps_chromium_from_raising_any_of_its_threads() -> None:
    with Browser() as browser:
        nices = [n for n in map(_nice, _threads(browser)) if n is not None]
    assert len(nices) > 10
    assert min(nices) >= 0, f"a thread raised itself to nice {min(nices)}"


def test_priority_idle_puts_every_thread_under_sched_idle() -> None:
    with Browser(priority="idle") as browser:
        tids = _threads(browser)
        policies = []
        for tid in tids:
            try:
                policies.append(os.sched_getscheduler(tid))
            except OSError:  # a thread that has just ended
                continue
    assert len(policies) > 10
    assert set(policies) == {os.SCHED_IDLE}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may raise a priority: Chromium's own choice shows as root")
def test_priority_chromium_is_what_chromium_chooses_which_as_root_raises_some_threads() -> None:
    # the rig of the dashboard benchmark's runs up to 50, and the reason the default is "user"
    with Browser(priority="chromium") as browser:
        nices = [n for n in map(_nice, _threads(browser)) if n is not None]
    assert min(nices) < 0


def test_an_unknown_priority_is_refused_by_name() -> None:
    with pytest.raises(BrowserError, match="priority must be one of chromium, user, idle, not 'high'"):
        Browser(priority="high")  # type: ignore[arg-type]
    assert PRIORITIES == ("chromium", "user", "idle")
