"""The contract every phase kind keeps, and what the kinds and the schedule share.

A phase kind (``dspy``, ``gepa``, ``finetune``, ...) is a :class:`PhaseKind`: its name, the check of
its options when a config loads, and one entry point, ``run(ctx) -> PhaseOutput``.  The schedule
(``optimize.run``) does everything around it the same way for every kind: the resume key, the
phase folder, ``prompt.json`` and ``program.json``, the test split, ``result.json``.

- :class:`PhaseContext` is what a phase runs with: the config, its phase section, its train
  traces, the prompt and the student it starts from, its folder, the progress callback, and the
  resources the schedule shares between phases (:class:`PhaseResources`).
- :class:`PhaseOutput` is what it hands back: the prompt it ends with, the student settings when it
  changed the student (a fine-tuned model served under a new name), and the fields of its own that
  ``result.json`` records.

Two hooks cover what used to be ``if kind == ...`` branches of the schedule: ``exclusive_cpus``
(close the warm candidate evaluators before the phase: its own work needs their CPUs) and
``on_skip`` (what a phase whose result is on file redoes before the phases after it run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooldistill import store
from tooldistill.optimize.config import OptimizeConfig, OptimizeError, PhaseConfig
from tooldistill.optimize.student import Prompt, StudentSettings
from tooldistill.schema import Trace

#: Progress events: ``{"phase": name, "event": kind of event, ...}``.
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class PhaseResources:
    """What the schedule holds for the whole run and lends to each phase."""

    #: GEPA's candidate evaluators (``phases.gepa.CandidateEvaluators``): one warm Tune experiment
    #: for every GEPA phase of the run.  None: the phase makes its own.
    evaluators: Any = None
    #: Callbacks the search engine calls (GEPA's ``callbacks``).
    callbacks: Sequence[Any] = ()
    #: Who serves the student (``finetune.phase.StudentHost``); None when tooldistill does not.
    host: Any = None


@dataclass
class PhaseContext:
    """One phase's inputs.  ``train`` is read on first use (a skipped phase seldom needs it)."""

    config: OptimizeConfig
    phase: PhaseConfig
    start: Prompt
    folder: Path
    progress: Progress
    resources: PhaseResources = field(default_factory=PhaseResources)
    _train: list[Trace] | None = field(default=None, repr=False)

    @property
    def student(self) -> StudentSettings:
        """The student the phase starts from (a finetune phase earlier in the run changed it)."""
        return self.config.student

    @property
    def train(self) -> list[Trace]:
        """The phase's train examples (``train``, ``select``: :func:`phase_train`)."""
        if self._train is None:
            self._train = phase_train(self.config, self.phase)
        return self._train

    def val(self) -> list[Trace]:
        """The first ``phase.val`` traces of the val split."""
        return read_traces(self.config.data.val)[: self.phase.val]


@dataclass(frozen=True)
class PhaseOutput:
    """What a phase ends with."""

    prompt: Prompt
    #: The student the phases after this one ask; None: unchanged.
    student: StudentSettings | None = None
    #: The kind's own fields of ``result.json`` (a finetune phase: ``{"finetune": row}``).
    record: Mapping[str, Any] = field(default_factory=dict)


class PhaseKind:
    """One kind of phase.  Subclasses set ``name`` and implement :meth:`run`."""

    #: The ``kind:`` of a phase section.
    name: str = ""
    #: The ``PhaseConfig`` field that holds this kind's own options (``finetune:``), if any; the
    #: section belongs to this kind only.
    section: str | None = None
    #: Before it runs, the schedule closes the warm candidate evaluators (their trial actors hold
    #: CPUs this phase's own work needs).
    exclusive_cpus: bool = False
    #: The fields of its ``PhaseOutput.record`` that ``summary.json`` shows beside the common ones.
    summary_fields: tuple[str, ...] = ()

    #: The phase reads the run's embeddings (``data.embedded``): a run gives them to its config.
    needs_embeddings: bool = False

    def validate(self, phase: PhaseConfig) -> None:
        """Check the phase's options when the config loads (a ``ValueError`` then, not an hour in)."""

    def check(self, config: OptimizeConfig, phase: PhaseConfig) -> None:
        """Check the phase's inputs in the whole config (its data, the student) before the schedule
        starts anything: an ``OptimizeError`` before the baseline, not after the phases before it."""

    def run(self, ctx: PhaseContext) -> PhaseOutput:
        raise NotImplementedError

    def on_skip(self, ctx: PhaseContext, result: Mapping[str, Any]) -> StudentSettings | None:
        """The phase's ``result`` is on file for the same inputs, so it does not run again; redo
        what the phases after it need (a fine-tuned student served again) and return the student
        they ask, or None when the kind leaves the student alone."""
        return None


# ---------------------------------------------------------------------------------------------
# data


def read_traces(uri: str) -> list[Trace]:
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
    """The phase's train traces: ``select``'s order of the train split, then (``source: pool``)
    the pool beyond the splits; ``offset`` of them passed over, ``train`` taken."""
    wanted = phase.offset + phase.train
    if phase.select == "car":
        chosen = car_best(config.data.curated or config.data.train, wanted)
    else:
        traces = read_traces(config.data.train)
        if phase.select == "sample":
            traces = sorted(traces, key=lambda t: t.id)
        chosen = traces[:wanted]
    if phase.source == "pool" and len(chosen) < wanted:
        chosen += pool_beyond_splits(config)[: wanted - len(chosen)]
    return chosen[phase.offset :]


def pool_beyond_splits(config: OptimizeConfig) -> list[Trace]:
    """The deduplicated traces of ``data.pool`` that are in no split (CaR did not select them), in
    trace-id order: more train examples that are never a val or test trace."""
    if config.data.pool is None:
        raise OptimizeError(
            "a phase with source: pool needs the run's deduplicated traces (data.pool); "
            "tooldistill run gives them, a standalone optimize config names them"
        )
    taken = {t.id for uri in (config.data.train, config.data.val, config.data.test) for t in read_traces(uri)}
    return sorted((t for t in read_traces(config.data.pool) if t.id not in taken), key=lambda t: t.id)


# ---------------------------------------------------------------------------------------------
# files


def write_json(file: str | Path, value: Any) -> None:
    """``value`` as indented JSON, replaced in one step (a reader never sees half a file)."""
    path = Path(file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    """The JSON at ``path``; None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
