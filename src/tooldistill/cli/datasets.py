"""``tooldistill show`` and ``tooldistill export``: look into a dataset, or write it out as JSONL."""

from __future__ import annotations

import json

import click

from tooldistill.cli.common import console, user_errors
from tooldistill.schema import trace_to_json
from tooldistill.store import Dataset


@click.command("show")
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


@click.command("export")
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


COMMANDS: tuple[click.Command, ...] = (show_command, export_command)
