"""Per-tool confusion of the best phase: the first tool the reference called against the first
tool the student called, on every test outcome."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from tooldistill.report import figures
from tooldistill.report.document import PARTIAL, RENDERED, Section, Table, Text
from tooldistill.report.sections.context import Context
from tooldistill.report.sections.format import file_name, not_run, number, obj
from tooldistill.report.sections.reading import LAYOUT, Unreadable, config_dataset, read_columns

#: Tools shown by name in the confusion table; the rest are ``(other)``.
TOP_TOOLS = 8
NONE, OTHER, ERROR, UNKNOWN = "(none)", "(other)", "(error)", "(unknown)"


def _first_tool(calls: Any) -> str:
    if isinstance(calls, list) and calls and isinstance(calls[0], dict) and calls[0].get("name"):
        return str(calls[0]["name"])
    return NONE


def confusion_section(ctx: Context) -> Section:
    section = Section("confusion", "Per-tool confusion (best phase)")
    best = ctx.shared.best_phase
    if not best:
        return not_run(section, "no optimize phase finished")
    path = LAYOUT.optimize.phase(best).test
    report = ctx.run.json(path)
    if report is None:
        return not_run(section, f"no {path}")
    outcomes = report.get("outcomes")
    if not isinstance(outcomes, list):
        raise Unreadable(path, "it has no list of outcomes")
    outcomes = [o for o in outcomes if isinstance(o, dict)]
    expected_of: dict[str, str] = {}
    dataset, dataset_note = config_dataset(ctx.run, ctx.shared.data.get("test"), LAYOUT.curate.test)
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
        return not_run(section, f"{path} has no outcomes")
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
    failed = sum(1 for _, c, _ in pairs if c == ERROR)
    section.add(
        Text(
            f"{best} on the test split: {len(pairs)} traces, {failed} endpoint error"
            f"{'' if failed == 1 else 's'}. Rows: the first tool of the reference calls; "
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
    summary = obj(report.get("summary"))
    n = number(summary.get("n"))
    # the summary's n leaves out endpoint errors and traces the context policy skipped
    held = int(n or 0) + int(number(summary.get("errors")) or 0)
    held += int(number(obj(summary.get("context")).get("skipped")) or 0)
    if n is not None and held != len(pairs):
        section.note(
            f"{file_name(path)}'s summary counts {int(n)} traces (with errors and skipped ones, {held}) "
            f"but holds {len(pairs)} outcomes."
        )
    if dataset_note or UNKNOWN in present:
        section.note(
            "Expected tools unknown for some traces: "
            + (dataset_note or "their ids are not in the test split")
            + "."
        )
    matrix = np.array([[cells[(e, c)] for c in called_cols] for e in expected_rows])
    ctx.figure(
        ctx.report.confusion_figure,
        lambda path: figures.confusion(path, expected_rows, called_cols, matrix),
        "Per-tool confusion: expected against called tool",
        section,
    )
    section.status = PARTIAL if (dataset_note or UNKNOWN in present) else RENDERED
    return section
