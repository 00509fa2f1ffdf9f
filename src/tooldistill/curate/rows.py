"""Per-row filter stages through the runner: each trace kept or dropped with a reason.

A filter stage that looks at one trace at a time (a length check, a language check, a regex
screen) does not run in the driver: its input is cut into shards (row ranges of its parts, as the
embed stage cuts them) and every shard is read, judged and written as one part by whoever runs it,
this process or a Ray Data actor pool (``Runner.map_stage``).  The judge's heavy setup (a tokenizer,
a model) is done once per worker.

What a filter stage writes:

- its output: the kept traces with every column they came with;
- ``decisions``: one row per trace read, ``id``, ``kept`` and ``reason`` (empty when kept);
- stats: ``in``, ``kept``, ``dropped`` (by reason) and one count per reason key the judge names,
  so the funnel can say why traces went.

A shard writes one part under a name fixed by its index, so a shard run again after a lost worker
replaces its own part; the output is the same whatever ran it.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Protocol

import pyarrow as pa

from tooldistill import store
from tooldistill.curate.common import DECISIONS, input_stamp, open_traces, read_part, trace_columns
from tooldistill.curate.runner import Runner
from tooldistill.schema import Trace, traces_from_table
from tooldistill.stage import StageResult, StageRun


class RowJudge(Protocol):
    """Decides for one trace at a time.  Picklable: it travels to the workers before ``setup``."""

    def setup(self) -> None:
        """Load what judging needs (once per worker)."""

    def __call__(self, trace: Trace) -> str | None:
        """None to keep the trace, else the reason key it is dropped for (e.g. ``too_long``)."""


def row_shards(dataset: store.Dataset, rows_per_shard: int | None, workers: int) -> list[dict[str, Any]]:
    """The dataset's rows as shards: ``index``, ``part``, ``start``, ``stop`` (one part's row range).

    Without ``rows_per_shard``: about eight shards per worker, so the last wave is short, between
    256 and 16,384 rows each."""
    total = dataset.manifest.rows
    if rows_per_shard is None:
        rows_per_shard = max(256, min(16_384, math.ceil(total / max(1, workers * 8))))
    shards: list[dict[str, Any]] = []
    for index, part in enumerate(dataset.manifest.parts):
        for start in range(0, part.rows, rows_per_shard):
            shards.append(
                {
                    "index": len(shards),
                    "part": index,
                    "start": start,
                    "stop": min(part.rows, start + rows_per_shard),
                }
            )
    return shards


class _FilterShard:
    """One shard of a filter stage: read, judge every trace, write the kept rows as one part."""

    def __init__(self, judge: RowJudge, dataset: str, out: str, token: str) -> None:
        self.judge, self.token = judge, token
        # absolute here, on the driver: a worker on another node has a working directory of its own
        self.dataset, self.out = store.absolute(dataset), store.absolute(out)
        self._input: store.Dataset | None = None

    def setup(self, cpus: float, gpus: float) -> None:
        self.judge.setup()

    def __call__(self, shard: dict[str, Any]) -> dict[str, Any]:
        if self._input is None:
            self._input = store.Dataset.open(self.dataset)
        table = read_part(self._input, shard["part"]).slice(shard["start"], shard["stop"] - shard["start"])
        reasons = [self.judge(trace) for trace in traces_from_table(trace_columns(table))]
        keep = pa.array([reason is None for reason in reasons])
        kept = table.filter(keep)
        part = (
            store.write_part(self.out, self.token, shard["index"], kept).model_dump()
            if kept.num_rows
            else None
        )
        return {
            "part": part,
            "ids": table.column("id").to_pylist(),
            "reasons": [reason or "" for reason in reasons],
        }


def filter_rows(
    stage: str,
    config_hash: str,
    dataset_uri: str,
    out: str,
    judge: RowJudge,
    runner: Runner,
    *,
    reasons: tuple[str, ...],
    inputs: list[Any] | None = None,
    rows_per_shard: int | None = None,
    cpus_per_worker: float = 1.0,
    retries: int = 3,
    force: bool = False,
    stats: dict[str, Any] | None = None,
) -> StageResult:
    """Run a filter stage: ``judge`` on every trace of ``dataset_uri`` through ``runner``; the kept
    traces to ``out`` and every decision to ``out/decisions``.

    ``reasons``: the reason keys ``judge`` may return (each gets a count in the stats, 0 included);
    ``inputs``: what else identifies the stage's inputs besides the dataset (a tokenizer's files);
    ``stats``: more figures for the manifest (the stage's settings)."""
    dataset = open_traces(dataset_uri)
    run = StageRun.start(stage, out, config_hash, [input_stamp(dataset), *(inputs or [])], [dataset_uri])
    earlier = run.existing(also=[DECISIONS], force=force)
    if earlier is not None:
        return earlier
    workers = 1 if runner.name == "local" else max(1, int(runner.resources()["CPU"] // cpus_per_worker))
    shards = row_shards(dataset, rows_per_shard, workers)
    started = time.perf_counter()
    results = runner.map_stage(
        _FilterShard(judge, dataset_uri, out, run.token),
        shards,
        f"{stage}: {dataset.manifest.rows} traces",
        concurrency=workers,
        num_cpus=cpus_per_worker,
        retries=retries,
    )
    seconds = time.perf_counter() - started
    ids = [i for r in results for i in r["ids"]]
    why = [w for r in results for w in r["reasons"]]
    unknown = sorted({w for w in why if w and w not in reasons})
    if unknown:
        raise ValueError(f"{stage}: the judge gave reasons it does not declare: {', '.join(unknown)}")
    parts = [store.PartInfo.model_validate(r["part"]) for r in results if r["part"]]
    counts = Counter(w for w in why if w)
    decisions = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "kept": pa.array([not w for w in why], pa.bool_()),
            "reason": pa.array(why, pa.string()),
        }
    )
    figures = {
        "in": len(ids),
        "kept": len(ids) - sum(counts.values()),
        "dropped": {reason: counts.get(reason, 0) for reason in reasons},
        **{reason: counts.get(reason, 0) for reason in reasons},
        "executor": runner.name,
        "workers": workers,
        "shards": len(shards),
        "seconds": round(seconds, 3),
        **(stats or {}),
    }
    run.publish_side(DECISIONS, table=decisions, kind="curation")
    return run.publish(parts, figures)
