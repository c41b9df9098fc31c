"""Incidents: consecutive alerts of one key grouped into one record an operations team is paged on.

An incident opens at a key's first alert (an ``open`` record goes out at once: that is the page) and grows
with each further alert of the key. It closes (a ``closed`` record: start, end, peak score, alert count, the
attributions at the peak) once the key has had ``close_after_events`` events in a row without an alert, or
once the partition's event time is ``close_after_s`` past the incident's last alert (a key that went quiet).
Everything is decided in event time, per input partition, so a replay emits the same incidents with the same
ids, and the open incidents are part of the partition's checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class IncidentSpec:
    close_after_events: int = 8
    close_after_s: float = 300.0


@dataclass(frozen=True)
class IncidentRecord:
    """One record of the incidents topic."""

    incident_id: str
    status: str  # "open" or "closed"
    key: str
    start: str  # ISO-8601 UTC event time of the first alert
    end: str  # ... of the latest alert
    alerts: int
    peak_score: float
    top: str | None  # the explanation of the peak alert: "feature=share, ..."
    model_version: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> IncidentRecord:
        return cls(**json.loads(raw))


@dataclass
class _Open:
    start_us: int
    last_us: int
    alerts: int
    peak: float
    top: str | None
    quiet: int = 0


def _iso(us: int) -> str:
    return pd.Timestamp(us, unit="us", tz="UTC").isoformat()


class PartitionIncidents:
    """The open incidents of one input partition; :meth:`update` takes one scored batch in arrival order.

    >>> inc = PartitionIncidents(IncidentSpec(close_after_events=2))
    >>> keys = np.array(["a", "a", "a", "a", "b"], dtype=object)
    >>> out = inc.update(keys, np.arange(5) * 1_000_000, np.array([1, 1, 0, 0, 0], bool), np.full(5, 0.7),
    ...                  [None] * 5)
    >>> [(r.status, r.key, r.alerts) for r in out]
    [('open', 'a', 1), ('closed', 'a', 2)]
    """

    def __init__(self, spec: IncidentSpec) -> None:
        self.spec = spec
        self.open: dict[str, _Open] = {}
        self.max_us: int | None = None
        self.opened = 0
        self.closed = 0

    def update(self, keys: np.ndarray, times_us: np.ndarray, flagged: np.ndarray, scores: np.ndarray,
               explanations: list[str | None], model_version: str | None = None) -> list[IncidentRecord]:
        """Fold one batch in; returns the records of incidents opened and closed by it."""
        out: list[IncidentRecord] = []
        if len(keys) == 0:
            return out
        # rows of keys with an incident open, or opening in this batch, count towards closing it
        live = set(self.open) | set(keys[flagged].tolist())
        watch = pd.Series(keys).isin(list(live)).to_numpy() if live else flagged.copy()
        for i in np.flatnonzero(watch).tolist():
            key, t = str(keys[i]), int(times_us[i])
            inc = self.open.get(key)
            if flagged[i]:
                s = float(scores[i])
                if inc is None:
                    inc = self.open[key] = _Open(t, t, 1, s, explanations[i])
                    self.opened += 1
                    out.append(self._record(key, inc, "open", model_version))
                    continue
                inc.alerts += 1
                inc.last_us = max(inc.last_us, t)
                inc.quiet = 0
                if s > inc.peak:
                    inc.peak, inc.top = s, explanations[i]
            elif inc is not None:
                inc.quiet += 1
                if inc.quiet >= self.spec.close_after_events:
                    out.append(self._close(key, model_version))
        newest = int(times_us.max())
        self.max_us = newest if self.max_us is None else max(self.max_us, newest)
        limit = self.max_us - int(self.spec.close_after_s * 1e6)
        for key in [k for k, inc in self.open.items() if inc.last_us < limit]:
            out.append(self._close(key, model_version))
        return out

    def _close(self, key: str, model_version: str | None) -> IncidentRecord:
        inc = self.open.pop(key)
        self.closed += 1
        return self._record(key, inc, "closed", model_version)

    @staticmethod
    def _record(key: str, inc: _Open, status: str, model_version: str | None) -> IncidentRecord:
        return IncidentRecord(f"{key}@{inc.start_us}", status, key, _iso(inc.start_us), _iso(inc.last_us),
                              inc.alerts, round(inc.peak, 6), inc.top, model_version)

    # -- checkpoint -----------------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (no pickle) of the open incidents."""
        items = list(self.open.items())
        return {
            "keys": np.array([k for k, _ in items], dtype=str),
            "ints": np.array([[o.start_us, o.last_us, o.alerts, o.quiet] for _, o in items], dtype=np.int64
                             ).reshape(-1, 4),
            "peak": np.array([o.peak for _, o in items], dtype=np.float64),
            "top": np.array([o.top or "" for _, o in items], dtype=str),
            "meta": np.array([-1 if self.max_us is None else self.max_us, self.opened, self.closed], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, spec: IncidentSpec, arrays: dict[str, Any]) -> PartitionIncidents:
        inc = cls(spec)
        for key, ints, peak, top in zip(arrays["keys"].tolist(), arrays["ints"].tolist(), arrays["peak"].tolist(),
                                        arrays["top"].tolist(), strict=True):
            inc.open[str(key)] = _Open(int(ints[0]), int(ints[1]), int(ints[2]), float(peak), top or None,
                                       int(ints[3]))
        max_us, inc.opened, inc.closed = (int(v) for v in arrays["meta"].tolist())
        inc.max_us = None if max_us < 0 else max_us
        return inc
