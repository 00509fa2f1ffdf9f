"""The ``reward`` phase kind: the reward of a sampled answer against the teacher's calls (its parts
and their weights), the errors before anything starts (a weight naming no part, no train traces),
and one small GRPO run of the packaged SmolLM2-135M inside Ray Train, interrupted after its first
checkpoint and resumed by the phase, which merges the adapter and serves the result."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tooldistill.finetune.grpo import PARTS, RewardOptions, reward_of
from tooldistill.optimize.phases import PHASE_KINDS, PhaseContext
from tooldistill.optimize.phases.reward import reward_row
from tooldistill.optimize.run import OptimizeError, config_from_dict
from tooldistill.optimize.student import Prompt, StudentSettings
from tooldistill.optimize.testing import WEATHER, city_of, make_traces
from tooldistill.schema import Message, ToolCall, Trace

DATA = {"train": "a", "val": "b", "test": "c"}


def call(name: str, **arguments: Any) -> str:
    """An answer in the CPU student's template syntax (tool names as the template writes them)."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def no_call_trace() -> Trace:
    return Trace(
        source_id="n0", source="test", category="irrelevance",
        messages=[Message(role="user", content="Tell me a joke.")], tools=[WEATHER], reference_calls=[],
    ).with_id()  # fmt: skip


def two_calls_trace() -> Trace:
    base = make_traces(1)[0]
    return base.model_copy(
        update={
            "reference_calls": [
                ToolCall(name="weather.current", arguments={"city": "Oslo", "unit": "c"}),
                ToolCall(name="clock.now", arguments={"tz": "UTC"}),
            ]
        }
    ).with_id()


def test_the_right_call_gets_the_whole_reward_and_wrong_ones_less() -> None:
    trace = make_traces(1)[0]  # weather.current(city="Paris0")
    right = reward_of(trace, call("weather_current", city="Paris0"))
    assert right == {"format": 1.0, "names": 1.0, "argument_names": 1.0, "values": 1.0, "no_call": None,
                     "total": 1.0, "match": True}  # fmt: skip
    # the right tool with a wrong value: partial credit, below the right answer
    value = reward_of(trace, call("weather_current", city="paris0"))
    assert value["values"] == 0.0 and value["names"] == 1.0 and value["argument_names"] == 1.0
    assert 0.3 < value["total"] < 1.0 and not value["match"]
    # an extra argument: argument names and values half right
    extra = reward_of(trace, call("weather_current", city="Paris0", unit="f"))
    assert extra["argument_names"] == 0.5 and extra["values"] == 0.5 and value["total"] < extra["total"] < 1
    # another tool: only the form is right
    wrong = reward_of(trace, call("clock_now", city="Paris0"))
    assert (wrong["format"], wrong["names"], wrong["argument_names"], wrong["values"]) == (1, 0, 0, 0)
    assert wrong["total"] < 0.1
    # prose where a call is expected, and unreadable text: nothing
    for text in ("It is sunny in Paris.", '<tool_call>\n{"name": "weather_cur', "```json\n{broken\n```"):
        garbage = reward_of(trace, text)
        assert garbage["format"] == 0.0 and garbage["total"] == 0.0


def test_several_calls_get_partial_credit_per_call() -> None:
    trace = two_calls_trace()
    both = call("weather_current", city="Oslo", unit="c") + "\n" + call("clock_now", tz="UTC")
    assert reward_of(trace, both)["total"] == 1.0
    one = reward_of(trace, call("weather_current", city="Oslo", unit="c"))
    assert one["names"] == 0.5 and one["values"] == 0.5 and 0.5 < one["total"] < 1.0


def test_the_no_call_case_both_ways() -> None:
    quiet = no_call_trace()
    answered = reward_of(quiet, "No tool is needed.")
    assert answered["no_call"] == 1.0 and answered["total"] == 1.0 and answered["match"]
    assert all(answered[p] is None for p in ("names", "argument_names", "values"))
    called = reward_of(quiet, call("weather_current", city="Paris"))
    assert called["no_call"] == 0.0 and called["format"] == 1.0 and called["total"] < 0.2
    # and a call expected, none made
    assert reward_of(make_traces(1)[0], "No tool is needed.")["total"] == 0.0
    # the weights decide: the form alone counts nothing here
    only = reward_of(quiet, call("weather_current", city="Paris"), {"format": 0.0})
    assert only["total"] == 0.0


