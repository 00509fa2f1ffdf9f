"""The ``tooldistill`` command line.  Each subcommand is a thin shell over a library function.

Errors the user can act on (missing input, bad config, strict-mode failures, unreachable storage)
print one clear line and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tooldistill import __version__, runlock, store
from tooldistill.config import ConfigError, load_config
from tooldistill.evaluate import EndpointError, StudentTooSlow
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
    EndpointError,
    StudentTooSlow,
)


@contextmanager
def user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Print errors the user can act on (``USER_ERRORS`` and ``extra``) as one line; exit 2."""
    try:
        yield
    except (*USER_ERRORS, *extra) as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)


def _folders_above(uri: str) -> list[str]:
    """The folders that hold ``uri``, nearest first (``s3://b/runs/x/traces`` → ``s3://b/runs/x``, ...)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        parts = [p for p in prefix.split("/") if p]
        return [f"s3://{bucket}/{'/'.join(parts[:n])}".rstrip("/") for n in range(len(parts) - 1, -1, -1)]
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return [str(parent) for parent in Path(os.path.abspath(os.path.expanduser(path))).parents]


@contextmanager
def hold_output(out: str) -> Iterator[None]:
    """The run lock (``runlock``) of a standalone command's output folder while it writes there.

    A second command writing to the same folder stops with ``RunLockError`` naming the holder, and
    so does one writing inside a run folder that a ``tooldistill run`` holds (``runs/x/traces``
    while a run uses ``runs/x``).  A stale lock (its process is gone) is taken over with a warning."""
    for folder in _folders_above(out):
        try:
            holder = runlock.read_holder(folder)
        except Exception:  # an unreadable folder above is no run's lock
            continue
        if holder is not None and not runlock.is_stale(holder):
            raise runlock.RunLockError(
                f"the output folder {out} is inside the run folder {folder}, in use by another run: "
                f"{holder.describe()}. Wait for it to finish, or write somewhere else.",
                holder,
            )
    # the lock creates the folder; a command that fails before writing anything leaves none behind
    created: list[Path] = []
    if not out.startswith("s3://"):
        missing = Path(os.path.abspath(os.path.expanduser(out.removeprefix("file://"))))
        while not missing.exists() and missing != missing.parent:
            created.append(missing)
            missing = missing.parent
    try:
        with runlock.hold(out, warn=lambda text: console.print(text, highlight=False)):
            yield
    finally:
        for path in created:
            try:
                path.rmdir()  # only while empty
            except OSError:
                break


# ---------------------------------------------------------------------------------------------
# the redaction report


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


@main.command("redact-report")
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
@click.option(
    "--from",
    "start_from",
    default=None,
    metavar="STAGE",
    help="First stage to run (earlier outputs must exist).",
)
@click.option("--until", default=None, metavar="STAGE", help="Last stage to run.")
def run_command(config_path: str, out: str | None, start_from: str | None, until: str | None) -> None:
    """Run the pipeline from one YAML config; stages already up to date are skipped.

    Stages: ingest, teacher, embed, semdedup, car, split, student, baseline, optimize, report.
    """
    from tooldistill.curate.common import CurateError
    from tooldistill.optimize.run import OptimizeError
    from tooldistill.pipeline import PipelineError, run_pipeline
    from tooldistill.serve.runner import ServeError
    from tooldistill.teacher.capture import TeacherError

    with user_errors(PipelineError, CurateError, OptimizeError, ServeError, TeacherError):
        config = load_config(config_path)
        result = run_pipeline(
            config,
            run_dir=out,
            start_from=start_from,
            until=until,
            say=lambda text: console.print(text, highlight=False),
        )
        table = Table(title=f"run {config.name}", title_justify="left")
        for column in ("stage", "status", "seconds", "note"):
            table.add_column(column, justify="right" if column == "seconds" else "left")
        for record in result.stages:
            table.add_row(
                record.stage, record.status, f"{record.elapsed_s:.1f}", str(record.detail.get("note", ""))
            )
        console.print(table)
        console.print(f"[bold]run folder:[/] {result.run_dir}", highlight=False)
        if result.report:
            console.print(f"[bold]report:[/] {result.report}", highlight=False)


@main.command("submit", context_settings={"ignore_unknown_options": True})
@click.argument("config_path", metavar="CONFIG")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    default="http://127.0.0.1:8265",
    show_default=True,
    help="The Ray head's job server (dashboard) address.",
)
@click.option(
    "--runtime-env",
    "runtime_env_path",
    default="ray_jobs/runtime_env.yaml",
    show_default=True,
    help="Runtime environment YAML ('' for none).",
)
@click.option(
    "--follow/--no-follow", default=True, show_default=True, help="Follow the job's logs until it ends."
)
def submit_command(
    config_path: str, run_args: tuple[str, ...], address: str, runtime_env_path: str, follow: bool
) -> None:
    """Submit `tooldistill run CONFIG RUN_ARGS...` as a Ray job (ray_jobs/pipeline.py).

    The submission id holds the config's name and the git commit shipped; RUN_ARGS are passed on
    (e.g. --out s3://bucket/runs/x --from optimize).  Run it from the repository root.
    """
    from pathlib import Path

    from tooldistill.submit import SubmitError, load_runtime_env, submit

    with user_errors(SubmitError):
        config = load_config(config_path)
        root = Path.cwd()
        if not (root / "ray_jobs" / "pipeline.py").exists():
            raise SubmitError(
                "run `tooldistill submit` from the repository root (ray_jobs/pipeline.py not found)"
            )
        runtime_env = load_runtime_env(Path(runtime_env_path) if runtime_env_path else None)
        job_id, status = submit(
            address,
            config_path,
            run_args,
            name=config.name,
            root=root,
            runtime_env=runtime_env,
            follow=follow,
            write=lambda line: click.echo(line),
        )
        console.print(f"[bold]job {job_id}:[/] {status}", highlight=False)


@main.command("report")
@click.argument("run_dir", metavar="RUN")
@click.option("--out", default=None, help="Folder for the report (default: RUN/report).")
def report_command(run_dir: str, out: str | None) -> None:
    """Render a run folder's report: Markdown and a self-contained HTML file with plots."""
    from tooldistill.report import render_report

    with user_errors():
        paths = render_report(run_dir, out)
        console.print(f"[bold]report:[/] {paths.html}\n[bold]markdown:[/] {paths.markdown}", highlight=False)


def _print_rates(title: str, summary: dict[str, Any]) -> None:
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


def _print_consistency(report: dict[str, Any]) -> None:
    if not report.get("traces_with_samples"):
        console.print("consistency: no trace has two or more teacher samples")
        return
    agree = report["all_agree"]
    low, high = agree["ci95"]
    console.print(
        f"teacher consistency over {report['traces_with_samples']} traces "
        f"({report['samples_per_trace']} samples each on average): all samples agree on "
        f"{agree['rate']:.1%} [{low:.1%}-{high:.1%}], mean pairwise agreement "
        f"{report['mean_pairwise_agreement']:.1%}, consensus ties {report['ties']}, "
        f"consensus equals the reference on {report['consensus_equals_reference']['rate']:.1%}",
        highlight=False,
    )


def _modes_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--mode",
        "modes",
        multiple=True,
        default=("chain",),
        show_default=True,
        help="Match mode: chain, set, names or bfcl (repeat for several; the first is the headline).",
    )(fn)


