"""The gateway (``serve.gateway``) in front of a stand-in student, driven by real clients: the
``anthropic`` and ``openai`` SDKs, raw HTTP for the event stream, and the Claude Code CLI.

The student here is ``ScriptedStudentServer`` (the network edge: an OpenAI-compatible server with
known answers, streaming included); everything between the client and it is the real gateway.
The real CPU student behind the Ray Serve ingress is in ``tests/test_serve.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tooldistill.context import ContextPolicy
from tooldistill.optimize.student import Prompt, StudentSettings, fitted_request
from tooldistill.optimize.testing import ScriptedStudentServer, make_traces
from tooldistill.request import trace_request
from tooldistill.serve.gateway import GatewaySettings, Routing
from tooldistill.serve.keys import key_sha256
from tooldistill.serve.learned import Learned
from tooldistill.serve.upstream import RunningGateway, start_gateway

REPO = Path(__file__).resolve().parents[1]
KEY = "td-gateway-test-key"
READ = {
    "name": "Read",
    "description": "Read a file",
    "input_schema": {
        "type": "object",
        "properties": {"file_path": {"type": "string"}},
        "required": ["file_path"],
    },
}


def call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


def after_tool_result(body: dict[str, Any], _answered: int) -> int:
    """Script entry 0 (a call) for a new request, 1 (text) once the call's result came back."""
    messages = body.get("messages") or []
    return 1 if messages and messages[-1].get("role") == "tool" else 0


@pytest.fixture()
def student() -> Iterator[ScriptedStudentServer]:
    server = ScriptedStudentServer(
        [call("Read", {"file_path": "/tmp/notes.txt"}), {"content": "The file says hello."}],
        model="stand-in",
        choose=after_tool_result,
    )
    with server:
        yield server


def gateway_for(student: ScriptedStudentServer, **settings: Any) -> RunningGateway:
    return start_gateway(student.url, GatewaySettings(**settings), port=0)


@pytest.fixture()
def gateway(student: ScriptedStudentServer) -> Iterator[RunningGateway]:
    running = gateway_for(student, api_key_sha256=key_sha256(KEY))
    yield running
    running.stop()


