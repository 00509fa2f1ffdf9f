"""Readers: each turns one source file into traces and quarantined records.

``FORMATS`` maps the ``--format`` names to a reader and to the rule that picks its files out of a
folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tooldistill.readers.anthropic import read_anthropic_log
from tooldistill.readers.base import Ignored, Quarantined, ReadContext, Reader, ReaderOptions, SourceFile
from tooldistill.readers.bfcl import SINGLE_TURN_CATEGORIES, category_of, read_bfcl
from tooldistill.readers.claude_code import read_claude_code
from tooldistill.readers.jsonl import read_jsonl
from tooldistill.readers.openai import read_openai_log

__all__ = [
    "FORMATS",
    "Format",
    "Ignored",
    "Quarantined",
    "ReadContext",
    "ReaderOptions",
    "SourceFile",
    "get_format",
]

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")


def _by_suffix(path: str, options: ReaderOptions) -> bool:
    return path.endswith(_JSONL_SUFFIXES)


def _bfcl_file(path: str, options: ReaderOptions) -> bool:
    if "/possible_answer/" in path:
        return False
    category = category_of(path)
    return category is not None and category in (options.categories or SINGLE_TURN_CATEGORIES)


@dataclass(frozen=True)
class Format:
    """An input format: its reader and which files of a folder it reads."""

    name: str
    read: Reader
    selects: Callable[[str, ReaderOptions], bool]
    summary: str


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("claude_code", read_claude_code, _by_suffix, "Claude Code session logs (~/.claude/projects)"),
        Format("anthropic", read_anthropic_log, _by_suffix, "Anthropic Messages API request/response JSONL"),
        Format("openai", read_openai_log, _by_suffix, "OpenAI chat-completions request/response JSONL"),
        Format("bfcl", read_bfcl, _bfcl_file, "BFCL single-turn data (bfcl-eval package or a copy)"),
        Format("jsonl", read_jsonl, _by_suffix, "tooldistill trace JSONL (tooldistill export)"),
    ]
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}") from None
