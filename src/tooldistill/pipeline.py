"""``tooldistill run``: every stage from one config, in order, into one run folder.

Stages, in order (``STAGES``)::

    ingest → teacher → embed → semdedup → car → split → student → baseline → optimize → report

Run folder (local path or ``s3://``)::

    RUN/traces/                      ingested traces (quarantined records beside them)
    RUN/teacher/                     Claude's sampled answers per trace + summary.json (teacher: claude)
    RUN/curate/embedded|deduped|curated|split/{train,val,test}   curation datasets (+ decisions/)
    RUN/curate/funnel.json           the data funnel in numbers
    RUN/student.json                 the endpoint used, replicas, serving time and GPU hours
    RUN/optimize/                    baseline.json, phaseN/ (prompt, program, GEPA state, Tune trials,
                                     test evaluation), best/prompt.json (the exported prompt), summary.json
    RUN/report/report.md|html        the report, with its plots
    RUN/run.json, RUN/run.log        what each stage did this time (ran, skipped, disabled) and how long
    RUN/.lock                        while a run is using the folder: its pid, host, start and command

Each dataset stage is skipped when its output manifest matches its inputs and config (the stage's own
fingerprint).  The student is started only when the baseline or a phase has work to do, and stopped
when the run ends.  Optimization files are written by GEPA and Ray Tune as plain files, so for an
``s3://`` run folder they are written to a local staging folder (``staging``): the run's record and
log are copied to the run folder after every stage, the optimize folder after the optimize stage
(and when the run ends, however it ends), and both come back at the start, so a run resumes from
another machine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooldistill import raycluster, runlock, staging, store
from tooldistill.config import PipelineConfig
from tooldistill.console import chatter_to
from tooldistill.executor import Executor, make_executor
from tooldistill.ingest import IngestConfig, IngestResult, ingest
from tooldistill.layout import RunLayout
from tooldistill.progress import optimize_progress, rate_text
from tooldistill.runlog import RunLog, Say, StageRecord
from tooldistill.schema import content_hash
from tooldistill.serve.host import ServeHost, Student, start_student
from tooldistill.stage import PipelineError, StageResult, kept
from tooldistill.staging import is_remote
from tooldistill.tracking import tracking

__all__ = ["STAGES", "PipelineError", "RunResult", "run_pipeline", "select_stages"]

STAGES = (
    "ingest",
    "teacher",
    "embed",
    "semdedup",
    "car",
    "split",
    "student",
    "baseline",
    "optimize",
    "report",
)
#: The curate stages, run in this order on the teacher's (or the ingested) traces.
CURATE = ("embed", "semdedup", "car", "split")
#: The stages that share the student: started for the baseline and the phases, stopped after.
STUDENT = ("student", "baseline", "optimize")


@dataclass
class RunResult:
    run_dir: str
    stages: list[StageRecord]
    ingest: IngestResult | None = None
    report: str | None = None
    optimize: dict[str, Any] | None = None

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.stage == name), None)


def executor_for(config: PipelineConfig) -> Executor:
    return make_executor(config.ray.executor, address=config.ray.address, num_cpus=config.ray.num_cpus)


class _Run:
    def __init__(
        self,
        config: PipelineConfig,
        run_dir: str,
        executor: Executor | None,
        selected: set[str],
        say: Say,
        show_progress: bool,
    ) -> None:
        self.config, self.run_dir, self.selected, self.say = config, run_dir, selected, say
        self.show_progress = show_progress
        self.executor = executor or executor_for(config)
        raycluster.configure(config.ray.address, config.ray.num_cpus)
        self.workdir = staging.staging_dir(run_dir)
        #: the run folder's paths (datasets), and the staging folder's (plain files)
        self.layout, self.local = RunLayout(run_dir), RunLayout(str(self.workdir))
        staging.restore(run_dir, self.workdir)
        # after every stage, an s3:// run folder gets the run's record and log
        self.log = RunLog(config, run_dir, self.workdir, say, on_record=self.sync_files)
        self.student: Student | None = None
        self.result = RunResult(run_dir=run_dir, stages=self.log.records)

    def after_until(self, stage: str) -> bool:
        """Whether ``stage`` comes after the last selected stage (``--until`` stops before it)."""
        return STAGES.index(stage) > max(STAGES.index(s) for s in self.selected)

    def require(self, uri: str, stage: str) -> store.Dataset:
        try:
            return store.Dataset.open(uri)
        except store.StoreError:
            raise PipelineError(
                f"stage {stage} has not run in {self.run_dir} (no dataset at {uri}); "
                f"run without --from, or --from {stage}"
            ) from None

    def step(self, name: str, out: str, run: Callable[[StageRecord], StageResult]) -> StageResult | None:
        """One dataset stage: left out by ``--until`` (None), not selected (its earlier output,
        which must be there), or run — up to date or not, ``run`` says — and recorded."""
        if self.after_until(name):
            self.log.skip(name, "not selected", "--until stops before it")
            return None
        if name not in self.selected:
            earlier = kept(out, self.require(out, name).manifest)
            self.log.skip(name, "not selected", "kept the earlier output")
            return earlier
        with self.log.stage(name) as record:
            result = run(record)
            record.status = "skipped" if result.skipped else "ran"
        return result

    def sync(self) -> None:
        staging.sync(self.run_dir, self.workdir)

    def sync_files(self) -> None:
        staging.sync(self.run_dir, self.workdir, folders=False)

    # -- stages --------------------------------------------------------------------------------

    def ingest(self) -> str:
        out, section = self.layout.traces, self.config.ingest

        def run(record: StageRecord) -> StageResult:
            result = ingest(
                IngestConfig(
                    sources=section.sources,
                    format=section.format,
                    out=out,
                    reader=section.reader,
                    strict=section.strict,
                ),
                self.executor,
            )
            manifest = result.dataset.manifest
            record.detail = {
                "traces": manifest.rows,
                "quarantined": manifest.quarantine.total,
                "note": f"{manifest.rows} traces, {manifest.quarantine.total} quarantined",
            }
            self.result.ingest = result
            return StageResult(result.dataset, result.skipped, dict(manifest.stats))

        self.step("ingest", out, run)
        return out

    def teacher(self, traces: str) -> str:
        section, out = self.config.teacher, self.layout.teacher
        if section is None:
            self.log.skip("teacher", "disabled", "no teacher section: the traces' calls are the teacher's")
            return traces
        if section.resolved_mode() == "data":
            self.log.skip(
                "teacher",
                "disabled",
                f"{section.key_env()} is not set: the traces' own calls are the teacher's"
                if section.mode == "auto"
                else "mode data: the traces' own calls are the teacher's",
            )
            return traces

        def run(record: StageRecord) -> StageResult:
            from tooldistill.teacher.capture import capture

            config = section.capture.config(dataset=traces, out=out)
            result = capture(config, show_progress=self.show_progress)
            summary = result.summary
            consistency = summary.get("consistency") or {}
            record.detail = {
                "model": config.model,
                "requests": summary.get("requests"),
                "cost_usd": summary.get("cost_usd"),
                "all_agree": (consistency.get("all_agree") or {}).get("rate"),
                "note": f"{len(result.failures)} failed requests" if result.failures else "all answered",
            }
            if result.failures:
                raise PipelineError(
                    f"teacher: {len(result.failures)} requests failed; run again to ask only those "
                    f"(answers so far are cached in {config.cache_uri})"
                )
            return StageResult(result.dataset, result.skipped, summary)

        self.step("teacher", out, run)
        return out

    def curate(self, source: str) -> dict[str, str] | None:
        section = self.config.curate
        if section is None:
            for name in CURATE:
                self.log.skip(name, "disabled", "no curate section")
            return None
        if self.after_until("embed"):
            for name in CURATE:
                self.log.skip(name, "not selected", "--until stops before it")
            return None
        from tooldistill.curate.car import run_car
        from tooldistill.curate.pipeline import ensure_embedded, funnel, write_funnel
        from tooldistill.curate.runner import make_runner
        from tooldistill.curate.semdedup import run_semdedup
        from tooldistill.curate.split import run_split

        runner = make_runner(
            self.config.ray.executor, address=self.config.ray.address, num_cpus=self.config.ray.num_cpus
        )
        curate = self.layout.curate
        uris = dict(
            zip(
                CURATE,
                (curate.embedded, curate.deduped, curate.curated, curate.split),
                strict=True,
            )
        )
        stats: dict[str, dict[str, Any]] = {}
        inputs = {"embed": source}

        def stage(name: str, run: Callable[[], StageResult], then: str | None) -> None:
            def recorded(record: StageRecord) -> StageResult:
                result = run()
                rows = result.rows
                record.detail = {"rows": rows, "note": f"{rows} traces"}
                return result

            result = self.step(name, uris[name], recorded)
            if result is not None:
                stats[name] = dict(result.stats)
            if then is not None:
                inputs[then] = result.uri if result is not None else uris[name]

        def embed() -> StageResult:
            return ensure_embedded(inputs["embed"], uris["embed"], section.embed, runner)

        def semdedup() -> StageResult:
            config = section.semdedup.config(dataset=inputs["semdedup"], out=uris["semdedup"])
            return run_semdedup(config, runner, self.show_progress)

        def car() -> StageResult:
            config = section.car.config(dataset=inputs["car"], out=uris["car"])
            return run_car(config, self.show_progress)

        def split() -> StageResult:
            config = section.split.config(dataset=inputs["split"], out=uris["split"])
            return run_split(config, self.show_progress)

        stage("embed", embed, "semdedup")
        stage("semdedup", semdedup, "car")
        stage("car", car, "split")
        stage("split", split, None)
        if self.after_until("split"):  # the funnel needs every curate stage
            return None
        numbers = funnel(
            store.Dataset.open(inputs["semdedup"]).manifest, stats["semdedup"], stats["car"], stats["split"]
        )
        write_funnel(curate.root, numbers)
        return {
            "train": curate.train,
            "val": curate.val,
            "test": curate.test,
            "curated": inputs["split"],
        }

    def optimize(self, data: dict[str, str] | None) -> None:
        section, student_section = self.config.optimize, self.config.student
        if self.after_until("student"):
            for name in STUDENT:
                self.log.skip(name, "not selected", "--until stops before it")
            return
        if section is None or student_section is None or data is None:
            why = "no optimize section" if section is None else "no student or no curated split"
            for name in STUDENT:
                self.log.skip(name, "disabled", why)
            return
        layout = self.local.optimize
        folder = Path(layout.root)
        splits = {name: store.Dataset.open(uri).manifest.fingerprint for name, uri in data.items()}
        stamp = content_hash(
            {
                "optimize": section.model_dump(mode="json"),
                "student": student_section.model_dump(mode="json"),
                "data": splits,
                "reflection_key": self._reflection_key_set(section),
            },
            16,
        )
        done = _read_json(Path(layout.stamp))
        wanted = set(STUDENT) & self.selected
        if not wanted or (done and done.get("stamp") == stamp and Path(layout.summary).exists()):
            note = "--from/--until leave them out" if not wanted else "up to date"
            for name in STUDENT:
                self.log.skip(name, "skipped" if wanted else "not selected", note)
            self.result.optimize = _read_json(Path(layout.summary))
            return
        with self.log.stage("student") as record:
            self.student = start_student(student_section, self.say)
            record.detail = {
                "endpoint": self.student.endpoint,
                "model": self.student.model,
                **self.student.info,
            }
            record.detail["note"] = f"{self.student.model} at {self.student.endpoint}"
        self._write_student()
        served = {
            "endpoint": self.student.endpoint,
            "model": self.student.model,
            "api_key_env": self.student.api_key_env or "OPENAI_API_KEY",
            "context": self.student.context(section.student.context.model_dump()),
            "served_by": self.student.info.get("profile_sha256"),
        }
        config = section.config(
            str(folder), data, student=served, reflection=self._reflection(section, section.reflection)
        )
        from tooldistill.optimize.run import ensure_baseline, optimize, start_prompt
        from tooldistill.optimize.student import check_endpoint

        if "baseline" in self.selected:
            with self.log.stage("baseline") as record:
                check_endpoint(config.student)
                folder.mkdir(parents=True, exist_ok=True)
                baseline, skipped = ensure_baseline(config, start_prompt(config))
                test = baseline["test"]
                record.status = "skipped" if skipped else "ran"
                record.detail = {"test": test, "note": rate_text(test)}
        if "optimize" not in self.selected:
            self.log.skip("optimize", "not selected", "--until stops before it")
            return
        tune_callbacks, finish_tracking = tracking(self.config, self.run_dir, folder)
        with self.log.stage("optimize") as record:
            progress = optimize_progress(self.say, self.log.line)
            host = (
                ServeHost(student_section, self.student, self.say, self.run_dir)
                if student_section.serve
                else None
            )
            summary = optimize(config, progress=progress, tune_callbacks=tune_callbacks, host=host)
            self._write_student()
            record.detail = {
                "best_phase": summary["best_phase"],
                "phases": {p["phase"]: p["test"].get("rate") for p in summary["phases"]},
                "note": f"best {summary['best_phase']}: "
                + rate_text(
                    next(p["test"] for p in summary["phases"] if p["phase"] == summary["best_phase"])
                ),
            }
            self.result.optimize = summary
            finish_tracking(summary)
        Path(layout.stamp).write_text(json.dumps({"stamp": stamp}) + "\n")

    def _reflection_key_set(self, section: Any) -> bool:
        key_env = section.reflection.api_key_env or "ANTHROPIC_API_KEY"
        return bool(os.environ.get(key_env))

    def _reflection(self, section: Any, reflection: Any) -> Any:
        """Claude when its key is set; otherwise the student itself (or an error, as configured)."""
        from tooldistill.optimize.reflection import ReflectionSettings

        if reflection.kind != "anthropic" or self._reflection_key_set(section):
            return reflection
        if section.reflection_without_key == "error":
            raise PipelineError(
                f"reflection by Claude needs {reflection.api_key_env or 'ANTHROPIC_API_KEY'}; "
                "set it, or set optimize.reflection_without_key: student"
            )
        assert self.student is not None
        self.say("reflection: no Claude key, so the student reflects on its own failures")
        keep = reflection.model_dump(
            include={"max_tokens", "temperature", "timeout_s", "retries", "concurrency"}
        )
        return ReflectionSettings(
            **keep,
            kind="openai",
            model=self.student.model,
            endpoint=self.student.endpoint,
            api_key_env=self.student.api_key_env,
        )

    def _write_student(self, stopped: float | None = None) -> None:
        if self.student is not None:
            record = self.student.record(stopped)
            Path(self.local.student_record).write_text(json.dumps(record, indent=2) + "\n")

    def stop_student(self) -> None:
        if self.student is None:
            return
        try:
            self.student.stop()
        finally:
            self._write_student(stopped=time.time())

    def report(self) -> None:
        if not self.config.report.enabled:
            self.log.skip("report", "disabled", "report.enabled is false")
            return
        if "report" not in self.selected:
            self.log.skip("report", "not selected", "--until stops before it")
            return
        from tooldistill.report import render_report

        with self.log.stage("report") as record:
            self.log.write(finished=True)  # every stage with work is done; the report says so
            paths = render_report(str(self.workdir), run_uri=self.run_dir)
            record.detail = {
                "markdown": str(paths.markdown),
                "html": str(paths.html),
                "note": str(paths.html),
            }
            self.result.report = str(paths.html) if not is_remote(self.run_dir) else self.layout.report.html


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def select_stages(start_from: str | None = None, until: str | None = None) -> set[str]:
    for name in (start_from, until):
        if name is not None and name not in STAGES:
            raise PipelineError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    first = STAGES.index(start_from) if start_from else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise PipelineError(f"--from {start_from} comes after --until {until}")
    return set(STAGES[first : last + 1])


def run_pipeline(
    config: PipelineConfig,
    run_dir: str | None = None,
    executor: Executor | None = None,
    *,
    start_from: str | None = None,
    until: str | None = None,
    say: Say | None = None,
    show_progress: bool = True,
    chatter_to_log: bool = False,
) -> RunResult:
    """Run the selected stages; each is skipped when its output is up to date.

    The run folder is locked for the duration (``runlock``): a second run on it stops with a
    ``PipelineError`` naming the holder.  ``chatter_to_log``: once the folder is ours, what the
    libraries print (Ray, vLLM, PyTorch) goes to ``run.log`` instead of the console."""
    run_dir = run_dir or config.run_dir
    selected = select_stages(start_from, until)
    say = say or (lambda _: None)
    try:
        lock = runlock.RunLock(run_dir, warn=say).acquire()
    except runlock.RunLockError as error:
        raise PipelineError(str(error)) from None
    try:
        _check_outputs_free(RunLayout(run_dir))
        log = Path(RunLayout(str(staging.staging_dir(run_dir))).run_log)
        chatter = chatter_to(log) if chatter_to_log else nullcontext()
        with chatter:
            return _run_stages(_Run(config, run_dir, executor, selected, say, show_progress))
    finally:
        lock.release()


def _check_outputs_free(layout: RunLayout) -> None:
    """Stop when a standalone command (``tooldistill curate embed --out RUN/curate/embedded``, ...)
    is writing one of the run's stage outputs; it checks the run's lock the other way round."""
    c = layout.curate
    outputs = [layout.traces, layout.teacher, c.embedded, c.deduped, c.curated, c.split, layout.optimize.root]
    found = runlock.held_inside(outputs)
    if found is not None:
        folder, holder = found
        raise PipelineError(
            f"{folder}, inside this run folder, is in use by another command: {holder.describe()}. "
            "Wait for it to finish, or run into another folder."
        )


def _run_stages(run: _Run) -> RunResult:
    try:
        traces = run.ingest()
        source = run.teacher(traces)
        data = run.curate(source)
        try:
            run.optimize(data)
        finally:
            run.stop_student()
            run.sync()  # the phases' files, before the report (which may take a while)
        run.report()
    finally:
        run.log.write(finished=True)
        run.sync()
    return run.result
