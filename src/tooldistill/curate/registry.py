"""The curation stages, in the order they run: one entry per stage, and nothing else to edit.

Each entry names the stage, the options model its config section holds (``curate.<name>`` in a
pipeline config), its run function (the typed config, made by ``options.config(dataset=, out=)``,
to a ``StageResult``), the folder of its output under the curate folder, whether it is optional
(off unless its section is written), and how the funnel shows it: the row of what it kept and one
row per reason traces went (keys of its manifest's stats).

Everything that knows the curation stages loops over ``STAGES``: ``tooldistill run`` and
``tooldistill curate all`` (one orchestrator, ``tooldistill.curate.chain``), the config's
``curate`` section (``tooldistill.config.CurateSection`` is built from it), the run layout
(``CurateLayout.outputs``), the run lock's check of stage outputs, the report's funnel and
``docs/pipeline.md``'s stage table (``stage_table``, checked by a test).

To add a stage: its module (an options model with ``config(dataset=, out=)``, a config with
``config_hash()``, a run function returning a ``StageResult`` whose stats hold ``in`` and one count
per reason in ``went``), one entry here, its test.  A stage that judges one trace at a time uses
``tooldistill.curate.rows.filter_rows`` and runs through the runner, not in the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tooldistill.curate.car import CarOptions, run_car
from tooldistill.curate.embed import EmbedOptions, ensure_embedded
from tooldistill.curate.length import LengthOptions, run_length
from tooldistill.curate.runner import Runner
from tooldistill.curate.semdedup import SemDedupOptions, run_semdedup
from tooldistill.curate.split import SPLITS, SplitOptions, run_split
from tooldistill.stage import StageResult


@dataclass(frozen=True)
class StageContext:
    """What every curation stage may use besides its config."""

    runner: Runner
    show_progress: bool = True


@dataclass(frozen=True)
class Went:
    """One reason traces left a stage: the key of its count in the stage's stats (and in
    ``funnel.json``), and the funnel's row for it."""

    key: str
    label: str
    #: A row even when the count is 0 (the reason is the stage's point).
    always: bool = False


def _no_note(stats: dict[str, Any]) -> str:
    return ""


@dataclass(frozen=True)
class CurateStage:
    #: The stage's name: its config section (``curate.<name>``), its name in ``run.json`` and
    #: ``--from``/``--until``.
    name: str
    #: Its output's folder under the curate folder.
    folder: str
    #: The options model its config section holds.
    options: type[BaseModel]
    #: The stage: its typed config (``options.config(dataset=, out=)``) to its result.
    run: Callable[[Any, StageContext], StageResult]
    #: The funnel's row for what the stage kept, and the key of that count in ``funnel.json``.
    label: str
    kept_key: str
    #: Why the others went, as the funnel shows it.
    went: tuple[Went, ...] = ()
    #: The "what happened" text of the kept row, from the stage's stats.
    note: Callable[[dict[str, Any]], str] = _no_note
    #: Off unless the config writes its section (``curate.<name>``); an optional stage's options
    #: may have required fields.
    optional: bool = False
    #: Datasets inside the output that are outputs too (the split's parts), each a funnel row.
    parts: tuple[str, ...] = ()
    #: One line for the stage table of ``docs/pipeline.md``.
    summary: str = ""


def _embed(config: Any, ctx: StageContext) -> StageResult:
    return ensure_embedded(config, ctx.runner)


def _semdedup(config: Any, ctx: StageContext) -> StageResult:
    return run_semdedup(config, ctx.runner, ctx.show_progress)


def _length(config: Any, ctx: StageContext) -> StageResult:
    return run_length(config, ctx.runner)


def _car(config: Any, ctx: StageContext) -> StageResult:
    return run_car(config, ctx.show_progress)


def _split(config: Any, ctx: StageContext) -> StageResult:
    return run_split(config, ctx.show_progress)


def _car_rule(stats: dict[str, Any]) -> str:
    return f"top {stats.get('per_cluster')} of each of {stats.get('k')} clusters + top {stats.get('top_overall')} overall"


STAGES: tuple[CurateStage, ...] = (
    CurateStage(
        "embed", "embedded", EmbedOptions, _embed, "Embedded", "embedded",
        went=(Went("empty_dropped", "Empty text view"),),
        summary="a text view of every trace, embedded with sentence-transformers (skipped when the "
        "input has embeddings)",
    ),
    CurateStage(
        "semdedup", "deduped", SemDedupOptions, _semdedup, "After SemDeDup", "kept",
        went=(
            Went("duplicates", "Duplicates removed", always=True),
            Went("repeated_ids_dropped", "Repeated ids (SemDeDup)"),
        ),
        note=lambda stats: f"SemDeDup at ε = {stats.get('eps', '?')}",
        summary="near-duplicates removed (FAISS k-means, one survivor per group within ε)",
    ),
    CurateStage(
        "length", "fitting", LengthOptions, _length, "Fit the window", "fit",
        went=(Went("too_long", "Too long for the window", always=True),),
        note=lambda stats: f"window {stats.get('window')} tokens, {stats.get('max_tokens')} for the answer",
        optional=True,
        summary="optional: traces the student's window cannot hold after the context policy's cuts "
        "dropped and counted",
    ),
    CurateStage(
        "car", "curated", CarOptions, _car, "Selected (CaR)", "selected",
        went=(Went("not_selected", "Not selected (CaR)"), Went("repeated_ids_dropped", "Repeated ids (CaR)")),
        note=_car_rule,
        summary="the best traces per cluster and overall by quality (CaR)",
    ),
    CurateStage(
        "split", "split", SplitOptions, _split, "Split", "split", parts=SPLITS,
        summary="train, val and test, stratified by cluster and first tool",
    ),
)  # fmt: skip

NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def stage(name: str) -> CurateStage:
    """The entry called ``name``."""
    for entry in STAGES:
        if entry.name == name:
            return entry
    raise KeyError(f"no curation stage {name!r}; stages: {', '.join(NAMES)}")


def stage_table() -> str:
    """The curation stages as a Markdown table (``docs/pipeline.md`` holds it; a test compares)."""
    rows = ["| stage | config section | output (under `RUN/curate/`) | what it does |", "|---|---|---|---|"]
    for entry in STAGES:
        output = f"`{entry.folder}/`" + "".join(f", `{entry.folder}/{p}/`" for p in entry.parts)
        rows.append(f"| {entry.name} | `curate.{entry.name}` | {output} | {entry.summary} |")
    return "\n".join(rows)
