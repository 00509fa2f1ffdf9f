"""``tooldistill optimize``, ``finetune`` and ``sweep``: prompt optimization and LoRA on the command line.

Progress goes to stderr as one line per event (a GEPA iteration: metric calls and dollars used
against their budgets, best validation score so far, the Pareto front's size), so it reads the same
in a terminal, a log file and a Ray job's output.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from tooldistill import runlock
from tooldistill.cli.common import console, dtype_option, fail, hold_output, user_errors
from tooldistill.progress import optimize_progress, versus_text

if TYPE_CHECKING:
    from tooldistill.optimize.run import OptimizeConfig


@contextmanager
def _user_errors() -> Iterator[None]:
    from tooldistill.optimize.reflection import ReflectionError

    with user_errors(ReflectionError, runlock.RunLockError):
        yield


def _rate(test: dict[str, Any] | None, versus: bool = True) -> str:
    if not test or test.get("rate") is None:
        return "-"
    low, high = test["ci95"]
    errors = int(test.get("errors") or 0)
    beside = f", {errors} endpoint errors not counted" if errors else ""
    paired = versus_text(test.get("vs_baseline")) if versus else ""
    return f"{test['rate']:.1%} ({low:.1%}-{high:.1%}, n={test['n']}{beside})" + (
        f"; {paired}" if paired else ""
    )


def _show(line: str) -> None:
    console.print(line, highlight=False)


#: A running evaluation's answers so far, at most one line every 15 s (``progress.optimize_progress``).
_evaluating = optimize_progress(_show, lambda _: None)


def _progress(event: dict[str, Any]) -> None:
    kind, phase = event.get("event"), event.get("phase")
    if kind == "evaluating":
        _evaluating(event)
    elif kind == "iteration":
        usd = f"${event['reflection_usd']:.4f}"
        if event.get("max_reflection_usd") is not None:
            usd += f"/${event['max_reflection_usd']:.2f}"
        console.print(
            f"{phase} iteration {event['iteration']}: metric calls {event['metric_calls']}/"
            f"{event['max_metric_calls']}, reflection {usd}, candidates {event['candidates']}, "
            f"best val {event['best_val_score']:.3f}, Pareto front {event['pareto_front']}",
            highlight=False,
        )
    elif kind == "start":
        extra = " (resuming)" if event.get("resumed") else ""
        console.print(f"{phase}: start{extra}, {event.get('train')} train examples", highlight=False)
    elif kind in ("done", "skipped"):
        note = " (done before, skipped)" if kind == "skipped" else ""
        console.print(f"{phase}: test match rate {_rate(event.get('test'))}{note}", highlight=False)
    elif kind == "compiled":
        console.print(f"{phase}: DSPy compiled, {event.get('demos')} demos", highlight=False)


def _overrides(values: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _load_config(config_path: str, sets: tuple[str, ...], run_dir: str | None) -> OptimizeConfig:
    """The optimize config at ``config_path`` with the ``--set`` overrides, and ``--run-dir`` over its
    ``run_dir`` when given."""
    from tooldistill.optimize.run import load_config

    overrides = _overrides(sets)
    if run_dir:
        overrides["run_dir"] = run_dir
    return load_config(config_path, overrides)


@click.command("optimize")
@click.option("--config", "config_path", required=True, help="Optimize config YAML (configs/optimize/).")
@click.option("--phase", default="all", show_default=True, help="1, 2, 3 (or a phase name), or all.")
@click.option("--run-dir", default=None, help="Run folder (overrides the config's run_dir).")
@click.option("--set", "sets", multiple=True, help="Override a config key: student.temperature=0.7.")
def optimize_command(config_path: str, phase: str, run_dir: str | None, sets: tuple[str, ...]) -> None:
    """Optimize the student's prompt: DSPy phase 1, GEPA phases 2-3; resumes from the run folder."""
    from tooldistill.optimize.run import OptimizeError, optimize

    with _user_errors():
        try:
            config = _load_config(config_path, sets, run_dir)
            with hold_output(config.run_dir):
                summary = optimize(config, phase=phase, progress=_progress)
        except OptimizeError as error:
            fail(error)
    table = Table(title=f"optimize → {summary['run_dir']}", title_justify="left")
    columns = (
        "phase",
        "optimizer",
        "train",
        "test match rate (95% CI)",
        "vs baseline (paired)",
        "demo messages",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("phase", "optimizer", columns[4]) else "right")
    table.add_row("baseline", "-", "-", _rate(summary["baseline"]), "-", "-")
    for row in summary["phases"]:
        paired = versus_text(row["test"].get("vs_baseline"), label="") or "-"
        table.add_row(
            row["phase"], row["kind"], str(row["train"]), _rate(row["test"], versus=False), paired,
            str(row["demo_messages"]),
        )  # fmt: skip
    console.print(table)
    console.print(f"best: {summary['best_phase']}; artifact: {summary['artifact']}", highlight=False)


