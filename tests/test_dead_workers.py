"""Dead workers (issue 17): a Ray worker SIGKILLed in the middle of a curate stage changes nothing.

Each test runs a stage on Ray once undisturbed, then again into a fresh folder while a helper
thread waits for a worker of *this* stage to be busy (a child process of the test's own raylet
whose process title says it is running the stage's code: an embedding actor in ``submit``, a
SemDeDup ``_run_items`` task) and kills exactly that pid.  The second run must finish with the same
output: the same parts (byte for byte), the same vectors, the same decisions.  A run that ends
before the kill could land is run again (a few times at most); a test with no kill fails.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tooldistill import store
from tooldistill.curate.common import decisions_of
from tooldistill.curate.embed import EmbedConfig, embed, embedding_array
from tooldistill.curate.runner import RayRunner
from tooldistill.curate.semdedup import SemDedupConfig, run_semdedup
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace, traces_to_table

psutil = pytest.importorskip("psutil")

ATTEMPTS = 3
SEARCH = ToolSpec(
    name="search",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)
WORDS = ["train", "museum", "bakery", "bike", "tax", "chess", "river", "violin", "garden", "comet"]


def _trace(i: int, request: str) -> Trace:
    return Trace(
        source_id=f"s{i}",
        source="test",
        messages=[Message(role="user", content=request)],
        tools=[SEARCH],
        reference_calls=[ToolCall(name="search", arguments={"query": request[:40]})],
    ).with_id()


def _write(uri: str, traces: list[Trace], vectors: np.ndarray | None = None, parts: int = 2) -> str:
    table = traces_to_table(traces)
    if vectors is not None:
        table = table.append_column("embedding", embedding_array(vectors))
    token = store.new_token()
    size = -(-table.num_rows // parts)
    infos = [
        store.write_part(uri, token, i, table.slice(start, size))
        for i, start in enumerate(range(0, table.num_rows, size))
    ]
    manifest = store.Manifest(
        kind="traces", stage="test", rows=table.num_rows, parts=infos, config_hash="t", fingerprint=token
    )
    store.publish(uri, token=token, manifest=manifest)
    return uri


# ---------------------------------------------------------------------------------------------
# Finding and killing a worker of this test's Ray cluster
# ---------------------------------------------------------------------------------------------


def _raylet() -> Any:
    """The raylet this test process started (``ray_cluster``): every worker is its child."""
    import ray

    node = ray._private.worker._global_node
    assert node is not None and node.head, "the test needs a Ray instance started by this process"
    return psutil.Process(node.all_processes["raylet"][0].process.pid)


class Killer(threading.Thread):
    """Once ``ready()``, SIGKILLs the first child of our raylet whose process title starts with
    ``title`` (Ray sets ``ray::<function>`` or ``ray::<actor class>.<method>`` while a worker runs
    it, ``ray::IDLE`` or the bare class name when it waits).  ``check(pid)`` may veto a candidate
    and return facts to record about it."""

    def __init__(
        self,
        title: str,
        ready: Callable[[], bool] = lambda: True,
        check: Callable[[int], dict[str, Any] | None] = lambda pid: {},
    ) -> None:
        super().__init__(daemon=True)
        self.title, self.ready, self.check = title, ready, check
        self.raylet = _raylet()
        self.stop = threading.Event()
        self.killed: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.killed is None:
                if self.ready():
                    self._try_kill()
                time.sleep(0.005)
        except BaseException as error:  # reported by the test
            self.error = error

    def _try_kill(self) -> None:
        for child in self.raylet.children():
            try:
                command = child.cmdline()
            except psutil.Error:
                continue
            if not command or not command[0].startswith(self.title):
                continue
            facts = self.check(child.pid)
            if facts is None:
                continue
            try:
                if not child.cmdline()[0].startswith(self.title):  # it finished meanwhile
                    continue
                child.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
            child.wait(timeout=30)
            self.killed = {
                "pid": child.pid,
                "title": command[0],
                "parent": self.raylet.pid,
                "alive_after": psutil.pid_exists(child.pid) and child.status() != psutil.STATUS_ZOMBIE,
                **facts,
            }
            return


def _actor_entry(actor_id: str) -> Any:
    """The GCS actor table's entry for an actor (its configured ``max_restarts`` included)."""
    import ray
    from ray.core.generated import gcs_pb2

    accessor = ray._private.state.state._connect_and_get_accessor()
    return gcs_pb2.ActorTableData.FromString(accessor.get_actor_info(ray.ActorID(bytes.fromhex(actor_id))))


