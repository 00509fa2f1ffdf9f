"""``tooldistill ingest`` and ``tooldistill redact-report``: teacher traces in, and what was redacted.

``ingest`` builds an ``IngestConfig`` from its flags and holds its ``--out`` folder's lock while it
writes; ``redact-report`` reads only manifests (counts per kind, never the values).
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from tooldistill import runlock, store
from tooldistill.cli.common import console, executor_options, hold_output, user_errors
from tooldistill.executor import make_executor
from tooldistill.ingest import IngestConfig, IngestResult, ingest
from tooldistill.readers import FORMATS, ReaderOptions
from tooldistill.store import StoreError


def redaction_rows(target: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(one row per dataset under ``target`` whose stage redacts: its path, stage, whether redaction
    was on and the counts per kind; the datasets that record no redaction of their own).

    Read from the manifests only: they hold counts, never the values."""
    import pyarrow.fs as pafs

    filesystem, root = store.resolve(target)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise StoreError(f"nothing at {target}")
    folders: list[str] = []
    if info.type == pafs.FileType.Directory:
        listed = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        folders = sorted(
            i.path[: -len(store.MANIFEST) - 1]
            for i in listed
            if i.type == pafs.FileType.File and i.base_name == store.MANIFEST
        )
    rows: list[dict[str, Any]] = []
    others: list[str] = []
    for folder in folders:
        relative = folder[len(root) :].strip("/") or "."
        manifest = store.read_manifest(store.join(target, relative) if relative != "." else target)
        if manifest is None:
            continue
        counts = manifest.stats.get("secrets_redacted")
        if counts is None:
            others.append(relative)
            continue
        rows.append(
            {
                "dataset": relative,
                "stage": manifest.stage,
                "redaction": "off" if manifest.stats.get("redact") is False else "on",
                "secrets_redacted": {str(k): int(v) for k, v in sorted(counts.items())},
                "total": int(sum(counts.values())),
            }
        )
    if not rows and not others:
        raise StoreError(f"no dataset under {target} (no {store.MANIFEST} found)")
    return rows, others


def _print_redaction(target: str, rows: list[dict[str, Any]], others: list[str]) -> None:
    table = Table(title=f"secrets redacted in {target}", title_justify="left")
    for column in ("dataset", "stage", "redaction", "kind", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    totals: dict[str, int] = {}
    for row in rows:
        kinds = row["secrets_redacted"]
        if not kinds:
            table.add_row(row["dataset"], row["stage"], row["redaction"], "none found", "0")
        for i, (kind, count) in enumerate(kinds.items()):
            first = i == 0
            table.add_row(
                row["dataset"] if first else "",
                row["stage"] if first else "",
                row["redaction"] if first else "",
                kind,
                str(count),
            )
            totals[kind] = totals.get(kind, 0) + count
    if len(rows) > 1:
        table.add_row("[bold]total", "", "", ", ".join(sorted(totals)) or "-", str(sum(totals.values())))
    console.print(table)
    if others:
        console.print(
            f"{len(others)} more datasets record no redaction of their own (stages that only pass on "
            f"what they read): {', '.join(others[:8])}{', ...' if len(others) > 8 else ''}",
            highlight=False,
        )


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
    for row in result.summary:
        unrecognized = row.get("unrecognized") or {}
        if unrecognized:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in unrecognized.items())
            console.print(
                f"[yellow]{row['source']}: lines of no known shape were left out ({kinds})[/]",
                highlight=False,
            )
        if row.get("files_without_traces"):
            named = ", ".join(row.get("empty_files") or [])
            console.print(
                f"[yellow]{row['source']}: {row['files_without_traces']} of {row['files']} files gave no "
                f"trace[/] ({named}{', ...' if row['files_without_traces'] > len(row.get('empty_files') or []) else ''})",
                highlight=False,
            )


@click.command("ingest")
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
@click.option(
    "--redact-report",
    is_flag=True,
    help="Then print the secrets redacted per kind (counts from the manifest, never the values).",
)
@click.option(
    "--prompt",
    default=None,
    metavar="TEXT",
    help="Prompt of 'claude -p' runs, for stream-json logs without a <log>.prompt.txt sidecar.",
)
@executor_options("Ray Data tasks")
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
    redact_report: bool,
    prompt: str | None,
    executor: str,
    ray_address: str | None,
) -> None:
    """Read teacher traces from SOURCES (files, folders, s3:// prefixes; 'bfcl' for the bfcl-eval data).

    The output folder is locked while ingest writes it: a second command on it stops with an error
    that names the holder."""
    with user_errors(runlock.RunLockError), hold_output(out):
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
                prompt=prompt,
            ),
        )
        result = ingest(config, make_executor(executor, address=ray_address))
        _print_ingest(result)
        if redact_report:
            rows, others = redaction_rows(result.dataset.uri)
            _print_redaction(result.dataset.uri, rows, others)


@click.command("redact-report")
@click.argument("target", metavar="DATASET|RUN")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def redact_report_command(target: str, as_json: bool) -> None:
    """Secrets redacted per kind in a dataset, or in every dataset of a run folder (ingest, teacher,
    judge), from their manifests: kinds and counts, never the values."""
    with user_errors():
        rows, others = redaction_rows(target)
        if as_json:
            click.echo(json.dumps({"datasets": rows, "without_counts": others}, indent=2))
        else:
            _print_redaction(target, rows, others)


COMMANDS: tuple[click.Command, ...] = (ingest_command, redact_report_command)
