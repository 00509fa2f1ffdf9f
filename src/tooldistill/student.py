"""The student's HTTP client and the one settings model that says where it answers.

Everything that talks to an OpenAI-compatible model over plain HTTP goes through
:class:`StudentClient`: ``tooldistill evaluate``, the optimizer's metric calls
(``optimize/student.py``), an ``openai``-kind reflection model and the pipeline's reachability
check.  :class:`EndpointSettings` holds what they share (endpoint, model, timeout, retries,
timed-out requests before giving up, the variable with the API key), with one set of defaults
(:data:`DEFAULTS`); ``optimize.student.StudentSettings`` extends it, ``EvaluateConfig`` takes its
defaults from it, and the config's ``student`` section and the reflection settings reuse its
endpoint field.

Connection errors (refused, reset, a reply cut off), 429 and 5xx are retried with backoff, so a
replica that dies and comes back within the retries costs attempts, not answers.  A request that
times out while the server holds it is never sent again (see :class:`StudentClient`).  The API key
is read from an environment variable and never written anywhere.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class EndpointError(RuntimeError):
    """The endpoint cannot be used (unreachable, refuses the model, gave up after its retries, ...)."""


class StudentTooSlow(RuntimeError):
    """Requests to the student time out: the evaluation stops instead of scoring them as misses."""


def _base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"an endpoint is an http:// or https:// base URL (.../v1), got {value!r}")
    return value


#: An OpenAI-compatible base URL (``.../v1``); anything but http(s) fails when the config loads.
EndpointURL = Annotated[str, AfterValidator(_base_url)]


class EndpointSettings(BaseModel):
    """Where an OpenAI-compatible model answers and how patiently it is asked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: EndpointURL = "http://127.0.0.1:8000/v1"
    #: The model name sent with every request.
    model: str = "student"
    #: Seconds one request may take before it counts as timed out.
    timeout_s: float = Field(default=60.0, gt=0)
    #: Further attempts after a connection error, 429 or 5xx (0: one attempt only).
    retries: int = Field(default=3, ge=0)
    #: Timed-out requests (never sent again) after which the client stops as too slow.
    max_timeouts: int = Field(default=3, ge=1)
    #: The environment variable holding the key sent as ``Authorization: Bearer``.
    api_key_env: str = "OPENAI_API_KEY"

    def api_key(self) -> str | None:
        """The key in ``api_key_env`` of this process's environment (None when unset)."""
        return os.environ.get(self.api_key_env)

    def client(self, api_key: str | None = None) -> StudentClient:
        """A client with ``api_key``, or the key in ``api_key_env`` of this process's environment."""
        return StudentClient(
            self.endpoint,
            self.timeout_s,
            self.retries,
            api_key if api_key is not None else self.api_key(),
            max_timeouts=self.max_timeouts,
        )


#: The one set of defaults; other settings that carry these fields take them from here.
DEFAULTS = EndpointSettings()


class Meter:
    """What the endpoint has answered so far, shared by every thread of one client."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: float | None = None
        self.answered = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.timeouts = 0

    def start(self) -> None:
        with self.lock:
            if self.started is None:
                self.started = time.perf_counter()

    def answer(self, response: Any) -> None:
        usage = response.get("usage") if isinstance(response, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        with self.lock:
            self.answered += 1
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def timeout(self) -> int:
        with self.lock:
            self.timeouts += 1
            return self.timeouts

    def throughput(self) -> dict[str, Any]:
        with self.lock:
            elapsed = time.perf_counter() - self.started if self.started is not None else 0.0
            return {
                "answered": self.answered,
                "timeouts": self.timeouts,
                "seconds": round(elapsed, 1),
                "prompt_tokens_per_s": round(self.prompt_tokens / elapsed, 1) if elapsed > 0 else None,
                "completion_tokens_per_s": round(self.completion_tokens / elapsed, 1)
                if elapsed > 0
                else None,
            }


@dataclass
class StudentClient:
    """The HTTP client of an OpenAI-compatible endpoint (no SDK), safe to share between threads.

    Connection errors (refused, reset, a reply cut off), 429 and 5xx are retried with backoff
    (0.5 s, 1 s, 2 s, ... up to 8 s between attempts), ``retries`` times.  A request that times out
    while the server holds it is **not** sent again: the engine is still working on it (or on the
    queue in front of it), and a resend would start its prefill over and lengthen that queue for
    everyone (the retry storm of docs/serving.md).  After ``max_timeouts`` timed-out requests the
    client trips: every later call raises :class:`StudentTooSlow` at once, with the throughput
    measured so far, and nothing more is sent.
    """

    endpoint: str
    timeout_s: float = DEFAULTS.timeout_s
    retries: int = DEFAULTS.retries
    api_key: str | None = field(default=None, repr=False)
    max_timeouts: int = DEFAULTS.max_timeouts
    meter: Meter = field(default_factory=Meter, repr=False)
    tripped: str | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def url(self, path: str) -> str:
        return f"{self.endpoint.rstrip('/')}/{path.lstrip('/')}"

    def check(self) -> None:
        """Fail fast when nothing answers at the endpoint (any HTTP answer counts as reachable)."""
        request = urllib.request.Request(self.url("models"), headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout_s, 10)):
                pass
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise EndpointError(f"cannot reach the endpoint {self.endpoint}: {reason}") from None

    def too_slow_message(self) -> str:
        seen = self.meter.throughput()
        rate = (
            f"it answered {seen['answered']} requests in {seen['seconds']:.0f} s at "
            f"{seen['prompt_tokens_per_s'] or 0:.0f} prompt tokens/s and "
            f"{seen['completion_tokens_per_s'] or 0:.1f} generated tokens/s"
            if seen["answered"]
            else f"it answered no request in {seen['seconds']:.0f} s"
        )
        return (
            f"the student at {self.endpoint} is too slow: {seen['timeouts']} requests got no answer "
            f"within {self.timeout_s:g} s (not sent again); {rate}. Give requests more time "
            "(timeout_s), send fewer at once (concurrency), shorten the prompts, or check the "
            "student's dtype and threads (docs/serving.md)"
        )

    def chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """POST /chat/completions with retries; returns (response JSON, attempts)."""
        if self.tripped:
            raise StudentTooSlow(self.tripped)
        data = json.dumps(body).encode("utf-8")
        last = ""
        self.meter.start()
        for attempt in range(1, self.retries + 2):
            request = urllib.request.Request(self.url("chat/completions"), data=data, headers=self._headers())
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read().decode("utf-8"))
                    self.meter.answer(answer)
                    return answer, attempt
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", errors="replace")[:200]
                last = f"HTTP {error.code}: {detail}"
                if error.code != 429 and error.code < 500:
                    raise EndpointError(last) from None
            except TimeoutError:
                # the server has the request and is still busy with it: never send it again
                if self.meter.timeout() >= self.max_timeouts:
                    self.tripped = self.too_slow_message()
                raise EndpointError(
                    f"no answer within {self.timeout_s:g} s (not sent again: the student still had it)"
                ) from None
            except (urllib.error.URLError, OSError) as error:
                last = f"connection error: {getattr(error, 'reason', error)}"
            except http.client.HTTPException as error:
                # the server went away part way through its reply (a replica killed mid-answer)
                last = f"connection error: {type(error).__name__}: {error}"
            except ValueError as error:
                raise EndpointError(f"the endpoint answered with invalid JSON: {error}") from None
            if attempt <= self.retries:
                time.sleep(min(8.0, 0.25 * 2**attempt))
        raise EndpointError(f"gave up after {self.retries + 1} attempts: {last}")
