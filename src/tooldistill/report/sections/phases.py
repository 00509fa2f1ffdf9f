"""The match rate per phase: the baseline and every optimize phase on the test split, each rate
with its interval and endpoint errors, the plot against the teacher ceiling, and each phase's
search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tooldistill.report import figures
from tooldistill.report.document import NOT_RUN, PARTIAL, RENDERED, UNREADABLE, Heading, Section, Table, Text
from tooldistill.report.sections.context import BASELINE, Context
from tooldistill.report.sections.finetune import finetune_rows, reward_rows
from tooldistill.report.sections.format import (
    DASH,
    count,
    duration,
    file_name,
    interval,
    not_run,
    number,
    obj,
    p_value,
    pct,
    points,
    points_interval,
)
from tooldistill.report.sections.reading import LAYOUT, Unreadable, dataset_rows

OPTIMIZE = LAYOUT.optimize


@dataclass
class PhaseRow:
    name: str
    label: str
    short: str
    method: str
    train: str
    test: Mapping[str, Any] | None = None
    problem: str | None = None


DSPY_OPTIMIZERS = {
    "bootstrap": "BootstrapFewShot",
    "random_search": "BootstrapFewShotWithRandomSearch",
    "mipro": "MIPROv2",
}


#: What each match mode compares, as the table's headers and text name it.
MODE_NAMES = {"chain": "full chain", "names": "tool names", "set": "call set", "bfcl": "BFCL checker"}
MODE_TEXT = {
    "chain": "the full chain, the same calls in the same order with the same arguments",
    "names": "the tool names alone, the same tools as many times each, arguments and order not compared",
    "set": "the calls as a set, the same calls with the same arguments in any order",
    "bfcl": "the BFCL checker's rules, each argument against its acceptable values",
}


def _mode_name(mode: str) -> str:
    return MODE_NAMES.get(mode, mode)


def _describe(name: str, config: Mapping[str, Any], kind: str | None) -> tuple[str, str, str]:
    """(row label, short plot label, method) of a phase: labelled by its configured name and kind,
    as the rest of the report names it (``phase2 (finetune)``)."""
    kind = str(config.get("kind") or kind or "?")
    curated = config.get("select") == "car"
    short = kind + (", curated" if curated else "")
    if kind == "dspy":
        method = (
            f"DSPy {DSPY_OPTIMIZERS.get(str(config.get('optimizer', 'bootstrap')), config.get('optimizer'))}"
        )
    elif kind == "gepa":
        method = "GEPA instruction search"
    elif kind == "finetune":
        method = "LoRA distillation of the weights (TRL + PEFT on Ray Train)"
    elif kind == "reward":
        method = "GRPO on the weights, rewarded by the match verdict (TRL + PEFT on Ray Train)"
    elif kind == "dicl":
        method = "the teacher's nearest train examples as each request's demonstrations (MiniLM + FAISS)"
    else:
        method = kind
    if curated:
        method += " on the CaR-best train traces"
    return f"{name} ({short})", f"{name}\n({short})", method


def _train_count(ctx: Context, config: Mapping[str, Any], result: Mapping[str, Any] | None) -> str:
    cap = number(config.get("train")) if config else None
    if cap is None and result:
        cap = number(result.get("train"))
    if cap is None:
        return DASH
    if (
        (config.get("source") == "pool" or config.get("offset"))
        and result
        and number(result.get("train")) is not None
    ):
        return count(int(result["train"]))  # past the split or past an offset: what the phase found
    data = ctx.shared.data
    if config.get("select") == "car" and data.get("curated"):
        rows = dataset_rows(ctx.run, data.get("curated"), LAYOUT.curate.curated)
    else:
        rows = dataset_rows(ctx.run, data.get("train"), LAYOUT.curate.train)
    return count(min(int(cap), rows)) if rows is not None else f"≤ {int(cap):,}"


def _rows(ctx: Context, problems: list[str]) -> tuple[list[PhaseRow], int]:
    """The baseline's row and one per phase; and how many phases did not finish."""
    baseline = ctx.run.try_json(OPTIMIZE.baseline, problems)
    base_test = obj(baseline).get("test") if isinstance(obj(baseline).get("test"), Mapping) else None
    rows = [
        PhaseRow(
            BASELINE,
            "Baseline",
            "Baseline",
            "seed prompt",
            DASH,
            base_test,
            None if base_test else f"not measured (no {OPTIMIZE.baseline})",
        )
    ]
    by_name = {p["name"]: p for p in ctx.shared.phase_configs}
    unfinished = 0
    for name in ctx.shared.phase_names:
        phase = OPTIMIZE.phase(name)
        config = by_name.get(name, {})
        result: Any = None
        problem = None
        try:
            result = ctx.run.json(phase.result)
        except Unreadable as error:
            problem = str(error)
        if result is None and problem is None:
            problem = (
                f"not finished (no {file_name(phase.result)})"
                if ctx.run.has(phase.root)
                else "not run in this run"
            )
        label, short, method = _describe(name, config, result.get("kind") if result else None)
        test = result.get("test") if result and isinstance(result.get("test"), dict) else None
        if result is not None and test is None:
            problem = f"{phase.result} has no test summary"
        unfinished += problem is not None
        rows.append(PhaseRow(name, label, short, method, _train_count(ctx, config, result), test, problem))
    return rows, unfinished


