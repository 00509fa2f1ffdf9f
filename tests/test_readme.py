"""The README's commands run as written: every ``tooldistill ...`` line in its fenced code blocks
names a real subcommand whose options the real command line parses (parsed, never run), every
``configs/...`` path it names exists, and a ``--phase NAME`` names a phase of its ``--config`` (for
``finetune``, a finetune phase).  No model is loaded: only the click parser and the config loaders.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest

from tooldistill.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_CONFIG_PATH = re.compile(r"(?<![\w/.\-])configs/[\w./\-]*\w")


def fenced_lines(text: str) -> list[str]:
    """The logical lines of every fenced code block (a line ending in ``\\`` joined to the next)."""
    lines: list[str] = []
    for block in _FENCE.findall(text):
        pending = ""
        for raw in block.splitlines():
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            lines.append(pending + raw)
            pending = ""
        if pending:
            lines.append(pending)
    return lines


def readme_commands() -> list[tuple[str, list[str]]]:
    """(the line, its arguments after ``tooldistill``) for each ``tooldistill`` command line."""
    found = []
    for line in fenced_lines(README.read_text(encoding="utf-8")):
        words = shlex.split(line, comments=True)
        while words and _ENV.match(words[0]):  # ``NAME=value tooldistill ...``
            words = words[1:]
        if words and words[0] == "tooldistill":
            found.append((line.strip(), words[1:]))
    return found


COMMANDS = readme_commands()


def parse(args: list[str]) -> click.Context:
    """The context the real command line builds for ``args``, down to the subcommand, without
    invoking anything; a usage error (no such command, an unknown or missing option, a bad value)
    raises as it would when run."""
    command: click.Command = main
    ctx = main.make_context("tooldistill", list(args))
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, sub_args = command.resolve_command(ctx, rest)
        assert name is not None and sub is not None, rest
        command, ctx = sub, sub.make_context(name, sub_args, parent=ctx)
    return ctx


def _path(ctx: click.Context) -> str:
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def test_the_readme_has_the_commands_it_is_known_for() -> None:
    assert len(COMMANDS) >= 30
    subcommands = {args[0] for _, args in COMMANDS if args}
    assert {"run", "ingest", "curate", "teacher", "optimize", "finetune", "serve", "evaluate"} <= subcommands


@pytest.mark.parametrize(("line", "args"), COMMANDS, ids=[line[:70] for line, _ in COMMANDS])
def test_every_readme_command_parses(line: str, args: list[str]) -> None:
    try:
        ctx = parse(args)
    except click.UsageError as error:
        pytest.fail(f"README: {line}\n  does not parse: {error.format_message()}")
    params: dict[str, Any] = ctx.params
    config = params.get("config_path")
    phase = params.get("phase")
    command = _path(ctx)
    if command in ("run", "submit") and config:
        from tooldistill.config import load_config

        load_config(config)  # a pipeline config the run would accept
    if command in ("optimize", "finetune") and config:
        from tooldistill.cli.optimize import _load_config

        loaded = _load_config(config, params.get("sets", ()), params.get("run_dir"))
        phases = {p.name: p.kind for p in loaded.phases}
        if command == "finetune":
            finetune = [name for name, kind in phases.items() if kind == "finetune"]
            if phase is None:
                assert finetune, f"README: {line}\n  {config} has no finetune phase"
            else:
                assert phase in phases, f"README: {line}\n  {config} has no phase {phase} ({list(phases)})"
                assert phases[phase] == "finetune", (
                    f"README: {line}\n  {config}'s {phase} is a {phases[phase]} phase, not a finetune phase"
                )
        elif phase not in (None, "all"):
            index = int(phase) if str(phase).isdigit() else None
            assert phase in phases or (index is not None and 1 <= index <= len(phases)), (
                f"README: {line}\n  {config} has no phase {phase} ({list(phases)})"
            )


def test_every_configs_path_the_readme_names_exists() -> None:
    text = README.read_text(encoding="utf-8")
    named = sorted(set(_CONFIG_PATH.findall(text)))
    assert "configs/demo.yaml" in named
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"README names configs that do not exist: {missing}"


def test_the_checks_catch_what_they_are_for() -> None:
    """The parser and the phase check reject what a wrong README line would hold."""
    for bad in (
        ["no-such-command"],
        ["ingest", "data", "--format", "claude_code", "--no-such-option", "x"],
        ["finetune", "--config", "configs/optimize/cpu-smollm2.yaml"],  # --base-model is required
    ):
        with pytest.raises(click.UsageError):
            parse(bad)
    lines = fenced_lines("```bash\ntooldistill run a.yaml \\\n    --out b  # why\n```\n")
    assert lines == ["tooldistill run a.yaml      --out b  # why"]
    from tooldistill.cli.optimize import _load_config

    ctx = parse(
        [
            "finetune",
            "--config",
            "configs/optimize/cpu-smollm2.yaml",
            "--phase",
            "phase2",
            "--base-model",
            "m",
        ]
    )
    config = _load_config(ctx.params["config_path"], ctx.params["sets"], ctx.params["run_dir"])
    assert {p.name: p.kind for p in config.phases}[ctx.params["phase"]] == "gepa"
