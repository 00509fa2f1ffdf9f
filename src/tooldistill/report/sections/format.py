"""Formatting numbers, times and loose JSON values for the report's text and tables."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tooldistill.report.document import NOT_RUN, Section

DASH = "—"


def number(value: Any) -> float | None:
    """A finite int or float (not a bool); None otherwise."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value) if math.isfinite(value) else None


def general(value: Any) -> str:
    n = number(value)
    return f"{n:g}" if n is not None else "?"


def count(value: Any) -> str:
    n = number(value)
    return f"{int(n):,}" if n is not None else DASH


def pct(value: Any) -> str:
    n = number(value)
    return f"{n * 100:.1f}%" if n is not None else DASH


def interval(ci: Any) -> str:
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(number(v) is not None for v in ci):
        return f"{ci[0] * 100:.1f}–{ci[1] * 100:.1f}%"
    return DASH


def errors(summary: Any) -> str:
    """The endpoint errors a test summary counts: ``2 errors``, ``1 error``; ``errors unknown``
    for a summary written before they were counted."""
    n = number(obj(summary).get("errors"))
    if n is None:
        return "errors unknown"
    return f"{int(n):,} error" + ("" if int(n) == 1 else "s")


def is_summary(value: Any) -> bool:
    """Whether ``value`` is a test summary (``student.summarize``: n, matched, rate, ci95, errors)."""
    return isinstance(value, Mapping) and "rate" in value and "n" in value


def rate_text(summary: Mapping[str, Any]) -> str:
    """A test summary in one line with its endpoint errors beside the rate:
    ``13/115 = 11.3% [6.7–18.4%], 2 errors; names: 45/115 = 39.1% [30.7–48.3%]``."""
    if number(summary.get("rate")) is None:
        return f"no match rate, {errors(summary)}"

    def one(part: Mapping[str, Any]) -> str:
        ci = interval(part.get("ci95"))
        return f"{count(part.get('matched'))}/{count(part.get('n'))} = {pct(part.get('rate'))}" + (
            f" [{ci}]" if ci != DASH else ""
        )

    text = f"{one(summary)}, {errors(summary)}"
    for mode, other in obj(summary.get("also")).items():
        if number(obj(other).get("rate")) is not None:
            text += f"; {mode}: {one(other)}"
    return text


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


def obj(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one (for nested reads of loose files)."""
    return value if isinstance(value, Mapping) else {}


def not_run(section: Section, why: str) -> Section:
    section.status = NOT_RUN
    return section.note(f"Not run in this run ({why}).")
