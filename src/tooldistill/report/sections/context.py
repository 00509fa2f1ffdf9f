"""What the section builders are given: the run folder, where figures go, and the values more
than one section needs, computed once before any section is built (``Shared``).

A builder reads from these and returns its ``Section``; it writes to none of them, so the report
does not depend on the order the sections are built in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tooldistill.layout import ReportLayout, manifest
from tooldistill.report.document import Figure, Section
from tooldistill.report.sections.format import number, obj, pct
from tooldistill.report.sections.reading import LAYOUT, RunFolder, Unreadable

#: The teacher figure drawn as the ceiling: the mean share of sample pairs that agree, i.e. how often
#: one teacher sample matches another, which is what a student matching one reference sample can
#: at best expect.  ``all_agree`` (every sample the same) is stricter and shown beside it.
CEILING_FIGURE = "mean_pairwise_agreement"
#: The name the baseline goes by among the phases' test summaries.
BASELINE = "baseline"


def freeze(value: Any) -> Any:
    """A JSON value that cannot be changed: objects as read-only mappings, arrays as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


@dataclass(frozen=True)
class Shared:
    """The values several sections show, read once from the run folder (``shared_values``)."""

    #: the teacher's consistency ceiling (``CEILING_FIGURE``); None when not measured
    ceiling: float | None = None
    #: the ceiling's label in the match-rate plot
    ceiling_label: str = ""
    #: ``optimize/config.json`` (read-only); None when it is missing or unreadable
    optimize_config: Mapping[str, Any] | None = None
    #: the phases in the order the report lists them: the config's, then any other folder with a result
    phase_names: tuple[str, ...] = ()
    #: each measured test summary by phase name (``BASELINE`` for the baseline), read-only
    tests: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    #: the best phase: ``optimize/summary.json`` ``best_phase``, else the highest test rate
    best_phase: str | None = None

    @property
    def phase_configs(self) -> tuple[Mapping[str, Any], ...]:
        """The optimize config's phases that have a name."""
        phases = obj(self.optimize_config).get("phases")
        if not isinstance(phases, Sequence) or isinstance(phases, str):
            return ()
        return tuple(p for p in phases if isinstance(p, Mapping) and isinstance(p.get("name"), str))

    @property
    def data(self) -> Mapping[str, Any]:
        """The optimize config's datasets (``train``, ``val``, ``test``, ``curated``)."""
        return obj(obj(self.optimize_config).get("data"))


def teacher_summary(run: RunFolder) -> tuple[dict[str, Any] | None, str]:
    """The capture summary: ``teacher/summary.json``, else the one in the teacher manifest."""
    summary = run.json(LAYOUT.teacher_summary)
    if summary is not None:
        return summary, LAYOUT.teacher_summary
    teacher = run.dataset(LAYOUT.teacher)
    found = teacher.manifest.stats.get("summary") if teacher else None
    return (found, manifest(LAYOUT.teacher)) if isinstance(found, dict) else (None, "")


def teacher_ceiling(run: RunFolder) -> float | None:
    """The ceiling figure of the teacher's consistency; None when not measured or unreadable."""
    try:
        summary, _ = teacher_summary(run)
    except Unreadable:
        return None
    consistency = obj(obj(summary).get("consistency"))
    if not number(consistency.get("traces_with_samples")):
        return None
    ceiling = number(consistency.get(CEILING_FIGURE))
    if ceiling is None and CEILING_FIGURE != "all_agree":
        ceiling = number(obj(consistency.get("all_agree")).get("rate"))
    return ceiling


def measured_test(value: Any) -> Mapping[str, Any] | None:
    """The ``test`` summary of a baseline or phase result when it has a match rate."""
    test = obj(value).get("test")
    return test if isinstance(test, Mapping) and number(test.get("rate")) is not None else None


def shared_values(run: RunFolder) -> Shared:
    """Everything more than one section needs, each value computed here and only here."""
    ceiling = teacher_ceiling(run)
    optimize = LAYOUT.optimize
    try:
        config = run.json(optimize.config)
    except Unreadable:
        config = None
    shared = Shared(
        ceiling, f"teacher ceiling ({pct(ceiling)})", freeze(config) if config is not None else None
    )
    names = [p["name"] for p in shared.phase_configs]
    names += [n for n in run.children(optimize.root) if run.has(optimize.phase(n).result) and n not in names]
    tests: dict[str, Mapping[str, Any]] = {}
    for name, path in [(BASELINE, optimize.baseline)] + [(n, optimize.phase(n).result) for n in names]:
        try:
            test = measured_test(run.json(path))
        except Unreadable:
            test = None
        if test is not None:
            tests[name] = test
    try:
        best = obj(run.json(optimize.summary)).get("best_phase")
    except Unreadable:
        best = None
    if not isinstance(best, str):
        finished = [n for n in names if n in tests]
        best = max(finished, key=lambda n: float(tests[n]["rate"])) if finished else None
    return Shared(
        shared.ceiling,
        shared.ceiling_label,
        shared.optimize_config,
        tuple(names),
        freeze(tests),
        best,
    )


@dataclass(frozen=True)
class Context:
    """What every section builder is given; none of it is changed by a builder."""

    run: RunFolder
    #: the report folder: where figures are drawn
    report: ReportLayout
    shared: Shared

    def figure(self, path: str, draw: Callable[[Path], Path], alt: str, section: Section) -> None:
        """Draw one figure into the report folder and add it to the section (a failed plot is a
        note, the section's text stands)."""
        try:
            drawn = draw(Path(path))
        except Exception as error:  # a plot must never cost the report
            name = Path(path).name
            section.note(f"The figure {name} could not be drawn: {type(error).__name__}: {error}")
            return
        section.add(Figure(drawn, alt))
