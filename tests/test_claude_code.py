"""Claude Code session logs, read from fixtures written in the real log format."""

import json

import pyarrow.fs as pafs
import pytest

from conftest import CLAUDE_CODE
from tooldistill.readers import Ignored, Quarantined, ReadContext, ReaderOptions, SourceFile
from tooldistill.readers.claude_code import content_digest, load_catalog, read_claude_code

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
    traces = {t.source_id: t for t in items if not isinstance(t, (Quarantined, Ignored))}
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


# ---------------------------------------------------------------------------------------------
# Today's logs: stream-json without a prompt line, subagents, several sessions, new line types
# ---------------------------------------------------------------------------------------------

NIGHTLY = CLAUDE_CODE / "stream/nightly-report.jsonl"  # with a .prompt.txt sidecar
TWO_RUNS = CLAUDE_CODE / "stream/two-runs.jsonl"  # two claude -p runs appended, no sidecar
CURRENT = CLAUDE_CODE / "current/-home-ana-api/3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f.jsonl"
SIDECAR_PROMPT = "Write tonight's signup report from the metrics server into out/, using our report template."


def read_all(path, **options):
    """Traces by source id, quarantined records, and the ignored counts as {kind: (count, known)}."""
    source = SourceFile(str(path), str(path), pafs.LocalFileSystem())
    items = list(read_claude_code(source, ReadContext.create(ReaderOptions(**options))))
    traces = {t.source_id: t for t in items if not isinstance(t, (Quarantined, Ignored))}
    ignored = {i.kind: (i.count, i.known) for i in items if isinstance(i, Ignored)}
    return traces, [q for q in items if isinstance(q, Quarantined)], ignored


def test_stream_json_without_a_prompt_line_takes_the_sidecar_prompt():
    traces, quarantined, ignored = read_all(NIGHTLY)
    assert not quarantined
    assert sorted(traces) == sorted(
        [
            "msg_01NrPlan",
            "msg_01NrSearch",
            "msg_01NrSeries",
            "msg_01NrAgent",
            "msg_01SubGlob",
            "msg_01NrWrite",
        ]
    )
    plan = traces["msg_01NrPlan"]  # the first decision, which used to be quarantined
    assert [(m.role, m.content) for m in plan.messages] == [("user", SIDECAR_PROMPT)]
    assert plan.metadata["prompt_source"] == "sidecar" and plan.metadata["prompt_missing"] is False
    assert plan.metadata["session_id"] == "7d2e9a10-4b3c-4f5e-9a8b-0c1d2e3f4a5b"
    assert all(t.metadata["prompt_source"] == "sidecar" for k, t in traces.items() if k != "msg_01SubGlob")
    # the sidecar wins over the option
    with_option, _, _ = read_all(NIGHTLY, prompt="something else")
    assert with_option["msg_01NrPlan"].messages[0].content == SIDECAR_PROMPT
    assert ignored == {"system/init": (1, True), "result": (1, True)}


def test_prompt_option_then_placeholder_and_redaction(tmp_path):
    traces, _, _ = read_all(TWO_RUNS)
    disk = traces["msg_01RunADisk"]
    assert [(m.role, m.content) for m in disk.messages] == [("user", "[prompt not recorded]")]
    assert disk.metadata["prompt_missing"] is True and disk.metadata["prompt_source"] == "missing"
    # the second run has its prompt in the log: neither placeholder nor option is used there
    assert traces["msg_01RunBEdit"].metadata["prompt_source"] == "log"

    key = "sk-ant-api03-" + "Q" * 40
    traces, _, _ = read_all(TWO_RUNS, prompt=f"How much disk is free? (key {key})")
    disk = traces["msg_01RunADisk"]
    assert disk.metadata["prompt_source"] == "option" and disk.metadata["prompt_missing"] is False
    assert disk.messages[0].content == "How much disk is free? (key [REDACTED:anthropic_key])"
    assert traces["msg_01RunBEdit"].messages[0].content.startswith("Rename helper()")

    # a sidecar written next to a copy of the log is found (and redacted too)
    copy = tmp_path / "run.jsonl"
    copy.write_bytes(TWO_RUNS.read_bytes())
    (tmp_path / "run.jsonl.prompt.txt").write_text(f"Check the disk. {key}\n")
    traces, _, _ = read_all(copy, prompt="ignored")
    assert traces["msg_01RunADisk"].messages[0].content == "Check the disk. [REDACTED:anthropic_key]"
    assert traces["msg_01RunADisk"].metadata["prompt_source"] == "sidecar"


