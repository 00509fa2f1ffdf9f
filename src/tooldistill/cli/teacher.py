"""``tooldistill teacher capture|serve-local`` and ``tooldistill judge``: Claude on the command line.

The API key is read from an environment variable (``ANTHROPIC_API_KEY`` by default) and
``ANTHROPIC_BASE_URL`` redirects the SDK, for example to the local server that
``teacher serve-local`` starts.  The request flags default to ``ClaudeSettings``' fields (capture's
own to ``CaptureConfig``'s), read only when a command needs them: ``tooldistill.teacher.capture``
loads the Anthropic SDK, which every other command can do without.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.table import Table

from tooldistill.cli.common import console, hold_output, lazy_model_option, print_consistency, user_errors

_CLAUDE = "tooldistill.teacher.options:ClaudeSettings"
_CAPTURE = "tooldistill.teacher.capture:CaptureConfig"


@contextmanager
def _user_errors() -> Iterator[None]:
    from tooldistill.runlock import RunLockError
    from tooldistill.teacher.capture import TeacherError
    from tooldistill.teacher.judge import JudgeError

    with user_errors(TeacherError, JudgeError, RunLockError):
        yield


@contextmanager
def _writing(out: str) -> Iterator[None]:
    """The output folder's lock while the command writes there: two captures on one folder would
    both pay for every request the cache does not hold yet."""
    with hold_output(out):
        yield


def _prices(path: str | None) -> Any:
    if path is None:
        return None
    from tooldistill import store
    from tooldistill.teacher.pricing import load_prices

    try:
        raw = json.loads(store.read_file(path))
    except ValueError as error:
        raise ValueError(f"price table {path} is not JSON: {error}") from None
    return load_prices(raw)


def _claude_option(*decls: str, field: str, type: Any, help: str) -> Any:
    """A flag whose default is ``ClaudeSettings``' ``field``, read only when a command needs it."""
    return lazy_model_option(*decls, model=_CLAUDE, field=field, type=type, show_default=True, help=help)


def _claude_options(fn: Any) -> Any:
    options = [
        click.option("--model", required=True, help="Claude model id, e.g. claude-sonnet-4-6."),
        click.option("--batch", is_flag=True, help="Use the Message Batches API (half price, slower)."),
        _claude_option(
            "--concurrency", field="concurrency", type=int, help="Messages API requests in flight."
        ),
        click.option("--rpm", type=float, default=None, help="Client-side limit: requests per minute."),
        click.option("--tpm", type=float, default=None, help="Client-side limit: input tokens per minute."),
        _claude_option(
            "--retries", field="retries", type=int, help="Retries on 429, 529, 5xx, dropped connections."
        ),
        _claude_option("--timeout", "timeout_s", field="timeout_s", type=float, help="Seconds per request."),
        _claude_option("--poll", "poll_s", field="poll_s", type=float, help="First batch poll interval (s)."),
        _claude_option(
            "--resubmits",
            field="resubmits",
            type=int,
            help="Times an expired/errored batch request is resent.",
        ),
        click.option(
            "--prices", default=None, help="JSON price table {model prefix: {input, output, ...}} (USD/MTok)."
        ),
        click.option("--cache", default=None, help="Request cache folder (default: <out>/requests)."),
        click.option("--limit", type=int, default=None, help="Only the first N rows."),
        _claude_option("--api-key-env", field="api_key_env", type=str, help="Env var with the key."),
        click.option("--force", is_flag=True, help="Rebuild even when the output is up to date."),
        click.option(
            "--no-redact",
            is_flag=True,
            help="Store what Claude wrote as it came, secrets included (not recommended).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _settings(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": values["model"],
        "batch": values["batch"],
        "concurrency": values["concurrency"],
        "requests_per_minute": values["rpm"],
        "tokens_per_minute": values["tpm"],
        "retries": values["retries"],
        "timeout_s": values["timeout_s"],
        "poll_s": values["poll_s"],
        "resubmits": values["resubmits"],
        "prices": _prices(values["prices"]),
        "cache": values["cache"],
        "limit": values["limit"],
        "api_key_env": values["api_key_env"],
        "force": values["force"],
        "redact": not values["no_redact"],
    }


def _print_usage(summary: dict[str, Any]) -> None:
    tokens = summary.get("tokens") or {}
    cost = summary.get("cost_usd")
    console.print(
        "tokens: {input_tokens} input, {output_tokens} output, {cache_read_input_tokens} cache read, "
        "{cache_creation_input_tokens} cache write".format(
            **{
                k: tokens.get(k, 0)
                for k in (
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                )
            }
        ),
        highlight=False,
    )
    console.print(
        "cost: " + ("unknown (model not in the price table)" if cost is None else f"${cost:.4f}"),
        highlight=False,
    )
    send = summary.get("send") or {}
    if send:
        console.print(
            f"HTTP requests {send.get('http_requests', 0)}, retries {send.get('retries', 0)} "
            f"{send.get('retried_on') or ''}",
            highlight=False,
        )


def _print_secrets(summary: dict[str, Any]) -> None:
    redacted = summary.get("secrets_redacted") or {}
    if redacted:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(redacted.items()))
        console.print(
            f"secrets redacted from Claude's answers: {sum(redacted.values())} ({kinds})", highlight=False
        )


@click.group("teacher")
def teacher() -> None:
    """Ask Claude, the teacher: capture samples, or serve a local stand-in for tests."""


