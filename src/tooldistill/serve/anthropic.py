"""Claude's Messages API on top of chat completions: vLLM's translation, and what the student needs
around it.

The translation itself is vLLM's (``vllm.entrypoints.anthropic``, installed with the engine): its
pydantic protocol models validate a request, ``AnthropicServingMessages.to_chat_completion_request``
turns it into a chat-completions request, and its two converters turn the answer back — a whole
response into an Anthropic message, a chat-completions event stream into Anthropic's event stream.
The converters are methods that use nothing of their instance, and we call them without one: the
one place this module leans on vLLM's internals (``tests/test_gateway.py`` breaks at once if an
upgrade changes that).

Ours, around it:

- **accepted and ignored** (``IGNORED``): what Claude's API has and a student cannot honour —
  extended thinking, context management, output configuration, metadata, service tier, caching
  hints, server tools (no ``input_schema``).  Never a 400; counted in ``Translation.ignored``.
- **placeholders**: images, documents and block kinds the student cannot read become a short text
  block saying what was there (``[image omitted: ...]``), counted in ``Translation.placeholders``.
- ``tool_result`` with ``is_error``: its text is marked ``Error:`` (the converter would drop the flag).
- content that is only text parts becomes one string, as the student's template renders it.
- ``tool_use`` ids in answers are ``toolu_…``; a call whose arguments are not a JSON object (a reply
  cut at ``max_tokens`` inside a call) becomes text, never a call an agent would run.
- errors in Anthropic's shape (:class:`ApiError`), and a ``ping`` event after ``message_start``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from tooldistill.request import text_of

#: Request fields of Claude's API that the student cannot honour: accepted, ignored.
IGNORED = (
    "thinking",
    "context_management",
    "output_config",
    "metadata",
    "service_tier",
    "container",
    "mcp_servers",
    "betas",
    "cache_control",
    "inference_geo",
)
#: Request fields passed on to the chat-completions request.
_CHAT_FIELDS = (
    "model",
    "messages",
    "max_tokens",
    "stop",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)
_BLOCKS = {"text", "tool_use", "tool_result"}

#: HTTP status -> Anthropic error type.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "api_error",
    529: "overloaded_error",
}


class ApiError(Exception):
    """An error answer: its HTTP status and message (rendered in either API's shape)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def anthropic(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def openai(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "api_error")
        return {"error": {"message": self.message, "type": kind, "code": self.status}}


@dataclass
class Translation:
    """A Messages request as a chat-completions request, and what was left out of it."""

    chat: dict[str, Any]
    #: The requested model name, as the client wrote it.
    model: str
    stream: bool = False
    ignored: dict[str, int] = field(default_factory=dict)
    placeholders: dict[str, int] = field(default_factory=dict)


def _placeholder(block: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    kind = str(block.get("type") or "unknown")
    counts[kind] = counts.get(kind, 0) + 1
    raw_source = block.get("source")
    source: dict[str, Any] = raw_source if isinstance(raw_source, dict) else {}
    what = block.get("title") or source.get("media_type") or source.get("type") or ""
    size = len(str(source.get("data") or source.get("text") or ""))
    detail = f"{what}, {size:,} characters" if size else str(what)
    return {
        "type": "text",
        "text": f"[{kind} omitted: the student reads text only{'; ' + detail if detail else ''}]",
    }


def _clean_block(block: Any, counts: dict[str, int]) -> Any:
    if not isinstance(block, dict):
        return block
    kind = block.get("type")
    if kind in ("thinking", "redacted_thinking"):
        return None  # the student does not think aloud; Claude's thinking is not its to continue
    if kind not in _BLOCKS:
        return _placeholder(block, counts)
    block = {k: v for k, v in block.items() if k != "cache_control"}
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            parts = [_clean_block(b, counts) for b in content]
            content = [p for p in parts if p is not None]
        if block.pop("is_error", None):
            text = text_of(content) if content is not None else ""
            content = f"Error: {text}" if text else "Error"
        block["content"] = content
    return block


def _clean(body: dict[str, Any], ignored: dict[str, int], placeholders: dict[str, int]) -> dict[str, Any]:
    """The body without what the student cannot honour; counts what went."""
    body = dict(body)
    for name in IGNORED:
        if name in body:
            ignored[name] = ignored.get(name, 0) + 1
            body.pop(name)
    tools = body.get("tools")
    if isinstance(tools, list):
        kept = [t for t in tools if not isinstance(t, dict) or "input_schema" in t]
        if len(kept) != len(tools):
            ignored["server_tools"] = len(tools) - len(kept)
        body["tools"] = [
            {k: v for k, v in t.items() if k not in ("cache_control", "type")} if isinstance(t, dict) else t
            for t in kept
        ]
    system = body.get("system")
    if isinstance(system, list):
        body["system"] = [b for b in (_clean_block(b, placeholders) for b in system) if b is not None]
    messages = body.get("messages")
    if isinstance(messages, list):
        cleaned = []
        for message in messages:
            if isinstance(message, dict) and isinstance(message.get("content"), list):
                blocks = [_clean_block(b, placeholders) for b in message["content"]]
                message = {**message, "content": [b for b in blocks if b is not None]}
            cleaned.append(message)
        body["messages"] = cleaned
    return body


def _validation_message(error: Any) -> str:
    errors = error.errors() if hasattr(error, "errors") else []
    if not errors:
        return str(error)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg')}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


def to_chat(body: Any, *, vllm: bool = True, count_only: bool = False) -> Translation:
    """A Messages request (parsed JSON) as a chat-completions request; raises ``ApiError(400)``.

    ``vllm``: the student is a vLLM engine (it takes ``continuous_usage_stats``, so a stream's
    ``message_start`` carries the prompt's tokens).  ``count_only``: a ``count_tokens`` body
    (no ``max_tokens``)."""
    from pydantic import ValidationError
    from vllm.entrypoints.anthropic.protocol import AnthropicCountTokensRequest, AnthropicMessagesRequest
    from vllm.entrypoints.anthropic.serving import AnthropicServingMessages

    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    ignored: dict[str, int] = {}
    placeholders: dict[str, int] = {}
    cleaned = _clean(body, ignored, placeholders)
    model_cls = AnthropicCountTokensRequest if count_only else AnthropicMessagesRequest
    try:
        parsed = model_cls.model_validate(cleaned)
        chat_request = AnthropicServingMessages.to_chat_completion_request(parsed)
    except ValidationError as error:
        raise ApiError(400, _validation_message(error)) from None
    except ValueError as error:  # e.g. a tool_removal naming an undeclared tool
        raise ApiError(400, str(error)) from None
    dumped = chat_request.model_dump(exclude_unset=True)
    chat = {k: dumped[k] for k in _CHAT_FIELDS if dumped.get(k) is not None}
    for message in chat.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" for p in content
        ):
            message["content"] = text_of(content)
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True, **({"continuous_usage_stats": True} if vllm else {})}
    if "tools" not in chat:
        chat.pop("tool_choice", None)
    return Translation(chat, str(body.get("model") or ""), bool(chat.get("stream")), ignored, placeholders)


