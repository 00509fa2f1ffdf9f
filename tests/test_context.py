"""The context policy: long decision points fitted into the student's window, counted with the CPU
student's own tokenizer and chat template; what cannot fit is skipped with its reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tooldistill.context import ContextPolicy, DoesNotFit, Fitter, byte_bound
from tooldistill.evaluate import EvaluateConfig, build_request, evaluate
from tooldistill.optimize.student import Prompt, StudentSettings, run_batch, summarize
from tooldistill.optimize.testing import StudentServer, make_traces, write_traces
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