@teacher.command("capture")
@click.option("--dataset", required=True, help="Traces dataset to ask about.")
@click.option("--out", required=True, help="Output traces dataset with teacher samples.")
@lazy_model_option(
    "--samples",
    model=_CAPTURE,
    field="samples",
    type=int,
    show_default=True,
    help="Samples per trace (2+ measures consistency).",
)
@lazy_model_option("--max-tokens", model=_CAPTURE, field="max_tokens", type=int, show_default=True)
@click.option("--temperature", type=float, default=None, help="Sampling temperature (default: the model's).")
@click.option("--system", "system_prompt", default=None, help="System prompt put before the trace's own.")
@click.option("--no-prompt-cache", is_flag=True, help="Do not mark tools and system with cache_control.")
@_claude_options
def capture_command(**values: Any) -> None:
    """Send every trace to Claude N times; record its tool calls, usage, cost and latency."""
    from tooldistill.teacher.capture import CaptureConfig, capture

    with _user_errors():
        config = CaptureConfig(
            dataset=values["dataset"],
            out=values["out"],
            samples=values["samples"],
            max_tokens=values["max_tokens"],
            temperature=values["temperature"],
            system_prompt=values["system_prompt"],
            prompt_caching=not values["no_prompt_cache"],
            **_settings(values),
        )
        with _writing(config.out):
            result = capture(config)
        summary = result.summary
        requests = summary.get("requests", {})
        table = Table(
            title=f"teacher {config.model} → {result.dataset.uri}"
            + (" (up to date, skipped)" if result.skipped else ""),
            title_justify="left",
        )
        for column in ("traces", "requests", "from cache", "answered now", "failed", "cache read share"):
            table.add_column(column, justify="right")
        share = (summary.get("prompt_cache") or {}).get("read_share")
        table.add_row(
            str(summary.get("traces")),
            str(requests.get("total")),
            str(requests.get("from_cache")),
            str(requests.get("answered_now")),
            str(requests.get("failed")),
            "-" if share is None else f"{share:.1%}",
        )
        console.print(table)
        _print_usage(summary)
        _print_secrets(summary)
        print_consistency(summary.get("consistency") or {})
        for failure in result.failures[:5]:
            console.print(
                f"failed: trace {failure['trace_id']} sample {failure['sample']}: {failure['reason']}",
                highlight=False,
            )
        if result.failures:
            console.print(
                f"{len(result.failures)} requests failed; the dataset is marked incomplete and a rerun asks for them again",
                highlight=False,
            )
            sys.exit(1)


@teacher.command("serve-local")
@click.option("--dataset", required=True, help="Traces dataset whose reference calls are the answers.")
@click.option("--port", default=8765, show_default=True)
@click.option("--disagree-rate", default=0.0, show_default=True, help="Share of samples that disagree.")
@click.option("--fault-rate", default=0.0, show_default=True, help="Share of requests given a fault.")
def serve_local_command(dataset: str, port: int, disagree_rate: float, fault_rate: float) -> None:
    """A local Anthropic-compatible server on 127.0.0.1 (set ANTHROPIC_BASE_URL to its address)."""
    from tooldistill.testing.anthropic_server import main as serve

    serve(
        [
            "--dataset",
            dataset,
            "--port",
            str(port),
            "--disagree-rate",
            str(disagree_rate),
            "--fault-rate",
            str(fault_rate),
        ]
    )


@click.command("judge")
@click.option("--evaluation", required=True, help="Evaluation dataset made by `tooldistill evaluate`.")
@click.option("--out", default=None, help="Judgements dataset (default: <evaluation>-judge).")
@click.option(
    "--traces", default=None, help="Traces dataset with the teacher's calls (default: the evaluation's)."
)
@click.option(
    "--exact-mode", "mode", default=None, help="Exact match mode to compare with (default: the first)."
)
@_claude_options
def judge_command(
    evaluation: str, out: str | None, traces: str | None, mode: str | None, **values: Any
) -> None:
    """Claude grades the student's calls against the teacher's; reports agreement with exact matching."""
    from tooldistill.teacher.judge import JudgeConfig, judge

    with _user_errors():
        config = JudgeConfig(
            evaluation=evaluation,
            out=out or evaluation.rstrip("/") + "-judge",
            traces=traces,
            mode=mode,
            **_settings(values),
        )
        with _writing(config.out):
            result = judge(config)
        summary = result.summary
        agreement = summary.get("agreement") or {}
        console.print(
            f"judge {config.model} → {result.dataset.uri}"
            + (" (up to date, skipped)" if result.skipped else ""),
            highlight=False,
        )
        if agreement.get("rate") is not None:
            low, high = agreement["ci95"]
            console.print(
                f"judged {summary['judged']} of {summary['rows']}: judge says equivalent "
                f"{summary['judge_equivalent']['rate']:.1%}, exact {summary['exact_mode']} match "
                f"{summary['exact_match']['rate']:.1%}; they agree on {agreement['rate']:.1%} "
                f"[{low:.1%}-{high:.1%}], kappa {summary['cohen_kappa']}",
                highlight=False,
            )
        console.print(f"confusion: {summary['confusion']}", highlight=False)
        _print_usage(summary)
        _print_secrets(summary)


COMMANDS: tuple[click.Command, ...] = (teacher, judge_command)
