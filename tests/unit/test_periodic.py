"""engine.periodic: the timer calls at its pace, survives a failing call, and stops."""

from __future__ import annotations

import logging
import time

import pytest

from engine.periodic import Periodic


def _wait_for(cond: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_calls_at_its_pace_goes_on_after_a_failure_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []

    def job() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("a bad moment")

    timer = Periodic(0.02, job, "test-timer")
    with caplog.at_level(logging.ERROR, logger="engine.periodic"):
        timer.start()
        timer.start()  # idempotent: still one thread
        _wait_for(lambda: len(calls) >= 3)
        timer.stop()
    n = len(calls)
    assert n >= 3 and not timer.running
    assert [r.getMessage() for r in caplog.records] == ["test-timer: a periodic call failed; the timer goes on"]
    time.sleep(0.1)
    assert len(calls) == n  # stopped means stopped
    timer.start()  # and it starts again
    _wait_for(lambda: len(calls) > n)
    timer.stop()
    assert len(calls) > n


def test_a_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every_s must be > 0"):
        Periodic(0.0, lambda: None, "never")
