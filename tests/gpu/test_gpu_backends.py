"""GPU scoring routes against the CPU kernels on the same forest.

Tests marked ``gpu`` skip with the reason when CuPy, a CUDA device, nvForest or cuML is missing. The CUDA
kernel's walk is also compiled as host C here (it is written to compile both ways), so its logic is checked
on every machine with a C compiler, GPU or not.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from training.forest import PackedForest
from training.gpu import PATH_SUM_SOURCE, BackendUnavailable, gpu_unavailable_reason, make_scorer

GPU_REASON = gpu_unavailable_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"needs a GPU: {GPU_REASON}")


def _forest_and_rows(seed: int) -> tuple[PackedForest, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, 7))
    forest = PackedForest.fit(X, n_trees=60, max_samples=256, seed=seed)
    Y = rng.normal(size=(5003, 7)) * 3
    Y[::7, 3] = np.nan
    Y[5, 1], Y[6, 2] = np.inf, -np.inf
    return forest, Y


def test_kernel_walk_compiled_as_host_c(tmp_path: Path, seed: int) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the kernel's walk on the host")
    src = tmp_path / "walk.c"
    src.write_text("#define ISO_DEVICE static\n" + PATH_SUM_SOURCE + r"""
void iso_host(const float* X, long long n, int d, const int* feature, const double* threshold,
              const int* left, const int* right, const unsigned char* nan_left, const double* leaf_value,
              const long long* roots, int n_trees, double* out) {
    for (long long i = 0; i < n; ++i)
        out[i] = iso_path_sum(X + i * d, feature, threshold, left, right, nan_left, leaf_value, roots, n_trees);
}
""")
    lib_path = tmp_path / "walk.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib_path), str(src)], check=True)
    lib = ctypes.CDLL(str(lib_path))
    forest, Y = _forest_and_rows(seed)
    Y32 = np.ascontiguousarray(Y, dtype=np.float32)
    roots = np.ascontiguousarray(forest.tree_offset[:-1])
    out = np.empty(len(Y32))

    def ptr(a: np.ndarray) -> ctypes.c_void_p:
        return ctypes.c_void_p(a.ctypes.data)

    lib.iso_host(ptr(Y32), ctypes.c_longlong(len(Y32)), ctypes.c_int(Y32.shape[1]), ptr(forest.feature),
                 ptr(forest.threshold), ptr(forest.left), ptr(forest.right), ptr(forest.nan_left),
                 ptr(forest.leaf_value), ptr(roots), ctypes.c_int(forest.n_trees), ptr(out))
    np.testing.assert_array_equal(out, forest.path_length_sum(Y))  # the same sum, bit for bit


@pytest.mark.skipif(GPU_REASON is None, reason="a GPU is present: the unavailable path is not taken")
@pytest.mark.parametrize("backend", ["cupy", "nvforest"])
def test_unavailable_backend_says_why(seed: int, backend: str) -> None:
    forest, _ = _forest_and_rows(seed)
    with pytest.raises(BackendUnavailable, match=f"backend '{backend}': no (cupy|CUDA device)"):
        make_scorer(forest, backend)
    assert make_scorer(forest, "auto").name == "cpu"


@pytest.mark.gpu
@needs_gpu
def test_cupy_kernel_matches_cpu_and_follows_renewal(seed: int) -> None:
    forest, Y = _forest_and_rows(seed)
    scorer = make_scorer(forest, "cupy")
    assert scorer.name == "cupy"
    np.testing.assert_allclose(scorer.score(Y), forest.score(Y), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(scorer.path_length_sum(Y).get(), forest.path_length_sum(Y))
    new = PackedForest.fit(np.random.default_rng(1).normal(size=(500, 7)) + 2, n_trees=3, seed=2)
    slots = np.array([0, 10, 59])
    forest.overwrite_trees(slots, new)
    scorer.update(forest, slots)
    np.testing.assert_allclose(scorer.score(Y), forest.score(Y), rtol=0, atol=1e-6)


@pytest.mark.gpu
@needs_gpu
def test_nvforest_gpu_matches_cpu(seed: int) -> None:
    forest, Y = _forest_and_rows(seed)
    try:
        scorer = make_scorer(forest, "nvforest")
    except BackendUnavailable as err:
        pytest.skip(str(err))
    np.testing.assert_allclose(scorer.score(Y), forest.score(Y), rtol=0, atol=1e-6)


@pytest.mark.gpu
@needs_gpu
def test_cuml_fit_is_imported_exactly(seed: int) -> None:
    try:
        from cuml.ensemble import IsolationForest
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"no cuml: {type(err).__name__}: {err}")
    from training.gpu import fit_cuml

    _, Y = _forest_and_rows(seed)
    X = np.random.default_rng(seed).normal(size=(4000, 7)).astype(np.float32)
    model = IsolationForest(n_estimators=50, random_state=seed).fit(X)
    forest = PackedForest.from_sklearn(model.as_sklearn())
    finite = np.ascontiguousarray(Y[np.isfinite(Y).all(axis=1)], dtype=np.float32)
    theirs = model.score_samples(finite)
    theirs = theirs.get() if hasattr(theirs, "get") else np.asarray(theirs)
    # cuML scores through nvForest in float32; the imported forest in float64
    np.testing.assert_allclose(forest.score_samples(finite), theirs, rtol=0, atol=1e-5)
    grown = fit_cuml(X, n_trees=50, seed=seed)
    assert grown.n_trees == 50 and grown.n_features == 7
    np.testing.assert_allclose(make_scorer(grown, "cupy").score(Y), grown.score(Y), rtol=0, atol=1e-6)
