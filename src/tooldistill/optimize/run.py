"""``tooldistill optimize``: the config, the phase schedule, resume, the baseline and export.

The default schedule mirrors the reference write-up: phase 1 bootstraps few-shot demonstrations
with DSPy from 50 train examples, phase 2 runs GEPA on 50 train examples, phase 3 runs GEPA on the
15 best CaR-curated examples (the train traces ranked by CaR's ``quality`` column).  Each phase
starts from the previous phase's prompt and is measured on the held-out test split (match rate
with a Wilson interval), so the table of phases is comparable row by row.

What a phase does is its kind's (``optimize.phases``); the rest is the same for every kind::

    RUN/config.json, RUN/baseline.json   the resolved config; the starting prompt on the test split
    RUN/phaseN/key.json                  the phase's inputs (config, start prompt, student, data)
    RUN/phaseN/prompt.json               {"system": ..., "demos": [chat messages], "student": ...}
    RUN/phaseN/program.json              the prompt in DSPy's save format
    RUN/phaseN/test.json                 the test-split evaluation of the phase's prompt
    RUN/phaseN/result.json               written last: the phase is done
    RUN/best/prompt.json, RUN/best/program.json, RUN/summary.json

Resume: a phase whose ``result.json`` has the same key is skipped (its kind's ``on_skip`` redoes
what the phases after it need); other inputs start it over; a kind resumes its own work (GEPA from
its saved state, a training from its newest checkpoint); a killed test evaluation resumes from its
journal of answers.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tooldistill import store
from tooldistill.layout import OptimizeLayout, PhaseLayout
from tooldistill.match.stats import paired_difference
from tooldistill.optimize.config import (  # noqa: F401  (re-exported: the config's models)
    OPTIONAL_DATA,
    DataSettings,
    OptimizeConfig,
    OptimizeError,
    PhaseConfig,
    TuneSettings,
    apply_override,
    check_phase_names,
    config_from_dict,
    data_read_by,
    default_phases,
    load_config,
)
from tooldistill.optimize.phases import PhaseContext, PhaseResources, phase_kind
from tooldistill.optimize.phases.base import (  # noqa: F401  (car_best, phase_train: re-exported)
    Progress,
    car_best,
    phase_train,
    read_json,
    read_traces,
    write_json,
)
from tooldistill.optimize.phases.evaluation import evaluate_prompt
from tooldistill.optimize.phases.finetune import fine_tuned_note, finetune_reserve  # noqa: F401
from tooldistill.optimize.phases.gepa import (  # noqa: F401  (make_evaluator, run_gepa_phase: re-exported)
    CandidateEvaluators,
    make_evaluator,
    run_gepa_phase,
)
from tooldistill.optimize.student import Prompt, StudentSettings, check_endpoint
from tooldistill.schema import content_hash
from tooldistill.stage import published_fingerprint

# ---------------------------------------------------------------------------------------------
# run folder


def _layout(config: OptimizeConfig) -> OptimizeLayout:
    """The optimize folder's paths, its root spelled as ``Path(run_dir)`` spells it."""
    return OptimizeLayout(str(Path(config.run_dir)))


def read_prompt(path: str) -> Prompt:
    try:
        value = json.loads(store.read_file(path).decode("utf-8"))
    except (store.StoreError, ValueError) as error:
        raise OptimizeError(f"cannot read prompt artifact {path}: {error}") from error
    if not isinstance(value, dict):
        raise OptimizeError(f"prompt artifact {path} is not a JSON object")
    return Prompt.from_json(value)


def seed_prompt(config: OptimizeConfig) -> Prompt:
    from tooldistill.optimize.program import DEFAULT_INSTRUCTIONS

    if config.seed_prompt is None:
        return Prompt(DEFAULT_INSTRUCTIONS)
    if isinstance(config.seed_prompt, str):
        return read_prompt(config.seed_prompt)
    return Prompt.from_json(config.seed_prompt)


def start_prompt(config: OptimizeConfig, first_phase: str | None = None) -> Prompt:
    """The prompt a run (or a run of ``first_phase`` alone) starts from."""
    names = [p.name for p in config.phases]
    index = names.index(first_phase) if first_phase else 0
    if index == 0:
        return seed_prompt(config)
    # a later phase alone starts from the phase before it, when that phase has run
    before = _layout(config).phase(names[index - 1]).prompt
    if not Path(before).exists():
        raise OptimizeError(f"{names[index]} starts from {names[index - 1]}, which has not run")
    return read_prompt(before)


# ---------------------------------------------------------------------------------------------
# evaluation


