"""SemDeDup: drop traces that are near-duplicates of a better trace in embedding space.

The algorithm (Abbas et al., 2023, "SemDeDup"), as in the reference code:

1. L2-normalise the embeddings; cluster them with spherical k-means (``kmeans.py``, FAISS); assign
   every trace to its nearest centroid.
2. Within each cluster, rank the members (the rank decides which copy survives): highest quality
   first (default), farthest from the centroid first (the paper's choice), or a seeded random order.
   Ties go to the smaller trace id.
3. A trace is **dropped when its cosine similarity to any trace ranked before it in its cluster
   exceeds 1 - ε** (strictly).  As in the reference code (the max over the upper triangle of the
   similarity matrix), the comparison is with *every* higher-ranked member, including members that
   are themselves dropped.  So a chain a ~ b ~ c drops b and c even if c is not close to a.

Per trace: ``cluster``, ``max_sim`` (the highest similarity to a higher-ranked member of its
cluster; none for a cluster's first member), ``duplicate_of`` (for a dropped trace, the member it is
most similar to) and ``kept``.  ``max_sim`` does not depend on ε, so the removal rate at any ε is
read off it: the stage records it at ε = 0.01, 0.02, 0.05, 0.1.

The within-cluster step is exact and blocked: a query block of at most ``block_rows`` members is
compared with key blocks of ``block_rows`` members ranked before it, so memory per task is
``block_rows**2`` floats whatever the cluster size, and an oversized cluster is split into several
work items (one per query block), which run as separate Ray tasks.  Small clusters are packed
together so that a task is worth its overhead.

**Boundary halo** (an addition to the paper, on by default, ``halo=0`` turns it off): a
near-duplicate pair can straddle a cluster boundary, and pure within-cluster comparison then misses
it.  Both traces of such a pair lie near that boundary: for unit x in cluster A and y in cluster B,
``(x.cA - x.cB) + (y.cB - y.cA) = (x - y).(cA - cB)``, both terms are >= 0, and the right side is
at most ``|x - y| |cA - cB|`` (and, for a near-duplicate, usually far less: the projection of a
short difference on one direction).  So the pair only has to be compared with each other, not with
the whole of the other cluster.  A trace whose similarity to one of its ``halo_clusters`` next-
nearest centroids (default 2) is within ``halo`` (cosine, default 0.03) of its nearest joins the
**boundary group** of those two clusters; the members of a boundary group (from both sides) are
compared with each other, ranked by the same global key, and a trace's decision takes its cluster
and its boundary groups into account.  The rule is unchanged: a trace is dropped when a trace
ranked before it *in a cluster or boundary group they share* is more similar than 1 - ε.

Earlier the halo made a boundary trace a full member of its second cluster, so every halo trace
cost a whole cluster of comparisons; the halo share grows with k (more centroids, smaller margins:
2% of rows at 10^4 synthetic vectors, 13% at 10^5, 46% at 10^6) and that put the 10^6 / 10^5 time
ratio at its limit.  A boundary group holds only the traces near one boundary (tens to hundreds), so
its cost is a small fraction of the clusters' whatever the halo share.  On the benchmark's planted
data duplicate recall against exact all-pairs is 0.9985 at 20,000 vectors (k = 4) and 0.9973 at
50,000 (k = 10), against 0.9935 and 0.986 without the halo (``benchmarks/curate.py``).  With
``halo=0`` the result is exactly the reference algorithm's.

On Ray, a within-cluster task whose worker dies is run again on another worker, ``retries`` times
at most (``tooldistill.curate.runner``).  A task is a pure function of its work items and the
sorted matrix (which the driver owns), and its result is placed by its group's index, so a re-run
gives the same decisions.

The default number of clusters is ``N // cluster_size`` (at least 1), about 5,000 traces per
cluster: the within-cluster cost per trace is then constant and the whole step grows linearly with
N.  With ``k = 1`` every pair is compared (exact, quadratic; fine for a few ten thousand traces).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from tooldistill.curate.common import (
    DECISIONS,
    CurateError,
    embeddings_of,
    first_occurrences,
    hash_order,
    id_ranks,
    input_stamp,
    open_traces,
    read_columns,
    rewrite_parts,
)
from tooldistill.curate.kmeans import check_k, cluster, gpu_available, normalize
from tooldistill.curate.quality import QualityConfig, score_dataset
from tooldistill.curate.runner import LocalRunner, Runner
from tooldistill.executor import DEFAULT_RETRIES
from tooldistill.schema import content_hash
from tooldistill.stage import StageResult, StageRun

STAGE = "curate-semdedup"
REPORT_EPS = (0.01, 0.02, 0.05, 0.1)
RANKS = ("quality", "centroid", "random")
Rank = Literal["quality", "centroid", "random"]
DEDUP_COLUMNS = (
    "dedup_cluster",
    "dedup_max_sim",
    "duplicate_of",
    "quality",
    "quality_parts",
)


def default_k(n: int, cluster_size: int = 5000) -> int:
    """About ``cluster_size`` traces per cluster, at least one cluster."""
    return max(1, n // cluster_size)


@dataclass
class DedupResult:
    """SemDeDup's decision for every row of the input (all arrays in input order)."""

    eps: float
    k: int
    centroids: np.ndarray
    #: cluster of each row
    labels: np.ndarray
    #: cosine similarity of each row to its centroid
    centroid_sim: np.ndarray
    #: boundary-group memberships: ``halo_rows[i]`` is a member of group ``halo_groups[i]``
    halo_rows: np.ndarray
    halo_groups: np.ndarray
    #: the two clusters of each boundary group (G x 2, smaller first)
    halo_pairs: np.ndarray
    #: highest similarity to a higher-ranked member of the same cluster; -inf for a cluster's first
    max_sim: np.ndarray
    #: row index of that member; -1 for a cluster's first
    nearest: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kept(self) -> np.ndarray:
        return ~(self.max_sim > 1.0 - self.eps)

    @property
    def duplicate_of(self) -> np.ndarray:
        """Row index of the member a dropped row duplicates; -1 for kept rows."""
        return np.where(self.kept, -1, self.nearest)

    @property
    def halo_row_count(self) -> int:
        """Rows that are members of at least one boundary group."""
        return len(np.unique(self.halo_rows))

    def removal_rate(self, eps: float) -> float:
        return float(np.mean(self.max_sim > 1.0 - eps))

    def removal_rates(self, eps_values: Sequence[float] = REPORT_EPS) -> dict[str, float]:
        return {f"{e:g}": round(self.removal_rate(e), 6) for e in sorted({*eps_values, self.eps})}

    def cluster_sizes(self) -> dict[str, float]:
        sizes = np.bincount(self.labels, minlength=self.k)
        return {
            "min": int(sizes.min()),
            "max": int(sizes.max()),
            "mean": round(float(sizes.mean()), 1),
        }


