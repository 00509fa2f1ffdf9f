"""Paths as configs write them: ``~`` and ``${VAR}`` / ``${VAR:-default}`` expanded.

One place for it, shared by the serve profiles (``model_source``), the context policy's and the
length stage's ``tokenizer`` and the ``serve`` command, so a path reads the same everywhere.
"""

from __future__ import annotations

import os
import re

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class UnsetVariable(ValueError):
    """A path names a variable that is not set and has no default."""


def expand_path(value: str) -> str:
    """``~``, ``${VAR}`` and ``${VAR:-default}`` expanded; an unset variable without a default is
    an error, not an empty string."""

    def variable(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        raise UnsetVariable(f"model path {value!r} uses ${{{name}}}, which is not set")

    return os.path.expanduser(_VAR.sub(variable, value))
