"""``tooldistill serve``: deploy a serving profile on Ray Serve, wait until it answers, stop cleanly.

A profile is a Ray Serve config file (``applications`` with ``import_path:
tooldistill.serve.app:build_app``), so the same file works with ``serve run`` and ``serve deploy``.
This runner adds what a user of the command line expects: command-line overrides (port, host,
replicas, model path), an API key taken from an environment variable and passed on only as its
hash, a wait until ``/v1/models`` answers, the engine's own error text when a deployment fails, and
``serve.shutdown()`` on exit.
"""

from __future__ import annotations

import copy
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tooldistill.serve.app import ServeConfigError, build_app, resolve_cpu_engine
from tooldistill.serve.keys import key_sha256

BUILDER = "tooldistill.serve.app:build_app"


class ServeError(RuntimeError):
    """The student could not be started (the deployment failed or never answered)."""


@dataclass
class Served:
    url: str
    app_name: str
    models: list[str]
    api_key: str | None = field(default=None, repr=False)
    #: The CPU engine's dtype (with its reason), cores and threads, for CPU profiles.
    cpu_engine: dict[str, Any] | None = None
    #: The cloud folder whose LoRA adapters these replicas serve (``with_lora``), if any.
    lora_store: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        from ray import serve

        serve.delete(self.app_name)


def load_profile(path: str | Path) -> dict[str, Any]:
    try:
        profile = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ServeConfigError(f"cannot read serving profile {path}: {error}") from None
    applications = profile.get("applications") if isinstance(profile, dict) else None
    if not isinstance(applications, list) or len(applications) != 1:
        raise ServeConfigError(f"{path}: a serving profile has exactly one entry under 'applications'")
    if applications[0].get("import_path") != BUILDER:
        raise ServeConfigError(f"{path}: the application's import_path must be {BUILDER}")
    return profile


def apply_overrides(
    profile: dict[str, Any],
    *,
    port: int | None = None,
    host: str | None = None,
    replicas: int | None = None,
    model_source: str | None = None,
    api_key: str | None = None,
    model_id: str | None = None,
    lora_store: str | None = None,
    max_lora_rank: int | None = None,
) -> dict[str, Any]:
    """A copy of the profile with the command line's choices applied (``model_id``: the name the
    model is served under, e.g. a fine-tuned student's; ``lora_store``: serve every LoRA adapter
    found under this cloud folder as ``<model_id>:<adapter folder>``, see ``with_lora``)."""
    profile = copy.deepcopy(profile)
    http = profile.setdefault("http_options", {})
    http.setdefault("host", "127.0.0.1")
    http.setdefault("port", 8000)
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    args = profile["applications"][0].setdefault("args", {})
    for llm in args.get("llm_configs") or []:
        if replicas is not None:
            deployment = llm.setdefault("deployment_config", {})
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = replicas
        if model_source is not None:
            llm.setdefault("model_loading_config", {})["model_source"] = model_source
        if model_id is not None:
            llm.setdefault("model_loading_config", {})["model_id"] = model_id
        if lora_store is not None:
            with_lora(llm, lora_store, max_lora_rank)
    if api_key:
        args["api_key_sha256"] = key_sha256(api_key)
    return profile


#: Where Ray Serve LLM can load LoRA adapters from (it downloads them into each replica's cache).
LORA_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")


