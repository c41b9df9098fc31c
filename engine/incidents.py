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
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd

from streams.keys import key_codes


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
        return json.dumps(self.__dict__, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> IncidentRecord:
        return cls(**json.loads(raw))


# numba: the open/extend/close state machine is sequential per key; a Python loop over the rows of keys with
# an incident open cost ~2 µs each, a third of the aggregate step
@numba.njit(cache=True, nogil=True)
def _fold(codes, times, flagged, scores, close_events, is_open, start, last, alerts, quiet, peak, peak_row,
          ev_row, ev_code, ev_kind, ev_start, ev_last, ev_alerts, ev_peak, ev_peak_row):  # pragma: no cover
    n_ev = 0
    for i in range(codes.shape[0]):
        k = codes[i]
        t = times[i]
        if flagged[i]:
            if is_open[k] == 0:
                is_open[k] = 1
                start[k] = t
                last[k] = t
                alerts[k] = 1
                quiet[k] = 0
                peak[k] = scores[i]
                peak_row[k] = i
                kind = 0
            else:
                alerts[k] += 1
                last[k] = max(last[k], t)
                quiet[k] = 0
                if scores[i] > peak[k]:
                    peak[k] = scores[i]
                    peak_row[k] = i
                continue
        elif is_open[k] == 1:
            quiet[k] += 1
            if quiet[k] < close_events:
                continue
            is_open[k] = 0
            kind = 1
        else:
            continue
        ev_row[n_ev] = i
        ev_code[n_ev] = k
        ev_kind[n_ev] = kind
        ev_start[n_ev] = start[k]
        ev_last[n_ev] = last[k]
        ev_alerts[n_ev] = alerts[k]
        ev_peak[n_ev] = peak[k]
        ev_peak_row[n_ev] = peak_row[k]
        n_ev += 1
    return n_ev


def _iso(us: np.ndarray) -> list[str]:
    return [s + "Z" for s in np.datetime_as_string(np.asarray(us, dtype=np.int64).astype("datetime64[us]"),
                                                  unit="ms").tolist()]


_INTS = ("start", "last", "alerts", "quiet")


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
        self.vocab: pd.Index = pd.Index([], dtype=object)  # the keys, in code order
        self.top: list[str | None] = []  # the peak's explanation of each key's open incident
        self._alloc(0)
        self.max_us: int | None = None
        self.opened = 0
        self.closed = 0

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "state", None)
        self.state: dict[str, np.ndarray] = {name: np.zeros(cap, np.int64) for name in (*_INTS, "is_open", "peak_row")}
        self.state["peak"] = np.zeros(cap)
        if old is not None:
            for name, arr in old.items():
                self.state[name][: len(arr)] = arr

    @property
    def open(self) -> dict[str, int]:
        """Keys with an incident open -> their code."""
        return {str(self.vocab[k]): k for k in np.flatnonzero(self.state["is_open"][: len(self.vocab)]).tolist()}

    def _codes(self, keys: np.ndarray) -> np.ndarray:
        codes, self.vocab = key_codes(keys, self.vocab)
        self.top += [None] * (len(self.vocab) - len(self.top))
        if len(self.vocab) > len(self.state["is_open"]):
            self._alloc(max(64, 2 * len(self.vocab)))
        return codes

    def update(self, keys: np.ndarray, times_us: np.ndarray, flagged: np.ndarray, scores: np.ndarray,
               explanations: list[str | None], model_version: str | None = None) -> list[IncidentRecord]:
        """Fold one batch in; returns the records of incidents opened and closed by it."""
        if len(keys) == 0:
            return []
        flagged = np.asarray(flagged, dtype=bool)
        live = set(self.open) | set(keys[flagged].tolist())
        if not live:  # nothing open and nothing alerting: the usual batch costs one pass of the mask
            self._advance(int(np.max(times_us)))
            return []
        watch = pd.Series(keys).isin(list(live)).to_numpy()
        rows = np.flatnonzero(watch)
        codes = self._codes(keys[rows])
        st = self.state
        st["peak_row"][:] = -1
        n = len(rows)
        ev = {name: np.empty(n, np.int64) for name in ("row", "code", "kind", "start", "last", "alerts", "peak_row")}
        ev_peak = np.empty(n)
        n_ev = _fold(codes, np.asarray(times_us, np.int64)[rows], flagged[rows],
                     np.asarray(scores, np.float64)[rows], self.spec.close_after_events, st["is_open"], st["start"],
                     st["last"], st["alerts"], st["quiet"], st["peak"], st["peak_row"], ev["row"], ev["code"],
                     ev["kind"], ev["start"], ev["last"], ev["alerts"], ev_peak, ev["peak_row"])
        tops = [explanations[int(rows[pr])] if pr >= 0 else self.top[k]
                for k, pr in zip(ev["code"][:n_ev].tolist(), ev["peak_row"][:n_ev].tolist(), strict=True)]
        out = self._records(ev["code"][:n_ev], ev["start"][:n_ev], ev["last"][:n_ev], ev["alerts"][:n_ev],
                            ev_peak[:n_ev], tops, ["open" if k == 0 else "closed" for k in ev["kind"][:n_ev].tolist()],
                            model_version)
        # the peaks set in this batch of incidents still open, for their records in a later batch
        for k in np.flatnonzero((st["peak_row"] >= 0) & (st["is_open"] == 1)).tolist():
            self.top[k] = explanations[int(rows[st["peak_row"][k]])]
        self.opened += sum(r.status == "open" for r in out)
        self.closed += sum(r.status == "closed" for r in out)
        return out + self._advance(int(np.max(times_us)), model_version)

    def _advance(self, newest: int, model_version: str | None = None) -> list[IncidentRecord]:
        """Move the partition's event time on; close incidents whose last alert it left close_after_s behind."""
        self.max_us = newest if self.max_us is None else max(self.max_us, newest)
        st = self.state
        limit = self.max_us - int(self.spec.close_after_s * 1e6)
        n = len(self.vocab)
        stale = np.flatnonzero((st["is_open"][:n] == 1) & (st["last"][:n] < limit))
        if not len(stale):
            return []
        st["is_open"][stale] = 0
        self.closed += len(stale)
        return self._records(stale, st["start"][stale], st["last"][stale], st["alerts"][stale], st["peak"][stale],
                             [self.top[k] for k in stale.tolist()], ["closed"] * len(stale), model_version)

    def _records(self, codes: np.ndarray, starts: np.ndarray, lasts: np.ndarray, alerts: np.ndarray,
                 peaks: np.ndarray, tops: list[str | None], statuses: list[str],
                 model_version: str | None) -> list[IncidentRecord]:
        """The records of incidents opened or closed, one conversion of their times for all of them."""
        keys = [str(k) for k in self.vocab.to_numpy()[codes].tolist()]
        return [IncidentRecord(f"{key}@{start}", status, key, first, end, int(n), round(float(peak), 6), top,
                               model_version)
                for key, start, first, end, n, peak, top, status in zip(
                    keys, starts.tolist(), _iso(starts), _iso(lasts), alerts.tolist(), peaks.tolist(), tops, statuses,
                    strict=True)]

    # -- checkpoint -----------------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (no pickle) of the open incidents."""
        st = self.state
        idx = np.flatnonzero(st["is_open"][: len(self.vocab)] == 1)
        return {
            "keys": self.vocab.to_numpy()[idx].astype(str),
            "ints": np.column_stack([st[name][idx] for name in _INTS]).reshape(-1, 4).astype(np.int64),
            "peak": st["peak"][idx].astype(np.float64),
            "top": np.array([self.top[k] or "" for k in idx.tolist()], dtype=str),
            "meta": np.array([-1 if self.max_us is None else self.max_us, self.opened, self.closed], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, spec: IncidentSpec, arrays: dict[str, Any]) -> PartitionIncidents:
        inc = cls(spec)
        keys = [str(k) for k in arrays["keys"].tolist()]
        if keys:
            codes = inc._codes(np.array(keys, dtype=object))
            st = inc.state
            for j, name in enumerate(_INTS):
                st[name][codes] = arrays["ints"][:, j]
            st["peak"][codes] = arrays["peak"]
            st["is_open"][codes] = 1
            for k, top in zip(codes.tolist(), arrays["top"].tolist(), strict=True):
                inc.top[k] = top or None
        max_us, inc.opened, inc.closed = (int(v) for v in arrays["meta"].tolist())
        inc.max_us = None if max_us < 0 else max_us
        return inc
