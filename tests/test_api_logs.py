"""Anthropic Messages and OpenAI chat-completions request/response logs."""

import json
import re
import shutil
import time

import pyarrow.fs as pafs
import pytest

from conftest import CLAUDE_CODE, FIXTURES
from tooldistill.executor import LocalExecutor
from tooldistill.ingest import IngestConfig, ingest
from tooldistill.readers import Ignored, Quarantined, ReadContext, ReaderOptions, SourceFile, base
from tooldistill.readers.anthropic import COMPACTION_PREFIX, KNOWN_BLOCKS, read_anthropic_log
from tooldistill.readers.claude_code import read_claude_code
from tooldistill.readers.jsonl import read_jsonl
from tooldistill.readers.openai import read_openai_log

API_LOGS = FIXTURES / "api_logs"
CURRENT = API_LOGS / "anthropic_current.jsonl"
WRAPPED = API_LOGS / "anthropic_wrapped.jsonl"
OPENAI_CURRENT = API_LOGS / "openai_current.jsonl"

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def write_jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def read_all(reader, path, **options):
    """Traces, quarantined records and ignored-line counts of one file."""
    items = list(
        reader(
            SourceFile(str(path), str(path), pafs.LocalFileSystem()),
            ReadContext.create(ReaderOptions(**options)),
        )
    )
    traces = [i for i in items if not isinstance(i, Quarantined | Ignored)]
    return (
        traces,
        [i for i in items if isinstance(i, Quarantined)],
        [i for i in items if isinstance(i, Ignored)],
    )


def read(reader, path, **options):
    traces, quarantined, _ = read_all(reader, path, **options)
    return traces, quarantined


def anthropic_exchange(msg_id, content, messages=None, tools=(WEATHER_TOOL,), system=None):
    request = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "tools": list(tools)}
    request["messages"] = messages or [{"role": "user", "content": "Weather in Paris?"}]
    if system is not None:
        request["system"] = system
    response = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 400, "output_tokens": 30},
    }
    return {"request": request, "response": response}


def test_anthropic_log(tmp_path):
    records = [
        anthropic_exchange(
            "msg_1",
            [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
            system=[
                {
                    "type": "text",
                    "text": "Use key sk-ant-api03-" + "k" * 30,
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        ),
        # a later turn: history with a tool_use and its tool_result
        anthropic_exchange(
            "msg_2",
            [{"type": "tool_use", "id": "toolu_c", "name": "get_weather", "input": {"city": "Rome"}}],
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_a",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18C"},
                        {"type": "text", "text": "And Rome?"},
                    ],
                },
            ],
        ),
        anthropic_exchange("msg_3", [{"type": "text", "text": "It is sunny."}]),  # no call
        anthropic_exchange("msg_4", [{"type": "tool_use", "id": "t", "name": "get_forecast", "input": {}}]),
        {"request": {"messages": []}, "response": {"type": "error", "error": {"type": "overloaded_error"}}},
        {"request": {"model": "x"}},
    ]
    traces, quarantined = read(read_anthropic_log, write_jsonl(tmp_path / "a.jsonl", records))
    assert [t.source_id for t in traces] == ["msg_1", "msg_2"]
    first = traces[0]
    assert [c.arguments["city"] for c in first.reference_calls] == ["Paris", "Oslo"]
    assert first.messages[0].role == "system" and "[REDACTED:anthropic_key]" in first.messages[0].content
    assert first.tools[0].parameters["required"] == ["city"]
    assert first.metadata["assistant_text"] == "Checking both."
    second = traces[1]
    assert [m.role for m in second.messages] == ["user", "assistant", "tool", "user"]
    assert second.messages[2].tool_call_id == "toolu_a" and second.messages[3].content == "And Rome?"
    reasons = sorted(q.reason for q in quarantined)
    assert any("unknown tool 'get_forecast'" in r for r in reasons)
    assert any("API error" in r for r in reasons)
    assert any("no request with a messages list" in r for r in reasons) and len(quarantined) == 3

    traces, _ = read(read_anthropic_log, tmp_path / "a.jsonl", include_no_call=True)
    no_call = next(t for t in traces if t.source_id == "msg_3")
    assert no_call.reference_calls == []


