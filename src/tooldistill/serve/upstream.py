"""The gateway in front of a student that is already up: any OpenAI-compatible endpoint (a user's own
``vllm serve``, another machine's Ray Serve application, a test's stand-in).

``UpstreamBackend`` forwards chat-completions requests with httpx (streams stay streams);
``start_gateway`` serves the gateway's routes with uvicorn in a thread of this process, no Ray needed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tooldistill.serve.anthropic import ApiError
from tooldistill.serve.gateway import Gateway, GatewaySettings, fastapi_app

#: Seconds a listing of the upstream's models is reused (every request resolves its model name).
MODELS_TTL_S = 10.0


def _status(upstream: int) -> int:
    """The status the gateway answers for an upstream error status."""
    if upstream in (429, 503):
        return 529  # the student is busy: Claude's clients back off and retry on overloaded_error
    if upstream in (400, 404, 413, 422):
        return 400 if upstream == 422 else upstream
    return 500 if upstream < 500 else 502


def _message(status: int, body: bytes) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:500] or f"HTTP {status}"
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(value, dict) and value.get("message"):
        return str(value["message"])
    return json.dumps(value)[:500]


class UpstreamBackend:
    """Chat completions at ``endpoint`` (``…/v1``) through httpx."""

    def __init__(
        self, endpoint: str, api_key: str | None = None, timeout_s: float = 600.0, vllm: bool = False
    ) -> None:
        import httpx

        self.endpoint, self.vllm = endpoint.rstrip("/"), vllm
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.endpoint, headers=headers, timeout=timeout_s)
        self._models: tuple[float, list[dict[str, Any]]] | None = None

    async def _send(self, body: dict[str, Any], stream: bool) -> Any:
        import httpx

        request = self.client.build_request("POST", "/chat/completions", json=body)
        try:
            response = await self.client.send(request, stream=stream)
        except httpx.HTTPError as error:
            raise ApiError(502, f"cannot reach the student at {self.endpoint}: {error}") from None
        if response.status_code != 200:
            raw = await response.aread()
            await response.aclose()
            raise ApiError(
                _status(response.status_code), f"the student answered: {_message(response.status_code, raw)}"
            )
        return response

    async def chat(self, body: dict[str, Any], request: Any = None) -> dict[str, Any] | AsyncIterator[str]:
        if not body.get("stream"):
            response = await self._send(body, stream=False)
            try:
                value = response.json()
            except ValueError:
                raise ApiError(502, "the student's answer is not JSON") from None
            if not isinstance(value, dict):
                raise ApiError(502, "the student's answer is not a JSON object")
            return value
        response = await self._send(body, stream=True)

        async def lines() -> AsyncIterator[str]:
            import httpx

            try:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        yield line
            except httpx.HTTPError as error:
                raise ApiError(502, f"the student's stream broke off: {error}") from None
            finally:
                await response.aclose()

        return lines()

    async def models(self) -> list[dict[str, Any]]:
        import httpx

        if self._models and time.monotonic() - self._models[0] < MODELS_TTL_S:
            return self._models[1]
        try:
            response = await self.client.get("/models")
        except httpx.HTTPError as error:
            raise ApiError(502, f"cannot reach the student at {self.endpoint}: {error}") from None
        if response.status_code != 200:
            raise ApiError(502, f"the student's /models answered HTTP {response.status_code}")
        data = [m for m in (response.json().get("data") or []) if isinstance(m, dict) and m.get("id")]
        self._models = (time.monotonic(), data)
        return data


@dataclass
class RunningGateway:
    url: str
    server: Any
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_gateway(
    endpoint: str,
    settings: GatewaySettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    vllm: bool = False,
    timeout_s: float = 600.0,
) -> RunningGateway:
    """Serve the gateway at ``host:port`` in front of ``endpoint`` (in a thread; ``stop()`` ends it).
    ``api_key`` is the upstream's key; the gateway's own is ``settings.api_key_sha256``."""
    import uvicorn

    backend = UpstreamBackend(endpoint, api_key, timeout_s, vllm=vllm)
    app = fastapi_app(Gateway(backend, settings), settings.api_key_sha256)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tooldistill-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ApiError(500, f"the gateway did not start on {host}:{port}")
        time.sleep(0.05)
    if port == 0:
        port = server.servers[0].sockets[0].getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return RunningGateway(f"http://{shown}:{port}", server, thread)
