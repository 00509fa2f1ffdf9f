"""The sections about the data: the funnel from ingest to the split, SemDeDup's ε curve and its
cluster sizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from tooldistill import store
from tooldistill.curate import registry as curate_registry
from tooldistill.layout import manifest
from tooldistill.report import figures
from tooldistill.report.document import PARTIAL, RENDERED, UNREADABLE, Heading, Section, Table, Text
from tooldistill.report.sections.context import Context
from tooldistill.report.sections.format import DASH, compact, count, not_run, number, pct
from tooldistill.report.sections.reading import LAYOUT, RunFolder, Unreadable, read_columns

FOLDERS = LAYOUT.curate


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
    funnel_json = ctx.run.try_json(FOLDERS.funnel, problems) or {}

    def dataset_manifest(rel: str) -> store.Manifest | None:
        try:
            found = ctx.run.dataset(rel)
        except Unreadable as error:
            problems.append(str(error))
            return None
        return found.manifest if found else None

    steps: list[Step] = []
    mismatches: list[str] = []

    def step(label: str, rel: str, value: int | None, funnel_key: str | None, **extra: Any) -> None:
        source = manifest(rel) if value is not None else ""
        fallback = number(funnel_json.get(funnel_key)) if funnel_key else None
        if value is None and fallback is not None:
            value, source = int(fallback), f"{FOLDERS.funnel} ({funnel_key})"
        elif value is not None and fallback is not None and int(fallback) != value:
            mismatches.append(
                f"{label}: the manifest says {value:,}, {FOLDERS.funnel} says {int(fallback):,}"
            )
        if value is not None:
            steps.append(Step(label, value, source=source, **extra))

    traces = dataset_manifest(LAYOUT.traces)
    if traces is not None:
        dropped = int(number(traces.stats.get("duplicates_dropped")) or 0)
        repeated = f"{dropped:,} repeated ids dropped while reading" if dropped else ""
        step("Ingested", LAYOUT.traces, traces.rows, None, change=repeated)
        quarantined = "bad records set aside, not in the dataset"
        step("Quarantined", LAYOUT.traces, traces.quarantine.total, None, side=True, change=quarantined)
    teacher = dataset_manifest(LAYOUT.teacher)
    if teacher is not None:
        step(
            "Teacher answered", LAYOUT.teacher, teacher.rows, None, change="traces sent to Claude for samples"
        )
    stages = {r.get("stage"): r for r in funnel_json.get("stages") or [] if isinstance(r, dict)}
    for entry in curate_registry.STAGES:
        rel = FOLDERS.output(entry.name)
        found = dataset_manifest(rel)
        if found is None and entry.optional and entry.name not in stages:
            continue  # an optional stage this run did not have
        stats = found.stats if found else (stages.get(entry.name) or {}).get("went") or {}
        for went in entry.went:
            value = number(stats.get(went.key))
            if value is not None and (value or went.always):
                step(went.label, rel, int(value), went.key, side=True)
            elif found is None:
                step(went.label, rel, None, went.key, side=True)
        if not entry.parts:
            note = entry.note(found.stats) if found else ""
            step(entry.label, rel, found.rows if found else None, entry.kept_key, change=note)
            continue
        fractions = found.stats.get("fractions") if found else None
        for index, name in enumerate(entry.parts):
            part = dataset_manifest(store.join(rel, name))
            share = (
                f"target share {fractions[index]:g}"
                if isinstance(fractions, list) and len(fractions) == len(entry.parts)
                and number(fractions[index]) is not None
                else ""
            )  # fmt: skip
            step(name.capitalize(), store.join(rel, name), part.rows if part else None, name, change=share)

    for problem in problems:
        section.note(problem)
    if not steps:
        if problems:
            section.status = UNREADABLE
            return section
        return not_run(section, f"no {LAYOUT.traces}/ dataset and no {FOLDERS.root}/ datasets")
    section.add(
        Table(
            ["Step", "Traces", "What happened", "From"],
            [[s.label, count(s.value), s.change, s.source] for s in steps],
            {1},
        )
    )
    ctx.figure(
        ctx.report.funnel_figure,
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
            where = LAYOUT.quarantine(traces.quarantine.file)
            section.add(Text(f"The records and their reasons are in {where}."))
    for line in mismatches:
        section.note(f"Mismatch: {line} (the manifest is shown).")
    have = {s.label for s in steps}
    expected = ["Ingested"] + [
        e.parts[-1].capitalize() if e.parts else e.label for e in curate_registry.STAGES if not e.optional
    ]
    missing = [label for label in expected if label not in have]
    if missing:
        section.note("Not run in this run: " + ", ".join(missing) + ".")
    section.status = PARTIAL if (missing or problems) else RENDERED
    return section


def _dedup_decisions(run: RunFolder, columns: Sequence[str]) -> pa.Table | None:
    decisions = run.dataset(FOLDERS.dedup_decisions)
    if decisions is None:
        return None
    return read_columns(decisions, columns, FOLDERS.dedup_decisions)


def removal_curve(max_sim: np.ndarray, eps: Sequence[float]) -> np.ndarray:
    """The removal rate at each ε, as SemDeDup decides it: ``max_sim > 1 - ε`` (a cluster's first
    member, with no similarity, is never removed)."""
    sims = np.nan_to_num(max_sim.astype(np.float32), nan=-np.inf)
    if not len(sims):
        return np.zeros(len(eps))
    return np.array([float(np.mean(sims > 1.0 - e)) for e in eps])


def _deduped(run: RunFolder, problems: list[str]) -> Any:
    """SemDeDup's output dataset, or None with the reason added to ``problems``."""
    try:
        return run.dataset(FOLDERS.deduped)
    except Unreadable as error:
        problems.append(str(error))
        return None