def _errors_cell(test: Mapping[str, Any]) -> str:
    errors = number(test.get("errors"))
    return count(errors) if errors is not None else DASH


def _versus_cells(row: PhaseRow, rate: float, base_rate: float | None) -> tuple[str, str]:
    """(Δ vs baseline, McNemar p) of a row: the paired comparison where the phase recorded one
    (``test.vs_baseline``), else the plain difference of the rates."""
    if row.name == BASELINE or base_rate is None:
        return DASH, DASH
    paired = obj(obj(row.test).get("vs_baseline"))
    if number(paired.get("difference")) is None:
        return f"{(rate - base_rate) * 100:+.1f} pp", DASH
    counts = f" ({count(paired.get('gained'))} gained, {count(paired.get('lost'))} lost)"
    span = points_interval(paired.get("ci95"))
    return points(paired.get("difference")) + span + counts, p_value(paired.get("p_value"))


def phases_section(ctx: Context) -> Section:
    section = Section("phases", "Match rate per phase")
    if not ctx.run.has(OPTIMIZE.root):
        return not_run(section, f"no {OPTIMIZE.root}/ folder")
    problems: list[str] = []
    ctx.run.try_json(OPTIMIZE.config, problems)  # only to say so when it cannot be read
    rows, unfinished = _rows(ctx, problems)
    ctx.run.try_json(OPTIMIZE.summary, problems)
    base_test = rows[0].test
    base_rate = number(base_test.get("rate")) if base_test else None
    student = obj(obj(ctx.shared.optimize_config).get("student"))
    mode = student.get("mode") if isinstance(student.get("mode"), str) else None
    also = _also_modes(rows, mode, student.get("also_modes"))

    def also_cells(test: Mapping[str, Any] | None) -> list[str]:
        """The same answers judged in each mode measured beside the optimized one."""
        cells = []
        for other in also:
            summary = obj(obj(test).get("also")).get(other)
            if not isinstance(summary, Mapping) or number(summary.get("rate")) is None:
                cells.append(DASH)
            else:
                ci = interval(summary.get("ci95"))
                cells.append(pct(summary["rate"]) + (f" {ci}" if ci != DASH else ""))
        return cells

    table_rows = []
    for row in rows:
        if row.test is None or number(row.test.get("rate")) is None:
            table_rows.append(
                [row.label, f"{row.method}: {row.problem or 'no match rate'}", row.train, DASH, DASH, DASH,
                 _errors_cell(row.test) if row.test else DASH, DASH, DASH, *[DASH for _ in also]]
            )  # fmt: skip
            continue
        rate = float(row.test["rate"])
        delta, chance = _versus_cells(row, rate, base_rate)
        table_rows.append(
            [row.label, row.method, row.train, count(row.test.get("n")), pct(rate),
             interval(row.test.get("ci95")), _errors_cell(row.test), delta, chance, *also_cells(row.test)]
        )  # fmt: skip
    rate_header = f"Match rate ({_mode_name(mode)})" if mode else "Match rate"
    section.add(
        Table(
            ["", "Method", "Train examples", "Test n", rate_header, "95% interval", "Errors",
             "Δ vs baseline (paired 95%)", "McNemar p", *[f"{_mode_name(m).capitalize()} (95%)" for m in also]],
            table_rows,
            {2, 3, 4, 6, 7, 8, *range(9, 9 + len(also))},
        )
    )  # fmt: skip
    if also:
        section.add(
            Text(
                "; ".join(
                    f"{_mode_name(m).capitalize()}: the same answers judged on {MODE_TEXT.get(m, f'the {m} mode')}"
                    for m in also
                )
                + f"; measured beside the optimized match mode{f' ({_mode_name(mode)})' if mode else ''}, "
                "never optimized."
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
            + (
                f"optimized match mode, {mode}: {MODE_TEXT.get(mode, _mode_name(mode))}"
                if mode
                else "optimizer's match mode"
            )
            + "; the interval is the Wilson 95% score interval. Δ vs baseline: the phase's rate minus "
            "the baseline's on the same test traces, with the 95% interval of that paired difference "
            "(Newcombe's hybrid score method); McNemar p: the exact McNemar test of the traces one got "
            "right and the other wrong, the chance of a split at least that lopsided if the phase were "
            "no better than the baseline. Errors: test "
            "requests the student's endpoint failed, left out of the test n (not counted as misses). "
            "Train examples: the traces the phase learned from (its cap, or fewer when the split is "
            "smaller)."
        )
    )
    best = ctx.shared.best_phase
    if best:
        label = next((r.label for r in rows if r.name == best), best)
        section.add(Text(f"Best phase: {label}; its prompt is the exported artifact below."))
    ceiling = ctx.shared.ceiling
    if ceiling is not None:
        section.add(Text(f"Teacher consistency ceiling: {pct(ceiling)} (see the teacher section)."))
    else:
        section.add(Text("Teacher consistency ceiling: not measured (no teacher samples in this run)."))
    if measured:
        bars = [
            (r.short, float(r.test["rate"]), *_ci(r.test), int(number(r.test.get("errors")) or 0))
            for r in measured
            if r.test is not None
        ]
        ctx.figure(
            ctx.report.match_rates_figure,
            lambda path: figures.match_rates(path, bars, ceiling, ctx.shared.ceiling_label),
            f"Match rate ({_mode_name(mode)}) per phase with 95% intervals"
            if mode
            else "Match rate per phase with 95% intervals",
            section,
        )
    finetune_rows(ctx, ctx.shared.phase_names, section, problems)
    reward_rows(ctx, ctx.shared.phase_names, section, problems)
    search = _search_rows(ctx, ctx.shared.phase_names, problems)
    if search:
        section.add(Heading("Search per phase"))
        section.add(
            Table(
                ["Phase", "Candidates", "Pareto front", "Seed val score", "Best val score", "Metric calls", "Time"],
                search,
                {1, 2, 3, 4, 5, 6},
            )
        )  # fmt: skip
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
            f"{row.label}: {count(context.get('cut'))} cut"
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