def test_subagent_turns_form_their_own_conversation():
    traces, _, _ = read_all(NIGHTLY)
    glob = traces["msg_01SubGlob"]
    assert glob.metadata["subagent"] is True and glob.metadata["parent_tool_use_id"] == "toolu_01NrAgent"
    assert glob.metadata["prompt_source"] == "log"  # the subagent's own first user line
    assert [(m.role, m.content) for m in glob.messages] == [
        ("user", "Find the Markdown template the nightly report uses and give me its path.")
    ]
    # the main conversation goes on past the subagent as if it were one tool call
    write = traces["msg_01NrWrite"]
    assert write.metadata["subagent"] is False and write.metadata["parent_tool_use_id"] is None
    assert [m.tool_call_id for m in write.messages if m.role == "tool"] == [
        "toolu_01NrTaskA",
        "toolu_01NrSearch",
        "toolu_01NrSeries",
        "toolu_01NrAgent",
    ]
    assert "Glob" not in {c.name for m in write.messages for c in m.tool_calls}
    assert [(c.name, c.arguments) for c in write.reference_calls] == [
        (
            "Write",
            {
                "file_path": "/home/ana/reports/out/2025-11-30.md",
                "content": "# Nightly report\n\nSignups: 412\n",
            },
        ),
        ("TaskUpdate", {"taskId": "1", "status": "completed"}),
    ]
    # a subagent whose prompt line is not in the log takes the prompt of its Agent call
    traces, _, _ = read_all(TWO_RUNS)
    grep = traces["msg_01RunBSubGrep"]
    assert grep.metadata["prompt_source"] == "parent_call" and grep.metadata["subagent"] is True
    assert [m.content for m in grep.messages] == ["List every caller of helper() under /home/ana/tools."]


def test_each_session_of_a_file_keeps_its_own_tools_and_history():
    traces, quarantined, ignored = read_all(TWO_RUNS)
    assert not quarantined and len(traces) == 4
    disk, edit = traces["msg_01RunADisk"], traces["msg_01RunBEdit"]
    assert [t.name for t in disk.tools] == ["Bash", "Read"]
    assert [t.name for t in edit.tools] == ["Agent", "Bash", "Edit", "Grep"]
    assert disk.metadata["session_id"] != edit.metadata["session_id"]
    assert [m.role for m in edit.messages] == ["user", "assistant", "tool"]
    assert "df -h" not in json.dumps([m.model_dump() for m in edit.messages])
    assert ignored == {"system/init": (2, True), "result": (2, True)}


