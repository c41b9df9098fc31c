"""The engine's configuration turned into the batch jobs of :mod:`training` (retrain, replay)."""

from __future__ import annotations

import datetime as dt

from engine.config import Config
from training.retrain import RetrainJob


def retrain_job(cfg: Config, day: dt.date, *, force: bool = False) -> RetrainJob:
    """The retrain of ``day`` as ``cfg`` describes it (lake, registry, features, model parameters)."""
    m = cfg.model
    return RetrainJob(lake=cfg.lake_url, registry=cfg.registry, day=day, features=cfg.features,
                      schema=cfg.schema, settings=cfg.retrain, n_trees=m.n_trees, max_samples=m.max_samples,
                      contamination=m.contamination, fixed_threshold=m.fixed_threshold, seed=m.seed, force=force,
                      labels_path=cfg.labels_path)
