"""Anthropic Messages API content, and the reader for Anthropic request/response logs.

The content-block conversion here is shared with the Claude Code reader, whose log lines carry
the same blocks.  A log line of the ``anthropic`` format is one exchange::

    {"request": {"model": ..., "system": ..., "messages": [...], "tools": [...]},
     "response": {"id": "msg_...", "content": [...], "stop_reason": "tool_use", ...}}

(``input``/``output`` are accepted as names for ``request``/``response``.)  Each response that
calls tools is a decision point; with ``include_no_call`` a response without tool calls becomes a
"no call" trace as well.

Every block type of the Messages API (``anthropic.types`` and ``anthropic.types.beta`` of the SDK,
``KNOWN_BLOCKS``) is read: text-bearing blocks become text, results become ``tool`` messages,
opaque ones a placeholder, thinking is dropped.  A block type the API adds later is kept as a
``[<type>]`` placeholder and counted, so a new feature never costs the record.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tooldistill.readers.base import (
    Ignored,
    Quarantined,
    ReadContext,
    SourceFile,
    describe_record,
    read_records,
    record_excerpt,
)
from tooldistill.redact import Redactor
from tooldistill.schema import PERMISSIVE_PARAMETERS, Message, ToolCall, ToolSpec, Trace, validate_trace

#: Block types that carry nothing the student needs; dropped without complaint.  ``fallback``
#: only marks where one model handed the turn to another.
SILENT_BLOCKS = {"thinking", "redacted_thinking", "fallback"}
#: Suffix of the results of server-side tools (``web_search_tool_result``, ...).  In a reply they
#: follow the call inside the same assistant message; they become ``tool`` messages.
SERVER_RESULT_SUFFIX = "_tool_result"
#: Blocks that become a fixed placeholder (documents and search results with text become text).
PLACEHOLDERS = {"image": "[image]", "document": "[document]", "search_result": "[search result]"}
#: Blocks that are tool calls: client tools, server tools (run by Anthropic), MCP connector tools.
CALL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
#: Every top-level content block type of the Messages API, request and response, beta included
#: (from the SDK's ``ContentBlock``/``ContentBlockParam`` unions and their beta versions).
KNOWN_BLOCKS = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "thinking",
        "redacted_thinking",
        "tool_use",
        "tool_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "advisor_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "mcp_tool_listing",
        "container_upload",
        "compaction",
        "tool_addition",
        "tool_removal",
        "tool_reference",
        "fallback",
    }
)
#: Start of the message that stands for a ``compaction`` block: the server's summary of the
#: conversation before it, which is all the model sees of that part.
COMPACTION_PREFIX = "[compaction summary]\n"

UnknownBlock = Callable[[str], None]


@dataclass
class BlockNotes:
    """What a conversion saw besides messages: tool changes, MCP listings, calls, compactions."""

    #: ``("add" | "remove", tool)`` in conversation order, from ``tool_addition``/``tool_removal``
    #: blocks and the ``tool_changes`` of compaction blocks.
    tool_changes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: MCP server name -> the tools (with input schemas) an ``mcp_tool_listing`` block gave.
    mcp_listings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Names of called server tools, and MCP tool name -> server name, in the order seen.
    server_calls: list[str] = field(default_factory=list)
    mcp_calls: dict[str, str] = field(default_factory=dict)
    #: The messages that stand for compaction blocks, in order.
    compactions: list[Message] = field(default_factory=list)


def _text(value: Any, redactor: Redactor) -> str:
    return redactor.text(value) if isinstance(value, str) else ""


def _document_text(block: dict[str, Any], redactor: Redactor, unknown: UnknownBlock) -> str:
    """A document as the model read it: its text when the log holds it, else a placeholder."""
    title = _text(block.get("title"), redactor)
    head = f"[document: {title}]" if title else "[document]"
    source = block.get("source")
    body = ""
    if isinstance(source, dict):
        if source.get("type") == "text":
            body = _text(source.get("data"), redactor)
        elif source.get("type") == "content":
            body = _text_of(source.get("content"), redactor, unknown)
    return f"{head}\n{body}" if body else head


def _search_result_text(block: dict[str, Any], redactor: Redactor, unknown: UnknownBlock) -> str:
    title = _text(block.get("title"), redactor)
    where = _text(block.get("source"), redactor)
    head = " ".join(part for part in ("[search result]", title, f"({where})" if where else "") if part)
    body = _text_of(block.get("content"), redactor, unknown)
    return f"{head}\n{body}" if body else head


def _tool_name(tool: Any) -> str:
    """The name a tool reference (or change) names: ``name``, ``tool_name`` or a definition's."""
    if not isinstance(tool, dict):
        return "?"
    definition = tool.get("definition")
    if isinstance(definition, dict):
        return _tool_name(definition)
    for key in ("name", "tool_name", "server_name", "mcp_server_name"):
        if isinstance(tool.get(key), str):
            return str(tool[key])
    return "?"