def ensure_baseline(
    config: OptimizeConfig, start: Prompt, progress: Progress | None = None
) -> tuple[dict[str, Any], bool]:
    """The test-split evaluation of ``start`` in ``RUN/baseline.json``; True when it was there already."""
    layout = _layout(config)
    key = content_hash(
        {"prompt": start.to_json(), "student": config.student.model_dump(mode="json"),
         "data": config.data.model_dump(mode="json", exclude=set(OPTIONAL_DATA))},
        16,
    )  # fmt: skip
    baseline = read_json(layout.baseline)
    if baseline is not None and baseline.get("key") == key:
        return baseline, True
    test = read_traces(config.data.test)[: config.data.test_limit]
    summary, outcomes = evaluate_prompt(
        start, test, config.student, Path(layout.baseline_answers), progress=progress, name="baseline"
    )
    if outcomes and summary["errors"] == len(outcomes):
        raise OptimizeError(
            f"the student at {config.student.endpoint} answered none of {len(outcomes)} test requests "
            f"(first: {outcomes[0].reason})"
        )
    baseline = {
        # endpoint errors are asked again next time instead of standing as wrong answers
        "key": published_fingerprint(key, complete=not summary["errors"]),
        "prompt": start.to_json(),
        "test": summary,
        "outcomes": [o.to_json() for o in outcomes],
    }
    write_json(layout.baseline, baseline)
    return baseline, False


