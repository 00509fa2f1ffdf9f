"""``tooldistill run``, ``submit`` and ``report``: the whole pipeline from one config, here or as a
Ray job, and its report."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from tooldistill.cli.common import console, say, user_errors
from tooldistill.config import load_config


@click.command("run")
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
    from tooldistill.raycluster import verbose
    from tooldistill.serve.runner import ServeError
    from tooldistill.teacher.capture import TeacherError

    with user_errors(PipelineError, CurateError, OptimizeError, ServeError, TeacherError):
        config = load_config(config_path)
        # the libraries' output (Ray, vLLM, PyTorch) goes to the run's log unless --verbose
        result = run_pipeline(
            config,
            run_dir=out,
            start_from=start_from,
            until=until,
            say=say,
            chatter_to_log=not verbose(),
        )
        table = Table(title=f"run {config.name}", title_justify="left")
        for column in ("stage", "status", "seconds", "note"):
            table.add_column(column, justify="right" if column == "seconds" else "left")
        for record in result.stages:
            table.add_row(
                record.stage, record.status, f"{record.elapsed_s:.1f}", str(record.detail.get("note", ""))
            )
        console.print(table)
        say(f"[bold]run folder:[/] {result.run_dir}")
        if result.report:
            say(f"[bold]report:[/] {result.report}")
        from tooldistill.layout import RunLayout
        from tooldistill.serve.learned import serve_hint
        from tooldistill.staging import is_remote

        student = config.student.model_dump(mode="json") if config.student is not None else {}
        hint = serve_hint(student, str(result.run_dir))
        if (
            hint
            and not is_remote(str(result.run_dir))
            and Path(RunLayout(str(result.run_dir)).optimize.best_prompt).exists()
        ):
            say(f"[bold]serve it in Claude's place:[/] {hint}")


@click.command("submit", context_settings={"ignore_unknown_options": True})
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
        say(f"[bold]job {job_id}:[/] {status}")


@click.command("report")
@click.argument("run_dir", metavar="RUN")
@click.option("--out", default=None, help="Folder for the report (default: RUN/report).")
def report_command(run_dir: str, out: str | None) -> None:
    """Render a run folder's report: Markdown and a self-contained HTML file with plots."""
    from tooldistill.report import render_report

    with user_errors():
        paths = render_report(run_dir, out)
        say(f"[bold]report:[/] {paths.html}\n[bold]markdown:[/] {paths.markdown}")


COMMANDS: tuple[click.Command, ...] = (run_command, submit_command, report_command)
