"""``tooldistill evaluate``, ``score`` and ``consistency``: match rates on the command line.

``evaluate`` asks a student endpoint about every trace (its flag defaults are ``EvaluateConfig``'s),
``score`` scores predictions made elsewhere, ``consistency`` measures the teacher's ceiling.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from tooldistill.cli.common import console, model_default, print_consistency, say, user_errors, writing
from tooldistill.evaluate import EvaluateConfig
from tooldistill.store import Dataset


def print_rates(title: str, summary: dict[str, Any]) -> None:
    """A table of the match rate per mode (with 95% intervals), and what was not scored."""
    table = Table(title=title, title_justify="left")
    for column in ("mode", "matched", "n", "match rate", "95% CI", "mean score"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, entry in summary["modes"].items():
        low, high = entry["ci95"]
        rate = "-" if entry["rate"] is None else f"{entry['rate']:.1%}"
        mean = "-" if entry.get("mean_score") is None else f"{entry['mean_score']:.3f}"
        table.add_row(mode, str(entry["matched"]), str(entry["n"]), rate, f"{low:.1%}-{high:.1%}", mean)
    console.print(table)
    extra = []
    if summary.get("errors"):
        extra.append(f"{summary['errors']} not scored (errors)")
    if summary.get("skipped"):
        extra.append(f"{summary['skipped']} not sent (longer than the window after the context policy)")
    if summary.get("unparseable"):
        extra.append(f"{summary['unparseable']} unparseable outputs")
    if extra:
        console.print("; ".join(extra))


def _modes_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--mode",
        "modes",
        multiple=True,
        default=("chain",),
        show_default=True,
        help="Match mode: chain, set, names or bfcl (repeat for several; the first is the headline).",
    )(fn)


@click.command("score")
@click.argument("predictions")
@click.option("--dataset", required=True, help="Traces dataset the predictions refer to.")
@_modes_option
@click.option("--out", required=True, help="Folder for scores.jsonl and summary.json (local or s3://).")
def score_command(predictions: str, dataset: str, modes: tuple[str, ...], out: str) -> None:
    """Score a JSONL of predictions ({trace_id|source_id, calls|output, id}) against a dataset."""
    from tooldistill.scoring import score

    with writing(out):
        summary = score(predictions, dataset, modes, out)
        print_rates(f"score → {out}", summary)


@click.command("consistency")
@click.option("--dataset", required=True, help="Traces dataset with teacher samples.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def consistency_command(dataset: str, as_json: bool) -> None:
    """The teacher's consistency ceiling: how often repeated samples agree."""
    from tooldistill.match.consistency import consistency_report

    with user_errors():
        report = consistency_report(Dataset.open(dataset).to_traces())
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            print_consistency(report)


def _default(name: str) -> Any:
    return model_default(EvaluateConfig, name)


@click.command("evaluate")
@click.option("--dataset", required=True, help="Traces dataset to evaluate on.")
@click.option("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
@click.option("--model", required=True, help="Model name to send.")
@click.option("--prompt", default=None, help="Prompt artifact (JSON with 'system', or text).")
@click.option("--out", default=None, help="Evaluation dataset (default: <dataset>-eval).")
@_modes_option
@click.option("--concurrency", default=_default("concurrency"), show_default=True, help="Requests in flight.")
@click.option(
    "--timeout", "timeout_s", default=_default("timeout_s"), show_default=True, help="Seconds per request."
)
@click.option(
    "--retries", default=_default("retries"), show_default=True, help="Retries on 429/5xx/connection errors."
)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N traces.")
@click.option(
    "--max-tokens",
    default=_default("max_tokens"),
    show_default=True,
    help="Longest answer asked of the student.",
)
@click.option(
    "--api-key-env", default=_default("api_key_env"), show_default=True, help="Env var holding the key."
)
@click.option("--force", is_flag=True, help="Re-run even when the evaluation is up to date.")
@click.option(
    "--window",
    type=int,
    default=None,
    help="The student's context length: longer requests are cut to fit (docs/context.md).",
)
@click.option(
    "--tokenizer",
    default=None,
    help="Local folder of the student's tokenizer for --window (default: count bytes, an upper bound).",
)
def evaluate_command(
    dataset: str,
    endpoint: str,
    model: str,
    prompt: str | None,
    out: str | None,
    modes: tuple[str, ...],
    concurrency: int,
    timeout_s: float,
    retries: int,
    limit: int | None,
    max_tokens: int,
    api_key_env: str,
    force: bool,
    window: int | None,
    tokenizer: str | None,
) -> None:
    """Ask a student endpoint for each trace (native tool calling) and measure the match rate."""
    from tooldistill.context import ContextPolicy
    from tooldistill.evaluate import evaluate

    if tokenizer and window is None:
        raise click.UsageError("--tokenizer needs --window (the student's context length)")

    out = out or dataset.rstrip("/") + "-eval"
    with writing(out):
        all_modes = tuple(dict.fromkeys([*modes, "chain", "set", "names", "bfcl"]))
        config = EvaluateConfig(
            dataset=dataset,
            endpoint=endpoint,
            model=model,
            out=out,
            prompt=prompt,
            modes=all_modes,
            concurrency=concurrency,
            timeout_s=timeout_s,
            retries=retries,
            limit=limit,
            max_tokens=max_tokens,
            api_key_env=api_key_env,
            force=force,
            context=ContextPolicy(window=window, tokenizer=tokenizer) if window else None,
        )
        result = evaluate(config)
        summary = result.summary
        title = f"evaluate {model} → {result.uri}" + (" (up to date, skipped)" if result.skipped else "")
        print_rates(title, summary)
        if summary.get("vs_consensus"):
            print_rates("against the teacher's consensus", {"modes": summary["vs_consensus"]})
        print_consistency(summary.get("consistency") or {})
        if summary.get("first_error"):
            say(f"first error: {summary['first_error']}")
        context = summary.get("context") or {}
        if context.get("cut") or context.get("skipped"):
            say(
                f"context policy ({context['window']:,}-token window): {context['cut']} cut "
                f"(median {context['median_share_cut'] or 0:.0%} of their tokens), "
                f"{context['skipped']} skipped as too long"
            )


COMMANDS: tuple[click.Command, ...] = (score_command, consistency_command, evaluate_command)
