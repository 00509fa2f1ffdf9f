"""The gateway: one endpoint that speaks Claude's Messages API and OpenAI's chat completions, and
applies what a run learned to both, in front of the student.

Routes (the same on the Ray Serve application and in front of an endpoint that is already up):

- ``POST /v1/messages`` (and ``?beta=true``), streaming or not; ``POST /v1/messages/count_tokens``;
- ``POST /v1/chat/completions``;
- ``GET /v1/models`` (Anthropic's list shape when the request carries ``anthropic-version``),
  ``GET /v1/models/{model}``.

Every request goes the same way: the API's body becomes a chat-completions request
(``serve.anthropic`` for Messages), its model name is resolved (:class:`Routing`), the learned
prompt and the context policy are applied (``serve.learned.Learned.prepare``), the student answers
(a :class:`Backend`), and the answer goes back in the API it came in.  A request that cannot fit
the window even after the context policy is a 413 naming both token counts; a student whose queue
is full is a 529 ``overloaded_error`` (429 for chat completions).

The API key, when one is set, is checked before anything else: ``x-api-key`` or
``Authorization: Bearer``, compared by SHA-256 (only the hash is ever passed around).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tooldistill.context import DoesNotFit
from tooldistill.serve.anthropic import ApiError, error_event, from_chat, models_page, stream_events, to_chat
from tooldistill.serve.keys import key_sha256
from tooldistill.serve.learned import Learned

log = logging.getLogger("tooldistill.gateway")


class Routing(BaseModel):
    """Which served model answers a requested model name.

    A served name is answered by itself; otherwise the first pattern of ``aliases`` (shell-style:
    ``claude-haiku-*``) that matches names the served model; otherwise ``default``, or 404 when
    ``default`` is null.  By default every name is answered by the student (Claude Code asks for
    ``claude-opus-…`` and ``claude-haiku-…``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aliases: dict[str, str] = Field(default_factory=dict)
    #: The served model for any other name; None: the first served model; "" refuses them (404).
    default: str | None = None

    def resolve(self, requested: str | None, served: list[str]) -> str:
        if requested and (requested in served or requested.split(":")[0] in served):
            return requested
        for pattern, target in self.aliases.items():
            if requested and fnmatch.fnmatchcase(requested, pattern):
                return target
        if self.default == "" or not served:
            raise ApiError(404, f"model {requested!r} is not served here (served: {', '.join(served)})")
        return self.default or served[0]


class GatewaySettings(BaseModel):
    """What the gateway applies: the learned student, the model routing, the key's hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learned: Learned = Field(default_factory=Learned)
    routing: Routing = Field(default_factory=Routing)
    api_key_sha256: str | None = None


class Backend(Protocol):
    """The student behind the gateway: a chat-completions request in, an answer out."""

    #: True when the student is a vLLM engine (it takes vLLM's extra request fields).
    vllm: bool

    async def chat(self, body: dict[str, Any], request: Any) -> dict[str, Any] | AsyncIterator[str]:
        """The answer (a JSON object), or for ``stream: true`` its event stream (``data: …``
        pieces); raises ``ApiError`` with the status to answer."""
        ...

    async def models(self) -> list[dict[str, Any]]:
        """What is served: OpenAI model objects (``id`` at least)."""
        ...


def key_matches(headers: Any, expected_sha256: str) -> bool:
    """Whether ``x-api-key`` or a Bearer token hashes to ``expected_sha256``."""
    candidates = [headers.get("x-api-key") or ""]
    header = headers.get("authorization") or ""
    if header.lower().startswith("bearer "):
        candidates.append(header[7:].strip())
    return any(c and hmac.compare_digest(key_sha256(c), expected_sha256) for c in candidates)


def install_key_check(app: Any, expected_sha256: str) -> None:
    """Refuse every request without the key (401 in the shape of the API it asked)."""

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        if not key_matches(request.headers, expected_sha256):
            error = ApiError(
                401, "missing or invalid API key (send it as x-api-key or Authorization: Bearer)"
            )
            return _error_response(request.url.path, error)
        return await call_next(request)


def _error_response(path: str, error: ApiError) -> Response:
    anthropic = path.startswith("/v1/messages")
    status = error.status if anthropic or error.status != 529 else 429
    return JSONResponse(error.anthropic() if anthropic else error.openai(), status_code=status)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except ValueError as error:
        raise ApiError(400, f"the request body is not JSON: {error}") from None


class Gateway:
    """The routes' logic, for any backend (see the module text)."""

    def __init__(self, backend: Backend, settings: GatewaySettings) -> None:
        self.backend, self.settings = backend, settings
        self.learned = settings.learned

    # helpers ----------------------------------------------------------------------------------

    async def _served(self) -> list[str]:
        return [str(m["id"]) for m in await self.backend.models()]

    async def _prepare(self, chat: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The request the student is sent, and response headers that say what was changed."""
        chat = dict(chat)
        chat["model"] = self.settings.routing.resolve(chat.get("model"), await self._served())
        try:
            # tokenizing a long request takes milliseconds to a second: not on the event loop
            prepared = await asyncio.to_thread(self.learned.prepare, chat)
        except DoesNotFit as error:
            raise ApiError(
                413,
                f"the request does not fit the student's window: {error.tokens:,} prompt tokens after "
                f"every cut of the context policy, {error.budget:,} allowed ({error.window:,}-token window)",
            ) from None
        if prepared.tools_shortened:
            log.info(
                "tool descriptions shortened to %s characters to fit the window", prepared.tools_shortened
            )
        if prepared.cut:
            log.info(
                "context policy cut %s of %s tokens",
                prepared.cut["tokens_before"] - prepared.cut["tokens_after"],
                prepared.cut["tokens_before"],
            )
        headers = {}
        if prepared.tools_shortened:
            headers["tooldistill-tools-shortened"] = "/".join(str(n) for n in prepared.tools_shortened)
        if prepared.cut:
            headers["tooldistill-context-cut"] = str(
                prepared.cut["tokens_before"] - prepared.cut["tokens_after"]
            )
        return prepared.request, headers

    # routes -----------------------------------------------------------------------------------

    async def messages(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            translation = to_chat(body, vllm=self.backend.vllm)
            chat, headers = await self._prepare(translation.chat)
            if translation.placeholders:
                headers["tooldistill-placeholders"] = str(sum(translation.placeholders.values()))
            if translation.ignored:
                headers["tooldistill-ignored"] = ",".join(sorted(translation.ignored))
            answer = await self.backend.chat(chat, request)
            if translation.stream:
                stream = answer if not isinstance(answer, dict) else _one_chunk_stream(answer)
                return StreamingResponse(
                    _guarded(stream_events(stream, translation.model)),
                    media_type="text/event-stream",
                    headers=headers,
                )
            assert isinstance(answer, dict)
            return JSONResponse(from_chat(answer, translation.model), headers=headers)
        except ApiError as error:
            return _error_response("/v1/messages", error)

    async def count_tokens(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            translation = to_chat(body, vllm=self.backend.vllm, count_only=True)
            tokens = await asyncio.to_thread(self.learned.count, translation.chat)
            return JSONResponse({"input_tokens": tokens})
        except ApiError as error:
            return _error_response("/v1/messages", error)

    async def chat_completions(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ApiError(400, "a chat-completions request needs a 'messages' list")
            chat, headers = await self._prepare(body)
            answer = await self.backend.chat(chat, request)
            if isinstance(answer, dict):
                return JSONResponse(answer, headers=headers)
            return StreamingResponse(_passthrough(answer), media_type="text/event-stream", headers=headers)
        except ApiError as error:
            return _error_response("/v1/chat/completions", error)

    async def models(self, request: Request) -> Response:
        try:
            listed = await self.backend.models()
        except ApiError as error:
            return _error_response(request.url.path, error)
        if request.headers.get("anthropic-version"):
            return JSONResponse(models_page(listed))
        return JSONResponse({"object": "list", "data": listed})

    async def model(self, request: Request) -> Response:
        name = request.path_params.get("model")
        try:
            listed = await self.backend.models()
        except ApiError as error:
            return _error_response(request.url.path, error)
        for item in listed:
            if item["id"] == name:
                if request.headers.get("anthropic-version"):
                    return JSONResponse(models_page([item])["data"][0])
                return JSONResponse(item)
        return _error_response(request.url.path, ApiError(404, f"model {name!r} is not served here"))


async def _one_chunk_stream(answer: dict[str, Any]) -> AsyncIterator[str]:
    """A whole answer as a chat-completions event stream (a backend that could not stream)."""
    for chunk in chunks_of(answer):
        yield "data: " + json.dumps(chunk)
    yield "data: [DONE]"


async def _guarded(events: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield event
    except ApiError as error:
        yield error_event(error)


async def _passthrough(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for piece in chunks:
            yield piece if piece.endswith("\n\n") else piece.rstrip("\n") + "\n\n"
    except ApiError as error:
        yield f"data: {json.dumps(error.openai())}\n\n"


def fastapi_app(gateway: Gateway, api_key_sha256: str | None = None) -> Any:
    """A FastAPI application with the gateway's routes (for a student that is already up)."""
    from fastapi import FastAPI

    app = FastAPI(title="tooldistill gateway")
    if api_key_sha256:
        install_key_check(app, api_key_sha256)
    app.add_api_route("/v1/messages", gateway.messages, methods=["POST"])
    app.add_api_route("/v1/messages/count_tokens", gateway.count_tokens, methods=["POST"])
    app.add_api_route("/v1/chat/completions", gateway.chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", gateway.models, methods=["GET"])
    app.add_api_route("/v1/models/{model:path}", gateway.model, methods=["GET"])
    return app


def chunks_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole chat completion as the events a streaming server sends for it: the role, the text,
    each call (name and whole arguments in one delta), the finish reason, then the usage."""
    base = {
        "id": answer.get("id") or "chatcmpl-gateway",
        "object": "chat.completion.chunk",
        "created": int(answer.get("created") or time.time()),
        "model": answer.get("model") or "",
    }
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    if message.get("content"):
        chunks.append({**base, "choices": [{"index": 0, "delta": {"content": message["content"]}}]})
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        delta = {
            "index": index,
            "id": call.get("id") or f"call_{index}",
            "type": "function",
            "function": {"name": function.get("name"), "arguments": function.get("arguments") or "{}"},
        }
        chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [delta]}}]})
    finish = choice.get("finish_reason") or ("tool_calls" if message.get("tool_calls") else "stop")
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({**base, "choices": [], "usage": answer.get("usage") or {}})
    return chunks