def _inline_text(block: dict[str, Any], redactor: Redactor, unknown: UnknownBlock) -> str | None:
    """Text for a block that sits among the text of a message (or inside a tool result).

    None when ``block`` is not such a block (calls, results, compactions are handled apart).
    """
    kind = block.get("type")
    if kind == "text":
        return _text(block.get("text"), redactor)  # citations are pointers into sources: dropped
    if kind == "image":
        return PLACEHOLDERS["image"]
    if kind == "document":
        return _document_text(block, redactor, unknown)
    if kind == "search_result":
        return _search_result_text(block, redactor, unknown)
    if kind == "tool_reference":
        return f"[tool reference: {_tool_name(block)}]"
    if kind == "container_upload":
        return "[container upload]"
    if kind == "browser_state":
        return "[browser state]"
    return None


def _blocks(items: list[Any], redactor: Redactor, unknown: UnknownBlock) -> Iterator[str | dict[str, Any]]:
    """The items of a content list: a string as its redacted text, a block as it is; anything else
    is reported through ``unknown`` (its type name) and left out."""
    for item in items:
        if isinstance(item, str):
            yield redactor.text(item)
        elif isinstance(item, dict):
            yield item
        else:
            unknown(type(item).__name__)


def _text_of(content: Any, redactor: Redactor, unknown: UnknownBlock) -> str:
    """Plain text of a string or a list of content blocks (tool results may nest blocks)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return redactor.text(content)
    parts: list[str] = []
    for block in _blocks(content if isinstance(content, list) else [content], redactor, unknown):
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type")
        inline = _inline_text(block, redactor, unknown)
        if inline is not None:
            parts.append(inline)
        elif kind in SILENT_BLOCKS:
            continue
        else:
            unknown(str(kind))
            parts.append(f"[{kind}]")
    return "\n".join(p for p in parts if p)


def _output_text(item: dict[str, Any], redactor: Redactor) -> str:
    """stdout, stderr and a non-zero exit code of a code-execution result."""
    stdout = _text(item.get("stdout"), redactor)
    if not stdout and "encrypted_stdout" in item:
        stdout = "[encrypted output]"
    stderr = _text(item.get("stderr"), redactor)
    parts = [stdout, f"[stderr] {stderr}" if stderr else ""]
    code = item.get("return_code")
    if isinstance(code, int) and code != 0:
        parts.append(f"[exit code {code}]")
    return "\n".join(p for p in parts if p)


def _server_item_text(item: Any, redactor: Redactor, unknown: UnknownBlock) -> tuple[str, bool]:
    """Text of one item of a server tool's result, and whether it is an error."""
    if isinstance(item, str):
        return redactor.text(item), False
    if not isinstance(item, dict):
        return "", False
    kind = str(item.get("type"))
    if kind.endswith("_error"):
        return _text(item.get("error_code"), redactor) or kind, True
    if kind == "web_search_result":
        title, url = _text(item.get("title"), redactor), _text(item.get("url"), redactor)
        return f"{title} ({url})" if url else title, False
    if kind == "web_fetch_result":
        url = _text(item.get("url"), redactor)
        document = item.get("content")
        body = _document_text(document, redactor, unknown) if isinstance(document, dict) else ""
        return "\n".join(p for p in (f"[fetched {url}]", body) if p), False
    if kind in ("code_execution_result", "bash_code_execution_result", "encrypted_code_execution_result"):
        return _output_text(item, redactor), False
    if kind == "text_editor_code_execution_view_result":
        return _text(item.get("content"), redactor), False
    if kind == "text_editor_code_execution_create_result":
        return ("[file updated]" if item.get("is_file_update") else "[file created]"), False
    if kind == "text_editor_code_execution_str_replace_result":
        lines = item.get("lines")
        text = (
            "\n".join(redactor.text(x) for x in lines if isinstance(x, str))
            if isinstance(lines, list)
            else ""
        )
        return text or "[file edited]", False
    if kind == "tool_search_tool_search_result":
        references = item.get("tool_references")
        names = [_tool_name(r) for r in references] if isinstance(references, list) else []
        return "\n".join(f"[tool reference: {name}]" for name in names), False
    if kind == "advisor_result":
        return _text(item.get("text"), redactor), False
    if kind == "advisor_redacted_result":
        return "[advisor result]", False
    inline = _inline_text(item, redactor, unknown)
    if inline is not None:
        return inline, False
    unknown(kind)
    return f"[{kind}]", False


