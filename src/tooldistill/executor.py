"""Executors run one function over many shards: in this process, or spread over a Ray cluster with
Ray Data.  Stages hand an executor a picklable callable and JSON-able shard descriptions; they never
import Ray themselves.  This module is the only place that does.

Contract of a shard function: ``fn(shard: dict) -> dict``, both JSON-serialisable; it does its own
writing (a Parquet part) and returns small results (counts, part info, quarantined records).  It
must not raise for bad input; an exception is a bug or an infrastructure failure and fails the run.
It may run more than once for the same shard (its worker died and Ray ran it again), so it must
be idempotent: the same shard writes the same part under the same name and returns the same result.

Fault tolerance is set here, not left to Ray's defaults (Ray Data retries tasks and restarts actors
without limit, so a shard that kills its worker every time, an out-of-memory part say, would retry
forever).  A worker process that dies (killed, out of memory, its node lost) costs at most
``retries`` re-runs: ``max_retries`` of a task, ``max_restarts`` of an actor (the tasks it had in
flight run again on the restarted actor while it has restarts left), and as many actors that die
while loading in a row.  An exception raised by our own code is never retried (by the contract
above it is a bug), and no block may fail (``max_errored_blocks=0``: Ray Data would otherwise drop
its rows from the output).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from tooldistill.console import progress_bar

ShardFn = Callable[[dict[str, Any]], dict[str, Any]]

#: Re-runs of work lost to a dead worker process before the run fails: a task's retries, an actor's
#: restarts and the retries of each task it had in flight.  Three covers a preempted or OOM-killed
#: worker or two on a long run; a shard that kills its worker every time fails after four tries.
DEFAULT_RETRIES = 3


def task_retry_options(retries: int) -> dict[str, Any]:
    """Ray remote options of an idempotent task: run again when its worker dies, ``retries`` times
    at most, and never because it raised."""
    return {"max_retries": retries, "retry_exceptions": False}


def actor_retry_options(retries: int) -> dict[str, Any]:
    """Ray remote options of an actor whose methods are idempotent: restarted ``retries`` times
    at most when its process dies, and each task it had in flight run again on the restarted actor.

    The tasks' budget is the actor's (``max_task_retries=-1``: until the actor is out of
    restarts), not a count of their own.  When the actor's node is lost, every call to it fails
    ("temporarily unavailable") until the GCS declares the node dead, about 15 s with Ray's health
    checks, and each failure spent one of ``max_task_retries``: three were gone before the actor
    was restarted, and the stage failed (``tests/test_multinode.py``).  A shard that kills its
    actor every time still fails after ``retries + 1`` tries: the actor is then out of restarts."""
    return {"max_restarts": retries, "max_task_retries": -1 if retries else 0}


@contextmanager
def remote_options_accepted() -> Iterator[None]:
    """Silences Ray Data's deprecation of passing Ray remote options as extra keyword arguments.

    Ray 2.60 deprecates ``**ray_remote_args`` for removal in 2.64 but names no parameter for
    ``max_retries``, ``max_restarts`` or ``max_task_retries`` yet; they can only go that way.  When
    the keyword arguments are removed, the call fails with a ``TypeError`` (loud, not silent).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning
        )
        yield


def results_in_order(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The ``result`` of rows ``{"index": i, "result": json}`` for ``i`` in ``range(count)``, in that
    order; a ``RuntimeError`` when a shard's result is missing or two results of one shard differ.

    A shard re-run after its worker died should come back once (Ray drops the outputs of the lost
    attempt); should it come back twice, both must say the same (a shard writes the same part each
    time), and one is kept, so no shard is ever counted twice or left out.
    """
    results: dict[int, dict[str, Any]] = {}
    for row in rows:
        index, result = int(row["index"]), json.loads(row["result"])
        if index not in results:
            results[index] = result
        elif results[index].get("part") != result.get("part"):
            raise RuntimeError(
                f"shard {index} ran twice and wrote different parts "
                f"({results[index].get('part')} and {result.get('part')}); its function is not deterministic"
            )
    missing = [i for i in range(count) if i not in results]
    if missing or len(results) != count:
        raise RuntimeError(
            f"{len(missing)} of {count} shards came back without a result (first: {missing[:3]})"
        )
    return [results[i] for i in range(count)]


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
        with progress_bar(description, len(shards), self.show_progress) as advance:
            for shard in shards:
                results.append(fn(shard))
                advance(1)
        return results


class _RowAdapter:
    """Wraps a shard function for ``Dataset.map``: the shard travels as JSON text in one column."""

    def __init__(self, fn: ShardFn) -> None:
        self.fn = fn

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        result = self.fn(json.loads(row["shard"]))
        return {"index": row["index"], "result": json.dumps(result)}


#: DataContext settings of ``single_operator_execution`` that do not depend on its arguments.
_FIXED_CONTEXT: dict[str, Any] = {
    # Ray Data's default per-operator reservation holds back half the cluster's CPUs for operators
    # that do not exist in a one-operator pipeline; measured on 2 cores it ran one task at a time.
    "op_resource_reservation_enabled": False,
    # A block that fails fails the run; a positive value would let Ray Data drop its rows.
    "max_errored_blocks": 0,
    # Exceptions raised by our code are bugs (see the module docstring): no retry.
    "actor_task_retry_on_errors": False,
    "actor_init_retry_on_errors": False,
    "retried_map_errors": False,
}


@contextmanager
def single_operator_execution(progress_bars: bool = True, retries: int = DEFAULT_RETRIES) -> Iterator[None]:
    """Ray Data settings for a one-operator pipeline, for the duration of one execution.

    Sets the fault tolerance of the module docstring (``retries`` actors that die while starting,
    in a row, are replaced; the task and actor options go with the operator).  Callers that draw
    their own progress bar can turn Ray Data's off too.  Everything is restored afterwards.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    settings = {**_FIXED_CONTEXT, "max_consecutive_actor_init_deaths": retries}
    if not progress_bars:
        settings["enable_progress_bars"] = False
    saved = {name: getattr(context, name) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


class RayExecutor:
    """Runs shards as Ray Data tasks, one block per shard, on the cluster ``ray.init`` reaches.

    Connects to ``address`` (or ``RAY_ADDRESS``) when given, otherwise starts Ray on this machine.
    A shard whose worker dies runs again, ``retries`` times at most.
    """

    name = "ray"

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, retries: int = DEFAULT_RETRIES
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.num_cpus = num_cpus
        self.retries = retries

    def start(self) -> None:
        """Connect to (or start) Ray now; ``map_shards`` calls it, so callers only need it to time start-up."""

        from tooldistill.raycluster import ensure_ray

        ensure_ray(self.address, self.num_cpus)

    def map_shards(self, fn: ShardFn, shards: list[dict[str, Any]], description: str) -> list[dict[str, Any]]:
        if not shards:
            return []
        self.start()
        import ray.data

        items = [{"index": i, "shard": json.dumps(s)} for i, s in enumerate(shards)]
        with single_operator_execution(retries=self.retries):  # a shard pipeline has one operator
            # Made inside the context: a dataset runs under a copy of the DataContext of its making.
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
            with remote_options_accepted():
                mapped = dataset.map(_RowAdapter(fn), **task_retry_options(self.retries))
            rows = mapped.take_all()
        return results_in_order(rows, len(shards))


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None) -> Executor:
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, num_cpus=num_cpus)
    raise ValueError(f"unknown executor {name!r}; choose 'ray' or 'local'")