_ID = re.compile(r"[^A-Za-z0-9]")


def tool_use_id(call_id: str | None) -> str:
    """An Anthropic tool-use id (``toolu_…``) for a chat-completions call id."""
    if call_id and call_id.startswith("toolu_"):
        return call_id
    rest = _ID.sub("", call_id or "") or uuid.uuid4().hex
    return f"toolu_{rest[-24:]}"


def _object_arguments(arguments: Any) -> bool:
    try:
        return isinstance(json.loads(arguments), dict)
    except (TypeError, ValueError):
        return False


def from_chat(response: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """A chat-completions response as an Anthropic message (``model``: the name to answer with)."""
    from vllm.entrypoints.anthropic.serving import AnthropicServingMessages
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse

    response = json.loads(json.dumps(response))  # a copy to repair
    choices = response.get("choices") or []
    if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
        raise ApiError(500, "the student's answer has no message")
    message = choices[0]["message"]
    calls, broken = [], []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        if _object_arguments(function.get("arguments")):
            calls.append({**call, "id": tool_use_id(call.get("id"))})
        else:
            broken.append(f"[unfinished tool call {function.get('name')}: {function.get('arguments')}]")
    message["tool_calls"] = calls
    if broken:
        message["content"] = "\n".join([message.get("content") or "", *broken]).strip()
    usage = response.get("usage") or {}
    response["usage"] = {
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "total_tokens": int(usage.get("total_tokens") or 0),
    }
    try:
        parsed = ChatCompletionResponse.model_validate(response)
    except ValueError as error:
        raise ApiError(500, f"the student's answer is not a chat completion: {error}") from None
    converted = AnthropicServingMessages.messages_full_converter(cast(Any, None), parsed)
    answer = converted.model_dump(exclude_none=True)
    answer["id"] = (
        answer["id"] if str(answer.get("id", "")).startswith("msg_") else f"msg_{uuid.uuid4().hex[:24]}"
    )
    answer["type"], answer["role"] = "message", "assistant"
    answer.setdefault("stop_sequence", None)
    if model:
        answer["model"] = model
    return answer


def _events(block: str) -> list[str]:
    """The ``data:`` payloads of a piece of an event stream (one piece may hold several)."""
    return [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]


async def _chat_chunks(chunks: AsyncIterator[str], state: dict[str, Any]) -> AsyncGenerator[str, None]:
    """Chat-completions events as the converter takes them (one ``data: …`` each), with call ids
    made Anthropic's, and a closing usage event where the student sent none."""
    usage_seen = False
    async for piece in chunks:
        for data in _events(piece):
            if data == "[DONE]":
                if not usage_seen:
                    yield "data: " + json.dumps(
                        {"id": state.get("id", "chatcmpl"), "object": "chat.completion.chunk",
                         "created": 0, "model": state.get("model", ""), "choices": [],
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
                    )  # fmt: skip
                yield "data: [DONE]"
                return
            chunk = json.loads(data)
            state.setdefault("id", chunk.get("id"))
            state.setdefault("model", chunk.get("model"))
            if not chunk.get("choices"):
                usage_seen = True
            for choice in chunk.get("choices") or []:
                for call in (choice.get("delta") or {}).get("tool_calls") or []:
                    if call.get("id"):
                        call["id"] = tool_use_id(call["id"])
            yield "data: " + json.dumps(chunk)
    yield "data: [DONE]"


async def stream_events(chunks: AsyncIterator[str], model: str | None = None) -> AsyncIterator[str]:
    """A chat-completions event stream as Anthropic's: ``message_start``, ``ping``, content blocks
    with ``text_delta`` / ``input_json_delta``, ``message_delta`` (stop reason, usage),
    ``message_stop``; an ``error`` event when the student fails mid-way."""
    from vllm.entrypoints.anthropic.serving import AnthropicServingMessages

    state: dict[str, Any] = {}
    converter = AnthropicServingMessages.message_stream_converter(
        cast(Any, None), _chat_chunks(chunks, state)
    )
    async for event in converter:
        if event.startswith("event: message_start"):
            head, _, data = event.partition("data: ")
            value = json.loads(data)
            message = value.get("message") or {}
            if not str(message.get("id", "")).startswith("msg_"):
                message["id"] = f"msg_{uuid.uuid4().hex[:24]}"
            if model:
                message["model"] = model
            event = f"{head}data: {json.dumps(value)}\n\n"
        yield event
        if event.startswith("event: message_start"):
            yield 'event: ping\ndata: {"type": "ping"}\n\n'


def error_event(error: ApiError) -> str:
    return f"event: error\ndata: {json.dumps(error.anthropic())}\n\n"


def models_page(models: list[dict[str, Any]]) -> dict[str, Any]:
    """``/v1/models`` in Anthropic's list shape."""
    data = [
        {
            "type": "model",
            "id": m["id"],
            "display_name": m["id"],
            "created_at": "1970-01-01T00:00:00Z",
        }
        for m in models
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
