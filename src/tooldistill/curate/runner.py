"""How curation runs its heavy steps: in this process, or on Ray.  The only curate module that
imports Ray (lazily), in the spirit of ``tooldistill.executor``.

Two kinds of work:

- ``map_stage``: a *stage with setup* (the embedder: load a model once, then embed many shards)
  over JSON shard descriptions.  Locally: ``setup()`` once, then a loop.  On Ray: Ray Data
  ``map_batches`` with an **actor pool** (``concurrency`` actors, each ``num_cpus``/``num_gpus``),
  one shard per batch; each actor calls ``setup()`` once in its constructor.
- ``map_arrays``: a pure function over work items that all read the same large arrays (SemDeDup's
  within-cluster step reads the cluster-sorted embedding matrix).  Locally: a loop.  On Ray: the
  arrays are put in the object store once (workers map them zero-copy) and every item group runs
  as a Ray task.

Both return results in input order and show one rich progress bar.

**Dead workers.**  On Ray, a worker process that dies mid-stage (killed, out of memory, node lost)
is replaced and its work done again, ``retries`` times at most (default ``DEFAULT_RETRIES``, 3; the
stage configs' ``retries`` field): an embedding actor is restarted (``max_restarts``; it loads its
model again) and the shards it had in flight are run again (``max_task_retries``); a SemDeDup task
is run again on another worker (``max_retries``).  Exceptions raised by the stage's own code are
not retried, and no shard may be dropped (``tooldistill.executor``).  What makes a re-run harmless:
a shard is a fixed row range and writes one part under a name fixed by its index, so a second
attempt overwrites the first's (possibly half-written) file with the same bytes; an array work item
is a pure function of its item and the shared arrays; results are put back in input order by index,
and a shard whose result is missing or came back twice with different parts fails the stage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tooldistill.curate.common import progress_bar
from tooldistill.executor import (
    DEFAULT_RETRIES,
    actor_retry_options,
    remote_options_accepted,
    results_in_order,
    single_operator_execution,
    task_retry_options,
)


class SetupStage(Protocol):
    """A picklable callable with a heavy ``setup()`` (run once per process or actor)."""

    def setup(self, cpus: float, gpus: float) -> None: ...

    def __call__(self, shard: dict[str, Any]) -> dict[str, Any]: ...


ArrayFn = Callable[[dict[str, np.ndarray], Any], Any]


@dataclass(frozen=True)
class _Pool:
    """The workers of ``map_stage``: ``concurrency`` of them (None: as many as the resources allow),
    each with ``num_cpus`` and ``num_gpus``, replaced ``retries`` times at most when one dies."""

    concurrency: int | None
    num_cpus: float
    num_gpus: float
    retries: int


class Runner:
    """The two kinds of work, for the runners below: each fills in ``_map_stage``, ``_map_arrays``
    and ``resources``."""

    name: str
    show_progress: bool

    def map_stage(
        self,
        stage: SetupStage,
        shards: list[dict[str, Any]],
        description: str,
        *,
        concurrency: int | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        retries: int = DEFAULT_RETRIES,
    ) -> list[dict[str, Any]]:
        """``stage`` over every shard (its ``setup()`` once per process or actor), in input order."""
        if not shards:
            return []
        return self._map_stage(stage, shards, description, _Pool(concurrency, num_cpus, num_gpus, retries))

    def map_arrays(
        self,
        fn: ArrayFn,
        arrays: dict[str, np.ndarray],
        items: Sequence[Any],
        description: str,
        *,
        retries: int = DEFAULT_RETRIES,
    ) -> list[Any]:
        """``fn(arrays, item)`` for every item, in input order."""
        return self._map_arrays(fn, arrays, items, description, retries)

    def resources(self) -> dict[str, float]:
        """CPUs and GPUs available to this runner."""
        raise NotImplementedError

    def _map_stage(
        self, stage: SetupStage, shards: list[dict[str, Any]], description: str, pool: _Pool
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _map_arrays(
        self, fn: ArrayFn, arrays: dict[str, np.ndarray], items: Sequence[Any], description: str, retries: int
    ) -> list[Any]:
        raise NotImplementedError


class LocalRunner(Runner):
    """Everything in this process, one item after another."""

    name = "local"

    def __init__(self, show_progress: bool = True) -> None:
        self.show_progress = show_progress

    def resources(self) -> dict[str, float]:
        gpus = 0.0
        try:
            import torch

            gpus = float(torch.cuda.device_count())
        except ImportError:
            pass
        return {"CPU": float(os.cpu_count() or 1), "GPU": gpus}

    def _map_stage(
        self, stage: SetupStage, shards: list[dict[str, Any]], description: str, pool: _Pool
    ) -> list[dict[str, Any]]:
        # ``pool.retries`` does not apply: a dead worker here is this process, the whole run.
        # One process: all of its cores belong to the one model.
        stage.setup(float(os.cpu_count() or 1), pool.num_gpus)
        return self._each(description, shards, stage)

    def _map_arrays(
        self, fn: ArrayFn, arrays: dict[str, np.ndarray], items: Sequence[Any], description: str, retries: int
    ) -> list[Any]:
        return self._each(description, items, lambda item: fn(arrays, item))

    def _each(self, description: str, items: Sequence[Any], fn: Callable[[Any], Any]) -> list[Any]:
        """``fn`` of every item, one after another, under one progress bar."""
        results = []
        with progress_bar(description, len(items), self.show_progress) as advance:
            for item in items:
                results.append(fn(item))
                advance(1)
        return results


class _ActorAdapter:
    """Ray Data actor: builds the stage once (``setup``), then runs one shard per batch."""

    def __init__(self, stage: SetupStage, cpus: float, gpus: float) -> None:
        self.stage = stage
        stage.setup(cpus, gpus)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        results = [json.dumps(self.stage(json.loads(shard))) for shard in batch["shard"]]
        return {"index": list(batch["index"]), "result": results}


def _run_items(fn: ArrayFn, items: list[Any], names: list[str], *arrays: np.ndarray) -> list[Any]:
    shared = dict(zip(names, arrays, strict=True))
    return [fn(shared, item) for item in items]


class RayRunner(Runner):
    """Ray Data actor pools and Ray tasks on the cluster that ``ray.init`` reaches."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, show_progress: bool = True):
        from tooldistill.executor import RayExecutor

        self._executor = RayExecutor(address=address, num_cpus=num_cpus)
        self.show_progress = show_progress

    def start(self) -> None:
        self._executor.start()

    def resources(self) -> dict[str, float]:
        import ray

        self.start()
        total = ray.cluster_resources()
        return {"CPU": float(total.get("CPU", 1.0)), "GPU": float(total.get("GPU", 0.0))}

    def _start_checked(self, retries: int) -> None:
        """``start``, once ``retries`` is known to make sense."""
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.start()

    def _map_stage(
        self, stage: SetupStage, shards: list[dict[str, Any]], description: str, pool: _Pool
    ) -> list[dict[str, Any]]:
        self._start_checked(pool.retries)
        import ray.data

        num_cpus, num_gpus, concurrency = pool.num_cpus, pool.num_gpus, pool.concurrency
        if concurrency is None:
            available = self.resources()
            concurrency = int(available["GPU"] // num_gpus) if num_gpus else int(available["CPU"] // num_cpus)
        concurrency = max(1, min(concurrency, len(shards)))
        items = [{"index": i, "shard": json.dumps(s)} for i, s in enumerate(shards)]
        rows: list[dict[str, Any]] = []
        with (
            single_operator_execution(progress_bars=False, retries=pool.retries),
            progress_bar(description, len(shards), self.show_progress) as advance,
        ):
            # Built inside the context: a Ray Data dataset keeps the DataContext it was made under.
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
            with remote_options_accepted():
                mapped = dataset.map_batches(
                    _ActorAdapter,
                    fn_constructor_args=(stage, num_cpus, num_gpus),
                    batch_size=1,
                    compute=ray.data.ActorPoolStrategy(size=concurrency),
                    num_cpus=num_cpus,
                    num_gpus=num_gpus or None,
                    **actor_retry_options(pool.retries),
                )
            for row in mapped.iter_rows():
                rows.append(row)
                advance(1)
        return results_in_order(rows, len(shards))

    def _map_arrays(
        self, fn: ArrayFn, arrays: dict[str, np.ndarray], items: Sequence[Any], description: str, retries: int
    ) -> list[Any]:
        if not items:
            return []
        self._start_checked(retries)
        import ray

        names = list(arrays)
        # Owned by this process: a dead worker loses none of them, a re-run task reads them again.
        refs = [ray.put(arrays[name]) for name in names]
        task = ray.remote(num_cpus=1, **task_retry_options(retries))(_run_items)
        # Small groups of items per task: enough tasks to balance, few enough to keep overhead low.
        workers = max(1, int(self.resources()["CPU"]))
        size = max(1, len(items) // (workers * 8))
        groups = [list(items[start : start + size]) for start in range(0, len(items), size)]
        pending = {task.remote(fn, group, names, *refs): g for g, group in enumerate(groups)}
        done: dict[int, list[Any]] = {}
        with progress_bar(description, len(items), self.show_progress) as advance:
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        g = pending.pop(ref)
                        done[g] = ray.get(ref)  # raises once a task is out of retries
                        advance(len(groups[g]))
            except BaseException:
                for ref in pending:  # the stage has failed: free the cluster of the rest
                    ray.cancel(ref)
                raise
        return [result for g in range(len(groups)) for result in done[g]]


def make_runner(name: str, address: str | None = None, num_cpus: int | None = None) -> Runner:
    if name == "local":
        return LocalRunner()
    if name == "ray":
        return RayRunner(address=address, num_cpus=num_cpus)
    raise ValueError(f"unknown executor {name!r}; choose 'ray' or 'local'")
