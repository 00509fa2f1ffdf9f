"""Spherical k-means and nearest-centroid assignment with FAISS (GPU index when the installed faiss
has GPU support and sees a GPU, CPU otherwise).

Vectors are L2-normalised first, so inner product is cosine similarity.  ``k = 1`` needs no FAISS:
the single centroid is the normalised mean.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tooldistill.curate.common import CurateError, check_vectors, progress_bar

ASSIGN_BLOCK = 65_536


def normalize(vectors: np.ndarray, ids: Any = None) -> np.ndarray:
    """Unit-length float32 rows (C-contiguous); ``CurateError`` for NaN, infinite or zero rows."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    check_vectors(x, ids)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / norms)


def gpu_available() -> bool:
    """The installed faiss was built with GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def check_k(k: int, n: int) -> None:
    if k < 1:
        raise CurateError(f"k must be at least 1, got {k}")
    if k > n:
        raise CurateError(
            f"k={k} clusters is more than the {n} traces; choose k <= {n} (k=1 compares every pair exactly)"
        )


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    train_size: int = 65_536,
    gpu: bool | None = None,
) -> np.ndarray:
    """``k`` unit-length centroids of the unit rows of ``x``.

    FAISS trains on a random sample of at least ``train_size`` rows (and at least 256 per centroid,
    FAISS's default), which keeps k-means cost independent of N; every row is then assigned by
    ``assign``.  FAISS's default sample alone (256 per centroid, so 1,024 rows for k = 4) left
    near-duplicates on both sides of poorly placed boundaries: duplicate recall against exact
    all-pairs on 50,000 planted vectors went from 0.955 to 0.986 with the larger sample.
    """
    n, d = x.shape
    check_k(k, n)
    if k == 1:
        mean = x.mean(axis=0, dtype=np.float64)
        norm = np.linalg.norm(mean)
        centroid = mean / norm if norm > 0 else np.eye(1, d, dtype=np.float64)[0]
        return centroid.astype(np.float32)[None, :]
    import faiss

    use_gpu = gpu_available() if gpu is None else gpu
    kmeans = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        verbose=False,
        gpu=bool(use_gpu),
        max_points_per_centroid=max(256, -(-train_size // k)),
        min_points_per_centroid=1,
    )
    kmeans.train(x)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def assign(
    x: np.ndarray,
    centroids: np.ndarray,
    *,
    gpu: bool | None = None,
    show_progress: bool = False,
    nearest: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``nearest`` closest centroids (by cosine) of every row and the similarities to them,
    N x ``nearest`` each (the closest first; fewer columns when there are fewer centroids)."""
    n = x.shape[0]
    nearest = min(nearest, centroids.shape[0])
    labels = np.zeros((n, nearest), dtype=np.int64)
    sims = np.empty((n, nearest), dtype=np.float32)
    if centroids.shape[0] == 1:
        sims[:, 0] = x @ centroids[0]
        return labels, sims
    import faiss

    index: Any = faiss.IndexFlatIP(centroids.shape[1])
    if gpu_available() if gpu is None else gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(centroids)
    with progress_bar("assign clusters", n, show_progress) as advance:
        for start in range(0, n, ASSIGN_BLOCK):
            stop = min(n, start + ASSIGN_BLOCK)
            distances, found = index.search(x[start:stop], nearest)
            labels[start:stop] = found
            sims[start:stop] = distances
            advance(stop - start)
    return labels, sims


def cluster(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    gpu: bool | None = None,
    show_progress: bool = False,
    nearest: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Centroids, the ``nearest`` closest clusters of every row and the similarities to them (N x
    ``nearest``) for unit rows ``x``; with timings."""
    start = time.perf_counter()
    centroids = spherical_kmeans(x, k, niter=niter, seed=seed, gpu=gpu)
    trained = time.perf_counter()
    labels, sims = assign(x, centroids, gpu=gpu, show_progress=show_progress, nearest=nearest)
    done = time.perf_counter()
    return centroids, labels, sims, {"kmeans_s": trained - start, "assign_s": done - trained}
