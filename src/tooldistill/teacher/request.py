"""A trace as an Anthropic Messages API request, and Claude's answer as tool calls.

The trace keeps messages in a neutral, OpenAI-like shape (``tool`` messages, ``tool_calls`` on the
assistant); the Messages API wants alternating ``user``/``assistant`` turns made of content blocks,
tool results inside a ``user`` turn, a top-level ``system``, and tools with an ``input_schema``.

Names and ids are made API-safe here and mapped back on the way out: tool names must match
``^[a-zA-Z0-9_-]{1,128}$`` (BFCL's ``math.factorial`` becomes ``math_factorial``) and ``tool_use``
ids ``^[a-zA-Z0-9_-]+$``.

Prompt caching: with ``cache=True`` the last tool definition and the last system block carry
``cache_control: {"type": "ephemeral"}``, so the shared prefix (tools, then system) is written
once and read by every later request with the same tools.  Claude caches a prefix only above a
minimum length (1,024 tokens for Sonnet and Opus), so small tool sets are not cached; the run
summary reports what was.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tooldistill.schema import Message, ToolCall, Trace, canonical_json, content_hash

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_-]")
_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")
EPHEMERAL = {"type": "ephemeral"}
EMPTY_TEXT = "(empty)"


def api_tool_names(names: Iterable[str]) -> dict[str, str]:
    """API-safe name for each tool name, unique within the request: ``{original: api_name}``."""
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        if name in mapping:
            continue
        safe = _NAME_BAD.sub("_", name)[:128] or "tool"
        candidate, n = safe, 2
        while candidate in used:
            suffix = f"_{n}"
            candidate, n = safe[: 128 - len(suffix)] + suffix, n + 1
        mapping[name] = candidate
        used.add(candidate)
    return mapping


def _input_schema(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The tool's JSON Schema as an ``input_schema``, which must describe an object."""
    schema = dict(parameters)
    if schema.get("type") != "object":
        # A schema for a bare value cannot be an input_schema: wrap it as the one property "value".
        if "properties" in schema and "type" not in schema:
            schema["type"] = "object"
        else:
            return {"type": "object", "properties": {"value": schema}, "required": ["value"]}
    return schema


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text if text.strip() else EMPTY_TEXT}


class _Ids:
    """API-safe, unique ``tool_use`` ids, stable for the same original id within one request."""

    def __init__(self) -> None:
        self.mapping: dict[str, str] = {}
        self.last: list[str] = []

    def new(self, original: str | None) -> str:
        n = len(self.mapping)
        if original and original in self.mapping:
            return self.mapping[original]
        safe = _ID_BAD.sub("_", original or "") or f"toolu_{n:04d}"
        while safe in self.mapping.values():
            safe = f"{safe}_{n}"
        self.mapping[original or f"__anonymous_{n}"] = safe
        self.last.append(safe)
        return safe

    def answer(self, original: str | None) -> str:
        if original and original in self.mapping:
            return self.mapping[original]
        # A tool result without an id answers the oldest unanswered call.
        return self.last.pop(0) if self.last else self.new(original)


def to_messages(
    messages: Iterable[Message], names: Mapping[str, str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Anthropic messages) for a trace's neutral messages."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    ids = _Ids()

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        if message.role == "system":
            if message.content.strip():
                system.append(message.content)
        elif message.role == "user":
            add("user", [_text_block(message.content)])
        elif message.role == "assistant":
            blocks: list[dict[str, Any]] = []
            if message.content.strip() or not message.tool_calls:
                blocks.append(_text_block(message.content))
            for call in message.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": ids.new(call.id),
                        "name": names.get(call.name, _NAME_BAD.sub("_", call.name)),
                        "input": call.arguments,
                    }
                )
            add("assistant", blocks)
        else:  # tool result
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": ids.answer(message.tool_call_id),
                        "content": message.content if message.content.strip() else EMPTY_TEXT,
                    }
                ],
            )
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [_text_block("(conversation continues)")]})
    return system, turns


def build_params(
    trace: Trace,
    *,
    model: str,
    max_tokens: int = 1024,
    temperature: float | None = None,
    system_prompt: str | None = None,
    cache: bool = True,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(Messages API params, ``{api tool name: original name}``) for one trace."""
    names = api_tool_names(t.name for t in trace.tools)
    system_texts, messages = to_messages(trace.messages, names)
    if system_prompt:
        system_texts.insert(0, system_prompt)
    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if temperature is not None:
        params["temperature"] = temperature
    if system_texts:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text} for text in system_texts]
        if cache:
            blocks[-1]["cache_control"] = dict(EPHEMERAL)
        params["system"] = blocks
    if trace.tools:
        tools = [
            {"name": names[t.name], "description": t.description, "input_schema": _input_schema(t.parameters)}
            for t in trace.tools
        ]
        if cache:
            tools[-1]["cache_control"] = dict(EPHEMERAL)
        params["tools"] = tools
    return params, {api: original for original, api in names.items()}


def prefix_key(params: Mapping[str, Any]) -> str:
    """Hash of what prompt caching shares between requests: model, tools and system."""
    return content_hash([params.get("model"), params.get("tools"), params.get("system")], 16)


def request_key(params: Mapping[str, Any], sample: int) -> str:
    """The content address of one request: its params and which sample it is.

    Also the batch ``custom_id`` (at most 64 characters of ``[a-zA-Z0-9_-]``)."""
    return f"{content_hash(params, 40)}-{sample}"


def calls_from_content(content: Iterable[Mapping[str, Any]], names: Mapping[str, str]) -> list[ToolCall]:
    """The ``tool_use`` blocks of an answer as tool calls, with the trace's own tool names."""
    calls = []
    for block in content:
        if block.get("type") != "tool_use":
            continue
        arguments = block.get("input")
        calls.append(
            ToolCall(
                name=names.get(str(block.get("name")), str(block.get("name"))),
                arguments=arguments if isinstance(arguments, dict) else {"value": arguments},
                id=block.get("id"),
            )
        )
    return calls


def text_from_content(content: Iterable[Mapping[str, Any]]) -> str:
    return "".join(str(b.get("text", "")) for b in content if b.get("type") == "text")


def params_size(params: Mapping[str, Any]) -> int:
    """Bytes of the request body, for the Message Batches size limit."""
    return len(canonical_json(params).encode("utf-8"))
