"""Claude Code session logs, read from fixtures written in the real log format."""

import json

import pyarrow.fs as pafs
import pytest

from conftest import CLAUDE_CODE
from tooldistill.readers import Quarantined, ReadContext, ReaderOptions, SourceFile
from tooldistill.readers.claude_code import load_catalog, read_claude_code

SESSION = CLAUDE_CODE / "projects/-home-ana-shop/6f1c2e1a-3b4d-4c5e-8f90-1a2b3c4d5e6f.jsonl"
SUBAGENT = (
    CLAUDE_CODE
    / "projects/-home-ana-shop/6f1c2e1a-3b4d-4c5e-8f90-1a2b3c4d5e6f/subagents/agent-7f3a9c01.jsonl"
)
BROKEN = CLAUDE_CODE / "projects/-home-ana-shop/0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d.jsonl"
EMPTY = CLAUDE_CODE / "projects/-home-ana-shop/1e2d3c4b-0000-4000-8000-000000000000.jsonl"
STREAM = CLAUDE_CODE / "stream/etl-run.jsonl"


def read(path, **options):
    source = SourceFile(str(path), str(path), pafs.LocalFileSystem())
    items = list(read_claude_code(source, ReadContext.create(ReaderOptions(**options))))
    traces = {t.source_id: t for t in items if not isinstance(t, Quarantined)}
    return traces, [q for q in items if isinstance(q, Quarantined)]


def test_every_reply_that_calls_tools_is_a_decision_point():
    traces, _ = read(SESSION)
    assert sorted(traces) == sorted(
        [
            "msg_01AaaaTotalTest",
            "msg_01BbbbEdit",
            "msg_01CcccBash",
            "msg_01SsssSide",
            "msg_01DdddMcp",
            "msg_01EeeeWrite",
        ]
    )
    # blocks of one reply (several lines sharing message.id) form one decision with ordered calls
    first = traces["msg_01AaaaTotalTest"]
    assert [(c.name, c.id) for c in first.reference_calls] == [
        ("Read", "toolu_01Read"),
        ("Grep", "toolu_01Grep"),
    ]
    assert first.reference_calls[1].arguments == {
        "pattern": "def total",
        "path": "/home/ana/shop",
        "output_mode": "content",
        "-n": True,
    }
    assert first.metadata["assistant_text"].startswith("I'll read the failing test")
    assert [m.role for m in first.messages] == ["user"]


def test_history_is_the_conversation_before_the_reply():
    traces, _ = read(SESSION)
    bash = traces["msg_01CcccBash"]
    assert [m.role for m in bash.messages] == ["user", "assistant", "tool", "tool", "assistant", "tool"]
    earlier = bash.messages[1]
    assert earlier.content.startswith("I'll read") and [c.name for c in earlier.tool_calls] == [
        "Read",
        "Grep",
    ]
    assert [m.tool_call_id for m in bash.messages if m.role == "tool"] == [
        "toolu_01Read",
        "toolu_01Grep",
        "toolu_01Edit",
    ]
    # the thinking block of the Edit reply is not part of the conversation
    assert bash.messages[4].content == "" and bash.messages[4].tool_calls[0].name == "Edit"
    assert "sum starts at 1" not in json.dumps([m.model_dump() for m in bash.messages])


def test_secrets_in_tool_results_are_redacted():
    traces, _ = read(SESSION)
    result = traces["msg_01CcccBash"].messages[-1].content
    assert "sk-ant-api03" not in result and "[REDACTED:anthropic_key]" in result
    unredacted, _ = read(SESSION, redact=False)
    assert "sk-ant-api03" in unredacted["msg_01CcccBash"].messages[-1].content


def test_sidechain_and_compaction():
    traces, _ = read(SESSION)
    side = traces["msg_01SsssSide"]
    assert side.metadata["sidechain"] is True
    assert [m.content for m in side.messages] == ["Find every caller of cart.total in the repository."]
    # after a compaction the history starts from the summary, not from the first prompt
    mcp = traces["msg_01DdddMcp"]
    assert mcp.metadata["after_compaction"] is True
    assert mcp.messages[0].content.startswith("This session is being continued")
    assert len(mcp.messages) == 2


