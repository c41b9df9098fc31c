"""Scoring backends behind one switch: ``make_scorer(forest, backend)``.

======================  =========================================================================================
``cpu``                 the numba kernels of :mod:`training._kernels` (exact; the default without a GPU); batches
                        under 4,096 rows stay on the calling thread, which is safe on cores shared with a broker
                        or Dask workers
``cpu-parallel``        the same kernels on every core for every batch size: ~2x on small batches when this
                        process has the cores to itself (``isostream evaluate``), but a busy core stalls each
                        call (measured on 1,000 rows: mean 0.36 ms idle, 1.3 ms with one core busy, p99 16 ms)
``cupy``                a CUDA kernel (CuPy ``RawKernel``) over the same flat arrays: one thread per row walks
                        every tree, summing leaf values in tree order — the CPU's sum, bit for bit; the forest is
                        re-uploaded per renewed tree slot only, so online adaptation stays cheap
``nvforest``            RAPIDS nvForest on the GPU, from :func:`training.interop.to_treelite` (any forest)
``nvforest-cpu``        nvForest's CPU mode (runs without a GPU; used to check that route in CI)
======================  =========================================================================================

``auto`` picks ``cupy`` when CuPy sees a CUDA device (exact, and cheap to update as trees are renewed), else
``cpu``. cuML is a way to *fit* on the GPU: :func:`fit_cuml` grows a forest with ``cuml.ensemble.IsolationForest``
and imports it exactly through its ``as_sklearn()`` export, after which any backend scores it.

Every backend returns the paper score as a float64 NumPy array. A backend that cannot run here raises
:class:`BackendUnavailable` naming what is missing (no cupy / no CUDA device / no nvforest / no cuml).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from training.forest import PackedForest

BACKENDS = ("auto", "cpu", "cpu-parallel", "cupy", "nvforest", "nvforest-cpu")


class BackendUnavailable(RuntimeError):
    """The requested scoring backend cannot run on this machine; the message says what is missing."""


class Scorer(Protocol):
    """Scores rows against one forest; ``update`` follows in-place tree renewal of that forest."""

    name: str

    def score(self, X: Any) -> np.ndarray: ...

    def update(self, forest: PackedForest, trees: np.ndarray) -> None: ...


#: the walk, in C that compiles both as CUDA device code and (for the tests) as host C
PATH_SUM_SOURCE = r"""
#ifndef ISO_DEVICE
#define ISO_DEVICE __device__ __forceinline__
#endif
/* Sum over trees of the leaf value reached by row x. A float32 value is compared with the float64
   threshold after widening, as in scikit-learn and the numba kernels; a NaN compares false and goes left
   only where the split learned so (nan_left). Trees are summed in order: the CPU's sum, bit for bit. */
ISO_DEVICE double iso_path_sum(const float* x, const int* feature, const double* threshold,
                               const int* left, const int* right, const unsigned char* nan_left,
                               const double* leaf_value, const long long* roots, int n_trees) {
    double total = 0.0;
    for (int t = 0; t < n_trees; ++t) {
        long long node = roots[t];
        int f = feature[node];
        while (f >= 0) {
            float v = x[f];
            int go_left = ((double)v <= threshold[node]) || (v != v && nan_left[node]);
            node = go_left ? left[node] : right[node];
            f = feature[node];
        }
        total += leaf_value[node];
    }
    return total;
}
"""

KERNEL_SOURCE = PATH_SUM_SOURCE + r"""
extern "C" __global__ void iso_path_sum_kernel(
        const float* X, long long n, int d, const int* feature, const double* threshold, const int* left,
        const int* right, const unsigned char* nan_left, const double* leaf_value, const long long* roots,
        int n_trees, double* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = iso_path_sum(X + i * (long long)d, feature, threshold, left, right, nan_left, leaf_value,
                              roots, n_trees);
    }
}
"""

_ARRAYS = ("feature", "threshold", "left", "right", "nan_left", "leaf_value")


def gpu_unavailable_reason() -> str | None:
    """None when CuPy can use a CUDA device, else why not (for skips and error messages)."""
    try:
        import cupy
    except ImportError as err:
        return f"no cupy ({err})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # noqa: BLE001 - CUDA reports a missing driver/device in several ways
        return f"no CUDA device ({type(err).__name__}: {err})"
    return None if count > 0 else "no CUDA device (0 devices)"


def _paper_score(total: np.ndarray, forest: PackedForest) -> np.ndarray:
    denom = forest.n_trees * forest._c_psi
    return np.ones(len(total)) if denom == 0 else 2.0 ** (-(total / denom))


class CpuScorer:
    """The numba kernels (the forest's own ``score``)."""

    name = "cpu"

    def __init__(self, forest: PackedForest, *, parallel_min_rows: int | None = None) -> None:
        self.forest = forest
        self.parallel_min_rows = parallel_min_rows
        if parallel_min_rows is not None:
            self.name = "cpu-parallel"

    def score(self, X: Any) -> np.ndarray:
        return self.forest.score(np.asarray(X), parallel_min_rows=self.parallel_min_rows)

    def update(self, forest: PackedForest, trees: np.ndarray) -> None:
        self.forest = forest


class CupyScorer:
    """The CUDA kernel over the packed arrays, uploaded once and patched per renewed tree."""

    name = "cupy"
    threads = 256

    def __init__(self, forest: PackedForest) -> None:
        reason = gpu_unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"backend 'cupy': {reason}")
        import cupy as cp

        self._cp = cp
        self._kernel = cp.RawKernel(KERNEL_SOURCE, "iso_path_sum_kernel")
        self._upload(forest)

    def _upload(self, forest: PackedForest) -> None:
        cp = self._cp
        self.forest = forest
        self._dev = {k: cp.asarray(getattr(forest, k)) for k in _ARRAYS}
        self._roots = cp.asarray(np.ascontiguousarray(forest.tree_offset[:-1], dtype=np.int64))

    def update(self, forest: PackedForest, trees: np.ndarray) -> None:
        """Re-upload the slots of ``trees`` (or everything when the layout changed)."""
        slot = forest.slot
        if forest is not self.forest or slot is None:
            self._upload(forest)
            return
        for t in np.asarray(trees, dtype=np.int64).tolist():
            a, b = t * slot, (t + 1) * slot
            for k in _ARRAYS:
                self._dev[k][a:b] = self._cp.asarray(getattr(forest, k)[a:b])

    def path_length_sum(self, X: Any) -> Any:
        """Per-row sums of path lengths, on the device (a CuPy array)."""
        cp = self._cp
        X32 = cp.ascontiguousarray(cp.asarray(X, dtype=cp.float32))
        if X32.ndim != 2 or X32.shape[1] != self.forest.n_features:
            msg = f"backend 'cupy': expects {self.forest.n_features} features, got shape {X32.shape}"
            raise ValueError(msg)
        n = X32.shape[0]
        out = cp.empty(n, dtype=cp.float64)
        if n:
            d = self._dev
            blocks = (n + self.threads - 1) // self.threads
            self._kernel((blocks,), (self.threads,),
                         (X32, np.int64(n), np.int32(X32.shape[1]), d["feature"], d["threshold"], d["left"],
                          d["right"], d["nan_left"], d["leaf_value"], self._roots, np.int32(self.forest.n_trees),
                          out))
        return out

    def score(self, X: Any) -> np.ndarray:
        return _paper_score(self._cp.asnumpy(self.path_length_sum(X)), self.forest)


