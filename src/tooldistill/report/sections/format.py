"""Formatting numbers, times and loose JSON values for the report's text and tables."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tooldistill.progress import (
    DASH,
    count,
    errors,
    interval,
    number,
    obj,
    p_value,
    pct,
    points,
    points_interval,
    rate_text,
)
from tooldistill.report.document import NOT_RUN, Section

__all__ = [
    "DASH",
    "count",
    "errors",
    "interval",
    "number",
    "obj",
    "p_value",
    "pct",
    "points",
    "points_interval",
    "rate_text",
]


def general(value: Any) -> str:
    n = number(value)
    return f"{n:g}" if n is not None else "?"


def is_summary(value: Any) -> bool:
    """Whether ``value`` is a test summary (``student.summarize``: n, matched, rate, ci95, errors)."""
    return isinstance(value, Mapping) and "rate" in value and "n" in value


def dollars(value: Any) -> str:
    n = number(value)
    if n is None:
        return DASH
    return f"${n:,.4f}" if n < 100 else f"${n:,.2f}"


def duration(seconds: Any) -> str:
    s = number(seconds)
    if s is None:
        return DASH
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def when(value: Any) -> str:
    n = number(value)
    if n is not None:
        try:
            return datetime.fromtimestamp(n, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (OverflowError, OSError, ValueError):
            return str(value)
    return str(value) if value not in (None, "") else DASH


def compact(value: Any, limit: int = 160) -> str:
    """A short one-line view of a (masked) JSON value."""
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            shown = item if isinstance(item, str | int | float | bool) or item is None else json.dumps(item)
            parts.append(f"{key}={shown}")
        text = "; ".join(parts)
    else:
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def file_name(path: str) -> str:
    """The last part of a path (``optimize/phase2/result.json`` → ``result.json``)."""
    return path.rstrip("/").rpartition("/")[2]


def natural(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def not_run(section: Section, why: str) -> Section:
    section.status = NOT_RUN
    return section.note(f"Not run in this run ({why}).")
