"""Reading a run folder and turning each part of it into a report section.

Every section builder takes the ``Context`` and returns a ``Section``.  A part of the run that is
not there gives a short "not run in this run" line; a file that cannot be parsed gives a line that
says which file and why (``Unreadable``); neither raises.  Datasets are opened with
``tooldistill.store`` and only the columns a figure needs are read.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tooldistill import store
from tooldistill.report import figures
from tooldistill.report.document import (
    FAILED,
    NOT_RUN,
    PARTIAL,
    RENDERED,
    UNREADABLE,
    Code,
    Figure,
    Heading,
    Section,
    Table,
    Text,
)
from tooldistill.report.mask import mask, mask_text

#: The teacher figure drawn as the ceiling: the mean share of sample pairs that agree, i.e. how often
#: one teacher sample matches another, which is what a student matching one reference sample can
#: at best expect.  ``all_agree`` (every sample the same) is stricter and shown beside it.
CEILING_FIGURE = "mean_pairwise_agreement"
#: Tools shown by name in the confusion table; the rest are ``(other)``.
TOP_TOOLS = 8
NONE, OTHER, ERROR, UNKNOWN = "(none)", "(other)", "(error)", "(unknown)"
FIGURE_NAMES = ("funnel.png", "eps_curve.png", "cluster_sizes.png", "match_rates.png", "confusion.png")
DASH = "—"


class Unreadable(Exception):
    """A file of the run folder is there but cannot be used; ``str`` says which and why."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what} could not be read: {why}")
        self.what = what
        self.why = why


# ---------------------------------------------------------------------------------------------
# Reading the run folder
# ---------------------------------------------------------------------------------------------


class RunFolder:
    """Cached reads of a run folder by relative path, from one or more roots (local paths or
    ``s3://`` URIs, read through ``tooldistill.store``); the first root that has a file wins.

    A pipeline run into ``s3://`` keeps its plain files (``run.json``, ``optimize/``) in a local
    staging folder while it runs and its datasets in the bucket: the roots are then the staging
    folder and the bucket's run folder.
    """

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = list(roots)
        self._json: dict[str, Any] = {}

    def _info(self, root: str, rel: str) -> pafs.FileInfo | None:
        try:
            filesystem, path = store.resolve(store.join(root, rel))
            return filesystem.get_file_info(path)
        except (OSError, store.StoreError):
            return None

    def has(self, rel: str) -> bool:
        return any(
            (info := self._info(root, rel)) is not None and info.type != pafs.FileType.NotFound
            for root in self.roots
        )

    def children(self, rel: str) -> list[str]:
        """Names of the sub-folders of ``rel`` in any root, in natural order."""
        names: set[str] = set()
        for root in self.roots:
            try:
                filesystem, path = store.resolve(store.join(root, rel))
                infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            except (OSError, store.StoreError):
                continue
            names.update(i.base_name for i in infos if i.type == pafs.FileType.Directory)
        return sorted(names, key=natural)

    def json(self, rel: str, shape: type = dict) -> Any:
        """The parsed file; None when it does not exist; ``Unreadable`` when it cannot be parsed
        or is not a ``shape`` (dict or list)."""
        if rel not in self._json:
            self._json[rel] = self._load(rel, shape)
        found = self._json[rel]
        if isinstance(found, Unreadable):
            raise found
        return found

    def _load(self, rel: str, shape: type) -> Any:
        for root in self.roots:
            info = self._info(root, rel)
            if info is None or info.type == pafs.FileType.NotFound:
                continue
            try:
                value = json.loads(store.read_file(store.join(root, rel)).decode("utf-8"))
            except (store.StoreError, UnicodeDecodeError, ValueError) as error:
                return Unreadable(rel, f"{type(error).__name__}: {error}")
            if not isinstance(value, shape):
                return Unreadable(rel, f"expected a JSON {shape.__name__}, found {type(value).__name__}")
            return value
        return None

    def try_json(self, rel: str, problems: list[str], shape: type = dict) -> Any:
        """Like ``json`` but an unreadable file is added to ``problems`` and gives None."""
        try:
            return self.json(rel, shape)
        except Unreadable as error:
            problems.append(str(error))
            return None

    def dataset(self, rel: str) -> store.Dataset | None:
        """The store dataset at ``rel``; None without a manifest; ``Unreadable`` for a bad one."""
        for root in self.roots:
            found = open_dataset(store.join(root, rel), rel)
            if found is not None:
                return found
        return None


def open_dataset(uri: str, label: str) -> store.Dataset | None:
    """The dataset at ``uri`` (local or ``s3://``); None when there is none."""
    try:
        manifest = store.read_manifest(uri)
    except store.StoreError as error:
        raise Unreadable(f"{label}/{store.MANIFEST}", str(error)) from None
    return store.Dataset(uri, manifest) if manifest is not None else None


def read_columns(dataset: store.Dataset, columns: Sequence[str], label: str) -> pa.Table | None:
    """Only ``columns`` of every part; None when the dataset lacks one of them."""
    filesystem, paths = dataset.part_paths()
    try:
        if paths and not set(columns) <= set(pq.read_schema(paths[0], filesystem=filesystem).names):
            return None
        tables = [pq.read_table(p, filesystem=filesystem, columns=list(columns)) for p in paths]
    except (OSError, pa.ArrowException) as error:
        raise Unreadable(label, f"{type(error).__name__}: {error}") from None
    if not tables:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    return pa.concat_tables(tables)