def test_unknown_tool_gets_a_permissive_schema_and_a_flag():
    traces, _ = read(SESSION)
    mcp = traces["msg_01DdddMcp"]
    spec = next(t for t in mcp.tools if t.name == "mcp__github__create_issue")
    assert spec.schema_missing and spec.parameters == {"type": "object", "additionalProperties": True}
    assert mcp.metadata["unknown_tools"] == ["mcp__github__create_issue"]
    read_spec = next(t for t in mcp.tools if t.name == "Read")
    assert not read_spec.schema_missing and read_spec.parameters["required"] == ["file_path"]


def test_bad_lines_are_quarantined_and_good_ones_kept():
    traces, quarantined = read(SESSION)
    reasons = {q.line: q.reason for q in quarantined}
    assert "unknown content block type 'hologram'" in reasons[21]
    assert reasons[23].startswith("truncated last line")
    # the reply whose first block was unknown still yields its tool call
    assert traces["msg_01EeeeWrite"].reference_calls[0].name == "Write"

    traces, quarantined = read(BROKEN)
    assert list(traces) == ["msg_01XxxxLs"]
    assert sorted((q.line, q.reason.split(" at ")[0]) for q in quarantined) == [
        (2, "invalid UTF-8"),
        (3, "assistant line without a message object"),
        (4, "malformed JSON: Expecting value"),
    ]
    traces, quarantined = read(EMPTY)
    assert traces == {} and [(q.line, q.reason) for q in quarantined] == [(0, "empty file")]


def test_subagent_log():
    traces, quarantined = read(SUBAGENT)
    assert not quarantined
    assert sorted(traces) == ["msg_01GgggGlob", "msg_01HhhhGrep"]
    grep = traces["msg_01HhhhGrep"]
    assert grep.metadata["subagent"] and grep.metadata["agent_id"] == "7f3a9c01"
    assert [m.role for m in grep.messages] == ["user", "assistant", "tool"]
    assert grep.messages[2].content.endswith("price.py")


def test_stream_json_init_event_names_the_tools():
    traces, quarantined = read(STREAM)
    assert not quarantined and list(traces) == ["msg_01StreamQuery"]
    trace = traces["msg_01StreamQuery"]
    assert [t.name for t in trace.tools] == ["Bash", "Read", "mcp__warehouse__query"]
    assert [t.schema_missing for t in trace.tools] == [False, False, True]
    assert trace.metadata["unknown_tools"] == ["mcp__warehouse__query"]


def test_catalog_file_supplies_schemas(tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        json.dumps(
            {
                "tools": [
                    {"name": "Bash", "description": "shell", "input_schema": {"type": "object"}},
                    {
                        "name": "mcp__warehouse__query",
                        "description": "Run SQL",
                        "parameters": {"type": "object", "properties": {"sql": {"type": "string"}}},
                    },
                ]
            }
        )
    )
    traces, _ = read(STREAM, catalog=str(catalog))
    query = next(t for t in traces["msg_01StreamQuery"].tools if t.name == "mcp__warehouse__query")
    assert not query.schema_missing and query.description == "Run SQL"
    assert len(load_catalog(None)) >= 20  # the built-in catalog
    with pytest.raises(ValueError, match="cannot read tool catalog"):
        load_catalog(str(tmp_path / "missing.json"))


def test_a_user_catalog_adds_to_the_built_in_one(tmp_path):
    catalog = tmp_path / "mcp.json"
    catalog.write_text(json.dumps([{"name": "mcp__db__query", "parameters": {"type": "object"}}]))
    merged = load_catalog(str(catalog))
    assert "mcp__db__query" in merged and "Bash" in merged and "Read" in merged
