"""The student a run evaluates and teaches: started from a Ray Serve profile (or an endpoint that
is already up), and served again after a finetune phase — a merged model folder in place of the
base, or a LoRA adapter beside it — with the same profile, application and port."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooldistill.config import StudentSection
from tooldistill.layout import RunLayout
from tooldistill.stage import PipelineError
from tooldistill.staging import is_remote

Say = Callable[[str], None]


@dataclass
class Student:
    endpoint: str
    model: str
    api_key_env: str | None
    stop: Callable[[], None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)
    #: The model folder the profile serves (a finetune phase trains on it), when known.
    base_folder: Path | None = None
    #: The served window in tokens (the profile's ``max_model_len``), when the profile says.
    window: int | None = None
    #: The cloud folder the replicas load LoRA adapters from (the profile's ``lora_config``), if any.
    lora_store: str | None = None

    def record(self, stopped: float | None = None) -> dict[str, Any]:
        """What ``student.json`` says: endpoint, model, how it was served and, once stopped, for
        how long and at how many GPU hours (replicas × GPUs per replica × hours)."""
        info = dict(self.info)
        value = {"endpoint": self.endpoint, "model": self.model, **info}
        if stopped is not None and "started" in info:
            seconds = stopped - float(info["started"])
            replicas = float(info.get("replicas") or 1)
            gpus = float(info.get("gpus_per_replica") or 0)
            value.update(
                stopped=stopped,
                serve_seconds=round(seconds, 1),
                gpu_hours=round(seconds / 3600 * replicas * gpus, 4),
            )
        return value

    def context(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """The context policy for this student: the config's, with the window and the tokenizer
        filled from the served profile where the config leaves them out."""
        policy = dict(given or {})
        if policy.get("window") is None and self.window is not None:
            policy["window"] = self.window
        if policy.get("tokenizer") is None and self.base_folder is not None:
            policy["tokenizer"] = str(self.base_folder)
        return policy


class ServeHost:
    """Serves a fine-tuned student (``finetune.phase.StudentHost``) with the same profile,
    application and port: a merged folder in place of the base, or an adapter beside it."""

    def __init__(
        self, section: StudentSection, student: Student, say: Say, run_dir: str | None = None
    ) -> None:
        self.section, self.student, self.say, self.run_dir = section, student, say, run_dir

    def base_model(self) -> Path:
        if self.student.base_folder is None:
            raise PipelineError("a finetune phase needs the student's model folder (a local model_source)")
        return self.student.base_folder

    def dtype(self) -> str:
        engine = self.student.info.get("cpu_engine") or {}
        return str(engine.get("dtype") or "bfloat16")

    def serve(self, folder: Path, name: str) -> tuple[str, str]:

        if self.student.model == name:
            return self.student.endpoint, name
        self.say(f"serving the fine-tuned student {name} from {folder} (replaces {self.student.model})")
        self._restart({"model": name, "folder": str(folder)}, model_source=str(folder), model_id=name)
        self.student.model = name
        return self.student.endpoint, name

    def _restart(self, record: dict[str, Any], **overrides: Any) -> None:
        """Redeploy the section's profile with ``overrides`` (``runner.start``'s), on the same port."""
        from tooldistill.serve import runner

        assert self.section.serve is not None
        started = time.time()
        served = runner.start(
            self.section.serve,
            port=self.section.port,
            replicas=self.section.replicas,
            api_key_env=self.section.api_key_env,
            wait_timeout_s=self.section.wait_timeout_s,
            **overrides,
        )
        self.student.endpoint, self.student.lora_store = served.base_url, served.lora_store
        self.student.info.setdefault("served", []).append(
            {**record, "ready_after_s": round(time.time() - started, 1)}
        )

    def adapter_store(self, configured: str | None) -> str:
        from tooldistill.serve.runner import LORA_SCHEMES

        store_uri = configured or self.student.lora_store
        if store_uri is None and self.run_dir is not None and is_remote(self.run_dir):
            store_uri = RunLayout(self.run_dir).adapters
        if store_uri is None:
            raise PipelineError(
                "serve_as: adapter needs a cloud folder the replicas load adapters from: set the "
                "phase's finetune.adapter_store (s3://bucket/prefix), a run_dir on S3, or a "
                "lora_config in the serving profile; or use serve_as: merged"
            )
        if not store_uri.startswith(LORA_SCHEMES):
            raise PipelineError(
                f"finetune.adapter_store {store_uri!r}: Ray Serve LLM loads adapters from "
                f"{', '.join(LORA_SCHEMES)} only"
            )
        return store_uri.rstrip("/")

    def serve_adapter(self, store_uri: str, name: str, max_rank: int) -> tuple[str, str]:
        """Serve ``<store_uri>/<name>`` as ``<base>:<name>``: by the running replicas when they
        already load adapters from that folder, else after a restart of the profile with LoRA on
        (the base model, its name, and ``lora_config`` pointing at the folder)."""
        from tooldistill.serve import runner

        base = self.student.info.get("base_model") or self.student.model
        model = f"{base}:{name}"
        if self.student.lora_store != store_uri.rstrip("/"):
            self.say(f"restarting the student with LoRA adapters from {store_uri}")
            self._restart(
                {"model": base, "lora_store": store_uri},
                model_id=base,
                lora_store=store_uri,
                max_lora_rank=max_rank,
            )
        self.say(f"serving the fine-tuned student as {model} (adapter {store_uri}/{name})")
        runner.wait_for_models(
            self.student.endpoint.removesuffix("/v1"),
            [model],
            os.environ.get(self.section.api_key_env) if self.section.api_key_env else None,
            self.section.wait_timeout_s,
        )
        self.student.model = model
        self.student.info.setdefault("served", []).append({"model": model, "adapter": f"{store_uri}/{name}"})
        return self.student.endpoint, model


def _gpus_per_replica(profile: dict[str, Any]) -> float:
    args = (profile.get("applications") or [{}])[0].get("args") or {}
    total = 0.0
    for llm in args.get("llm_configs") or []:
        bundles = (llm.get("placement_group_config") or {}).get("bundles") or []
        total += sum(float(b.get("GPU", 0)) for b in bundles)
    return total


def start_student(section: StudentSection, say: Say) -> Student:
    """Start the profile on the run's Ray cluster (or check the given endpoint)."""
    from tooldistill.student import EndpointError, StudentClient

    if section.endpoint is not None:
        assert section.model is not None
        key = os.environ.get(section.api_key_env) if section.api_key_env else None
        try:
            # a quick look (one retry, 10 s): the evaluation's own client is the patient one
            StudentClient(section.endpoint, timeout_s=10.0, retries=1, api_key=key).check()
        except EndpointError as error:
            raise PipelineError(f"student endpoint {section.endpoint} is not answering: {error}") from None
        return Student(section.endpoint, section.model, section.api_key_env, info={"kind": "endpoint"})
    from tooldistill.serve import runner

    assert section.serve is not None
    profile = runner.load_profile(section.serve)
    engine = runner.cpu_engine(profile)
    if engine is not None:
        threads = max(engine["threads"].values(), default=1)
        say(f"student on CPU: {engine['dtype']} ({engine['reason']}); {threads} engine threads per replica")
    folder: Path | None = None
    if section.prepare:
        from tooldistill.serve.models import prepare

        # the weights are written in the dtype the engine will run
        folder, built = prepare(section.prepare, dtype=engine["dtype"] if engine else None)
        say(f"student model {section.prepare}: {'prepared' if built else 'ready'} in {folder}")
    say(f"starting the student from {section.serve} (first start loads the model; minutes on CPU)")
    started = time.time()
    served = runner.start(
        section.serve,
        port=section.port,
        replicas=section.replicas,
        api_key_env=section.api_key_env,
        wait_timeout_s=section.wait_timeout_s,
    )
    model = section.model or served.models[0]
    replicas = section.replicas or _replicas(profile)
    base_folder = folder if section.prepare else _local_source(profile)
    info = {
        "kind": "serve",
        "profile": section.serve,
        "profile_sha256": hashlib.sha256(Path(section.serve).read_bytes()).hexdigest(),
        "replicas": replicas,
        "gpus_per_replica": _gpus_per_replica(profile),
        **({"cpu_engine": served.cpu_engine} if served.cpu_engine else {}),
        "ready_after_s": round(time.time() - started, 1),
        "started": started,
    }
    info["base_model"] = model
    return Student(
        served.base_url,
        model,
        section.api_key_env,
        served.stop,
        info,
        base_folder,
        _window(profile),
        served.lora_store,
    )


def _window(profile: dict[str, Any]) -> int | None:
    """The profile's ``max_model_len`` (the window the engine serves), when it sets one."""
    args = (profile.get("applications") or [{}])[0].get("args") or {}
    engine = ((args.get("llm_configs") or [{}])[0].get("engine_kwargs")) or {}
    value = engine.get("max_model_len")
    return int(value) if isinstance(value, int) else None


def _local_source(profile: dict[str, Any]) -> Path | None:
    from tooldistill.serve.app import ServeConfigError, expand_path

    args = (profile.get("applications") or [{}])[0].get("args") or {}
    source = ((args.get("llm_configs") or [{}])[0].get("model_loading_config") or {}).get("model_source")
    try:
        path = Path(expand_path(str(source))) if source else None
    except ServeConfigError:
        return None
    return path if path is not None and path.is_dir() else None


def _replicas(profile: dict[str, Any]) -> int:
    args = (profile.get("applications") or [{}])[0].get("args") or {}
    llms = args.get("llm_configs") or [{}]
    scaling = llms[0].get("deployment_config", {}).get("autoscaling_config") or {}
    return int(scaling.get("min_replicas") or llms[0].get("deployment_config", {}).get("num_replicas") or 1)
