"""The nightly retrain: one closed day of the lake -> a candidate version integrated with the current model.

Steps (each partition's work runs as Dask tasks; the driver only adds up small results):

1. read the day's manifest; refuse a day that is not closed (unless forced) or holds no data;
2. per Kafka partition, recompute the features with the stream's feature layer (:mod:`training.batch`) and draw
   that partition's share of a uniform sample of the learnable rows (warm, not labelled anomalous, and not
   alerted on by the stream unless its alerts were a regime: :func:`training.batch.merge_samples`);
3. grow ``(1 - keep_share) * n_trees`` new trees on the sample and put them in the slots of the current model's
   oldest trees (the online renewal's round-robin order), so the rest of its history stays;
4. score every row of the day with the candidate on the workers, as histograms (:mod:`training.binned`);
5. calibrate the threshold on the candidate's scores of the events not known to be anomalous (labels), as the
   live threshold is (:func:`training.batch.calibration_histogram` says why the stream's alerts stay in);
6. evaluate against the champion's live scores (stored in the lake): alert rates, agreement, score drift (KS),
   and ROC AUC / AP where labels exist;
7. register the version with its parent, data date, parameters, metrics and lineage;
8. shadow-score it in the engine (``retrain.shadow_events`` > 0) or apply the gate now (:mod:`training.gate`).

A re-run of a date that already has a retrained version returns that version and adds none, unless forced; a
lock file stops two runs on one registry at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from streams.lake import LakeError
from streams.lake_days import LakeDay, read_day
from streams.schema import Schema
from training import gate
from training.batch import (
    PartitionScores,
    calibration_histogram,
    draw_sample,
    merge_samples,
    partition_features,
    sample_seed,
    score_partition,
    stored_labels,
    summarise,
)
from training.builder import build_forest
from training.current import read_current, record, set_current, set_shadow
from training.detector import DEFAULT_ONLINE, Detector, new_version
from training.features import FeaturesConfig
from training.registry import read_meta, summaries

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class RetrainError(RuntimeError):
    """The retrain cannot run (no data, day not closed, another run holds the lock) or failed; says why."""


class RetrainConfig(BaseModel):
    """The ``retrain:`` section of the configuration (documented in docs/configuration.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: engine: submit the retrain when the watermark passes midnight (lake.timezone); cron: leave it to a timer
    trigger: Literal["engine", "cron"] = "engine"
    #: rows drawn uniformly across the day's partitions to grow the new trees on
    sample_rows: int = Field(default=65_536, gt=1)
    #: share of the current model's trees kept (the oldest are replaced first); 0 = a new forest
    keep_share: float = Field(default=0.5, ge=0.0, lt=1.0)
    #: lake column with ground truth (1 = anomaly), if the events carry one
    label_field: str | None = None
    #: live events the candidate is shadow-scored on beside the champion before the gate decides
    shadow_events: int = Field(default=50_000, ge=0)
    #: ... or this many seconds, whichever comes first
    shadow_max_s: float = Field(default=3_600.0, gt=0)
    #: gate without labels: share of events on which candidate and champion agree
    gate_min_agreement: float = Field(default=0.98, ge=0.0, le=1.0)
    #: gate without labels: the candidate's alert rate must lie within these bounds
    gate_alert_rate_min: float = Field(default=0.0, ge=0.0, le=1.0)
    gate_alert_rate_max: float = Field(default=0.05, ge=0.0, le=1.0)
    #: gate with labels: the candidate's AP and AUC may fall at most this far below the champion's
    gate_max_metric_drop: float = Field(default=0.02, ge=0.0, le=1.0)
    #: promote when the gate passes (false: register and shadow only; promote by hand)
    auto_promote: bool = True


@dataclass(frozen=True)
class RetrainJob:
    """Everything one retrain needs; the engine builds it from its configuration (``engine.task``)."""

    lake: str  # root folder or URL of the events lake
    registry: Path
    day: dt.date
    features: FeaturesConfig
    schema: Schema
    settings: RetrainConfig
    n_trees: int = 100
    max_samples: int = 256
    contamination: float = 0.01
    fixed_threshold: float | None = None
    seed: int = 0
    force: bool = False
    #: the label store (late labels by offset or key + time); its labels of the day join the evaluation
    labels_path: Path | None = None


@dataclass
class RetrainResult:
    date: str
    status: Literal["registered", "exists", "promoted", "refused", "shadowing"]
    version: str | None
    parent: str | None = None
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    partitions: int = 0
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"date": self.date, "status": self.status, "version": self.version, "parent": self.parent,
                "reason": self.reason, "metrics": self.metrics, "rows": self.rows, "partitions": self.partitions,
                "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows / self.seconds) if self.seconds else 0,
                "stages": {k: round(v, 3) for k, v in self.stages.items()}}


LOCK = "_retrain.lock"


@contextlib.contextmanager
def retrain_lock(registry: Path, what: str) -> Iterator[None]:
    """Hold ``<registry>/_retrain.lock``; :class:`RetrainError` naming the holder when another run has it."""
    registry.mkdir(parents=True, exist_ok=True)
    fd = os.open(registry / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            msg = f"retrain: another retrain holds {registry / LOCK} ({holder}); try again when it is done"
            raise RetrainError(msg) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} retraining {what} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


