"""Curation on two Ray nodes, and a node lost in the middle of a stage (``tooldistill.testing.cluster``).

The nodes are separate raylets on 127.0.0.1: the head ``node_a`` (the driver's node, 1 CPU) and
``node_b`` (1 CPU), each with a custom resource of its name and a working folder of its own.  An
embedding pool of two one-CPU actors therefore has one actor on each node.  Datasets live on the
moto S3 server, so no node reads another's disk.

A node loss kills every process of ``node_b`` at once (raylet, agents, workers) while it runs work
of the stage, then starts a new ``node_b`` in its place, as an autoscaler would.  The stage must
finish with the output of an undisturbed run: the same parts byte for byte, the same vectors, the
same decisions.  A run that ends before the loss could land is run again (a few times at most); a
test with no loss fails.  The GCS keeps Ray's own health checks, so it declares the node dead
about 15 s after the loss, as on a real cluster; until then, calls to the lost node's actor fail
as "temporarily unavailable" (each one used to spend a shard's retry, and the stage failed).

Fine-tuning too: two data-parallel Ray Train workers, one on each node, checkpoints on S3; the
node of one worker is lost after a checkpoint and Ray Train's restarted worker group (on the head
and the new ``node_b``) goes on from it, within the one ``train()`` call.

The module starts and stops its own cluster: any Ray this process was connected to (the session's
``ray_cluster``) is shut down first.  ``-m "not multinode"`` leaves it out.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from test_curate import sample_traces, trace, write_dataset
from tooldistill import store
from tooldistill.curate.common import decisions_of
from tooldistill.curate.embed import EmbedConfig, embed
from tooldistill.curate.runner import LocalRunner, RayRunner
from tooldistill.curate.semdedup import SemDedupConfig, run_semdedup
from tooldistill.schema import ToolCall
from tooldistill.testing.cluster import (
    LOOPBACK,
    NODE_ENV,
    ClusterNode,
    Disruption,
    LoopbackCluster,
    loopback_cluster,
    on,
)

psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.multinode

ATTEMPTS = 3
#: Ray Data's name for an actor of the embedding pool, and its title while it embeds a shard.
EMBED_ACTOR = "MapWorker(MapBatches(_ActorAdapter))"
EMBEDDING = f"ray::{EMBED_ACTOR}.submit"
WITHIN_CLUSTER = "ray::_run_items"


@pytest.fixture(scope="module")
def cluster(s3_server: str) -> Iterator[LoopbackCluster]:
    """``node_a`` (head) and ``node_b``, one CPU each; this process is the driver.  Started after
    the S3 server, so every node (replacements too) has its endpoint and keys."""
    with loopback_cluster(1, {"node_b": 1}) as started:
        started.connect()
        yield started


@pytest.fixture(scope="module")
def data_bucket(s3_server: str) -> str:
    import uuid

    import boto3

    name = f"td-multinode-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def _parts_written(uri: str) -> int:
    """Parts under ``uri`` (an ``s3://`` prefix) so far, published or not."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    listing = store.s3_client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/part-")
    return int(listing.get("KeyCount", 0))


def _parts(dataset: store.Dataset) -> list[tuple[int, str]]:
    return [(p.rows, p.sha256) for p in dataset.manifest.parts]


def _by_id(dataset: store.Dataset) -> dict[str, np.ndarray]:
    table = dataset.to_arrow()
    vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(table.num_rows, -1)
    return dict(zip(table.column("id").to_pylist(), vectors, strict=True))


def _with_a_loss(
    cluster: LoopbackCluster, run: Callable[[str], Any], when: Callable[[str, ClusterNode], bool], root: str
) -> Disruption[Any]:
    """``run(out)`` into fresh prefixes until ``node_b`` was lost (and replaced) while it ran."""
    for attempt in range(ATTEMPTS):
        out = f"{root}/disrupted-{attempt}"
        disruption = cluster.disrupt(
            lambda out=out: run(out), node="node_b", when=lambda node, out=out: when(out, node)
        )
        if disruption.lost is not None:
            cluster.wait_for_nodes()
            return disruption
    pytest.fail(f"node_b was never lost while the stage ran ({ATTEMPTS} runs)")


# ---------------------------------------------------------------------------------------------
# The harness itself
# ---------------------------------------------------------------------------------------------


def test_two_nodes_on_loopback_each_with_its_own_folder(cluster: LoopbackCluster) -> None:
    import ray

    nodes = cluster.nodes
    assert set(nodes) == {"node_a", "node_b"} and nodes["node_a"].head
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert {n["NodeID"] for n in alive} == {n.node_id for n in nodes.values()}
    assert {n["NodeManagerAddress"] for n in alive} == {LOOPBACK}
    assert cluster.address.startswith(f"{LOOPBACK}:")
    assert ray.cluster_resources()["CPU"] == 2

    @ray.remote(num_cpus=0)
    def where() -> tuple[str, str | None, str]:
        return os.getcwd(), os.environ.get(NODE_ENV), ray.get_runtime_context().get_node_id()

    seen = ray.get([where.options(**on(name)).remote() for name in nodes])  # type: ignore[attr-defined]
    assert seen == [(str(n.directory), n.name, n.node_id) for n in nodes.values()]

    # every process of the cluster listens on the loopback interface only
    pids = {p.pid for n in nodes.values() for p in n.processes()}
    pids |= {
        info.process.pid for n in nodes.values() for infos in n.node.all_processes.values() for info in infos
    }
    listening = {
        (c.laddr.ip, c.pid)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }
    assert listening and {ip.removeprefix("::ffff:") for ip, _ in listening} == {LOOPBACK}


# ---------------------------------------------------------------------------------------------
# Embedding: one actor on each node
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traces_uri(cluster: LoopbackCluster, data_bucket: str) -> str:
    """Short requests, many small shards (4 rows each): the pool works for a few seconds."""
    traces = sample_traces(n_unique=120, n_copies=16)
    traces += [
        trace(
            f"Book a table for {i} at the river cafe",
            [ToolCall(name="search", arguments={"query": f"{i}"})],
            f"b{i}",
        )
        for i in range(24)
    ]
    uri = f"s3://{data_bucket}/traces"
    write_dataset(uri, traces, parts=2)
    return uri


def _embed_config(source: str, out: str) -> EmbedConfig:
    return EmbedConfig(
        dataset=source, out=out, rows_per_shard=4, concurrency=2, cpus_per_actor=1, batch_size=4
    )


@pytest.fixture(scope="module")
def embedded(cluster: LoopbackCluster, traces_uri: str, data_bucket: str) -> dict[str, store.Dataset]:
    """The same traces embedded in this process and by the pool on two nodes, undisturbed."""
    local = embed(
        _embed_config(traces_uri, f"s3://{data_bucket}/embedded-local"), LocalRunner(show_progress=False)
    )
    remote = embed(
        _embed_config(traces_uri, f"s3://{data_bucket}/embedded-two-nodes"),
        RayRunner(address=cluster.address, show_progress=False),
    )
    assert not local.skipped and not remote.skipped
    return {"local": local.dataset, "ray": remote.dataset}


def test_embed_on_two_nodes_equals_in_process(embedded: dict[str, store.Dataset]) -> None:
    local, remote = embedded["local"], embedded["ray"]
    stats = remote.manifest.stats
    assert stats["executor"] == "ray" and stats["workers"] == 2 and stats["shards"] == 40
    # the same parts: one per shard, the same rows in each, in the same order
    assert [p.rows for p in remote.manifest.parts] == [p.rows for p in local.manifest.parts]
    a, b = local.to_arrow(), remote.to_arrow()
    assert a.drop_columns(["embedding"]).equals(b.drop_columns(["embedding"]))
    # the same vectors: each actor embeds on one thread, this process on all cores, which may
    # change the last bits (on the test machine it does not)
    vectors_a, vectors_b = _by_id(local), _by_id(remote)
    assert vectors_a.keys() == vectors_b.keys()
    for trace_id, vector in vectors_a.items():
        assert np.allclose(vector, vectors_b[trace_id], atol=1e-5)
    print(f"embed: local and two-node parts byte-identical: {_parts(local) == _parts(remote)}")


def test_embed_node_lost_mid_stage_gives_the_same_output(
    cluster: LoopbackCluster, traces_uri: str, data_bucket: str, embedded: dict[str, store.Dataset]
) -> None:
    import ray

    baseline = embedded["ray"]
    shards = baseline.manifest.stats["shards"]
    head = cluster.nodes["node_a"]
    at_loss: dict[str, Any] = {}

    def run(out: str) -> store.Dataset:
        result = embed(
            _embed_config(traces_uri, out), RayRunner(address=cluster.address, show_progress=False)
        )
        assert not result.skipped
        return result.dataset

    def when(out: str, node: ClusterNode) -> bool:
        # node_b's actor embeds a shard, and the pool has written some parts but not all
        if not node.running(EMBEDDING):
            return False
        written = _parts_written(out)
        if not 1 <= written < shards:
            return False
        at_loss.update(parts=written, head_actor=bool(head.running(f"ray::{EMBED_ACTOR}")))
        return True

    started = time.perf_counter()
    disruption = _with_a_loss(cluster, run, when, f"s3://{data_bucket}/embed-loss")
    lost, replacement = disruption.lost, disruption.replacement
    assert lost is not None and replacement is not None and replacement.node_id != lost.node_id
    assert EMBEDDING in disruption.titles and at_loss["head_actor"]
    # the GCS saw the node die, and restarted the actor it held: on the node that replaced it, or
    # on the head when the head's actor had finished the other shards and left first
    states = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
    assert states[lost.node_id] is False and states[replacement.node_id] is True
    restarted = [
        a
        for a in ray._private.state.actors().values()
        if a["ActorClassName"] == EMBED_ACTOR and a["NumRestarts"] >= 1
    ]
    assert len(restarted) == 1
    restarted_on = {replacement.node_id: "the replacement", head.node_id: "the head"}[
        restarted[0]["Address"]["NodeID"]
    ]

    killed = disruption.result
    assert killed.manifest.rows == baseline.manifest.rows
    assert _parts(killed) == _parts(baseline)  # the same bytes, part by part, in the same order
    a, b = baseline.to_arrow(), killed.to_arrow()
    assert a.equals(b)
    assert len(set(b.column("id").to_pylist())) == b.num_rows
    print(
        f"embed: lost {lost.name} after {disruption.before_s} s with {at_loss['parts']}/{shards} parts "
        f"written, running {disruption.titles}; actor restarted on {restarted_on}; "
        f"finished {disruption.after_s} s later; "
        f"{time.perf_counter() - started:.1f} s"
    )


# ---------------------------------------------------------------------------------------------
# SemDeDup: within-cluster tasks on both nodes
# ---------------------------------------------------------------------------------------------


def _near_duplicates(n_base: int, d: int, seed: int) -> np.ndarray:
    """Random points plus near and exact copies of some of them, shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, d))
    picks = rng.integers(0, n_base, n_base // 4)
    noise = rng.standard_normal((len(picks), d)) / np.sqrt(d)
    scale = rng.uniform(0.0, 0.4, (len(picks), 1)) * np.linalg.norm(base[picks], axis=1, keepdims=True)
    x = np.vstack([base, base[picks] + scale * noise, base[:10]]).astype(np.float32)
    return x[rng.permutation(len(x))]


@pytest.fixture(scope="module")
def vectors_uri(cluster: LoopbackCluster, data_bucket: str) -> str:
    """Synthetic traces with synthetic embeddings; k=1 compares every pair, in several tasks of
    a few tenths of a second each (a few hundred traces would be over in microseconds)."""
    x = _near_duplicates(16_000, 128, seed=3)
    template = trace("request", [], "s")
    traces = [template.model_copy(update={"source_id": f"s{i}", "id": f"t{i:06d}"}) for i in range(len(x))]
    uri = f"s3://{data_bucket}/vectors"
    write_dataset(uri, traces, x, parts=3)
    return uri


def _semdedup(cluster: LoopbackCluster, source: str, out: str) -> Any:
    config = SemDedupConfig(dataset=source, out=out, eps=0.05, k=1, rank="random")
    result = run_semdedup(
        config, RayRunner(address=cluster.address, show_progress=False), show_progress=False
    )
    assert not result.skipped
    return result


def test_semdedup_node_lost_mid_stage_gives_the_same_output(
    cluster: LoopbackCluster, vectors_uri: str, data_bucket: str
) -> None:
    started = time.perf_counter()
    baseline = _semdedup(cluster, vectors_uri, f"s3://{data_bucket}/dedup-two-nodes")
    assert baseline.stats["seconds"]["work_items"] >= 3 and baseline.stats["duplicates"] > 0
    head = cluster.nodes["node_a"]
    at_loss: dict[str, Any] = {}

    def when(out: str, node: ClusterNode) -> bool:
        # node_b runs a within-cluster task (the head one too: the step is under way on both)
        if not node.running(WITHIN_CLUSTER):
            return False
        at_loss.update(head_task=bool(head.running(WITHIN_CLUSTER)))
        return True

    disruption = _with_a_loss(
        cluster, lambda out: _semdedup(cluster, vectors_uri, out), when, f"s3://{data_bucket}/dedup-loss"
    )
    assert disruption.lost is not None and disruption.replacement is not None
    assert WITHIN_CLUSTER in disruption.titles
    killed = disruption.result

    assert {k: v for k, v in killed.stats.items() if k != "seconds"} == {
        k: v for k, v in baseline.stats.items() if k != "seconds"
    }
    assert _parts(killed.dataset) == _parts(baseline.dataset)
    before, after = decisions_of(baseline.dataset.uri), decisions_of(killed.dataset.uri)
    assert before.equals(after)
    kept = after.filter(after.column("kept")).column("id").to_pylist()
    assert killed.dataset.to_arrow().column("id").to_pylist() == kept
    assert pa.compute.sum(after.column("kept")).as_py() == killed.stats["kept"]
    print(
        f"semdedup: {baseline.stats['seconds']['work_items']} work items, within-cluster step "
        f"{baseline.stats['seconds']['within_s']} s undisturbed; lost node_b after "
        f"{disruption.before_s} s running {disruption.titles} (head busy: {at_loss['head_task']}), "
        f"finished {disruption.after_s} s later, within-cluster step {killed.stats['seconds']['within_s']} s; "
        f"{time.perf_counter() - started:.1f} s"
    )


# ---------------------------------------------------------------------------------------------
# A path only the driver can see
# ---------------------------------------------------------------------------------------------


def test_stages_with_relative_local_paths_on_nodes_with_their_own_folders(
    cluster: LoopbackCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each node works in a folder of its own, as on a real cluster, so a local path relative to
    the driver's working directory names another folder on the workers: the stages that hand paths
    to their workers (the embed stage's actors, a per-row filter's shards) resolve them on the
    driver first."""
    from tooldistill.curate.length import LengthOptions, run_length

    monkeypatch.chdir(tmp_path)
    write_dataset("traces", sample_traces(8, 0), parts=1)
    runner = RayRunner(address=cluster.address, show_progress=False)
    config = EmbedConfig(dataset="traces", out="embedded", rows_per_shard=4, concurrency=2)
    result = embed(config, runner)
    assert result.dataset.manifest.rows == 8
    assert (tmp_path / "embedded" / "manifest.json").exists()
    options = LengthOptions(window=4096, rows_per_shard=2, cpus_per_worker=0.5)
    fitted = run_length(options.config(dataset="embedded", out="fitting"), runner)
    assert fitted.rows == 8 and fitted.stats["shards"] == 4
    assert (tmp_path / "fitting" / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# Training: two data-parallel workers, one on each node
# ---------------------------------------------------------------------------------------------

#: Ray Train's worker actor (its title while idle and while it runs a method).
TRAIN_WORKER = "ray::RayTrainWorker"


def test_training_goes_on_after_the_node_of_a_worker_is_lost(
    cluster: LoopbackCluster, data_bucket: str, tmp_path: Path
) -> None:
    """Two data-parallel training workers (gloo, one CPU each, so one on each node), Ray Train's
    storage on S3.  Right after Ray Train registered the checkpoint of step 1, ``node_b`` is lost
    (its worker holds there, so the loss lands at that moment; the head's worker waits in step 2's
    all-reduce) and a new ``node_b`` joins in its place.  One ``train()`` call: Ray Train restarts
    the worker group (``max_failures``) on the head and the new node, which goes on from step 1 to
    the end; the adapter is the result's checkpoint's."""
    pytest.importorskip("trl", reason="weight distillation needs trl and peft (the cpu extra)")
    import ray
    from transformers import TrainerCallback

    from tooldistill.finetune.train import LoraSettings, TrainSettings, train
    from tooldistill.serve.models import prepare

    started = time.perf_counter()
    base = prepare("smollm2")[0]
    folder = tmp_path / "phase"
    folder.mkdir()
    rows = [
        {"prompt": f"<|im_start|>user\nWeather in Paris{i}?<|im_end|>\n<|im_start|>assistant\n",
         "completion": f'<tool_call>\n{{"name": "weather_current", "arguments": {{"city": "Paris{i}"}}}}\n</tool_call><|im_end|>'}
        for i in range(4)
    ]  # fmt: skip
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = TrainSettings(
        epochs=2.0, learning_rate=1e-3, batch_size=1, max_length=64, save_steps=1, warmup_ratio=0.0,
        top_layers=1, lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")),
        workers=2, cpus_per_worker=1, max_failures=1,
    )  # fmt: skip
    # an undisturbed run's steps: each worker takes every other example, one a step
    per_epoch = math.ceil(len(rows) / (settings.workers * settings.batch_size))
    expected_steps = math.ceil(settings.epochs * per_epoch)
    storage = f"s3://{data_bucket}/runs/train-loss/train/ft"
    marks = tmp_path / "marks"  # the test's own notes from the workers (not the training's)
    marks.mkdir()

    class WhereAndHold(TrainerCallback):  # type: ignore[misc]
        """Notes where each worker trains and which steps it finishes; the worker on node_b holds
        after Ray Train registered the checkpoint of step 1 (a resumed training saves step 1 no
        more), until the node is lost."""

        def __init__(self, marks: Path) -> None:
            self.marks = marks

        def _note(self, entry: dict[str, Any]) -> None:
            import ray as worker_ray

            entry.update(
                node=os.environ.get(NODE_ENV), node_id=worker_ray.get_runtime_context().get_node_id()
            )
            with (self.marks / "workers.jsonl").open("a") as handle:
                handle.write(json.dumps(entry) + "\n")

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self._note({"rank": args.process_index, "from_step": state.global_step})

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self._note({"rank": args.process_index, "step": state.global_step})

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step != 1 or os.environ.get(NODE_ENV) != "node_b":
                return
            import ray.train

            ray.train.get_all_reported_checkpoints()  # Ray Train has registered step 1
            (self.marks / "holding").write_text(f"{args.process_index}\n")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # lost before then
                time.sleep(0.5)

    head = cluster.nodes["node_a"]
    driver_node = ray.get_runtime_context().get_node_id()
    assert driver_node == head.node_id  # the driver is on the head, which stays
    at_loss: dict[str, Any] = {}

    def when(node: ClusterNode) -> bool:
        if not (marks / "holding").exists():
            return False
        at_loss.update(head=bool(head.running(TRAIN_WORKER)), lost=bool(node.running(TRAIN_WORKER)))
        return True

    lines: list[str] = []
    disruption = cluster.disrupt(
        lambda: train(
            str(base), folder, settings, storage=storage, note=lines.append, callbacks=[WhereAndHold(marks)]
        ),
        node="node_b",
        when=when,
    )
    result = disruption.result
    lost, replacement = disruption.lost, disruption.replacement
    assert lost is not None and replacement is not None, "node_b was never lost while training"
    cluster.wait_for_nodes()
    assert lost.name == "node_b" and replacement.node_id != lost.node_id
    assert ray.get_runtime_context().get_node_id() == driver_node
    # the node held a training worker, and so did the head
    assert at_loss == {"head": True, "lost": True}
    assert any(t.startswith(TRAIN_WORKER) for t in disruption.titles)

    # where each worker group trained, and the steps each worker finished
    notes = [json.loads(line) for line in (marks / "workers.jsonl").read_text().splitlines()]
    begun = [n for n in notes if "from_step" in n]
    assert len(begun) == 4  # two worker groups of two: one restart
    first, second = begun[:2], begun[2:]
    assert {n["node_id"] for n in first} == {head.node_id, lost.node_id}
    assert {n["node_id"] for n in second} == {head.node_id, replacement.node_id}
    assert [n["from_step"] for n in first] == [0, 0] and [n["from_step"] for n in second] == [1, 1]
    for node_id, steps in (
        (head.node_id, list(range(1, expected_steps + 1))),
        (lost.node_id, [1]),
        (replacement.node_id, list(range(2, expected_steps + 1))),
    ):
        assert [n["step"] for n in notes if "step" in n and n["node_id"] == node_id] == steps

    # the training went on from the checkpoint of step 1 to an undisturbed run's last step
    assert result.steps == expected_steps == 4
    assert result.resumed_from_step == 1 and result.resumes == [1]
    assert [e["step"] for e in result.log] == list(range(1, expected_steps + 1))
    assert [w["rank"] for w in result.placement] == [0, 1]
    assert lines and all(line.startswith("training on 2 workers (CPU, gloo)") for line in lines)

    # the adapter is the result's checkpoint's, on S3
    assert result.checkpoint is not None
    assert result.checkpoint.endswith(f"/checkpoint_{expected_steps:06d}")
    bucket, _, prefix = result.checkpoint.partition("/")
    assert bucket == data_bucket
    s3 = store.s3_client()
    names = {"adapter_config.json", "adapter_model.safetensors"}
    assert names <= {p.name for p in result.adapter.iterdir()}
    for name in names:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()
        assert (result.adapter / name).read_bytes() == body
    print(
        f"train: lost node_b (rank {(marks / 'holding').read_text().strip()}) "
        f"{disruption.before_s} s after the start, after the checkpoint of step 1; "
        f"the restarted group went on from step 1 to {result.steps} on node_a and the new node_b, "
        f"finished {disruption.after_s} s later; {time.perf_counter() - started:.1f} s"
    )