def test_weights_name_the_parts_and_bad_ones_fail_at_load() -> None:
    options = RewardOptions.model_validate({"weights": {"values": 2}})
    assert options.weights["values"] == 2 and set(options.weights) == set(PARTS)
    with pytest.raises(ValueError, match=r"unknown reward part 'style'.*known parts: format, names, "
                       r"argument_names, values, no_call"):  # fmt: skip
        RewardOptions.model_validate({"weights": {"style": 1}})
    with pytest.raises(ValueError, match="at least one part"):
        RewardOptions.model_validate({"weights": dict.fromkeys(PARTS, 0)})
    with pytest.raises(ValueError, match="needs use_gpu"):
        RewardOptions.model_validate({"generation": "vllm"})
    assert not RewardOptions().use_vllm()
    # through the config: the phase's section is checked when the config loads
    with pytest.raises(OptimizeError, match="unknown reward part 'style'"):
        config_from_dict(
            {"run_dir": "r", "data": DATA,
             "phases": [{"name": "p", "kind": "reward", "reward": {"weights": {"style": 1}}}]}
        )  # fmt: skip
    config = config_from_dict(
        {"run_dir": "r", "data": DATA,
         "phases": [{"name": "p", "kind": "reward", "reward": {"group_size": 2, "steps": 3}}]}
    )  # fmt: skip
    assert config.phases[0].section("reward") == {"group_size": 2, "steps": 3}
    kind = PHASE_KINDS["reward"]
    assert kind.section == "reward" and kind.exclusive_cpus and kind.summary_fields == ("reward",)


def test_a_reward_phase_without_train_traces_fails_before_anything_starts(tmp_path: Path) -> None:
    from tooldistill.optimize.run import optimize
    from tooldistill.optimize.testing import StudentServer, make_traces, write_traces

    data = {
        "train": write_traces(str(tmp_path / "train"), []),
        "val": write_traces(str(tmp_path / "val"), make_traces(2, 100)),
        "test": write_traces(str(tmp_path / "test"), make_traces(2, 200)),
    }
    with StudentServer() as server:
        config = config_from_dict(
            {"run_dir": str(tmp_path / "run"), "data": data, "student": {"endpoint": server.url, "model": "m"},
             "phases": [{"name": "p", "kind": "reward"}]}
        )  # fmt: skip
        with pytest.raises(OptimizeError, match="p: a reward phase needs train traces"):
            optimize(config)
        assert server.received == []  # not even the baseline was asked
    # a student nobody here serves: the phase cannot serve what it trains
    config = config_from_dict(
        {"run_dir": str(tmp_path), "data": DATA, "phases": [{"name": "p", "kind": "reward"}]}
    )
    ctx = PhaseContext(
        config, config.phases[0], Prompt(""), tmp_path / "p", lambda _: None, _train=make_traces(1)
    )
    with pytest.raises(OptimizeError, match="needs a student that tooldistill serves"):
        PHASE_KINDS["reward"].run(ctx)
    assert not (tmp_path / "p").exists()