def versus_baseline(layout: OptimizeLayout, outcomes: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A phase's test answers against the baseline's on the same traces: the paired difference,
    its interval and McNemar's p (``match.stats.paired_difference``); None without a baseline."""
    baseline = read_json(layout.baseline)
    if not baseline or not baseline.get("outcomes") or not outcomes:
        return None
    return paired_difference(_verdicts(baseline["outcomes"]), _verdicts(outcomes))


def phase_versus_baseline(layout: OptimizeLayout, phase: str) -> dict[str, Any] | None:
    """``versus_baseline`` of a finished phase, from the answers in its ``test.json`` (a result
    written before the comparison existed); None when they are not there."""
    finished = read_json(layout.phase(phase).test)
    return versus_baseline(layout, (finished or {}).get("outcomes") or [])


def _verdicts(outcomes: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """Trace id -> matched, for the answers a match rate counts (no endpoint error, not skipped)."""
    return {
        str(o["trace_id"]): bool(o.get("match"))
        for o in outcomes
        if not o.get("error") and not o.get("skipped")
    }


# ---------------------------------------------------------------------------------------------
# phases


def run_phase(
    config: OptimizeConfig,
    phase: PhaseConfig,
    start: Prompt,
    progress: Progress,
    callbacks: Sequence[Any] = (),
    evaluators: CandidateEvaluators | None = None,
    host: Any = None,
) -> dict[str, Any]:
    """One phase from ``start``; skipped when its result is there for the same config and start.

    A phase that changes the student (a finetune phase) records ``student`` in its result: the
    settings of the new student, which the phases after it use."""
    kind = phase_kind(phase.kind)
    paths = _layout(config).phase(phase.name)
    folder = Path(paths.root)
    resources = PhaseResources(evaluators=evaluators, callbacks=callbacks, host=host)
    ctx = PhaseContext(config, phase, start, folder, progress, resources)
    key = content_hash(
        {"phase": phase.config_hash(), "start": start.to_json(), "student": config.student.model_dump(mode="json"),
         # the run's embeddings and the pool are inputs only of the phases that read them
         "data": config.data.model_dump(mode="json", exclude=set(OPTIONAL_DATA) - data_read_by(phase))},
        16,
    )  # fmt: skip
    done = read_json(paths.result)
    if done and done.get("key") == key:
        if isinstance(done.get("test"), dict) and "vs_baseline" not in done["test"]:
            # a result from before the paired comparison: it gains one, kept for the report
            versus = phase_versus_baseline(_layout(config), phase.name)
            if versus is not None:
                done["test"]["vs_baseline"] = versus
                write_json(paths.result, done)
        student = kind.on_skip(ctx, done)
        if student is not None:
            done["student"] = student.model_dump(mode="json")
        progress({"phase": phase.name, "event": "skipped", "test": done.get("test")})
        return dict(done)
    marker = read_json(paths.key)
    if done or (marker and marker.get("key") != key):  # a phase with other inputs: start it over
        for file in paths.restart_files:
            Path(file).unlink(missing_ok=True)
        for subfolder in paths.restart_folders:
            shutil.rmtree(subfolder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(paths.key, {"key": key})
    started = time.time()
    output = kind.run(ctx)
    prompt, student = output.prompt, output.student or config.student
    write_json(paths.prompt, {**prompt.to_json(), **_student_note(folder, student)})
    _export_program(config, prompt, folder)
    test = read_traces(config.data.test)[: config.data.test_limit]
    layout = _layout(config)
    earlier = [Path(layout.baseline_answers)] + [
        Path(layout.phase(p.name).test_answers) for p in config.phases if p.name != phase.name
    ]
    summary, outcomes = evaluate_prompt(
        prompt, test, student, Path(paths.test_answers), earlier, progress, phase.name
    )
    answers = [o.to_json() for o in outcomes]
    write_json(paths.test, {"summary": summary, "outcomes": answers})
    versus = versus_baseline(layout, answers)
    if versus is not None:
        summary["vs_baseline"] = versus
    result = {
        **({"student": output.student.model_dump(mode="json")} if output.student is not None else {}),
        **output.record,
        "phase": phase.name,
        "kind": phase.kind,
        "key": key,
        "train": len(ctx.train),  # what was there, not the configured cap
        "test": summary,
        "demo_messages": len(prompt.demos),
        "system_chars": len(prompt.system),
        "elapsed_s": round(time.time() - started, 1),
        "progress": read_json(paths.progress),
    }
    write_json(paths.result, result)
    progress({"phase": phase.name, "event": "done", "test": summary})
    return result


# ---------------------------------------------------------------------------------------------
# export


def _student_note(folder: Path, student: StudentSettings) -> dict[str, Any]:
    """In an exported prompt: which student it was measured with (a fine-tuned one names its base,
    adapter and checksum), so any OpenAI-compatible client reaches the same student."""
    note: dict[str, Any] = {"model": student.model}
    if student.context.window is not None:
        # how long requests were cut: a client that serves this prompt fits requests the same way
        # (``tooldistill.context.Fitter``), so the student is served what it was measured on
        policy = student.context.model_dump(mode="json")
        if policy.get("tokenizer"):
            policy["tokenizer"] = "the student's own (its model folder)"
        note["context"] = policy
    note.update(fine_tuned_note(folder.parent, student.model))
    return {"student": note}


def _export_program(config: OptimizeConfig, prompt: Prompt, folder: Path) -> None:
    """The prompt in DSPy's save format too (a DSPy phase already wrote its compiled program)."""
    path = PhaseLayout(str(folder)).program
    if Path(path).exists():
        return
    from tooldistill.optimize.program import StudentProgram

    program = StudentProgram.from_prompt(config.student, prompt)
    program.save(path)
    # the demos as chat messages are in prompt.json; DSPy's format holds the instructions


def _export_best(layout: OptimizeLayout, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Copy the best phase's prompt and program to ``RUN/best``; returns that phase's result."""
    best = max(results, key=lambda r: r["test"].get("rate") or 0.0)
    best_phase = layout.phase(best["phase"])
    Path(layout.best).mkdir(exist_ok=True)
    for source, target in (
        (best_phase.prompt, layout.best_prompt),
        (best_phase.program, layout.best_program),
    ):
        if Path(source).exists():
            Path(target).write_bytes(Path(source).read_bytes())
    return best


# ---------------------------------------------------------------------------------------------
# the schedule


def optimize(
    config: OptimizeConfig,
    phase: str = "all",
    progress: Progress | None = None,
    callbacks: Sequence[Any] = (),
    tune_callbacks: Sequence[Any] = (),
    host: Any = None,
) -> dict[str, Any]:
    """Run the selected phases in order, each from the previous one's prompt; returns the summary.

    ``host`` serves the student (``finetune.phase.StudentHost``): a finetune phase needs it."""
    report = progress or (lambda _: None)
    selected = config.phase(phase)
    for item in selected:
        if "pool" in data_read_by(item) and config.data.pool is None:
            raise OptimizeError(
                f"{item.name}: source: pool needs the run's deduplicated traces (data.pool), which "
                "tooldistill run gives; a standalone optimize config names them"
            )
        phase_kind(item.kind).check(config, item)
    check_endpoint(config.student)
    run_dir = Path(config.run_dir)
    layout = _layout(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(layout.config, config.model_dump(mode="json"))
    start = start_prompt(config, selected[0].name)
    baseline, _ = ensure_baseline(config, start, report)
    report({"phase": "baseline", "event": "done", "test": baseline["test"]})
    results = []
    evaluators = CandidateEvaluators(config, tune_callbacks)
    current = config
    try:
        for item in selected:
            if phase_kind(item.kind).exclusive_cpus:
                evaluators.close()  # its warm trial actors hold CPUs the phase needs
            result = run_phase(current, item, start, report, callbacks, evaluators, host)
            results.append(result)
            start = read_prompt(layout.phase(item.name).prompt)
            if "student" in result:  # the phases after it ask the new student
                current = _with_student(current, StudentSettings.model_validate(result["student"]))
                evaluators.close()  # its trial actors hold the old student's settings
                evaluators = CandidateEvaluators(current, tune_callbacks)
    finally:
        evaluators.close()
    best = _export_best(layout, results)
    summary = {
        "run_dir": str(run_dir),
        "baseline": baseline["test"],
        "phases": [
            {
                **{k: r[k] for k in ("phase", "kind", "train", "test", "demo_messages", "elapsed_s")},
                **{k: r[k] for k in phase_kind(r["kind"]).summary_fields if k in r},
            }
            for r in results
        ],
        "best_phase": best["phase"],
        "artifact": layout.best_prompt,
    }
    write_json(layout.summary, summary)
    return summary


def _with_student(config: OptimizeConfig, student: StudentSettings) -> OptimizeConfig:
    """``config`` asking ``student``; a student that reflected on itself (no Claude key) reflects as
    the new one."""
    update: dict[str, Any] = {"student": student}
    reflection = config.reflection
    if (reflection.kind, reflection.endpoint, reflection.model) == (
        "openai",
        config.student.endpoint,
        config.student.model,
    ):
        update["reflection"] = reflection.model_copy(
            update={"endpoint": student.endpoint, "model": student.model}
        )
    return config.model_copy(update=update)