def openai_exchange(resp_id, choices, messages=None):
    return {
        "request": {
            "model": "gpt-4.1",
            "messages": messages or [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Weather",
                        "parameters": WEATHER_TOOL["input_schema"],
                    },
                }
            ],
        },
        "response": {"id": resp_id, "object": "chat.completion", "model": "gpt-4.1", "choices": choices},
    }


def choice(*calls, index=0):
    return {
        "index": index,
        "finish_reason": "tool_calls",
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(calls)
            ],
        },
    }


def test_openai_log(tmp_path):
    records = [
        openai_exchange("cc-1", [choice(("get_weather", '{"city": "Paris"}'))]),
        openai_exchange(
            "cc-2",
            [
                choice(("get_weather", '{"city":"Paris"}')),
                choice(("get_weather", '{"city":"paris"}'), index=1),
            ],
            messages=[
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look at this"},
                        {"type": "image_url", "image_url": {"url": "data:..."}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c0",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Nice"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c0", "content": "22C"},
            ],
        ),
        openai_exchange("cc-3", [choice(("get_weather", '{"city": "Par'))]),
        openai_exchange("cc-4", [choice()]),
    ]
    path = write_jsonl(tmp_path / "o.jsonl", records, tail='{"request": {"messages": [')
    traces, quarantined = read(read_openai_log, path)
    assert [t.source_id for t in traces] == ["cc-1", "cc-2"]
    assert traces[0].reference_calls[0].arguments == {"city": "Paris"} and traces[0].teacher_samples == []
    multi = traces[1]
    assert [m.role for m in multi.messages] == ["system", "user", "assistant", "tool"]
    assert multi.messages[1].content == "Look at this\n[image]"
    assert [[c.arguments["city"] for c in s] for s in multi.teacher_samples] == [["Paris"], ["paris"]]
    assert sorted(q.line for q in quarantined) == [3, 5]
    assert any("not valid JSON" in q.reason for q in quarantined)
    assert any(q.reason.startswith("truncated last line") for q in quarantined)


def test_an_odd_record_is_quarantined_and_the_next_line_still_read(tmp_path):
    odd = openai_exchange("cc-odd", [choice(("get_weather", '{"city": "Rome"}'))])
    odd["response"]["choices"][0]["message"]["content"] = {"type": "hologram"}  # neither text nor parts
    good = openai_exchange("cc-good", [choice(("get_weather", '{"city": "Oslo"}'))])
    traces, bad = read(read_openai_log, write_jsonl(tmp_path / "o.jsonl", [odd, good]))
    assert [t.source_id for t in traces] == ["cc-good"]
    assert len(bad) == 1 and bad[0].line == 1 and "hologram" in bad[0].reason


def test_a_secret_cut_by_the_excerpt_limit_does_not_leak(tmp_path):
    key = "sk-ant-api03-" + "A" * 80
    record = {"request": {"padding": "x" * 250, "key": key}, "response": None}
    _, bad = read(read_openai_log, write_jsonl(tmp_path / "o.jsonl", [record]))
    assert len(bad) == 1
    assert "sk-ant" not in bad[0].excerpt and "AAAA" not in bad[0].excerpt


# ---------------------------------------------------------------------------------------------
# Lines in a wrapper, lines of no known shape
# ---------------------------------------------------------------------------------------------


def test_wrapped_lines_are_read_and_unknown_lines_counted():
    traces, quarantined, ignored = read_all(read_anthropic_log, WRAPPED)
    assert [t.source_id for t in traces] == ["msg_01CurWebSearch", "msg_01CurPorto"]
    assert quarantined == []
    assert {(i.kind, i.known) for i in ignored} == {
        ("reply without tool calls", True),
        ("type message_batch", False),
        ("object with keys data,id,object", False),
    }
    # the wrapper changes nothing: the same records unwrapped give the same traces
    unwrapped, _, _ = read_all(read_anthropic_log, CURRENT)
    assert [t.id for t in traces] == [t.id for t in unwrapped[:2]]


def test_a_file_of_unknown_shapes_is_reported_by_the_ingest_summary(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(WRAPPED, logs / "wrapped.jsonl")
    # a log of bare responses is no format the reader knows: every line is counted, none lost
    bare = [json.loads(line)["raw"]["response"] for line in WRAPPED.read_text().splitlines()[:2]]
    write_jsonl(
        logs / "responses-only.jsonl", [{"timestamp": "2025-06-02T09:00:00Z", "raw": r} for r in bare]
    )
    result = ingest(
        IngestConfig(sources=(str(logs),), format="anthropic", out=str(tmp_path / "out")),
        LocalExecutor(show_progress=False),
    )
    [row] = result.summary
    assert row["traces"] == 2 and row["quarantined"] == 0 and row["files_without_traces"] == 1
    assert row["empty_files"] == [str(logs / "responses-only.jsonl")]
    assert row["unrecognized"] == {
        "type message": 2,
        "type message_batch": 1,
        "object with keys data,id,object": 1,
    }
    assert row["ignored"] == {"reply without tool calls": 1}


def test_the_wrapper_is_opened_for_claude_code_logs_too(tmp_path):
    stream = CLAUDE_CODE / "stream/etl-run.jsonl"
    lines = stream.read_text().splitlines()
    wrapped = write_jsonl(
        tmp_path / "etl-run.jsonl",
        [{"timestamp": f"2025-06-02T10:00:0{i}Z", "raw": json.loads(x)} for i, x in enumerate(lines)],
    )
    plain, _, _ = read_all(read_claude_code, stream)
    traces, quarantined, _ = read_all(read_claude_code, wrapped)
    assert plain and [t.id for t in traces] == [t.id for t in plain] and quarantined == []


def test_only_the_exact_wrapper_is_opened():
    assert base.unwrap({"timestamp": "t", "raw": {"a": 1}}) == {"a": 1}
    assert base.unwrap({"raw": {"a": 1}}) == {"a": 1}
    for record in ({"raw": {"a": 1}, "source_id": "x"}, {"timestamp": "t", "raw": "text"}):
        assert base.unwrap(record) is record


# ---------------------------------------------------------------------------------------------
# Today's Messages API content
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def current():
    traces, quarantined, ignored = read_all(read_anthropic_log, CURRENT)
    assert quarantined == []
    return {t.source_id: t for t in traces}, ignored


def roles(trace):
    return [m.role for m in trace.messages]


def test_every_record_of_todays_api_becomes_a_trace(current):
    traces, _ = current
    assert list(traces) == [
        "msg_01CurWebSearch",
        "msg_01CurPorto",
        "msg_01CurCode",
        "msg_01CurPy",
        "msg_01CurForecast",
        "msg_01CurMcp",
        "msg_01CurCompacted",
        "msg_01CurFetch",
        "msg_01CurFuture",
        "msg_01CurAutoCompact",
    ]


def test_server_tools_are_calls_with_their_documented_schemas(current):
    traces, _ = current
    web = traces["msg_01CurWebSearch"]
    assert [c.name for c in web.reference_calls] == ["web_search", "get_weather"]
    spec = {t.name: t for t in web.tools}["web_search"]
    assert spec.parameters["required"] == ["query"] and not spec.schema_missing
    assert web.metadata["server_tools"] == ["web_search"] and web.metadata["schema_from_docs"] == [
        "web_search"
    ]
    # cited text is text; the search results are not part of the history of this decision
    assert web.metadata["assistant_text"] == "Let me look that up.\nThe festival runs all month."

    code = traces["msg_01CurCode"]
    assert [c.name for c in code.reference_calls] == [
        "bash_code_execution",
        "text_editor_code_execution",
        "text_editor_code_execution",
        "bash_code_execution",
    ]
    specs = {t.name: t.parameters for t in code.tools}
    assert specs["bash_code_execution"]["required"] == ["command"]
    assert "file_text" in specs["text_editor_code_execution"]["properties"]
    assert code.messages[0].content == "[container upload]\nPlot monthly totals from sales.csv"
    assert {t.name: t.parameters for t in traces["msg_01CurPy"].tools}["code_execution"]["required"] == [
        "code"
    ]
    fetch = traces["msg_01CurFetch"]
    assert {t.name: t for t in fetch.tools}["web_fetch"].parameters["required"] == ["url"]
    assert {t.name: t for t in fetch.tools}["advisor"].schema_missing  # no documented input


def test_server_results_in_the_history_become_tool_messages(current):
    traces, _ = current
    porto = traces["msg_01CurPorto"]
    # the assistant turn is split at the search result: what followed was written having seen it
    assert roles(porto) == ["user", "assistant", "tool", "assistant", "tool", "user"]
    assert [c.name for c in porto.messages[1].tool_calls] == ["web_search"]
    assert porto.messages[2].tool_call_id == "srvtoolu_01WebA"
    assert porto.messages[2].content.splitlines() == [
        "Festas de Lisboa programme (https://example.org/festas)",
        "Lisbon in June: what to pack (https://example.com/lisbon-june)",
    ]
    assert porto.messages[3].content == "The festival runs all month."
    assert porto.messages[5].content.splitlines() == [
        "[document: My itinerary]",
        "Day 1: Alfama. Day 2: Belem.",
        "[document]",
        "[search result] Travel policy (https://intranet.example/policies/travel)",
        "Book trains over flights under 500 km.",
        "[image]",
        "And Porto tomorrow?",
    ]
    python = traces["msg_01CurPy"]
    assert roles(python) == ["user", "assistant", "tool", "assistant", "user"]
    assert python.messages[2].content == "18446744073709551616\n"
    assert traces["msg_01CurFetch"].messages[2].content == "Fetch the page first."  # advisor result


def test_tool_search_results_and_tool_references(current):
    traces, _ = current
    found = traces["msg_01CurForecast"]
    assert roles(found) == ["user", "assistant", "tool", "assistant", "tool"]
    assert found.messages[2].content == "[tool reference: get_forecast]"
    assert found.messages[4].content == "3C, snow\n[tool reference: get_weather]"
    assert [c.name for c in found.reference_calls] == ["get_forecast"]
    assert {t.name: t.parameters for t in found.tools}["tool_search_tool_regex"]["required"] == ["query"]


def test_mcp_connector_tools(current):
    traces, _ = current
    mcp = traces["msg_01CurMcp"]
    assert [(c.name, c.arguments["title"]) for c in mcp.reference_calls] == [("create_ticket", "VPN down")]
    tools = {t.name: t for t in mcp.tools}
    assert tools["search_tickets"].parameters["required"] == ["q"]  # from the listing block
    assert tools["create_ticket"].schema_missing and tools["close_ticket"].schema_missing
    assert mcp.metadata["mcp_tools"] == [
        "tickets/close_ticket",
        "tickets/create_ticket",
        "tickets/search_tickets",
    ]
    assert roles(mcp) == ["user", "assistant", "tool"] and mcp.messages[2].content == "no open tickets"


def test_compaction_replaces_what_came_before_it(current):
    traces, _ = current
    compacted = traces["msg_01CurCompacted"]
    assert roles(compacted) == ["system", "user", "user"]
    assert (
        compacted.messages[1].content
        == COMPACTION_PREFIX + "The user is tracking order A-1001 placed on 2 June."
    )
    assert compacted.metadata["after_compaction"] is True
    # the compaction's tool changes brought lookup_order in
    assert "lookup_order" in {t.name for t in compacted.tools}
    auto = traces["msg_01CurAutoCompact"]
    assert roles(auto) == ["user"] and auto.messages[0].content.startswith(COMPACTION_PREFIX)


def test_tool_changes_in_the_conversation(current):
    traces, _ = current
    fetch = traces["msg_01CurFetch"]
    assert {t.name for t in fetch.tools} == {"web_fetch", "advisor", "get_forecast"}  # get_weather removed
    assert fetch.messages[0].content.splitlines()[:2] == [
        "[tool added: get_forecast]",
        "[tool removed: get_weather]",
    ]
    assert [c.name for c in fetch.reference_calls] == ["web_fetch"]


def test_a_future_block_type_costs_nothing_but_is_counted(current):
    traces, ignored = current
    future = traces["msg_01CurFuture"]
    assert future.messages[0].content == "[hologram_20270101]\nWeather in Nice?"
    assert future.metadata["unknown_blocks"] == {"hologram_20270101": 1, "sparkle": 1}
    assert {(i.kind, i.known) for i in ignored} == {
        ("content block hologram_20270101", False),
        ("content block sparkle", False),
    }


def test_every_block_type_of_the_sdk_is_known():
    """``KNOWN_BLOCKS`` against the installed SDK's content-block unions (request and response)."""
    import typing

    from anthropic.types import ContentBlock, ContentBlockParam
    from anthropic.types.beta import BetaContentBlock, BetaContentBlockParam

    def members(alias):
        """The ``type`` literals of every block class in a (nested) union alias."""
        found = set()
        for arg in typing.get_args(alias):
            if typing.get_args(arg):
                found |= members(arg)
            elif isinstance(arg, type) and "type" in getattr(arg, "__annotations__", {}):
                found |= set(
                    re.findall(r"Literal\[['\"]([a-z_0-9]+)['\"]\]", str(arg.__annotations__["type"]))
                )
        return found

    sdk = set()
    for alias in (ContentBlock, ContentBlockParam, BetaContentBlock, BetaContentBlockParam):
        sdk |= members(alias)
    assert len(sdk) >= 20, sorted(sdk)  # the unions were found
    assert sdk <= KNOWN_BLOCKS, sorted(sdk - KNOWN_BLOCKS)


# ---------------------------------------------------------------------------------------------
# OpenAI
# ---------------------------------------------------------------------------------------------


def test_openai_tools_without_parameters_and_other_shapes():
    traces, quarantined, ignored = read_all(read_openai_log, OPENAI_CURRENT)
    assert quarantined == []
    by_id = {t.source_id: t for t in traces}
    assert list(by_id) == ["chatcmpl-Time1", "chatcmpl-Both", "chatcmpl-Wrapped"]
    assert by_id["chatcmpl-Time1"].reference_calls[0].arguments == {}  # arguments ""
    assert [c.arguments for c in by_id["chatcmpl-Both"].reference_calls] == [{}, {"city": "Oslo"}]
    assert {(i.kind, i.known) for i in ignored} == {
        ("Responses API exchange (not read)", False),
        ("object with keys data,first_id,object", False),
    }


# ---------------------------------------------------------------------------------------------
# One bad record costs one record
# ---------------------------------------------------------------------------------------------


def test_deep_nesting_and_huge_lines_cost_one_line(tmp_path, monkeypatch):
    good = CURRENT.read_text().splitlines()[0]
    deep = "[" * 100_000 + "]" * 100_000
    deep_object = '{"request": ' * 50_000 + "1" + "}" * 50_000
    # a valid 6 MB line: read, and quickly
    big = json.loads(good)
    big["request"]["messages"][0]["content"] += " " + "lorem ipsum " * 500_000
    path = tmp_path / "a.jsonl"
    path.write_text(
        "\n".join([deep, good, deep_object, json.dumps(big), good.replace("msg_01CurWebSearch", "msg_last")])
        + "\n"
    )
    started = time.monotonic()
    traces, quarantined, _ = read_all(read_anthropic_log, path)
    assert time.monotonic() - started < 10
    assert [t.source_id for t in traces] == ["msg_01CurWebSearch", "msg_01CurWebSearch", "msg_last"]
    assert [(q.line, q.reason) for q in quarantined] == [
        (1, "JSON nested too deeply to parse"),
        (3, "JSON nested too deeply to parse"),
    ]
    # over the line limit: quarantined unread
    monkeypatch.setattr(base, "MAX_LINE_BYTES", 1024 * 1024)
    traces, quarantined, _ = read_all(read_anthropic_log, path)
    assert [t.source_id for t in traces] == ["msg_01CurWebSearch", "msg_last"]
    assert quarantined[-1].line == 4 and "over the 1 MiB line limit" in quarantined[-1].reason
    assert len(quarantined[-1].excerpt) <= base.EXCERPT_CHARS + 1


def test_wrong_types_cost_one_record(tmp_path):
    good = json.loads(CURRENT.read_text().splitlines()[0])
    odd = []
    for path, value in [
        (("request", "messages", 0, "content"), {"type": {"nested": True}}),
        (("request", "messages", 0), ["user"]),
        (("request", "tools"), {"name": "get_weather"}),
        (("request", "tools", 0, "type"), {"v": 1}),
        (("response", "content", 1, "name"), {"not": "a name"}),
        (("response", "content", 1, "input"), "just text"),
        (("response", "content", 2, "content"), 7),
        (("response", "id"), ["msg"]),
        (("request", "system"), {"text": 1}),
    ]:
        record = json.loads(json.dumps(good))
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        odd.append(record)
    file = write_jsonl(tmp_path / "a.jsonl", [*odd, good])
    items = list(read_anthropic_log(SourceFile(str(file), str(file), pafs.LocalFileSystem()), ReadContext()))
    lines = {getattr(i, "line", None) for i in items if isinstance(i, Quarantined)}
    assert 0 not in lines and len(lines) <= len(odd)
    traces = [i for i in items if not isinstance(i, Quarantined | Ignored)]
    assert traces[-1].source_id == "msg_01CurWebSearch" and traces[-1].metadata["line"] == len(odd) + 1


def test_a_reader_that_raises_on_a_record_loses_that_record_only(tmp_path):
    file = write_jsonl(tmp_path / "a.jsonl", [{"n": 1}, {"n": "two"}, {"n": 3}])

    def one(source, context, number, record):
        yield record["n"] + 1  # TypeError on line 2

    items = list(
        base.read_records(SourceFile(str(file), str(file), pafs.LocalFileSystem()), ReadContext(), one)
    )
    assert items[0] == 2 and items[2] == 4
    assert isinstance(items[1], Quarantined) and items[1].line == 2
    assert items[1].reason.startswith("reader failed on this record: TypeError")


def test_jsonl_reader_keeps_going_after_an_odd_record(tmp_path):
    trace = {
        "source_id": "ex-1",
        "source": "handwritten",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"name": "get_weather"}],
        "reference_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
    }
    deep = {**trace, "source_id": "ex-deep", "metadata": {"x": json.loads("[" * 900 + "]" * 900)}}
    odd_id = {**trace, "id": {"not": "a string"}, "source_id": "ex-odd"}
    file = write_jsonl(tmp_path / "t.jsonl", [deep, odd_id, {**trace, "source_id": "ex-2"}])
    traces, quarantined, _ = read_all(read_jsonl, file)
    assert [t.source_id for t in traces][-2:] == ["ex-odd", "ex-2"]
    assert all(q.line == 1 for q in quarantined)