def find_retrained(registry: Path, day: dt.date) -> str | None:
    """The newest retrained version of ``day`` in the registry, if any."""
    hits = [s["version"] for s in summaries(registry) if s.get("kind") == "retrain"
            and s.get("data_dates") == [day.isoformat()]]
    return hits[-1] if hits else None


def run(job: RetrainJob, client: Any, *, progress: Progress | None = None) -> RetrainResult:
    """Retrain on ``job.day`` with the Dask ``client``; see the module doc for the steps."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    date = job.day.isoformat()
    with retrain_lock(job.registry, date):
        try:
            day = read_day(job.lake, job.day)
        except LakeError as err:
            raise RetrainError(f"retrain {date}: {err}") from None
        if not day.partitions or day.rows == 0:
            msg = f"retrain {date}: the lake {job.lake} has no rows for {date}"
            raise RetrainError(msg)
        if not day.closed and not job.force:
            msg = (f"retrain {date}: the day is not closed yet (the engine closes it when its event-time "
                   "watermark passes midnight); --force retrains on what is there")
            raise RetrainError(msg)
        if not job.force:
            existing = find_retrained(job.registry, job.day)
            if existing is not None:
                meta = read_meta(job.registry / existing)
                return RetrainResult(date, "exists", existing, meta.get("parent"),
                                     f"{date} was retrained already as {existing} (--force adds another)",
                                     meta.get("metrics", {}), day.rows, len(day.partitions),
                                     time.perf_counter() - t0)
        champion, champion_version = _champion(job.registry)
        return _retrain(job, client, day, champion, champion_version, t0, stages, progress)


def _champion(registry: Path) -> tuple[Detector | None, str | None]:
    doc = read_current(registry)
    if doc is None:
        return None, None
    try:
        return Detector.load(registry / doc["version"]), doc["version"]
    except Exception as err:
        msg = f"retrain: cannot load the current model {doc['version']}: {err}"
        raise RetrainError(msg) from err


def _tick(progress: Progress | None, stage: str, futures: list[Any]) -> list[Any]:
    """Wait for ``futures``, reporting each as it completes; results in the futures' order."""
    from distributed import as_completed

    done = 0
    if progress is not None:
        progress(stage, 0, len(futures))
    for _ in as_completed(futures):
        done += 1
        if progress is not None:
            progress(stage, done, len(futures))
    return [f.result() for f in futures]