def test_current_session_log_line_types_are_counted():
    traces, quarantined, ignored = read_all(CURRENT)
    assert not quarantined
    assert sorted(traces) == sorted(
        [
            "msg_01ApiTask",
            "msg_01ApiRead",
            "msg_01ApiEdit",
            "msg_01ApiUpdate",
            "msg_01ApiSend",
            "msg_01ApiTest",
        ]
    )
    known = {kind: count for kind, (count, is_known) in ignored.items() if is_known}
    assert known == {
        "permission-mode": 1,
        "file-history-snapshot": 1,
        "attachment": 1,
        "progress": 1,
        "system/microcompact_boundary": 1,
        "system/stop_hook_summary": 1,
        "system/turn_duration": 1,
        "last-prompt": 1,
        "custom-title": 1,
        "agent-name": 1,
        "mode": 1,
        "queue-operation": 2,
        "system/api_error": 1,
        "system/local_command": 1,
        "system/away_summary": 1,
        "system/informational": 1,
        "system/compact_boundary": 1,
    }
    unknown = {kind: count for kind, (count, is_known) in ignored.items() if not is_known}
    assert unknown == {"hologram-event": 1, "no type": 1, "system/hologram_notice": 1}
    # the chain runs through attachment and progress lines without losing a message
    edit = traces["msg_01ApiEdit"]
    assert [m.role for m in edit.messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert edit.messages[-1].content.startswith("     1\tfrom flask import Flask")
    assert edit.metadata["history_incomplete"] is False
    # after the compaction the history starts at the summary; the call's caller is kept
    test = traces["msg_01ApiTest"]
    assert test.metadata["after_compaction"] is True
    assert [m.content[:34] for m in test.messages] == [
        "This session is being continued fr",
        "Run the health test.",
    ]
    assert test.metadata["callers"] == [{"type": "direct"}]


def test_microcompact_clears_earlier_tool_results(tmp_path):
    traces, _, _ = read_all(CURRENT)
    assert traces["msg_01ApiEdit"].metadata["cleared_tool_results"] == []
    for key in ("msg_01ApiUpdate", "msg_01ApiSend"):
        trace = traces[key]
        assert trace.metadata["cleared_tool_results"] == ["toolu_03ApiRead"]
        read_result = next(m for m in trace.messages if m.tool_call_id == "toolu_03ApiRead")
        assert read_result.content == "[tool result cleared by microcompact]"
        edit_result = next(m for m in trace.messages if m.tool_call_id == "toolu_03ApiEdit")
        assert edit_result.content.startswith("The file")
    # the boundary also counts when the next line's parentUuid skips it (it hangs off the chain)
    skipping = tmp_path / "skip.jsonl"
    skipping.write_text(CURRENT.read_text().replace('"parentUuid": "h-m1"', '"parentUuid": "h-u4"'))
    traces, _, _ = read_all(skipping)
    assert traces["msg_01ApiUpdate"].metadata["cleared_tool_results"] == ["toolu_03ApiRead"]
    # ... but not on another branch
    other = tmp_path / "branch.jsonl"
    text = CURRENT.read_text().replace('"parentUuid": "h-u4"', '"parentUuid": "h-elsewhere"')
    other.write_text(text.replace('"parentUuid": "h-m1"', '"parentUuid": "h-u4"'))
    traces, _, _ = read_all(other)
    assert traces["msg_01ApiUpdate"].metadata["cleared_tool_results"] == []


def test_current_built_in_tools_have_schemas():
    catalog = load_catalog(None)
    for name in ("TaskCreate", "TaskUpdate", "TaskList", "TaskGet", "ToolSearch", "SendMessage"):
        spec = catalog[name]
        assert spec.description and spec.parameters["type"] == "object" and not spec.schema_missing
        assert spec.parameters.get("additionalProperties") is True
    assert catalog["TaskUpdate"].parameters["required"] == ["taskId"]
    assert {"addBlocks", "addBlockedBy", "owner", "status"} <= set(
        catalog["TaskUpdate"].parameters["properties"]
    )
    traces, _, _ = read_all(CURRENT)
    for trace in traces.values():
        assert trace.metadata["unknown_tools"] == []
        called = {c.name for c in trace.reference_calls}
        assert all(not t.schema_missing for t in trace.tools if t.name in called)


def test_mcp_schemas_from_a_tools_list_catalog_or_the_init_event(tmp_path):
    traces, _, _ = read_all(NIGHTLY)
    series = traces["msg_01NrSeries"]
    assert series.metadata["unknown_tools"] == ["mcp__metrics__get_series"]
    assert next(t for t in series.tools if t.name == "mcp__metrics__get_series").schema_missing

    schema = {"type": "object", "properties": {"metric": {"type": "string"}, "day": {"type": "string"}}}
    listing = {
        "server": "metrics",
        "tools": [{"name": "get_series", "description": "A metric by day", "inputSchema": schema}],
    }
    catalog = tmp_path / "metrics.json"
    catalog.write_text(json.dumps(listing))
    assert "mcp__metrics__get_series" in load_catalog(str(catalog)) and "Bash" in load_catalog(str(catalog))
    traces, _, _ = read_all(NIGHTLY, catalog=str(catalog))
    series = traces["msg_01NrSeries"]
    spec = next(t for t in series.tools if t.name == "mcp__metrics__get_series")
    assert not spec.schema_missing and spec.parameters == schema and spec.description == "A metric by day"
    assert series.metadata["unknown_tools"] == []
    # the JSON-RPC response of tools/list works as it is; server names are normalised as Claude Code does
    rpc = tmp_path / "rpc.json"
    rpc.write_text(
        json.dumps({"jsonrpc": "2.0", "id": 1, "server": "my metrics", "result": {"tools": listing["tools"]}})
    )
    assert "mcp__my_metrics__get_series" in load_catalog(str(rpc))
    with pytest.raises(ValueError, match="'server' must be"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"server": 3, "tools": []}))
        load_catalog(str(bad))

    # an init event that gives schemas wins
    lines = NIGHTLY.read_text().splitlines()
    init = json.loads(lines[0])
    init["tools"] = [
        t if not t.startswith("mcp__") else {"name": t, "input_schema": schema} for t in init["tools"]
    ]
    stream = tmp_path / "with-schemas.jsonl"
    stream.write_text("\n".join([json.dumps(init), *lines[1:]]) + "\n")
    traces, _, _ = read_all(stream)
    spec = next(t for t in traces["msg_01NrSeries"].tools if t.name == "mcp__metrics__get_series")
    assert not spec.schema_missing and spec.parameters == schema


