"""Teacher capture and judge, through the ``anthropic`` SDK over real HTTP.

Claude's API is the one network edge these tests cannot reach, so a local Anthropic-compatible
server (``tooldistill.testing.anthropic_server``) stands in for it: the SDK finds it through
``ANTHROPIC_BASE_URL`` exactly as it finds the real API.  The server answers from the traces'
reference calls (with a share of deterministic disagreeing samples), injects faults, and keeps its
own counts, which the tests compare with what capture recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from tooldistill import store
from tooldistill.cli import main
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace, content_hash, traces_to_table
from tooldistill.teacher.cache import RequestCache
from tooldistill.teacher.capture import CaptureConfig, TeacherError, capture
from tooldistill.teacher.client import chunk_batches
from tooldistill.teacher.judge import JudgeConfig, judge
from tooldistill.teacher.limits import RateLimiter, retry_after
from tooldistill.teacher.pricing import Price, cost
from tooldistill.teacher.request import build_params, calls_from_content, prefix_key
from tooldistill.testing.anthropic_server import (
    AnthropicServer,
    Faults,
    JudgePolicy,
    ReferencePolicy,
    tokens_of,
)

MODEL = "claude-sonnet-4-6"
PRICE = Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3)
PRICES = {MODEL: PRICE}
API_KEY = "sk-ant-api03-TESTKEYnotreal0123456789abcdefghijklmnopqrstuv"


@pytest.fixture()
def anthropic_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    yield


def serve(server: AnthropicServer, monkeypatch: pytest.MonkeyPatch) -> AnthropicServer:
    server.start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    return server


def small_dataset(tmp_path: Path, traces: list[Trace], name: str = "traces") -> str:
    uri = str(tmp_path / name)
    token = store.new_token()
    part = store.write_part(uri, token, 0, traces_to_table(traces))
    manifest = store.Manifest(
        kind="traces",
        stage="test",
        rows=len(traces),
        parts=[part],
        config_hash="t",
        fingerprint=content_hash(name),
    )
    store.publish(uri, token=token, manifest=manifest)
    return uri


def server_cost(totals: dict[str, int], batch: bool = False) -> float:
    value = cost(totals, PRICE, batch=batch)
    assert value is not None
    return value


# ---------------------------------------------------------------------------------------------
# Request conversion
# ---------------------------------------------------------------------------------------------


def test_request_conversion_alternates_turns_and_maps_names_back() -> None:
    tools = [
        ToolSpec(
            name="files.read",
            description="Read",
            parameters={"type": "object", "properties": {"p": {"type": "string"}}},
        ),
        ToolSpec(name="files read", description="Also read", parameters={"type": "string"}),
    ]
    trace = Trace(
        source_id="t",
        source="test",
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content="Read a and b"),
            Message(
                role="assistant",
                content="",
                tool_calls=[
                    ToolCall(name="files.read", arguments={"p": "a"}, id="call:1"),
                    ToolCall(name="files.read", arguments={"p": "b"}, id="call:2"),
                ],
            ),
            Message(role="tool", content="A", tool_call_id="call:1"),
            Message(role="tool", content="", tool_call_id="call:2"),
            Message(role="user", content="Now again"),
        ],
        tools=tools,
        reference_calls=[ToolCall(name="files.read", arguments={"p": "a"})],
    ).with_id()
    params, names = build_params(trace, model=MODEL, system_prompt="You are careful.")
    roles = [m["role"] for m in params["messages"]]
    assert roles == ["user", "assistant", "user"]
    uses = [b for b in params["messages"][1]["content"] if b["type"] == "tool_use"]
    results = [b for b in params["messages"][2]["content"] if b["type"] == "tool_result"]
    assert [u["id"] for u in uses] == [r["tool_use_id"] for r in results] == ["call_1", "call_2"]
    assert results[1]["content"] == "(empty)"
    assert params["messages"][2]["content"][-1] == {"type": "text", "text": "Now again"}
    api_names = [t["name"] for t in params["tools"]]
    assert api_names == ["files_read", "files_read_2"]
    assert params["tools"][1]["input_schema"]["properties"]["value"] == {"type": "string"}
    assert "cache_control" in params["tools"][-1] and "cache_control" not in params["tools"][0]
    assert [b["text"] for b in params["system"]] == ["You are careful.", "Be brief."]
    assert "cache_control" in params["system"][-1]
    assert "temperature" not in params
    answer = [
        {"type": "text", "text": "ok"},
        {"type": "tool_use", "id": "x", "name": "files_read_2", "input": {"value": "q"}},
    ]
    assert calls_from_content(answer, names) == [
        ToolCall(name="files read", arguments={"value": "q"}, id="x")
    ]
    no_cache, _ = build_params(trace, model=MODEL, cache=False)
    assert "cache_control" not in json.dumps(no_cache)


def test_batches_respect_count_and_size_limits() -> None:
    from tooldistill.teacher.client import Job

    jobs = [Job(key=f"k{i}", trace_id="t", sample=i, params={"text": "x" * 1000}) for i in range(10)]
    assert [len(b) for b in chunk_batches(jobs, max_requests=4)] == [4, 4, 2]
    assert [len(b) for b in chunk_batches(jobs, max_requests=100, max_bytes=3500)] == [3, 3, 3, 1]
    with pytest.raises(ValueError, match="over the batch limit"):
        list(chunk_batches(jobs, max_bytes=500))


def test_limiter_honours_ratelimit_headers_and_retry_after() -> None:
    from datetime import datetime, timedelta

    limiter = RateLimiter()
    assert limiter.wait_for(10) == 0
    reset = (datetime.now(UTC) + timedelta(seconds=0.5)).isoformat()
    limiter.observe(
        {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}
    )
    assert 0.3 < limiter.wait_for(10) <= 0.5
    limiter = RateLimiter(requests_per_minute=60)
    limiter.observe({"anthropic-ratelimit-requests-limit": "6"})  # the account allows less: adopt it
    assert limiter.requests is not None and limiter.requests.rate == pytest.approx(0.1)
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "150", "retry-after": "9"}) == pytest.approx(0.15)
    assert retry_after({}) is None


# ---------------------------------------------------------------------------------------------
# Capture over the Messages API
# ---------------------------------------------------------------------------------------------


def test_two_thousand_requests_with_faults_lose_nothing(
    bfcl_dataset: Any,
    bfcl_traces: list[Trace],
    tmp_path: Path,
    anthropic_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve(
        AnthropicServer(
            ReferencePolicy(bfcl_traces, disagree_rate=0.1),
            Faults(rate=0.2, retry_after_s=0.01, slow_s=0.05, seed=7),
            min_cache_tokens=200,
        ),
        monkeypatch,
    )
    try:
        config = CaptureConfig(
            dataset=bfcl_dataset.uri,
            out=str(tmp_path / "captured"),
            model=MODEL,
            samples=2,
            limit=1000,
            concurrency=16,
            retries=8,
            retry_base_s=0.01,
            retry_cap_s=0.2,
            prices=PRICES,
        )
        result = capture(config, show_progress=False)
        stats = server.stats()
    finally:
        server.stop()
    summary = result.summary
    # traces that ask the very same thing share their requests (a few BFCL questions repeat)
    distinct = {json.dumps(build_params(t, model=MODEL)[0], sort_keys=True) for t in bfcl_traces[:1000]}
    total = 2 * len(distinct)
    assert total >= 1990 and summary["requests"]["total"] == total
    assert summary["requests"]["answered"] == total and summary["requests"]["failed"] == 0
    faults = stats["faults"]
    assert sum(faults.values()) >= 300 and set(faults) >= {"429", "529", "500", "drop", "slow"}
    # none lost, none duplicated: every request answered exactly once by the server
    assert len(stats["answered"]) == total and set(stats["answered"].values()) == {1}
    totals = stats["totals"]
    for name in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        assert summary["tokens"][name] == totals[name], name
    assert summary["cost_usd"] == pytest.approx(server_cost(totals), rel=1e-6)
    # prompt caching: the first request of each tool set goes alone, so each prefix is written once
    traces = result.dataset.to_traces()
    params = [build_params(t, model=MODEL)[0] for t in traces]
    cached = {
        prefix_key(p)
        for p in params
        if p.get("tools") and tokens_of(p["tools"]) + tokens_of(p.get("system")) >= 200
    }
    assert summary["prompt_cache"]["requests_writing"] == len(cached) > 0
    assert summary["prompt_cache"]["requests_reading"] > 0
    # every trace has two samples in order; disagreeing samples show up in the consistency figures
    assert all(len(t.teacher_samples) == 2 for t in traces)
    assert summary["consistency"]["traces_with_samples"] == 1000
    assert 0.7 < summary["consistency"]["all_agree"]["rate"] < 0.95
    assert traces[0].metadata["teacher"]["requests"][0]["usage"]["output_tokens"] > 0
    assert summary["send"]["retries"] >= sum(faults.values()) - faults.get("slow", 0)
    # the run's files carry no API key
    for path in Path(tmp_path).rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    # a rerun is up to date; with --force it asks nothing again (everything is in the cache)
    again = capture(config, show_progress=False)
    assert again.skipped
    forced = capture(config.model_copy(update={"force": True}), show_progress=False)
    assert (
        forced.summary["requests"]["from_cache"] == total and forced.summary["requests"]["answered_now"] == 0
    )


def test_errors_are_clear(
    bfcl_dataset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bfcl_traces: list[Trace]
) -> None:
    server = serve(AnthropicServer(ReferencePolicy(bfcl_traces), api_key="sk-ant-the-right-key"), monkeypatch)
    try:
        base = {"dataset": bfcl_dataset.uri, "out": str(tmp_path / "o"), "model": MODEL, "limit": 3}
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        with pytest.raises(ValueError, match="no Anthropic API key"):
            capture(CaptureConfig(**base), show_progress=False)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-a-wrong-key")
        with pytest.raises(TeacherError, match="HTTP 401"):
            capture(CaptureConfig(**base), show_progress=False)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-the-right-key")
        with pytest.raises(TeacherError, match="unknown model 'gpt-4o'"):
            capture(CaptureConfig(**{**base, "model": "gpt-4o"}), show_progress=False)
        result = CliRunner().invoke(
            main, ["teacher", "capture", "--dataset", str(tmp_path / "none"), "--out", "x", "--model", MODEL]
        )
        assert result.exit_code == 2 and "no dataset at" in result.output
    finally:
        server.stop()
    # nothing answers at all: connection errors are retried, then reported
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(TeacherError, match="connection error"):
        capture(CaptureConfig(**base, retries=1, retry_base_s=0.01), show_progress=False)


def test_server_rate_limit_is_followed(
    bfcl_dataset: Any,
    bfcl_traces: list[Trace],
    tmp_path: Path,
    anthropic_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve(
        AnthropicServer(ReferencePolicy(bfcl_traces), requests_per_window=15, window_s=0.5), monkeypatch
    )
    try:
        config = CaptureConfig(
            dataset=bfcl_dataset.uri,
            out=str(tmp_path / "o"),
            model=MODEL,
            limit=60,
            concurrency=8,
            retry_base_s=0.01,
        )
        result = capture(config, show_progress=False)
    finally:
        server.stop()
    assert result.summary["requests"]["answered"] == 60 and not result.failures
    # the headers (remaining 0 until the reset) paused the client before most refusals
    assert result.summary["limiter"]["pauses"] > 0
    assert server.stats()["faults"].get("rate_limited", 0) < 60


def test_kill_mid_run_then_resume_equals_uninterrupted(
    bfcl_dataset: Any, bfcl_traces: list[Trace], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = ReferencePolicy(bfcl_traces, disagree_rate=0.2)
    args = [
        "--dataset",
        bfcl_dataset.uri,
        "--model",
        MODEL,
        "--samples",
        "3",
        "--limit",
        "100",
        "--concurrency",
        "8",
    ]
    # the uninterrupted run, against its own server
    reference_server = serve(AnthropicServer(policy, min_cache_tokens=10**9), monkeypatch)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    try:
        whole = CliRunner().invoke(main, ["teacher", "capture", *args, "--out", str(tmp_path / "whole")])
        assert whole.exit_code == 0, whole.output
    finally:
        reference_server.stop()
    # the same run in a process killed with SIGKILL part way through
    server = AnthropicServer(
        policy, Faults(rate=1.0, kinds=("slow",), slow_s=0.01), min_cache_tokens=10**9
    ).start()
    out = tmp_path / "killed"
    env = {**os.environ, "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": API_KEY}
    command = [sys.executable, "-m", "tooldistill.cli", "teacher", "capture", *args, "--out", str(out)]
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cache = RequestCache(str(out / "requests"))
        deadline = time.time() + 60
        while time.time() < deadline and len(cache.done_keys()) < 80:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done_at_kill = cache.done_keys()
        assert 80 <= len(done_at_kill) < 300, "the kill came too late to test resuming"
        assert not (out / "manifest.json").exists()
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        stats = server.stats()
    finally:
        server.stop()
    # nothing completed before the kill was sent again
    assert all(stats["received"][key] == 1 for key in done_at_kill)
    # at most the requests in flight at the kill were answered twice
    assert sum(count - 1 for count in stats["answered"].values()) <= 8
    killed = {t.id: t for t in store.Dataset.open(str(out)).to_traces()}
    complete = {t.id: t for t in store.Dataset.open(str(tmp_path / "whole")).to_traces()}
    assert killed.keys() == complete.keys() and len(killed) == 100
    assert all(killed[i].teacher_samples == complete[i].teacher_samples for i in killed)
    assert all(len(t.teacher_samples) == 3 for t in killed.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"]["from_cache"] == len(done_at_kill)


# ---------------------------------------------------------------------------------------------
# Capture over the Message Batches API
# ---------------------------------------------------------------------------------------------


def test_batch_mode_resubmits_expired_and_errored(
    bfcl_dataset: Any,
    bfcl_traces: list[Trace],
    tmp_path: Path,
    anthropic_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = CaptureConfig(
        dataset=bfcl_dataset.uri,
        out=str(tmp_path / "batch"),
        model=MODEL,
        samples=2,
        limit=60,
        batch=True,
        batch_max_requests=50,
        poll_s=0.01,
        poll_max_s=0.05,
        prices=PRICES,
    )
    from tooldistill.teacher.capture import plan

    jobs = plan(bfcl_traces[:60], config).jobs
    expire, error = jobs[3].key, jobs[77].key
    server = serve(
        AnthropicServer(
            ReferencePolicy(bfcl_traces), batch_polls=2, batch_expire=[expire], batch_error=[error]
        ),
        monkeypatch,
    )
    try:
        result = capture(config, show_progress=False)
        stats = server.stats()
    finally:
        server.stop()
    summary = result.summary
    n = len(jobs)
    assert n >= 115 and summary["requests"]["answered"] == n and not result.failures
    assert summary["batch"]["expired"] == 1 and summary["batch"]["errored"] == 1
    first_round = -(-n // 50)
    assert summary["batch"]["resubmitted"] == 2 and summary["batch"]["batches"] == first_round + 1
    assert stats["batches"] == first_round + 1
    assert stats["totals"]["batch_answers"] == n
    assert summary["cost_usd"] == pytest.approx(server_cost(stats["totals"], batch=True), rel=1e-6)
    assert not list(RequestCache(config.cache_uri).open_batches())
    by_id = {t.id: t for t in result.dataset.to_traces()}
    assert len(by_id[jobs[3].trace_id].teacher_samples) == 2


def test_batch_run_killed_after_submitting_polls_instead_of_paying_again(
    bfcl_dataset: Any, bfcl_traces: list[Trace], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = AnthropicServer(ReferencePolicy(bfcl_traces), batch_polls=10**6).start()
    out = tmp_path / "b"
    env = {**os.environ, "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": API_KEY}
    command = [
        sys.executable, "-m", "tooldistill.cli", "teacher", "capture", "--dataset", bfcl_dataset.uri,
        "--model", MODEL, "--limit", "30", "--batch", "--poll", "0.02", "--out", str(out),
    ]  # fmt: skip
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache = RequestCache(str(out / "requests"))
        deadline = time.time() + 60
        while time.time() < deadline and not list(cache.open_batches()):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert len(list(cache.open_batches())) == 1
        for batch in server._batches.values():
            batch.polls_left = 0  # the batch ends while nobody is watching
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        assert server.stats()["batches"] == 1  # polled and collected, not submitted again
    finally:
        server.stop()
    assert store.Dataset.open(str(out)).manifest.stats["summary"]["requests"]["answered"] == 30


# ---------------------------------------------------------------------------------------------
# Judge
# ---------------------------------------------------------------------------------------------


def _evaluation(tmp_path: Path, traces_uri: str, traces: list[Trace]) -> str:
    from tooldistill.evaluate import EVAL_SCHEMA

    rows = []
    for index, trace in enumerate(traces):
        calls = [c.model_dump() for c in trace.reference_calls]
        if index % 3 == 0 and calls:
            calls = calls[:1] if len(calls) > 1 else [{**calls[0], "arguments": {"wrong": 1}}]
        exact = [c.model_dump() for c in trace.reference_calls] == calls
        rows.append(
            {
                "trace_id": trace.id,
                "source_id": trace.source_id,
                "category": trace.category,
                "calls": json.dumps(calls),
                "verdicts": json.dumps({"chain": {"match": exact, "score": float(exact)}}),
                "match": exact,
                "score": float(exact),
                "error": "HTTP 500" if index == 5 else None,
            }
        )
    uri = str(tmp_path / "evaluation")
    token = store.new_token()
    part = store.write_part(uri, token, 0, pa.Table.from_pylist(rows, schema=EVAL_SCHEMA))
    store.publish(
        uri,
        token=token,
        manifest=store.Manifest(
            kind="evaluation",
            stage="evaluate",
            rows=len(rows),
            parts=[part],
            config_hash="e",
            fingerprint="e",
            parents=[traces_uri],
        ),
    )
    return uri


def test_judge_agreement_with_exact_matching(
    bfcl_dataset: Any,
    bfcl_traces: list[Trace],
    tmp_path: Path,
    anthropic_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    traces = [t for t in bfcl_traces if t.reference_calls][:90]
    evaluation = _evaluation(tmp_path, bfcl_dataset.uri, traces)
    policy = JudgePolicy(disagree_rate=0.15, seed=3)
    server = serve(AnthropicServer(policy, Faults(rate=0.1, retry_after_s=0.01)), monkeypatch)
    try:
        config = JudgeConfig(
            evaluation=evaluation, out=str(tmp_path / "judge"), model=MODEL, retry_base_s=0.01, prices=PRICES
        )
        result = judge(config, show_progress=False)
        answered = sum(server.stats()["answered"].values())
        again = judge(config, show_progress=False)
    finally:
        server.stop()
    rows = result.dataset.to_arrow().to_pylist()
    assert len(rows) == 90 and answered == 89  # the row whose student had an error is not sent
    assert sum(1 for r in rows if r["error"]) == 1
    flipped = {
        r["request_key"]
        for r in rows
        if r["request_key"] and int(content_hash([3, r["request_key"]], 8), 16) / 16**8 < 0.15
    }
    disagreements = {r["request_key"] for r in rows if r["agree"] is False}
    assert disagreements == flipped and flipped
    summary = result.summary
    assert summary["agreement"]["rate"] == pytest.approx(1 - len(flipped) / 89, abs=1e-4)
    assert summary["confusion"]["judge_only"] + summary["confusion"]["exact_only"] == len(flipped)
    assert 0 < summary["cohen_kappa"] < 1
    assert again.skipped


def test_judge_garbage_answers_are_errors_not_verdicts(
    bfcl_dataset: Any,
    bfcl_traces: list[Trace],
    tmp_path: Path,
    anthropic_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Rambling:
        def answer(self, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
            return [{"type": "text", "text": "I think they are probably the same."}]

    traces = [t for t in bfcl_traces if t.reference_calls][:6]
    evaluation = _evaluation(tmp_path, bfcl_dataset.uri, traces)
    server = serve(AnthropicServer(Rambling()), monkeypatch)
    try:
        result = judge(
            JudgeConfig(evaluation=evaluation, out=str(tmp_path / "j"), model=MODEL), show_progress=False
        )
    finally:
        server.stop()
    assert result.summary["judged"] == 0
    assert result.summary["errors_by_reason"]["judge did not call record_verdict"] == 5


# ---------------------------------------------------------------------------------------------
# Live (opt-in)
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (os.environ.get("ANTHROPIC_API_KEY") and os.environ.get("TOOLDISTILL_LIVE") == "1"),
    reason="live test: set ANTHROPIC_API_KEY and TOOLDISTILL_LIVE=1",
)
def test_live_three_traces_from_claude(
    bfcl_dataset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    model = os.environ.get("TOOLDISTILL_LIVE_MODEL", "claude-haiku-4-5")
    config = CaptureConfig(
        dataset=bfcl_dataset.uri, out=str(tmp_path / "live"), model=model, limit=3, max_tokens=512
    )
    result = capture(config, show_progress=False)
    assert result.summary["requests"]["answered"] == 3
    assert result.summary["tokens"]["output_tokens"] > 0
    assert all(len(t.teacher_samples) == 1 for t in result.dataset.to_traces())


# ---------------------------------------------------------------------------------------------
# Secrets in Claude's answers
# ---------------------------------------------------------------------------------------------


def _claude_secrets() -> dict[str, tuple[str, str]]:
    """{kind: (line, value)}: four of test_redact's invented secrets, as Claude might repeat them."""
    from test_redact import PLANTED

    prefixes = {
        "aws_access_key_id": "AWS_ACCESS_KEY_ID=",
        "jwt": "SESSION_JWT=",
        "secret_keyword": "password: ",
        "basic_auth": "DATABASE_URL=postgres://",
    }
    found = {}
    for kind, prefix in prefixes.items():
        found[kind] = next(
            (line, value) for k, line, value in PLANTED if k == kind and line.startswith(prefix)
        )
    return found


