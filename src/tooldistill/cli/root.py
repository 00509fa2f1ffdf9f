"""The root ``tooldistill`` group: every command module's commands registered on it.

The command modules never import this one; it imports them.
"""

from __future__ import annotations

import os

import click

from tooldistill import __version__
from tooldistill.cli import curate, datasets, evaluate, ingest, optimize, run, serve, teacher
from tooldistill.raycluster import VERBOSE_ENV


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tooldistill")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show what Ray, vLLM and the other libraries print (by default it goes to the run's run.log).",
)
def main(verbose: bool) -> None:
    """Teach a self-hosted model to call tools the way Claude does."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


for _module in (ingest, datasets, run, evaluate, curate, teacher, optimize, serve):
    for _command in _module.COMMANDS:
        main.add_command(_command)
