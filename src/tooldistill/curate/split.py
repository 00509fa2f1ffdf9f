"""Deterministic train/val/test split, stratified by cluster and tool.

Each trace's stratum is (its cluster, the first tool it calls or ``<no call>``); the cluster is the
CaR cluster when the dataset has one, else the SemDeDup cluster, else none.  Traces are ordered by
stratum, and within a stratum by a seeded hash of their id; then each trace in turn goes to the
split that is furthest behind its target share of the traces assigned so far.  That running
allocation keeps every stratum within about one trace of the target fractions, and it spreads the
traces of small strata over the splits instead of sending every singleton to train.  The result
depends only on the set of ids, their strata, the fractions and the seed, never on input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, field_validator

from tooldistill import store
from tooldistill.curate.common import (
    first_occurrences,
    has_column,
    hash_order,
    input_stamp,
    open_traces,
    read_columns,
    rewrite_parts,
)
from tooldistill.schema import content_hash
from tooldistill.stage import StageResult, StageRun

STAGE = "curate-split"
SPLITS = ("train", "val", "test")
NO_CALL = "<no call>"


def assign_splits(
    ids: Sequence[str], strata: Sequence[str], fractions: Sequence[float], seed: int = 0
) -> np.ndarray:
    """The split index (0 = train, 1 = val, 2 = test, ...) of every id; see the module docstring."""
    n = len(ids)
    target = np.asarray(fractions, dtype=np.float64)
    target = target / target.sum()
    order = np.lexsort(
        (
            np.asarray(ids, dtype=object),
            hash_order(ids, seed),
            np.asarray(strata, dtype=object),
        )
    )
    counts = np.zeros(len(target))
    out = np.empty(n, dtype=np.int64)
    for assigned, i in enumerate(order):
        deficit = target * (assigned + 1) - counts
        choice = int(np.argmax(deficit))
        out[i] = choice
        counts[choice] += 1
    return out


class SplitOptions(BaseModel):
    """How to split: ``SplitConfig`` without the input and output (the pipeline's ``curate.split``
    section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Shares of train, val and test.
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    #: Stratify by cluster (CaR's, else SemDeDup's) and by first tool called.
    by_cluster: bool = True
    by_tool: bool = True
    force: bool = False

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {value}")
        return value

    def config(self, *, dataset: str, out: str) -> SplitConfig:
        """The stage's config: these options on ``dataset``, written to ``out``."""
        return SplitConfig.model_validate({**dict(self), "dataset": dataset, "out": out})


class SplitConfig(SplitOptions):
    dataset: str
    out: str

    def config_hash(self) -> str:
        return content_hash(self.model_dump(mode="json", exclude={"dataset", "out", "force"}), 16)


def _strata(dataset: store.Dataset, config: SplitConfig) -> tuple[list[str], list[str], str | None]:
    cluster_column = next(
        (c for c in ("car_cluster", "dedup_cluster") if config.by_cluster and has_column(dataset, c)),
        None,
    )
    columns = ["id", "reference_calls"] + ([cluster_column] if cluster_column else [])
    table, _ = first_occurrences(read_columns(dataset, columns))
    ids = table.column("id").to_pylist()
    clusters = table.column(cluster_column).to_pylist() if cluster_column else [None] * len(ids)
    tools = [
        (calls[0]["name"] if calls else NO_CALL) if config.by_tool else ""
        for calls in table.column("reference_calls").to_pylist()
    ]
    return (
        ids,
        [f"{c}\x00{t}" for c, t in zip(clusters, tools, strict=True)],
        cluster_column,
    )


def run_split(config: SplitConfig, show_progress: bool = True) -> StageResult:
    """Write ``out`` (every trace with a ``split`` column) and ``out/train``, ``out/val``, ``out/test``."""
    dataset = open_traces(config.dataset)
    run = StageRun.start(STAGE, config.out, config.config_hash(), [input_stamp(dataset)], [config.dataset])
    earlier = run.existing(also=SPLITS, force=config.force)
    if earlier is not None:
        return earlier

    ids, strata, cluster_column = _strata(dataset, config)
    which = assign_splits(ids, strata, config.fractions, config.seed)
    names = np.asarray(SPLITS, dtype=object)[which]
    annotations = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "split": pa.array(names.tolist(), pa.string()),
        }
    )
    token = run.token
    counts: dict[str, int] = {}
    for index, name in enumerate(SPLITS):
        where = store.join(config.out, name)
        keep = which == index
        parts = rewrite_parts(
            dataset,
            where,
            token,
            annotations,
            keep=keep,
            description=f"write {name}",
            show_progress=show_progress,
        )
        counts[name] = int(keep.sum())
        run.publish_side(name, parts, stats={"split": name})
    parts = rewrite_parts(
        dataset,
        config.out,
        token,
        annotations,
        description="write split",
        show_progress=show_progress,
    )
    stats: dict[str, Any] = {
        "in": len(ids),
        **counts,
        "fractions": list(config.fractions),
        "strata": len(set(strata)),
        "stratified_by": [s for s, on in (("cluster", cluster_column), ("tool", config.by_tool)) if on],
        "cluster_column": cluster_column,
        "seed": config.seed,
    }
    return run.publish(parts, stats)
