"""A local Anthropic-compatible HTTP server for tests, benchmarks and the offline demo.

It speaks the parts of the Anthropic API that tooldistill uses, over real HTTP on 127.0.0.1, so the
``anthropic`` SDK reaches it through ``ANTHROPIC_BASE_URL`` exactly as it reaches the real API:

- ``GET /v1/models/{id}``, ``POST /v1/messages``,
- ``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}``, ``GET .../{id}/results``.

Answers come from a *policy* (``ReferencePolicy`` answers with the trace's reference calls, with a
configurable rate of disagreeing samples; ``JudgePolicy`` grades student calls).  Usage is computed
from the request size (4 bytes a token), prompt caching included: a prefix marked with
``cache_control`` and at least ``min_cache_tokens`` long is written on first sight and read after.

Faults are injected on demand, at a rate or as an explicit queue: 429 with ``retry-after``, 529
overloaded, 500, a slow answer, and a dropped connection (closed before any answer is computed, so
the server's own counts hold only what it really answered).  ``stats()`` (also ``GET /_stats``)
gives those counts: answers per request key, token totals, faults, batches.

Run it standalone: ``python -m tooldistill.testing.anthropic_server --dataset D --port 8765``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from tooldistill.schema import Trace, canonical_json, content_hash
from tooldistill.teacher.request import api_tool_names, to_messages

FAULT_KINDS = ("429", "529", "500", "drop", "slow")


def tokens_of(value: Any) -> int:
    return 0 if value in (None, [], "") else max(1, len(canonical_json(value)) // 4)


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Policy(Protocol):
    def answer(self, body: dict[str, Any], key: str) -> list[dict[str, Any]]: ...


class ReferencePolicy:
    """Answer with the reference calls of the trace whose messages the request carries.

    ``disagree_rate`` of the samples (chosen by a hash of the request key, so the same request gets
    the same answer in every run) disagree: a call is dropped, an argument changed, or a tool is
    called where the reference calls none."""

    def __init__(self, traces: Iterable[Trace], disagree_rate: float = 0.0, seed: int = 0) -> None:
        self.disagree_rate = disagree_rate
        self.seed = seed
        self.index: dict[str, tuple[Trace, dict[str, str]]] = {}
        for trace in traces:
            names = api_tool_names(t.name for t in trace.tools)
            _, messages = to_messages(trace.messages, names)
            self.index[content_hash(messages, 24)] = (trace, names)

    def _disagrees(self, key: str) -> bool:
        draw = int(content_hash([self.seed, key], 8), 16) / 16**8
        return draw < self.disagree_rate

    def answer(self, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
        found = self.index.get(content_hash(body.get("messages"), 24))
        if found is None:
            return [{"type": "text", "text": "I do not know this conversation."}]
        trace, names = found
        calls = [(names.get(c.name, c.name), dict(c.arguments)) for c in trace.reference_calls]
        if self._disagrees(key):
            if len(calls) > 1:
                calls = calls[:-1]
            elif calls:
                name, arguments = calls[0]
                arguments = dict(arguments)
                if arguments:
                    first = sorted(arguments)[0]
                    arguments[first] = f"{arguments[first]}-other"
                else:
                    arguments["unexpected"] = True
                calls = [(name, arguments)]
            elif trace.tools:
                calls = [(names[trace.tools[0].name], {})]
        if not calls:
            return [{"type": "text", "text": "No tool is needed for this."}]
        return [
            {"type": "tool_use", "id": f"toolu_{content_hash([key, i], 20)}", "name": name, "input": args}
            for i, (name, args) in enumerate(calls)
        ]


class JudgePolicy:
    """Grade the student's calls against the teacher's the way a strict judge would: equivalent
    when the canonical calls are equal; ``disagree_rate`` of the verdicts are flipped."""

    def __init__(self, disagree_rate: float = 0.0, seed: int = 0) -> None:
        self.disagree_rate = disagree_rate
        self.seed = seed

    def answer(self, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
        text = "".join(
            block.get("text", "")
            for message in body.get("messages", [])
            for block in (message.get("content") if isinstance(message.get("content"), list) else [])
            if isinstance(block, dict)
        )

        def section(tag: str) -> Any:
            start, end = text.find(f"<{tag}>"), text.find(f"</{tag}>")
            if start < 0 or end < 0:
                return None
            try:
                return json.loads(text[start + len(tag) + 2 : end])
            except ValueError:
                return None

        teacher, student = section("teacher_calls"), section("student_calls")

        def canon(calls: Any) -> Any:
            return sorted(canonical_json(c) for c in calls) if isinstance(calls, list) else None

        equivalent = teacher is not None and canon(teacher) == canon(student)
        if int(content_hash([self.seed, key], 8), 16) / 16**8 < self.disagree_rate:
            equivalent = not equivalent
        tool = next((t["name"] for t in body.get("tools", [])), "record_verdict")
        return [
            {
                "type": "tool_use",
                "id": f"toolu_{content_hash(key, 20)}",
                "name": tool,
                "input": {
                    "equivalent": equivalent,
                    "score": 5 if equivalent else 1,
                    "reason": "same calls" if equivalent else "the calls differ",
                },
            }
        ]


@dataclass
class Faults:
    #: share of /v1/messages requests that get a fault, drawn from ``kinds``
    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after_s: float = 0.05
    slow_s: float = 0.2
    seed: int = 0


@dataclass
class _Batch:
    id: str
    requests: list[dict[str, Any]]
    created: datetime
    polls_left: int
    results: list[dict[str, Any]] = field(default_factory=list)
    ended: datetime | None = None


class AnthropicServer:
    """The server; use as a context manager or call ``start``/``stop``."""

    def __init__(
        self,
        policy: Policy,
        faults: Faults | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        min_cache_tokens: int = 1024,
        batch_polls: int = 2,
        batch_expire: Iterable[str] = (),
        batch_error: Iterable[str] = (),
        requests_per_window: int | None = None,
        window_s: float = 60.0,
        models_prefix: str = "claude",
    ) -> None:
        self.policy = policy
        self.faults = faults or Faults()
        self.api_key = api_key
        self.min_cache_tokens = min_cache_tokens
        self.batch_polls = batch_polls
        #: custom_ids that expire (or error with ``api_error``) the first time they are submitted
        self.batch_expire = set(batch_expire)
        self.batch_error = set(batch_error)
        self.requests_per_window = requests_per_window
        self.window_s = window_s
        self.models_prefix = models_prefix
        self._rng = random.Random(self.faults.seed)
        self._forced: deque[str] = deque()
        self._lock = threading.Lock()
        self._prefixes: set[str] = set()
        self._window: deque[float] = deque()
        self._batches: dict[str, _Batch] = {}
        self._batch_seen: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = _Server((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> AnthropicServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="anthropic-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> AnthropicServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- control -----------------------------------------------------------------------------

    def inject(self, kind: str, count: int = 1) -> None:
        """The next ``count`` message requests get fault ``kind`` (one of ``FAULT_KINDS``)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; choose from {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._forced.extend([kind] * count)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "answered": dict(self.answered),
                "received": dict(self.received),
                "faults": dict(self.fault_counts),
                "totals": dict(self.totals),
                "batches": len(self._batches),
            }

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._forced:
                return self._forced.popleft()
            if self.faults.rate and self._rng.random() < self.faults.rate:
                return self._rng.choice(self.faults.kinds)
        return None

    def _rate_limited(self) -> float | None:
        """Seconds until the window has room again, when this request is over the limit."""
        if not self.requests_per_window:
            return None
        with self._lock:
            now = time.monotonic()
            while self._window and now - self._window[0] >= self.window_s:
                self._window.popleft()
            if len(self._window) >= self.requests_per_window:
                return self.window_s - (now - self._window[0])
            self._window.append(now)
        return None

    def ratelimit_headers(self) -> dict[str, str]:
        if not self.requests_per_window:
            return {}
        with self._lock:
            remaining = max(0, self.requests_per_window - len(self._window))
            reset = self.window_s - (time.monotonic() - self._window[0]) if self._window else 0.0
        return {
            # the API states its limit per minute, whatever window this server counts in
            "anthropic-ratelimit-requests-limit": str(int(self.requests_per_window * 60 / self.window_s)),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": _stamp(datetime.now(UTC) + timedelta(seconds=reset)),
        }

    # -- answers -----------------------------------------------------------------------------

    def message(self, body: dict[str, Any], key: str, batch: bool = False) -> dict[str, Any]:
        content = self.policy.answer(body, key)
        tools, system, messages = body.get("tools") or [], body.get("system"), body.get("messages")
        total = tokens_of(tools) + tokens_of(system) + tokens_of(messages)
        prefix: list[Any] = []
        if tools and isinstance(tools[-1], dict) and tools[-1].get("cache_control"):
            prefix = [tools]
        if isinstance(system, list) and system and system[-1].get("cache_control"):
            prefix = [tools, system]
        prefix_tokens = sum(tokens_of(p) for p in prefix)
        read = write = 0
        if prefix and prefix_tokens >= self.min_cache_tokens:
            marker = content_hash([body.get("model"), prefix], 24)
            with self._lock:
                if marker in self._prefixes:
                    read = prefix_tokens
                else:
                    write = prefix_tokens
                    self._prefixes.add(marker)
        usage = {
            "input_tokens": total - read - write,
            "output_tokens": tokens_of(content),
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": write,
        }
        with self._lock:
            self.answered[key] += 1
            self.totals.update(usage)
            self.totals["answers"] += 1
            if batch:
                self.totals["batch_answers"] += 1
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }

    def create_batch(self, body: dict[str, Any]) -> _Batch:
        batch = _Batch(
            id=f"msgbatch_{uuid.uuid4().hex[:24]}",
            requests=list(body.get("requests") or []),
            created=datetime.now(UTC),
            polls_left=self.batch_polls,
        )
        with self._lock:
            self._batches[batch.id] = batch
        return batch

    def _finish(self, batch: _Batch) -> None:
        for request in batch.requests:
            custom_id = request["custom_id"]
            with self._lock:
                self._batch_seen[custom_id] += 1
                first = self._batch_seen[custom_id] == 1
            if first and custom_id in self.batch_expire:
                result: dict[str, Any] = {"type": "expired"}
            elif first and custom_id in self.batch_error:
                result = {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": "api_error", "message": "Internal server error"},
                    },
                }
            else:
                result = {
                    "type": "succeeded",
                    "message": self.message(request["params"], custom_id, batch=True),
                }
            batch.results.append({"custom_id": custom_id, "result": result})
        batch.ended = datetime.now(UTC)

    def batch_view(self, batch: _Batch) -> dict[str, Any]:
        counts = Counter(r["result"]["type"] for r in batch.results)
        ended = batch.ended is not None
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else len(batch.requests),
                "succeeded": counts["succeeded"],
                "errored": counts["errored"],
                "canceled": counts["canceled"],
                "expired": counts["expired"],
            },
            "created_at": _stamp(batch.created),
            "expires_at": _stamp(batch.created + timedelta(hours=24)),
            "ended_at": _stamp(batch.ended) if batch.ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # bursts of concurrent clients must not be refused at connect


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body leave in one write (flushed after each request): separate small writes
    # meet the client's delayed ACK and cost ~40 ms a request on loopback
    wbufsize = 1 << 16
    server_state: AnthropicServer

    def log_message(self, *_: Any) -> None:  # quiet
        pass

    def _send(
        self, status: int, payload: Any, headers: dict[str, str] | None = None, jsonl: bool = False
    ) -> None:
        if jsonl:
            body = "".join(json.dumps(item) + "\n" for item in payload).encode()
        else:
            body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/binary" if jsonl else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        for name, value in {**self.server_state.ratelimit_headers(), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        # the API takes ``x-api-key``; recent SDKs send ``Authorization: Bearer`` instead
        key = self.headers.get("x-api-key")
        bearer = self.headers.get("Authorization") or ""
        if not key and bearer.lower().startswith("bearer "):
            key = bearer[7:].strip()
        expected = self.server_state.api_key
        if not key or (expected is not None and key != expected):
            self._send(401, _error("authentication_error", "invalid x-api-key or bearer token"))
            return False
        return True

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            value = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send(400, _error("invalid_request_error", "body is not JSON"))
            return None
        if not isinstance(value, dict):
            self._send(400, _error("invalid_request_error", "body must be a JSON object"))
            return None
        return value

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        state = self.server_state
        path = self.path.split("?")[0].rstrip("/")
        if path == "/_stats":
            self._send(200, state.stats())
            return
        if not self._authorized():
            return
        parts = path.split("/")
        if path.startswith("/v1/models/"):
            model = parts[-1]
            if not model.startswith(state.models_prefix):
                self._send(404, _error("not_found_error", f"model: {model}"))
                return
            self._send(
                200,
                {"type": "model", "id": model, "display_name": model, "created_at": "2025-01-01T00:00:00Z"},
            )
            return
        if path.startswith("/v1/messages/batches/"):
            batch = state._batches.get(parts[4]) if len(parts) > 4 else None
            if batch is None:
                self._send(404, _error("not_found_error", "no such batch"))
                return
            if len(parts) == 6 and parts[5] == "results":
                if batch.ended is None:
                    self._send(400, _error("invalid_request_error", "batch has not ended"))
                else:
                    self._send(200, batch.results, jsonl=True)
                return
            if batch.ended is None:
                if batch.polls_left <= 0:
                    state._finish(batch)
                batch.polls_left -= 1
            self._send(200, state.batch_view(batch))
            return
        self._send(404, _error("not_found_error", f"no route {path}"))

    def do_POST(self) -> None:  # noqa: N802
        state = self.server_state
        path = self.path.split("?")[0].rstrip("/")
        if not self._authorized():
            return
        body = self._body()
        if body is None:
            return
        if path == "/v1/messages/batches":
            requests = body.get("requests")
            if not isinstance(requests, list) or not requests:
                self._send(400, _error("invalid_request_error", "requests: a non-empty list is required"))
                return
            self._send(200, state.batch_view(state.create_batch(body)))
            return
        if path != "/v1/messages":
            self._send(404, _error("not_found_error", f"no route {path}"))
            return
        key = self.headers.get("x-tooldistill-request") or content_hash(body, 24)
        with state._lock:
            state.received[key] += 1
        if not isinstance(body.get("messages"), list) or not body.get("max_tokens"):
            self._send(400, _error("invalid_request_error", "messages and max_tokens are required"))
            return
        wait = state._rate_limited()
        if wait is not None:
            with state._lock:
                state.fault_counts["rate_limited"] += 1
            self._send(429, _error("rate_limit_error", "rate limited"), {"retry-after": f"{wait:.3f}"})
            return
        fault = state._next_fault()
        if fault is not None:
            with state._lock:
                state.fault_counts[fault] += 1
        if fault == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "429":
            self._send(
                429,
                _error("rate_limit_error", "rate limited"),
                {"retry-after": str(state.faults.retry_after_s)},
            )
            return
        if fault == "529":
            self._send(529, _error("overloaded_error", "Overloaded"))
            return
        if fault == "500":
            self._send(500, _error("api_error", "Internal server error"))
            return
        if fault == "slow":
            time.sleep(state.faults.slow_s)
        self._send(200, state.message(body, key))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Local Anthropic-compatible server answering from a traces dataset."
    )
    parser.add_argument(
        "--dataset", required=True, help="traces dataset whose reference calls are the answers"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--disagree-rate", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--min-cache-tokens", type=int, default=1024)
    parser.add_argument("--batch-polls", type=int, default=2)
    args = parser.parse_args(argv)
    from tooldistill.store import Dataset

    policy = ReferencePolicy(Dataset.open(args.dataset).to_traces(), args.disagree_rate)
    server = AnthropicServer(
        policy,
        Faults(rate=args.fault_rate),
        host=args.host,
        port=args.port,
        min_cache_tokens=args.min_cache_tokens,
        batch_polls=args.batch_polls,
    )
    print(f"listening on {server.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.httpd.serve_forever()


if __name__ == "__main__":
    main()
