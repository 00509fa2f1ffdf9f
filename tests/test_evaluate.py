"""``score``, ``consistency`` and ``evaluate`` end to end.

``evaluate`` talks HTTP to a local OpenAI-compatible server started here (the student endpoint's
protocol: ``GET /v1/models``, ``POST /v1/chat/completions`` with tools).  The server answers each
question in a way the test chose: the right call as native ``tool_calls`` (with the dotted tool
name written with underscores, as APIs require), the right call as ``<tool_call>`` text, a wrong
tool, or garbage; and it fails the first request with a 500 to exercise retries.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from tooldistill.cli import main
from tooldistill.evaluate import EvaluateConfig, evaluate
from tooldistill.executor import LocalExecutor
from tooldistill.ingest import IngestConfig, ingest
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace, trace_to_json
from tooldistill.store import Dataset
from tooldistill.student import EndpointError

CITIES = ["Paris", "Rome", "Oslo", "Lima", "Kyiv", "Pune", "Cork", "Nice", "Bern", "Graz", "Riga", "Baku"]
TOOLS = [
    ToolSpec(
        name="weather.current",
        description="Current weather",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    ),
    ToolSpec(
        name="clock.now",
        description="Local time",
        parameters={"type": "object", "properties": {"tz": {"type": "string"}}},
    ),
]


def make_traces() -> list[Trace]:
    traces = []
    for index, city in enumerate(CITIES):
        right = [ToolCall(name="weather.current", arguments={"city": city})]
        other = [ToolCall(name="clock.now", arguments={"tz": city})]
        samples = [right, right, other] if index < 4 else ([right, other] if index == 4 else [])
        traces.append(
            Trace(
                source_id=f"q{index}",
                source="test",
                category="even" if index % 2 == 0 else "odd",
                messages=[Message(role="user", content=f"What is the weather in {city}?")],
                tools=TOOLS,
                reference_calls=right,
                teacher_samples=samples,
            ).with_id()
        )
    return traces


def behaviour(index: int) -> str:
    return ["native", "tags", "wrong_tool", "garbage"][index % 4]


class StudentHandler(BaseHTTPRequestHandler):
    failed_once = False
    lock = threading.Lock()
    seen_auth: set[str] = set()

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "student", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StudentHandler.seen_auth.add(self.headers.get("Authorization") or "")
        if self.path != "/v1/chat/completions" or "tools" not in body:
            self._send(400, {"error": {"message": "expected chat completions with tools"}})
            return
        with StudentHandler.lock:
            if not StudentHandler.failed_once:
                StudentHandler.failed_once = True
                self._send(500, {"error": {"message": "warming up"}})
                return
        question = body["messages"][-1]["content"]
        city = re.search(r"weather in (\w+)\?", question).group(1)
        index = CITIES.index(city)
        names = [t["function"]["name"] for t in body["tools"]]
        assert names == ["weather_current", "clock_now"], names  # dots made API-safe
        kind = behaviour(index)
        message: dict = {"role": "assistant", "content": None}
        if kind == "native":
            message["tool_calls"] = [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather_current", "arguments": json.dumps({"city": city})},
                }
            ]
        elif kind == "tags":
            message["content"] = (
                f'<tool_call>\n{{"name": "weather.current", "arguments": {{"city": "{city}"}}}}\n</tool_call>'
            )
        elif kind == "wrong_tool":
            message["tool_calls"] = [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "clock_now", "arguments": json.dumps({"tz": city})},
                }
            ]
        else:
            message["content"] = '{"name": "weather.current", "arguments": {"city": '
        self._send(
            200,
            {
                "id": f"chatcmpl-{index}",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
            },
        )


@pytest.fixture()
def student():
    StudentHandler.failed_once = False
    StudentHandler.seen_auth = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StudentHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def dataset(tmp_path):
    source = tmp_path / "traces.jsonl"
    source.write_text("".join(json.dumps(trace_to_json(t)) + "\n" for t in make_traces()))
    out = str(tmp_path / "traces")
    ingest(IngestConfig(sources=(str(source),), format="jsonl", out=out), LocalExecutor(show_progress=False))
    return out


def test_evaluate_against_a_local_openai_compatible_server(student, dataset, tmp_path):
    config = EvaluateConfig(
        dataset=dataset, endpoint=student, model="student", out=str(tmp_path / "eval"), concurrency=4
    )
    evaluated = evaluate(config, show_progress=False)
    result, summary = evaluated.dataset, evaluated.summary
    assert (
        not evaluated.skipped and result.manifest.kind == "evaluation" and result.manifest.rows == len(CITIES)
    )
    chain = summary["modes"]["chain"]
    assert chain["n"] == 12 and chain["matched"] == 6  # native + tags answers are right
    assert chain["rate"] == 0.5 and chain["ci95"][0] < 0.5 < chain["ci95"][1]
    assert summary["unparseable"] == 3
    assert summary["modes"]["names"]["matched"] == 6
    rows = {r["source_id"]: r for r in result.to_arrow().to_pylist()}
    assert rows["q2"]["reason"] == "called clock.now, expected weather.current"
    assert rows["q3"]["reason"].startswith("unparseable: invalid JSON")
    assert rows["q0"]["match"] and json.loads(rows["q0"]["calls"])[0]["name"] == "weather.current"
    assert sum(r["attempts"] for r in rows.values()) == 13  # one retry after the 500
    assert all(r["latency_s"] is not None and r["prompt_tokens"] == 50 for r in rows.values())
    # categories and the per-tool table
    assert summary["categories"]["even"]["chain"]["matched"] == 3  # q0 native, q4 native, q8 native
    weather = next(r for r in summary["tools"]["rows"] if r["expected"] == "weather.current")
    assert (
        weather["n"] == 12 and weather["correct"] == 6 and weather["instead"] == {"clock.now": 3, "(none)": 3}
    )
    # against the teacher's consensus (q0-q3: majority says weather; q4 is a tie → earliest sample)
    assert summary["vs_consensus"]["chain"]["n"] == 5 and summary["vs_consensus"]["chain"]["matched"] == 3
    consistency = summary["consistency"]
    assert consistency["traces_with_samples"] == 5 and consistency["all_agree"]["matched"] == 0
    assert consistency["ties"] == 1
    # unchanged → skipped; the request stored holds no key
    again = evaluate(config, show_progress=False)
    assert again.skipped and again.summary["modes"]["chain"]["matched"] == 6
    assert "Authorization" not in json.dumps(rows["q0"]["request"])


def test_unreachable_endpoint_is_one_clear_error(dataset, tmp_path):
    config = EvaluateConfig(
        dataset=dataset, endpoint="http://127.0.0.1:9/v1", model="m", out=str(tmp_path / "e"), timeout_s=2
    )
    with pytest.raises(EndpointError, match="cannot reach the endpoint http://127.0.0.1:9/v1"):
        evaluate(config, show_progress=False)
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--dataset",
            dataset,
            "--endpoint",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert (
        result.exit_code == 2
        and "cannot reach the endpoint" in result.output
        and "Traceback" not in result.output
    )


def test_score_and_consistency_commands(dataset, tmp_path):
    traces = Dataset.open(dataset).to_traces()
    by_source = {t.source_id: t for t in traces}
    lines = [
        {
            "id": "p1",
            "source_id": "q0",
            "calls": [{"name": "weather.current", "arguments": {"city": "Paris"}}],
        },
        {"id": "p2", "source_id": "q0", "output": '[weather.current(city="paris")]'},  # repeated sample
        {"id": "p3", "trace_id": by_source["q1"].id, "output": "<tool_call>{oops</tool_call>"},
        {
            "id": "p4",
            "source_id": "q2",
            "output": {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "clock_now", "arguments": "{}"}}],
            },
        },
        {"id": "p5", "source_id": "nope", "calls": []},
    ]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    out = tmp_path / "scores"
    result = CliRunner().invoke(
        main,
        [
            "score",
            str(predictions),
            "--dataset",
            dataset,
            "--mode",
            "chain",
            "--mode",
            "bfcl",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "match rate" in result.output and "2 not scored" in result.output
    records = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["p1", "p2", "p3", "p4", "p5", None]
    assert [r["match"] for r in records] == [True, False, False, False, False, False]
    assert records[1]["reason"] == "call to weather.current: argument city: expected 'Paris', got 'paris'"
    assert records[1]["verdicts"]["bfcl"]["match"]  # BFCL's string rule ignores case
    assert records[2]["reason"].startswith("unparseable: <tool_call> block")
    assert records[3]["reason"] == "called clock.now, expected weather.current"
    assert records[4]["reason"] == "unknown source_id nope" and records[4]["error"]
    assert records[5]["reason"].startswith("bad prediction line")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["chain"] == {**summary["modes"]["chain"], "n": 4, "matched": 1}
    assert summary["modes"]["bfcl"]["matched"] == 2 and summary["errors"] == 2

    report = CliRunner().invoke(main, ["consistency", "--dataset", dataset, "--json"])
    assert report.exit_code == 0, report.output
    parsed = json.loads(report.output[report.output.index("{") :])
    assert parsed["traces_with_samples"] == 5 and parsed["ties"] == 1
    assert parsed["mean_pairwise_agreement"] == pytest.approx((4 * (1 / 3) + 0) / 5, abs=1e-3)


def test_the_api_key_is_sent_but_never_stored(student, dataset, tmp_path, monkeypatch):
    secret = "sk-test-0123456789abcdef0123456789"
    monkeypatch.setenv("STUDENT_KEY", secret)
    out = tmp_path / "eval"
    config = EvaluateConfig(
        dataset=dataset, endpoint=student, model="student", out=str(out), api_key_env="STUDENT_KEY"
    )
    evaluate(config, show_progress=False)
    assert StudentHandler.seen_auth == {f"Bearer {secret}"}
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_run_with_endpoint_errors_is_kept_but_not_taken_as_up_to_date(student, dataset, tmp_path):
    config = EvaluateConfig(
        dataset=dataset, endpoint=student, model="student", out=str(tmp_path / "e"), retries=0
    )
    run = evaluate(config, show_progress=False)
    first = run.summary
    assert (
        not run.skipped and not run.complete and first["errors"] == 1 and first["scored"] == 11
    )  # the 500, not retried
    assert first["first_error"].startswith("gave up after 1 attempts: HTTP 500")
    run = evaluate(config, show_progress=False)
    second = run.summary
    assert not run.skipped and second["errors"] == 0  # asked again, not served from the failed run
    assert evaluate(config, show_progress=False).skipped  # a complete run is up to date
