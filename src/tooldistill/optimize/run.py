"""``tooldistill optimize``: the phase schedule, the run folder, resume and export.

The default schedule mirrors the reference write-up: phase 1 bootstraps few-shot demonstrations
with DSPy from 50 train examples, phase 2 runs GEPA on 50 train examples, phase 3 runs GEPA on the
15 best CaR-curated examples (the train traces ranked by CaR's ``quality`` column).  Each phase
starts from the previous phase's best prompt and is measured on the held-out test split (match
rate with a Wilson interval), so the table of phases is comparable row by row.

Run folder (local path; GEPA keeps its state as files)::

    RUN/config.json              the resolved config
    RUN/phase1/program.json      the DSPy program (``dspy.Module.save`` format)
    RUN/phaseN/prompt.json       the plain artifact {"system": ..., "demos": [chat messages]}
    RUN/tune/                    Ray Tune's experiment: every candidate evaluation of every GEPA phase
                                 (one evaluator per run, so the trial actors stay warm between phases)
    RUN/phaseN/trials.json       the phase's Tune trials: candidate, examples, start and end times
    RUN/phaseN/gepa/             GEPA's own state (gepa_state.bin, run_log.txt), rewritten every iteration
    RUN/phaseN/candidates.json   every candidate: instructions, parents, val scores; the Pareto front
    RUN/phaseN/progress.json     budget used, best so far, front size (rewritten every iteration)
    RUN/phaseN/test.json         the test-split evaluation of the phase's best prompt
    RUN/phaseN/result.json       written last: the phase is done
    RUN/best/prompt.json, RUN/best/program.json, RUN/summary.json

Resume: a phase with ``result.json`` whose config hash is unchanged is skipped; a GEPA phase that
was interrupted finds ``gepa/gepa_state.bin`` and continues from its last iteration (GEPA reloads
the candidates, their scores, the Pareto front and the metric calls spent; the reflection dollars
come back through the adapter state).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tooldistill import store
from tooldistill.layout import OptimizeLayout, PhaseLayout
from tooldistill.optimize.reflection import ReflectionSettings
from tooldistill.optimize.student import (
    Outcome,
    Prompt,
    StudentSettings,
    check_endpoint,
    run_batch,
    summarize,
)
from tooldistill.schema import Trace, content_hash
from tooldistill.stage import published_fingerprint

Progress = Callable[[dict[str, Any]], None]


class OptimizeError(ValueError):
    """The optimize config or its inputs cannot be used."""


class TuneSettings(BaseModel):
    """How GEPA's candidate evaluations run as Ray Tune trials."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``tune``: one Ray Tune trial per (candidate, examples); ``threads``: a thread pool here.
    executor: Literal["tune", "threads"] = "tune"
    max_concurrent_trials: int = Field(default=8, ge=1)
    requests_per_trial: int = Field(default=4, ge=1)
    #: Ray Tune cannot place a trial that asks for nothing: use a small share (e.g. 0.01), not 0.
    cpus_per_trial: float = Field(default=0.25, gt=0)
    resources_per_trial: dict[str, float] | None = None
    warm_start: bool = True
    ray_address: str | None = None


class PhaseConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["dspy", "gepa", "finetune"]
    #: Train examples: the first N of the train split, the N best by CaR quality (``car``), or N
    #: spread over the whole split (``sample``: ordered by trace id, a content hash, so the choice
    #: is fixed but not tied to the split's cluster order).
    train: int = Field(default=50, ge=1)
    select: Literal["first", "car", "sample"] = "first"
    #: Validation examples GEPA scores candidates on (also random search's / MIPRO's valset).
    val: int = Field(default=50, ge=1)
    # DSPy
    optimizer: Literal["bootstrap", "random_search", "mipro"] = "bootstrap"
    max_bootstrapped_demos: int = Field(default=4, ge=0)
    max_labeled_demos: int = Field(default=0, ge=0)
    num_candidate_programs: int = Field(default=4, ge=1)
    num_threads: int = Field(default=8, ge=1)
    # GEPA
    max_metric_calls: int = Field(default=500, ge=1)
    max_reflection_usd: float | None = Field(default=5.0, ge=0)
    minibatch_size: int = Field(default=3, ge=1)
    #: PxNSampling: P parents, N mutations each = P*N candidates per iteration, evaluated side by side.
    parents_per_iteration: int = Field(default=2, ge=1)
    mutations_per_parent: int = Field(default=4, ge=1)
    candidate_selection: Literal["pareto", "current_best", "epsilon_greedy", "top_k_pareto"] = "pareto"
    use_merge: bool = False
    seed: int = 0
    #: finetune: which examples and how to train (``finetune.phase.FinetuneOptions``).
    finetune: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _finetune(self) -> PhaseConfig:
        if self.finetune is not None:
            if self.kind != "finetune":
                raise ValueError(f"phase {self.name}: a 'finetune' section belongs to a finetune phase")
            from tooldistill.finetune.phase import FinetuneOptions

            FinetuneOptions.model_validate(self.finetune)  # its errors at load, not after an hour
        return self

    def finetune_options(self) -> Any:
        from tooldistill.finetune.phase import FinetuneOptions

        return FinetuneOptions.model_validate(self.finetune or {})

    def config_hash(self) -> str:
        return content_hash(self.model_dump(mode="json"), 16)


def default_phases() -> list[PhaseConfig]:
    return [
        PhaseConfig(name="phase1", kind="dspy", train=50, optimizer="bootstrap"),
        PhaseConfig(name="phase2", kind="gepa", train=50),
        PhaseConfig(name="phase3", kind="gepa", train=15, select="car"),
    ]


def check_phase_names(phases: Sequence[PhaseConfig]) -> None:
    """A ``ValueError`` unless every phase has a name of its own."""
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise ValueError(f"phase names must be unique: {names}")


class DataSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    train: str
    val: str
    test: str
    #: CaR-curated traces to rank for ``select: car`` (default: the train split, which carries CaR's
    #: ``quality`` column when it was split from ``curate car``'s output).
    curated: str | None = None
    #: Cap on the test examples (None: all).
    test_limit: int | None = None


class OptimizeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_dir: str
    data: DataSettings
    student: StudentSettings = Field(default_factory=StudentSettings)
    reflection: ReflectionSettings = Field(default_factory=ReflectionSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    #: The starting prompt: {"system": ..., "demos": [...]}, or a path to a prompt artifact.
    seed_prompt: dict[str, Any] | str | None = None
    phases: list[PhaseConfig] = Field(default_factory=default_phases)

    @model_validator(mode="after")
    def _unique(self) -> OptimizeConfig:
        check_phase_names(self.phases)
        return self

    def phase(self, selector: str) -> list[PhaseConfig]:
        """``all``, a phase name, or its 1-based number."""
        if selector == "all":
            return list(self.phases)
        for number, phase in enumerate(self.phases, start=1):
            if selector in (phase.name, str(number)):
                return [phase]
        raise OptimizeError(f"no phase {selector!r}; phases: {', '.join(p.name for p in self.phases)}")


def load_config(path: str, overrides: dict[str, Any] | None = None) -> OptimizeConfig:
    import yaml

    try:
        raw = yaml.safe_load(store.read_file(path).decode("utf-8")) or {}
    except (store.StoreError, yaml.YAMLError) as error:
        raise OptimizeError(f"cannot read optimize config {path}: {error}") from error
    return config_from_dict(raw, overrides)


def config_from_dict(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> OptimizeConfig:
    raw = json.loads(json.dumps(raw))
    for dotted, value in (overrides or {}).items():
        apply_override(raw, dotted, value)
    try:
        return OptimizeConfig.model_validate(raw)
    except ValueError as error:
        raise OptimizeError(f"bad optimize config: {error}") from error


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a config dict; ``phases.*.x`` (or ``phases.phase2.x``) reaches into phases."""
    parts = dotted.split(".")
    if parts[0] == "phases" and len(parts) >= 3:
        phases = raw.setdefault("phases", [p.model_dump() for p in default_phases()])
        for phase in phases:
            if parts[1] in ("*", phase.get("name")):
                phase[parts[2]] = value
        return
    node = raw
    for key in parts[:-1]:
        node = node.setdefault(key, {})
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# data


def _traces(uri: str) -> list[Trace]:
    try:
        return store.Dataset.open(uri).to_traces()
    except store.StoreError as error:
        raise OptimizeError(f"cannot open dataset {uri}: {error}") from error


def car_best(uri: str, n: int) -> list[Trace]:
    """The ``n`` traces with the highest CaR ``quality`` (ties: smaller id); the first ``n`` when the
    dataset has no quality column."""
    dataset = store.Dataset.open(uri)
    traces = dataset.to_traces()
    table = dataset.to_arrow()
    if "quality" not in table.column_names:
        return traces[:n]
    quality = dict(zip(table.column("id").to_pylist(), table.column("quality").to_pylist(), strict=True))
    ranked = sorted(traces, key=lambda t: (-(quality.get(t.id) or 0.0), t.id))
    return ranked[:n]


def phase_train(config: OptimizeConfig, phase: PhaseConfig) -> list[Trace]:
    if phase.select == "car":
        return car_best(config.data.curated or config.data.train, phase.train)
    traces = _traces(config.data.train)
    if phase.select == "sample":
        return sorted(traces, key=lambda t: t.id)[: phase.train]
    return traces[: phase.train]


# ---------------------------------------------------------------------------------------------
# run folder


def _layout(config: OptimizeConfig) -> OptimizeLayout:
    """The optimize folder's paths, its root spelled as ``Path(run_dir)`` spells it."""
    return OptimizeLayout(str(Path(config.run_dir)))


def _write(file: str | Path, value: Any) -> None:
    path = Path(file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


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


def evaluate_prompt(
    prompt: Prompt,
    traces: Sequence[Trace],
    settings: StudentSettings,
    journal: Path | None = None,
    earlier: Sequence[Path] = (),
) -> tuple[dict[str, Any], list[Outcome]]:
    """The student's answers to ``traces`` with ``prompt``, judged; with ``journal``, each finished
    answer is appended there as it comes in, and the answers already there (same prompt and
    student) are taken instead of asked again, so an evaluation killed part way resumes.

    ``earlier`` names other journals (the baseline's, earlier phases'): an answer found there for
    the same prompt and student (a GEPA phase whose best candidate is the prompt it started from)
    is copied into ``journal`` instead of asked again."""
    outcomes = (
        run_batch(traces, prompt, settings)
        if journal is None
        else _journaled(prompt, traces, settings, journal, earlier)
    )
    return summarize(outcomes), outcomes


def _journal_entries(journal: Path, key: str) -> dict[str, Outcome]:
    """The answers in ``journal`` asked under ``key``, by trace id."""
    done: dict[str, Outcome] = {}
    if journal.exists():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                if entry.get("key") == key:
                    outcome = Outcome.from_json(entry["outcome"])
                    done[outcome.trace_id] = outcome
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # the line a kill cut short
    return done


def _journaled(
    prompt: Prompt,
    traces: Sequence[Trace],
    settings: StudentSettings,
    journal: Path,
    earlier: Sequence[Path] = (),
) -> list[Outcome]:
    import threading

    key = content_hash({"prompt": prompt.to_json(), "student": settings.model_dump(mode="json")}, 16)
    done = _journal_entries(journal, key)
    wanted = {t.id for t in traces}
    copied: dict[str, Outcome] = {}
    for other in earlier:
        if other == journal:
            continue
        for trace_id, outcome in _journal_entries(other, key).items():
            if trace_id in wanted and trace_id not in done and trace_id not in copied:
                copied[trace_id] = outcome
    if copied:  # this journal holds every answer of its evaluation, wherever it was asked
        journal.parent.mkdir(parents=True, exist_ok=True)
        with journal.open("a", encoding="utf-8") as handle:
            for outcome in copied.values():
                handle.write(
                    json.dumps({"key": key, "outcome": outcome.to_json()}, ensure_ascii=False) + "\n"
                )
        done.update(copied)
    todo = [t for t in traces if t.id not in done]
    if not todo:
        return [done[t.id] for t in traces]
    journal.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    with journal.open("a", encoding="utf-8") as handle:

        def keep(outcome: Outcome) -> None:
            if outcome.error is not None:  # an endpoint error is asked again, never kept
                return
            line = json.dumps({"key": key, "outcome": outcome.to_json()}, ensure_ascii=False)
            with lock:
                handle.write(line + "\n")
                handle.flush()

        fresh = run_batch(todo, prompt, settings, on_outcome=keep)
    answers = {**done, **{o.trace_id: o for o in fresh}}
    return [answers[t.id] for t in traces]


# ---------------------------------------------------------------------------------------------
# phases


def run_dspy_phase(
    config: OptimizeConfig, phase: PhaseConfig, start: Prompt, folder: Path, progress: Progress
) -> Prompt:
    """Phase 1: DSPy bootstraps demos (and MIPROv2 also proposes instructions)."""
    import dspy

    from tooldistill.optimize.program import StudentProgram, example_of, match_metric, student_lm

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    train = [example_of(t) for t in phase_train(config, phase)]
    val = [example_of(t) for t in _traces(config.data.val)[: phase.val]]
    student = StudentProgram.from_prompt(config.student, start)
    start_demos = list(start.demos)
    progress({"phase": phase.name, "event": "start", "optimizer": phase.optimizer, "train": len(train)})
    with dspy.context(lm=student_lm(config.student)):
        optimizer: Any
        if phase.optimizer == "bootstrap":
            optimizer = dspy.BootstrapFewShot(
                metric=match_metric,
                max_bootstrapped_demos=phase.max_bootstrapped_demos,
                max_labeled_demos=phase.max_labeled_demos,
                max_rounds=1,
            )
            compiled = optimizer.compile(student, trainset=train)
        elif phase.optimizer == "random_search":
            optimizer = dspy.BootstrapFewShotWithRandomSearch(
                metric=match_metric,
                max_bootstrapped_demos=phase.max_bootstrapped_demos,
                max_labeled_demos=phase.max_labeled_demos,
                num_candidate_programs=phase.num_candidate_programs,
                num_threads=phase.num_threads,
            )
            compiled = optimizer.compile(student, trainset=train, valset=val)
        else:
            from tooldistill.optimize.reflection import ReflectionLM

            if config.reflection.kind != "openai":
                prompt_model = dspy.LM(f"anthropic/{config.reflection.model}", cache=False)
            else:
                prompt_model = dspy.LM(
                    f"openai/{config.reflection.model}",
                    api_base=config.reflection.endpoint,
                    api_key=os.environ.get(config.reflection.api_key_env or "", "unused"),
                    cache=False,
                )
            del ReflectionLM
            optimizer = dspy.MIPROv2(
                metric=match_metric,
                prompt_model=prompt_model,
                task_model=student_lm(config.student),
                auto="light",
                max_bootstrapped_demos=phase.max_bootstrapped_demos,
                max_labeled_demos=phase.max_labeled_demos,
                num_threads=phase.num_threads,
                verbose=False,
            )
            compiled = optimizer.compile(student, trainset=train, valset=val)
    compiled.save(PhaseLayout(str(folder)).program)
    prompt = compiled.prompt()
    if not compiled.step.demos and start_demos:
        prompt = Prompt(prompt.system, tuple(start_demos))  # nothing bootstrapped: keep what we had
    progress({"phase": phase.name, "event": "compiled", "demos": len(compiled.step.demos)})
    return prompt


class _GepaProgress:
    """A GEPA callback: after every iteration, write the candidates and the progress, and report."""

    def __init__(
        self, phase: PhaseConfig, folder: Path, adapter: Any, reflection: Any, progress: Progress
    ) -> None:
        self.phase, self.folder, self.adapter, self.reflection = phase, folder, adapter, reflection
        self.paths = PhaseLayout(str(folder))
        self.report = progress
        self.started = time.time()

    def snapshot(self, state: Any, report: bool = True) -> dict[str, Any]:
        from gepa.core.result import GEPAResult

        result = GEPAResult.from_state(state)
        front = sorted({i for ids in result.per_val_instance_best_candidates.values() for i in ids})
        candidates: list[dict[str, Any]] = [
            {
                "index": i,
                "instructions": c["instructions"],
                "parents": result.parents[i],
                "val_score": round(result.val_aggregate_scores[i], 4),
                "val_scores": {str(k): v for k, v in result.val_subscores[i].items()},
                "found_after_metric_calls": result.discovery_eval_counts[i],
                "on_pareto_front": i in front,
            }
            for i, c in enumerate(result.candidates)
        ]
        scores = [float(c["val_score"]) for c in candidates]
        best = max(range(len(scores)), key=scores.__getitem__)
        _write(self.paths.candidates, {"best": best, "pareto_front": front, "candidates": candidates})
        status = {
            "phase": self.phase.name,
            "event": "iteration",
            "iteration": state.i + 1,
            "metric_calls": state.total_num_evals,
            "max_metric_calls": self.phase.max_metric_calls,
            "reflection_usd": round(float(getattr(self.reflection, "total_cost", 0.0)), 6),
            "max_reflection_usd": self.phase.max_reflection_usd,
            "candidates": len(candidates),
            "best_val_score": candidates[best]["val_score"],
            "pareto_front": len(front),
            "elapsed_s": round(time.time() - self.started, 1),
        }
        _write(self.paths.progress, status)
        if report:
            self.report(status)
        return status

    def on_iteration_end(self, event: Any) -> None:
        self.snapshot(event["state"])

    def on_optimization_end(self, event: Any) -> None:
        state = event.get("final_state") if isinstance(event, dict) else None
        if state is not None:
            self.snapshot(state, report=False)  # the files; the last iteration was reported already


def make_evaluator(config: OptimizeConfig, folder: Path, tune_callbacks: Sequence[Any] = ()) -> Any:
    if config.tune.executor != "tune":
        return None
    from tooldistill.optimize.tune_eval import TuneEvaluator
    from tooldistill.raycluster import ensure_ray

    ensure_ray(config.tune.ray_address)
    return TuneEvaluator(
        config.student,
        OptimizeLayout(str(folder)).tune,
        max_concurrent_trials=config.tune.max_concurrent_trials,
        requests_per_trial=config.tune.requests_per_trial,
        cpus_per_trial=config.tune.cpus_per_trial,
        resources_per_trial=config.tune.resources_per_trial,
        warm_start=config.tune.warm_start,
        callbacks=tune_callbacks,
    )


class CandidateEvaluators:
    """One Tune evaluator for every GEPA phase of a run: its trial actors start once (tens of
    seconds on a small machine) and stay warm from phase 2 into phase 3."""

    def __init__(self, config: OptimizeConfig, tune_callbacks: Sequence[Any] = ()) -> None:
        self.config, self.tune_callbacks = config, tune_callbacks
        self.evaluator: Any = None

    def get(self) -> Any:
        if self.evaluator is None:
            self.evaluator = make_evaluator(self.config, Path(self.config.run_dir), self.tune_callbacks)
        return self.evaluator

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
            self.evaluator = None


def run_gepa_phase(
    config: OptimizeConfig,
    phase: PhaseConfig,
    start: Prompt,
    folder: Path,
    progress: Progress,
    callbacks: Sequence[Any] = (),
    evaluators: CandidateEvaluators | None = None,
) -> Prompt:
    """Phases 2-3: GEPA evolves the instructions; the demos of ``start`` stay."""
    import gepa
    from gepa.strategies.proposal_sampling import PxNSampling

    from tooldistill.optimize.adapter import COMPONENT, ToolCallAdapter
    from tooldistill.optimize.reflection import ReflectionLM

    train = phase_train(config, phase)
    val = _traces(config.data.val)[: phase.val]
    if not train or not val:
        raise OptimizeError(f"{phase.name}: GEPA needs train and val examples (got {len(train)}, {len(val)})")
    paths = PhaseLayout(str(folder))
    previous = _read(paths.progress) or {}
    reflection = ReflectionLM(config.reflection, spent_before=float(previous.get("reflection_usd") or 0.0))
    own = evaluators is None
    pool = evaluators or CandidateEvaluators(config)
    evaluator = pool.get()
    first_trial = len(evaluator.trials) if evaluator is not None else 0
    adapter = ToolCallAdapter(
        config.student,
        start.demos,
        evaluator=evaluator,
        reflection_lm=reflection,
        parallel_candidates=config.tune.max_concurrent_trials,
    )
    watcher = _GepaProgress(phase, folder, adapter, reflection, progress)
    resumed = Path(paths.gepa_state).exists()
    progress(
        {"phase": phase.name, "event": "start", "resumed": resumed, "train": len(train), "val": len(val)}
    )
    try:
        result: Any = gepa.optimize(
            seed_candidate={COMPONENT: start.system},
            trainset=train,
            valset=val,
            adapter=adapter,  # type: ignore[arg-type]
            reflection_lm=reflection,
            candidate_selection_strategy=phase.candidate_selection,
            reflection_minibatch_size=phase.minibatch_size,
            max_metric_calls=phase.max_metric_calls,
            max_reflection_cost=phase.max_reflection_usd,
            sampling_strategy=PxNSampling(phase.parents_per_iteration, phase.mutations_per_parent),
            use_merge=phase.use_merge,
            run_dir=paths.gepa,
            callbacks=[watcher, *callbacks],  # type: ignore[list-item]
            track_best_outputs=False,
            seed=phase.seed,
            raise_on_exception=True,
        )
    finally:
        if evaluator is not None:
            _write(paths.trials, [t.__dict__ for t in evaluator.trials[first_trial:]])
        if own:
            pool.close()
    best = result.best_candidate
    assert isinstance(best, dict)
    _write(paths.reflection, reflection.usage())
    return Prompt(best[COMPONENT], start.demos)


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

    A finetune phase also changes the student: its result holds ``student`` (the settings of the
    fine-tuned student), which the phases after it use."""
    paths = _layout(config).phase(phase.name)
    folder = Path(paths.root)
    key = content_hash(
        {"phase": phase.config_hash(), "start": start.to_json(), "student": config.student.model_dump(mode="json"),
         "data": config.data.model_dump(mode="json")},
        16,
    )  # fmt: skip
    done = _read(paths.result)
    if done and done.get("key") == key:
        if phase.kind == "finetune":  # serve its student again: the phases after it use it
            student, _ = _finetune(config, phase, start, folder, progress, host)
            done["student"] = student.model_dump(mode="json")
        progress({"phase": phase.name, "event": "skipped", "test": done.get("test")})
        return dict(done)
    marker = _read(paths.key)
    if done or (marker and marker.get("key") != key):  # a phase with other inputs: start it over
        for file in paths.restart_files:
            Path(file).unlink(missing_ok=True)
        import shutil

        for subfolder in paths.restart_folders:
            shutil.rmtree(subfolder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    _write(paths.key, {"key": key})
    started = time.time()
    student = config.student
    extra: dict[str, Any] = {}
    if phase.kind == "dspy":
        prompt = run_dspy_phase(config, phase, start, folder, progress)
    elif phase.kind == "gepa":
        prompt = run_gepa_phase(config, phase, start, folder, progress, callbacks, evaluators)
    else:
        prompt = start  # the weights change, the prompt stays
        student, record = _finetune(config, phase, start, folder, progress, host)
        extra = {"student": student.model_dump(mode="json"), "finetune": _finetune_row(record)}
    _write(paths.prompt, {**prompt.to_json(), **_student_note(folder, student, phase)})
    _export_program(config, prompt, folder)
    test = _traces(config.data.test)[: config.data.test_limit]
    layout = _layout(config)
    earlier = [Path(layout.baseline_answers)] + [
        Path(layout.phase(p.name).test_answers) for p in config.phases if p.name != phase.name
    ]
    summary, outcomes = evaluate_prompt(prompt, test, student, Path(paths.test_answers), earlier)
    _write(paths.test, {"summary": summary, "outcomes": [o.to_json() for o in outcomes]})
    result = {
        **extra,
        "phase": phase.name,
        "kind": phase.kind,
        "key": key,
        "train": len(phase_train(config, phase)),  # what was there, not the configured cap
        "test": summary,
        "demo_messages": len(prompt.demos),
        "system_chars": len(prompt.system),
        "elapsed_s": round(time.time() - started, 1),
        "progress": _read(paths.progress),
    }
    _write(paths.result, result)
    progress({"phase": phase.name, "event": "done", "test": summary})
    return result


def _finetune(
    config: OptimizeConfig, phase: PhaseConfig, start: Prompt, folder: Path, progress: Progress, host: Any
) -> tuple[StudentSettings, dict[str, Any]]:
    if host is None:
        raise OptimizeError(
            f"{phase.name}: a finetune phase needs a student that tooldistill serves (tooldistill run "
            "with student.serve), so that the fine-tuned weights can be served and measured"
        )
    from tooldistill.finetune.phase import run_finetune_phase

    train = phase_train(config, phase)
    return run_finetune_phase(
        train, phase.finetune_options(), phase.name, start, config.student, folder, host, progress,
        reserve=finetune_reserve(config, train),
    )  # fmt: skip


def finetune_reserve(config: OptimizeConfig, train: Sequence[Trace]) -> list[Trace]:
    """The train split's traces a finetune phase did not select (where ``min_no_call_share`` finds
    no-call answers to add), in id order."""
    chosen = {t.id for t in train}
    return sorted((t for t in _traces(config.data.train) if t.id not in chosen), key=lambda t: t.id)


def _finetune_row(record: dict[str, Any]) -> dict[str, Any]:
    """What the phase table shows of a finetune phase."""
    training, examples = record["training"], record["examples"]
    return {
        "examples": examples["examples"],
        "calls": examples["calls"],
        "no_calls": examples["no_calls"],
        "tokens": examples["tokens"],
        "left_out": examples["left_out"],
        "steps": training["steps"],
        "train_seconds": training["train_seconds"],
        "tokens_per_s": training["tokens_per_s"],
        "final_loss": training["final_loss"],
        "device": training["device"],
        "adapter_bytes": record["adapter"]["adapter_bytes"],
        "adapter_sha256": record["adapter"]["adapter_sha256"],
        "served_model": record["served_model"],
    }


def _student_note(folder: Path, student: StudentSettings, phase: PhaseConfig) -> dict[str, Any]:
    """In an exported prompt: which student it was measured with (the fine-tuned one names its base,
    adapter and checksum), so any OpenAI-compatible client reaches the same student."""
    record = None
    for sibling in sorted(p for p in folder.parent.iterdir() if p.is_dir()):  # the phase that made it
        found = _read(PhaseLayout(str(sibling)).finetune)
        if found and found.get("served_model") == student.model:
            record = found
    note: dict[str, Any] = {"model": student.model}
    if student.context.window is not None:
        # how long requests were cut: a client that serves this prompt fits requests the same way
        # (``tooldistill.context.Fitter``), so the student is served what it was measured on
        policy = student.context.model_dump(mode="json")
        if policy.get("tokenizer"):
            policy["tokenizer"] = "the student's own (its model folder)"
        note["context"] = policy
    if record:
        note.update(
            base_model=record["adapter"]["base_model"],
            adapter=record["adapter"]["path"],
            adapter_sha256=record["adapter"]["adapter_sha256"],
            served_as=record.get("served_as", "merged"),
            merged_model=record.get("merged"),
            **({"adapter_uri": record["adapter_uri"]} if record.get("adapter_uri") else {}),
        )
    return {"student": note}


def _export_program(config: OptimizeConfig, prompt: Prompt, folder: Path) -> None:
    """The prompt in DSPy's save format too (phase 1 already wrote its compiled program)."""
    path = PhaseLayout(str(folder)).program
    if Path(path).exists():
        return
    from tooldistill.optimize.program import StudentProgram

    program = StudentProgram.from_prompt(config.student, prompt)
    program.save(path)
    # the demos as chat messages are in prompt.json; DSPy's format holds the instructions


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


def ensure_baseline(config: OptimizeConfig, start: Prompt) -> tuple[dict[str, Any], bool]:
    """The test-split evaluation of ``start`` in ``RUN/baseline.json``; True when it was there already."""
    layout = _layout(config)
    key = content_hash(
        {"prompt": start.to_json(), "student": config.student.model_dump(mode="json"),
         "data": config.data.model_dump(mode="json")},
        16,
    )  # fmt: skip
    baseline = _read(layout.baseline)
    if baseline is not None and baseline.get("key") == key:
        return baseline, True
    test = _traces(config.data.test)[: config.data.test_limit]
    summary, outcomes = evaluate_prompt(start, test, config.student, Path(layout.baseline_answers))
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
    _write(layout.baseline, baseline)
    return baseline, False


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
    check_endpoint(config.student)
    selected = config.phase(phase)
    run_dir = Path(config.run_dir)
    layout = _layout(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write(layout.config, config.model_dump(mode="json"))
    start = start_prompt(config, selected[0].name)
    baseline, _ = ensure_baseline(config, start)
    report({"phase": "baseline", "event": "done", "test": baseline["test"]})
    results = []
    evaluators = CandidateEvaluators(config, tune_callbacks)
    current = config
    try:
        for item in selected:
            if item.kind == "finetune":
                evaluators.close()  # its warm trial actors hold CPUs the training workers need
            result = run_phase(current, item, start, report, callbacks, evaluators, host)
            results.append(result)
            start = read_prompt(layout.phase(item.name).prompt)
            if "student" in result:  # a finetune phase: the phases after it ask the fine-tuned student
                student = StudentSettings.model_validate(result["student"])
                update: dict[str, Any] = {"student": student}
                reflection = current.reflection
                if (reflection.kind, reflection.endpoint, reflection.model) == (
                    "openai",
                    current.student.endpoint,
                    current.student.model,
                ):  # the student reflected on itself (no Claude key): the fine-tuned one does now
                    update["reflection"] = reflection.model_copy(
                        update={"endpoint": student.endpoint, "model": student.model}
                    )
                current = current.model_copy(update=update)
                evaluators.close()  # its trial actors hold the old student's settings
                evaluators = CandidateEvaluators(current, tune_callbacks)
    finally:
        evaluators.close()
    best = max(results, key=lambda r: r["test"].get("rate") or 0.0)
    best_phase = layout.phase(best["phase"])
    Path(layout.best).mkdir(exist_ok=True)
    for source, target in (
        (best_phase.prompt, layout.best_prompt),
        (best_phase.program, layout.best_program),
    ):
        if Path(source).exists():
            Path(target).write_bytes(Path(source).read_bytes())
    summary = {
        "run_dir": str(run_dir),
        "baseline": baseline["test"],
        "phases": [
            {
                **{k: r[k] for k in ("phase", "kind", "train", "test", "demo_messages", "elapsed_s")},
                **({"finetune": r["finetune"]} if "finetune" in r else {}),
            }
            for r in results
        ],
        "best_phase": best["phase"],
        "artifact": layout.best_prompt,
    }
    _write(layout.summary, summary)
    return summary
