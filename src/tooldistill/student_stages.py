"""The run's stages that share the student: ``student`` (serve it, or reach it), ``baseline`` (the
seed prompt measured on the test split) and ``optimize`` (the phase schedule).

The student is started only when the baseline or a phase has work to do, and stopped when the run
ends (``StudentStages.stop``).  The three are up to date together: a stamp of the optimize and
student sections, the split's fingerprints and whether a reflection key is set
(``RUN/optimize/stamp.json``).  ``tooldistill.pipeline`` runs them after curation.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tooldistill import store
from tooldistill.config import PipelineConfig
from tooldistill.layout import RunLayout
from tooldistill.optimize.phases.base import read_json
from tooldistill.progress import optimize_progress, rate_text
from tooldistill.runlog import RunLog, Say
from tooldistill.schema import content_hash
from tooldistill.serve.host import ServeHost, Student, start_student
from tooldistill.stage import PipelineError
from tooldistill.tracking import tracking

#: The stages that share the student, in order.
NAMES = ("student", "baseline", "optimize")


class StudentStages:
    """``student``, ``baseline`` and ``optimize`` of one run; ``local`` is the layout of the run's
    (staging) folder, where the optimize files are written as plain files."""

    def __init__(self, config: PipelineConfig, run_dir: str, local: RunLayout, log: RunLog, say: Say) -> None:
        self.config, self.run_dir, self.local, self.log, self.say = config, run_dir, local, log, say
        self.student: Student | None = None

    def skip_all(self, status: str, note: str) -> None:
        for name in NAMES:
            self.log.skip(name, status, note)

    def run(self, data: dict[str, str] | None, selected: set[str]) -> dict[str, Any] | None:
        """The three stages on the split ``data`` (None: no curated split); the optimize summary."""
        section, student_section = self.config.optimize, self.config.student
        if section is None or student_section is None or data is None:
            self.skip_all(
                "disabled", "no optimize section" if section is None else "no student or no curated split"
            )
            return None
        layout = self.local.optimize
        folder = Path(layout.root)
        data = section.data_for(data)  # the embeddings and the pool: inputs only where a phase reads them
        splits = {name: store.Dataset.open(uri).manifest.fingerprint for name, uri in data.items()}
        stamp = content_hash(
            {
                "optimize": section.model_dump(mode="json"),
                "student": student_section.model_dump(mode="json"),
                "data": splits,
                "reflection_key": self._reflection_key_set(),
            },
            16,
        )
        done = read_json(Path(layout.stamp))
        wanted = set(NAMES) & selected
        if not wanted or (done and done.get("stamp") == stamp and Path(layout.summary).exists()):
            note = "--from/--until leave them out" if not wanted else "up to date"
            self.skip_all("skipped" if wanted else "not selected", note)
            return read_json(Path(layout.summary))
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
        config = section.config(str(folder), data, student=served, reflection=self._reflection())
        from tooldistill.optimize.run import ensure_baseline, optimize, start_prompt
        from tooldistill.optimize.student import check_endpoint

        progress = optimize_progress(self.say, self.log.line)
        if "baseline" in selected:
            with self.log.stage("baseline") as record:
                check_endpoint(config.student)
                folder.mkdir(parents=True, exist_ok=True)
                baseline, skipped = ensure_baseline(config, start_prompt(config), progress)
                record.status = "skipped" if skipped else "ran"
                record.detail = {"test": baseline["test"], "note": rate_text(baseline["test"])}
        if "optimize" not in selected:
            self.log.skip("optimize", "not selected", "--until stops before it")
            return None
        tune_callbacks, finish_tracking = tracking(self.config, self.run_dir, folder)
        with self.log.stage("optimize") as record:
            host = (
                ServeHost(student_section, self.student, self.say, self.run_dir)
                if student_section.serve
                else None
            )
            summary = optimize(config, progress=progress, tune_callbacks=tune_callbacks, host=host)
            self._write_student()
            best = next(p["test"] for p in summary["phases"] if p["phase"] == summary["best_phase"])
            record.detail = {
                "best_phase": summary["best_phase"],
                "phases": {p["phase"]: p["test"].get("rate") for p in summary["phases"]},
                "note": f"best {summary['best_phase']}: " + rate_text(best),
            }
            finish_tracking(summary)
        Path(layout.stamp).write_text(json.dumps({"stamp": stamp}) + "\n")
        return summary

    def _reflection_key_set(self) -> bool:
        assert self.config.optimize is not None
        return bool(os.environ.get(self.config.optimize.reflection.api_key_env or "ANTHROPIC_API_KEY"))

    def _reflection(self) -> Any:
        """Claude when its key is set; otherwise the student itself (or an error, as configured)."""
        from tooldistill.optimize.reflection import ReflectionSettings

        section = self.config.optimize
        assert section is not None
        reflection = section.reflection
        if reflection.kind != "anthropic" or self._reflection_key_set():
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

    def stop(self) -> None:
        """Stop the student this run started (if any) and record when."""
        if self.student is None:
            return
        try:
            self.student.stop()
        finally:
            self._write_student(stopped=time.time())
