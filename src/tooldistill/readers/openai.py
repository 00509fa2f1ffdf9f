"""OpenAI chat-completions logs: one request/response pair per JSONL line.

::

    {"request": {"model": ..., "messages": [...], "tools": [{"type": "function", "function": {...}}]},
     "response": {"id": "chatcmpl-...", "choices": [{"message": {"tool_calls": [...]}}]}}

The legacy ``functions``/``function_call`` fields are read too.  The first choice's calls are the
reference; when a response holds several choices (``n`` > 1) every choice is also kept as a teacher
sample, which feeds the consistency ceiling.

Responses API exchanges (``request.input``, ``response.output`` items, ``"object": "response"``)
are a different format and are not read: they are counted as unrecognized lines, so a file of
them says so in the ingest summary instead of quarantining every line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tooldistill.readers.anthropic import read_exchanges
from tooldistill.readers.base import (
    Ignored,
    Quarantined,
    ReadContext,
    SourceFile,
    record_excerpt,
)
from tooldistill.redact import Redactor
from tooldistill.schema import PERMISSIVE_PARAMETERS, Message, ToolCall, ToolSpec, Trace, validate_trace


class _BadRecord(ValueError):
    pass


def _content_text(content: Any, redactor: Redactor) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return redactor.text(content)
    parts: list[str] = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, dict):
            kind = part.get("type")
            if kind in ("text", "input_text", "output_text"):
                parts.append(redactor.text(str(part.get("text", ""))))
            elif kind in ("image_url", "input_image", "image"):
                parts.append("[image]")
            elif kind in ("input_audio", "audio"):
                parts.append("[audio]")
            elif kind in ("file", "input_file"):
                parts.append("[file]")
            elif kind == "refusal":
                parts.append(redactor.text(str(part.get("refusal", ""))))
            else:
                raise _BadRecord(f"unknown content part type {kind!r}")
        elif isinstance(part, str):
            parts.append(redactor.text(part))
    return "\n".join(p for p in parts if p)


def _calls(message: dict[str, Any], redactor: Redactor) -> list[ToolCall]:
    raw_calls = message.get("tool_calls") or []
    if not raw_calls and isinstance(message.get("function_call"), dict):
        raw_calls = [{"function": message["function_call"]}]
    calls: list[ToolCall] = []
    for raw in raw_calls:
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise _BadRecord("tool call without a function name")
        arguments: Any = function.get("arguments")
        if arguments is None or isinstance(arguments, str) and not arguments.strip():
            arguments = {}  # a tool without parameters is called with "" (or nothing)
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as error:
                raise _BadRecord(
                    f"arguments of {function['name']!r} are not valid JSON: {error.msg}"
                ) from error
            except RecursionError as error:
                raise _BadRecord(f"arguments of {function['name']!r} are nested too deeply") from error
        if not isinstance(arguments, dict):
            raise _BadRecord(f"arguments of {function['name']!r} are not a JSON object")
        call_id = raw.get("id")
        calls.append(
            ToolCall(
                name=str(function["name"]),
                arguments=redactor.value(arguments),
                id=call_id if isinstance(call_id, str) else None,
            )
        )
    return calls


def messages_from_openai(items: list[Any], redactor: Redactor) -> list[Message]:
    """Chat-completions messages in the neutral shape; raises ``_BadRecord`` on a broken one."""
    messages: list[Message] = []
    for item in items:
        if not isinstance(item, dict):
            raise _BadRecord("a message is not an object")
        role = item.get("role")
        if role in ("system", "developer"):
            messages.append(Message(role="system", content=_content_text(item.get("content"), redactor)))
        elif role == "user":
            messages.append(Message(role="user", content=_content_text(item.get("content"), redactor)))
        elif role == "assistant":
            messages.append(
                Message(
                    role="assistant",
                    content=_content_text(item.get("content"), redactor),
                    tool_calls=_calls(item, redactor),
                )
            )
        elif role in ("tool", "function"):
            messages.append(
                Message(
                    role="tool",
                    content=_content_text(item.get("content"), redactor),
                    tool_call_id=item.get("tool_call_id") or item.get("name"),
                )
            )
        else:
            raise _BadRecord(f"unknown message role {role!r}")
    return messages


def _function_spec(function: dict[str, Any]) -> ToolSpec:
    """The tool a named function definition (``tools[].function`` or legacy ``functions[]``) offers."""
    parameters = function.get("parameters")
    return ToolSpec(
        name=function["name"],
        description=str(function.get("description") or ""),
        parameters=parameters if isinstance(parameters, dict) else dict(PERMISSIVE_PARAMETERS),
    )


def tool_specs_from_openai(request: dict[str, Any]) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    for tool in request.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name"):
            specs.append(_function_spec(function))
    for function in request.get("functions") or []:
        if isinstance(function, dict) and function.get("name"):
            specs.append(_function_spec(function))
    return specs


def read_openai_log(source: SourceFile, context: ReadContext) -> Iterator[Trace | Quarantined | Ignored]:
    """Traces from a JSONL log of OpenAI chat-completions request/response pairs."""
    yield from read_exchanges(source, context, _read_exchange)


def _is_responses_api(request: Any, response: Any) -> bool:
    """A Responses API exchange: ``input`` items instead of ``messages``, ``output`` items."""
    if isinstance(response, dict) and (response.get("object") == "response" or "output" in response):
        return not isinstance(response.get("choices"), list)
    return isinstance(request, dict) and "input" in request and "messages" not in request


def _read_exchange(
    source: SourceFile, context: ReadContext, number: int, record: dict[str, Any], request: Any, response: Any
) -> Iterator[Trace | Quarantined | Ignored]:
    """The trace (or quarantined or ignored record) of one exchange."""
    redactor = context.redactor
    if _is_responses_api(request, response):
        yield Ignored(source.uri, "Responses API exchange (not read)", 1, known=False)
        return

    def bad(reason: str) -> Quarantined:
        return Quarantined(source.uri, number, reason, record_excerpt(record, redactor))

    try:
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            raise _BadRecord("no request with a messages list")
        if (
            not isinstance(response, dict)
            or not isinstance(response.get("choices"), list)
            or not response["choices"]
        ):
            raise _BadRecord("no response with choices")
        messages = messages_from_openai(request["messages"], redactor)
        samples = []
        for choice in response["choices"]:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                raise _BadRecord("a choice has no message")
            samples.append(_calls(message, redactor))
    except _BadRecord as error:
        yield bad(str(error))
        return
    calls = samples[0]
    if not calls and not context.options.include_no_call:
        yield Ignored(source.uri, "reply without tool calls", 1, known=True)
        return
    if not messages:
        yield bad("request has no messages before the reply")
        return
    first = response["choices"][0]
    trace = Trace(
        source_id=str(response.get("id") or f"{source.uri}:{number}"),
        source="openai",
        messages=messages,
        tools=tool_specs_from_openai(request),
        reference_calls=calls,
        teacher_samples=samples if len(samples) > 1 else [],
        metadata={
            "file": source.uri,
            "line": number,
            "model": response.get("model") or request.get("model"),
            "finish_reason": first.get("finish_reason"),
            "assistant_text": _content_text(first["message"].get("content"), redactor)
            if not isinstance(first["message"].get("content"), list)
            else "",
            "usage": response.get("usage"),
        },
    )
    problem = validate_trace(trace)
    if problem:
        yield bad(problem)
        return
    yield trace.with_id()
