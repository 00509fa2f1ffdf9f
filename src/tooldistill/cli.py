"""The ``tooldistill`` command line.  Each subcommand is a thin shell over a library function.

Errors the user can act on (missing input, bad config, strict-mode failures, unreachable storage)
print one clear line and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tooldistill import __version__
from tooldistill.config import ConfigError, load_config
from tooldistill.executor import make_executor
from tooldistill.ingest import IngestConfig, IngestError, IngestResult, ingest
from tooldistill.readers import FORMATS, ReaderOptions
from tooldistill.schema import SchemaError, trace_to_json
from tooldistill.store import Dataset, StoreError

console = Console(stderr=True)
USER_ERRORS: tuple[type[Exception], ...] = (
    IngestError,
    StoreError,
    ConfigError,
    SchemaError,
    ValueError,
    OSError,
)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)


def _print_ingest(result: IngestResult) -> None:
    manifest = result.dataset.manifest
    table = Table(
        title=f"ingest → {result.dataset.uri}" + (" (up to date, skipped)" if result.skipped else "")
    )
    for column in ("source", "files", "traces", "tools called", "quarantined"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for row in result.summary:
        table.add_row(
            row["source"], str(row["files"]), str(row["traces"]), str(row["tools"]), str(row["quarantined"])
        )
    table.add_row(
        "[bold]total",
        str(sum(r["files"] for r in result.summary)),
        str(manifest.rows),
        "",
        str(manifest.quarantine.total),
    )
    console.print(table)
    if manifest.quarantine.total:
        reasons = ", ".join(f"{kind}: {n}" for kind, n in sorted(manifest.quarantine.by_reason.items()))
        console.print(
            f"quarantined ({reasons}) → {result.dataset.uri}/{manifest.quarantine.file}", highlight=False
        )
    redacted = manifest.stats.get("secrets_redacted") or {}
    if redacted:
        console.print(f"secrets redacted: {sum(redacted.values())} ({', '.join(sorted(redacted))})")


def _executor_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)."
    )(fn)
    fn = click.option(
        "--executor",
        type=click.Choice(["ray", "local"]),
        default="ray",
        show_default=True,
        help="ray: Ray Data tasks; local: this process only.",
    )(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tooldistill")
def main() -> None:
    """Teach a self-hosted model to call tools the way Claude does."""


@main.command("ingest")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--format", "format_name", type=click.Choice(sorted(FORMATS)), required=True, help="Input format."
)
@click.option("--out", required=True, help="Output dataset: a folder or s3://bucket/prefix.")
@click.option("--strict", is_flag=True, help="Fail (publish nothing) when any record is quarantined.")
@click.option("--force", is_flag=True, help="Rebuild even when the output is up to date.")
@click.option("--catalog", default=None, help="Tool catalog JSON for Claude Code logs (default: built-in).")
@click.option(
    "--categories", default=None, help="BFCL categories, comma-separated (default: single-turn set)."
)
@click.option(
    "--include-no-call", is_flag=True, help="Keep API-log replies that call no tool as 'no call' traces."
)
@click.option("--no-redact", is_flag=True, help="Keep secrets found in the logs (not recommended).")
@click.option("--files-per-shard", type=int, default=None, help="Files per task and Parquet part.")
@_executor_option
def ingest_command(
    sources: tuple[str, ...],
    format_name: str,
    out: str,
    strict: bool,
    force: bool,
    catalog: str | None,
    categories: str | None,
    include_no_call: bool,
    no_redact: bool,
    files_per_shard: int | None,
    executor: str,
    ray_address: str | None,
) -> None:
    """Read teacher traces from SOURCES (files, folders, s3:// prefixes; 'bfcl' for the bfcl-eval data)."""
    with user_errors():
        config = IngestConfig(
            sources=sources,
            format=format_name,
            out=out,
            strict=strict,
            force=force,
            files_per_shard=files_per_shard,
            reader=ReaderOptions(
                catalog=catalog,
                include_no_call=include_no_call,
                categories=tuple(c.strip() for c in categories.split(",")) if categories else None,
                redact=not no_redact,
            ),
        )
        result = ingest(config, make_executor(executor, address=ray_address))
        _print_ingest(result)


@main.command("show")
@click.argument("dataset")
@click.option("--head", default=3, show_default=True, help="Rows to print.")
def show_command(dataset: str, head: int) -> None:
    """Print a dataset's manifest and its first rows."""
    with user_errors():
        data = Dataset.open(dataset)
        click.echo(data.manifest.model_dump_json(indent=2, exclude={"parts"}))
        click.echo(f"parts: {len(data.manifest.parts)}")
        if data.manifest.kind == "traces" and head:
            for trace in data.to_traces()[:head]:
                click.echo(json.dumps(trace_to_json(trace), ensure_ascii=False)[:400])


@main.command("export")
@click.argument("dataset")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write ('-' for stdout)."
)
def export_command(dataset: str, out: str) -> None:
    """Write a traces dataset as tooldistill JSONL (ingest it again with --format jsonl)."""
    with user_errors():
        traces = Dataset.open(dataset).to_traces()
        with click.open_file(out, "w", encoding="utf-8") as handle:
            for trace in traces:
                handle.write(json.dumps(trace_to_json(trace), ensure_ascii=False) + "\n")
        console.print(f"{len(traces)} traces → {out}")


@main.command("run")
@click.argument("config_path", metavar="CONFIG")
@click.option("--out", default=None, help="Run folder (local or s3://); default: the config's run_dir.")
def run_command(config_path: str, out: str | None) -> None:
    """Run the pipeline's stages from one YAML config; stages already up to date are skipped."""
    from tooldistill.pipeline import run_pipeline

    with user_errors():
        config = load_config(config_path)
        result = run_pipeline(config, run_dir=out)
        _print_ingest(result.ingest)
        console.print(f"[bold]run folder:[/] {result.run_dir}", highlight=False)


if __name__ == "__main__":
    main()
