"""The step after scoring: per-key event-time windows and incidents, with their state per input partition.

Both are keyed and decided in event time, so each input partition keeps its own
:class:`~engine.windows.PartitionWindows` and :class:`~engine.incidents.PartitionIncidents`, and both are
checkpointed with the partition's feature state. The step adds to the batch what leaves the engine: the
windows that closed (``stats`` topic and the windows lake table), window-level alerts (``alerts``), incident
records (``incidents``), and a ``late_event`` dead letter for each event whose window had already closed
(with ``windows.late_events: dead_letter``; the event itself is still scored and kept in the lake).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from engine.config import Config
from engine.incidents import IncidentRecord, IncidentSpec, PartitionIncidents
from engine.windows import PartitionWindows, WindowSpec
from streams.deadletter import DeadLetter, Reason
from streams.records import RawBatch


@dataclass
class Aggregated:
    """What one batch added: closed windows (lake rows), and records for the incidents topic."""

    windows: pd.DataFrame | None = None
    incidents: list[IncidentRecord] = field(default_factory=list)
    late: int = 0


class KeyedAggregates:
    """Windows and incidents of every input partition of a group (see the module doc)."""

    def __init__(self, cfg: Config) -> None:
        w, i = cfg.windows, cfg.incidents
        self.key_field = cfg.schema.key
        self.time_field = cfg.schema.event_time.field
        self.window_spec = WindowSpec(
            size_s=w.size_s, slide_s=w.slide_s, allowed_lateness_s=w.allowed_lateness_s, late=w.late_events,
            fields=tuple(w.fields if w.fields is not None else cfg.features.numeric), alarm_field=w.alarm_field,
            retention_s=w.retention_s if w.retention_s is not None else w.size_s,
            alert_anomaly_rate=w.alert_anomaly_rate, alert_alarm_rate=w.alert_alarm_rate, min_count=w.min_count,
        ) if w.enabled else None
        self.incident_spec = IncidentSpec(i.close_after_events, i.close_after_s) if i.enabled else None
        self.windows: dict[int, PartitionWindows] = {}
        self.incidents: dict[int, PartitionIncidents] = {}

    def _windows(self, p: int) -> PartitionWindows | None:
        if self.window_spec is None:
            return None
        if p not in self.windows:
            self.windows[p] = PartitionWindows(self.window_spec)
        return self.windows[p]

    def _incidents(self, p: int) -> PartitionIncidents | None:
        if self.incident_spec is None:
            return None
        if p not in self.incidents:
            self.incidents[p] = PartitionIncidents(self.incident_spec)
        return self.incidents[p]

    # -- checkpoint -----------------------------------------------------------------------------------------
    def state(self, p: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if (w := self._windows(p)) is not None:
            out.update({f"w.{k}": v for k, v in w.to_arrays().items()})
        if (inc := self._incidents(p)) is not None:
            out.update({f"i.{k}": v for k, v in inc.to_arrays().items()})
        return out

    def restore(self, p: int, arrays: dict[str, np.ndarray]) -> None:
        w = {k[2:]: v for k, v in arrays.items() if k.startswith("w.")}
        i = {k[2:]: v for k, v in arrays.items() if k.startswith("i.")}
        if self.window_spec is not None and w:
            self.windows[p] = PartitionWindows.from_arrays(self.window_spec, w)
        if self.incident_spec is not None and i:
            self.incidents[p] = PartitionIncidents.from_arrays(self.incident_spec, i)

    def watermarks(self) -> dict[int, int | None]:
        """Each partition's watermark (microseconds of event time), None before its first event."""
        return {p: w.watermark_us for p, w in self.windows.items()}

    # -- the step -------------------------------------------------------------------------------------------
    def update(self, frame: pd.DataFrame, is_anomaly: np.ndarray, scores: np.ndarray,
               explanations: list[str | None], model_version: str | None) -> tuple[Aggregated, np.ndarray]:
        """Fold one scored batch in; returns what it added and the mask of its late rows."""
        agg = Aggregated()
        late = np.zeros(len(frame), dtype=bool)
        if not len(frame) or (self.window_spec is None and self.incident_spec is None):
            return agg, late
        keys = (frame[self.key_field].astype("string").fillna("<null>").to_numpy(dtype=object) if self.key_field
                else np.full(len(frame), "", dtype=object))
        times = frame[self.time_field].dt.as_unit("us").astype("int64").to_numpy()
        parts = frame["_partition"].to_numpy()
        offsets = frame["_offset"].to_numpy()
        closed: list[pd.DataFrame] = []
        partitions = np.unique(parts).tolist()
        for p in partitions:
            idx = np.flatnonzero(parts == p) if len(partitions) > 1 else np.arange(len(frame))
            if (w := self._windows(int(p))) is not None:
                spec = self.window_spec
                assert spec is not None
                values = {f: frame[f].to_numpy(dtype=np.float64, na_value=np.nan)[idx] for f in spec.fields}
                alarm = (frame[spec.alarm_field].to_numpy(dtype=bool, na_value=False)[idx]
                         if spec.alarm_field else None)
                up = w.update(keys[idx], times[idx], values, is_anomaly[idx], alarm)
                late[idx] = up.late
                if len(up.closed):
                    c = up.closed.copy()
                    # the offset that closed them: a replay from before it emits them again, after it never
                    c["kafka_partition"] = np.int64(p)
                    c["kafka_offset"] = np.int64(offsets[idx].max())
                    closed.append(c)
            if (inc := self._incidents(int(p))) is not None:
                sel = explanations if len(partitions) == 1 else [explanations[j] for j in idx.tolist()]
                agg.incidents += inc.update(keys[idx], times[idx], is_anomaly[idx], scores[idx], sel, model_version)
        if closed:
            agg.windows = pd.concat(closed, ignore_index=True)
        agg.late = int(late.sum())
        return agg, late

    def dead_letters(self, frame: pd.DataFrame, late: np.ndarray, raw: RawBatch) -> list[DeadLetter]:
        """One ``late_event`` dead letter per late row, with the record's original bytes and coordinates."""
        rows = np.flatnonzero(late)
        if not len(rows):
            return []
        where = {(int(p), int(o)): i for i, (p, o) in enumerate(zip(raw.partitions.tolist(), raw.offsets.tolist(),
                                                                    strict=True))}
        size = self.window_spec.size_s if self.window_spec is not None else 0.0
        parts = frame["_partition"].to_numpy()
        offsets = frame["_offset"].to_numpy()
        times = dict(zip(rows.tolist(), frame[self.time_field].iloc[rows].astype(str).tolist(), strict=True))
        out = []
        for i in rows.tolist():
            p, o = int(parts[i]), int(offsets[i])
            j = where.get((p, o))
            detail = (f"{self.time_field} {times[i]} is behind the partition's "
                      f"watermark: its {size:g} s window had closed")
            out.append(DeadLetter(Reason.LATE_EVENT, detail, raw.topic, p, o,
                                  raw.keys[j] if j is not None else None, raw.values[j] if j is not None else b""))
        return out
