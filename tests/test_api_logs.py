"""Anthropic Messages and OpenAI chat-completions request/response logs."""

import json

import pyarrow.fs as pafs

from tooldistill.readers import Quarantined, ReadContext, ReaderOptions, SourceFile
from tooldistill.readers.anthropic import read_anthropic_log
from tooldistill.readers.openai import read_openai_log

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def write_jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def read(reader, path, **options):
    items = list(
        reader(
            SourceFile(str(path), str(path), pafs.LocalFileSystem()),
            ReadContext.create(ReaderOptions(**options)),
        )
    )
    return [i for i in items if not isinstance(i, Quarantined)], [
        i for i in items if isinstance(i, Quarantined)
    ]


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
