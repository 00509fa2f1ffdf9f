"""Anthropic Messages API content, and the reader for Anthropic request/response logs.

The content-block conversion here is shared with the Claude Code reader, whose log lines carry
the same blocks.  A log line of the ``anthropic`` format is one exchange::

    {"request": {"model": ..., "system": ..., "messages": [...], "tools": [...]},
     "response": {"id": "msg_...", "content": [...], "stop_reason": "tool_use", ...}}

(``input``/``output`` are accepted as names for ``request``/``response``.)  Each response that
calls tools is a decision point; with ``include_no_call`` a response without tool calls becomes a
"no call" trace as well.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from tooldistill.readers.base import Quarantined, ReadContext, SourceFile, excerpt, read_records
from tooldistill.redact import Redactor
from tooldistill.schema import PERMISSIVE_PARAMETERS, Message, ToolCall, ToolSpec, Trace, validate_trace

#: Block types that carry nothing the student needs; dropped without complaint.
SILENT_BLOCKS = {"thinking", "redacted_thinking"}
#: Results of server-side tools inside an assistant message: dropped, the call itself is kept.
SERVER_RESULT_SUFFIX = "_tool_result"
PLACEHOLDERS = {"image": "[image]", "document": "[document]", "search_result": "[search result]"}

UnknownBlock = Callable[[str], None]


def _text_of(content: Any, redactor: Redactor, unknown: UnknownBlock) -> str:
    """Plain text of a string or a list of content blocks (tool results may nest blocks)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return redactor.text(content)
    parts: list[str] = []
    for block in content if isinstance(content, list) else [content]:
        if isinstance(block, str):
            parts.append(redactor.text(block))
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(redactor.text(str(block.get("text", ""))))
        elif kind in PLACEHOLDERS:
            parts.append(PLACEHOLDERS[kind])
        elif kind in SILENT_BLOCKS:
            continue
        else:
            unknown(str(kind))
    return "\n".join(p for p in parts if p)


def blocks_to_messages(role: str, content: Any, redactor: Redactor, unknown: UnknownBlock) -> list[Message]:
    """Messages for one Anthropic message (``role`` user or assistant) in the neutral shape.

    A user message's ``tool_result`` blocks become ``tool`` messages (before its text, as the API
    orders them); an assistant message's ``tool_use`` blocks become its ``tool_calls``.  Unknown
    block types are reported through ``unknown`` and left out.
    """
    if isinstance(content, str):
        return [Message(role="user" if role != "assistant" else "assistant", content=redactor.text(content))]
    blocks = content if isinstance(content, list) else []
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for block in blocks:
        if not isinstance(block, dict):
            unknown(type(block).__name__)
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(redactor.text(str(block.get("text", ""))))
        elif kind in ("tool_use", "server_tool_use", "mcp_tool_use") and role == "assistant":
            calls.append(tool_call_from_block(block, redactor))
        elif kind == "tool_result" and role != "assistant":
            body = _text_of(block.get("content"), redactor, unknown)
            if block.get("is_error"):
                body = f"[tool error] {body}"
            results.append(Message(role="tool", content=body, tool_call_id=block.get("tool_use_id")))
        elif kind in PLACEHOLDERS:
            texts.append(PLACEHOLDERS[kind])
        elif kind in SILENT_BLOCKS or (isinstance(kind, str) and kind.endswith(SERVER_RESULT_SUFFIX)):
            continue
        else:
            unknown(str(kind))
    text = "\n".join(t for t in texts if t)
    if role == "assistant":
        return [Message(role="assistant", content=text, tool_calls=calls)] if (text or calls) else []
    return [*results, Message(role="user", content=text)] if text else results


def tool_call_from_block(block: dict[str, Any], redactor: Redactor) -> ToolCall:
    arguments = block.get("input")
    if not isinstance(arguments, dict):
        arguments = {"input": arguments} if arguments is not None else {}
    return ToolCall(
        name=str(block.get("name") or "unknown"), arguments=redactor.value(arguments), id=block.get("id")
    )


def tool_specs_from_anthropic(tools: list[Any]) -> list[ToolSpec]:
    """Anthropic tool definitions as specs; server tools (no input_schema) get a permissive schema."""
    specs: list[ToolSpec] = []
    for tool in tools or []:
        if not isinstance(tool, dict) or not tool.get("name"):
            continue
        schema = tool.get("input_schema")
        specs.append(
            ToolSpec(
                name=tool["name"],
                description=str(tool.get("description") or ""),
                parameters=schema if isinstance(schema, dict) else dict(PERMISSIVE_PARAMETERS),
                schema_missing=not isinstance(schema, dict),
            )
        )
    return specs


def system_messages(system: Any, redactor: Redactor, unknown: UnknownBlock) -> list[Message]:
    text = _text_of(system, redactor, unknown)
    return [Message(role="system", content=text)] if text else []


def request_response(record: dict[str, Any]) -> tuple[Any, Any]:
    request = record.get("request", record.get("input"))
    response = record.get("response", record.get("output"))
    if isinstance(request, dict) and isinstance(request.get("body"), dict):
        request = request["body"]
    if isinstance(response, dict) and isinstance(response.get("body"), dict):
        response = response["body"]
    return request, response


def read_anthropic_log(source: SourceFile, context: ReadContext) -> Iterator[Trace | Quarantined]:
    """Traces from a JSONL log of Anthropic Messages API request/response pairs."""
    yield from read_records(source, context, _read_record)


def _read_record(
    source: SourceFile, context: ReadContext, number: int, record: dict[str, Any]
) -> Iterator[Trace | Quarantined]:
    """The trace (or quarantined record) of one log line."""
    redactor = context.redactor
    request, response = request_response(record)

    def bad(reason: str, number: int = number, record: dict[str, Any] = record) -> Quarantined:
        return Quarantined(source.uri, number, reason, excerpt(json.dumps(record), redactor))

    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        yield bad("no request with a messages list")
        return
    if not isinstance(response, dict):
        yield bad("no response object")
        return
    if response.get("type") == "error" or "error" in response and "content" not in response:
        yield bad(f"response is an API error: {json.dumps(response.get('error'))[:200]}")
        return
    unknown_blocks: list[str] = []
    messages = system_messages(request.get("system"), redactor, unknown_blocks.append)
    for turn in request["messages"]:
        if not isinstance(turn, dict):
            unknown_blocks.append("non-object message")
            continue
        messages.extend(
            blocks_to_messages(str(turn.get("role")), turn.get("content"), redactor, unknown_blocks.append)
        )
    reply = blocks_to_messages("assistant", response.get("content"), redactor, unknown_blocks.append)
    if unknown_blocks:
        yield bad(f"unknown content block type {unknown_blocks[0]!r}")
        return
    calls = reply[0].tool_calls if reply else []
    if not calls and not context.options.include_no_call:
        return
    if not messages:
        yield bad("request has no messages before the reply")
        return
    trace = Trace(
        source_id=str(response.get("id") or f"{source.uri}:{number}"),
        source="anthropic",
        messages=messages,
        tools=tool_specs_from_anthropic(request.get("tools") or []),
        reference_calls=calls,
        metadata={
            "file": source.uri,
            "line": number,
            "model": response.get("model") or request.get("model"),
            "stop_reason": response.get("stop_reason"),
            "assistant_text": reply[0].content if reply else "",
            "usage": response.get("usage"),
        },
    )
    problem = validate_trace(trace)
    if problem:
        yield bad(problem)
        return
    yield trace.with_id()
