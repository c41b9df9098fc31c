"""The dashboard benchmark's floor page: its rows and what it serves (the browser side is in
tests/integration/test_floor_page_browser.py)."""

from __future__ import annotations

import json
from typing import Any

from benchmarks._floor_page import COLUMNS, LIVECHART_JS, Ticker, columns, page_html


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: str) -> None:
        self.sent.append(json.loads(message))


def test_the_ring_starts_full_and_a_tick_sends_one_new_row_to_every_socket() -> None:
    ticker = Ticker(tick_ms=100, ring=50)
    assert len(ticker.rows) == 50  # a new page draws a full ring at once, as the dashboard's does
    times = [r[0] for r in ticker.rows]
    assert times == sorted(times) and times[-1] - times[0] == 49 * 100
    seqs = [r[1] for r in ticker.rows]
    assert seqs == list(range(1, 51))
    a, b = FakeSocket(), FakeSocket()
    ticker.sockets |= {a, b}  # type: ignore[arg-type]
    ticker.tick()
    assert len(ticker.rows) == 50 and ticker.rows[-1][1] == 51.0
    for sock in (a, b):
        [msg] = sock.sent
        assert set(msg) == set(COLUMNS) and all(len(v) == 1 for v in msg.values())
        assert msg["seq"] == [51.0] and msg["kafka_ts_ms"] == msg["t"]  # no Kafka: data-to-screen = tick-to-screen


def test_columns_and_page_carry_what_the_collector_and_charts_read() -> None:
    doc = json.loads(columns([(1.0, 2.0, 3.0, 4.0, 5.0), (6.0, 7.0, 8.0, 9.0, 10.0)]))
    assert doc == {"t": [1.0, 6.0], "seq": [2.0, 7.0], "kafka_ts_ms": [3.0, 8.0], "events_per_s": [4.0, 9.0],
                   "anomalies_per_s": [5.0, 10.0]}
    html = page_html(1_200)
    assert "const RING = 1200;" in html and '"live-timeline"' in html  # the name the collector looks for
    assert 'import {paint} from "/livechart.js"' in html  # the dashboard's own drawing, not a copy
    assert "export function paint" in LIVECHART_JS.read_text()
