"""The cluster definitions in cluster/: the fields Ray's launcher and KubeRay need, checked offline.

The launcher config goes through Ray's own schema (ray/autoscaler/ray-schema.json) and the same
prepare/validate steps `ray up` runs before it talks to AWS.  KubeRay's CRDs are not available
offline, so ``kuberay_problems`` checks what the operator and the API server would reject or
silently mis-handle; the negative tests prove that each of its rules fires.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
RAYCLUSTER = CLUSTER / "raycluster.yaml"
RAYJOB = CLUSTER / "rayjob-pipeline.yaml"
RAYSERVICE = CLUSTER / "rayservice-gpt-oss-20b.yaml"
KUBERAY_KINDS = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GPU_FAMILY = re.compile(r"^(g|p)\d")  # EC2 families with NVIDIA GPUs: g4dn/g5/g6/g6e, p4d/p5, ...


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path}: not a mapping"
    return doc


def student_accelerator() -> str:
    """The accelerator type the cluster student's Serve profile asks for (H100)."""
    profile = load(ROOT / "configs/serve/gpt-oss-20b.yaml")
    return str(profile["applications"][0]["args"]["llm_configs"][0]["accelerator_type"])


# --- Ray cluster launcher (ray up) -------------------------------------------------------------


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(path) as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def launcher_problems(config: dict[str, Any]) -> list[str]:
    """Why `ray up` would refuse this AWS config, or start a cluster that cannot run the pipeline."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    problems = [
        f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(ray_schema()).iter_errors(config)
    ]
    if problems:
        return problems
    provider = config["provider"]
    if provider.get("type") != "aws":
        problems.append(f"provider.type is {provider.get('type')!r}, not aws")
    if not isinstance(provider.get("region"), str) or not provider["region"]:
        problems.append("provider.region is missing")
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    if head not in types:
        return [*problems, f"head_node_type {head!r} is not one of available_node_types {sorted(types)}"]
    for name, node in types.items():
        node_config = node.get("node_config", {})
        instance = node_config.get("InstanceType")
        if not isinstance(instance, str) or not instance:
            problems.append(f"{name}: node_config.InstanceType is missing")
            continue
        if str(node_config.get("ImageId", "")).lower() in ("", "latest_dlami"):
            # Ray's fallback is an Ubuntu 18.04 DLAMI: its Python cannot install this project
            problems.append(f"{name}: node_config.ImageId is not set")
        if "IamInstanceProfile" not in node_config:
            problems.append(f"{name}: no IamInstanceProfile (the nodes reach S3 through it)")
        resources = node.get("resources")
        if not resources:
            problems.append(f"{name}: resources are not declared")
            continue
        gpus = resources.get("GPU", 0)
        if GPU_FAMILY.match(instance) and gpus < 1:
            problems.append(f"{name}: {instance} has GPUs but resources declare GPU: {gpus}")
        if not GPU_FAMILY.match(instance) and (
            gpus or any(k.startswith("accelerator_type:") for k in resources)
        ):
            problems.append(f"{name}: {instance} has no GPU but resources declare one")
        low, high = node.get("min_workers", 0), node.get("max_workers", config.get("max_workers", 0))
        if not (is_int(low) and is_int(high) and 0 <= low <= high):
            problems.append(f"{name}: needs 0 <= min_workers <= max_workers, got {low}, {high}")
        elif high > config.get("max_workers", 0):
            problems.append(f"{name}: max_workers {high} is above the global max_workers")
    mins = sum(node.get("min_workers", 0) for node in types.values())
    if mins > config.get("max_workers", 0):
        problems.append(
            f"min_workers add up to {mins}, above the global max_workers {config.get('max_workers')}"
        )
    if types[head].get("max_workers", 0) != 0:
        problems.append("the head node type must have max_workers 0")
    for command in launcher_commands(config):
        for name, value in re.findall(r"\b([A-Z][A-Z0-9_]*)=(\S+)", command):  # shell variables
            if SECRET_NAME.search(name) and not value.lstrip("\"'").startswith("$("):
                problems.append(f"{name} is set to a literal in a command, not fetched at start")
    # What `ray up` does before it contacts AWS: merge Ray's AWS defaults, then validate.
    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as exc:  # noqa: BLE001 - any refusal is the finding
        return [*problems, f"ray rejects the config: {exc}"]
    start = " ".join(prepared["head_start_ray_commands"])
    if "--dashboard-host=127.0.0.1" not in start or "0.0.0.0" in start:
        problems.append("the head's dashboard/job server is not bound to 127.0.0.1")
    return problems


def launcher_commands(config: dict[str, Any]) -> list[str]:
    keys = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"]
    keys += ["head_start_ray_commands", "worker_start_ray_commands"]
    return [c for key in keys for c in config.get(key) or []]


def setup_install(config: dict[str, Any]) -> tuple[str, set[str], str]:
    """(remote checkout path, extras, pinned Ray version) from the pip install in setup_commands."""
    install = next(c for c in config["setup_commands"] if "pip install" in c and " -e " in c)
    match = re.search(r"-e\s+[\"']?([^\"'\s\[]+)\[([^\]]+)\]", install)
    ray_pin = re.search(r"[\"']?ray\[[^\]]*\]==([\w.]+)", install)
    assert match and ray_pin, install
    return match.group(1), set(match.group(2).split(",")), ray_pin.group(1)


def test_launcher_config_passes_rays_schema_and_checks() -> None:
    config = load(LAUNCHER)
    # Ray's schema alone, on the file as written (what `ray up` validates after merging defaults)
    jsonschema.validate(config, ray_schema())
    assert launcher_problems(config) == []


def test_launcher_node_types() -> None:
    config = load(LAUNCHER)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # the control plane and drivers only
    assert not GPU_FAMILY.match(head["node_config"]["InstanceType"])
    workers = {name: node for name, node in types.items() if name != config["head_node_type"]}
    gpu = {n: w for n, w in workers.items() if GPU_FAMILY.match(w["node_config"]["InstanceType"])}
    assert gpu and set(gpu) != set(workers)  # GPU types for the student and a CPU type for the rest
    for node in gpu.values():
        assert node["resources"]["GPU"] >= 1
    assert sum(w.get("min_workers", 0) for w in workers.values()) <= config["max_workers"]
    # the student's Serve profile asks for this accelerator: a node type must offer it before any
    # such node exists, or the autoscaler never starts one for the student
    wanted = f"accelerator_type:{student_accelerator()}"
    assert any(wanted in node["resources"] for node in gpu.values())


def test_launcher_installs_this_checkout() -> None:
    config = load(LAUNCHER)
    remote, extras, _ = setup_install(config)
    assert config["file_mounts"].get(remote) == "."  # the checkout `ray up` runs from
    assert {"gpu", "optimize", "jobs"} <= extras
    assert ".venv" in config["rsync_exclude"] and ".git" in config["rsync_exclude"]
    # the store's S3 filesystem reads the region from AWS_REGION (EC2 does not set it)
    region = {m for c in config["setup_commands"] for m in re.findall(r"export AWS_REGION=([\w-]+)", c)}
    assert region == {config["provider"]["region"]}
    # the teacher's key reaches Ray's processes from Secrets Manager on every node, never a literal
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert 'ANTHROPIC_API_KEY="$(' in start and "secretsmanager" in start


def test_every_cluster_file_is_valid() -> None:
    files = sorted(CLUSTER.glob("*.yaml"))
    assert {LAUNCHER, RAYCLUSTER, RAYJOB, RAYSERVICE} <= set(files)
    for path in files:
        doc = load(path)
        problems = launcher_problems(doc) if "provider" in doc else kuberay_problems(doc)
        assert problems == [], f"{path.name}: {problems}"


def test_one_ray_version_everywhere() -> None:
    _, _, pinned = setup_install(load(LAUNCHER))
    versions = {
        path.name: cluster_spec(load(path)).get("rayVersion") for path in (RAYCLUSTER, RAYJOB, RAYSERVICE)
    }
    assert set(versions.values()) == {pinned}, (pinned, versions)


# --- KubeRay manifests -------------------------------------------------------------------------


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    key = KUBERAY_KINDS.get(doc.get("kind", ""))
    spec = doc.get("spec") or {}
    found = spec if key is None else spec.get(key)
    return found if isinstance(found, dict) else {}


def containers(template: Any) -> list[dict[str, Any]]:
    spec = template.get("spec") if isinstance(template, dict) else None
    found = spec.get("containers") if isinstance(spec, dict) else None
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def env_lists(node: Any) -> Iterator[list[Any]]:
    """Every container `env` list anywhere in a manifest (head, workers, submitter, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield value
            else:
                yield from env_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from env_lists(item)


def group_problems(where: str, group: dict[str, Any]) -> list[str]:
    problems = []
    params = group.get("rayStartParams")
    if not isinstance(params, dict):
        problems.append(f"{where}: rayStartParams is missing")
    else:
        for key, value in params.items():
            if not isinstance(key, str) or not isinstance(value, str):
                # the CRD field is map[string]string: the API server rejects anything else
                problems.append(f"{where}: rayStartParams {key!r} is {value!r}, not a string")
    found = containers(group.get("template"))
    if not found:
        return [*problems, f"{where}: template.spec.containers is empty"]
    ray = found[0]  # KubeRay runs Ray in the first container
    if not isinstance(ray.get("image"), str) or not ray["image"]:
        problems.append(f"{where}: container {ray.get('name')!r} has no image")
    resources = ray.get("resources")
    if not isinstance(resources, dict) or not (resources.get("limits") or resources.get("requests")):
        problems.append(f"{where}: container {ray.get('name')!r} has no resources")
        return problems
    limits = resources.get("limits") or {}
    wants_gpu = "nvidia.com/gpu" in (resources.get("requests") or {}) or (
        isinstance(params, dict)
        and ("num-gpus" in params or "accelerator_type:" in params.get("resources", ""))
    )
    if wants_gpu and not (is_int(limits.get("nvidia.com/gpu")) and limits["nvidia.com/gpu"] >= 1):
        problems.append(f"{where}: a GPU group needs an nvidia.com/gpu limit on its Ray container")
    return problems


def kuberay_problems(doc: dict[str, Any]) -> list[str]:
    """What KubeRay (or the API server) would reject in a RayCluster, RayJob or RayService."""
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion is {doc.get('apiVersion')!r}, not ray.io/v1")
    kind = doc.get("kind")
    if kind not in KUBERAY_KINDS:
        return [*problems, f"kind {kind!r} is not one of {sorted(KUBERAY_KINDS)}"]
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        problems.append(f"metadata.name {name!r} is not a DNS label")
    spec = doc.get("spec") or {}
    if kind == "RayJob":
        if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
            problems.append("RayJob: spec.entrypoint is missing")
        if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
            problems.append(f"RayJob: submissionMode {spec['submissionMode']!r} is unknown")
        if "runtimeEnvYAML" in spec:
            runtime_env = (
                yaml.safe_load(spec["runtimeEnvYAML"]) if isinstance(spec["runtimeEnvYAML"], str) else None
            )
            if not isinstance(runtime_env, dict):
                problems.append("RayJob: runtimeEnvYAML is not a YAML mapping in a string")
            elif any(SECRET_NAME.search(k) for k in runtime_env.get("env_vars") or {}):
                problems.append("RayJob: a secret in runtimeEnvYAML env_vars (it is shown on the dashboard)")
        for field in ("ttlSecondsAfterFinished", "activeDeadlineSeconds"):
            if field in spec and not (is_int(spec[field]) and spec[field] >= 0):
                problems.append(f"RayJob: {field} must be a non-negative integer")
    if kind == "RayService":
        text = spec.get("serveConfigV2")
        try:
            serve = yaml.safe_load(text) if isinstance(text, str) else None
        except yaml.YAMLError as exc:
            serve = None
            problems.append(f"RayService: serveConfigV2 does not parse: {exc}")
        if not isinstance(serve, dict) or not serve.get("applications"):
            problems.append("RayService: serveConfigV2 must be a YAML string with applications")
    cluster = cluster_spec(doc)
    if not cluster:
        return [*problems, f"{kind}: the Ray cluster spec is missing"]
    head = cluster.get("headGroupSpec")
    if not isinstance(head, dict):
        problems.append("headGroupSpec is missing")
    else:
        problems += group_problems("headGroupSpec", head)
    groups = cluster.get("workerGroupSpecs") or []
    names = [g.get("groupName") for g in groups if isinstance(g, dict)]
    if len(set(names)) != len(names):
        problems.append(f"workerGroupSpecs: groupName repeats in {names}")
    for i, group in enumerate(groups):
        name = group.get("groupName")
        where = f"workerGroupSpecs[{i}]"
        if not isinstance(name, str) or not DNS_LABEL.match(name):
            problems.append(f"{where}: groupName {name!r} is missing or not a DNS label")
        counts = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        if not all(is_int(c) for c in counts) or not 0 <= counts[0] <= counts[1] <= counts[2]:
            problems.append(
                f"{where}: needs integers 0 <= minReplicas <= replicas <= maxReplicas, got {counts}"
            )
        problems += group_problems(where, group)
    for env in env_lists(doc):
        for var in env:
            var_name = var.get("name", "") if isinstance(var, dict) else ""
            if SECRET_NAME.search(var_name):
                ref = (var.get("valueFrom") or {}).get("secretKeyRef") or {}
                if "value" in var or not (ref.get("name") and ref.get("key")):
                    problems.append(f"env {var_name}: must come from valueFrom.secretKeyRef, not a literal")
    return problems


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB, RAYSERVICE], ids=lambda p: p.name)
def test_kuberay_manifest_is_valid(path: Path) -> None:
    doc = load(path)
    assert kuberay_problems(doc) == []
    cluster = cluster_spec(doc)
    groups = cluster["workerGroupSpecs"]
    # a GPU group with the accelerator the student's Serve profile asks for, declared up front so
    # the autoscaler can start it from zero pods
    wanted = f"accelerator_type:{student_accelerator()}"
    gpu = [g for g in groups if "nvidia.com/gpu" in containers(g["template"])[0]["resources"]["limits"]]
    assert gpu and any(wanted in g["rayStartParams"].get("resources", "") for g in gpu)
    assert cluster["enableInTreeAutoscaling"] is True  # minReplicas/maxReplicas only mean something then
    # the head's Service stays in-cluster (reached through kubectl port-forward)
    assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=lambda p: p.name)