def eps_section(ctx: Context) -> Section:
    section = Section("eps_curve", "SemDeDup: removal rate vs ε")
    problems: list[str] = []
    deduped = _deduped(ctx.run, problems)
    stats = deduped.manifest.stats if deduped else {}
    rates = stats.get("removal_rates")
    source = manifest(FOLDERS.deduped)
    if not isinstance(rates, dict):
        funnel_json = ctx.run.try_json(FOLDERS.funnel, problems) or {}
        rates, source = funnel_json.get("removal_rates"), FOLDERS.funnel
    recorded = sorted(
        (float(k), float(v)) for k, v in (rates or {}).items() if _is_float(k) and number(v) is not None
    )
    chosen = number(stats.get("eps"))
    total = number(stats.get("in"))
    curve = None
    try:
        decisions = _dedup_decisions(ctx.run, ["dedup_max_sim"])
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
                    f"The per-trace similarities in {FOLDERS.dedup_decisions} give other rates than the "
                    f"manifest records at {', '.join(off)}; the decisions may be from another run."
                )
    for problem in problems:
        section.note(problem)
    if not recorded and curve is None:
        if problems:
            section.status = UNREADABLE
            return section
        return not_run(section, f"no SemDeDup output in {FOLDERS.deduped}")
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
                f"of its cluster ({FOLDERS.dedup_decisions}, column dedup_max_sim), which does not depend on ε."
            )
        )
    ctx.figure(
        ctx.report.eps_figure,
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
    deduped = _deduped(ctx.run, problems)
    stats = deduped.manifest.stats if deduped else {}
    table = None
    try:
        table = _dedup_decisions(ctx.run, ["dedup_cluster", "kept"])
    except Unreadable as error:
        problems.append(str(error))
    source = f"{FOLDERS.dedup_decisions} (every trace SemDeDup read)"
    if table is None and deduped is not None:
        table = read_columns(deduped, ["dedup_cluster"], FOLDERS.deduped)
        source = f"{FOLDERS.deduped} (kept traces only: the decisions dataset is missing)"
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
        ctx.report.clusters_figure,
        lambda path: figures.cluster_sizes(path, sizes, dropped),
        "SemDeDup cluster sizes",
        section,
    )
    section.status = PARTIAL if problems else RENDERED
    return section