def test_anthropic_sdk_messages_tools_and_a_tool_result_turn(gateway: RunningGateway, student: Any) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=KEY)
    ask = {"role": "user", "content": "What is in /tmp/notes.txt?"}
    message = client.messages.create(model="claude-opus-4-5", max_tokens=200, tools=[READ], messages=[ask])
    assert message.stop_reason == "tool_use" and message.role == "assistant"
    use = message.content[-1]
    assert use.type == "tool_use" and use.name == "Read" and use.input == {"file_path": "/tmp/notes.txt"}
    assert use.id.startswith("toolu_")
    assert message.usage.input_tokens == 50 and message.usage.output_tokens == 10
    # any Claude model name is answered by the student
    assert student.received[-1]["model"] == "stand-in"
    # the call's result comes back (block-list content, flagged as an error): the student sees it
    # as a tool message for that call
    history = [
        ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": use.id,
                    "is_error": True,
                    "content": [{"type": "text", "text": "permission denied"}],
                }
            ],
        },
    ]
    answer = client.messages.create(model="claude-haiku-4-5", max_tokens=200, tools=[READ], messages=history)
    assert answer.stop_reason == "end_turn" and answer.content[0].text == "The file says hello."
    sent = student.received[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == use.id
    assert sent[-1] == {"role": "tool", "tool_call_id": use.id, "content": "Error: permission denied"}


def test_anthropic_sdk_streams_and_counts_tokens(gateway: RunningGateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=KEY)
    ask = [{"role": "user", "content": "What is in /tmp/notes.txt?"}]
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, tools=[READ], messages=ask
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and "input_json" in kinds and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use" and final.content[-1].input == {"file_path": "/tmp/notes.txt"}
    counted = client.messages.count_tokens(model="claude-x", messages=ask, tools=[READ])
    bigger = client.messages.count_tokens(model="claude-x", messages=ask * 3, tools=[READ])
    assert 0 < counted.input_tokens < bigger.input_tokens


def test_the_event_stream_is_anthropics_sequence(gateway: RunningGateway) -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 100,
        "stream": True,
        "tools": [READ],
        "messages": [{"role": "user", "content": "read it"}],
    }
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages?beta=true", json=body, headers={"x-api-key": KEY}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[:2] == ["message_start", "ping"]
    assert events[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in events and "content_block_stop" in events


def test_what_the_student_cannot_honour_is_accepted_and_ignored(
    gateway: RunningGateway, student: Any
) -> None:
    """Claude Code's request fields, caching hints, thinking blocks, server tools, images and
    documents: never a 400; images and documents become counted placeholders."""
    body = {
        "model": "claude-opus-4-5",
        "max_tokens": 128000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "someone"},
        "service_tier": "auto",
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": " Be brief."},
        ],
        "tools": [READ, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What does this show?", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
                    },
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                ],
            },
            {"role": "user", "content": "Go on."},
        ],
    }
    headers = {
        "x-api-key": KEY,
        "anthropic-beta": "context-management-2025-06-27,interleaved-thinking-2025-05-14",
    }
    r = httpx.post(f"{gateway.url}/v1/messages", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["tooldistill-placeholders"] == "2"
    assert (
        "thinking" in r.headers["tooldistill-ignored"] and "server_tools" in r.headers["tooldistill-ignored"]
    )
    sent = student.received[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["Read"]
    assert sent["messages"][0] == {"role": "system", "content": "You are Claude Code. Be brief."}
    user = sent["messages"][1]["content"]
    assert (
        user.startswith("What does this show?") and "[image omitted" in user and "[document omitted" in user
    )
    assert sent["messages"][2] == {"role": "assistant", "content": "Let me look."}
    assert "thinking" not in sent and "metadata" not in sent


def test_errors_come_in_anthropics_shape(student: ScriptedStudentServer) -> None:
    running = gateway_for(
        student,
        api_key_sha256=key_sha256(KEY),
        routing=Routing(default=""),  # no default: an unknown model is a 404
        learned=Learned(context=ContextPolicy(window=2048)),
    )
    try:
        client = anthropic.Anthropic(base_url=running.url, api_key=KEY, max_retries=0)
        ask = [{"role": "user", "content": "hi"}]
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.create(
                model="stand-in", max_tokens=10, messages=[{"role": "robot", "content": "x"}]
            )
        assert bad.value.body["error"]["type"] == "invalid_request_error"
        assert "messages" in bad.value.body["error"]["message"]
        r = httpx.post(f"{running.url}/v1/messages", content=b"{not json", headers={"x-api-key": KEY})
        assert r.status_code == 400 and r.json()["type"] == "error"
        for headers in ({"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}, {}):
            r = httpx.post(f"{running.url}/v1/messages", json={}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert (
            httpx.get(f"{running.url}/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code
            == 200
        )
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.messages.create(model="claude-opus-4-5", max_tokens=10, messages=ask)
        assert missing.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.APIStatusError) as large:
            client.messages.create(
                model="stand-in", max_tokens=10, messages=[{"role": "user", "content": "x " * 3000}]
            )
        assert large.value.status_code == 413 and large.value.body["error"]["type"] == "request_too_large"
        assert "2,048-token window" in large.value.body["error"]["message"]
        student.busy = True
        with pytest.raises(anthropic.APIStatusError) as busy:
            client.messages.create(model="stand-in", max_tokens=10, messages=ask)
        assert busy.value.status_code == 529 and busy.value.body["error"]["type"] == "overloaded_error"
        r = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": "stand-in", "messages": ask},
            headers={"x-api-key": KEY},
        )
        assert r.status_code == 429 and "error" in r.json()
    finally:
        student.busy = False
        running.stop()


def test_openai_sdk_unchanged_and_models_in_both_shapes(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY)
    tools = [{"type": "function", "function": {"name": "Read", "parameters": READ["input_schema"]}}]
    answer = client.chat.completions.create(
        model="stand-in",
        messages=[{"role": "user", "content": "read"}],
        tools=tools,  # type: ignore[list-item]
    )
    calls = answer.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "Read"
    chunks = list(
        client.chat.completions.create(
            model="stand-in",
            messages=[{"role": "user", "content": "read"}],
            tools=tools,
            stream=True,  # type: ignore[list-item]
        )
    )
    assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert [m.id for m in client.models.list()] == ["stand-in"]
    listed = anthropic.Anthropic(base_url=gateway.url, api_key=KEY).models.list()
    assert [m.id for m in listed] == ["stand-in"] and listed.data[0].type == "model"


def test_the_gateway_sends_what_evaluation_sends(student: ScriptedStudentServer) -> None:
    """A client's plain request, with the learned prompt and context policy applied by the gateway,
    is byte for byte the request evaluation built for the same trace."""
    trace = make_traces(1)[0]
    long_history = [
        {"role": "user", "content": "Earlier question " + "padding " * 400},
        {"role": "assistant", "content": "Earlier answer " + "filler " * 400},
    ]
    trace = trace.model_copy(
        update={
            "messages": [type(trace.messages[0]).model_validate(m) for m in long_history] + trace.messages
        }
    )
    prompt = Prompt(
        system="Call the tool that answers the question.",
        demos=({"role": "user", "content": "weather in Oslo?"}, {"role": "assistant", "content": "ok"}),
    )
    policy = ContextPolicy(window=1400, keep_recent=1)
    settings = StudentSettings(endpoint=student.url, model="stand-in", max_tokens=96, context=policy)
    expected = fitted_request(trace, prompt, settings)
    assert expected.cut  # the policy had something to cut
    learned = Learned(system=prompt.system, demos=list(prompt.demos), context=policy, answer_tokens=96)
    running = gateway_for(student, learned=learned)
    try:
        client = trace_request(trace, "claude-opus-4-5", settings.temperature, settings.max_tokens)
        r = httpx.post(f"{running.base_url}/chat/completions", json=client)
        assert r.status_code == 200, r.text
        assert student.received[-1] == expected.request | {"model": "stand-in"}
    finally:
        running.stop()


CLAUDE_CODE = "2.1.328"


def claude_binary() -> Path:
    """The Claude Code CLI that ``make test`` installs (``.tools``); skips only without npm."""
    found = os.environ.get("TOOLDISTILL_CLAUDE_BIN")
    if found:
        return Path(found)
    binary = REPO / ".tools" / "node_modules" / "@anthropic-ai" / "claude-code-linux-x64" / "claude"
    if not binary.is_file():
        if shutil.which("npm") is None:
            pytest.skip("the Claude Code CLI needs npm (not installed here)")
        pytest.fail(f"npm is here but the Claude Code CLI is not: run `make tools` ({binary} missing)")
    return binary


def test_claude_code_runs_on_the_student_and_its_log_ingests_back(tmp_path: Path) -> None:
    """Claude Code itself, pointed at the gateway: the student asks to Read a file, Claude Code runs
    the call and sends the result back, the student answers, the session ends in success; the
    session log Claude Code wrote ingests back with the student's call as the reference."""
    binary = claude_binary()
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    notes = work / "notes.txt"
    notes.write_text("hello from the notes\n")
    server = ScriptedStudentServer(
        [call("Read", {"file_path": str(notes)}), {"content": "The notes say: hello from the notes."}],
        model="stand-in",
        choose=after_tool_result,
    )
    with server:
        running = gateway_for(server)
        try:
            env = {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(home),
                "ANTHROPIC_BASE_URL": running.url,
                "ANTHROPIC_API_KEY": "anything",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_AUTOUPDATER": "1",
            }
            done = subprocess.run(
                [
                    str(binary),
                    "-p",
                    "Show me what is in notes.txt",
                    "--output-format",
                    "stream-json",
                    "--verbose",
                ],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
        finally:
            running.stop()
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no stream-json from Claude Code (rc {done.returncode}): {done.stderr[-2000:]}"
    result = lines[-1]
    assert result["type"] == "result" and result["subtype"] == "success", result
    assert not result.get("is_error"), result
    results = [
        block
        for line in lines
        if line.get("type") == "user"
        for block in (line.get("message") or {}).get("content") or []
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert results and "hello from the notes" in json.dumps(results[0])
    assert "hello from the notes" in result.get("result", "")
    # the requests were Claude Code's own: its tools, its system prompt
    first = server.received[0]
    assert {"Read", "Bash"} <= {t["function"]["name"] for t in first["tools"]}
    assert first["messages"][0]["role"] == "system"
    # the round trip: the session log ingests back, the student's call as the reference
    from tooldistill.ingest import IngestConfig, ingest
    from tooldistill.store import Dataset

    logs = home / ".claude" / "projects"
    assert list(logs.rglob("*.jsonl")), "Claude Code wrote no session log"
    out = tmp_path / "traces"
    ingest(IngestConfig(sources=(str(logs),), format="claude_code", out=str(out)))
    traces = Dataset.open(str(out)).to_traces()
    decided = [t for t in traces if t.reference_calls]
    assert decided, "no decision point in the session log"
    assert decided[0].reference_calls[0].name == "Read"
    assert decided[0].reference_calls[0].arguments == {"file_path": str(notes)}
    # the exact request: the trace rebuilt from the log's request lines is, message for message
    # and tool for tool, the request the student received for that decision (the gateway's
    # normalization: one system text, text blocks joined)
    trace = decided[0]
    assert trace.metadata["request_source"] == "log" and trace.metadata["cli_version"] == CLAUDE_CODE
    rebuilt = trace_request(trace, "stand-in", 0.0, 1)
    received = server.received[0]
    assert [(m["role"], m.get("content")) for m in rebuilt["messages"]] == [
        (m["role"], m.get("content")) for m in received["messages"]
    ]
    assert [t["function"] for t in rebuilt["tools"]] == [
        {k: t["function"].get(k) for k in ("name", "description", "parameters")} for t in received["tools"]
    ]
    # the same run's stream-json output ingests too (no request lines there: the transcript)
    stream = tmp_path / "stream" / "run.jsonl"
    stream.parent.mkdir()
    stream.write_text(done.stdout)
    ingest(
        IngestConfig(
            sources=(str(stream),),
            format="claude_code",
            out=str(tmp_path / "stream-traces"),
            reader={"prompt": "Show me what is in notes.txt"},
        )
    )
    from_stream = [t for t in Dataset.open(str(tmp_path / "stream-traces")).to_traces() if t.reference_calls]
    assert [c.model_dump() for c in from_stream[0].reference_calls] == [
        c.model_dump() for c in trace.reference_calls
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_finished_run_served_through_the_gateway_answers_as_it_was_measured(tmp_path: Path) -> None:
    """``tooldistill run`` with a stand-in student, then ``tooldistill serve --endpoint --student
    RUN``: a test trace sent as a client would (no learned prompt) gets the calls the run recorded
    for it, on both APIs; the same request straight to the student does not always (the learned
    prompt is what makes the difference)."""
    import sys
    import time

    from test_pipeline import invoke, write_config
    from tooldistill.layout import RunLayout
    from tooldistill.optimize.testing import ReflectionServer, StudentServer
    from tooldistill.request import safe_tool_name
    from tooldistill.store import Dataset
    from tooldistill.student import StudentClient

    with StudentServer() as student, ReflectionServer() as reflection:
        config = write_config(tmp_path, (student, reflection))
        run = tmp_path / "run"
        result = invoke("run", config, "--out", run)
        assert result.exit_code == 0, result.output
        hint = f"tooldistill serve --endpoint {student.url} --student {run}"
        assert hint in result.output.replace("\n", "")
        best = json.loads((run / "optimize" / "summary.json").read_text())["best_phase"]
        outcomes = json.loads((run / "optimize" / best / "test.json").read_text())["outcomes"]
        recorded = {o["trace_id"]: o for o in outcomes}
        settings = json.loads((run / "optimize" / "config.json").read_text())["student"]
        traces = [
            t
            for t in Dataset.open(RunLayout(str(run)).curate.split_part("test")).to_traces()
            if t.id in recorded
        ]
        assert traces
        port = _free_port()
        tooldistill = Path(sys.executable).with_name("tooldistill")
        command = [
            str(tooldistill),
            "serve",
            "--endpoint",
            student.url,
            "--student",
            str(run),
            "--port",
            str(port),
        ]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, (
                    server.stdout.read() if server.stdout else ""
                )
                time.sleep(0.5)
            chat = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
            claude = anthropic.Anthropic(base_url=url, api_key="unused")
            direct, differs = StudentClient(student.url), 0
            for trace in traces:
                request = trace_request(
                    trace, "claude-opus-4-5", settings["temperature"], settings["max_tokens"]
                )
                expected = [
                    (safe_tool_name(c["name"]), c.get("arguments") or {}) for c in recorded[trace.id]["calls"]
                ]
                answer = chat.chat.completions.create(**request).choices[0].message
                got = [(c.function.name, json.loads(c.function.arguments)) for c in answer.tool_calls or []]
                assert got == expected, trace.id
                message = claude.messages.create(
                    model="claude-opus-4-5",
                    max_tokens=settings["max_tokens"],
                    tools=[
                        {
                            "name": t["function"]["name"],
                            "description": t["function"]["description"],
                            "input_schema": t["function"]["parameters"],
                        }
                        for t in request["tools"]
                    ],
                    messages=[{"role": "user", "content": trace.messages[-1].content}],
                    extra_body={"temperature": settings["temperature"]},
                )
                assert [(b.name, b.input) for b in message.content if b.type == "tool_use"] == expected
                plain, _ = direct.chat({**request, "model": "student"})
                plain_calls = plain["choices"][0]["message"].get("tool_calls") or []
                differs += [
                    (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in plain_calls
                ] != expected
            assert differs, "the learned prompt made no difference: the test proves nothing"
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_model_names_resolve_to_served_students() -> None:
    served = ["smollm2", "other"]
    routing = Routing(aliases={"claude-haiku-*": "other"}, default="smollm2")
    assert routing.resolve("other", served) == "other"
    assert routing.resolve("smollm2:phase1-1a2b3c4d", served) == "smollm2:phase1-1a2b3c4d"  # an adapter
    assert routing.resolve("claude-haiku-4-5-20251001", served) == "other"
    assert routing.resolve("claude-opus-4-5", served) == "smollm2"
    assert Routing().resolve("claude-opus-4-5", served) == "smollm2"  # the first served model
    from tooldistill.serve.anthropic import ApiError

    with pytest.raises(ApiError) as refused:
        Routing(default="").resolve("claude-opus-4-5", served)
    assert refused.value.status == 404 and "smollm2, other" in refused.value.message


def test_tools_too_long_for_the_window_are_shortened_not_refused(student: ScriptedStudentServer) -> None:
    """Claude Code's 12 tools alone overflow the CPU student's window: the gateway keeps the names
    and schemas and shortens the descriptions as little as needed, and says so in a header."""
    tools = [
        {
            "name": f"Tool{i}",
            "description": "Does a thing. " + "Long explanation of the tool. " * 60,
            "input_schema": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "Where. " + "More detail. " * 30}},
                "required": ["path"],
            },
        }
        for i in range(8)
    ]
    running = gateway_for(student, learned=Learned(context=ContextPolicy(window=4096)))
    try:
        body = {
            "model": "claude-x",
            "max_tokens": 64000,
            "tools": tools,
            "messages": [{"role": "user", "content": "go"}],
        }
        r = httpx.post(f"{running.url}/v1/messages", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["tooldistill-tools-shortened"]
        sent = student.received[-1]
        assert [t["function"]["name"] for t in sent["tools"]] == [t["name"] for t in tools]
        assert all(t["function"]["parameters"]["required"] == ["path"] for t in sent["tools"])
        assert len(json.dumps(sent["tools"])) < len(json.dumps(tools)) // 3
        assert 0 < sent["max_tokens"] < 4096  # what the window leaves, not the 64,000 asked
        # a request that fits is sent with its tools as they are
        small = {**body, "tools": tools[:1], "max_tokens": 32}
        r = httpx.post(
            f"{running.url}/v1/messages", json={**small, "tools": [{**tools[0], "description": "Short."}]}
        )
        assert r.status_code == 200 and "tooldistill-tools-shortened" not in r.headers
        assert student.received[-1]["tools"][0]["function"]["description"] == "Short."
    finally:
        running.stop()