def test_tool_reference_results_stay_tool_messages():
    # tool search results hold tool_reference blocks (converted by anthropic.blocks_to_messages)
    traces, quarantined, _ = read_all(NIGHTLY)
    assert not quarantined
    result = next(m for m in traces["msg_01NrSeries"].messages if m.tool_call_id == "toolu_01NrSearch")
    assert result.role == "tool" and "mcp__metrics__get_series" in result.content


# ---------------------------------------------------------------------------------------------
# One bad record costs one record
# ---------------------------------------------------------------------------------------------


def _blocks(record):
    message = record.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else []


def _first_block(record, kind):
    return next((b for b in _blocks(record) if isinstance(b, dict) and b.get("type") == kind), None)


def _set(target, key, value):
    if isinstance(target, dict) and key in target:
        target[key] = value
        return True
    return False


def _corruptions():
    """Wrong-type edits of one record; each returns False when it does not apply to the record."""
    is_message = lambda r: r.get("type") in ("user", "assistant")  # noqa: E731
    return {
        "message.id a dict": lambda r: r.get("type") == "assistant" and _set(r["message"], "id", {"id": 1}),
        "content an int": lambda r: is_message(r) and _set(r.get("message"), "content", 7),
        "a block a string": lambda r: (
            bool(_blocks(r)) and _set(r["message"], "content", ["oops", *_blocks(r)[1:]])
        ),
        "a block an int": lambda r: bool(_blocks(r)) and _set(r["message"], "content", [*_blocks(r)[:-1], 5]),
        # linking fields matter on lines that are part of a conversation or of the uuid tree
        "parentUuid a list": lambda r: _set(r, "parentUuid", ["u-1"]),
        "uuid a dict": lambda r: (is_message(r) or "parentUuid" in r) and _set(r, "uuid", {"u": 1}),
        "session id a list": lambda r: (
            (is_message(r) or r.get("subtype") == "init")
            and (_set(r, "session_id", ["s"]) or _set(r, "sessionId", ["s"]))
        ),
        "parent_tool_use_id a dict": lambda r: is_message(r) and _set(r, "parent_tool_use_id", {"id": 1}),
        "message a list": lambda r: is_message(r) and _set(r, "message", ["x"]),
        "type a dict": lambda r: is_message(r) and _set(r, "type", {"t": 1}),
        "tools a dict": lambda r: r.get("subtype") == "init" and _set(r, "tools", {"Bash": {}}),
        "tool_use id a dict": lambda r: _set(_first_block(r, "tool_use"), "id", {"x": 1}),
        "tool_use name a dict": lambda r: _set(_first_block(r, "tool_use"), "name", {"x": 1}),
        "tool_result id a dict": lambda r: _set(_first_block(r, "tool_result"), "tool_use_id", {"x": 1}),
        "compactedToolIds a dict": lambda r: _set(
            r.get("microcompactMetadata"), "compactedToolIds", {"a": 1}
        ),
    }


