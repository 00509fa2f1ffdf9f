"""The one curation orchestrator: the registry's stages in order, each on the one before's output.

``tooldistill run`` (its curate part) and ``tooldistill curate all`` both call ``run_chain``; the
run passes a ``step`` hook that records each stage in ``run.json`` and honours ``--from`` and
``--until``.  Each stage is skipped on its own when its input and options are unchanged (the
stage's fingerprint), so a re-run after changing, say, ``car.top_overall`` recomputes only CaR and
the split.  An optional stage whose section is not in the config is left out: the next stage reads
the previous one's output.

``funnel.json`` (written after the last stage) holds every stage's figures in ``stages`` (``in``,
``kept`` and why the others went, by reason) and, flat, the counts by their keys (``embedded``,
``duplicates``, ``kept``, ``selected``, ``train``, ...), as the report and earlier readers take them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tooldistill import store
from tooldistill.curate.registry import STAGES, CurateStage, StageContext
from tooldistill.layout import CurateLayout, parent_and_name
from tooldistill.stage import StageResult

#: How the caller runs one stage: ``step(entry, out, work)`` returns ``work()``'s result, the
#: stage's earlier result, or None when the stage is not run (``--until`` stops before it).
Step = Callable[[CurateStage, str, Callable[[], StageResult]], "StageResult | None"]


@dataclass
class ChainResult:
    """Every stage's result by name (optional stages left out are absent) and the funnel."""

    results: dict[str, StageResult]
    funnel: dict[str, Any]
    #: Each stage's input dataset by name.
    inputs: dict[str, str]

    @property
    def last(self) -> StageResult:
        return list(self.results.values())[-1]

    @property
    def skipped(self) -> list[str]:
        return [name for name, result in self.results.items() if result.skipped]


def section_options(section: Any, entry: CurateStage) -> BaseModel | None:
    """The options a config's ``curate`` section (or a mapping of them) holds for ``entry``; None
    for an optional stage that is not configured."""
    value = section.get(entry.name) if isinstance(section, dict) else getattr(section, entry.name, None)
    if value is None:
        return None if entry.optional else entry.options()
    return value if isinstance(value, entry.options) else entry.options.model_validate(value)


def run_chain(
    source: str,
    out: str,
    section: Any,
    ctx: StageContext,
    *,
    step: Step | None = None,
    left_out: Callable[[CurateStage], None] | None = None,
    force: bool = False,
) -> ChainResult | None:
    """The curation stages on ``source`` into the curate folder ``out``; None when ``step`` left a
    stage out (the funnel needs them all).  ``section``: the config's ``curate`` section or a dict
    of options by stage name; ``left_out`` hears of each optional stage that is not configured;
    ``force`` runs every stage even when up to date."""
    layout = CurateLayout(out)
    results: dict[str, StageResult] = {}
    inputs: dict[str, str] = {}
    current, stopped = source, False
    # every stage's options checked before the first stage runs: a typo in the last one's must
    # not wait for the embedding to finish
    chosen = [(entry, section_options(section, entry)) for entry in STAGES]
    for entry, options in chosen:
        if options is None:
            if left_out is not None:
                left_out(entry)
            continue
        if force:
            options = options.model_copy(update={"force": True})
        target = layout.output(entry.name)

        def work(
            entry: CurateStage = entry, options: Any = options, dataset: str = current, target: str = target
        ) -> StageResult:
            return entry.run(options.config(dataset=dataset, out=target), ctx)

        inputs[entry.name] = current
        result = step(entry, target, work) if step is not None else work()
        if result is None:
            stopped = True
            continue
        results[entry.name] = result
        current = result.uri
    if stopped or not results:
        return None
    numbers = funnel(results, inputs)
    write_funnel(out, numbers)
    return ChainResult(results, numbers, inputs)


def _rows(uri: str) -> int | None:
    try:
        return store.Dataset.open(uri).manifest.rows
    except store.StoreError:
        return None


def funnel(results: dict[str, StageResult], inputs: dict[str, str]) -> dict[str, Any]:
    """The data funnel in numbers from every stage's result (a figure a stage did not record, in an
    older run folder, is None)."""
    stages: list[dict[str, Any]] = []
    flat: dict[str, Any] = {}
    for entry in STAGES:
        result = results.get(entry.name)
        if result is None:
            continue
        stats = result.stats
        came = stats.get("in", _rows(inputs[entry.name]) if entry.name in inputs else None)
        went = {w.key: stats.get(w.key) for w in entry.went}
        record = {"stage": entry.name, "in": came, "kept": result.rows, "went": went}
        for part in entry.parts:
            record[part] = stats.get(part)
        stages.append(record)
        flat.setdefault("in", came)
        flat[entry.kept_key] = result.rows
        for key, value in went.items():
            flat.setdefault(key, value)
        for part in entry.parts:
            flat[part] = stats.get(part)
        if "removal_rates" in stats:
            flat["removal_rates"] = stats["removal_rates"]
    return {**flat, "stages": stages}


def write_funnel(out: str, numbers: dict[str, Any]) -> str:
    """``funnel.json`` of the curate folder ``out``; its URI."""
    folder, name = parent_and_name(CurateLayout(out).funnel)
    return store.write_file(folder, name, json.dumps(numbers, indent=2).encode())