def _within(arrays: dict[str, np.ndarray], item: list[tuple[int, int, int]]) -> list[tuple[int, Any, Any]]:
    """For each segment (offset, start, stop) of cluster-sorted rows: every query row
    ``offset+start .. offset+stop`` against every row of its cluster ranked before it.

    Returns, per segment, the first query row and the best similarity and its sorted row index.
    """
    x = arrays["x"]
    block = int(arrays["block"][0])
    out = []
    for offset, start, stop in item:
        q0, q1 = offset + start, offset + stop
        best = np.full(q1 - q0, -np.inf, dtype=np.float32)
        arg = np.full(q1 - q0, -1, dtype=np.int64)
        queries = x[q0:q1]
        positions = np.arange(q0, q1)[:, None]
        for k0 in range(offset, q1, block):
            k1 = min(k0 + block, q1)
            sims = queries @ x[k0:k1].T
            if k1 > q0:  # keys that overlap the queries: only those ranked strictly before count
                sims[np.arange(k0, k1)[None, :] >= positions] = -np.inf
            j = sims.argmax(axis=1)
            top = sims[np.arange(len(j)), j]
            better = top > best
            best[better] = top[better]
            arg[better] = k0 + j[better]
        out.append((q0, best, arg))
    return out


def _work_items(sizes: np.ndarray, block_rows: int, target_pairs: int) -> list[list[tuple[int, int, int]]]:
    """Segments (offset, start, stop) of at most ``block_rows`` queries, packed into items of about
    ``target_pairs`` comparisons (a large cluster's blocks are items of their own)."""
    items: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    cost = 0
    offset = 0
    for size in sizes.tolist():
        for start in range(0, size, block_rows):
            stop = min(size, start + block_rows)
            current.append((offset, start, stop))
            cost += (stop - start) * stop
            if cost >= target_pairs:
                items.append(current)
                current, cost = [], 0
        offset += size
    if current:
        items.append(current)
    return items


