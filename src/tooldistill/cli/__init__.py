"""The ``tooldistill`` command line: one module per command group, ``root`` registers them.

``main`` is the entry point (``tooldistill = "tooldistill.cli:main"``); ``python -m tooldistill.cli``
runs it too.  Each subcommand is a thin shell over a library function; ``common`` holds what the
command modules share.
"""

from __future__ import annotations

from tooldistill.cli.root import main

__all__ = ["main"]