SECRETS = _claude_secrets()
SECRET_LINES = "\n".join(line for line, _ in SECRETS.values())
#: a tool-call argument under a key that names a secret, with no pattern in the value itself
KEYED_PASSWORD = "Zq8!vLm2#Rt9" + "Kw"
SECRET_VALUES = [value for _, value in SECRETS.values()] + [KEYED_PASSWORD]
#: what each answer of ``SecretPolicy`` holds: every line once in the text, once in a tool input,
#: and the keyed password
PER_ANSWER = {"aws_access_key_id": 2, "jwt": 2, "basic_auth": 2, "secret_keyword": 3}


class SecretPolicy:
    """Claude answering with secrets: in its text, in a tool call's arguments (in a value, and under
    a key that names a secret), and, for the judge, in the verdict's reason."""

    def answer(self, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
        text = {"type": "text", "text": f"I read the config first. It says:\n{SECRET_LINES}"}
        tool = (body.get("tools") or [{}])[0].get("name", "tool")
        if tool == "record_verdict":
            arguments: dict[str, Any] = {
                "equivalent": True,
                "score": 5,
                "reason": f"Same call; both pass {SECRET_LINES}",
                "password": KEYED_PASSWORD,
            }
        else:
            arguments = {"config": SECRET_LINES, "password": KEYED_PASSWORD}
        return [text, {"type": "tool_use", "id": f"toolu_{key[:12]}", "name": tool, "input": arguments}]


def leaked(root: Path) -> list[tuple[str, str]]:
    """(file, value) for every secret value found in any file under ``root``: each file's bytes as
    written, and Parquet parts decoded to their rows too (their pages are compressed)."""
    import pyarrow.parquet as pq

    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        texts = [path.read_bytes()]
        if path.suffix == ".parquet":
            texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str).encode())
        for value in SECRET_VALUES:
            forms = {value.encode(), json.dumps(value)[1:-1].encode()}
            if any(form in text for form in forms for text in texts):
                found.append((str(path.relative_to(root)), value[:6] + "..."))
    return found