def boundary_groups(
    labels: np.ndarray, nearest_clusters: np.ndarray, nearest_sims: np.ndarray, halo: float, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boundary groups: a row joins the group of the boundary between its cluster A and another
    cluster B (one of its next-nearest, the columns after the first of ``nearest_*``) when its
    similarity to B is within ``halo`` of its similarity to A.  A group with members on one side
    only is dropped (it has no pair across the boundary).

    Returns ``(rows, groups, pairs)``: membership ``i`` puts row ``rows[i]`` in group ``groups[i]``;
    ``pairs[g]`` are the two clusters of group ``g`` (smaller first), groups ordered by pair.
    """
    empty = np.zeros(0, dtype=np.int64)
    if halo <= 0 or nearest_clusters.shape[1] < 2:
        return empty, empty, np.zeros((0, 2), dtype=np.int64)
    near = nearest_sims[:, 1:] >= nearest_sims[:, :1] - halo
    near &= nearest_clusters[:, 1:] >= 0
    rows, column = np.nonzero(near)
    own = labels[rows].astype(np.int64)
    other = nearest_clusters[rows, column + 1].astype(np.int64)
    low, high = np.minimum(own, other), np.maximum(own, other)
    keys, groups = np.unique(low * k + high, return_inverse=True)
    groups = groups.reshape(-1)
    on_low = np.bincount(groups, weights=own == low, minlength=len(keys))
    on_high = np.bincount(groups, minlength=len(keys)) - on_low
    useful = (on_low > 0) & (on_high > 0)
    keep = useful[groups]
    renumber = np.cumsum(useful) - 1
    pairs = np.stack([keys[useful] // k, keys[useful] % k], axis=1).astype(np.int64)
    return rows[keep].astype(np.int64), renumber[groups[keep]].astype(np.int64), pairs


def semdedup(
    vectors: np.ndarray,
    *,
    eps: float,
    k: int | None = None,
    cluster_size: int = 5000,
    rank: Rank = "quality",
    quality: np.ndarray | None = None,
    ids: Sequence[str] | None = None,
    seed: int = 0,
    niter: int = 20,
    block_rows: int = 2048,
    target_pairs: int = 1 << 25,
    halo: float = 0.03,
    halo_clusters: int = 2,
    runner: Runner | None = None,
    gpu: bool | None = None,
    show_progress: bool = False,
    retries: int = DEFAULT_RETRIES,
) -> DedupResult:
    """SemDeDup over an N x d matrix (any scale; normalised here).  See the module docstring.

    ``rank="quality"`` needs ``quality`` (higher is kept first).  ``ids`` break ties (smallest
    first) and seed the random rank; without them the row index does.  ``retries``: re-runs of a
    within-cluster task whose worker died (on Ray).
    """
    if not 0.0 < eps < 2.0:
        raise CurateError(f"eps must be in (0, 2) (a trace is dropped above similarity 1 - eps), got {eps}")
    if rank not in RANKS:
        raise CurateError(f"unknown rank {rank!r}; choose {', '.join(RANKS)}")
    x = normalize(vectors, ids)
    n = x.shape[0]
    if ids is not None and len(ids) != n:
        raise CurateError(f"{len(ids)} ids for {n} vectors")
    k = default_k(n, cluster_size) if k is None else k
    check_k(k, n)
    runner = runner or LocalRunner(show_progress=show_progress)

    if halo < 0:
        raise CurateError(f"halo must be >= 0, got {halo}")
    if halo_clusters < 1:
        raise CurateError(f"halo_clusters must be >= 1, got {halo_clusters}")
    centroids, nearest_clusters, nearest_sims, timings = cluster(
        x,
        k,
        niter=niter,
        seed=seed,
        gpu=gpu,
        show_progress=show_progress,
        nearest=1 + halo_clusters if halo > 0 else 1,
    )
    labels, centroid_sim = nearest_clusters[:, 0], nearest_sims[:, 0]
    start = time.perf_counter()
    halo_rows, halo_groups, halo_pairs = boundary_groups(labels, nearest_clusters, nearest_sims, halo, k)
    del nearest_clusters, nearest_sims
    priority: np.ndarray
    if rank == "quality":
        if quality is None or len(quality) != n:
            raise CurateError("rank 'quality' needs one quality score per trace")
        priority = np.asarray(quality, dtype=np.float64)
        if not np.isfinite(priority).all():
            raise CurateError(f"{int((~np.isfinite(priority)).sum())} quality scores are NaN or infinite")
    elif rank == "centroid":
        priority = -centroid_sim.astype(np.float64)  # farthest from the centroid first
    else:
        priority = (
            hash_order(ids, seed) if ids is not None else np.asarray(np.random.default_rng(seed).random(n))
        )
    tiebreak = id_ranks(ids) if ids is not None else np.arange(n)
    # Memberships: every row in its own cluster (0 .. k-1), boundary rows also in their boundary
    # groups (k, k+1, ...).
    rows = np.concatenate([np.arange(n), halo_rows])
    member_of = np.concatenate([labels.astype(np.int64), k + halo_groups])
    # Sorted by (group, global rank): one int64 key (faster than a lexsort over the memberships).
    global_rank = np.empty(n, dtype=np.int64)
    global_rank[np.lexsort((tiebreak, -priority))] = np.arange(n)
    order = np.argsort(member_of * n + global_rank[rows])
    origin = rows[order]
    x_sorted = np.ascontiguousarray(x[origin])
    sizes = np.bincount(member_of, minlength=k + len(halo_pairs))
    items = _work_items(sizes, block_rows, target_pairs)
    timings["sort_s"] = time.perf_counter() - start

    start = time.perf_counter()
    results = runner.map_arrays(
        _within,
        {"x": x_sorted, "block": np.array([block_rows])},
        items,
        f"semdedup {n} in {k} clusters",
        retries=retries,
    )
    total = len(origin)
    best_sorted = np.full(total, -np.inf, dtype=np.float32)
    arg_sorted = np.full(total, -1, dtype=np.int64)
    for segments in results:
        for q0, best, arg in segments:
            best_sorted[q0 : q0 + len(best)] = best
            arg_sorted[q0 : q0 + len(arg)] = arg
    # A row's decision takes every group it is in into account: the best over its memberships
    # (own cluster first, so a tie keeps the own cluster's answer; among boundary groups, a tie
    # keeps the first group).
    max_sim = np.full(n, -np.inf, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    own = np.flatnonzero(order < n)
    max_sim[origin[own]] = best_sorted[own]
    nearest[origin[own]] = arg_sorted[own]
    boundary = np.flatnonzero(order >= n)
    if len(boundary):
        by_row = np.lexsort((-best_sorted[boundary], origin[boundary]))
        boundary = boundary[by_row]
        first = np.ones(len(boundary), dtype=bool)
        first[1:] = origin[boundary[1:]] != origin[boundary[:-1]]
        boundary = boundary[first]
        row = origin[boundary]
        better = best_sorted[boundary] > max_sim[row]
        max_sim[row[better]] = best_sorted[boundary[better]]
        nearest[row[better]] = arg_sorted[boundary[better]]
    found = nearest >= 0
    nearest[found] = origin[nearest[found]]
    timings["within_s"] = time.perf_counter() - start
    timings["work_items"] = len(items)
    timings["halo_rows"] = len(np.unique(halo_rows))
    timings["halo_memberships"] = len(halo_rows)
    timings["halo_groups"] = len(halo_pairs)
    return DedupResult(
        eps=eps,
        k=k,
        centroids=centroids,
        labels=labels,
        centroid_sim=centroid_sim,
        halo_rows=halo_rows,
        halo_groups=halo_groups,
        halo_pairs=halo_pairs,
        max_sim=max_sim,
        nearest=nearest,
        timings=timings,
    )


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


class SemDedupOptions(BaseModel):
    """SemDeDup's options: ``SemDedupConfig`` without the input and output (the pipeline's
    ``curate.semdedup`` section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    eps: float = Field(default=0.05, gt=0.0, lt=2.0)
    #: Clusters; None: N // cluster_size (at least 1).
    k: int | None = Field(default=None, ge=1)
    cluster_size: int = Field(default=5000, ge=1)
    #: Which copy of a duplicate survives: highest quality, farthest from centroid, random.
    rank: Rank = "quality"
    quality: QualityConfig = Field(default_factory=QualityConfig)
    seed: int = 0
    niter: int = Field(default=20, ge=1)
    #: Boundary halo (cosine margin to a next-nearest centroid, joining the boundary group of the
    #: two clusters); 0: the paper's algorithm.
    halo: float = Field(default=0.03, ge=0.0)
    #: How many next-nearest clusters a boundary row may share a boundary group with.
    halo_clusters: int = Field(default=2, ge=1)
    block_rows: int = Field(default=2048, ge=16)
    #: On Ray: re-runs of a within-cluster task whose worker died, before the stage fails.  Does not
    #: change the output (not in the fingerprint).
    retries: int = Field(default=DEFAULT_RETRIES, ge=0)
    force: bool = False

    def config(self, *, dataset: str, out: str) -> SemDedupConfig:
        """The stage's config: these options on ``dataset``, written to ``out``."""
        return SemDedupConfig.model_validate({**dict(self), "dataset": dataset, "out": out})


class SemDedupConfig(SemDedupOptions):
    """SemDeDup over an embedded traces dataset."""

    dataset: str
    out: str

    def config_hash(self) -> str:
        fields = self.model_dump(mode="json", exclude={"dataset", "out", "force", "block_rows", "retries"})
        if self.rank != "quality":
            fields.pop("quality")
        return content_hash(fields, 16)


def run_semdedup(
    config: SemDedupConfig, runner: Runner | None = None, show_progress: bool = True
) -> StageResult:
    """Run SemDeDup on a dataset with an ``embedding`` column; writes the kept traces to ``out`` and
    every trace's decision to ``out/decisions``."""
    runner = runner or LocalRunner(show_progress=show_progress)
    dataset = open_traces(config.dataset)
    run = StageRun.start(STAGE, config.out, config.config_hash(), [input_stamp(dataset)], [config.dataset])
    earlier = run.existing(also=[DECISIONS], force=config.force)
    if earlier is not None:
        return earlier

    start = time.perf_counter()
    table, repeated = first_occurrences(read_columns(dataset, ["id", "embedding"]))
    ids = table.column("id").to_pylist()
    vectors = embeddings_of(table, config.dataset)
    del table
    quality = None
    scores = None
    if config.rank == "quality":
        scores = score_dataset(dataset, config.quality, show_progress)
        position = {trace_id: i for i, trace_id in enumerate(scores.column("id").to_pylist())}
        scores = scores.take(pa.array([position[i] for i in ids]))
        quality = scores.column("quality").to_numpy()
    read_s = time.perf_counter() - start
    result = semdedup(
        vectors,
        eps=config.eps,
        k=config.k,
        cluster_size=config.cluster_size,
        rank=config.rank,
        quality=quality,
        ids=ids,
        seed=config.seed,
        niter=config.niter,
        block_rows=config.block_rows,
        halo=config.halo,
        halo_clusters=config.halo_clusters,
        runner=runner,
        show_progress=show_progress,
        retries=config.retries,
    )
    kept = result.kept
    id_array = np.asarray(ids, dtype=object)
    max_sim = np.where(np.isfinite(result.max_sim), result.max_sim, np.nan)
    duplicate_of = [None if j < 0 else id_array[j] for j in result.duplicate_of.tolist()]
    columns: dict[str, Any] = {
        "id": pa.array(ids, pa.string()),
        "dedup_cluster": pa.array(result.labels, pa.int32()),
        "dedup_max_sim": pa.array(max_sim, pa.float32(), from_pandas=True),
        "duplicate_of": pa.array(duplicate_of, pa.string()),
    }
    if scores is not None:
        columns["quality"] = scores.column("quality")
        columns["quality_parts"] = scores.column("quality_parts")
    annotations = pa.table(columns)
    token = run.token
    parts = rewrite_parts(
        dataset,
        config.out,
        token,
        annotations,
        keep=kept,
        drop_columns=DEDUP_COLUMNS,
        description="write kept traces",
        show_progress=show_progress,
    )
    decisions = annotations.select(["id", "dedup_cluster", "dedup_max_sim", "duplicate_of"]).append_column(
        "kept", pa.array(kept)
    )
    if scores is not None:
        decisions = decisions.append_column("quality", scores.column("quality"))
    stats = {
        "in": len(ids),
        "repeated_ids_dropped": repeated,
        "duplicates": int((~kept).sum()),
        "kept": int(kept.sum()),
        "eps": config.eps,
        "k": result.k,
        "rank": config.rank,
        "removal_rate": round(result.removal_rate(config.eps), 6),
        "removal_rates": result.removal_rates(),
        "cluster_sizes": result.cluster_sizes(),
        "halo": config.halo,
        "halo_clusters": config.halo_clusters,
        "halo_rows": result.halo_row_count,
        "halo_groups": len(result.halo_pairs),
        "faiss_gpu": gpu_available(),
        "executor": runner.name,
        "retries": config.retries,
        "seconds": {
            "read": round(read_s, 3),
            **{k: round(v, 3) for k, v in result.timings.items()},
        },
    }
    run.publish_side(DECISIONS, table=decisions, kind="curation")
    return run.publish(parts, stats)