#: The LoRA ranks vLLM's engine accepts as ``max_lora_rank`` (its ``LoRAConfig`` refuses others).
ENGINE_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that serves adapters of rank ``rank`` (a rank-4
    adapter needs 8: vLLM refuses 4)."""
    for allowed in ENGINE_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ServeConfigError(
        f"LoRA rank {rank} is above the largest vLLM serves ({ENGINE_LORA_RANKS[-1]}): train a smaller "
        "adapter, or serve the merged model folder instead (serve_as: merged)"
    )


def with_lora(llm: dict[str, Any], store: str, max_rank: int | None = None) -> dict[str, Any]:
    """Turn on Ray Serve LLM's LoRA multiplexing for one ``llm_configs`` entry, in place.

    Every adapter folder ``<store>/<name>/`` (a PEFT ``save_pretrained`` folder) is then served as
    the model ``<model_id>:<name>`` by the same replicas as the base, loaded on its first request;
    the base stays reachable under its own name.  The engine is told to accept LoRA requests of up
    to ``max_rank`` (vLLM's default is 16)."""
    if not store.startswith(LORA_SCHEMES):
        raise ServeConfigError(
            f"LoRA adapters are loaded by Ray Serve LLM from cloud storage only ({', '.join(LORA_SCHEMES)}), "
            f"not {store!r}: publish the adapter to a bucket, or serve the merged model folder instead"
        )
    lora = dict(llm.get("lora_config") or {})
    lora["dynamic_lora_loading_path"] = store.rstrip("/")
    lora.setdefault("max_num_adapters_per_replica", 4)
    llm["lora_config"] = lora
    engine = llm.setdefault("engine_kwargs", {})
    engine["enable_lora"] = True
    if max_rank is not None:
        engine["max_lora_rank"] = engine_lora_rank(max(int(engine.get("max_lora_rank") or 0), max_rank))
    engine.setdefault("max_loras", min(int(lora["max_num_adapters_per_replica"]), 4))
    return llm


def lora_store_of(profile: dict[str, Any]) -> str | None:
    """The profile's LoRA folder (the first ``llm_configs`` entry's), or None without LoRA."""
    llms = (profile["applications"][0].get("args") or {}).get("llm_configs") or [{}]
    return (llms[0].get("lora_config") or {}).get("dynamic_lora_loading_path")


def cpu_engine(profile: dict[str, Any]) -> dict[str, Any] | None:
    """What the profile's ``cpu_engine`` resolves to on this machine (None for GPU profiles)."""
    args = resolve_cpu_engine(dict(profile["applications"][0].get("args") or {}))
    resolved: dict[str, Any] | None = args.get("cpu_engine_resolved")
    return resolved


def _get(url: str, api_key: str | None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for_models(url: str, models: list[str], api_key: str | None, timeout_s: float) -> None:
    """Block until ``GET /v1/models`` lists every model, or raise ``ServeError``."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            status, body = _get(f"{url}/v1/models", api_key)
            if status == 200:
                listed = {m.get("id") for m in json.loads(body).get("data", [])}
                if set(models) <= listed:
                    return
                last = f"/v1/models lists {sorted(x for x in listed if x)}"
            else:
                last = f"HTTP {status}: {body[:200]!r}"
        except (OSError, ValueError) as error:
            last = str(error)
        time.sleep(1.0)
    raise ServeError(f"{url}/v1/models did not list {models} within {timeout_s:.0f} s ({last})")


def start(
    profile_path: str | Path,
    *,
    port: int | None = None,
    host: str | None = None,
    replicas: int | None = None,
    model_source: str | None = None,
    api_key_env: str | None = "TOOLDISTILL_SERVE_API_KEY",
    wait: bool = True,
    wait_timeout_s: float = 900.0,
    model_id: str | None = None,
    lora_store: str | None = None,
    max_lora_rank: int | None = None,
    gateway: dict[str, Any] | None = None,
) -> Served:
    """Deploy the profile on the Ray cluster this process is connected to (starting a local one
    when none is); returns once the application is running (and, with ``wait``, answering).

    ``gateway``: the gateway's settings (``serve.gateway.GatewaySettings`` as JSON: the learned
    prompt and context policy, the model routing) over the profile's ``args.gateway``."""

    from ray import serve

    from tooldistill.raycluster import ensure_ray

    api_key = os.environ.get(api_key_env) if api_key_env else None
    profile = apply_overrides(
        load_profile(profile_path),
        port=port,
        host=host,
        replicas=replicas,
        model_source=model_source,
        api_key=api_key,
        model_id=model_id,
        lora_store=lora_store,
        max_lora_rank=max_lora_rank,
    )
    application = profile["applications"][0]
    if gateway is not None:  # what a run learned (``serve.learned``), over the profile's own
        application.setdefault("args", {})["gateway"] = {
            **(application["args"].get("gateway") or {}),
            **gateway,
        }
    # the CPU engine's dtype and threads are chosen once, here, and travel resolved
    args = application["args"] = resolve_cpu_engine(dict(application.get("args") or {}))
    models = [c["model_loading_config"]["model_id"] for c in args.get("llm_configs") or []]
    app = build_app(args)  # checks model paths before anything starts
    ensure_ray()
    http = profile["http_options"]
    serve.start(http_options={"host": http["host"], "port": http["port"]})
    name = application.get("name", "student")
    try:
        serve.run(
            app,
            name=name,
            route_prefix=application.get("route_prefix", "/"),
            logging_config=application.get("logging_config"),  # as `serve run`/`deploy` read it
        )
    except RuntimeError as error:
        raise ServeError(f"the student did not start: {error}") from None
    url = f"http://{'127.0.0.1' if http['host'] in ('0.0.0.0', '::') else http['host']}:{http['port']}"
    served = Served(
        url=url,
        app_name=name,
        models=models,
        api_key=api_key,
        cpu_engine=args.get("cpu_engine_resolved"),
        lora_store=lora_store_of(profile),
    )
    if wait:
        wait_for_models(url, models, api_key, wait_timeout_s)
    return served
