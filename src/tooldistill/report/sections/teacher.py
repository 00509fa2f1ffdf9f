"""The teacher's consistency ceiling: how often Claude agrees with itself."""

from __future__ import annotations

from tooldistill.report.document import NOT_RUN, Section, Table, Text
from tooldistill.report.sections.context import Context, teacher_summary
from tooldistill.report.sections.format import DASH, count, general, interval, number, obj, pct


def _requests_text(summary: dict[str, object]) -> str:
    """The teacher requests behind the samples, with those that failed: `` (180 of 180 requests
    answered, 0 failed)``; empty when the summary does not count them."""
    requests = obj(summary.get("requests"))
    if number(requests.get("total")) is None:
        return ""
    return (
        f" ({count(requests.get('answered'))} of {count(requests.get('total'))} requests answered, "
        f"{count(requests.get('failed') or 0)} failed)"
    )


def teacher_section(ctx: Context) -> Section:
    section = Section("teacher", "Teacher consistency ceiling")
    summary, source = teacher_summary(ctx.run)
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
    section.add(
        Text(
            f"How often Claude ({summary.get('model', '?')}) agrees with itself across "
            f"{general(consistency.get('samples_per_trace'))} samples per trace (chain match), over "
            f"{count(consistency.get('traces_with_samples'))} traces{_requests_text(summary)}; from {source}. "
            "A student cannot be expected to match the teacher more often than the teacher matches itself."
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
