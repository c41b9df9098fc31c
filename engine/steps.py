"""The steps of the streaming chain: each a function of one :class:`Batch` and an explicit state object.

``decode -> features -> score -> outputs``. State that spans batches lives in the objects passed in (per
partition feature state, the model holder, the output buffers), never in globals, so a partition group can
checkpoint it and a test can drive the chain with in-memory parts. streamz composes the steps
(:func:`engine.group.build_streams`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from engine.aggregate import Aggregated, KeyedAggregates
from engine.model_holder import ModelHolder
from engine.outputs import Scored, alert_records, encode_scores_arrow, lake_frame, score_records, scores_frame
from engine.windows import window_alert_records, window_records
from streams.deadletter import DeadLetter
from streams.decode import Decoder
from streams.records import RawBatch
from streams.schema import Schema
from training.features import FeatureBuilder, Features, FeaturesConfig, KeyState


class StepError(RuntimeError):
    """A step cannot run on this batch (no model yet, missing columns)."""


@dataclass
class Batch:
    """One micro-batch as it moves through the chain; each step fills in its part."""

    raw: RawBatch
    frame: pd.DataFrame | None = None
    dead: list[DeadLetter] = field(default_factory=list)
    X: np.ndarray | None = None
    #: rows of keys past their warm-up (only those may alert, and only those are learnt from)
    warm: np.ndarray | None = None
    score: np.ndarray | None = None
    threshold: np.ndarray | None = None
    is_anomaly: np.ndarray | None = None
    model_version: str | None = None
    explanations: list[str | None] | None = None
    lake: pd.DataFrame | None = None
    #: what the aggregate step added: closed windows and incident records
    aggregated: Aggregated | None = None
    #: (shadow candidate version, [warm events, agree, candidate alerts, champion alerts]) when one is shadowed
    shadow: tuple[str, list[int]] | None = None
    #: when the batch entered the chain (monotonic seconds): its stats record's batch latency counts from here
    arrived: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)

    @property
    def offsets(self) -> dict[int, int]:
        """Partition -> next offset once this batch is done."""
        return self.raw.next_offsets()


# -- decode --------------------------------------------------------------------------------------------------
def decode(batch: Batch, decoder: Decoder) -> Batch:
    """Raw bytes -> schema-checked frame and dead letters (bad records never raise)."""
    out = decoder.decode(batch.raw)
    frame = out.frame
    if decoder.backend == "gpu":
        # per-key features, the lake writer and the topic encoders run on the host (untested on a GPU)
        frame = frame.to_pandas()
    batch.frame, batch.dead = frame, out.dead
    return batch


# -- features ------------------------------------------------------------------------------------------------
class PartitionFeatures:
    """One :class:`FeatureBuilder` per input partition, so state checkpoints and moves per partition."""

    def __init__(self, cfg: FeaturesConfig, schema: Schema) -> None:
        self.cfg = cfg
        self.schema = schema
        self.builders: dict[int, FeatureBuilder] = {}
        self.names = FeatureBuilder(cfg, schema).names

    def builder(self, partition: int) -> FeatureBuilder:
        fb = self.builders.get(partition)
        if fb is None:
            fb = self.builders[partition] = FeatureBuilder(self.cfg, self.schema)
        return fb

    def restore(self, partition: int, arrays: dict[str, np.ndarray]) -> None:
        self.builders[partition] = FeatureBuilder(self.cfg, self.schema, KeyState.from_arrays(arrays))

    def state(self, partition: int) -> dict[str, np.ndarray]:
        return self.builder(partition).state.to_arrays()

    def compute(self, frame: pd.DataFrame) -> Features:
        parts = frame["_partition"].to_numpy()
        if len(parts) == 0:
            return Features(np.empty((0, len(self.names))), np.zeros(0, dtype=bool))
        first = int(parts[0])
        if (parts == first).all():
            return self.builder(first).compute(frame)
        X = np.empty((len(frame), len(self.names)))
        warm = np.empty(len(frame), dtype=bool)
        for p in np.unique(parts).tolist():
            idx = np.flatnonzero(parts == p)  # rows keep their order within a partition: state stays exact
            out = self.builder(int(p)).compute(frame.iloc[idx])
            X[idx], warm[idx] = out.X, out.warm
        return Features(X, warm)


def features(batch: Batch, state: PartitionFeatures) -> Batch:
    """Decoded frame -> feature matrix and warm-up flags, updating each partition's per-key state."""
    if batch.rows:
        assert batch.frame is not None
        out = state.compute(batch.frame)
        batch.X, batch.warm = out.X, out.warm
    else:
        batch.X, batch.warm = np.empty((0, len(state.names))), np.zeros(0, dtype=bool)
    return batch


