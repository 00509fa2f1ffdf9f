"""``curate all``: embed → SemDeDup → CaR → split into one folder, and the funnel in numbers.

``out`` is laid out as ``tooldistill.layout.CurateLayout`` names it: the embedded traces, SemDeDup's
output and decisions, CaR's selection and decisions, the split with its three parts.  Each stage
is skipped when its input and options are unchanged, so a re-run after changing, say,
``top_overall`` recomputes only CaR and the split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tooldistill import store
from tooldistill.curate.car import CarConfig, run_car
from tooldistill.curate.common import has_column, open_traces
from tooldistill.curate.embed import EmbedOptions, embed
from tooldistill.curate.runner import Runner
from tooldistill.curate.semdedup import SemDedupConfig, run_semdedup
from tooldistill.curate.split import SplitConfig, run_split
from tooldistill.layout import CurateLayout, parent_and_name
from tooldistill.stage import StageResult


@dataclass
class EmbedResult(StageResult):
    #: False when the input already had embeddings and no embed stage ran
    ran: bool = True


def ensure_embedded(
    dataset: str, out: str, options: EmbedOptions | dict[str, Any], runner: Runner, force: bool = False
) -> EmbedResult:
    """The dataset itself when it has an ``embedding`` column; otherwise embed it into ``out``
    (``force`` or the options' own ``force`` embeds it again)."""
    source = open_traces(dataset)
    if has_column(source, "embedding"):
        return EmbedResult(source, skipped=True, stats=dict(source.manifest.stats), ran=False)
    if isinstance(options, dict):
        options = EmbedOptions.model_validate(options)
    config = options.config(dataset=dataset, out=out)
    result = embed(config.model_copy(update={"force": config.force or force}), runner)
    return EmbedResult(result.dataset, result.skipped, result.stats)


@dataclass
class CurateAllResult:
    embedded: EmbedResult
    deduped: StageResult
    curated: StageResult
    split: StageResult

    def funnel(self) -> dict[str, Any]:
        return funnel(
            self.embedded.dataset.manifest, self.deduped.stats, self.curated.stats, self.split.stats
        )


def funnel(
    embedded: store.Manifest, dedup: dict[str, Any], car: dict[str, Any], split: dict[str, Any]
) -> dict[str, Any]:
    """The data funnel in numbers, from the embedded manifest and the later stages' stats.

    A figure a stage did not record (an older run folder) is None, not an error.
    """
    return {
        "in": embedded.stats.get("in", embedded.rows),
        "empty_dropped": embedded.stats.get("empty_dropped", 0),
        "embedded": embedded.rows,
        "duplicates": dedup.get("duplicates"),
        "kept": dedup.get("kept"),
        "selected": car.get("selected"),
        "train": split.get("train"),
        "val": split.get("val"),
        "test": split.get("test"),
        "removal_rates": dedup.get("removal_rates"),
    }


def write_funnel(out: str, numbers: dict[str, Any]) -> str:
    """Write the funnel (``funnel(...)``) as ``funnel.json`` of the curate folder ``out``; its URI."""
    folder, name = parent_and_name(CurateLayout(out).funnel)
    return store.write_file(folder, name, json.dumps(numbers, indent=2).encode())


def curate_all(
    dataset: str,
    out: str,
    runner: Runner,
    *,
    embed_options: dict[str, Any] | None = None,
    semdedup_options: dict[str, Any] | None = None,
    car_options: dict[str, Any] | None = None,
    split_options: dict[str, Any] | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> CurateAllResult:
    layout = CurateLayout(out)
    embedded = ensure_embedded(dataset, layout.embedded, embed_options or {}, runner, force)
    deduped = run_semdedup(
        SemDedupConfig(
            dataset=embedded.dataset.uri,
            out=layout.deduped,
            force=force,
            **(semdedup_options or {}),
        ),
        runner,
        show_progress,
    )
    curated = run_car(
        CarConfig(dataset=deduped.dataset.uri, out=layout.curated, force=force, **(car_options or {})),
        show_progress,
    )
    split = run_split(
        SplitConfig(dataset=curated.dataset.uri, out=layout.split, force=force, **(split_options or {})),
        show_progress,
    )
    return CurateAllResult(embedded, deduped, curated, split)