def _also_modes(rows: Sequence[PhaseRow], mode: str | None, configured: Any) -> list[str]:
    """The modes measured beside the optimized one that some row has: the config's order, then
    any other a summary holds."""
    found: list[str] = []
    for row in rows:
        for other in obj(obj(row.test).get("also")):
            if isinstance(other, str) and other not in found:
                found.append(other)
    listed = isinstance(configured, Sequence) and not isinstance(configured, str)
    order = [m for m in configured if isinstance(m, str)] if listed else []
    ranked = [m for m in order if m in found] + sorted(m for m in found if m not in order)
    return [m for m in ranked if m != mode]


def _ci(test: Mapping[str, Any]) -> tuple[float, float]:
    ci = test.get("ci95")
    rate = float(test["rate"])
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(number(v) is not None for v in ci):
        return float(ci[0]), float(ci[1])
    return rate, rate


def _search_rows(ctx: Context, names: Sequence[str], problems: list[str]) -> list[list[str]]:
    configs = {p["name"]: p for p in ctx.shared.phase_configs}
    rows = []
    for name in names:
        phase = OPTIMIZE.phase(name)
        if not ctx.run.has(phase.root):
            continue
        result = ctx.run.try_json(phase.result, [])
        kind = configs.get(name, {}).get("kind") or (result or {}).get("kind")
        elapsed = duration((result or {}).get("elapsed_s")) if result else DASH
        if kind in ("finetune", "reward"):  # no search: "Weight distillation", "Reward training"
            continue
        if kind == "dicl":
            bank = (result or {}).get("dicl") or {}
            text = (
                f"dicl: the {bank['k']} nearest of {count(bank['entries'])} examples, similarity ≥ {bank['floor']}"
                if bank.get("entries") is not None
                else DASH
            )
            rows.append([name, text, DASH, DASH, DASH, DASH, elapsed])
            continue
        if kind != "gepa":
            demos = (result or {}).get("demo_messages")
            rows.append(
                [name, f"DSPy: {count(demos)} demo messages" if demos is not None else DASH,
                 DASH, DASH, DASH, DASH, elapsed]
            )  # fmt: skip
            continue
        candidates: Any = None
        try:
            candidates = ctx.run.json(phase.candidates)
        except Unreadable as error:
            problems.append(str(error))
            candidates = "unreadable"
        progress = ctx.run.try_json(phase.progress, problems) or {}
        calls = (
            f"{count(progress.get('metric_calls'))} (budget {count(progress.get('max_metric_calls'))})"
            if progress
            else DASH
        )
        if candidates == "unreadable":
            rows.append([name, "could not be read", DASH, DASH, DASH, calls, elapsed])
            continue
        if not isinstance(candidates, dict) or not isinstance(candidates.get("candidates"), list):
            rows.append([name, f"no {file_name(phase.candidates)}", DASH, DASH, DASH, calls, elapsed])
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
