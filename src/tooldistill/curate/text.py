"""The text view of a trace: what the embedding model reads.

Two traces should look alike when the user asked for the same thing and the teacher chose the same
calls.  So by default the view is the user's latest request and the calls chosen, written compactly
(``Read(file_path='src/app.py')``).  Tool schemas are left out by default: many traces share one
catalog (every Claude Code trace offers the same tools), and a few thousand characters of shared
schema would make all of them look alike to the model.  Every part is configurable.

Works on Arrow rows (plain dicts of ``TRACE_SCHEMA``) rather than ``Trace`` models, because the
embed stage builds millions of views and pydantic validation would cost more than the text itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tooldistill.schema import content_hash


class TextView(BaseModel):
    """Which parts of a trace go into its text view."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Which user messages: the latest with text (the request being answered), the first, or all.
    request: Literal["last_user", "first_user", "all_user", "none"] = "last_user"
    #: The system prompt too (off: a system prompt is usually shared by every trace of a source).
    system: bool = False
    #: The calls chosen: names and arguments, names only, or not at all.
    calls: Literal["full", "names", "none"] = "full"
    #: The names of the tools offered (off: shared catalogs make traces look alike).
    tool_names: bool = False
    #: Full tool schemas (off, for the same reason; on for catalogs that differ per trace, as in BFCL).
    tool_schemas: bool = False
    #: Cut each argument value to this many characters.
    max_value_chars: int = Field(default=80, ge=8)
    #: Cut the whole view to this many characters (the default model reads ~256 word pieces anyway).
    max_chars: int = Field(default=1500, ge=16)

    def config_hash(self) -> str:
        return content_hash(self.model_dump(mode="json"), 16)


def _value(value: Any, limit: int) -> str:
    """One argument value on one line, cut to ``limit`` characters (strings quoted)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text) if isinstance(value, str) else text


def format_calls(calls: Sequence[Mapping[str, Any]], mode: str, limit: int) -> str:
    """Calls written compactly: ``Read(file_path='a.py'); Bash(command='ls')``."""
    parts = []
    for call in calls:
        if mode == "names":
            parts.append(str(call["name"]))
            continue
        raw = call.get("arguments") or "{}"
        arguments = json.loads(raw) if isinstance(raw, str) else dict(raw)
        inner = ", ".join(f"{key}={_value(arguments[key], limit)}" for key in sorted(arguments))
        parts.append(f"{call['name']}({inner})")
    return "; ".join(parts)


def _user_texts(messages: Sequence[Mapping[str, Any]], mode: str) -> list[str]:
    texts = [" ".join((m.get("content") or "").split()) for m in messages if m["role"] == "user"]
    texts = [t for t in texts if t]
    if not texts or mode == "none":
        return []
    if mode == "last_user":
        return texts[-1:]
    if mode == "first_user":
        return texts[:1]
    return texts


def text_of(row: Mapping[str, Any], view: TextView) -> str:
    """The text view of one trace row; ``""`` when the trace has no user text and no call to show.

    A "no call" decision is shown as ``→ no tool call`` but does not by itself make a view
    non-empty: two traces with nothing but "no call" in common are not the same example.
    """
    messages = row.get("messages") or []
    lines: list[str] = []
    if view.system:
        lines += [" ".join((m.get("content") or "").split()) for m in messages if m["role"] == "system"]
        lines = [line for line in lines if line]
    lines += _user_texts(messages, view.request)
    calls = row.get("reference_calls") or []
    if view.calls != "none" and calls:
        lines.append("→ " + format_calls(calls, view.calls, view.max_value_chars))
    if not lines:
        return ""
    if view.calls != "none" and not calls:
        lines.append("→ no tool call")
    tools = row.get("tools") or []
    if view.tool_names and tools:
        lines.append("tools: " + ", ".join(str(t["name"]) for t in tools))
    if view.tool_schemas and tools:
        for tool in tools:
            lines.append(f"{tool['name']}: {tool.get('description') or ''} {tool.get('parameters') or ''}")
    text = "\n".join(lines)
    return text[: view.max_chars]


def texts_of(rows: Sequence[Mapping[str, Any]], view: TextView) -> list[str]:
    return [text_of(row, view) for row in rows]
