"""The gateway as the ingress of the student's Ray Serve application.

``GatewayIngress`` is Ray Serve LLM's public ``OpenAiIngress`` (``ray.serve.llm.ingress``) with the
gateway's routes (``ROUTES``, mounted by the public ``make_fastapi_ingress``): the engines are Ray
Serve LLM's ``LLMServer`` deployments (``build_llm_deployment``), reached through the ingress's own
``chat`` — its model routing, LoRA multiplexing (``<model>:<adapter>``), timeouts and streaming —
so the gateway adds the second API and the learned prompt without another hop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from ray.serve.llm.ingress import OpenAiIngress

from tooldistill.serve.anthropic import ApiError
from tooldistill.serve.gateway import Gateway, GatewaySettings

#: Seconds a listing of the served models (adapters included) is reused.
MODELS_TTL_S = 10.0

#: The ingress's routes: method name -> route (``make_fastapi_ingress``'s ``endpoint_map``).
ROUTES: dict[str, Any] = {
    "anthropic_messages": lambda app: app.post("/v1/messages"),
    "anthropic_count_tokens": lambda app: app.post("/v1/messages/count_tokens"),
    "openai_chat": lambda app: app.post("/v1/chat/completions"),
    "list_models": lambda app: app.get("/v1/models"),
    "get_model": lambda app: app.get("/v1/models/{model:path}"),
}


def model_card(model_id: str) -> dict[str, Any]:
    """An OpenAI model object for ``/v1/models``."""
    return {"id": model_id, "object": "model", "owned_by": "tooldistill", "created": int(time.time())}


def list_adapters(store_uri: str) -> list[str]:
    """The adapter folders (with ``adapter_config.json``) directly under ``store_uri`` (local or
    s3://; other schemes list nothing here, their adapters are still served by name)."""
    from pyarrow import fs as pafs

    from tooldistill import store

    try:
        filesystem, path = store.resolve(store_uri)
        entries = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        names = []
        for entry in entries:
            if entry.type == pafs.FileType.Directory:
                config = filesystem.get_file_info(f"{entry.path}/adapter_config.json")
                if config.type == pafs.FileType.File:
                    names.append(entry.base_name)
        return sorted(names)
    except (store.StoreError, OSError):
        return []


def _status_of(error: Exception) -> tuple[int, str] | None:
    """The HTTP status and message of the errors Ray Serve LLM's ingress raises."""
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        return None
    message = getattr(error, "message", None) or getattr(error, "detail", None) or str(error)
    return status, str(message)


async def _pieces(body: AsyncIterable[Any]) -> AsyncIterator[str]:
    async for piece in body:
        yield piece.decode("utf-8") if isinstance(piece, bytes | bytearray) else str(piece)


class _IngressBackend:
    """The engines behind the ingress, as the gateway's ``Backend``."""

    vllm = True

    def __init__(self, ingress: GatewayIngress) -> None:
        self.ingress = ingress
        self._models: tuple[float, list[dict[str, Any]]] | None = None

    async def chat(self, body: dict[str, Any], request: Any) -> dict[str, Any] | AsyncIterator[str]:
        from ray.serve.exceptions import BackPressureError
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        try:
            parsed = ChatCompletionRequest.model_validate(body)
        except ValueError as error:
            raise ApiError(400, f"not a valid chat-completions request: {error}") from None
        try:
            response = await OpenAiIngress.chat(self.ingress, parsed, request)
        except BackPressureError:
            raise ApiError(529, "the student's queue is full: try again shortly") from None
        except Exception as error:  # Ray Serve LLM raises its own HTTP exceptions
            found = _status_of(error)
            if found is None:
                raise
            raise ApiError(*found) from None
        if isinstance(response, StreamingResponse):
            return _pieces(response.body_iterator)
        value = json.loads(bytes(response.body))
        if not isinstance(value, dict):
            raise ApiError(500, "the engine's answer is not a JSON object")
        return value

    async def models(self) -> list[dict[str, Any]]:
        if self._models and time.monotonic() - self._models[0] < MODELS_TTL_S:
            return self._models[1]
        listed = [model_card(model_id) for model_id in self.ingress.cards]
        for base, store_uri in self.ingress.lora_stores.items():
            for name in await asyncio.to_thread(list_adapters, store_uri):
                listed.append(model_card(f"{base}:{name}"))
        self._models = (time.monotonic(), listed)
        return listed


class GatewayIngress(OpenAiIngress):
    """Ray Serve LLM's OpenAI ingress with the gateway's routes (see the module text)."""

    def __init__(
        self,
        llm_deployments: dict[str, Any],
        model_cards: dict[str, Any],
        *,
        lora_paths: dict[str, str] | None = None,
        gateway: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        self.cards = dict(model_cards)
        self.lora_stores = dict(lora_paths or {})
        self.gateway = Gateway(_IngressBackend(self), GatewaySettings.model_validate(gateway or {}))

    async def anthropic_messages(self, request: Request) -> Response:
        return await self.gateway.messages(request)

    async def anthropic_count_tokens(self, request: Request) -> Response:
        return await self.gateway.count_tokens(request)

    async def openai_chat(self, request: Request) -> Response:
        return await self.gateway.chat_completions(request)

    async def list_models(self, request: Request) -> Response:
        return await self.gateway.models(request)

    async def get_model(self, request: Request) -> Response:
        return await self.gateway.model(request)