@dataclass
class Context:
    run: RunFolder
    out: Path
    figures: list[Path] = field(default_factory=list)
    #: filled by the teacher section, drawn by the phases section
    ceiling: float | None = None
    ceiling_label: str = ""
    #: filled by the phases section, read by the confusion section
    best_phase: str | None = None
    optimize_config: dict[str, Any] | None = None

    def figure(self, name: str, draw: Callable[[Path], Path], alt: str, section: Section) -> None:
        """Draw one figure into the output folder and add it to the section (a failed plot is a
        note, the section's text stands)."""
        try:
            path = draw(self.out / name)
        except Exception as error:  # a plot must never cost the report
            section.note(f"The figure {name} could not be drawn: {type(error).__name__}: {error}")
            return
        self.figures.append(path)
        section.add(Figure(path, alt))


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def number(value: Any) -> float | None:
    """A finite int or float (not a bool); None otherwise."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value) if math.isfinite(value) else None


def _g(value: Any) -> str:
    n = number(value)
    return f"{n:g}" if n is not None else "?"


def count(value: Any) -> str:
    n = number(value)
    return f"{int(n):,}" if n is not None else DASH


def pct(value: Any) -> str:
    n = number(value)
    return f"{n * 100:.1f}%" if n is not None else DASH


def interval(ci: Any) -> str:
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(number(v) is not None for v in ci):
        return f"{ci[0] * 100:.1f}–{ci[1] * 100:.1f}%"
    return DASH


def dollars(value: Any) -> str:
    n = number(value)
    if n is None:
        return DASH
    return f"${n:,.4f}" if n < 100 else f"${n:,.2f}"


def duration(seconds: Any) -> str:
    s = number(seconds)
    if s is None:
        return DASH
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def when(value: Any) -> str:
    n = number(value)
    if n is not None:
        try:
            return datetime.fromtimestamp(n, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (OverflowError, OSError, ValueError):
            return str(value)
    return str(value) if value not in (None, "") else DASH


def compact(value: Any, limit: int = 160) -> str:
    """A short one-line view of a (masked) JSON value."""
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            shown = item if isinstance(item, str | int | float | bool) or item is None else json.dumps(item)
            parts.append(f"{key}={shown}")
        text = "; ".join(parts)
    else:
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def natural(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def obj(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (for nested reads of loose files)."""
    return value if isinstance(value, dict) else {}


def not_run(section: Section, why: str) -> Section:
    section.status = NOT_RUN
    return section.note(f"Not run in this run ({why}).")


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def stages_section(ctx: Context) -> Section:
    section = Section("stages", "Stages")
    info = ctx.run.json("run.json")
    if info is None:
        return not_run(section, "no run.json in the run folder")
    stages = info.get("stages")
    if not isinstance(stages, list) or not stages:
        return not_run(section, "run.json lists no stages")
    rows, total, bad = [], 0.0, 0
    for entry in stages:
        if not isinstance(entry, dict):
            bad += 1
            continue
        elapsed = number(entry.get("elapsed_s"))
        total += elapsed or 0.0
        detail = entry.get("detail")
        rows.append(
            [
                str(entry.get("stage", "?")),
                str(entry.get("status", "?")),
                duration(elapsed),
                compact(mask(detail)) if detail else "",
            ]
        )
    section.add(Table(["Stage", "Status", "Time", "Detail"], rows, {2}))
    statuses = Counter(r[1] for r in rows)
    section.add(
        Text(
            f"{len(rows)} stages, {duration(total)} in all: "
            + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
            + "."
        )
    )
    if bad:
        section.status = PARTIAL
        section.note(f"{bad} entries of run.json's stages are not objects and were left out.")
    return section


@dataclass
class Step:
    label: str
    value: int | None
    side: bool = False
    change: str = ""
    source: str = ""


def funnel_section(ctx: Context) -> Section:
    section = Section("funnel", "Data funnel")
    problems: list[str] = []
    funnel_json = ctx.run.try_json("curate/funnel.json", problems) or {}

    def manifest(rel: str) -> store.Manifest | None:
        try:
            found = ctx.run.dataset(rel)
        except Unreadable as error:
            problems.append(str(error))
            return None
        return found.manifest if found else None

    steps: list[Step] = []
    mismatches: list[str] = []

    def step(label: str, rel: str, value: int | None, funnel_key: str | None, **extra: Any) -> None:
        source = f"{rel}/manifest.json" if value is not None else ""
        fallback = number(funnel_json.get(funnel_key)) if funnel_key else None
        if value is None and fallback is not None:
            value, source = int(fallback), f"curate/funnel.json ({funnel_key})"
        elif value is not None and fallback is not None and int(fallback) != value:
            mismatches.append(
                f"{label}: the manifest says {value:,}, curate/funnel.json says {int(fallback):,}"
            )
        if value is not None:
            steps.append(Step(label, value, source=source, **extra))

    traces = manifest("traces")
    if traces is not None:
        dropped = int(number(traces.stats.get("duplicates_dropped")) or 0)
        repeated = f"{dropped:,} repeated ids dropped while reading" if dropped else ""
        step("Ingested", "traces", traces.rows, None, change=repeated)
        quarantined = "bad records set aside, not in the dataset"
        step("Quarantined", "traces", traces.quarantine.total, None, side=True, change=quarantined)
    teacher = manifest("teacher")
    if teacher is not None:
        step("Teacher answered", "teacher", teacher.rows, None, change="traces sent to Claude for samples")
    embedded = manifest("curate/embedded")
    empty = int(number(embedded.stats.get("empty_dropped")) or 0) if embedded else 0
    left_out = f"{empty:,} with an empty text view left out" if empty else ""
    step("Embedded", "curate/embedded", embedded.rows if embedded else None, "embedded", change=left_out)
    deduped = manifest("curate/deduped")
    dedup = deduped.stats if deduped else {}
    removed = number(dedup.get("duplicates"))
    at = f"SemDeDup at ε = {dedup.get('eps', '?')}" if deduped else ""
    duplicates = int(removed) if removed is not None else None
    step("Duplicates removed", "curate/deduped", duplicates, "duplicates", side=True, change=at)
    step("After SemDeDup", "curate/deduped", deduped.rows if deduped else None, "kept")
    curated = manifest("curate/curated")
    car = curated.stats if curated else {}
    rule = (
        f"top {car.get('per_cluster')} of each of {car.get('k')} clusters + top {car.get('top_overall')} overall"
        if curated
        else ""
    )
    step("Selected (CaR)", "curate/curated", curated.rows if curated else None, "selected", change=rule)
    split = manifest("curate/split")
    fractions = split.stats.get("fractions") if split else None
    for index, name in enumerate(("train", "val", "test")):
        part = manifest(f"curate/split/{name}")
        share = (
            f"target share {fractions[index]:g}"
            if isinstance(fractions, list) and len(fractions) == 3 and number(fractions[index]) is not None
            else ""
        )
        step(name.capitalize(), f"curate/split/{name}", part.rows if part else None, name, change=share)

    for problem in problems:
        section.note(problem)
    if not steps:
        if problems:
            section.status = UNREADABLE
            return section
        return not_run(section, "no traces/ dataset and no curate/ datasets")
    section.add(
        Table(
            ["Step", "Traces", "What happened", "From"],
            [[s.label, count(s.value), s.change, s.source] for s in steps],
            {1},
        )
    )
    ctx.figure(
        "funnel.png",
        lambda path: figures.funnel(path, [(s.label, int(s.value or 0), s.side) for s in steps]),
        "Data funnel: traces left after each step",
        section,
    )
    if traces is not None and traces.quarantine.by_reason:
        section.add(Heading("Quarantined records by reason"))
        section.add(
            Table(
                ["Reason", "Records"],
                [[k, count(v)] for k, v in sorted(traces.quarantine.by_reason.items(), key=lambda i: -i[1])],
                {1},
            )
        )
        if traces.quarantine.file:
            section.add(Text(f"The records and their reasons are in traces/{traces.quarantine.file}."))
    for line in mismatches:
        section.note(f"Mismatch: {line} (the manifest is shown).")
    have = {s.label for s in steps}
    missing = [
        s for s in ("Ingested", "Embedded", "After SemDeDup", "Selected (CaR)", "Test") if s not in have
    ]
    if missing:
        section.note("Not run in this run: " + ", ".join(missing) + ".")
    section.status = PARTIAL if (missing or problems) else RENDERED
    return section