def _with_a_kill(
    run: Callable[[Path], Any], killer: Callable[[Path], Killer], root: Path
) -> tuple[Any, Killer]:
    """``run(out)`` into fresh folders until a killer thread started beside it has killed a worker."""
    for attempt in range(ATTEMPTS):
        out = root / f"killed-{attempt}"
        thread = killer(out)
        thread.start()
        try:
            result = run(out)
        finally:
            thread.stop.set()
            thread.join(timeout=60)
        assert thread.error is None, thread.error
        if thread.killed is not None:
            return result, thread
    pytest.fail(f"no worker of the stage could be killed while it ran ({ATTEMPTS} runs)")


def _parts(dataset: store.Dataset) -> list[tuple[int, str]]:
    return [(p.rows, p.sha256) for p in dataset.manifest.parts]


# ---------------------------------------------------------------------------------------------
# Embed: an actor of the pool dies mid-shard
# ---------------------------------------------------------------------------------------------


def test_embed_actor_killed_mid_stage_gives_the_same_output(ray_cluster: None, tmp_path: Path) -> None:
    import ray

    rng = np.random.default_rng(7)
    traces = [
        _trace(i, f"{' '.join(rng.choice(WORDS, 3 + i % 5))} near stop {i}, please look it up")
        for i in range(144)
    ]
    traces += [
        t.model_copy(update={"source_id": f"copy{j}", "id": ""}).with_id() for j, t in enumerate(traces[:16])
    ]
    source = _write(str(tmp_path / "traces"), traces, parts=2)

    def run(out: Path) -> store.Dataset:
        config = EmbedConfig(dataset=source, out=str(out), rows_per_shard=10, concurrency=2, batch_size=4)
        result = embed(config, RayRunner(show_progress=False))
        assert not result.skipped
        return result.dataset

    started = time.perf_counter()
    baseline = run(tmp_path / "baseline")
    shards = baseline.manifest.stats["shards"]
    assert shards == 16 and baseline.manifest.stats["retries"] == 3
    job = ray.get_runtime_context().get_job_id()

    def killer(out: Path) -> Killer:
        actor_class = "MapWorker(MapBatches(_ActorAdapter))"

        def parts_written() -> int:
            return len(list(out.glob("part-*.parquet"))) if out.exists() else 0

        def check(pid: int) -> dict[str, Any] | None:
            # the pid must be an alive actor of this job's embedding pool, and the stage unfinished
            mine = [
                a
                for a in ray._private.state.actors().values()
                if a["Pid"] == pid
                and a["State"] == "ALIVE"
                and a["JobID"] == job
                and a["ActorClassName"] == actor_class
            ]
            written = parts_written()
            if len(mine) != 1 or written >= shards:
                return None
            return {"actor_id": mine[0]["ActorID"], "parts_before_kill": written}

        # after the first shard's part is written: the pool is up and has work left
        return Killer(f"ray::{actor_class}.submit", ready=lambda: parts_written() >= 1, check=check)

    killed, thread = _with_a_kill(run, killer, tmp_path)
    facts = thread.killed
    assert facts is not None and not facts["alive_after"] and facts["parent"] != os.getpid()
    assert 1 <= facts["parts_before_kill"] < shards
    # Ray restarted the very actor that was killed, under the configured budget (not Ray Data's -1)
    entry = _actor_entry(facts["actor_id"])
    assert entry.max_restarts == 3 and entry.num_restarts >= 1

    assert killed.manifest.rows == baseline.manifest.rows == len(traces)
    assert _parts(killed) == _parts(baseline)  # the same bytes, part by part, in the same order
    a, b = baseline.to_arrow(), killed.to_arrow()
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert len(set(b.column("id").to_pylist())) == len(traces)
    assert np.array_equal(
        a.column("embedding").combine_chunks().values.to_numpy(),
        b.column("embedding").combine_chunks().values.to_numpy(),
    )
    assert a.equals(b)
    print(f"embed: killed {facts}; {time.perf_counter() - started:.1f} s")