@click.command("sweep")
@click.option("--config", "config_path", required=True, help="Sweep config YAML (configs/sweep/).")
def sweep_command(config_path: str) -> None:
    """A Ray Tune search over optimize-and-evaluate runs; prints one row per trial."""
    from tooldistill.optimize.run import OptimizeError
    from tooldistill.optimize.sweep import load_sweep, run_sweep

    with _user_errors():
        try:
            sweep = load_sweep(config_path)
            with hold_output(sweep.run_dir):
                rows = run_sweep(sweep)
        except OptimizeError as error:
            fail(error)
    table = Table(title=f"sweep → {sweep.run_dir} ({len(rows)} trials)", title_justify="left")
    keys = sorted({k for row in rows for k in row["params"]})
    phases = sorted({p for row in rows for p in row["phase_rates"]})
    for column in [*keys, "baseline", *phases, "best phase", "error"]:
        table.add_column(column, justify="right")
    for row in rows:
        rates = [
            f"{row['phase_rates'][p]:.1%}" if row["phase_rates"].get(p) is not None else "-" for p in phases
        ]
        baseline = "-" if row["baseline_rate"] is None else f"{row['baseline_rate']:.1%}"
        table.add_row(
            *[str(row["params"].get(k)) for k in keys],
            baseline,
            *rates,
            str(row["best_phase"] or "-"),
            (row["error"] or "")[:60],
        )
    console.print(table)


@click.command("finetune")
@click.option("--config", "config_path", required=True, help="Optimize config YAML with a finetune phase.")
@click.option("--phase", default=None, help="The finetune phase (default: the config's first one).")
@click.option("--base-model", required=True, help="The student's model folder (e.g. a prepared SmolLM2).")
@click.option("--run-dir", default=None, help="Run folder (overrides the config's run_dir).")
@dtype_option("The merged model's dtype (auto: as the CPU profile would serve it).")
@click.option("--set", "sets", multiple=True, help="Override a config key: phases.phase2.train=40.")
def finetune_command(
    config_path: str,
    phase: str | None,
    base_model: str,
    run_dir: str | None,
    dtype: str,
    sets: tuple[str, ...],
) -> None:
    """Run a finetune phase alone: examples, LoRA training on Ray Train (resumes), adapter, merged model.

    Starts from the prompt of the phase before it when that phase has run (else the seed prompt);
    serve the result with `tooldistill serve --config PROFILE --model-source <merged>`, or (serve_as:
    adapter) `tooldistill serve --config PROFILE --lora-store s3://... --adapter NAME=<adapter>`."""
    from pathlib import Path

    from tooldistill.finetune.examples import ExamplesError
    from tooldistill.finetune.merge import AdapterError
    from tooldistill.finetune.phase import finetune
    from tooldistill.finetune.train import TrainError
    from tooldistill.optimize.phases.finetune import options as finetune_options
    from tooldistill.optimize.run import (
        OptimizeError,
        finetune_reserve,
        phase_train,
        start_prompt,
    )
    from tooldistill.serve.cpu import choose_dtype

    def show(event: dict[str, Any]) -> None:
        if event.get("event") == "examples":
            console.print(
                f"{event['examples']} examples ({event['calls']} calls, {event['no_calls']} no-call, "
                f"{event['tokens']:,} tokens); left out: {event['left_out'] or 'none'}",
                highlight=False,
            )
        elif event.get("event") == "train_step":
            rate, eta = event.get("tokens_per_s"), event.get("eta_s")
            console.print(
                f"step {event['step']}/{event['max_steps']} loss {event['loss']:.4f}"
                + (f", {rate:.0f} tokens/s" if rate else "")
                + (f", ETA {eta:.0f} s" if eta is not None else ""),
                highlight=False,
            )

    with _user_errors():
        try:
            config = _load_config(config_path, sets, run_dir)
            phases = [p for p in config.phases if p.kind == "finetune" and phase in (None, p.name)]
            if not phases:
                raise OptimizeError(
                    f"{config_path} has no finetune phase{f' named {phase}' if phase else ''}"
                )
            item = phases[0]
            base = Path(base_model).expanduser()
            train = phase_train(config, item)
            with hold_output(config.run_dir):
                record = finetune(
                    train, finetune_options(item), item.name, start_prompt(config, item.name),
                    config.student, Path(config.run_dir) / item.name, base, choose_dtype(
                        None if dtype == "auto" else dtype).dtype, show, reserve=finetune_reserve(config, item, train),
                )  # fmt: skip
        except (OptimizeError, ExamplesError, AdapterError, TrainError) as error:
            fail(error)
    training = record["training"]
    console.print(
        f"{item.name}: {training['steps']} steps, final loss {training['final_loss']}, "
        f"{training['train_seconds']:.0f} s; adapter {record['adapter']['path']} "
        f"(sha256 {record['adapter']['adapter_sha256'][:12]}…)"
        + (f"; merged model {record['merged']}" if record.get("merged") else ""),
        highlight=False,
    )


COMMANDS: tuple[click.Command, ...] = (optimize_command, finetune_command, sweep_command)
