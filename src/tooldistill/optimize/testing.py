"""Local OpenAI-compatible servers for tests and benchmarks of prompt optimization.

``StudentServer`` is a deterministic stand-in for the student endpoint whose answers depend on the
prompt it receives, so that an optimizer has something real to find:

- the system prompt contains ``KEY_PHRASE``: every answer is right;
- otherwise an "easy" question (``index % 3 == 0``) is answered right, a question with
  ``index % 3 == 1`` is answered right when the request carries few-shot demonstrations
  (assistant tool calls before the last user turn), and everything else gets the city in lower
  case (the matcher's reason: ``argument city: expected 'Oslo7', got 'oslo7'``);
- the system prompt contains ``GARBAGE``: the reply is unparseable text.

- the system prompt holds ``k`` rules ("Rule 1." ...): questions with ``index % 10 < k`` are right.

A fixed ``latency_s`` per request models a real model's time.  ``ReflectionServer`` answers every
chat request with an instruction that contains ``KEY_PHRASE`` in a fenced block (the form GEPA's
default proposer extracts), with token usage so that costs add up; with ``incremental=True`` it
answers with the current instruction plus one more rule, a slow climb for benchmarks.  Both count their requests.

``python -m tooldistill.optimize.testing --port PORT`` runs the student stand-in in a process of its
own (a replica a test can SIGKILL and start again on the same port): it prints ``listening URL``,
then ``request N`` as each chat request comes in, and with ``--hold-at N`` never answers the N-th,
so a kill always lands with a request in flight.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tooldistill.schema import Message, ToolCall, ToolSpec, Trace

KEY_PHRASE = "Copy every argument value exactly as the user wrote it, keeping its capitalization."
BETTER_INSTRUCTION = (
    "Call the tool that answers the user's question. " + KEY_PHRASE + " Never change city names."
)
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Kyiv", "Pune", "Cork", "Nice", "Bern", "Graz", "Riga", "Baku"]
WEATHER = ToolSpec(
    name="weather.current",
    description="Current weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"],
    },
)
CLOCK = ToolSpec(
    name="clock.now",
    description="Local time in a time zone",
    parameters={"type": "object", "properties": {"tz": {"type": "string"}}},
)
_QUESTION = re.compile(r"weather in (\w+?)(\d+)\?")
_RULE = re.compile(r"Rule \d+\.")
_FENCED = re.compile(r"```\n?(.*?)```", re.S)
_DSPY_OUTPUT = re.compile(r"Your output fields are:\s*1\. `(\w+)`")
_DSPY_CURRENT = re.compile(r"\[\[ ## current_instruction ## \]\]\n(.*?)\n\n\[\[ ## ", re.S)
#: With ``ReflectionServer(incremental=True)``: each rule in the instruction makes one more tenth of
#: the questions right (``index % RULES < rules``), so optimization climbs step by step.
RULES = 10


def city_of(index: int) -> str:
    return f"{CITIES[index % len(CITIES)]}{index}"


def make_traces(n: int, start: int = 0) -> list[Trace]:
    """``n`` weather questions; the reference is ``weather.current(city=...)``."""
    return [
        Trace(
            source_id=f"w{i}",
            source="test",
            category="weather",
            messages=[Message(role="user", content=f"What is the weather in {city_of(i)}?")],
            tools=[WEATHER, CLOCK],
            reference_calls=[ToolCall(name="weather.current", arguments={"city": city_of(i)})],
        ).with_id()
        for i in range(start, start + n)
    ]


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.requests = 0
        self.lock = threading.Lock()
        #: Called with each chat request's number (from 1) before it is answered.
        self.on_request: Callable[[int], None] | None = None
        #: Every request body received, in order; ``busy``: answer 429 (a full queue) to everything.
        self.received: list[dict[str, Any]] = []
        self.busy = False
        handler.owner = self  # type: ignore[attr-defined]
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 256
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def count(self) -> None:
        with self.lock:
            self.requests += 1
            number = self.requests
        if self.on_request is not None:
            self.on_request(number)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def start(self) -> _Server:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        model = getattr(self.owner, "model", "student")
        self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.owner.count()
        self.owner.received.append(body)
        key = getattr(self.owner, "api_key", None)
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            self._send(401, {"error": {"message": "invalid API key", "type": "authentication_error"}})
            return
        if getattr(self.owner, "busy", False):
            self._send(429, {"error": {"message": "the queue is full", "type": "rate_limit_error"}})
            return
        answer = self.answer(body)
        if body.get("stream"):
            self._stream(answer)
        else:
            self._send(200, answer)

    def _stream(self, answer: dict[str, Any]) -> None:
        """The answer as a chat-completions event stream (what a streaming server sends)."""
        from tooldistill.serve.gateway import chunks_of

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in chunks_of(answer):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


def _completion(message: dict[str, Any], model: str, tokens_in: int, tokens_out: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        },
    }


class _StudentHandler(_Handler):
    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.owner.latency_s:
            time.sleep(self.owner.latency_s)
        messages = body.get("messages") or []
        system = messages[0]["content"] if messages and messages[0].get("role") == "system" else ""
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        has_demos = any(m.get("role") == "assistant" and m.get("tool_calls") for m in messages[:last_user])
        found = _QUESTION.search(str(messages[last_user]["content"])) if last_user >= 0 else None
        model = str(body.get("model"))
        if "GARBAGE" in system or found is None:
            return _completion({"role": "assistant", "content": "{'name': weather("}, model, 40, 5)
        city, index = found.group(1) + found.group(2), int(found.group(2))
        rules = len(_RULE.findall(system))
        right = (
            KEY_PHRASE in system or index % 3 == 0 or (index % 3 == 1 and has_demos) or index % RULES < rules
        )
        arguments = {"city": city if right else city.lower()}
        call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "weather_current", "arguments": json.dumps(arguments)},
        }
        return _completion({"role": "assistant", "content": None, "tool_calls": [call]}, model, 60, 12)


class StudentServer(_Server):
    """With ``api_key``, a chat request without ``Authorization: Bearer <api_key>`` gets a 401."""

    def __init__(self, latency_s: float = 0.0, api_key: str | None = None, port: int = 0) -> None:
        self.latency_s = latency_s
        self.api_key = api_key
        super().__init__(type("StudentHandler", (_StudentHandler,), {}), port)


class _ReflectionHandler(_Handler):
    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.owner.latency_s:
            time.sleep(self.owner.latency_s)
        self.owner.prompts.append(body.get("messages"))
        instruction = self.owner.instruction
        prompt = "\n".join(str(m.get("content")) for m in body.get("messages") or [])
        # gepa's proposer fences the current instruction; dspy.GEPA's asks in DSPy's chat format
        dspy_output = _DSPY_OUTPUT.search(prompt)
        if self.owner.incremental:
            last = str((body.get("messages") or [{}])[-1].get("content"))
            found = _DSPY_CURRENT.search(last) if dspy_output else _FENCED.search(prompt)
            current = found.group(1).strip() if found else ""
            instruction = f"{current} Rule {len(_RULE.findall(current)) + 1}.".strip()
        if dspy_output and "JSON" in prompt:  # DSPy's JSONAdapter (dspy.GEPA's proposer uses it)
            text = json.dumps({dspy_output.group(1): instruction})
        elif dspy_output:
            text = f"[[ ## {dspy_output.group(1)} ## ]]\n{instruction}\n\n[[ ## completed ## ]]"
        else:
            text = f"Here is the improved instruction:\n```\n{instruction}\n```"
        return _completion({"role": "assistant", "content": text}, str(body.get("model")), 1000, 100)


class _ScriptedHandler(_Handler):
    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        script: list[dict[str, Any]] = self.owner.script
        with self.owner.lock:
            chosen = (
                self.owner.choose(body, self.owner.answered) if self.owner.choose else self.owner.answered
            )
            message = script[min(chosen, len(script) - 1)]
            self.owner.answered += 1
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        answer = _completion({"role": "assistant", **message}, str(body.get("model")), 50, 10)
        answer["choices"][0]["finish_reason"] = finish
        return answer


class ScriptedStudentServer(_Server):
    """A stand-in student that answers its ``script`` of assistant messages in order (the last one
    again once the script is done), or the one ``choose(request, answered so far)`` picks; it
    serves ``model`` and keeps every request it received (``received``)."""

    def __init__(
        self,
        script: Sequence[dict[str, Any]],
        model: str = "student",
        port: int = 0,
        choose: Callable[[dict[str, Any], int], int] | None = None,
    ) -> None:
        self.script, self.answered, self.model, self.choose = list(script), 0, model, choose
        handler = type("ScriptedHandler", (_ScriptedHandler,), {})  # owner is per server, not shared
        super().__init__(handler, port)


class ReflectionServer(_Server):
    def __init__(
        self, instruction: str = BETTER_INSTRUCTION, latency_s: float = 0.0, incremental: bool = False
    ) -> None:
        self.instruction = instruction
        self.incremental = incremental
        self.latency_s = latency_s
        self.prompts: list[Any] = []
        super().__init__(type("ReflectionHandler", (_ReflectionHandler,), {}))


def write_traces(uri: str, traces: list[Trace], quality: list[float] | None = None) -> str:
    """Publish traces as a dataset (with CaR's ``quality`` column when given), as the curate stages
    leave them."""
    import pyarrow as pa

    from tooldistill import store
    from tooldistill.schema import traces_to_table

    table = traces_to_table(traces)
    if quality is not None:
        table = table.append_column("quality", pa.array(quality, pa.float64()))
    token = store.new_token()
    part = store.write_part(uri, token, 0, table)
    store.publish(
        uri,
        token=token,
        manifest=store.Manifest(
            kind="traces", stage="test", rows=len(traces), parts=[part], config_hash="test", fingerprint=token
        ),
    )
    return uri


def main(argv: Sequence[str] | None = None) -> None:
    """The student stand-in in this process, until it is killed."""
    parser = argparse.ArgumentParser(description="The student stand-in of optimize/testing.py.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per chat request")
    parser.add_argument("--hold-at", type=int, default=None, help="never answer the N-th chat request")
    args = parser.parse_args(argv)
    server = StudentServer(latency_s=args.latency, port=args.port)
    out = threading.Lock()

    def seen(number: int) -> None:
        with out:
            print(f"request {number}", flush=True)
        if number == args.hold_at:
            threading.Event().wait()  # held until the process is killed

    server.on_request = seen
    print(f"listening {server.url}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