# -- score ---------------------------------------------------------------------------------------------------
def score(batch: Batch, holder: ModelHolder) -> Batch:
    """Score with the holder's model (a batch with no rows needs none); flagged rows get explanations."""
    n = batch.rows
    if n == 0:
        batch.score = batch.threshold = np.zeros(0)
        batch.is_anomaly = np.zeros(0, dtype=bool)
        batch.explanations = []
        return batch
    det = holder.current
    if det is None:
        msg = "score: no model yet (the coordinator has not published one)"
        raise StepError(msg)
    assert batch.X is not None
    s = det.score(batch.X)
    thr = det.threshold
    flagged = s > thr
    if batch.warm is not None:
        flagged &= batch.warm  # a key whose baseline is still filling cannot tell abnormal from new
    batch.score, batch.threshold, batch.is_anomaly = s, np.full(n, thr), flagged
    batch.model_version = det.version
    cand = holder.shadow
    if cand is not None:
        # the candidate's judgement is only counted, never written: its scores reach no alert
        warm = batch.warm if batch.warm is not None else np.ones(n, dtype=bool)
        theirs = (cand.score(batch.X) > cand.threshold) & warm
        batch.shadow = (cand.version, [int(warm.sum()), int(warm.sum() - (theirs ^ flagged).sum()),
                                       int(theirs.sum()), int(flagged.sum())])
    batch.explanations = explain(det, batch.X, flagged, holder.feature_names)
    return batch


def explain(det, X: np.ndarray, flagged: np.ndarray, names: tuple[str, ...]) -> list[str | None]:
    """The top three features behind each flagged row, as ``name=share`` text; None for the others."""
    out: list[str | None] = [None] * len(X)
    idx = np.flatnonzero(flagged)
    if len(idx) == 0:
        return out
    attr = det.explain(X[idx])
    top = np.argsort(-attr, axis=1)[:, :3]  # one sort for the whole batch, not one per flagged row
    for row, order, i in zip(attr, top.tolist(), idx.tolist(), strict=True):
        out[i] = ", ".join(f"{names[j]}={row[j]:.2f}" for j in order)
    return out


# -- aggregate ----------------------------------------------------------------------------------------------
def aggregate(batch: Batch, state: KeyedAggregates) -> Batch:
    """Scored rows -> per-key windows and incidents; events too late for their window become dead letters."""
    if not batch.rows:
        return batch
    assert batch.frame is not None and batch.is_anomaly is not None and batch.score is not None
    agg, late = state.update(batch.frame, batch.is_anomaly, batch.score, batch.explanations or [None] * batch.rows,
                             batch.model_version)
    batch.aggregated = agg
    if agg.late:
        batch.dead = batch.dead + state.dead_letters(batch.frame, late, batch.raw)
    return batch


# -- outputs -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicRecords:
    """Records for one output topic."""

    topic: str
    values: list[bytes]
    keys: list[bytes | None] | None = None


@dataclass(frozen=True)
class OutputSpec:
    """What the outputs step needs to know about the pipeline."""

    fields: tuple[str, ...]
    key_field: str | None
    time_field: str
    scores_topic: str
    alerts_topic: str
    dead_letter_topic: str
    scores_format: str = "json"
    stats_topic: str = "stats"
    incidents_topic: str = "incidents"
    #: numeric input fields copied into every scores record (the dashboard plots a key's readings from them)
    values: tuple[str, ...] = ()


def outputs(batch: Batch, spec: OutputSpec) -> tuple[Batch, list[TopicRecords]]:
    """The batch's lake rows (kept on the batch) and its records for the output topics."""
    records: list[TopicRecords] = []
    if batch.dead:
        records.append(TopicRecords(spec.dead_letter_topic, [d.to_json() for d in batch.dead],
                                    [d.key for d in batch.dead]))
    if not batch.rows:
        return batch, records
    assert batch.frame is not None and batch.model_version is not None
    lake = lake_frame(batch.frame, list(spec.fields), batch.score, batch.threshold, batch.is_anomaly,
                      batch.model_version)
    keys = pa.array(batch.frame["_key"]).cast(pa.binary()).to_pylist()  # bytes (or None) per row, in C
    scored = Scored(lake, keys, batch.explanations or [None] * len(lake))
    if spec.scores_format == "arrow":  # one columnar record per batch: no per-event record at all
        value = encode_scores_arrow(scores_frame(scored, spec.key_field, spec.time_field, spec.values))
        records.append(TopicRecords(spec.scores_topic, [value]))
    else:
        records.append(TopicRecords(spec.scores_topic, score_records(scored, spec.key_field, spec.time_field, spec.values),
                                    keys))
    alerts, alert_keys = alert_records(scored)
    if alerts:
        records.append(TopicRecords(spec.alerts_topic, alerts, alert_keys))
    agg = batch.aggregated
    if agg is not None:
        if agg.windows is not None and len(agg.windows):
            keys_w: list[bytes | None] = [str(k).encode() for k in agg.windows["key"].tolist()]
            records.append(TopicRecords(spec.stats_topic, window_records(agg.windows, key_field=spec.key_field or "key"),
                                        keys_w))
            window_alerts = window_alert_records(agg.windows, key_field=spec.key_field or "key")
            if window_alerts:
                records.append(TopicRecords(spec.alerts_topic, window_alerts))
        if agg.incidents:
            keys_i: list[bytes | None] = [r.key.encode() for r in agg.incidents]
            records.append(TopicRecords(spec.incidents_topic, [r.to_json() for r in agg.incidents], keys_i))
    batch.lake = lake
    return batch, records
