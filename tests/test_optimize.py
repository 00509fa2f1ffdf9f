"""Prompt optimization end to end, against local OpenAI-compatible servers at the network edge.

The student server (``optimize.testing.StudentServer``) answers from the prompt it receives: every
question right when the system prompt holds ``KEY_PHRASE``, a third right with no help, another
third right when the request carries few-shot demos, the rest with the city in lower case.  The
reflection server always proposes ``BETTER_INSTRUCTION`` (which holds the phrase).  So DSPy's
bootstrapped demos raise the test match rate from 1/3 to 2/3, and GEPA can only reach 1.0 by
accepting the reflection model's instruction.  Everything else is the real code: DSPy, gepa, Ray
Tune on the session's 2-CPU Ray instance, the matcher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tooldistill.cli import main
from tooldistill.optimize.adapter import ToolCallAdapter
from tooldistill.optimize.run import OptimizeError, config_from_dict, evaluate_prompt, optimize
from tooldistill.optimize.student import Prompt, StudentSettings, run_batch, summarize
from tooldistill.optimize.testing import (
    BETTER_INSTRUCTION,
    KEY_PHRASE,
    ReflectionServer,
    StudentServer,
    make_traces,
    write_traces,
)
from tooldistill.optimize.tune_eval import max_overlap
from tooldistill.progress import evaluation_line, optimize_progress


@pytest.fixture(scope="module")
def servers() -> Any:
    with StudentServer(latency_s=0.03) as student, ReflectionServer() as reflection:
        yield student, reflection


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("optdata")
    train = make_traces(12)
    # CaR quality: the last traces best, so phase 3's "15 best" are not simply the first ones
    return {
        "train": write_traces(str(root / "train"), train, quality=[i / 12 for i in range(12)]),
        "val": write_traces(str(root / "val"), make_traces(6, 100)),
        "test": write_traces(str(root / "test"), make_traces(9, 200)),
    }


def make_config(
    run_dir: Path, data: dict[str, str], servers: Any, phases: list[dict[str, Any]], **extra: Any
) -> Any:
    student, reflection = servers
    raw = {
        "run_dir": str(run_dir),
        "data": data,
        "student": {"endpoint": student.url, "model": "student"},
        "reflection": {
            "kind": "openai",
            "model": "reflector",
            "endpoint": reflection.url,
            "input_usd_per_mtok": 3.0,
            "output_usd_per_mtok": 15.0,
        },
        "tune": {"executor": "threads"},
        "phases": phases,
    }
    for key, value in extra.items():
        raw[key] = value
    return config_from_dict(raw)


GEPA = {"name": "phase2", "kind": "gepa", "train": 12, "val": 6, "max_metric_calls": 60}


def test_gepa_accepts_better_instruction_in_tune_trials_side_by_side(
    tmp_path: Path, data: dict[str, str], servers: Any, ray_cluster: None
) -> None:
    _, reflection = servers
    asked_before = reflection.requests
    phase = {**GEPA, "parents_per_iteration": 1, "mutations_per_parent": 3, "max_metric_calls": 40}
    config = make_config(
        tmp_path / "run",
        data,
        servers,
        [phase],
        tune={"executor": "tune", "max_concurrent_trials": 3, "requests_per_trial": 1, "cpus_per_trial": 0.5},
    )
    events: list[dict[str, Any]] = []
    summary = optimize(config, progress=events.append)

    folder = tmp_path / "run" / "phase2"
    candidates = json.loads((folder / "candidates.json").read_text())
    seed, best = candidates["candidates"][0], candidates["candidates"][candidates["best"]]
    assert KEY_PHRASE not in seed["instructions"] and KEY_PHRASE in best["instructions"]
    assert best["val_score"] == 1.0 > seed["val_score"]  # the val match rate rises
    assert best["parents"] == [0] and best["on_pareto_front"]
    assert all(len(c["val_scores"]) == 6 for c in candidates["candidates"])  # every candidate's scores kept
    assert summary["phases"][0]["test"]["rate"] == 1.0 > summary["baseline"]["rate"]
    assert json.loads((folder / "prompt.json").read_text())["system"] == best["instructions"]
    assert reflection.requests > asked_before
    usage = json.loads((folder / "reflection.json").read_text())
    assert usage["usd"] > 0  # priced from the token counts the server reported

    # every candidate evaluation was a Tune trial, and trials ran side by side
    trials = json.loads((folder / "trials.json").read_text())
    from tooldistill.optimize.tune_eval import TrialRecord

    records = [TrialRecord(**t) for t in trials]
    assert len(records) >= 4
    import ray

    # where each trial ran: this one-node cluster's node
    assert {r.node for r in records} == {ray.get_runtime_context().get_node_id()}
    assert max_overlap(records) >= 2
    iterations = [e for e in events if e.get("event") == "iteration"]
    assert iterations and iterations[-1]["metric_calls"] <= 40
    assert {"best_val_score", "pareto_front", "reflection_usd"} <= set(iterations[-1])


class Interrupt(BaseException):
    """Stands for Ctrl-C or a killed process in the middle of a run."""


class StopAt:
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_iteration_end(self, event: Any) -> None:
        if event["iteration"] >= self.iteration:
            raise Interrupt()


def test_interrupted_gepa_run_resumes(tmp_path: Path, data: dict[str, str], servers: Any) -> None:
    student, _ = servers
    # a reflection model that never finds the phrase, so the run goes on for several iterations
    with ReflectionServer(instruction="Answer with tools.") as weak:
        config = make_config(tmp_path / "run", data, servers, [{**GEPA, "max_metric_calls": 90}])
        config = config.model_copy(
            update={"reflection": config.reflection.model_copy(update={"endpoint": weak.url})}
        )
        first: list[dict[str, Any]] = []
        with pytest.raises(Interrupt):
            optimize(config, progress=first.append, callbacks=[StopAt(3)])
        folder = tmp_path / "run" / "phase2"
        assert (folder / "gepa" / "gepa_state.bin").exists() and not (folder / "result.json").exists()
        before = json.loads((folder / "candidates.json").read_text())["candidates"]
        calls_before = [e for e in first if e.get("event") == "iteration"][-1]["metric_calls"]
        usd_before = [e for e in first if e.get("event") == "iteration"][-1]["reflection_usd"]

        requests_before = student.requests
        second: list[dict[str, Any]] = []
        optimize(config, progress=second.append)
    start = next(e for e in second if e.get("event") == "start" and e["phase"] == "phase2")
    assert start["resumed"] is True
    iterations = [e for e in second if e.get("event") == "iteration"]
    # GEPA saved its state at the start of iteration 3, so the run picks up there, not at 1
    assert iterations[0]["iteration"] == 3
    assert iterations[0]["metric_calls"] > calls_before - 20
    assert iterations[0]["reflection_usd"] >= usd_before  # dollars spent before still count
    after = json.loads((folder / "candidates.json").read_text())["candidates"]
    assert [c["instructions"] for c in after[: len(before)]] == [c["instructions"] for c in before]
    # never past the budget; it stops when what is left cannot pay for a parent's minibatch, its
    # child's and one validation (3 + 3 + 6)
    assert 90 - 12 < iterations[-1]["metric_calls"] <= 90
    # the seed's validation pass was not repeated: the resumed run asked less than a fresh one would
    assert student.requests - requests_before < iterations[-1]["metric_calls"] + 9
    assert json.loads((folder / "result.json").read_text())["phase"] == "phase2"


def test_phase1_dspy_bootstraps_demos_and_evaluate_uses_the_artifact(
    tmp_path: Path, data: dict[str, str], servers: Any
) -> None:
    phases = [{"name": "phase1", "kind": "dspy", "train": 12, "max_bootstrapped_demos": 2}]
    config = make_config(tmp_path / "run", data, servers, phases)
    summary = optimize(config)
    baseline, phase1 = summary["baseline"]["rate"], summary["phases"][0]["test"]["rate"]
    assert baseline == pytest.approx(3 / 9, abs=1e-3) and phase1 == pytest.approx(6 / 9, abs=1e-3)

    folder = tmp_path / "run" / "phase1"
    artifact = json.loads((folder / "prompt.json").read_text())
    calls = [m for m in artifact["demos"] if m["role"] == "assistant"]
    assert len(calls) == 2 and all(m["tool_calls"][0]["function"]["name"] == "weather_current" for m in calls)
    # the DSPy save format loads back into the program with its demos
    from tooldistill.optimize.program import StudentProgram

    program = StudentProgram(config.student)
    program.load(str(folder / "program.json"))
    assert len(program.step.demos) == 2 and program.prompt().demos == tuple(artifact["demos"])

    # the phase against the baseline on the same 9 traces: 3 more right, none lost
    versus = summary["phases"][0]["test"]["vs_baseline"]
    assert (versus["n"], versus["gained"] - versus["lost"]) == (9, 3)
    assert versus["difference"] == pytest.approx(3 / 9, abs=1e-3) and versus["ci95"][0] < versus["difference"]

    # a run that is done is skipped, not redone
    again = optimize(config)
    assert again["phases"][0]["test"] == summary["phases"][0]["test"]
    # a result written before the paired comparison gains it when the phase is skipped
    result_file = tmp_path / "run" / "phase1" / "result.json"
    older = json.loads(result_file.read_text())
    del older["test"]["vs_baseline"]
    result_file.write_text(json.dumps(older))
    assert optimize(config)["phases"][0]["test"]["vs_baseline"] == versus
    assert json.loads(result_file.read_text())["test"]["vs_baseline"] == versus

    # `tooldistill evaluate --prompt` sends the demos too
    student, _ = servers
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--dataset",
            data["test"],
            "--endpoint",
            student.url,
            "--model",
            "student",
            "--prompt",
            str(tmp_path / "run" / "best" / "prompt.json"),
            "--out",
            str(out),
            "--mode",
            "chain",
        ],
    )
    assert result.exit_code == 0, result.output
    evaluated = json.loads((out / "summary.json").read_text())
    assert evaluated["modes"]["chain"]["rate"] == pytest.approx(6 / 9, abs=1e-3)


def test_cli_all_phases_default_schedule_shape(tmp_path: Path, data: dict[str, str], servers: Any) -> None:
    student, reflection = servers
    config = tmp_path / "optimize.yaml"
    config.write_text(
        json.dumps(
            {
                "run_dir": str(tmp_path / "run"),
                "data": data,
                "student": {"endpoint": student.url},
                "reflection": {"kind": "openai", "model": "r", "endpoint": reflection.url},
                "tune": {"executor": "threads"},
                "phases": [
                    {"name": "phase1", "kind": "dspy", "train": 12, "max_bootstrapped_demos": 2},
                    {**GEPA, "max_metric_calls": 30},
                    {**GEPA, "name": "phase3", "train": 5, "select": "car", "max_metric_calls": 30},
                ],
            }
        )
    )
    result = CliRunner().invoke(main, ["optimize", "--config", str(config), "--phase", "all"])
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.output and "phase3" in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == ["phase1", "phase2", "phase3"]
    # each phase starts from the previous best: phase 2 and 3 keep phase 1's demos
    demos = json.loads((tmp_path / "run" / "phase1" / "prompt.json").read_text())["demos"]
    for name in ("phase2", "phase3"):
        assert json.loads((tmp_path / "run" / name / "prompt.json").read_text())["demos"] == demos
    assert "Iteration" in (tmp_path / "run" / "phase3" / "gepa" / "run_log.txt").read_text()
    # one phase alone starts from the phase before it
    again = CliRunner().invoke(main, ["optimize", "--config", str(config), "--phase", "3"])
    assert again.exit_code == 0, again.output
    assert "phase3: test match rate" in again.output and "skipped" in again.output


def test_car_selection_takes_the_best_by_quality(data: dict[str, str]) -> None:
    from tooldistill.optimize.run import car_best

    best = car_best(data["train"], 5)
    assert [t.source_id for t in best] == ["w11", "w10", "w9", "w8", "w7"]


def test_bad_input_is_scored_zero_or_a_clear_error(
    tmp_path: Path, data: dict[str, str], servers: Any
) -> None:
    student, _ = servers
    traces = make_traces(3)
    settings = StudentSettings(endpoint=student.url)
    outcomes = run_batch(traces, Prompt("GARBAGE please"), settings)
    assert all(o.score == 0.0 and not o.match and o.reason.startswith("unparseable") for o in outcomes)
    dead = StudentSettings(endpoint="http://127.0.0.1:9/v1", retries=0, timeout_s=2)
    outcomes = run_batch(traces, Prompt("x"), dead)
    assert all(o.score == 0.0 and o.reason.startswith("endpoint error") for o in outcomes)
    # the search scores them 0, but the reported match rate leaves them out of n (not misses)
    dead_summary = summarize(outcomes)
    assert (dead_summary["n"], dead_summary["rate"], dead_summary["errors"]) == (0, None, 3)
    # the reflection model reads the reason as feedback
    adapter = ToolCallAdapter(settings)
    batch = adapter.evaluate(traces, {"instructions": "GARBAGE"}, capture_traces=True)
    records = adapter.make_reflective_dataset({"instructions": "GARBAGE"}, batch, ["instructions"])[
        "instructions"
    ]
    assert (
        "unparseable" in records[0]["Feedback"] and "weather.current(city='Paris0')" in records[0]["Feedback"]
    )

    config = make_config(tmp_path / "run", data, servers, [GEPA])
    config = config.model_copy(update={"student": dead})
    from tooldistill.student import EndpointError

    with pytest.raises(EndpointError, match="cannot reach"):
        optimize(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\nphases: [{name: p, kind: nope}]\n")
    result = CliRunner().invoke(main, ["optimize", "--config", str(bad)])
    assert result.exit_code == 2 and "bad optimize config" in result.output
    with pytest.raises(OptimizeError, match="no phase"):
        config.phase("7")


def test_sweep_runs_optimize_trials_and_tabulates(
    tmp_path: Path, data: dict[str, str], servers: Any, ray_cluster: None
) -> None:
    student, reflection = servers
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        json.dumps(
            {
                "optimize": {
                    "run_dir": "unused",
                    "data": data,
                    "student": {"endpoint": student.url},
                    "reflection": {"kind": "openai", "model": "r", "endpoint": reflection.url},
                    "phases": [{"name": "phase1", "kind": "dspy", "train": 12}],
                },
                "run_dir": str(tmp_path / "sweep"),
                "space": {"phases.*.max_bootstrapped_demos": [0, 2]},
                "resources_per_trial": {"cpu": 0.5},
            }
        )
    )
    result = CliRunner().invoke(main, ["sweep", "--config", str(sweep)])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    by_demos = {r["params"]["phases.*.max_bootstrapped_demos"]: r for r in rows}
    assert by_demos[2]["test_rate"] == pytest.approx(6 / 9, abs=1e-3)
    assert by_demos[0]["test_rate"] == pytest.approx(3 / 9, abs=1e-3)
    assert rows[0]["params"]["phases.*.max_bootstrapped_demos"] == 2  # best first
    assert "phase1" in result.output


def test_tune_trials_get_the_student_key_the_driver_read_and_store_it_nowhere(
    tmp_path: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tooldistill.optimize.tune_eval import TuneEvaluator

    key = "td-student-key-only-the-driver-has-42"
    # set after the session's Ray workers started: they cannot see it in their environment
    monkeypatch.setenv("TD_TUNE_STUDENT_KEY", key)
    traces = make_traces(4)
    with StudentServer(api_key=key) as student:
        settings = StudentSettings(endpoint=student.url, api_key_env="TD_TUNE_STUDENT_KEY", retries=0)
        with TuneEvaluator(
            settings, str(tmp_path / "tune"), max_concurrent_trials=2, warm_start=False
        ) as tune:
            [outcomes] = tune.evaluate([(Prompt(KEY_PHRASE), traces)])
        refused = run_batch(traces, Prompt(KEY_PHRASE), settings, api_key="wrong")
    assert [o.score for o in outcomes] == [1.0] * 4, [o.reason for o in outcomes]
    assert all("401" in o.reason for o in refused)  # the server does check the key
    for path in (tmp_path / "tune").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_reflection_text_is_redacted_before_it_becomes_an_instruction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GEPA's new instructions come from the reflection model: a secret it repeats from a trace (over
    real HTTP, the local Anthropic server) is replaced, and counted, before anything keeps it."""
    from tooldistill.optimize.reflection import ReflectionLM, ReflectionSettings
    from tooldistill.testing.anthropic_server import AnthropicServer

    secret = "AKIA" + "Q3EGRTZ7ZBXYMNOP"

    class Leaky:
        def answer(self, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
            return [{"type": "text", "text": f"Call the tool; the user's key is {secret}."}]

    monkeypatch.setenv("TD_TEST_REFLECTION_KEY", "test-key")
    with AnthropicServer(Leaky()) as server:
        lm = ReflectionLM(
            ReflectionSettings(endpoint=server.url, api_key_env="TD_TEST_REFLECTION_KEY", retries=0)
        )
        text = lm("Improve the instruction.")
    assert secret not in text and "[REDACTED:" in text and text.startswith("Call the tool")
    assert sum(lm.usage()["secrets_redacted"].values()) == 1


def test_an_answer_on_file_for_the_same_prompt_and_student_is_not_asked_again(tmp_path: Path) -> None:
    """A phase whose prompt and student are those of an earlier evaluation (GEPA keeping its seed)
    takes that evaluation's answers: with the student gone, they still come back, copied into the
    phase's own journal; a different prompt is asked (and finds no student)."""
    traces = make_traces(4, 300)
    earlier = tmp_path / "baseline.answers.jsonl"
    with StudentServer() as server:
        settings = StudentSettings(endpoint=server.url, model="student", retries=0, timeout_s=5)
        first, _ = evaluate_prompt(Prompt("Call the tool."), traces, settings, earlier)
    assert first["errors"] == 0 and first["n"] == 4
    journal = tmp_path / "phase2" / "test.answers.jsonl"
    again, _ = evaluate_prompt(Prompt("Call the tool."), traces, settings, journal, [earlier])
    assert again == first
    assert len(journal.read_text().splitlines()) == 4  # the phase's journal holds all its answers
    other, _ = evaluate_prompt(Prompt("Another prompt."), traces, settings, tmp_path / "x.jsonl", [earlier])
    assert other["errors"] == 4  # not taken from the other prompt's answers: asked, and no server


@pytest.mark.parametrize("start", ["all right", "weak reflection", "better reflection"])
def test_gepa_never_spends_more_metric_calls_than_its_budget(
    tmp_path: Path, data: dict[str, str], start: str
) -> None:
    """GEPA checks ``max_metric_calls`` only between iterations, and one iteration of P x N
    proposals scores P x N parent minibatches, the children on them, and the validation set for each
    accepted child.  ``make demo`` (2 x 2, minibatch 3, val 10, budget 40) spent 46: every parent
    minibatch was answered right, so each iteration cost 12 calls and the third began at 34.  Here
    the same with a seed that gets everything right (6 + 3 x 12 = 42 before), a reflection model
    whose children are no better (rejected after their minibatches), and one whose children are
    accepted and validated."""
    instruction = {"weak reflection": "Answer with tools."}.get(start, BETTER_INSTRUCTION)
    with StudentServer() as student, ReflectionServer(instruction=instruction) as reflection:
        phase = {**GEPA, "max_metric_calls": 40, "parents_per_iteration": 2, "mutations_per_parent": 2}
        seed = {"seed_prompt": {"system": KEY_PHRASE, "demos": []}} if start == "all right" else {}
        config = make_config(tmp_path / "run", data, (student, reflection), [phase], **seed)
        events: list[dict[str, Any]] = []
        optimize(config, progress=events.append)
        asked = student.requests
    iterations = [e for e in events if e.get("event") == "iteration"]
    assert iterations and all(e["metric_calls"] <= 40 for e in iterations)
    progress = json.loads((tmp_path / "run" / "phase2" / "progress.json").read_text())
    assert progress["metric_calls"] <= progress["max_metric_calls"] == 40
    # nor did the student answer more: the baseline's 9 test traces, GEPA's 40, the phase's 9
    assert asked <= 9 + 40 + 9
    candidates = json.loads((tmp_path / "run" / "phase2" / "candidates.json").read_text())["candidates"]
    if start == "better reflection":  # the budget left room to validate the better child
        assert any(KEY_PHRASE in c["instructions"] and c["val_score"] == 1.0 for c in candidates[1:])
    # the test evaluations reported their progress on the way
    running = [e for e in events if e.get("event") == "evaluating"]
    assert {e["phase"] for e in running} == {"baseline", "phase2"}


def test_an_evaluation_reports_done_of_total_and_the_console_an_eta(tmp_path: Path) -> None:
    """A long evaluation (the baseline on a real test split ran 22 minutes) says how far it is: the
    progress callback gets ``evaluating`` events with done/total, and the run's console shows them
    with the rate and the time left, at most every ``every_s`` seconds."""
    traces = make_traces(30, 500)
    events: list[dict[str, Any]] = []
    with StudentServer(latency_s=0.01) as server:
        settings = StudentSettings(endpoint=server.url, model="student", concurrency=2, retries=0)
        summary, _ = evaluate_prompt(
            Prompt("Call the tool."),
            traces,
            settings,
            tmp_path / "a.jsonl",
            progress=events.append,
            name="baseline",
        )
    assert summary["n"] == 30
    assert all(e["event"] == "evaluating" and e["total"] == 30 for e in events)
    done = [e["done"] for e in events]
    assert done[0] == 0 and done[-1] == 30 and done == sorted(done) and len(done) >= 10
    assert all(e["eta_s"] is not None and e["per_s"] > 0 for e in events[1:])

    lines: list[str] = []
    show = optimize_progress(lines.append, lambda _: None, every_s=0)
    for event in events:
        show(event)
    assert lines[0].startswith(f"  baseline: test answers {done[1]}/30 (")
    assert "/s, ETA " in lines[0] and lines[-1].startswith("  baseline: test answers 30/30 in ")
    quiet: list[str] = []
    show = optimize_progress(quiet.append, lambda _: None, every_s=3600)
    for event in events:
        show(event)
    assert quiet == []  # a short evaluation prints nothing of its own; its result line follows
    slow = evaluation_line({"phase": "baseline", "done": 3, "total": 115, "per_s": 0.02, "eta_s": 5600})
    assert slow == "  baseline: test answers 3/115 (3%), 1.2/min, ETA 93 min 20 s"  # not "0.0/s"
    # answers on file are not asked again, and the events say so at once
    again: list[dict[str, Any]] = []
    evaluate_prompt(Prompt("Call the tool."), traces, settings, tmp_path / "a.jsonl", progress=again.append)
    assert [(e["done"], e["total"]) for e in again] == [(30, 30)]