def _retrain(job: RetrainJob, client: Any, day: LakeDay, champion: Detector | None, champion_version: str | None,
             t0: float, stages: dict[str, float], progress: Progress | None) -> RetrainResult:
    date = job.day.isoformat()
    s = job.settings
    parts = sorted(day.partitions)
    token = day.fingerprint[:12]
    t = time.perf_counter()
    known = stored_labels(job.labels_path, job.lake, date, key_field=job.schema.key,
                          time_field=job.schema.event_time.field) if job.labels_path is not None else {}
    # the feature matrices stay on the workers that computed them until the scoring pass is done
    rows = [client.submit(partition_features, job.lake, day.partitions[p], p, job.features, job.schema,
                          s.label_field, known.get(p), key=f"retrain-features-{date}-p{p}-{token}") for p in parts]
    per_part = max(s.sample_rows, 2)
    samples = [client.submit(draw_sample, r, per_part, sample_seed(job.seed, date, p),
                             key=f"retrain-sample-{date}-p{p}-{token}") for r, p in zip(rows, parts, strict=True)]
    sample, regime = merge_samples(_tick(progress, "features + sample", samples), s.sample_rows,
                                   regime_rate=s.gate_alert_rate_max)
    stages["features_sample_s"] = time.perf_counter() - t
    if len(sample) < 2:
        client.cancel(rows)
        msg = f"retrain {date}: only {len(sample)} learnable rows (warm, not alerted) in {day.rows} rows"
        raise RetrainError(msg)
    t = time.perf_counter()
    names = _feature_names(job)
    candidate, lineage = integrate(champion, sample, names, job)
    stages["fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model = client.scatter(candidate, broadcast=True)
    # the champion as it was before integration (integrate changed the loaded copy in place)
    reference = client.scatter(Detector.load(job.registry / champion_version), broadcast=True) \
        if champion_version is not None else None
    scored = [client.submit(score_partition, r, model, reference,
                            key=f"retrain-score-{date}-p{p}-{token}-{candidate.version}")
              for r, p in zip(rows, parts, strict=True)]
    total = sum(_tick(progress, "score", scored), PartitionScores.empty())
    client.cancel([*rows, *samples, *scored, model, *([reference] if reference is not None else [])])
    stages["score_s"] = time.perf_counter() - t
    threshold = candidate.thresholder.calibrate(calibration_histogram(total))
    metrics = {**summarise(total, threshold), "threshold": threshold}
    candidate.meta.update(
        kind="retrain", parent=champion_version, data_dates=[date], fitted_at=time.time(),
        params={"n_trees": candidate.forest.n_trees, "max_samples": candidate.forest.max_samples,
                "contamination": job.contamination, "seed": job.seed, "sample_rows": int(len(sample)),
                "keep_share": s.keep_share, "hull": candidate.hull is not None,
                "sample_includes_alerts": regime},
        metrics=metrics,
        lineage={**lineage, "lake": str(job.lake), "stored_labels": int(sum(len(o) for o, _ in known.values())),
                 "fingerprint": day.fingerprint, "rows": day.rows,
                 "partitions": parts, "rows_after_close": day.rows_after_close, "closed": day.closed})
    while (job.registry / candidate.version).exists():  # same trees in the same second: never overwrite one
        candidate.base_version += "-b"
    version = candidate.version
    candidate.save(job.registry / version)
    record(job.registry, "registered", version, reason=f"retrained on {date}", data_dates=[date],
           parent=champion_version, metrics=metrics)
    result = RetrainResult(date, "registered", version, champion_version, "", metrics, day.rows, len(parts),
                           0.0, stages)
    decide_after_registering(job, result)
    result.seconds = time.perf_counter() - t0
    return result


def _feature_names(job: RetrainJob) -> tuple[str, ...]:
    from training.features import FeatureBuilder

    return FeatureBuilder(job.features, job.schema).names


def integrate(champion: Detector | None, sample: np.ndarray, names: tuple[str, ...],
              job: RetrainJob) -> tuple[Detector, dict[str, Any]]:
    """The candidate: new trees from ``sample`` in the champion's oldest slots (or a new forest).

    The champion keeps ``round(keep_share * n_trees)`` trees; its window (what online renewal grows trees from)
    becomes the sample, its long memory stays, and the hull is the union of both boxes.
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if champion is not None and tuple(champion.feature_names) != tuple(names):
        msg = (f"retrain: the current model {champion.version} has features {list(champion.feature_names)}, the "
               f"configuration makes {list(names)}; retrain with retrain.keep_share 0 after changing features")
        if job.settings.keep_share > 0:
            raise RetrainError(msg)
        champion = None
    n_keep = round(job.settings.keep_share * champion.forest.n_trees) if champion is not None else 0
    if champion is None or n_keep == 0 or len(sample) < champion.forest.max_samples:
        online = champion.online if champion is not None else DEFAULT_ONLINE  # a first fit adapts online
        det = Detector.fit(sample, names, n_trees=job.n_trees, max_samples=min(job.max_samples, len(sample)),
                           contamination=job.contamination, seed=job.seed, fixed_threshold=job.fixed_threshold,
                           builder="numba", online=online)
        return det, {"kept_trees": 0, "new_trees": det.forest.n_trees, "replaced_slots": []}
    det = champion  # a fresh copy loaded for this run: change it in place
    forest = det.forest
    n = forest.n_trees
    n_new = n - n_keep
    seed = job.seed * 1_000_003 + job.day.toordinal()  # the same day grows the same trees
    new = build_forest(sample, n_trees=n_new, max_samples=forest.max_samples, seed=seed)
    slots = (det.renewal.next_tree + np.arange(n_new)) % n  # the round-robin's oldest trees
    if forest.slot is not None and new.slot is not None and new.slot <= forest.slot:
        forest.overwrite_trees(slots, new)
    else:
        det.forest = forest.replace_trees(slots.tolist(), new)
    det.renewal.next_tree = int((det.renewal.next_tree + n_new) % n)
    det.use_backend("cpu")
    det.window.clear()
    det.window.add(sample[-det.window.rows.shape[0]:])
    if det.hull is not None:
        lo, hi = det.hull
        det.hull = (np.minimum(lo, sample.min(axis=0)), np.maximum(hi, sample.max(axis=0)))
    det.base_version, det.updates = new_version(det.forest), 0
    return det, {"kept_trees": n_keep, "new_trees": n_new, "replaced_slots": slots.tolist()}


def decide_after_registering(job: RetrainJob, result: RetrainResult) -> None:
    """Shadow the candidate in the engine, or (no shadow period) apply the gate to the offline evaluation now."""
    s = job.settings
    assert result.version is not None
    if result.parent is None:  # nothing to compare with: the first model
        set_current(job.registry, result.version, action="promote", reason=f"first model, retrained on {result.date}")
        result.status, result.reason = "promoted", "no current model: the first retrained version is promoted"
        return
    if s.shadow_events > 0:
        set_shadow(job.registry, result.version, champion=result.parent, events=s.shadow_events,
                   max_s=s.shadow_max_s, offline=result.metrics)
        result.status = "shadowing"
        result.reason = (f"shadow-scored beside {result.parent} on the next {s.shadow_events:,} live events "
                         f"(or {s.shadow_max_s:g} s); then the gate decides")
        return
    decision = gate.decide(s, result.metrics, None)
    if decision.promote and s.auto_promote:
        set_current(job.registry, result.version, action="promote", reason=decision.reason,
                    metrics=decision.metrics)
        result.status = "promoted"
    else:
        record(job.registry, "refused" if not decision.promote else "held", result.version, reason=decision.reason)
        result.status = "refused" if not decision.promote else "registered"
    result.reason = decision.reason
