"""Claude Code session logs: ``~/.claude/projects/<slug>/<session>.jsonl``.

What the log looks like (and what this reader relies on):

- one JSON object per line; ``type`` ``user`` and ``assistant`` lines carry ``message`` in the
  Anthropic Messages shape, usually **one content block per line**; the lines of one assistant
  reply share ``message.id``;
- ``uuid``/``parentUuid`` link the lines into a tree (retries and edits make branches); a
  compaction starts a new root (``system``/``compact_boundary`` with ``parentUuid: null``) followed
  by a user line with ``isCompactSummary``; lines with ``isSidechain`` belong to a subagent, whose
  own log may also sit in ``<session>/subagents/agent-*.jsonl``;
- other line types (``summary``, ``file-history-snapshot``, ``system`` notices, ...) hold no
  conversation and are skipped; a ``stream-json`` ``system``/``init`` event names the tools offered.

Every assistant reply that calls tools is a decision point: its history is the chain of lines from
the tree's root (or the last compaction) to the reply, exactly what Claude saw.  Logs without
``uuid`` links (``stream-json`` output) are read in file order.

The log holds no tool schemas: they come from a tool catalog (one for Claude Code's built-in tools
ships with tooldistill).  A tool named by neither the catalog nor an ``init`` event gets a
permissive schema with ``schema_missing`` set.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from tooldistill.readers.anthropic import SERVER_RESULT_SUFFIX, blocks_to_messages, tool_call_from_block
from tooldistill.readers.base import Quarantined, ReadContext, SourceFile, excerpt, iter_json_lines
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace, validate_trace

KNOWN_BLOCKS = {
    "text",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "image",
    "document",
    "server_tool_use",
    "mcp_tool_use",
    "search_result",
}
CALL_BLOCKS = {"tool_use", "server_tool_use", "mcp_tool_use"}


# ---------------------------------------------------------------------------------------------
# Tool catalog
# ---------------------------------------------------------------------------------------------


def load_catalog(path: str | None, context: ReadContext | None = None) -> dict[str, ToolSpec]:
    """Tool specs by name: the built-in Claude Code catalog, plus (overriding) a catalog file.

    A catalog is JSON: ``{"tools": [...]}`` or a bare list; each tool has ``name``, ``description``
    and ``parameters`` (or Anthropic's ``input_schema``).  Raises ``ValueError`` for an unreadable
    catalog: without it the whole ingest would be wrong.
    """
    key = f"catalog:{path}"
    if context is not None and key in context.cache:
        return context.cache[key]  # type: ignore[no-any-return]
    try:
        if path is None:
            text = resources.files("tooldistill.catalogs").joinpath("claude_code.json").read_text("utf-8")
        else:
            from tooldistill.store import StoreError, read_file  # the store's S3 settings

            try:
                text = read_file(path).decode("utf-8")
            except StoreError as error:
                raise OSError(str(error)) from error
        raw = json.loads(text)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read tool catalog {path}: {error}") from error
    items = raw.get("tools", []) if isinstance(raw, dict) else raw
    # A user catalog adds to the built-in one (its entries win), so naming your MCP tools does not
    # turn Bash and Read into unknown tools.
    catalog: dict[str, ToolSpec] = {} if path is None else dict(load_catalog(None, context))
    for item in items:
        if not isinstance(item, dict) or not item.get("name"):
            raise ValueError(
                f"tool catalog {path or 'built-in'}: every tool needs a name, got {str(item)[:80]}"
            )
        parameters = item.get("parameters", item.get("input_schema"))
        catalog[item["name"]] = ToolSpec(
            name=item["name"],
            description=str(item.get("description") or ""),
            parameters=parameters if isinstance(parameters, dict) else {"type": "object"},
        )
    if context is not None:
        context.cache[key] = catalog
    return catalog


# ---------------------------------------------------------------------------------------------
# Log lines
# ---------------------------------------------------------------------------------------------


@dataclass
class _Line:
    """One user/assistant line of the log, with unknown blocks already removed."""

    number: int
    uuid: str
    parent: str | None
    role: str
    message_id: str | None
    content: Any
    record: dict[str, Any]
    calls: list[dict[str, Any]] = field(default_factory=list)


def _known_content(content: Any) -> tuple[Any, list[str]]:
    """The content with unknown block types removed, and the unknown types."""
    if not isinstance(content, list):
        return content, []
    kept: list[Any] = []
    unknown: list[str] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if isinstance(kind, str) and (kind in KNOWN_BLOCKS or kind.endswith(SERVER_RESULT_SUFFIX)):
            kept.append(block)
        else:
            unknown.append(str(kind))
    return kept, unknown


def read_claude_code(source: SourceFile, context: ReadContext) -> Iterator[Trace | Quarantined]:
    """Traces for every assistant reply that calls tools in one Claude Code session log."""
    redactor = context.redactor
    lines: list[_Line] = []
    parents: dict[str, str | None] = {}  # every uuid in the file, message or not
    init_tools: list[Any] | None = None
    previous: str | None = None
    skipped: Counter[str] = Counter()

    for item in iter_json_lines(source, context):
        if isinstance(item, Quarantined):
            yield item
            continue
        number, record = item
        kind = record.get("type")
        uuid = str(record.get("uuid") or f"line:{number}")
        parent = record.get("parentUuid", previous)
        parents[uuid] = parent
        previous = uuid
        if kind == "system" and record.get("subtype") == "init":
            tools = record.get("tools")
            init_tools = tools if isinstance(tools, list) else init_tools
            continue
        if kind not in ("user", "assistant"):
            skipped[str(kind)] += 1
            continue
        message = record.get("message")
        if not isinstance(message, dict):
            yield Quarantined(
                source.uri,
                number,
                f"{kind} line without a message object",
                excerpt(json.dumps(record), redactor),
            )
            continue
        content, unknown = _known_content(message.get("content"))
        if unknown:
            yield Quarantined(
                source.uri,
                number,
                f"unknown content block type {unknown[0]!r}",
                excerpt(json.dumps(message), redactor),
            )
        line = _Line(number, uuid, parent, kind, message.get("id"), content, record)
        if kind == "assistant" and isinstance(content, list):
            line.calls = [b for b in content if b.get("type") in CALL_BLOCKS]
        lines.append(line)

    tools, catalog_names = _session_tools(lines, init_tools, context)
    by_uuid = {line.uuid: line for line in lines}
    replies: dict[str, list[_Line]] = {}
    for line in lines:
        if line.role == "assistant":
            replies.setdefault(line.message_id or line.uuid, []).append(line)

    converted: dict[str, list[Message]] = {}

    def unit_messages(key: str, role: str, blocks: Any) -> list[Message]:
        if key not in converted:
            converted[key] = blocks_to_messages(role, blocks, redactor, lambda kind: None)
        return converted[key]

    for _reply_key, reply_lines in replies.items():
        calls_blocks = [block for line in reply_lines for block in line.calls]
        if not calls_blocks:
            continue
        first = reply_lines[0]
        chain = _history(first.parent, parents, by_uuid)
        messages: list[Message] = []
        seen_replies: set[str] = set()
        after_compaction = False
        for line in chain:
            if line.role == "assistant":
                key = line.message_id or line.uuid
                if key in seen_replies:
                    continue
                seen_replies.add(key)
                blocks = [b for part in replies.get(key, [line]) for b in _as_blocks(part.content)]
                messages.extend(unit_messages(f"a:{key}", "assistant", blocks))
            else:
                after_compaction = after_compaction or bool(line.record.get("isCompactSummary"))
                messages.extend(unit_messages(f"u:{line.uuid}", "user", line.content))
        if not messages:
            yield Quarantined(source.uri, first.number, "tool call with no conversation before it")
            continue
        calls = [tool_call_from_block(block, redactor) for block in calls_blocks]
        reply_text = "\n".join(
            redactor.text(str(b.get("text", "")))
            for line in reply_lines
            for b in _as_blocks(line.content)
            if b.get("type") == "text"
        )
        record = first.record
        message = record.get("message") or {}
        unknown_tools = sorted({c.name for c in calls} - catalog_names)
        trace = Trace(
            source_id=str(first.message_id or f"{record.get('sessionId', source.uri)}:{first.number}"),
            source="claude_code",
            messages=messages,
            tools=_offered_tools(tools, calls),
            reference_calls=calls,
            metadata={
                "file": source.uri,
                "line": first.number,
                "session_id": record.get("sessionId"),
                "model": message.get("model"),
                "timestamp": record.get("timestamp"),
                "sidechain": bool(record.get("isSidechain")),
                "subagent": "/subagents/" in source.path,
                "agent_id": record.get("agentId"),
                "after_compaction": after_compaction,
                "assistant_text": reply_text,
                "unknown_tools": unknown_tools,
                "stop_reason": message.get("stop_reason"),
            },
        )
        problem = validate_trace(trace)
        if problem:
            yield Quarantined(source.uri, first.number, problem)
            continue
        yield trace.with_id()


def _as_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    if isinstance(content, str) and content:
        return [{"type": "text", "text": content}]
    return []


def _history(start: str | None, parents: dict[str, str | None], by_uuid: dict[str, _Line]) -> list[_Line]:
    """Message lines from the root (or compaction) down to ``start``, in conversation order."""
    chain: list[_Line] = []
    seen: set[str] = set()
    node = start
    while node is not None and node not in seen:
        seen.add(node)
        line = by_uuid.get(node)
        if line is not None:
            chain.append(line)
        node = parents.get(node)
    chain.reverse()
    return chain


def _session_tools(
    lines: list[_Line], init_tools: list[Any] | None, context: ReadContext
) -> tuple[list[ToolSpec], set[str]]:
    """The tools offered in this session, and the names whose schema is known."""
    catalog = load_catalog(context.options.catalog, context)
    if init_tools is None:
        return list(catalog.values()), set(catalog)
    offered: list[ToolSpec] = []
    for tool in init_tools:
        if isinstance(tool, dict) and tool.get("name"):
            schema = tool.get("input_schema", tool.get("parameters"))
            if isinstance(schema, dict):
                offered.append(
                    ToolSpec(
                        name=tool["name"], description=str(tool.get("description") or ""), parameters=schema
                    )
                )
                continue
            name = str(tool["name"])
        else:
            name = str(tool)
        offered.append(catalog.get(name) or ToolSpec(name=name, schema_missing=True))
    return offered, {t.name for t in offered if not t.schema_missing}


def _offered_tools(tools: list[ToolSpec], calls: list[ToolCall]) -> list[ToolSpec]:
    """The session's tools plus a permissive spec for each called tool not among them."""
    names = {t.name for t in tools}
    extra = [ToolSpec(name=c.name, schema_missing=True) for c in calls if c.name not in names]
    unique_extra = list({t.name: t for t in extra}.values())
    return [*tools, *unique_extra]