def _dedup_decisions(ctx: Context, columns: Sequence[str]) -> pa.Table | None:
    decisions = ctx.run.dataset("curate/deduped/decisions")
    if decisions is None:
        return None
    return read_columns(decisions, columns, "curate/deduped/decisions")


def removal_curve(max_sim: np.ndarray, eps: Sequence[float]) -> np.ndarray:
    """The removal rate at each ε, as SemDeDup decides it: ``max_sim > 1 - ε`` (a cluster's first
    member, with no similarity, is never removed)."""
    sims = np.nan_to_num(max_sim.astype(np.float32), nan=-np.inf)
    if not len(sims):
        return np.zeros(len(eps))
    return np.array([float(np.mean(sims > 1.0 - e)) for e in eps])


def _deduped(ctx: Context, problems: list[str]) -> Any:
    """SemDeDup's output dataset, or None with the reason added to ``problems``."""
    try:
        return ctx.run.dataset("curate/deduped")
    except Unreadable as error:
        problems.append(str(error))
        return None


def eps_section(ctx: Context) -> Section:
    section = Section("eps_curve", "SemDeDup: removal rate vs ε")
    problems: list[str] = []
    deduped = _deduped(ctx, problems)
    stats = deduped.manifest.stats if deduped else {}
    rates = stats.get("removal_rates")
    source = "curate/deduped/manifest.json"
    if not isinstance(rates, dict):
        funnel_json = ctx.run.try_json("curate/funnel.json", problems) or {}
        rates, source = funnel_json.get("removal_rates"), "curate/funnel.json"
    recorded = sorted(
        (float(k), float(v)) for k, v in (rates or {}).items() if _is_float(k) and number(v) is not None
    )
    chosen = number(stats.get("eps"))
    total = number(stats.get("in"))
    curve = None
    try:
        decisions = _dedup_decisions(ctx, ["dedup_max_sim"])
    except Unreadable as error:
        problems.append(str(error))
        decisions = None
    if decisions is not None and decisions.num_rows:
        sims = decisions.column("dedup_max_sim").to_numpy(zero_copy_only=False)
        top = max([0.15, *[e * 1.2 for e, _ in recorded], (chosen or 0) * 1.2])
        grid = np.unique(np.concatenate([np.linspace(0.0, top, 301)[1:], [e for e, _ in recorded]]))
        curve = (grid, removal_curve(sims, grid.tolist()))
        total = total or decisions.num_rows
        if recorded:
            check = removal_curve(sims, [e for e, _ in recorded])
            off = [f"ε={e:g}" for (e, r), c in zip(recorded, check, strict=True) if abs(r - c) > 1e-5]
            if off:
                section.note(
                    "The per-trace similarities in curate/deduped/decisions give other rates than the "
                    f"manifest records at {', '.join(off)}; the decisions may be from another run."
                )
    for problem in problems:
        section.note(problem)
    if not recorded and curve is None:
        if problems:
            section.status = UNREADABLE
            return section
        return not_run(section, "no SemDeDup output in curate/deduped")
    rows = []
    for e, r in recorded:
        removed = f"{round(r * total):,}" if total else DASH
        rows.append(
            [
                f"{e:g}" + (" (used)" if chosen is not None and abs(e - chosen) < 1e-12 else ""),
                pct(r),
                removed,
            ]
        )
    if rows:
        section.add(Table(["ε", "Removed", "Traces removed"], rows, {1, 2}))
        section.add(
            Text(f"Recorded rates from {source}, as a share of the {count(total)} traces SemDeDup read.")
        )
    if curve is not None:
        section.add(
            Text(
                "The curve is computed from every trace's highest similarity to a better-ranked trace "
                "of its cluster (curate/deduped/decisions, column dedup_max_sim), which does not depend on ε."
            )
        )
    ctx.figure(
        "eps_curve.png",
        lambda path: figures.eps_curve(path, recorded, chosen, curve),
        "SemDeDup removal rate against ε",
        section,
    )
    section.status = PARTIAL if problems else RENDERED
    return section


