"""What every command module of the CLI shares: the console, user errors, the output lock, option
helpers and flag defaults read from the config models.

This module imports no command module (and no command module imports the root group), so the
package has no import cycle: ``root`` imports the command modules, they import this one.

Errors the user can act on (missing input, bad config, strict-mode failures, unreachable storage)
print one clear line and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from tooldistill import runlock
from tooldistill.config import ConfigError, RaySection
from tooldistill.console import say, terminal
from tooldistill.evaluate import EndpointError, StudentTooSlow
from tooldistill.ingest import IngestError
from tooldistill.schema import SchemaError
from tooldistill.store import StoreError

console = terminal
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
        fail(error)


def fail(error: BaseException | str) -> NoReturn:
    """Print ``error`` as one red line and exit with status 2."""
    console.print(f"[bold red]error:[/] {error}", highlight=False)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------
# the output folder's lock


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
        with runlock.hold(out, warn=say):
            yield
    finally:
        for path in created:
            try:
                path.rmdir()  # only while empty
            except OSError:
                break


@contextmanager
def writing(out: str, *extra: type[Exception]) -> Iterator[None]:
    """User errors as one line (exit 2), and ``out``'s lock for as long as the command writes."""
    with user_errors(runlock.RunLockError, *extra), hold_output(out):
        yield


# ---------------------------------------------------------------------------------------------
# flag defaults from the config models


def model_default(model: type[Any], name: str) -> Any:
    """The default of field ``name`` of a pydantic model or a dataclass (a ``default_factory``'s
    value for a field that has one).

    A flag that stands for a config field takes its default from here, so the model is the one
    place that sets it and ``--help`` shows what a run without the flag does."""
    fields = getattr(model, "model_fields", None)
    if fields is not None:
        info = fields[name]
        if info.is_required():
            raise TypeError(f"{model.__name__}.{name} has no default")
        return info.get_default(call_default_factory=True)
    for field in dataclasses.fields(model):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            raise TypeError(f"{model.__name__}.{name} has no default")
    raise KeyError(f"{model.__name__} has no field {name!r}")


class _LazyDefault:
    """A field default of a model that lives in a module slow to import, read when called."""

    def __init__(self, model: str, name: str) -> None:
        self.model, self.name = model, name

    def __call__(self) -> Any:
        module, _, attribute = self.model.partition(":")
        return model_default(getattr(importlib.import_module(module), attribute), self.name)


class _LazyDefaultOption(click.Option):
    """An option whose default is a ``_LazyDefault``: the model's module is imported only when
    click needs the value (parsing this command's flags, or printing its help), never when the
    command line starts."""

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        value = super().get_default(ctx, call=call)
        return value() if isinstance(value, _LazyDefault) else value


def lazy_model_option(*decls: str, model: str, field: str, type: Any, **kwargs: Any) -> Callable[..., Any]:
    """``click.option`` with the default of ``field`` of ``model`` (``"package.module:Class"``),
    for models whose module is slow to import (``tooldistill.teacher.capture`` loads the Anthropic
    SDK).  ``type`` is required: click cannot guess it from a default it has not read yet."""
    return click.option(
        *decls, cls=_LazyDefaultOption, default=_LazyDefault(model, field), type=type, **kwargs
    )


# ---------------------------------------------------------------------------------------------
# options shared by several commands


def options(*decorators: Callable[..., Any]) -> Callable[..., Any]:
    """Several ``click.option`` decorators as one, applied in the order given (as if stacked)."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


def executor_options(what: str) -> Callable[..., Any]:
    """``--executor ray|local`` (the pipeline's ``ray.executor`` default) and ``--ray-address``;
    ``what`` says what runs on Ray."""
    return options(
        click.option(
            "--executor",
            type=click.Choice(["ray", "local"]),
            default=model_default(RaySection, "executor"),
            show_default=True,
            help=f"ray: {what}; local: this process only.",
        ),
        click.option(
            "--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)."
        ),
    )


def dtype_option(help: str) -> Callable[..., Any]:
    """``--dtype auto|bfloat16|float32``, what ``serve.cpu.choose_dtype`` is pinned to."""
    return click.option(
        "--dtype",
        type=click.Choice(["auto", "bfloat16", "float32"]),
        default="auto",
        show_default=True,
        help=help,
    )


# ---------------------------------------------------------------------------------------------
# output shared by several commands


def print_consistency(report: dict[str, Any]) -> None:
    """The teacher's consistency ceiling as one line (``match.consistency.consistency_report``)."""
    if not report.get("traces_with_samples"):
        console.print("consistency: no trace has two or more teacher samples")
        return
    agree = report["all_agree"]
    low, high = agree["ci95"]
    say(
        f"teacher consistency over {report['traces_with_samples']} traces "
        f"({report['samples_per_trace']} samples each on average): all samples agree on "
        f"{agree['rate']:.1%} [{low:.1%}-{high:.1%}], mean pairwise agreement "
        f"{report['mean_pairwise_agreement']:.1%}, consensus ties {report['ties']}, "
        f"consensus equals the reference on {report['consensus_equals_reference']['rate']:.1%}"
    )