def _result_message(block: dict[str, Any], redactor: Redactor, unknown: UnknownBlock) -> Message:
    """The ``tool`` message of a result block: client, MCP or server tool."""
    kind = block.get("type")
    content = block.get("content")
    if kind in ("tool_result", "mcp_tool_result"):
        body, failed = _text_of(content, redactor, unknown), bool(block.get("is_error"))
    else:
        items = content if isinstance(content, list) else [content]
        texts: list[str] = []
        failed = False
        for item in items:
            text, error = _server_item_text(item, redactor, unknown)
            texts.append(text)
            failed = failed or error
        body = "\n".join(t for t in texts if t)
        if not body and not items:
            body = f"[{kind}]"
    if failed:
        body = f"[tool error] {body}"
    call_id = block.get("tool_use_id")
    return Message(role="tool", content=body, tool_call_id=call_id if isinstance(call_id, str) else None)


def _note_tool_change(kind: str, block: dict[str, Any], notes: BlockNotes | None) -> str:
    tool = block.get("tool")
    if notes is not None and isinstance(tool, dict):
        notes.tool_changes.append(("add" if kind == "tool_addition" else "remove", tool))
    verb = "added" if kind == "tool_addition" else "removed"
    return f"[tool {verb}: {_tool_name(tool)}]"


