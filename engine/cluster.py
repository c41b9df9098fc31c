"""The Dask cluster behind the engine: a LocalCluster, Dask-CUDA on the GPU backend, or a remote scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster

from engine.config import ClusterConfig


class ClusterError(RuntimeError):
    """The cluster could not be started or reached."""


@contextmanager
def dask_client(cfg: ClusterConfig) -> Iterator[Client]:
    """Connect to ``cfg.scheduler`` or start a local cluster for the life of the context."""
    if cfg.scheduler:
        try:
            client = Client(cfg.scheduler, timeout="30s")
        except OSError as err:
            msg = f"cluster.scheduler: cannot reach Dask scheduler at {cfg.scheduler!r}: {err}"
            raise ClusterError(msg) from err
        try:
            yield client
        finally:
            client.close()
        return
    if cfg.backend == "gpu":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as err:
            msg = "cluster.backend is 'gpu' but dask-cuda is not installed (pip install '.[gpu]' or use environment.yml)"
            raise ClusterError(msg) from err
        cluster = LocalCUDACluster(dashboard_address=cfg.dashboard_address)
    else:
        cluster = LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=cfg.processes,
            dashboard_address=cfg.dashboard_address,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
