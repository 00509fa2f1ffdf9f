"""Reading a run folder and turning each part of it into a report section.

Every section builder takes the ``Context`` (the run folder, the report folder, and the values
several sections share, computed once up front by ``shared_values``) and returns a ``Section``;
no builder writes to the context, so the sections come out the same whatever order they are
built in.  A part of the run that is not there gives a short "not run in this run" line; a file
that cannot be parsed gives a line that says which file and why (``Unreadable``); neither raises.
Datasets are opened with ``tooldistill.store`` and only the columns a figure needs are read.
Every path comes from ``tooldistill.layout``.

Modules: ``reading`` (the run folder), ``format`` (numbers and text), ``context`` (what the
builders are given), ``run`` (stages, exported prompt, run config), ``data`` (funnel, ε curve,
clusters), ``teacher``, ``phases`` (+ ``finetune``), ``confusion``, ``cost``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tooldistill.layout import ReportLayout
from tooldistill.report.document import FAILED, UNREADABLE, Figure, Section
from tooldistill.report.mask import mask_text
from tooldistill.report.sections.confusion import ERROR, NONE, OTHER, TOP_TOOLS, UNKNOWN, confusion_section
from tooldistill.report.sections.context import (
    BASELINE,
    CEILING_FIGURE,
    Context,
    Shared,
    freeze,
    shared_values,
    teacher_ceiling,
    teacher_summary,
)
from tooldistill.report.sections.cost import cost_section
from tooldistill.report.sections.data import (
    Step,
    clusters_section,
    eps_section,
    funnel_section,
    removal_curve,
)
from tooldistill.report.sections.format import (
    DASH,
    compact,
    count,
    dollars,
    duration,
    errors,
    interval,
    natural,
    not_run,
    number,
    obj,
    pct,
    rate_text,
    when,
)
from tooldistill.report.sections.phases import DSPY_OPTIMIZERS, PhaseRow, phases_section
from tooldistill.report.sections.reading import (
    LAYOUT,
    RunFolder,
    Unreadable,
    config_dataset,
    open_dataset,
    read_columns,
)
from tooldistill.report.sections.run import config_section, prompt_section, stage_detail, stages_section
from tooldistill.report.sections.teacher import teacher_section

#: The file names of the figures a report may draw.
FIGURE_NAMES = tuple(Path(path).name for path in ReportLayout("").figures)

Builder = Callable[[Context], Section]

BUILDERS: list[tuple[str, str, Builder]] = [
    ("stages", "Stages", stages_section),
    ("funnel", "Data funnel", funnel_section),
    ("eps_curve", "SemDeDup: removal rate vs ε", eps_section),
    ("clusters", "SemDeDup cluster sizes", clusters_section),
    ("teacher", "Teacher consistency ceiling", teacher_section),
    ("phases", "Match rate per phase", phases_section),
    ("confusion", "Per-tool confusion (best phase)", confusion_section),
    ("cost", "Cost", cost_section),
    ("prompt", "Exported prompt", prompt_section),
    ("config", "Run config", config_section),
]


def build_section(key: str, title: str, builder: Builder, ctx: Context) -> Section:
    """One section; an unreadable input or an unexpected error becomes the section's only line."""
    try:
        return builder(ctx)
    except Unreadable as error:
        return Section(key, title, UNREADABLE).note(str(error))
    except Exception as error:  # the report must come out whatever one section meets
        return Section(key, title, FAILED).note(
            f"This section could not be rendered: {type(error).__name__}: {mask_text(str(error))}"
        )


def make_context(run: RunFolder, out: str | Path) -> Context:
    """The context every builder gets: the shared values are computed here, once."""
    return Context(run, ReportLayout(str(out)), shared_values(run))


def build_sections(ctx: Context, builders: Sequence[tuple[str, str, Builder]] = BUILDERS) -> list[Section]:
    """Every section, in the order of ``builders``."""
    return [build_section(key, title, builder, ctx) for key, title, builder in builders]


def figures_of(sections: Sequence[Section]) -> list[Path]:
    """The figures the sections hold, in the order they appear."""
    return [block.path for section in sections for block in section.blocks if isinstance(block, Figure)]


__all__ = [
    "BASELINE", "BUILDERS", "CEILING_FIGURE", "DASH", "DSPY_OPTIMIZERS", "ERROR", "FIGURE_NAMES", "LAYOUT",
    "NONE", "OTHER", "TOP_TOOLS", "UNKNOWN", "Builder", "Context", "PhaseRow", "RunFolder", "Shared", "Step",
    "Unreadable", "build_section", "build_sections", "clusters_section", "compact", "config_dataset",
    "config_section", "confusion_section", "cost_section", "count", "dollars", "duration", "eps_section",
    "errors", "figures_of", "freeze", "funnel_section", "interval", "make_context", "natural", "not_run",
    "number", "obj", "open_dataset", "pct", "phases_section", "prompt_section", "rate_text", "read_columns",
    "removal_curve", "shared_values", "stage_detail", "stages_section", "teacher_ceiling", "teacher_section",
    "teacher_summary", "when",
]  # fmt: skip