def blocks_to_messages(
    role: str,
    content: Any,
    redactor: Redactor,
    unknown: UnknownBlock,
    notes: BlockNotes | None = None,
) -> list[Message]:
    """Messages for one Anthropic message (``role`` user or assistant) in the neutral shape.

    A user message's ``tool_result`` blocks become ``tool`` messages (before its text, as the API
    orders them); an assistant message's call blocks become its ``tool_calls``.  The results of
    server and MCP tools, which follow their call inside the assistant message, become ``tool``
    messages too, and the assistant message is split there: what Claude wrote after a result, it
    wrote having seen it.  A ``compaction`` block becomes a user message holding the summary
    (``COMPACTION_PREFIX``).  Unknown block types are reported through ``unknown`` and kept as a
    ``[<type>]`` placeholder.  ``notes``, when given, collects tool changes, MCP listings and
    calls for the caller.
    """
    if isinstance(content, str):
        return [Message(role="user" if role != "assistant" else "assistant", content=redactor.text(content))]
    assistant = role == "assistant"
    out: list[Message] = []
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []

    def flush() -> None:
        text = "\n".join(t for t in texts if t)
        if assistant:
            if text or calls:
                out.append(Message(role="assistant", content=text, tool_calls=list(calls)))
            out.extend(results)
        else:
            out.extend(results)
            if text:
                out.append(Message(role="user", content=text))
        texts.clear()
        calls.clear()
        results.clear()

    if content is not None and not isinstance(content, list):
        unknown(f"{type(content).__name__} content")  # neither text nor blocks: counted, skipped
    for block in _blocks(content if isinstance(content, list) else [], redactor, unknown):
        if isinstance(block, str):
            texts.append(block)
            continue
        kind = block.get("type")
        is_result = kind in ("tool_result", "mcp_tool_result") or (
            isinstance(kind, str) and kind.endswith(SERVER_RESULT_SUFFIX)
        )
        if assistant and results and not is_result and kind not in SILENT_BLOCKS:
            flush()  # a new step, taken after seeing a server tool's result
        if kind in CALL_BLOCKS and assistant:
            calls.append(tool_call_from_block(block, redactor))
            if notes is not None:
                name = calls[-1].name
                if kind == "server_tool_use":
                    notes.server_calls.append(name)
                elif kind == "mcp_tool_use":
                    notes.mcp_calls.setdefault(name, str(block.get("server_name") or ""))
        elif is_result:
            results.append(_result_message(block, redactor, unknown))
        elif kind == "compaction":
            summary = block.get("content")
            changes = block.get("tool_changes")
            for change in changes if isinstance(changes, list) else []:
                if isinstance(change, dict) and change.get("type") in ("tool_addition", "tool_removal"):
                    _note_tool_change(str(change["type"]), change, notes)
            if isinstance(summary, str) and summary:  # null content: a failed compaction, a no-op
                flush()
                message = Message(role="user", content=COMPACTION_PREFIX + redactor.text(summary))
                out.append(message)
                if notes is not None:
                    notes.compactions.append(message)
        elif kind in ("tool_addition", "tool_removal"):
            texts.append(_note_tool_change(kind, block, notes))
        elif kind == "mcp_tool_listing":
            tools = block.get("tools")
            server = block.get("mcp_server_name")
            if notes is not None and isinstance(server, str) and isinstance(tools, list):
                notes.mcp_listings[server] = [t for t in tools if isinstance(t, dict)]
        elif kind in SILENT_BLOCKS:
            continue
        else:
            inline = _inline_text(block, redactor, unknown)
            if inline is None:
                unknown(str(kind))
                inline = f"[{kind}]"
            texts.append(inline)
    flush()
    return out


def tool_call_from_block(block: dict[str, Any], redactor: Redactor) -> ToolCall:
    arguments = block.get("input")
    if not isinstance(arguments, dict):
        arguments = {"input": arguments} if arguments is not None else {}
    name = block.get("name")
    call_id = block.get("id")
    return ToolCall(
        name=name if isinstance(name, str) and name else "unknown",
        arguments=redactor.value(arguments),
        id=call_id if isinstance(call_id, str) else None,
    )


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------


