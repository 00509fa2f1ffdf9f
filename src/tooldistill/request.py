"""What the student is sent: one place that evaluation, the optimizer, fine-tuning and the gateway share.

A request has two parts, built separately so that a server can apply the second to a request a
client built itself:

- the **client's request** (:func:`trace_request`): the trace's conversation and tools as an
  OpenAI chat-completions request, as an agent talking to the student would send it;
- the **learned prompt** (:func:`apply_prompt`): the prompt artifact's system text in front of the
  client's own system prompt, and its demonstrations after the system prompt, before the
  conversation.

``build_request`` is the two in a row.  The context policy (``context.Fitter``) comes after both,
wherever the request is built, so a served student sees what the measured one saw.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from tooldistill.schema import Trace

_TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")


def safe_tool_name(name: str) -> str:
    """A tool name every chat API accepts (``[A-Za-z0-9_-]{1,64}``): dots and others become ``_``."""
    return _TOOL_NAME.sub("_", name)[:64]


def trace_request(trace: Trace, model: str, temperature: float, max_tokens: int) -> dict[str, Any]:
    """The chat-completions request for one trace without any learned prompt: the trace's messages
    (native tool calls and results) and its tools (names made API-safe)."""
    messages: list[dict[str, Any]] = []
    for message in trace.messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id or f"call_{index}",
                    "type": "function",
                    "function": {"name": safe_tool_name(call.name), "arguments": json.dumps(call.arguments)},
                }
                for index, call in enumerate(message.tool_calls)
            ]
        if message.role == "tool":
            item["tool_call_id"] = message.tool_call_id or "call_0"
        messages.append(item)
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    tools = [
        {
            "type": "function",
            "function": {
                "name": safe_tool_name(t.name),
                "description": t.description,
                "parameters": t.parameters,
            },
        }
        for t in trace.tools
    ]
    if tools:
        request["tools"] = tools
        request["tool_choice"] = "auto"
    return request


def apply_prompt(
    request: dict[str, Any], system: str | None, demos: Sequence[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``request`` (a chat-completions request) with a learned prompt applied; the original is not
    changed.

    - ``system``: leads the system prompt.  The client's own system messages follow it in one
      message, each after a blank line (wherever they stood in the conversation).
    - ``demos`` (few-shot chat messages): right after the system prompt, before the conversation.
    """
    messages = [dict(m) for m in request.get("messages") or []]
    if system:
        head: dict[str, Any] = {"role": "system", "content": system}
        rest = []
        for message in messages:
            if message.get("role") == "system":
                head["content"] = f"{head['content']}\n\n{text_of(message.get('content'))}"
            else:
                rest.append(message)
        messages = [head, *rest]
    if demos:
        at = 1 if messages and messages[0].get("role") == "system" else 0
        messages[at:at] = [dict(d) for d in demos]
    return {**request, "messages": messages}


def text_of(content: Any) -> str:
    """A message's content as one string: text parts joined by newlines (what a text-only chat
    template renders), anything else as JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text") or "") for p in content)
    return json.dumps(content, ensure_ascii=False)


def build_request(
    trace: Trace,
    model: str,
    system: str | None,
    temperature: float,
    max_tokens: int,
    demos: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The chat-completions request for one trace with a learned prompt (see the module text)."""
    return apply_prompt(trace_request(trace, model, temperature, max_tokens), system, demos)
