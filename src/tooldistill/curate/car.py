"""CaR (Clustering and Ranking; Ge et al., 2024): pick few, good, diverse examples.

Cluster the (deduplicated) traces' embeddings with spherical k-means, ``k = int(sqrt(N / 2))`` by
default; score every trace's quality (``quality.py``); keep the top ``per_cluster`` traces of every
cluster (diversity) plus the top ``top_overall`` traces of the whole set (quality).  Every trace
gets a reason in words: why it was kept, or why it was left.  Ties in quality go to the smaller id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from tooldistill.curate.common import (
    DECISIONS,
    CurateError,
    embeddings_of,
    first_occurrences,
    id_ranks,
    input_stamp,
    open_traces,
    read_columns,
    rewrite_parts,
)
from tooldistill.curate.kmeans import check_k, cluster, normalize
from tooldistill.curate.quality import QualityConfig, score_dataset
from tooldistill.schema import content_hash
from tooldistill.stage import StageResult, StageRun

STAGE = "curate-car"
CAR_COLUMNS = ("car_cluster", "quality", "quality_parts", "car_reason")


def default_k(n: int) -> int:
    return max(1, int(math.sqrt(n / 2)))


@dataclass
class CarResult:
    k: int
    labels: np.ndarray
    #: 1-based rank by quality within the trace's cluster
    cluster_rank: np.ndarray
    #: 1-based rank by quality over all traces
    overall_rank: np.ndarray
    cluster_size: np.ndarray
    selected: np.ndarray
    reasons: list[str]
    timings: dict[str, float]


def car_select(
    vectors: np.ndarray,
    quality: np.ndarray,
    ids: Sequence[str],
    *,
    k: int | None = None,
    per_cluster: int = 1,
    top_overall: int = 10,
    seed: int = 0,
    niter: int = 20,
) -> CarResult:
    """Select the top ``per_cluster`` of every cluster plus the top ``top_overall`` by quality."""
    x = normalize(vectors, ids)
    n = x.shape[0]
    quality = np.asarray(quality, dtype=np.float64)
    if len(quality) != n or len(ids) != n:
        raise CurateError(f"{len(quality)} quality scores and {len(ids)} ids for {n} vectors")
    if not np.isfinite(quality).all():
        raise CurateError(f"{int((~np.isfinite(quality)).sum())} quality scores are NaN or infinite")
    k = default_k(n) if k is None else k
    check_k(k, n)
    _, nearest, _, timings = cluster(x, k, niter=niter, seed=seed)
    labels = nearest[:, 0]
    tiebreak = id_ranks(ids)
    overall_order = np.lexsort((tiebreak, -quality))
    overall_rank = np.empty(n, dtype=np.int64)
    overall_rank[overall_order] = np.arange(1, n + 1)
    order = np.lexsort((tiebreak, -quality, labels))
    sizes = np.bincount(labels, minlength=k)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cluster_rank = np.empty(n, dtype=np.int64)
    cluster_rank[order] = np.arange(n) - starts[labels[order]] + 1
    in_cluster = cluster_rank <= per_cluster
    in_overall = overall_rank <= top_overall
    selected = in_cluster | in_overall
    reasons = []
    for i in range(n):
        c, r, size, rank, q = (
            int(labels[i]),
            int(cluster_rank[i]),
            int(sizes[labels[i]]),
            int(overall_rank[i]),
            quality[i],
        )
        where = f"#{r} of {size} in cluster {c}"
        if selected[i]:
            why = []
            if in_cluster[i]:
                why.append(f"top {per_cluster} in its cluster ({where})")
            if in_overall[i]:
                why.append(f"top {top_overall} overall (#{rank} of {n})")
            reasons.append("kept: " + " and ".join(why) + f", quality {q:.3f}")
        else:
            reasons.append(
                f"left: {where}, below the top {per_cluster}; #{rank} of {n} overall, below the top "
                f"{top_overall}; quality {q:.3f}"
            )
    return CarResult(
        k=k,
        labels=labels,
        cluster_rank=cluster_rank,
        overall_rank=overall_rank,
        cluster_size=sizes[labels],
        selected=selected,
        reasons=reasons,
        timings=timings,
    )


class CarOptions(BaseModel):
    """CaR's options: ``CarConfig`` without the input and output (the pipeline's ``curate.car``
    section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Clusters; None: int(sqrt(N / 2)).
    k: int | None = Field(default=None, ge=1)
    per_cluster: int = Field(default=1, ge=0)
    top_overall: int = Field(default=10, ge=0)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    seed: int = 0
    niter: int = Field(default=20, ge=1)
    force: bool = False

    def config(self, *, dataset: str, out: str) -> CarConfig:
        """The stage's config: these options on ``dataset``, written to ``out``."""
        return CarConfig.model_validate({**dict(self), "dataset": dataset, "out": out})


