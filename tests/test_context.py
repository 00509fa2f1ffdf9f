"""The context policy: long decision points fitted into the student's window, counted with the CPU
student's own tokenizer and chat template; what cannot fit is skipped with its reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from tooldistill.context import ContextPolicy, DoesNotFit, Fitter, byte_bound
from tooldistill.evaluate import EvaluateConfig, evaluate
from tooldistill.optimize.student import Prompt, StudentSettings, run_batch, summarize
from tooldistill.optimize.testing import StudentServer, make_traces, write_traces
from tooldistill.readers import ReadContext, ReaderOptions, SourceFile
from tooldistill.readers.claude_code import read_claude_code
from tooldistill.request import build_request
from tooldistill.schema import Message, ToolCall, Trace

pytest.importorskip("transformers", reason="the context policy counts with the student's tokenizer")

WINDOW = 8192
CODE = "\n".join(f"{i:4d}\tdef handler_{i}(event):\n\treturn event.get('v{i}', {i})" for i in range(900))


@pytest.fixture(scope="module")
def tokenizer_folder() -> Path:
    from tooldistill.serve.models import prepare

    return prepare("smollm2")[0]


@pytest.fixture(scope="module")
def fitter(tokenizer_folder: Path) -> Fitter:
    return Fitter(ContextPolicy(window=WINDOW, tokenizer=str(tokenizer_folder)))


def session(
    results: int, result_text: str = CODE, request: str = "Fix the failing test in tests/test_io.py"
) -> Trace:
    """A Claude Code-like decision point: one request, then ``results`` file reads."""
    base = make_traces(1, 7)[0]
    messages = [
        Message(role="system", content="You are a coding agent."),
        Message(role="user", content=request),
    ]
    for k in range(results):
        messages.append(
            Message(
                role="assistant",
                content=f"Reading module {k}.",
                tool_calls=[ToolCall(id=f"c{k}", name="weather.current", arguments={"city": f"m{k}"})],
            )
        )
        messages.append(Message(role="tool", tool_call_id=f"c{k}", content=result_text))
    return base.model_copy(update={"messages": messages}).with_id()


def request_of(trace: Trace, max_tokens: int = 96) -> dict[str, Any]:
    return build_request(trace, "student", None, 0.0, max_tokens)


def test_a_long_session_is_cut_to_fit_the_students_count(fitter: Fitter) -> None:
    request = request_of(session(6))
    original = copy.deepcopy(request)
    before = fitter.count(request)
    assert before > 4 * WINDOW  # far over the window, as most real Claude Code decisions are
    fit = fitter.fit(request)
    assert request == original  # the trace's own request is not changed
    assert fit.tokens_after == fitter.count(fit.request) <= WINDOW - 96 - 16
    messages = fit.request["messages"]
    # the system prompt, the tools and the latest user request are kept as they were
    assert messages[0] == original["messages"][0] and messages[1] == original["messages"][1]
    assert fit.request["tools"] == original["tools"]
    # old tool results are shortened first, each with a visible marker; the calls all stay
    assert [m["role"] for m in messages] == [m["role"] for m in original["messages"]]
    shortened = [
        m for m in messages if m["role"] == "tool" and "cut by tooldistill's context policy" in m["content"]
    ]
    assert len(shortened) >= 5
    record = fit.record()
    assert record is not None and record["tokens_before"] == before and record["dropped"] == 0
    assert {c["role"] for c in record["changes"]} == {"tool"}
    assert record["share_cut"] > 0.7
    # the result just before the decision is cut last: it keeps the most
    kept = [len(m["content"]) for m in messages if m["role"] == "tool"]
    assert kept[-1] == max(kept)


def test_a_short_request_is_not_tokenized_or_changed(fitter: Fitter) -> None:
    request = request_of(make_traces(1)[0])
    assert byte_bound(request) < WINDOW
    fit = fitter.fit(request)
    assert fit.request is request and not fit.cut and fit.record() is None


def test_many_old_turns_are_dropped_with_a_marker_when_shortening_is_not_enough(fitter: Fitter) -> None:
    # 400 short turns: shortening cannot save enough, so the oldest turns go, whole
    request = request_of(session(400, result_text="ok " * 20))
    fit = fitter.fit(request)
    assert fit.tokens_after is not None and fit.tokens_after <= WINDOW - 112
    record = fit.record()
    assert record is not None and record["dropped"] > 0
    messages = fit.request["messages"]
    assert messages[1]["content"] == "Fix the failing test in tests/test_io.py"
    marked = [
        m
        for m in messages
        if "earlier messages cut by tooldistill's context policy" in (m.get("content") or "")
    ]
    assert len(marked) == 1 and marked[0]["role"] == "assistant"
    # no tool result lost its call: every tool message answers an assistant call that is still there
    calls = {c["id"] for m in messages for c in m.get("tool_calls") or []}
    assert all(m["tool_call_id"] in calls for m in messages if m["role"] == "tool")
    # the most recent turns are still there as they were
    assert messages[-1] == request["messages"][-1] and messages[-2] == request["messages"][-2]


def test_what_cannot_fit_raises_with_the_reason(fitter: Fitter) -> None:
    request = request_of(session(0, request="Summarize: " + CODE * 3))
    with pytest.raises(DoesNotFit, match="does not fit the context window") as raised:
        fitter.fit(request)
    assert raised.value.tokens > raised.value.budget == WINDOW - 96 - 16


def test_without_a_tokenizer_the_byte_bound_never_lets_too_much_through(fitter: Fitter) -> None:
    blind = Fitter(ContextPolicy(window=WINDOW))
    fit = blind.fit(request_of(session(6)))
    # it counts bytes, more than the student's tokens: what it lets through fits the real count
    assert fit.tokens_after is not None and fitter.count(fit.request) <= fit.tokens_after <= WINDOW - 112


def test_evaluate_skips_what_cannot_fit_and_records_what_was_cut(
    tmp_path: Path, tokenizer_folder: Path
) -> None:
    traces = [*make_traces(3), session(6), session(0, request="Summarize: " + CODE * 3)]
    dataset = write_traces(str(tmp_path / "data"), traces)
    policy = ContextPolicy(window=WINDOW, tokenizer=str(tokenizer_folder))
    with StudentServer() as server:
        config = EvaluateConfig(
            dataset, server.url, "student", str(tmp_path / "eval"), max_tokens=96, context=policy
        )
        evaluated = evaluate(config, show_progress=False)
        result, summary = evaluated.dataset, evaluated.summary
        assert server.requests == 4  # the trace that cannot fit was never sent
        sent = [json.loads(r["request"]) for r in result.to_arrow().to_pylist() if not r["skipped"]]
    assert summary["errors"] == 0 and summary["skipped"] == 1 and summary["modes"]["chain"]["n"] == 4
    assert summary["context"]["cut"] == 1 and summary["context"]["skipped"] == 1
    assert summary["context"]["median_share_cut"] > 0.7
    rows = {r["trace_id"]: r for r in result.to_arrow().to_pylist()}
    long_row = rows[traces[3].id]
    assert json.loads(long_row["context"])["tokens_after"] <= WINDOW - 112
    assert rows[traces[4].id]["skipped"].startswith("does not fit")
    assert rows[traces[4].id]["error"] is None
    assert all(byte_bound(r) < 200_000 for r in sent)
    # the optimizer's metric calls go through the same policy
    settings = StudentSettings(endpoint=server.url, model="student", max_tokens=96, context=policy)
    with StudentServer() as server:
        settings = settings.model_copy(update={"endpoint": server.url})
        outcomes = run_batch(traces, Prompt(""), settings)
        assert server.requests == 4
    scored = summarize(outcomes)
    assert scored["n"] == 4 and scored["errors"] == 0
    assert scored["context"]["cut"] == 1 and scored["context"]["skipped"] == 1


# -- a Claude Code session: whole files in Write and Edit calls, a pasted log, CLAUDE.md -------------


def source(name: str, functions: int) -> str:
    """A Python module of ``functions`` small functions (~72 characters each)."""
    return "\n".join(
        f"def {name}_{i}(rows):\n    return [r for r in rows if r.get('k{i}') != {i}]"
        for i in range(functions)
    )


CLAUDE_MD = (
    "<system-reminder>\nContents of /home/ana/api/CLAUDE.md:\n" + "Use ruff; keep modules small.\n" * 40
)
PASTE = "Here is what CI printed:\n" + 'Traceback: File "api/load.py", line 3, in load_rows\n' * 600
TODOS = [
    {"content": f"Fix test {i}", "status": "pending", "activeForm": f"Fixing test {i}"} for i in range(12)
]
EDITS = [
    {"old_string": source("old", 60), "new_string": source("new", 60)},
    {"old_string": source("a", 40), "new_string": source("b", 40), "replace_all": False},
]
#: The conversation as the log holds it (Anthropic messages); the decision is the last reply, a Bash
#: call after a short tool result.  Each Write is over 20k characters.
SESSION = [
    ("user", [{"type": "text", "text": CLAUDE_MD + "</system-reminder>"}, {"type": "text", "text": PASTE}]),
    ("assistant", [{"type": "text", "text": "I'll write the loader."},
                   {"type": "tool_use", "id": "toolu_w1", "name": "Write",
                    "input": {"file_path": "/home/ana/api/load.py", "content": source("load", 300)}}]),
    ("user", [{"type": "tool_result", "tool_use_id": "toolu_w1", "content": "File created successfully."}]),
    ("user", "Good. Now make the tests pass."),
    ("assistant", [{"type": "tool_use", "id": "toolu_t1", "name": "TodoWrite", "input": {"todos": TODOS}}]),
    ("user", [{"type": "tool_result", "tool_use_id": "toolu_t1", "content": "Todos have been modified."}]),
    ("assistant", [{"type": "tool_use", "id": "toolu_m1", "name": "MultiEdit",
                    "input": {"file_path": "/home/ana/api/load.py", "edits": EDITS}}]),
    ("user", [{"type": "tool_result", "tool_use_id": "toolu_m1", "content": "Applied 2 edits."}]),
    ("assistant", [{"type": "text", "text": "Now the parser."},
                   {"type": "tool_use", "id": "toolu_e1", "name": "Edit",
                    "input": {"file_path": "/home/ana/api/parse.py", "old_string": source("parse", 120),
                              "new_string": source("parse_rows", 120)}}]),
    ("user", [{"type": "tool_result", "tool_use_id": "toolu_e1", "content": "The file has been updated."}]),
    ("assistant", [{"type": "text", "text": "And the writer."},
                   {"type": "tool_use", "id": "toolu_w2", "name": "Write",
                    "input": {"file_path": "/home/ana/api/write.py", "content": source("write", 300)}}]),
    ("user", [{"type": "tool_result", "tool_use_id": "toolu_w2", "content": "File created successfully."}]),
    ("assistant", [{"type": "tool_use", "id": "toolu_b1", "name": "Bash", "input": {"command": "pytest -q"}}]),
]  # fmt: skip


@pytest.fixture(scope="module")
def claude_code_decision(tmp_path_factory: pytest.TempPathFactory) -> Trace:
    """The Bash decision of ``SESSION``, written as a session log and read by the Claude Code reader
    (no ``init`` line: the tools are the built-in catalog's, ~4.2k tokens)."""
    path = tmp_path_factory.mktemp("claude") / "5a6b7c8d-0000-4000-8000-000000000001.jsonl"
    lines, parent = [], None
    for k, (role, content) in enumerate(SESSION):
        message: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            message.update(id=f"msg_{k:02d}", type="message", model="claude-sonnet-4-5")
        lines.append(
            {"parentUuid": parent, "isSidechain": False, "sessionId": "s-1", "type": role,
             "message": message, "uuid": f"n-{k}", "timestamp": f"2025-10-01T10:{k:02d}:00.000Z"}
        )  # fmt: skip
        parent = f"n-{k}"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    read = read_claude_code(
        SourceFile(str(path), str(path), pafs.LocalFileSystem()), ReadContext.create(ReaderOptions())
    )
    traces = {t.source_id: t for t in read if isinstance(t, Trace)}
    return traces[f"msg_{len(SESSION) - 1:02d}"]


def shape(value: Any) -> Any:
    """The JSON structure of arguments without the strings' text: keys, list lengths, types."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return "str" if isinstance(value, str) else value


def test_a_claude_code_decision_with_whole_files_in_recent_calls_fits(
    fitter: Fitter, claude_code_decision: Trace
) -> None:
    # the reader keeps a call's arguments as an object; the request sends them as a JSON string
    trace = claude_code_decision
    assert [c.name for m in trace.messages for c in m.tool_calls] == [
        "Write", "TodoWrite", "MultiEdit", "Edit", "Write"
    ]  # fmt: skip
    assert isinstance(trace.messages[-2].tool_calls[0].arguments["content"], str)
    request = build_request(trace, "student", "You are a coding agent.", 0.0, 128)
    original = copy.deepcopy(request)
    messages = original["messages"]
    assert isinstance(messages[-2]["tool_calls"][0]["function"]["arguments"], str)
    before = fitter.count(request)
    assert before > 6 * WINDOW and len(messages[-2]["tool_calls"][0]["function"]["arguments"]) > 20_000
    fit = fitter.fit(request)
    budget = WINDOW - 128 - 16
    assert request == original
    assert fit.tokens_after == fitter.count(fit.request) <= budget
    fitted = fit.request["messages"]
    # cutting long strings was enough: no message was dropped, and every call is still there
    assert [m["role"] for m in fitted] == [m["role"] for m in messages]
    assert fit.request["tools"] == original["tools"]
    # the latest user request and the last result, what the decision depends on, are as they were
    assert fitted[4] == messages[4] and fitted[4]["content"] == "Good. Now make the tests pass."
    assert fitted[-1] == messages[-1]
    for was, now in zip(messages, fitted, strict=True):
        for call, kept in zip(was.get("tool_calls") or [], now.get("tool_calls") or [], strict=True):
            assert (kept["id"], kept["function"]["name"]) == (call["id"], call["function"]["name"])
            # arguments stay a JSON object with the same keys at every depth (MultiEdit's edits too)
            arguments = json.loads(kept["function"]["arguments"])
            assert shape(arguments) == shape(json.loads(call["function"]["arguments"]))
    # the Edit and the Write in the recent messages are cut inside their strings, head and tail
    # kept; the file paths (short) are not
    edit = json.loads(fitted[-4]["tool_calls"][0]["function"]["arguments"])
    write = json.loads(fitted[-2]["tool_calls"][0]["function"]["arguments"])
    assert write["file_path"] == "/home/ana/api/write.py" and edit["file_path"] == "/home/ana/api/parse.py"
    assert "tokens cut …]" in edit["old_string"] and "tokens cut …]" in write["content"]
    assert write["content"].startswith("def write_0(rows):") and write["content"].endswith("!= 299]")
    assert edit["old_string"].endswith(source("parse", 120)[-12:])
    multi = json.loads(fitted[7]["tool_calls"][0]["function"]["arguments"])
    assert "tokens cut …]" in multi["edits"][0]["old_string"] and multi["edits"][1]["replace_all"] is False
    # the earlier paste (with CLAUDE.md) is cut to its head and tail, like other old text
    paste = fitted[1]["content"]
    assert paste.startswith("<system-reminder>") and "tokens cut by tooldistill's context policy" in paste
    assert paste.endswith(PASTE[-30:]) and len(paste) < len(PASTE) // 20
    # recorded like every other cut: one entry per message, counted as shortened
    record = fit.record()
    assert record is not None and record["tokens_before"] == before and record["dropped"] == 0
    changes = {(c["index"], c["role"], c["action"]) for c in record["changes"]}
    assert {
        (len(messages) - 2, "assistant", "shortened"),
        (len(messages) - 4, "assistant", "shortened"),
    } <= changes
    assert (1, "user", "shortened") in changes and record["shortened"] == len(record["changes"])
    # without the student's tokenizer the byte bound cuts more, and what it lets through fits (the
    # catalog alone is more bytes than the window, so here without the tools)
    bare = {**request, "tools": []}
    blind = Fitter(ContextPolicy(window=WINDOW)).fit(bare)
    assert blind.tokens_after is not None and fitter.count(blind.request) <= blind.tokens_after <= budget
    assert all(
        shape(json.loads(c["function"]["arguments"])) == shape(json.loads(o["function"]["arguments"]))
        for m, w in zip(blind.request["messages"], messages, strict=True)
        for c, o in zip(m.get("tool_calls") or [], w.get("tool_calls") or [], strict=True)
    )


def test_arguments_sent_as_objects_stay_objects(fitter: Fitter, claude_code_decision: Trace) -> None:
    request = build_request(claude_code_decision, "student", None, 0.0, 128)
    for message in request["messages"]:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    original = copy.deepcopy(request)
    fit = fitter.fit(request)
    assert fit.tokens_after is not None and fit.tokens_after <= WINDOW - 128 - 16
    for was, now in zip(original["messages"], fit.request["messages"], strict=True):
        for call, kept in zip(was.get("tool_calls") or [], now.get("tool_calls") or [], strict=True):
            assert shape(kept["function"]["arguments"]) == shape(call["function"]["arguments"])
    assert "tokens cut …]" in fit.request["messages"][-2]["tool_calls"][0]["function"]["arguments"]["content"]


def test_a_claude_code_request_that_fits_is_counted_and_left_as_it_is(
    fitter: Fitter, claude_code_decision: Trace
) -> None:
    short = claude_code_decision.model_copy(
        update={"messages": [Message(role="user", content="Run the tests.")]}
    ).with_id()
    request = request_of(short)
    assert byte_bound(request) > WINDOW  # the catalog alone is over the byte bound: it is counted
    fit = fitter.fit(request)
    assert fit.request is request and not fit.cut and fit.record() is None
    assert fit.tokens_before == fit.tokens_after == fitter.count(request) <= WINDOW - 112


def test_claude_codes_reminders_in_the_latest_request_are_cut_last(fitter: Fitter) -> None:
    words = "Fix the failing test in tests/test_io.py"
    # a long CLAUDE.md in the latest request, old results that are enough to cut: it stays whole
    modest = f"{CLAUDE_MD[:1500]}</system-reminder>\n{words}"
    fit = fitter.fit(request_of(session(6, request=modest)))
    assert fit.request["messages"][1]["content"] == modest
    # a CLAUDE.md longer than the window: only the reminder is cut, the user's own words stay
    huge = f"{CLAUDE_MD * 40}</system-reminder>\n<system-reminder>Today is Friday.</system-reminder>\n{words}"
    request = request_of(session(2, request=huge))
    fit = fitter.fit(request)
    assert fit.tokens_after is not None and fit.tokens_after <= WINDOW - 112
    content = fit.request["messages"][1]["content"]
    assert content.endswith("<system-reminder>Today is Friday.</system-reminder>\n" + words)
    assert content.startswith("<system-reminder>\nContents of /home/ana/api/CLAUDE.md")
    assert (
        "tokens cut by tooldistill's context policy" in content and content.count("</system-reminder>") == 2
    )
    record = fit.record()
    assert record is not None and {"index": 1, "role": "user", "action": "shortened"} in record["changes"]