def _loads(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _predecessors(lines):
    """For each user/assistant line: the line number of the line before it in its conversation."""
    records = {n: r for n, r in ((n, _loads(t)) for n, t in enumerate(lines, 1)) if isinstance(r, dict)}
    by_uuid = {r.get("uuid"): n for n, r in records.items() if r.get("uuid")}
    last, before = {}, {}
    for number, record in records.items():
        if record.get("type") not in ("user", "assistant"):
            continue
        if "parentUuid" in record:
            before[number] = by_uuid.get(record["parentUuid"])
        else:
            thread = (record.get("session_id"), record.get("parent_tool_use_id"))
            before[number] = last.get(thread)
            last[thread] = number
    return records, before


@pytest.mark.parametrize(
    "path", [SESSION, SUBAGENT, STREAM, NIGHTLY, TWO_RUNS, CURRENT], ids=lambda p: p.name[:16]
)
def test_one_bad_record_costs_one_record(path, tmp_path):
    good, good_quarantined, _ = read_all(path)
    already_bad = {q.line for q in good_quarantined}
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records, before = _predecessors(lines)
    sidecar = path.parent / (path.name + ".prompt.txt")
    tried = 0
    for number, original in records.items():
        if number in already_bad:
            continue
        for name, corrupt in _corruptions().items():
            record = json.loads(json.dumps(original))
            if not corrupt(record):
                continue
            tried += 1
            corrupted = tmp_path / path.name
            corrupted.write_text("\n".join([*lines[: number - 1], json.dumps(record), *lines[number:]]))
            if sidecar.exists():
                (tmp_path / sidecar.name).write_text(sidecar.read_text())
            traces, quarantined, _ = read_all(corrupted)  # never raises
            where = f"{name} on line {number}"
            assert number in {q.line for q in quarantined}, where
            assert not any(q.reason.startswith("cannot build trace") for q in quarantined), where
            by_id = {t.id for t in traces.values()}
            for key, trace in good.items():
                reply = trace.metadata["reply_lines"]
                if max(reply) < number:  # nothing of it comes after the bad line: unchanged
                    assert trace.id in by_id, f"{where}: {key} changed"
                elif number in reply or number in {before.get(n) for n in reply}:
                    continue  # the bad line is part of the reply, or maybe is: it may go
                else:  # a later decision survives, possibly flagged as having lost history
                    assert key in traces, f"{where}: {key} lost"
    assert tried > 20


def test_a_lost_history_line_is_flagged_and_a_cut_reply_is_quarantined(tmp_path):
    lines = SESSION.read_text(encoding="utf-8").split("\n")

    def with_line(number, edit):
        record = json.loads(lines[number - 1])
        edit(record)
        path = tmp_path / f"edit-{number}.jsonl"
        path.write_text("\n".join([*lines[: number - 1], json.dumps(record), *lines[number:]]))
        return read_all(path)

    # the Read tool result (line 7) is unreadable: later decisions keep going, flagged
    traces, quarantined, _ = with_line(7, lambda r: r["message"].__setitem__("content", 7))
    assert (7, "message content is a int, not text or blocks") in {(q.line, q.reason) for q in quarantined}
    bash = traces["msg_01CcccBash"]
    assert bash.metadata["history_incomplete"] is True and bash.metadata["history_gaps"] == [7]
    assert "toolu_01Read" not in {m.tool_call_id for m in bash.messages}
    assert traces["msg_01AaaaTotalTest"].metadata["history_incomplete"] is False

    # the middle line of a three-line reply loses its message id: the reply would lose a call
    traces, quarantined, _ = with_line(5, lambda r: r["message"].__setitem__("id", {"oops": 1}))
    reasons = {q.line: q.reason for q in quarantined}
    assert reasons[5] == "message.id is a dict, not a string"
    assert "msg_01AaaaTotalTest" not in traces and "lost the quarantined assistant line 5" in reasons[4]
    assert {"msg_01BbbbEdit", "msg_01CcccBash", "msg_01SsssSide", "msg_01DdddMcp"} <= set(traces)


def test_ingest_counts_line_kinds_and_takes_the_prompt_flag(tmp_path):
    from click.testing import CliRunner

    from tooldistill.cli import main
    from tooldistill.store import Dataset

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "two-runs.jsonl").write_bytes(TWO_RUNS.read_bytes())
    (logs / "session.jsonl").write_bytes(CURRENT.read_bytes())
    out = tmp_path / "traces"
    args = ["ingest", str(logs), "--format", "claude_code", "--out", str(out), "--executor", "local"]
    result = CliRunner().invoke(main, [*args, "--prompt", "How much disk is free?", "--strict"])
    assert result.exit_code == 0, result.output
    dataset = Dataset.open(str(out))
    traces = {t.source_id: t for t in dataset.to_traces()}
    assert len(traces) == 10
    assert traces["msg_01RunADisk"].messages[0].content == "How much disk is free?"
    assert traces["msg_01RunADisk"].metadata["prompt_source"] == "option"
    (row,) = dataset.manifest.stats["summary"]
    assert row["ignored"]["system/init"] == 2 and row["ignored"]["progress"] == 1
    assert row["unrecognized"] == {"hologram-event": 1, "no type": 1, "system/hologram_notice": 1}


