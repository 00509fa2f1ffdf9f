"""A run's own record: ``run.json`` (rewritten after every stage) and ``run.log`` (appended).

Every line is redacted before it is written: a stage's error message may quote a trace.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooldistill import __version__
from tooldistill.config import PipelineConfig
from tooldistill.layout import RunLayout
from tooldistill.redact import Redactor
from tooldistill.report.mask import mask

Say = Callable[[str], None]


def redact_text(text: str) -> str:
    return str(Redactor().text(text))


@dataclass
class StageRecord:
    stage: str
    status: str  # ran | skipped | disabled | failed | not selected
    elapsed_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": self.status,
            "elapsed_s": self.elapsed_s,
            "detail": self.detail,
        }


class RunLog:
    """``run.json`` and ``run.log`` in the run's (staging) folder ``workdir``."""

    def __init__(
        self,
        config: PipelineConfig,
        run_dir: str,
        workdir: Path,
        say: Say,
        on_record: Callable[[], None] = lambda: None,
    ) -> None:
        self.config, self.run_dir, self.workdir, self.say = config, run_dir, workdir, say
        #: Called after every stage record (the pipeline copies the record to an s3:// run folder).
        self.on_record = on_record
        self.records: list[StageRecord] = []
        self.started = time.time()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(RunLayout(str(workdir)).run_log)
        self.line(
            f"run {config.name} → {run_dir} (tooldistill {__version__}, python {platform.python_version()})"
        )

    def line(self, text: str) -> None:
        text = redact_text(text)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {text}\n")

    def record(self, record: StageRecord) -> None:
        self.records.append(record)
        self.line(
            f"{record.stage}: {record.status} in {record.elapsed_s:.1f} s {json.dumps(record.detail, default=str)}"
        )
        self.write()
        self.on_record()

    def skip(self, name: str, status: str, note: str) -> None:
        """Record a stage that did not run (disabled, not selected, up to date) and say why."""
        self.record(StageRecord(name, status, detail={"note": note}))
        self.say(f"[bold]{name}[/]: {status} ({note})")

    def write(self, finished: bool = False) -> None:
        value = {
            "name": self.config.name,
            "run_dir": self.run_dir,
            "tooldistill": __version__,
            "config": mask(self.config.model_dump(mode="json")),
            "stages": [r.to_json() for r in self.records],
            "started": self.started,
            "finished": time.time() if finished else None,
        }
        path = Path(RunLayout(str(self.workdir)).run_record)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        """Time a stage that runs; a failure is recorded (redacted, with its traceback in the log)
        and raised again."""
        record = StageRecord(name, "ran")
        self.say(f"[bold]{name}[/] …")
        started = time.perf_counter()
        try:
            yield record
        except BaseException as error:
            record.status = "failed"
            record.detail["error"] = redact_text(f"{type(error).__name__}: {error}")
            record.elapsed_s = round(time.perf_counter() - started, 2)
            self.line("".join(traceback.format_exception(error)).rstrip())
            self.record(record)
            raise
        record.elapsed_s = round(time.perf_counter() - started, 2)
        self.record(record)
        note = f" ({record.detail['note']})" if "note" in record.detail else ""
        self.say(f"[bold]{name}[/]: {record.status} in {record.elapsed_s:.1f} s{note}")