def _schema(required: tuple[str, ...], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


_STRING: dict[str, Any] = {"type": "string"}
_EDITOR_COMMANDS = ["view", "create", "str_replace", "insert", "undo_edit"]
_EDITOR_SCHEMA = _schema(
    ("command", "path"),
    command={"type": "string", "enum": _EDITOR_COMMANDS},
    path=_STRING,
    file_text=_STRING,
    old_str=_STRING,
    new_str=_STRING,
    insert_line={"type": "integer"},
    insert_text=_STRING,
    view_range={"type": "array", "items": {"type": "integer"}},
)
#: Anthropic-defined tools, which ``tools`` names by ``type`` without an ``input_schema``: the
#: specs they offer, by type without its date, with the input schema their docs define.  A name
#: of None is the tool's own ``name``.  Code execution from 2025-08-25 on is called as two
#: server tools, ``bash_code_execution`` and ``text_editor_code_execution``.
ANTHROPIC_TOOLS: dict[str, list[tuple[str | None, dict[str, Any]]]] = {
    "web_search": [(None, _schema(("query",), query=_STRING))],
    "web_fetch": [(None, _schema(("url",), url=_STRING))],
    "code_execution@20250522": [(None, _schema(("code",), code=_STRING))],
    "code_execution": [
        ("bash_code_execution", _schema(("command",), command=_STRING)),
        ("text_editor_code_execution", _EDITOR_SCHEMA),
    ],
    "tool_search_tool_regex": [(None, _schema(("query",), query=_STRING))],
    "tool_search_tool_bm25": [(None, _schema(("query",), query=_STRING))],
    "bash": [(None, _schema((), command=_STRING, restart={"type": "boolean"}))],
    "text_editor": [(None, _EDITOR_SCHEMA)],
}
#: Types (without date) of the tools Anthropic runs itself; the others are run by the client.
SERVER_TOOL_TYPES = frozenset(
    {
        "web_search",
        "web_fetch",
        "code_execution",
        "tool_search_tool_regex",
        "tool_search_tool_bm25",
        "advisor",
    }
)
_DATED = re.compile(r"^(?P<base>[a-z][a-z0-9_]*?)_(?P<date>\d{8})$")


@dataclass
class ToolSet:
    """The tools of a request as specs, with what the log did not say about them."""

    specs: list[ToolSpec] = field(default_factory=list)
    #: Names whose schema comes from Anthropic's docs, not from the log.
    documented: set[str] = field(default_factory=set)
    #: Names of tools Anthropic runs (server tools).
    server: set[str] = field(default_factory=set)
    #: MCP connector tools: ``server/name``.
    mcp: set[str] = field(default_factory=set)

    _names: set[str] = field(default_factory=set)

    def names(self) -> set[str]:
        return self._names

    def add(self, spec: ToolSpec) -> None:
        """Add a spec unless one of that name is offered already (the first definition wins)."""
        if spec.name not in self._names:
            self.specs.append(spec)
            self._names.add(spec.name)

    def remove(self, name: str) -> None:
        self.specs = [spec for spec in self.specs if spec.name != name]
        self._names.discard(name)


def _typed_tool_specs(tool: dict[str, Any], tools: ToolSet) -> bool:
    """Add the specs of an Anthropic-defined tool (given by ``type``); False if it is not one."""
    kind = tool.get("type")
    if not isinstance(kind, str) or kind == "custom":
        return False
    match = _DATED.match(kind)
    base, date = (match["base"], match["date"]) if match else (kind, "")
    entries = ANTHROPIC_TOOLS.get(f"{base}@{date}", ANTHROPIC_TOOLS.get(base))
    name = tool.get("name")
    if entries is None:
        if not isinstance(name, str) or not name:
            return True  # an MCP toolset or another nameless entry: offers nothing by itself
        tools.add(ToolSpec(name=name, description=str(tool.get("description") or ""), schema_missing=True))
        if base in SERVER_TOOL_TYPES:
            tools.server.add(name)
        return True
    for spec_name, schema in entries:
        spec_name = spec_name or (name if isinstance(name, str) and name else base)
        tools.add(ToolSpec(name=spec_name, description=f"Anthropic {kind} tool", parameters=schema))
        tools.documented.add(spec_name)
        if base in SERVER_TOOL_TYPES:
            tools.server.add(spec_name)
    return True


def _add_tool(tool: Any, tools: ToolSet) -> None:
    if not isinstance(tool, dict):
        return
    schema = tool.get("input_schema")
    if not isinstance(schema, dict) and _typed_tool_specs(tool, tools):
        return
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        return
    tools.add(_spec(name, tool.get("description"), schema))


def _spec(name: str, description: Any, schema: Any) -> ToolSpec:
    """A tool's spec; without a schema object, the permissive one and ``schema_missing``."""
    return ToolSpec(
        name=name,
        description=str(description or ""),
        parameters=schema if isinstance(schema, dict) else dict(PERMISSIVE_PARAMETERS),
        schema_missing=not isinstance(schema, dict),
    )


def tool_specs_from_anthropic(tools: list[Any]) -> list[ToolSpec]:
    """Anthropic tool definitions as specs.

    Anthropic-defined tools (given by ``type``, no ``input_schema``) get the schema their docs
    define (``ANTHROPIC_TOOLS``), or the permissive schema with ``schema_missing`` when there is
    none.
    """
    toolset = ToolSet()
    for tool in tools if isinstance(tools, list) else []:
        _add_tool(tool, toolset)
    return toolset.specs


def request_tools(request: dict[str, Any], notes: BlockNotes) -> ToolSet:
    """The tools in effect at the reply: ``tools``, changed by the conversation's tool changes,
    plus the MCP connector's tools (listed, allowed, or called)."""
    toolset = ToolSet()
    tools = request.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        _add_tool(tool, toolset)
    for action, tool in notes.tool_changes:
        if action == "add" and isinstance(tool.get("definition"), dict):
            _add_tool(tool["definition"], toolset)
        elif action == "remove" and tool.get("type") == "tool_reference":
            toolset.remove(_tool_name(tool))
    for server, listed in notes.mcp_listings.items():
        for tool in listed:
            name, schema = tool.get("name"), tool.get("input_schema")
            if isinstance(name, str) and name:
                toolset.add(_spec(name, tool.get("description"), schema))
                toolset.mcp.add(f"{server}/{name}")
    servers = request.get("mcp_servers")
    for server in servers if isinstance(servers, list) else []:
        config = server.get("tool_configuration") if isinstance(server, dict) else None
        allowed = config.get("allowed_tools") if isinstance(config, dict) else None
        for name in allowed if isinstance(allowed, list) else []:
            if isinstance(name, str) and name:
                toolset.add(ToolSpec(name=name, schema_missing=True))
                toolset.mcp.add(f"{server.get('name')}/{name}")
    for name, server_name in notes.mcp_calls.items():
        toolset.add(ToolSpec(name=name, schema_missing=True))
        toolset.mcp.add(f"{server_name}/{name}")
    for name in notes.server_calls:  # e.g. a server tool of a newer code-execution version
        if name not in toolset.names():
            toolset.add(ToolSpec(name=name, schema_missing=True))
            toolset.server.add(name)
    return toolset


# ---------------------------------------------------------------------------------------------
# The reader
# ---------------------------------------------------------------------------------------------


def system_messages(system: Any, redactor: Redactor, unknown: UnknownBlock) -> list[Message]:
    text = _text_of(system, redactor, unknown)
    return [Message(role="system", content=text)] if text else []


#: Keys of the exchange envelope; a line with none of them is not an exchange at all.
ENVELOPE_KEYS = ("request", "response", "input", "output")


def request_response(record: dict[str, Any]) -> tuple[Any, Any]:
    request = record.get("request", record.get("input"))
    response = record.get("response", record.get("output"))
    if isinstance(request, dict) and isinstance(request.get("body"), dict):
        request = request["body"]
    if isinstance(response, dict) and isinstance(response.get("body"), dict):
        response = response["body"]
    return request, response


def is_exchange(record: dict[str, Any]) -> bool:
    """Whether the line is a request/response record at all (broken or not)."""
    return any(key in record for key in ENVELOPE_KEYS)


#: Reads one exchange: its source, context, line number, record, and the record's request and
#: response (``request_response``).
ExchangeReader = Callable[[SourceFile, ReadContext, int, dict[str, Any], Any, Any], Iterator[Any]]


def read_exchanges(source: SourceFile, context: ReadContext, one: ExchangeReader) -> Iterator[Any]:
    """``read_records`` for a log of request/response pairs: a line that is not an exchange at all
    (``is_exchange``) is ignored as unrecognized; ``one`` reads every other line."""

    def exchange(
        source: SourceFile, context: ReadContext, number: int, record: dict[str, Any]
    ) -> Iterator[Any]:
        if not is_exchange(record):
            yield Ignored(source.uri, describe_record(record), 1, known=False)
            return
        request, response = request_response(record)
        yield from one(source, context, number, record, request, response)

    return read_records(source, context, exchange)


def read_anthropic_log(source: SourceFile, context: ReadContext) -> Iterator[Trace | Quarantined | Ignored]:
    """Traces from a JSONL log of Anthropic Messages API request/response pairs."""
    yield from read_exchanges(source, context, _read_exchange)


def _read_exchange(
    source: SourceFile, context: ReadContext, number: int, record: dict[str, Any], request: Any, response: Any
) -> Iterator[Trace | Quarantined | Ignored]:
    """The trace (or quarantined or ignored record) of one exchange."""
    redactor = context.redactor

    def bad(reason: str, number: int = number, record: dict[str, Any] = record) -> Quarantined:
        return Quarantined(source.uri, number, reason, record_excerpt(record, redactor))

    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        yield bad("no request with a messages list")
        return
    if not isinstance(response, dict):
        yield bad("no response object")
        return
    if response.get("type") == "error" or "error" in response and "content" not in response:
        yield bad(f"response is an API error: {record_excerpt(response.get('error'), redactor)[:200]}")
        return
    unknown_blocks: Counter[str] = Counter()

    def unknown(kind: str) -> None:
        unknown_blocks[kind] += 1

    notes = BlockNotes()
    system = system_messages(request.get("system"), redactor, unknown)
    messages: list[Message] = []
    for turn in request["messages"]:
        if not isinstance(turn, dict):
            unknown("non-object message")
            continue
        messages.extend(
            blocks_to_messages(str(turn.get("role")), turn.get("content"), redactor, unknown, notes)
        )
    history_compactions = len(notes.compactions)
    reply = blocks_to_messages("assistant", response.get("content"), redactor, unknown, notes)
    yield from (
        Ignored(source.uri, f"content block {kind}", n, known=False) for kind, n in unknown_blocks.items()
    )
    calls = [call for message in reply if message.role == "assistant" for call in message.tool_calls]
    if len(notes.compactions) > history_compactions:
        # The server compacted this very request: the reply was written from the summary.
        messages = [notes.compactions[-1]]
    elif notes.compactions:
        # The API drops every message before the last compaction block of the request.
        last = notes.compactions[-1]
        messages = messages[next(i for i, m in enumerate(messages) if m is last) :]
    messages = system + messages
    if not calls and not context.options.include_no_call:
        yield Ignored(source.uri, "reply without tool calls", 1, known=True)
        return
    if not messages:
        yield bad("request has no messages before the reply")
        return
    tools = request_tools(request, notes)
    trace = Trace(
        source_id=str(response.get("id") or f"{source.uri}:{number}"),
        source="anthropic",
        messages=messages,
        tools=tools.specs,
        reference_calls=calls,
        metadata={
            "file": source.uri,
            "line": number,
            "model": response.get("model") or request.get("model"),
            "stop_reason": response.get("stop_reason"),
            "assistant_text": "\n".join(m.content for m in reply if m.role == "assistant" and m.content),
            "usage": response.get("usage"),
            "after_compaction": bool(notes.compactions),
            "server_tools": sorted(tools.server),
            "schema_from_docs": sorted(tools.documented),
            "mcp_tools": sorted(tools.mcp),
            "unknown_blocks": dict(sorted(unknown_blocks.items())),
        },
    )
    problem = validate_trace(trace)
    if problem:
        yield bad(problem)
        return
    yield trace.with_id()
