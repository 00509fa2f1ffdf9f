"""Executors run one function over many shards: in this process, or spread over a Ray cluster with
Ray Data.  Stages hand an executor a picklable callable and JSON-able shard descriptions; they never
import Ray themselves.  This module is the only place that does.

Contract of a shard function: ``fn(shard: dict) -> dict``, both JSON-serialisable; it does its own
writing (a Parquet part) and returns small results (counts, part info, quarantined records).  It
must not raise for bad input; an exception is a bug or an infrastructure failure and fails the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ShardFn = Callable[[dict[str, Any]], dict[str, Any]]


class Executor(Protocol):
    name: str

    def map_shards(self, fn: ShardFn, shards: list[dict[str, Any]], description: str) -> list[dict[str, Any]]:
        """``[fn(s) for s in shards]``, in the same order, possibly in parallel."""
        ...


class LocalExecutor:
    """Runs shards one after another in this process, with a progress bar."""

    name = "local"

    def __init__(self, show_progress: bool = True) -> None:
        self.show_progress = show_progress

    def map_shards(self, fn: ShardFn, shards: list[dict[str, Any]], description: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not self.show_progress,
            transient=True,
        ) as progress:
            task = progress.add_task(description, total=len(shards))
            for shard in shards:
                results.append(fn(shard))
                progress.advance(task)
        return results


class _RowAdapter:
    """Wraps a shard function for ``Dataset.map``: the shard travels as JSON text in one column."""

    def __init__(self, fn: ShardFn) -> None:
        self.fn = fn

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        result = self.fn(json.loads(row["shard"]))
        return {"index": row["index"], "result": json.dumps(result)}


@contextmanager
def single_operator_execution(progress_bars: bool = True) -> Iterator[None]:
    """Ray Data settings for a one-operator pipeline, for the duration of one execution.

    Ray Data's default per-operator reservation holds back half the cluster's CPUs for operators
    that do not exist in such a pipeline; measured on 2 cores it ran one task at a time.  Callers
    that draw their own progress bar can turn Ray Data's off too.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = (context.op_resource_reservation_enabled, context.enable_progress_bars)
    context.op_resource_reservation_enabled = False
    if not progress_bars:
        context.enable_progress_bars = False
    try:
        yield
    finally:
        context.op_resource_reservation_enabled, context.enable_progress_bars = saved


class RayExecutor:
    """Runs shards as Ray Data tasks, one block per shard, on the cluster ``ray.init`` reaches.

    Connects to ``address`` (or ``RAY_ADDRESS``) when given, otherwise starts Ray on this machine.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.num_cpus = num_cpus

    def start(self) -> None:
        """Connect to (or start) Ray now; ``map_shards`` calls it, so callers only need it to time start-up."""
        import ray

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if self.address:
            kwargs["address"] = self.address
        elif self.num_cpus:
            kwargs["num_cpus"] = self.num_cpus
        ray.init(**kwargs)

    def map_shards(self, fn: ShardFn, shards: list[dict[str, Any]], description: str) -> list[dict[str, Any]]:
        if not shards:
            return []
        self.start()
        import ray.data

        items = [{"index": i, "shard": json.dumps(s)} for i, s in enumerate(shards)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        with single_operator_execution():  # a shard pipeline has one operator
            rows = dataset.map(_RowAdapter(fn)).take_all()
        rows.sort(key=lambda row: row["index"])
        return [json.loads(row["result"]) for row in rows]


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None) -> Executor:
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, num_cpus=num_cpus)
    raise ValueError(f"unknown executor {name!r}; choose 'ray' or 'local'")