def test_the_report_shows_the_reward_phase_and_its_curve(tmp_path: Path) -> None:
    from tooldistill.optimize.student import Outcome, summarize
    from tooldistill.report import render_report

    run = tmp_path / "run"
    opt = run / "optimize"
    config = config_from_dict(
        {"run_dir": str(opt), "data": {n: str(run / "curate" / "split" / n) for n in ("train", "val", "test")},
         "student": {"endpoint": "http://127.0.0.1:9", "model": "student"},
         "phases": [{"name": "phase1", "kind": "reward", "train": 8, "reward": {"steps": 3}}]}
    )  # fmt: skip
    test = summarize([Outcome(f"t{i}", float(i < 5), i < 5, "") for i in range(20)])
    (opt / "phase1").mkdir(parents=True)
    (opt / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
    (opt / "baseline.json").write_text(json.dumps({"test": test}))
    (opt / "phase1" / "result.json").write_text(json.dumps({"kind": "reward", "test": test}))
    (opt / "summary.json").write_text(json.dumps({"best_phase": "phase1"}))
    record = {
        "prompts": {"prompts": 8, "no_calls": 1, "left_out": {"longer than max_prompt_tokens": 2}},
        "training": {"steps": 3, "train_seconds": 95.0, "tokens_per_s": 18.8, "flat_groups": 2, "groups": 6,
                     "reward_curve": [{"step": 1, "reward": 0.25}, {"step": 2, "reward": 0.4},
                                      {"step": 3, "reward": 0.5}]},
        "served_model": "student-phase1",
    }  # fmt: skip
    (opt / "phase1" / "reward.json").write_text(json.dumps(record))
    paths = render_report(str(run))
    markdown = paths.markdown.read_text()
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Phase | Prompts |"))
    row = [cell.strip() for cell in lines[start + 2].strip()[1:-1].split(" | ")]
    assert row == [
        "phase1",
        "8 (1 no-call)",
        "3",
        "0.250 → 0.500",
        "2/6",
        "1 min 35 s",
        "19",
        "student-phase1",
    ]
    assert "GRPO on the weights, rewarded by the match verdict" in markdown
    assert "phase1: left out of sampling: longer than max\\_prompt\\_tokens: 2" in markdown
    assert (paths.markdown.parent / "reward_curve.png").is_file()


# ---------------------------------------------------------------------------------------------
# one real run


@pytest.fixture(scope="module")
def base() -> Path:
    from tooldistill.serve.models import prepare

    return prepare("smollm2")[0]


class FakeHost:
    """Serves nothing: records what it was asked to serve."""

    def __init__(self, base: Path) -> None:
        self.base, self.served = base, []  # type: ignore[var-annotated]

    def base_model(self) -> Path:
        return self.base

    def dtype(self) -> str:
        return "float32"

    def serve(self, folder: Path, name: str) -> tuple[str, str]:
        self.served.append((folder, name))
        return "http://127.0.0.1:9/v1", name


#: 2 prompts × 2 samples a step, 2 steps, a checkpoint each; LoRA on the top layers' attention.
SETTINGS = {
    "group_size": 2, "batch_size": 2, "steps": 2, "max_completion_tokens": 40, "save_steps": 1,
    "learning_rate": 1e-3, "top_layers": 2, "max_failures": 0,
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_grpo_run_in_ray_train_is_interrupted_resumed_merged_and_served(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("trl", reason="the reward phase needs trl and peft (the cpu extra)")
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, TrainerCallback

    from tooldistill.finetune.grpo import RewardError, build_prompts, reward_phase, train_grpo

    options = RewardOptions.model_validate(SETTINGS)
    traces = [make_traces(1)[0], no_call_trace()]
    # two demonstrations in the template's call syntax: the base student then answers with calls,
    # some right and some not (without them it answers in prose: every group flat, nothing learnt)
    demos = [
        message
        for i in (50, 51)
        for message in (
            {"role": "user", "content": f"What is the weather in {city_of(i)}?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": f"c{i}", "type": "function", "function": {
                "name": "weather_current", "arguments": json.dumps({"city": city_of(i)})}}]},
        )
    ]  # fmt: skip
    start = Prompt("Call the right tool.", tuple(demos))
    student = StudentSettings(model="smollm2-135m-instruct")
    folder = tmp_path / "rw"
    prompts = build_prompts(traces, start, student, AutoTokenizer.from_pretrained(str(base)), 1024)
    assert prompts.summary["prompts"] == 2 and prompts.summary["no_calls"] == 1

    class FailAtStep1(TrainerCallback):  # type: ignore[misc]
        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            import ray.train

            if state.global_step == 1:
                ray.train.get_all_reported_checkpoints()  # Ray Train has registered step 1
                raise RuntimeError("interrupted at step 1")

    with pytest.raises(RewardError, match="interrupted at step 1"):
        train_grpo(str(base), folder, options, prompts.rows, traces, threads=2, note=lambda _: None,
                   callbacks=[FailAtStep1()])  # fmt: skip
    # the phase, run again, goes on from the checkpoint of step 1
    events: list[dict[str, Any]] = []
    # the host names its folders as the run does, relative to where the run started; the training
    # workers run elsewhere
    monkeypatch.chdir(tmp_path)
    host = FakeHost(Path(os.path.relpath(base, tmp_path)))
    new, record = reward_phase(traces, options, "rw", start, student, folder, host, events.append, threads=2)
    training = record["training"]
    assert training["steps"] == 2 and training["resumed_from_step"] == 1
    import ray

    (worker,) = training["placement"]  # one worker, on this session's one Ray node
    assert worker["rank"] == 0 and worker["node_id"] == ray.get_runtime_context().get_node_id()
    logged = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in logged if "step" in e]
    assert [e["step"] for e in steps] == [1, 2]  # step 1 was not trained twice
    for entry in steps:
        assert 0.0 <= entry["reward"] <= 1.0 and set(entry["parts"]) == set(PARTS)
        assert entry["groups"] == 2 and 0 <= entry["flat_groups"] <= 2
        assert entry["tokens_per_s"] > 0 and entry["samples_per_s"] > 0 and entry["eta_s"] is not None
    assert [e["step"] for e in training["reward_curve"]] == [1, 2]
    assert training["groups"] == 4 and 0 <= training["flat_groups"] <= 4
    assert [e["step"] for e in events if e["event"] == "reward_step"] == [2]  # the resumed run's step
    # the checkpoint Ray Train kept, and the adapter taken from it
    (run,) = (folder / "ray").iterdir()
    assert run.name.startswith("reward-")
    (last,) = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())
    assert last.name == "checkpoint_000002"
    adapter = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    assert adapter == {} or all(t.numel() for t in adapter.values())
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b
    # some answer was better than another in its group, so the weights moved (PEFT starts B at zero)
    assert training["flat_groups"] < training["groups"]
    assert any(t.abs().sum() > 0 for t in lora_b)
    # merged and served under the phase's name, which the later phases ask
    assert host.served == [(folder / "merged", "smollm2-135m-instruct-rw")]
    assert (folder / "merged" / "config.json").is_file()
    assert new.model == "smollm2-135m-instruct-rw" and new.endpoint == "http://127.0.0.1:9/v1"
    row = reward_row(record)
    assert row["steps"] == 2 and len(row["curve"]) == 2 and row["served_model"] == new.model
    figures = ("train_seconds", "tokens_per_s", "sampled_tokens_per_s", "samples_per_s", "flat_groups")
    print("reward run:", json.dumps({k: training[k] for k in figures}), json.dumps(steps))
    # done: a rerun of the phase trains nothing, and serves the same folder again
    again, _ = reward_phase(traces, options, "rw", start, student, folder, host, events.append, threads=2)
    assert again.model == new.model and len(host.served) == 2