class NvforestScorer:
    """nvForest on ``device`` ("gpu" or "cpu"), loaded from the forest's Treelite export."""

    def __init__(self, forest: PackedForest, device: str = "gpu", precision: str = "double") -> None:
        self.name = "nvforest" if device == "gpu" else "nvforest-cpu"
        if device == "gpu":
            reason = gpu_unavailable_reason()
            if reason is not None:
                raise BackendUnavailable(f"backend 'nvforest': {reason}")
        try:
            import nvforest
        except Exception as err:  # noqa: BLE001 - a broken CUDA install surfaces as various errors
            raise BackendUnavailable(f"backend {self.name!r}: no nvforest ({type(err).__name__}: {err})") from None
        self._nvforest = nvforest
        self.device, self.precision = device, precision
        self.update(forest, np.arange(forest.n_trees))

    def update(self, forest: PackedForest, trees: np.ndarray) -> None:
        """nvForest models are immutable: rebuild (hundreds of ms; fine for batch scoring, not per batch)."""
        from training.interop import to_treelite

        self.forest = forest
        self.model = self._nvforest.load_from_treelite_model(to_treelite(forest), device=self.device,
                                                             precision=self.precision)

    def score(self, X: Any) -> np.ndarray:
        with np.errstate(over="ignore"):
            X32 = np.ascontiguousarray(X, dtype=np.float32) if isinstance(X, np.ndarray) else X
        out = self.model.predict(X32)
        if hasattr(out, "get"):  # a device array
            out = out.get()
        return np.asarray(out, dtype=np.float64).reshape(-1)


def make_scorer(forest: PackedForest, backend: str = "auto") -> Scorer:
    """A scorer for ``forest`` on ``backend`` (see the module docstring)."""
    if backend not in BACKENDS:
        msg = f"unknown scoring backend {backend!r}; choose one of {BACKENDS}"
        raise ValueError(msg)
    if backend == "auto":
        backend = "cupy" if gpu_unavailable_reason() is None else "cpu"
    if backend == "cpu":
        return CpuScorer(forest)
    if backend == "cpu-parallel":
        return CpuScorer(forest, parallel_min_rows=1)
    if backend == "cupy":
        return CupyScorer(forest)
    return NvforestScorer(forest, device="gpu" if backend == "nvforest" else "cpu")


def fit_cuml(X: Any, *, n_trees: int = 100, max_samples: int = 256, seed: int = 0) -> PackedForest:
    """Grow the forest on the GPU with cuML and import it exactly (via cuML's ``as_sklearn()``)."""
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"cuML fit: {reason}")
    try:
        from cuml.ensemble import IsolationForest
    except Exception as err:  # noqa: BLE001
        raise BackendUnavailable(f"cuML fit: no cuml ({type(err).__name__}: {err})") from None
    model = IsolationForest(n_estimators=n_trees, max_samples=max_samples, random_state=seed).fit(X)
    return PackedForest.from_sklearn(model.as_sklearn())