def _is_float(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def clusters_section(ctx: Context) -> Section:
    section = Section("clusters", "SemDeDup cluster sizes")
    problems: list[str] = []
    deduped = _deduped(ctx, problems)
    stats = deduped.manifest.stats if deduped else {}
    table = None
    try:
        table = _dedup_decisions(ctx, ["dedup_cluster", "kept"])
    except Unreadable as error:
        problems.append(str(error))
    source = "curate/deduped/decisions (every trace SemDeDup read)"
    if table is None and deduped is not None:
        table = read_columns(deduped, ["dedup_cluster"], "curate/deduped")
        source = "curate/deduped (kept traces only: the decisions dataset is missing)"
    for problem in problems:
        section.note(problem)
    if table is None or not table.num_rows:
        if problems:
            section.status = UNREADABLE
            return section
        return not_run(section, "no SemDeDup output with a dedup_cluster column")
    labels = table.column("dedup_cluster").to_numpy(zero_copy_only=False).astype(np.int64)
    k = int(number(stats.get("k")) or 0)
    sizes = np.bincount(labels, minlength=max(k, int(labels.max()) + 1))
    dropped = None
    if "kept" in table.column_names:
        kept = np.asarray(table.column("kept").to_pylist(), dtype=bool)
        dropped = np.bincount(labels, weights=(~kept).astype(np.float64), minlength=len(sizes)).astype(
            np.int64
        )
    section.add(
        Text(
            f"{int(sizes.sum()):,} traces in {len(sizes)} clusters: sizes {int(sizes.min()):,}–"
            f"{int(sizes.max()):,}, mean {sizes.mean():.1f}, median {float(np.median(sizes)):g}. From {source}."
        )
    )
    recorded = stats.get("cluster_sizes")
    if isinstance(recorded, dict) and (recorded.get("min"), recorded.get("max")) != (
        int(sizes.min()),
        int(sizes.max()),
    ):
        section.note(
            f"The manifest records cluster sizes {compact(recorded)}, the per-trace clusters give others."
        )
    if number(stats.get("halo_rows")):
        section.add(
            Text(
                f"Boundary halo: {count(stats.get('halo_rows'))} traces near a cluster boundary were also "
                f"compared across it ({count(stats.get('halo_groups'))} boundary groups)."
            )
        )
    order = np.argsort(-sizes, kind="stable")[:10]
    rows = [
        [str(int(c)), count(sizes[c])]
        + ([count(dropped[c]), count(sizes[c] - dropped[c])] if dropped is not None else [])
        for c in order
    ]
    headers = ["Cluster", "Traces"] + (["Duplicates removed", "Kept"] if dropped is not None else [])
    section.add(Heading("Largest clusters" if len(sizes) > 10 else "Clusters"))
    section.add(Table(headers, rows, set(range(1, len(headers)))))
    ctx.figure(
        "cluster_sizes.png",
        lambda path: figures.cluster_sizes(path, sizes, dropped),
        "SemDeDup cluster sizes",
        section,
    )
    section.status = PARTIAL if problems else RENDERED
    return section


def teacher_summary(ctx: Context) -> tuple[dict[str, Any] | None, str]:
    """The capture summary: ``teacher/summary.json``, else the one in the teacher manifest."""
    summary = ctx.run.json("teacher/summary.json")
    if summary is not None:
        return summary, "teacher/summary.json"
    teacher = ctx.run.dataset("teacher")
    found = teacher.manifest.stats.get("summary") if teacher else None
    return (found, "teacher/manifest.json") if isinstance(found, dict) else (None, "")


def teacher_section(ctx: Context) -> Section:
    section = Section("teacher", "Teacher consistency ceiling")
    summary, source = teacher_summary(ctx)
    consistency = obj(summary).get("consistency")
    if (
        summary is None
        or not isinstance(consistency, dict)
        or not number(consistency.get("traces_with_samples"))
    ):
        section.status = NOT_RUN
        if summary is None:
            return section.note("Not measured (no teacher samples in this run).")
        return section.note(
            f"Not measured (the teacher gave {summary.get('samples_per_trace', '?')} sample(s) per trace; "
            "the ceiling needs at least two)."
        )
    pairwise = number(consistency.get("mean_pairwise_agreement"))
    agree, reference = obj(consistency.get("all_agree")), obj(consistency.get("consensus_equals_reference"))
    ceiling = number(consistency.get(CEILING_FIGURE))
    if ceiling is None and CEILING_FIGURE != "all_agree":
        ceiling = number(agree.get("rate"))
    ctx.ceiling = ceiling
    ctx.ceiling_label = f"teacher ceiling ({pct(ceiling)})"
    section.add(
        Text(
            f"How often Claude ({summary.get('model', '?')}) agrees with itself across "
            f"{_g(consistency.get('samples_per_trace'))} samples per trace (chain match), over "
            f"{count(consistency.get('traces_with_samples'))} traces; from {source}. A student cannot be "
            "expected to match the teacher more often than the teacher matches itself."
        )
    )
    section.add(
        Table(
            ["Figure", "Value", "95% interval"],
            [
                ["Two samples agree (mean pairwise agreement): the ceiling", pct(pairwise), DASH],
                ["All samples of a trace agree", pct(agree.get("rate")), interval(agree.get("ci95"))],
                [
                    "The majority answer equals the reference",
                    pct(reference.get("rate")),
                    interval(reference.get("ci95")),
                ],
                ["Mean support of the majority answer", pct(consistency.get("mean_consensus_support")), DASH],
                ["Traces whose majority is a tie", count(consistency.get("ties")), DASH],
            ],
            {1},
        )
    )
    return section


@dataclass
class PhaseRow:
    name: str
    label: str
    short: str
    method: str
    train: str
    test: dict[str, Any] | None = None
    problem: str | None = None


def config_dataset(ctx: Context, uri: Any, fallback: str) -> tuple[store.Dataset | None, str | None]:
    """A dataset the optimize config names (local or s3://), else the run folder's ``fallback``
    (the folder was moved, or the named path is not reachable from here); and what went wrong."""
    problem = None
    if isinstance(uri, str) and uri:
        try:
            found = open_dataset(uri, uri)
        except Unreadable as error:
            found, problem = None, str(error)
        if found is not None:
            return found, None
    try:
        found = ctx.run.dataset(fallback)
    except Unreadable as error:
        return None, str(error)
    if found is None:
        problem = problem or f"neither {uri or '(not named)'} nor {fallback} is a dataset here"
    return found, None if found is not None else problem


def _dataset_rows(ctx: Context, uri: Any, fallback: str) -> int | None:
    found, _ = config_dataset(ctx, uri, fallback)
    return found.manifest.rows if found is not None else None


def _phase_configs(ctx: Context, problems: list[str]) -> list[dict[str, Any]]:
    config = ctx.run.try_json("optimize/config.json", problems)
    ctx.optimize_config = config if isinstance(config, dict) else None
    phases = config.get("phases") if isinstance(config, dict) else None
    return (
        [p for p in phases if isinstance(p, dict) and isinstance(p.get("name"), str)]
        if isinstance(phases, list)
        else []
    )


DSPY_OPTIMIZERS = {
    "bootstrap": "BootstrapFewShot",
    "random_search": "BootstrapFewShotWithRandomSearch",
    "mipro": "MIPROv2",
}


def _describe(index: int, config: Mapping[str, Any], kind: str | None) -> tuple[str, str, str]:
    """(row label, short plot label, method) of a phase."""
    kind = str(config.get("kind") or kind or "?")
    curated = config.get("select") == "car"
    short = {"dspy": "DSPy", "gepa": "GEPA", "finetune": "LoRA"}.get(kind, kind) + (
        ", curated" if curated else ""
    )
    if kind == "dspy":
        method = (
            f"DSPy {DSPY_OPTIMIZERS.get(str(config.get('optimizer', 'bootstrap')), config.get('optimizer'))}"
        )
    elif kind == "gepa":
        method = "GEPA instruction search"
    elif kind == "finetune":
        method = "LoRA distillation of the weights (TRL + PEFT on Ray Train)"
    else:
        method = kind
    if curated:
        method += " on the CaR-best train traces"
    return f"Phase {index} ({short})", f"Phase {index}\n({short})", method


def _train_count(ctx: Context, config: Mapping[str, Any], result: Mapping[str, Any] | None) -> str:
    cap = number(config.get("train")) if config else None
    if cap is None and result:
        cap = number(result.get("train"))
    if cap is None:
        return DASH
    data = (ctx.optimize_config or {}).get("data") or {}
    if config.get("select") == "car" and data.get("curated"):
        rows = _dataset_rows(ctx, data.get("curated"), "curate/curated")
    else:
        rows = _dataset_rows(ctx, data.get("train"), "curate/split/train")
    return count(min(int(cap), rows)) if rows is not None else f"≤ {int(cap):,}"


def phases_section(ctx: Context) -> Section:
    section = Section("phases", "Match rate per phase")
    if not ctx.run.has("optimize"):
        return not_run(section, "no optimize/ folder")
    problems: list[str] = []
    configs = _phase_configs(ctx, problems)
    baseline = ctx.run.try_json("optimize/baseline.json", problems)
    summary = ctx.run.try_json("optimize/summary.json", problems)
    names = [p["name"] for p in configs]
    folders = [n for n in ctx.run.children("optimize") if ctx.run.has(f"optimize/{n}/result.json")]
    names += [n for n in folders if n not in names]
    by_name = {p["name"]: p for p in configs}
    rows: list[PhaseRow] = []
    base_test = (
        baseline.get("test")
        if isinstance(baseline, dict) and isinstance(baseline.get("test"), dict)
        else None
    )
    rows.append(
        PhaseRow(
            "baseline",
            "Baseline",
            "Baseline",
            "seed prompt",
            DASH,
            base_test,
            None if base_test else "not measured (no optimize/baseline.json)",
        )
    )
    unfinished = 0
    for index, name in enumerate(names, start=1):
        config = by_name.get(name, {})
        result: Any = None
        problem = None
        try:
            result = ctx.run.json(f"optimize/{name}/result.json")
        except Unreadable as error:
            problem = str(error)
        if result is None and problem is None:
            problem = (
                "not finished (no result.json)" if ctx.run.has(f"optimize/{name}") else "not run in this run"
            )
        label, short, method = _describe(index, config, result.get("kind") if result else None)
        test = result.get("test") if result and isinstance(result.get("test"), dict) else None
        if result is not None and test is None:
            problem = f"optimize/{name}/result.json has no test summary"
        unfinished += problem is not None
        rows.append(PhaseRow(name, label, short, method, _train_count(ctx, config, result), test, problem))

    base_rate = number(base_test.get("rate")) if base_test else None
    # the tool-name chain measured beside the optimized mode, when the run has it
    names_column = any(obj(obj(r.test).get("also")).get("names") for r in rows if r.test)

    def names_cell(test: Mapping[str, Any] | None) -> list[str]:
        if not names_column:
            return []
        names = obj(obj(test).get("also")).get("names")
        if not isinstance(names, dict) or number(names.get("rate")) is None:
            return [DASH]
        return [f"{pct(names['rate'])} {interval(names.get('ci95'))}"]

    table_rows = []
    for row in rows:
        if row.test is None or number(row.test.get("rate")) is None:
            table_rows.append(
                [
                    row.label,
                    f"{row.method}: {row.problem or 'no match rate'}",
                    row.train,
                    DASH,
                    DASH,
                    DASH,
                    DASH,
                    *([DASH] if names_column else []),
                ]
            )
            continue
        rate = float(row.test["rate"])
        delta = DASH if row.name == "baseline" or base_rate is None else f"{(rate - base_rate) * 100:+.1f} pp"
        table_rows.append(
            [
                row.label,
                row.method,
                row.train,
                count(row.test.get("n")),
                pct(rate),
                interval(row.test.get("ci95")),
                delta,
                *names_cell(row.test),
            ]
        )
    section.add(
        Table(
            ["", "Method", "Train examples", "Test n", "Match rate", "95% interval", "Δ vs baseline",
             *(["Tool names (95%)"] if names_column else [])],
            table_rows,
            {2, 3, 4, 6},
        )
    )  # fmt: skip
    if names_column:
        section.add(
            Text(
                "Tool names: the same answers judged on the tool-name chain alone (the right tools in "
                "the right order, arguments not compared), beside the optimized match mode."
            )
        )
    measured = [r for r in rows if r.test is not None and number(r.test.get("rate")) is not None]
    _context_text(rows, section)
    sizes = {r.test.get("n") for r in measured if r.test is not None}
    if len(sizes) > 1:
        section.note("The rows were measured on test sets of different sizes; compare them with care.")
    section.add(
        Text(
            "Match rate: the share of test traces whose student calls match the reference in the "
            "optimizer's match mode; the interval is the Wilson 95% score interval. Train examples: "
            "the traces the phase learned from (its cap, or fewer when the split is smaller)."
        )
    )
    best = summary.get("best_phase") if isinstance(summary, dict) else None
    if not isinstance(best, str):
        finished = [r for r in measured if r.name != "baseline"]
        best = (
            max(finished, key=lambda r: float(r.test["rate"]) if r.test else 0.0).name if finished else None
        )
    ctx.best_phase = best
    if best:
        section.add(Text(f"Best phase: {best} (its prompt is the exported artifact below)."))
    if ctx.ceiling is not None:
        section.add(Text(f"Teacher consistency ceiling: {pct(ctx.ceiling)} (see the teacher section)."))
    else:
        section.add(Text("Teacher consistency ceiling: not measured (no teacher samples in this run)."))
    if measured:
        points = [(r.short, float(r.test["rate"]), *_ci(r.test)) for r in measured if r.test is not None]
        ctx.figure(
            "match_rates.png",
            lambda path: figures.match_rates(path, points, ctx.ceiling, ctx.ceiling_label),
            "Match rate per phase with 95% intervals",
            section,
        )
    _finetune_rows(ctx, names, section, problems)
    search = _search_rows(ctx, names, by_name, problems)
    if search:
        section.add(Heading("Search per phase"))
        section.add(
            Table(
                [
                    "Phase",
                    "Candidates",
                    "Pareto front",
                    "Seed val score",
                    "Best val score",
                    "Metric calls",
                    "Time",
                ],
                search,
                {1, 2, 3, 4, 5, 6},
            )
        )
    for problem in problems:
        section.note(problem)
    if not measured:
        section.status = (
            UNREADABLE
            if problems or any(r.problem and "could not be read" in r.problem for r in rows)
            else NOT_RUN
        )
        if section.status == NOT_RUN:
            section.note("Not run in this run (no phase finished and no baseline was measured).")
    else:
        section.status = PARTIAL if (problems or unfinished or base_test is None) else RENDERED
    return section


def _context_text(rows: Sequence[PhaseRow], section: Section) -> None:
    """What the context policy cut on the test traces, per phase that cut or skipped any."""
    parts = []
    for row in rows:
        context = obj(obj(row.test).get("context"))
        if not context.get("cut") and not context.get("skipped"):
            continue
        share = number(context.get("median_share_cut"))
        parts.append(
            f"{row.short}: {count(context.get('cut'))} cut"
            + (
                f" (median {pct(share)} of their tokens, at most {pct(context.get('max_share_cut'))})"
                if share is not None
                else ""
            )
            + f", {count(context.get('skipped') or 0)} skipped as too long"
        )
    if parts:
        section.add(
            Text(
                "Context policy (test traces longer than the student's window: old tool results "
                "shortened first, then older turns; a trace that cannot fit is skipped, not scored): "
                + "; ".join(parts)
                + "."
            )
        )


def _bytes(value: Any) -> str:
    size = number(value)
    return DASH if size is None else f"{size / 1e6:.1f} MB"


def _finetune_rows(ctx: Context, names: Sequence[str], section: Section, problems: list[str]) -> None:
    """The finetune phases: what they trained on, how long, the final loss, the adapter; and the
    loss curves."""
    rows, curves = [], []
    for name in names:
        if not ctx.run.has(f"optimize/{name}/finetune.json"):
            continue
        record = ctx.run.try_json(f"optimize/{name}/finetune.json", problems)
        if not isinstance(record, dict):
            continue
        examples, training, adapter = (obj(record.get(k)) for k in ("examples", "training", "adapter"))
        rows.append(
            [
                name,
                f"{count(examples.get('examples'))} ({count(examples.get('calls'))} calls, "
                f"{count(examples.get('no_calls'))} no-call)",
                count(examples.get("tokens")),
                count(training.get("steps")),
                duration(training.get("train_seconds")),
                f"{number(training.get('tokens_per_s')) or 0:.0f}",
                _g(training.get("final_loss")),
                _bytes(adapter.get("adapter_bytes")),
                mask_text(str(record.get("served_model", "?"))),
            ]
        )
        curve = [e for e in training.get("loss_curve") or [] if isinstance(e, dict)]
        if curve:
            curves.append((name, [int(e["step"]) for e in curve], [float(e["loss"]) for e in curve]))
        left = obj(examples.get("left_out"))
        if left:
            section.note(
                f"{name}: left out of training: " + ", ".join(f"{k}: {v}" for k, v in sorted(left.items()))
            )
    if not rows:
        return
    section.add(Heading("Weight distillation"))
    section.add(
        Table(
            ["Phase", "Train examples", "Tokens", "Steps", "Training time", "Tokens/s", "Final loss",
             "Adapter", "Served as"],
            rows,
            {2, 3, 4, 5, 6, 7},
        )
    )  # fmt: skip
    if curves:
        ctx.figure(
            "loss_curve.png",
            lambda path: figures.loss_curves(path, curves),
            "Training loss per step of the finetune phases",
            section,
        )


def _ci(test: Mapping[str, Any]) -> tuple[float, float]:
    ci = test.get("ci95")
    rate = float(test["rate"])
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(number(v) is not None for v in ci):
        return float(ci[0]), float(ci[1])
    return rate, rate


def _search_rows(
    ctx: Context, names: Sequence[str], configs: Mapping[str, Mapping[str, Any]], problems: list[str]
) -> list[list[str]]:
    rows = []
    for name in names:
        folder = f"optimize/{name}"
        if not ctx.run.has(folder):
            continue
        result = ctx.run.try_json(f"{folder}/result.json", [])
        kind = configs.get(name, {}).get("kind") or (result or {}).get("kind")
        elapsed = duration((result or {}).get("elapsed_s")) if result else DASH
        if kind == "finetune":  # no search: its table is "Weight distillation"
            continue
        if kind != "gepa":
            demos = (result or {}).get("demo_messages")
            rows.append(
                [
                    name,
                    f"DSPy: {count(demos)} demo messages" if demos is not None else DASH,
                    DASH,
                    DASH,
                    DASH,
                    DASH,
                    elapsed,
                ]
            )
            continue
        candidates: Any = None
        try:
            candidates = ctx.run.json(f"{folder}/candidates.json")
        except Unreadable as error:
            problems.append(str(error))
            candidates = "unreadable"
        progress = ctx.run.try_json(f"{folder}/progress.json", problems) or {}
        calls = (
            f"{count(progress.get('metric_calls'))} (budget {count(progress.get('max_metric_calls'))})"
            if progress
            else DASH
        )
        if candidates == "unreadable":
            rows.append([name, "could not be read", DASH, DASH, DASH, calls, elapsed])
            continue
        if not isinstance(candidates, dict) or not isinstance(candidates.get("candidates"), list):
            rows.append([name, "no candidates.json", DASH, DASH, DASH, calls, elapsed])
            continue
        items = [c for c in candidates["candidates"] if isinstance(c, dict)]
        scores = [number(c.get("val_score")) for c in items]
        known = [s for s in scores if s is not None]
        front = candidates.get("pareto_front")
        rows.append(
            [
                name,
                count(len(items)),
                count(len(front)) if isinstance(front, list) else DASH,
                f"{scores[0]:.3f}" if scores and scores[0] is not None else DASH,
                f"{max(known):.3f}" if known else DASH,
                calls,
                elapsed,
            ]
        )
    return rows


def _first_tool(calls: Any) -> str:
    if isinstance(calls, list) and calls and isinstance(calls[0], dict) and calls[0].get("name"):
        return str(calls[0]["name"])
    return NONE


def confusion_section(ctx: Context) -> Section:
    section = Section("confusion", "Per-tool confusion (best phase)")
    best = ctx.best_phase
    if not best:
        return not_run(section, "no optimize phase finished")
    report = ctx.run.json(f"optimize/{best}/test.json")
    if report is None:
        return not_run(section, f"no optimize/{best}/test.json")
    outcomes = report.get("outcomes")
    if not isinstance(outcomes, list):
        raise Unreadable(f"optimize/{best}/test.json", "it has no list of outcomes")
    outcomes = [o for o in outcomes if isinstance(o, dict)]
    data = (ctx.optimize_config or {}).get("data") or {}
    expected_of: dict[str, str] = {}
    dataset, dataset_note = config_dataset(ctx, data.get("test"), "curate/split/test")
    if dataset is not None:
        table = read_columns(dataset, ["id", "reference_calls"], dataset.uri)
        if table is None:
            dataset_note = f"{dataset.uri} has no reference_calls column"
        else:
            ids, calls = table.column("id").to_pylist(), table.column("reference_calls").to_pylist()
            expected_of = {str(i): _first_tool(c) for i, c in zip(ids, calls, strict=True)}
    pairs = []
    for outcome in outcomes:
        expected = expected_of.get(str(outcome.get("trace_id")), UNKNOWN)
        called = ERROR if outcome.get("error") else _first_tool(outcome.get("calls"))
        pairs.append((expected, called, bool(outcome.get("match"))))
    if not pairs:
        return not_run(section, f"optimize/{best}/test.json has no outcomes")
    special = (NONE, OTHER, ERROR, UNKNOWN)
    totals = Counter(e for e, _, _ in pairs) + Counter(c for _, c, _ in pairs)
    named = [t for t, _ in sorted(totals.items(), key=lambda i: (-i[1], i[0])) if t not in special][
        :TOP_TOOLS
    ]

    def label(tool: str) -> str:
        return tool if tool in named or tool in special else OTHER

    cells = Counter((label(e), label(c)) for e, c, _ in pairs)
    matched = Counter(label(e) for e, _, m in pairs if m)
    present = {t for pair in cells for t in pair}
    order = named + [s for s in special if s in present]
    expected_rows = [t for t in order if any(cells[(t, c)] for c in order)]
    called_cols = [t for t in order if any(cells[(e, t)] for e in order)]
    rows = []
    for e in expected_rows:
        total = sum(cells[(e, c)] for c in called_cols)
        rows.append([e] + [str(cells[(e, c)]) for c in called_cols] + [str(total), str(matched[e])])
    section.add(
        Text(
            f"{best} on the test split: {len(pairs)} traces. Rows: the first tool of the reference calls; "
            "columns: the first tool the student called; (none): no call, (error): the request failed, "
            f"(other): tools beyond the {TOP_TOOLS} most frequent. Matched: full matches (tool and arguments)."
        )
    )
    section.add(
        Table(
            ["Expected \\ called", *called_cols, "Total", "Matched"],
            rows,
            set(range(1, len(called_cols) + 3)),
        )
    )
    n = number((report.get("summary") or {}).get("n")) if isinstance(report.get("summary"), dict) else None
    if n is not None and int(n) != len(pairs):
        section.note(f"test.json's summary counts {int(n)} traces but holds {len(pairs)} outcomes.")
    if dataset_note or UNKNOWN in present:
        section.note(
            "Expected tools unknown for some traces: "
            + (dataset_note or "their ids are not in the test split")
            + "."
        )
    matrix = np.array([[cells[(e, c)] for c in called_cols] for e in expected_rows])
    ctx.figure(
        "confusion.png",
        lambda path: figures.confusion(path, expected_rows, called_cols, matrix),
        "Per-tool confusion: expected against called tool",
        section,
    )
    section.status = PARTIAL if (dataset_note or UNKNOWN in present) else RENDERED
    return section


def cost_section(ctx: Context) -> Section:
    section = Section("cost", "Cost")
    problems: list[str] = []
    rows: list[list[str]] = []
    dollars_total = 0.0
    have = 0
    try:
        teacher, _ = teacher_summary(ctx)
    except Unreadable as error:
        teacher = None
        problems.append(str(error))
    if teacher is not None:
        have += 1
        spent = number(teacher.get("cost_usd"))
        requests, tokens = obj(teacher.get("requests")), obj(teacher.get("tokens"))
        detail = (
            f"{count(requests.get('answered'))} answers from {teacher.get('model', '?')}, "
            f"{count(tokens.get('input_tokens'))} input and {count(tokens.get('output_tokens'))} output tokens"
        )
        now = number(teacher.get("cost_usd_now"))
        if now is not None and spent is not None and abs(now - spent) > 1e-9:
            detail += f"; {dollars(now)} of it paid in this run, the rest came from the request cache"
        if spent is None:
            detail += "; no price known for this model"
        dollars_total += spent or 0.0
        rows.append(["Teacher (Claude)", dollars(spent) if spent is not None else "unknown", detail])
    else:
        rows.append(["Teacher (Claude)", DASH, "not run in this run (no teacher/summary.json)"])
    reflection_total, reflection_seen = 0.0, False
    if ctx.run.has("optimize"):
        names = ctx.run.children("optimize")
        for name in names:
            usage = ctx.run.try_json(f"optimize/{name}/reflection.json", problems)
            source = "reflection.json"
            if usage is None:
                progress = ctx.run.try_json(f"optimize/{name}/progress.json", problems)
                if not isinstance(progress, dict) or number(progress.get("reflection_usd")) is None:
                    continue
                usage, source = (
                    {"usd": progress["reflection_usd"]},
                    "progress.json (the phase did not finish)",
                )
            usd = number(usage.get("usd"))
            reflection_seen = True
            reflection_total += usd or 0.0
            rows.append(
                [
                    f"Reflection, {name}",
                    dollars(usd),
                    f"calls: {count(usage.get('calls'))}, {count(usage.get('tokens_in'))} input and "
                    f"{count(usage.get('tokens_out'))} output tokens; optimize/{name}/{source}",
                ]
            )
    if reflection_seen:
        have += 1
        dollars_total += reflection_total
        rows.append(["Reflection, all phases", dollars(reflection_total), ""])
    else:
        rows.append(["Reflection", DASH, "no reflection model ran in this run (no GEPA phase)"])
    for name in ctx.run.children("optimize"):
        if not ctx.run.has(f"optimize/{name}/finetune.json"):
            continue
        record = ctx.run.try_json(f"optimize/{name}/finetune.json", problems)
        training = obj(record.get("training")) if isinstance(record, dict) else {}
        train_s = number(training.get("train_seconds"))
        if train_s is None:
            continue
        device = str(training.get("device") or "cpu")
        workers = number(training.get("workers")) or 1
        rows.append(
            [
                f"Training, {name}",
                f"{train_s * workers / 3600:.3f} {device.upper()} h",
                f"{count(workers)} Ray Train worker(s) for {duration(train_s)}; optimize/{name}/finetune.json",
            ]
        )
    student = ctx.run.try_json("student.json", problems)
    if isinstance(student, dict):
        have += 1
        hours = number(student.get("gpu_hours"))
        seconds, replicas, gpus = (
            number(student.get(k)) for k in ("serve_seconds", "replicas", "gpus_per_replica")
        )
        how = "from student.json"
        if hours is None and None not in (seconds, replicas, gpus):
            hours = float(seconds or 0) * float(replicas or 0) * float(gpus or 0) / 3600
            how = "serve time × replicas × GPUs per replica"
        rows.append(
            [
                "Student serving",
                f"{hours:.2f} GPU h" if hours is not None else DASH,
                f"{count(replicas)} replicas × {count(gpus)} GPUs, served {duration(seconds)} ({how})",
            ]
        )
    else:
        rows.append(["Student serving", DASH, "not run in this run (no student.json)"])
    if have:
        rows.append(
            ["Dollars in all (teacher + reflection)", dollars(dollars_total), "GPU hours are not priced here"]
        )
    section.add(Table(["Item", "Amount", "Detail"], rows, {1}))
    if isinstance(student, dict):
        section.add(
            Text(
                f"Student: {mask_text(str(student.get('model', '?')))} at {mask_text(str(student.get('endpoint', '?')))}, "
                f"profile {student.get('profile', '?')}, from {when(student.get('started'))} to {when(student.get('stopped'))}."
            )
        )
        engine = student.get("cpu_engine")
        if isinstance(engine, dict):
            threads = obj(engine.get("threads"))
            section.add(
                Text(
                    f"Engine on CPU ({engine.get('cpu', '?')}): {engine.get('dtype', '?')}, "
                    f"{engine.get('reason', '?')}; {count(max(threads.values(), default=None))} threads "
                    f"per replica of {count(engine.get('cores'))} cores."
                )
            )
    for problem in problems:
        section.note(problem)
    if not have:
        section.status = UNREADABLE if problems else NOT_RUN
    else:
        section.status = PARTIAL if problems or have < 3 else RENDERED
    return section


def _demo_text(demos: Sequence[Any]) -> str:
    lines = []
    for number_, message in enumerate(demos, start=1):
        if not isinstance(message, dict):
            lines.append(f"--- {number_} · (not a message)")
            continue
        role = str(message.get("role", "?"))
        head = f"--- {number_} · {role}"
        if message.get("tool_call_id"):
            head += f" (result of {message['tool_call_id']})"
        lines.append(head)
        content = message.get("content")
        if content:
            lines.append(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                lines.append(f"→ {function.get('name')}({function.get('arguments')})")
            else:
                lines.append(f"→ {json.dumps(call, ensure_ascii=False)}")
    return "\n".join(lines)


def prompt_section(ctx: Context) -> Section:
    section = Section("prompt", "Exported prompt")
    prompt = ctx.run.json("optimize/best/prompt.json")
    if prompt is None:
        return not_run(section, "no optimize/best/prompt.json")
    system = prompt.get("system")
    demos = prompt.get("demos") if isinstance(prompt.get("demos"), list) else []
    if not isinstance(system, str):
        raise Unreadable("optimize/best/prompt.json", "it has no system text")
    shots = sum(1 for d in demos if isinstance(d, dict) and d.get("role") == "assistant")
    section.add(
        Text(
            f"optimize/best/prompt.json{f' (from {ctx.best_phase})' if ctx.best_phase else ''}: "
            f"{len(system):,} characters of system text and {len(demos)} few-shot messages "
            f"({shots} demonstrations). tooldistill evaluate --prompt and the student take this file as it is."
        )
    )
    section.add(Heading("System text"), Code(system))
    section.add(Heading("Few-shot messages"))
    section.add(Code(_demo_text(demos)) if demos else Text("None."))
    section.add(Code(json.dumps(prompt, indent=2, ensure_ascii=False), summary="prompt.json as exported"))
    return section


def config_section(ctx: Context) -> Section:
    section = Section("config", "Run config")
    info = ctx.run.json("run.json")
    config = info.get("config") if isinstance(info, dict) else None
    if not isinstance(config, dict):
        return not_run(section, "run.json has no config" if info else "no run.json")
    section.add(
        Code(
            json.dumps(mask(config), indent=2, ensure_ascii=False),
            summary="run.json config (secrets shown as ***)",
        )
    )
    return section


BUILDERS: list[tuple[str, str, Callable[[Context], Section]]] = [
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


def build_section(key: str, title: str, builder: Callable[[Context], Section], ctx: Context) -> Section:
    """One section; an unreadable input or an unexpected error becomes the section's only line."""
    try:
        return builder(ctx)
    except Unreadable as error:
        return Section(key, title, UNREADABLE).note(str(error))
    except Exception as error:  # the report must come out whatever one section meets
        return Section(key, title, FAILED).note(
            f"This section could not be rendered: {type(error).__name__}: {mask_text(str(error))}"
        )
