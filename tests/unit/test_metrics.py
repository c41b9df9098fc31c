"""Metrics: labelled counters and gauges, safe to update from many threads."""

from __future__ import annotations

import threading

from streams.metrics import Metrics


def test_counters_add_and_gauges_replace() -> None:
    m = Metrics()
    m.inc("records", 5)
    m.inc("records", 2)
    m.inc("dead_letters", reason="oversize")
    m.set_gauge("lag", 10, partition=1)
    m.set_gauge("lag", 3, partition=1)
    m.set_gauge("rate", 2.5)
    assert m.snapshot() == {"dead_letters{reason=oversize}": 1, "lag{partition=1}": 3, "rate": 2.5,
                            "records": 7}
    assert m.get("lag", partition=1) == 3 and m.get("missing") == 0


def test_label_order_does_not_matter() -> None:
    m = Metrics()
    m.inc("x", a=1, b=2)
    m.inc("x", b=2, a=1)
    assert m.get("x", b=2, a=1) == 2


def test_concurrent_increments_are_not_lost() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(10_000):
            m.inc("n", partition=0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.get("n", partition=0) == 40_000