def test_secrets_in_claudes_answers_reach_no_file_and_are_counted(
    bfcl_traces: list[Trace], tmp_path: Path, anthropic_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    traces = [t for t in bfcl_traces if t.reference_calls and t.tools][:5]
    dataset = small_dataset(tmp_path, traces)
    run = tmp_path / "run"  # everything the commands write goes under here
    server = serve(AnthropicServer(SecretPolicy()), monkeypatch)
    try:
        out = run / "teacher"
        args = ["teacher", "capture", "--dataset", dataset, "--out", str(out), "--model", MODEL]
        result = CliRunner().invoke(main, [*args, "--samples", "2"])
        assert result.exit_code == 0, result.output
        answered = sum(server.stats()["answered"].values())
        evaluation = _evaluation(run, dataset, traces)
        judged = CliRunner().invoke(main, ["judge", "--evaluation", evaluation, "--model", MODEL])
        assert judged.exit_code == 0, judged.output
        judge_answers = sum(server.stats()["answered"].values()) - answered
    finally:
        server.stop()
    assert answered == 10 and judge_answers == 5
    assert not leaked(run)
    assert not [v for v in SECRET_VALUES if v in result.output + judged.output]
    # the counts: per kind, what each answer held times the answers
    manifest = store.Dataset.open(str(out)).manifest
    assert manifest.stats["secrets_redacted"] == {kind: n * 10 for kind, n in PER_ANSWER.items()}
    assert (
        json.loads((out / "summary.json").read_text())["secrets_redacted"]
        == manifest.stats["secrets_redacted"]
    )
    judgements = store.Dataset.open(evaluation + "-judge")
    assert judgements.manifest.stats["secrets_redacted"] == {kind: n * 5 for kind, n in PER_ANSWER.items()}
    assert "secrets redacted from Claude's answers: 90" in " ".join(result.output.split())
    # what is kept: the label in front of each value, the arguments' keys, the verdict itself
    captured = store.Dataset.open(str(out)).to_traces()
    call = captured[0].teacher_samples[0][0]
    assert call.arguments["password"] == "[REDACTED:secret_keyword]"
    assert "AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key_id]" in call.arguments["config"]
    assert "postgres://app_user:[REDACTED:basic_auth]@db.internal" in call.arguments["config"]
    rows = judgements.to_arrow().to_pylist()
    verdicts = [r for r in rows if r["judge_equivalent"] is not None]
    assert len(verdicts) == 5 and all("SESSION_JWT=[REDACTED:jwt]" in r["judge_reason"] for r in verdicts)


def test_answers_stored_unredacted_are_redacted_when_read_again(
    bfcl_traces: list[Trace], tmp_path: Path, anthropic_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache written with redaction off (or by a version before it) holds Claude's secrets; a run
    with redaction on rebuilds from it without asking again, and takes them out of the cache too."""
    traces = [t for t in bfcl_traces if t.reference_calls and t.tools][:3]
    dataset = small_dataset(tmp_path, traces)
    out = tmp_path / "run" / "teacher"
    server = serve(AnthropicServer(SecretPolicy()), monkeypatch)
    try:
        config = CaptureConfig(dataset=dataset, out=str(out), model=MODEL, redact=False)
        raw = capture(config, show_progress=False)
        assert raw.summary["secrets_redacted"] == {}
        assert leaked(out)  # as asked: kept as it came
        redacted = capture(config.model_copy(update={"redact": True}), show_progress=False)
        answered = sum(server.stats()["answered"].values())
    finally:
        server.stop()
    assert not redacted.skipped and answered == 3  # the config changed; nothing was asked again
    assert redacted.summary["requests"]["from_cache"] == 3
    assert redacted.summary["secrets_redacted"] == {kind: n * 3 for kind, n in PER_ANSWER.items()}
    assert not leaked(out)
