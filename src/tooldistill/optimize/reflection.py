"""The reflection model: reads a candidate's failures and writes a better instruction.

Two kinds, chosen in config:

- ``anthropic``: Claude through the ``anthropic`` SDK (``base_url`` may point at a local
  Anthropic-compatible server); cost from the teacher's price table (``teacher/pricing.py``).
- ``openai``: any OpenAI-compatible chat endpoint, asked through the student's client
  (``student.StudentClient``: the same retries and backoff); cost from ``input_usd_per_mtok`` and
  ``output_usd_per_mtok`` in config (0 for a self-hosted model).

Both are callables ``prompt -> text`` as ``gepa`` expects, expose ``total_cost`` (so GEPA's
``max_reflection_cost`` stopper sees real dollars) and ``batch_complete`` (one iteration's several
reflections go out at once, in threads).  ``spent_before`` carries the dollars of an interrupted
run into its resumption, so the budget is for the whole run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tooldistill.redact import Redactor
from tooldistill.student import DEFAULTS, EndpointError, EndpointURL, StudentClient, StudentTooSlow
from tooldistill.teacher.pricing import cost, price_for


class ReflectionError(RuntimeError):
    """The reflection model cannot be used."""


class ReflectionSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["anthropic", "openai"] = "anthropic"
    model: str = "claude-sonnet-4-5"
    #: OpenAI-compatible endpoint (``.../v1``) or an Anthropic base URL (None: the public API).
    endpoint: EndpointURL | None = None
    api_key_env: str | None = None
    max_tokens: int = 4096
    temperature: float = 1.0
    #: Longer than the student's ``timeout_s``: one reflection writes up to ``max_tokens`` tokens.
    timeout_s: float = Field(default=120.0, gt=0)
    #: As the student's (``student.EndpointSettings``); the openai kind asks through its client.
    retries: int = Field(default=DEFAULTS.retries, ge=0)
    #: Prices for ``openai`` kind, USD per million tokens.
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    #: Concurrent reflection calls in one batch.
    concurrency: int = Field(default=8, ge=1)


Messages = list[dict[str, Any]]


class ReflectionLM:
    """A reflection model with a running cost in USD."""

    def __init__(self, settings: ReflectionSettings, spent_before: float = 0.0) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cost = float(spent_before)
        self.calls = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self._anthropic: Any = None
        self._openai: StudentClient | None = None
        # what the reflection model writes becomes the student's instructions (prompt.json, GEPA's
        # state, the report): a secret it repeats from the traces is replaced before any of that
        self._redactor = Redactor()
        if settings.kind == "anthropic":
            import anthropic

            key = os.environ.get(settings.api_key_env or "ANTHROPIC_API_KEY")
            self._anthropic = anthropic.Anthropic(
                api_key=key or "unset",
                base_url=settings.endpoint,
                timeout=settings.timeout_s,
                max_retries=settings.retries,
            )
            self._price = price_for(settings.model)
        else:
            if not settings.endpoint:
                raise ReflectionError("an openai reflection model needs an endpoint")
            key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
            self._openai = StudentClient(settings.endpoint, settings.timeout_s, settings.retries, key)

    @property
    def total_cost(self) -> float:
        return self._cost

    def _add(self, tokens_in: int, tokens_out: int, usd: float | None) -> None:
        with self._lock:
            self.calls += 1
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out
            self._cost += usd or 0.0

    def complete(self, messages: Messages) -> str:
        text = (
            self._complete_anthropic(messages)
            if self._anthropic is not None
            else self._complete_openai(messages)
        )
        with self._lock:
            return self._redactor.text(text)

    def _complete_anthropic(self, messages: Messages) -> str:
        import anthropic

        system = "\n\n".join(str(m["content"]) for m in messages if m.get("role") == "system")
        turns = [
            {"role": m["role"], "content": str(m["content"])} for m in messages if m.get("role") != "system"
        ]
        from tooldistill.teacher.client import split_params

        params: dict[str, Any] = {
            "model": self.settings.model,
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
            "messages": turns,
            **({"system": system} if system else {}),
        }
        # anthropic 2.x's create() no longer names temperature; the API still takes it in the body
        known, extra = split_params(self._anthropic, params)
        try:
            response = self._anthropic.messages.create(**known, **({"extra_body": extra} if extra else {}))
        except anthropic.APIError as error:
            raise ReflectionError(f"reflection model {self.settings.model}: {error}") from None
        usage = response.usage.model_dump() if getattr(response, "usage", None) else {}
        self._add(usage.get("input_tokens") or 0, usage.get("output_tokens") or 0, cost(usage, self._price))
        return "".join(getattr(block, "text", "") for block in response.content)

    def _complete_openai(self, messages: Messages) -> str:
        assert self._openai is not None
        body = {
            "model": self.settings.model,
            "messages": messages,
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
        }
        try:
            response, _ = self._openai.chat(body)
        except (EndpointError, StudentTooSlow) as error:
            raise ReflectionError(f"reflection model {self.settings.model}: {error}") from None
        usage = response.get("usage") or {}
        tokens_in, tokens_out = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        usd = (
            tokens_in * self.settings.input_usd_per_mtok + tokens_out * self.settings.output_usd_per_mtok
        ) / 1e6
        self._add(tokens_in, tokens_out, usd)
        try:
            return str(response["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise ReflectionError(
                f"reflection model {self.settings.model} answered without a message"
            ) from None

    def __call__(self, prompt: str | Messages) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return self.complete(messages)

    def batch_complete(self, messages_list: Sequence[Messages], **_: Any) -> list[str]:
        """Several reflections at once (GEPA asks for one per proposal of an iteration)."""
        if not messages_list:
            return []
        workers = max(1, min(self.settings.concurrency, len(messages_list)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.complete, messages_list))

    def usage(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "usd": round(self._cost, 6),
            "secrets_redacted": dict(sorted(self._redactor.counts.items())),
        }