class CarConfig(CarOptions):
    """CaR over an embedded (usually deduplicated) traces dataset."""

    dataset: str
    out: str

    def config_hash(self) -> str:
        return content_hash(self.model_dump(mode="json", exclude={"dataset", "out", "force"}), 16)


def run_car(config: CarConfig, show_progress: bool = True) -> StageResult:
    """Run CaR; writes the selected traces to ``out`` and every trace's reason to ``out/decisions``."""
    if config.per_cluster == 0 and config.top_overall == 0:
        raise CurateError("per_cluster and top_overall are both 0: CaR would select nothing")
    dataset = open_traces(config.dataset)
    run = StageRun.start(STAGE, config.out, config.config_hash(), [input_stamp(dataset)], [config.dataset])
    earlier = run.existing(also=[DECISIONS], force=config.force)
    if earlier is not None:
        return earlier

    start = time.perf_counter()
    table, repeated = first_occurrences(read_columns(dataset, ["id", "embedding"]))
    ids = table.column("id").to_pylist()
    vectors = embeddings_of(table, config.dataset)
    scores = score_dataset(dataset, config.quality, show_progress)
    position = {trace_id: i for i, trace_id in enumerate(scores.column("id").to_pylist())}
    scores = scores.take(pa.array([position[i] for i in ids]))
    quality = scores.column("quality").to_numpy()
    read_s = time.perf_counter() - start
    result = car_select(
        vectors,
        quality,
        ids,
        k=config.k,
        per_cluster=config.per_cluster,
        top_overall=config.top_overall,
        seed=config.seed,
        niter=config.niter,
    )
    annotations = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "car_cluster": pa.array(result.labels, pa.int32()),
            "quality": scores.column("quality"),
            "quality_parts": scores.column("quality_parts"),
            "car_reason": pa.array(result.reasons, pa.string()),
        }
    )
    token = run.token
    parts = rewrite_parts(
        dataset,
        config.out,
        token,
        annotations,
        keep=result.selected,
        drop_columns=CAR_COLUMNS,
        description="write selected traces",
        show_progress=show_progress,
    )
    decisions = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "car_cluster": pa.array(result.labels, pa.int32()),
            "quality": scores.column("quality"),
            "quality_parts": scores.column("quality_parts"),
            "cluster_rank": pa.array(result.cluster_rank, pa.int32()),
            "cluster_size": pa.array(result.cluster_size, pa.int32()),
            "overall_rank": pa.array(result.overall_rank, pa.int32()),
            "selected": pa.array(result.selected),
            "reason": pa.array(result.reasons, pa.string()),
        }
    )
    stats: dict[str, Any] = {
        "in": len(ids),
        "repeated_ids_dropped": repeated,
        "selected": int(result.selected.sum()),
        "not_selected": int((~result.selected).sum()),
        "k": result.k,
        "per_cluster": config.per_cluster,
        "top_overall": config.top_overall,
        "quality": {
            "mean_all": round(float(quality.mean()), 4),
            "mean_selected": round(float(quality[result.selected].mean()), 4),
            "weights": config.quality.weights,
        },
        "seconds": {
            "read": round(read_s, 3),
            **{k: round(v, 3) for k, v in result.timings.items()},
        },
    }
    run.publish_side(DECISIONS, table=decisions, kind="curation")
    return run.publish(parts, stats)