def test_a_changed_prompt_sidecar_rebuilds_the_dataset(tmp_path):
    import os
    import shutil

    from tooldistill.ingest import IngestConfig, ingest

    logs = tmp_path / "stream"
    shutil.copytree(CLAUDE_CODE / "stream", logs)
    config = IngestConfig(sources=(str(logs),), format="claude_code", out=str(tmp_path / "out"))
    first = ingest(config)
    assert not first.skipped and ingest(config).skipped
    sidecar = next(logs.glob("*.prompt.txt"))
    sidecar.write_text("Another prompt, given on the command line this time.\n")
    os.utime(sidecar, ns=(sidecar.stat().st_atime_ns, sidecar.stat().st_mtime_ns + 10**9))
    again = ingest(config)
    assert not again.skipped
    prompts = {
        t.messages[0].content
        for t in again.dataset.to_traces()
        if t.metadata.get("prompt_source") == "sidecar"
    }
    assert "Another prompt, given on the command line this time." in prompts


def _request_log(tmp_path, lose_result=False):
    """A session log in today's shape (Claude Code 2.1.3xx) with invented content: the request
    lines (shape, two chained requests, message blobs) beside the transcript, two replies with calls."""
    session = "5f0e1d2c-0000-4000-8000-00000000aaaa"
    common = {"sessionId": session, "cwd": "/home/ana/shop", "version": "2.1.328", "userType": "external"}
    shape = {
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328; cch=00000;"},
            {
                "type": "text",
                "text": "You are a careful shop assistant. Token ghp_" + "a1B2" * 9 + " is private.",
            },
        ],
        "tools": [
            {
                "name": "Read",
                "description": "Read a file from disk.",
                "input_schema": {
                    "type": "object",
                    "properties": {"file_path": {"type": "string"}},
                    "required": ["file_path"],
                },
            },
            {
                "name": "Grep",
                "description": "Search file contents.",
                "input_schema": {"type": "object", "properties": {"pattern": {"type": "string"}}},
            },
        ],
    }
    blobs = {
        "b1": {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>Today is Friday.</system-reminder>"},
                {"type": "text", "text": "What is in prices.csv?"},
            ],
        },
        "b2": {
            "role": "system",
            "content": [{"type": "text", "text": "# Environment\nPrimary working directory: /home/ana/shop"}],
        },
        "b3": {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01R",
                    "name": "Read",
                    "input": {"file_path": "/home/ana/shop/prices.csv"},
                }
            ],
        },
        "b4": {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01R", "content": "apple,3\npear,4"}],
        },
    }
    digest = {h: content_digest(m) for h, m in blobs.items()}
    digest["s1"] = content_digest(shape)
    written = ("b1", "b2")  # the CLI writes as blobs only what the transcript does not hold
    result_line = (
        blobs["b4"]
        if not lose_result
        else {"role": "user", "content": [{**blobs["b4"]["content"][0], "content": "lost"}]}
    )
    lines = [
        {"type": "queue-operation", "operation": "enqueue", "timestamp": "2026-12-05T08:00:00Z", "sessionId": session},
        {"type": "user", "uuid": "u1", "parentUuid": None, "message": {"role": "user", "content": "What is in prices.csv?"}, **common},
        {"type": "attachment", "uuid": "a1", "parentUuid": "u1", "attachment": {"type": "x"}, "rendered": "Today is Friday.", "renderedRole": "user", **common},
        {"type": "api-request-shape", "sessionId": session, "shapeHash": digest["s1"], "version": "2.1.328", "shape": shape},
        *[{"type": "api-request-blob", "sessionId": session, "hash": digest[h], "message": blobs[h]} for h in written],
        {"type": "api-request", "sessionId": session, "id": "r1", "version": "2.1.328", "shapeHash": digest["s1"], "keep": 0, "tail": [digest["b1"], digest["b2"]],
         "params": {"model": "claude-opus-5-5", "betas": ["claude-code-20250219"], "max_tokens": 128000}, "requestDigest": "0" * 64},
        {"type": "atis-latch", "atis": True, "sessionId": session},
        {"type": "tools-used", "tools": ["Read"], "sessionId": session},
        {"type": "assistant", "uuid": "m1", "parentUuid": "a1", "requestRef": "r1", "requestedModel": "claude-opus-5-5", "apiBlockIndex": 0,
         "message": {"id": "msg_01Req1", "role": "assistant", "model": "claude-opus-5-5", "content": [blobs["b3"]["content"][0]]}, **common},
        {"type": "user", "uuid": "u2", "parentUuid": "m1", "message": result_line, **common},
        {"type": "api-request", "sessionId": session, "id": "r2", "version": "2.1.328", "shapeHash": digest["s1"], "base": "r1", "keep": 2, "tail": [digest["b3"], digest["b4"]],
         "params": {"model": "claude-opus-5-5", "betas": [], "max_tokens": 128000}, "requestDigest": "1" * 64},
        {"type": "assistant", "uuid": "m2", "parentUuid": "u2", "requestRef": "r2", "requestedModel": "claude-opus-5-5", "apiBlockIndex": 0,
         "message": {"id": "msg_01Req2", "role": "assistant", "model": "claude-opus-5-5", "content": [{"type": "tool_use", "id": "toolu_02G", "name": "Grep", "input": {"pattern": "apple"}}]}, **common},
        {"type": "cost-state", "sessionId": session, "totalCostUSD": 0.01},
    ]  # fmt: skip
    path = tmp_path / "projects" / "-home-ana-shop" / f"{session}.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_the_exact_request_claude_saw_is_read_from_todays_logs(tmp_path):
    traces, quarantined, ignored = read_all(_request_log(tmp_path))
    assert not quarantined
    unknown = {kind for kind, (_, known) in ignored.items() if not known}
    assert not unknown, unknown  # every line kind of today's logs is handled on purpose
    assert "request hash mismatch (used as written)" not in ignored  # every hash checks out
    first, second = traces["msg_01Req1"], traces["msg_01Req2"]
    assert first.metadata["request_source"] == "log" and first.metadata["schema_source"] == "request"
    assert (
        first.metadata["cli_version"] == "2.1.328" and first.metadata["requested_model"] == "claude-opus-5-5"
    )
    assert first.metadata["max_tokens"] == 128000 and first.metadata["betas"] == ["claude-code-20250219"]
    # the system prompt as sent (billing header left out, the secret in it redacted), the
    # reminder blocks and the inline system message as Claude saw them, the tools with their schemas
    assert [m.role for m in first.messages] == ["system", "user", "system"]
    assert first.messages[0].content.startswith("You are a careful shop assistant.")
    assert "ghp_" + "a1B2" * 9 not in first.messages[0].content
    assert (
        first.messages[1].content
        == "<system-reminder>Today is Friday.</system-reminder>\nWhat is in prices.csv?"
    )
    assert {t.name: t.parameters["required"] for t in first.tools if t.name == "Read"} == {
        "Read": ["file_path"]
    }
    assert [t.name for t in first.tools] == ["Read", "Grep"] and not any(
        t.schema_missing for t in first.tools
    )
    # the second request is the first one's two messages kept, with the call and its result
    # appended: those two are named by hash and found in the transcript (no blob lines for them)
    assert [m.role for m in second.messages] == ["system", "user", "system", "assistant", "tool"]
    assert second.messages[3].tool_calls[0].arguments == {"file_path": "/home/ana/shop/prices.csv"}
    assert second.messages[4].content == "apple,3\npear,4"
    assert [c.name for c in second.reference_calls] == ["Grep"]


def test_a_request_with_a_missing_link_falls_back_to_the_transcript(tmp_path):
    traces, quarantined, ignored = read_all(_request_log(tmp_path, lose_result=True))
    assert not quarantined
    assert ignored["logged request incomplete (transcript used)"] == (1, True)
    first, second = traces["msg_01Req1"], traces["msg_01Req2"]
    assert first.metadata["request_source"] == "log"  # its own chain is whole
    assert second.metadata["request_source"] == "transcript"
    assert "not in the file" in second.metadata["request_fallback"]
    assert [m.role for m in second.messages] == ["user", "assistant", "tool"]  # today's reconstruction


def test_a_blob_whose_hash_does_not_match_is_counted_and_used(tmp_path):
    path = _request_log(tmp_path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        if line["type"] == "api-request-blob" and line["message"]["role"] == "system":
            line["message"]["content"][0]["text"] += " (edited)"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    traces, quarantined, ignored = read_all(path)
    assert not quarantined and ignored["request hash mismatch (used as written)"] == (1, True)
    assert traces["msg_01Req1"].messages[2].content.endswith("(edited)")