# ---------------------------------------------------------------------------------------------
# SemDeDup: a worker dies while it runs a within-cluster task
# ---------------------------------------------------------------------------------------------


def _near_duplicates(n_base: int, d: int, seed: int) -> np.ndarray:
    """Random unit-ish points plus near and exact copies of some of them, shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, d))
    picks = rng.integers(0, n_base, n_base // 4)
    # noise of r times the point's norm, r up to 0.4: similarities from 1 down to about 0.93
    noise = rng.standard_normal((len(picks), d)) / np.sqrt(d)
    scale = rng.uniform(0.0, 0.4, (len(picks), 1)) * np.linalg.norm(base[picks], axis=1, keepdims=True)
    copies = base[picks] + scale * noise
    x = np.vstack([base, copies, base[:10]]).astype(np.float32)
    return x[rng.permutation(len(x))]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Synthetic traces with synthetic embeddings, big enough that a within-cluster task runs for
    a while (k=1: every pair is compared, a few tasks of ~4·10^7 pairs each); on a few hundred
    traces a task is over in microseconds, too soon to be killed."""
    x = _near_duplicates(12_800, 128, seed=3)
    template = _trace(0, "request")
    traces = [template.model_copy(update={"source_id": f"s{i}", "id": f"t{i:06d}"}) for i in range(len(x))]
    return _write(str(tmp_path_factory.mktemp("dead") / "embedded"), traces, x, parts=3)


def _semdedup(source: str, out: Path, retries: int = 3) -> Any:
    config = SemDedupConfig(dataset=source, out=str(out), eps=0.05, k=1, rank="random", retries=retries)
    result = run_semdedup(config, RayRunner(show_progress=False), show_progress=False)
    assert not result.skipped
    return result


def test_semdedup_task_worker_killed_mid_stage_gives_the_same_output(
    ray_cluster: None, embedded: str, tmp_path: Path
) -> None:
    def run(out: Path) -> Any:
        return _semdedup(embedded, out)

    started = time.perf_counter()
    baseline = run(tmp_path / "baseline")
    assert baseline.stats["seconds"]["work_items"] >= 3 and baseline.stats["duplicates"] > 0

    killed, thread = _with_a_kill(run, lambda out: Killer("ray::_run_items"), tmp_path)
    facts = thread.killed
    assert facts is not None and facts["title"] == "ray::_run_items" and not facts["alive_after"]

    assert {k: v for k, v in killed.stats.items() if k != "seconds"} == {
        k: v for k, v in baseline.stats.items() if k != "seconds"
    }
    assert _parts(killed.dataset) == _parts(baseline.dataset)
    before, after = decisions_of(baseline.dataset.uri), decisions_of(killed.dataset.uri)
    assert before.equals(after)
    kept = after.filter(after.column("kept")).column("id").to_pylist()
    assert killed.dataset.to_arrow().column("id").to_pylist() == kept
    assert pa.compute.sum(after.column("kept")).as_py() == killed.stats["kept"]
    print(f"semdedup: killed {facts}; {time.perf_counter() - started:.1f} s")


def test_semdedup_without_retries_fails_when_its_worker_dies(
    ray_cluster: None, embedded: str, tmp_path: Path
) -> None:
    """``retries=0`` is honoured (Ray's own default would retry): one dead worker fails the stage,
    with a Ray error and nothing published."""
    import ray

    for attempt in range(ATTEMPTS):
        out = tmp_path / f"run-{attempt}"
        killer = Killer("ray::_run_items")
        killer.start()
        try:
            _semdedup(embedded, out, retries=0)
        except ray.exceptions.RayError as error:
            # the killer records its kill only after the worker is reaped, which may be after Ray
            # has already raised here: wait for the thread before reading what it did
            killer.stop.set()
            killer.join(timeout=60)
            assert killer.killed is not None, f"the stage failed without a kill: {error}"
            assert store.read_manifest(str(out)) is None
            return
        finally:
            killer.stop.set()
            killer.join(timeout=60)
        assert killer.error is None, killer.error
        assert killer.killed is None, f"a worker was killed ({killer.killed}) and the stage still passed"
    pytest.fail(f"no worker of the stage could be killed while it ran ({ATTEMPTS} runs)")