@main.command("score")
@click.argument("predictions")
@click.option("--dataset", required=True, help="Traces dataset the predictions refer to.")
@_modes_option
@click.option("--out", required=True, help="Folder for scores.jsonl and summary.json (local or s3://).")
def score_command(predictions: str, dataset: str, modes: tuple[str, ...], out: str) -> None:
    """Score a JSONL of predictions ({trace_id|source_id, calls|output, id}) against a dataset."""
    from tooldistill.scoring import score

    with user_errors():
        summary = score(predictions, dataset, modes, out)
        _print_rates(f"score → {out}", summary)


@main.command("consistency")
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
            _print_consistency(report)


@main.command("evaluate")
@click.option("--dataset", required=True, help="Traces dataset to evaluate on.")
@click.option("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
@click.option("--model", required=True, help="Model name to send.")
@click.option("--prompt", default=None, help="Prompt artifact (JSON with 'system', or text).")
@click.option("--out", default=None, help="Evaluation dataset (default: <dataset>-eval).")
@_modes_option
@click.option("--concurrency", default=8, show_default=True, help="Requests in flight.")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, help="Seconds per request.")
@click.option("--retries", default=3, show_default=True, help="Retries on 429/5xx/connection errors.")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N traces.")
@click.option("--max-tokens", default=512, show_default=True, help="Longest answer asked of the student.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="Env var holding the key.")
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
    from tooldistill.evaluate import EvaluateConfig, evaluate

    if tokenizer and window is None:
        raise click.UsageError("--tokenizer needs --window (the student's context length)")

    with user_errors():
        all_modes = tuple(dict.fromkeys([*modes, "chain", "set", "names", "bfcl"]))
        config = EvaluateConfig(
            dataset=dataset,
            endpoint=endpoint,
            model=model,
            out=out or dataset.rstrip("/") + "-eval",
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
        result, summary, skipped = evaluate(config)
        title = f"evaluate {model} → {result.uri}" + (" (up to date, skipped)" if skipped else "")
        _print_rates(title, summary)
        if summary.get("vs_consensus"):
            _print_rates("against the teacher's consensus", {"modes": summary["vs_consensus"]})
        _print_consistency(summary.get("consistency") or {})
        if summary.get("first_error"):
            console.print(f"first error: {summary['first_error']}", highlight=False)
        context = summary.get("context") or {}
        if context.get("cut") or context.get("skipped"):
            console.print(
                f"context policy ({context['window']:,}-token window): {context['cut']} cut "
                f"(median {context['median_share_cut'] or 0:.0%} of their tokens), "
                f"{context['skipped']} skipped as too long",
                highlight=False,
            )


# The curation commands live in cli_curate.py (they import this module lazily, so no cycle).
from tooldistill.cli_curate import curate  # noqa: E402

main.add_command(curate)

from tooldistill.cli_teacher import judge_command, teacher  # noqa: E402

main.add_command(teacher)
main.add_command(judge_command)

from tooldistill.cli_optimize import finetune_command, optimize_command, sweep_command  # noqa: E402

main.add_command(optimize_command)
main.add_command(finetune_command)
main.add_command(sweep_command)

from tooldistill.cli_serve import models, serve_command  # noqa: E402

main.add_command(serve_command)
main.add_command(models)


if __name__ == "__main__":
    main()