def test_pipeline_pods_get_their_secrets_from_kubernetes(path: Path) -> None:
    cluster = cluster_spec(load(path))
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        env = {v["name"]: v for v in containers(group["template"])[0]["env"]}
        for name in ("ANTHROPIC_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            # optional: IRSA replaces the AWS keys, and runs that do not call Claude need no key
            assert ref["name"] and ref["key"] == name and ref["optional"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_rayjob_runs_the_pipeline_and_cleans_up() -> None:
    spec = load(RAYJOB)["spec"]
    assert spec["entrypoint"].split()[:3] == [
        "python",
        "ray_jobs/pipeline.py",
        "configs/gpt-oss-20b-aws.yaml",
    ]
    assert (ROOT / "ray_jobs/pipeline.py").is_file() and (ROOT / "configs/gpt-oss-20b-aws.yaml").is_file()
    assert "--out s3://" in spec["entrypoint"]  # pods are deleted after the run: results go to S3
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert 0 < spec["ttlSecondsAfterFinished"] <= 3600
    # a deadline, but past the teacher's Message Batches window (up to 24 h) plus the rest of the run
    assert 86400 < spec["activeDeadlineSeconds"] <= 7 * 86400
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "working_dir" not in runtime_env  # the image carries the code
    # the same cluster shape as raycluster.yaml: the same groups and image
    ours, theirs = spec["rayClusterSpec"], cluster_spec(load(RAYCLUSTER))
    assert [g["groupName"] for g in ours["workerGroupSpecs"]] == [
        g["groupName"] for g in theirs["workerGroupSpecs"]
    ]
    image = containers(theirs["headGroupSpec"]["template"])[0]["image"]
    for group in [ours["headGroupSpec"], *ours["workerGroupSpecs"]]:
        assert containers(group["template"])[0]["image"] == image


# --- the checks fire: each broken copy is rejected for the expected reason ---------------------

Mutation = Callable[[dict[str, Any]], None]


def _worker(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in cluster_spec(doc)["workerGroupSpecs"] if g["groupName"] == name)


def _set_env(doc: dict[str, Any], name: str, entry: dict[str, Any]) -> None:
    env = containers(cluster_spec(doc)["headGroupSpec"]["template"])[0]["env"]
    env[:] = [v for v in env if v["name"] != name] + [entry]


KUBERAY_BREAKAGES: dict[str, tuple[Path, Mutation, str]] = {
    "no groupName": (RAYCLUSTER, lambda d: _worker(d, "cpu").pop("groupName"), "groupName"),
    "int rayStartParams": (
        RAYCLUSTER,
        lambda d: cluster_spec(d)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        "not a string",
    ),
    "replicas above max": (
        RAYCLUSTER,
        lambda d: _worker(d, "cpu").update(replicas=9),
        "minReplicas <= replicas",
    ),
    "no rayStartParams": (
        RAYCLUSTER,
        lambda d: _worker(d, "h100").pop("rayStartParams"),
        "rayStartParams is missing",
    ),
    "no image": (RAYJOB, lambda d: containers(_worker(d, "h100")["template"])[0].pop("image"), "no image"),
    "no resources": (
        RAYCLUSTER,
        lambda d: containers(cluster_spec(d)["headGroupSpec"]["template"])[0].pop("resources"),
        "no resources",
    ),
    "GPU group without GPU limit": (
        RAYCLUSTER,
        lambda d: containers(_worker(d, "h100")["template"])[0]["resources"]["limits"].pop("nvidia.com/gpu"),
        "nvidia.com/gpu limit",
    ),
    "literal API key": (
        RAYCLUSTER,
        lambda d: _set_env(
            d, "ANTHROPIC_API_KEY", {"name": "ANTHROPIC_API_KEY", "value": "sk-ant-not-a-key"}
        ),
        "secretKeyRef",
    ),
    "old apiVersion": (RAYCLUSTER, lambda d: d.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
    "no metadata.name": (RAYCLUSTER, lambda d: d["metadata"].pop("name"), "metadata.name"),
    "no headGroupSpec": (RAYCLUSTER, lambda d: d["spec"].pop("headGroupSpec"), "headGroupSpec"),
    "RayJob without entrypoint": (RAYJOB, lambda d: d["spec"].pop("entrypoint"), "entrypoint"),
    "RayJob without cluster": (RAYJOB, lambda d: d["spec"].pop("rayClusterSpec"), "cluster spec is missing"),
    "secret in runtime env": (
        RAYJOB,
        lambda d: d["spec"].update(runtimeEnvYAML="env_vars:\n  ANTHROPIC_API_KEY: sk-ant-x\n"),
        "runtimeEnvYAML",
    ),
    "serveConfigV2 that does not parse": (
        RAYSERVICE,
        lambda d: d["spec"].update(serveConfigV2="applications: [unclosed"),
        "serveConfigV2",
    ),
    "RayService without cluster": (
        RAYSERVICE,
        lambda d: d["spec"].pop("rayClusterConfig"),
        "cluster spec is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(KUBERAY_BREAKAGES))
def test_kuberay_checker_rejects(case: str) -> None:
    path, mutate, reason = KUBERAY_BREAKAGES[case]
    doc = copy.deepcopy(load(path))
    assert kuberay_problems(doc) == []
    mutate(doc)
    problems = kuberay_problems(doc)
    assert any(reason in p for p in problems), problems


def _node(doc: dict[str, Any], name: str) -> dict[str, Any]:
    node: dict[str, Any] = doc["available_node_types"][name]
    return node


LAUNCHER_BREAKAGES: dict[str, tuple[Mutation, str]] = {
    "unknown key (Ray's schema)": (lambda d: d.update(max_worker=3), "schema"),
    "no provider": (lambda d: d.pop("provider"), "schema"),
    "GCP provider": (lambda d: d["provider"].update(type="gcp"), "not aws"),
    "no region": (lambda d: d["provider"].pop("region"), "region"),
    "unknown head type": (lambda d: d.update(head_node_type="ray.head.default"), "head_node_type"),
    "no InstanceType": (lambda d: _node(d, "cpu")["node_config"].pop("InstanceType"), "InstanceType"),
    "Ray's default AMI": (lambda d: _node(d, "gpu_h100")["node_config"].pop("ImageId"), "ImageId"),
    "no instance profile": (
        lambda d: _node(d, "gpu_l40s")["node_config"].pop("IamInstanceProfile"),
        "IamInstanceProfile",
    ),
    "GPU type without GPU": (lambda d: _node(d, "gpu_h100")["resources"].pop("GPU"), "declare GPU"),
    "min above max": (lambda d: _node(d, "cpu").update(min_workers=9), "min_workers <= max_workers"),
    "mins above global max": (lambda d: d.update(max_workers=1), "add up to"),
    # without our own start commands, Ray's AWS defaults bind the dashboard to 0.0.0.0
    "default head start": (lambda d: d.pop("head_start_ray_commands"), "127.0.0.1"),
    "literal key": (
        lambda d: d["setup_commands"].append("echo export ANTHROPIC_API_KEY=sk-ant-x >> ~/.bashrc"),
        "literal",
    ),
}


@pytest.mark.parametrize("case", sorted(LAUNCHER_BREAKAGES))
def test_launcher_checker_rejects(case: str) -> None:
    mutate, reason = LAUNCHER_BREAKAGES[case]
    config = copy.deepcopy(load(LAUNCHER))
    mutate(config)
    problems = launcher_problems(config)
    assert any(reason in p for p in problems), problems
