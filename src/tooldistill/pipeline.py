"""``tooldistill run``: every stage from one config, in order, into one run folder.

Stages, in order (``STAGES``): ``ingest``, ``teacher``, the curation stages of
``tooldistill.curate.registry`` (``embed``, ``semdedup``, the optional ``length``, ``car``,
``split``), then ``student``, ``baseline``, ``optimize`` (``tooldistill.student_stages``) and
``report``.  The run folder's paths are ``tooldistill.layout.RunLayout``'s.

Each dataset stage is skipped when its output manifest matches its inputs and config (the stage's
own fingerprint).  Optimization files are written by GEPA and Ray Tune as plain files, so for an
``s3://`` run folder they are written to a local staging folder (``staging``): the run's record and
log are copied to the run folder after every stage, the optimize folder after the optimize stage
(and when the run ends, however it ends), and both come back at the start, so a run resumes from
another machine.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooldistill import raycluster, runlock, staging, store, student_stages
from tooldistill.config import PipelineConfig
from tooldistill.console import chatter_to
from tooldistill.curate import registry as curate_registry
from tooldistill.curate.registry import CurateStage, StageContext
from tooldistill.executor import Executor, make_executor
from tooldistill.ingest import IngestConfig, IngestResult, ingest
from tooldistill.layout import RunLayout
from tooldistill.runlog import RunLog, Say, StageRecord
from tooldistill.stage import PipelineError, StageResult, earlier_result
from tooldistill.staging import is_remote

__all__ = ["STAGES", "PipelineError", "RunResult", "run_pipeline", "select_stages"]

STAGES: tuple[str, ...] = ("ingest", "teacher", *curate_registry.NAMES, *student_stages.NAMES, "report")


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
        self.students = student_stages.StudentStages(config, run_dir, self.local, self.log, say)
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
            earlier = earlier_result(out, self.require(out, name).manifest)
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
            result = ingest(IngestConfig(out=out, **dict(section)), self.executor)
            manifest = result.dataset.manifest
            rows, quarantined = manifest.rows, manifest.quarantine.total
            note = f"{rows} traces, {quarantined} quarantined"
            record.detail = {"traces": rows, "quarantined": quarantined, "note": note}
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
            why = f"{section.key_env()} is not set" if section.mode == "auto" else "mode data"
            self.log.skip("teacher", "disabled", f"{why}: the traces' own calls are the teacher's")
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
        """The registry's curation stages on ``source``; the split's parts and the curated set."""
        section = self.config.curate
        if section is None:
            for name in curate_registry.NAMES:
                self.log.skip(name, "disabled", "no curate section")
            return None
        from tooldistill.curate.chain import run_chain
        from tooldistill.curate.runner import make_runner

        ray = self.config.ray
        runner = make_runner(ray.executor, address=ray.address, num_cpus=ray.num_cpus)

        def step(entry: CurateStage, out: str, work: Callable[[], StageResult]) -> StageResult | None:
            def recorded(record: StageRecord) -> StageResult:
                result = work()
                record.detail = {"rows": result.rows, "note": f"{result.rows} traces"}
                return result

            return self.step(entry.name, out, recorded)

        def left_out(entry: CurateStage) -> None:
            self.log.skip(entry.name, "disabled", f"optional, off: no curate.{entry.name} section")

        chain = run_chain(
            source,
            self.layout.curate.root,
            section,
            StageContext(runner, self.show_progress),
            step=step,
            left_out=left_out,
        )
        if chain is None:  # --until stopped inside curation
            return None
        curate = self.layout.curate
        return {
            "train": curate.train,
            "val": curate.val,
            "test": curate.test,
            "curated": chain.inputs["split"],
            # the traces with their embeddings (the model that made them): a dicl phase's bank
            "embedded": chain.results["embed"].uri,
            # what CaR chose from: more train examples for a phase with ``source: pool``
            "pool": chain.inputs["car"],
        }

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
    found = runlock.held_inside(list(layout.stage_outputs))
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
            if run.after_until("student"):
                run.students.skip_all("not selected", "--until stops before it")
            else:
                run.result.optimize = run.students.run(data, run.selected)
        finally:
            run.students.stop()
            run.sync()  # the phases' files, before the report (which may take a while)
        run.report()
    finally:
        run.log.write(finished=True)
        run.sync()
    return run.result
