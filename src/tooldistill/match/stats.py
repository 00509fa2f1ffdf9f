"""Aggregates over scored examples: match rates with Wilson intervals, per-category and per-tool
tables.  Pure functions over plain records; no I/O."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

NONE = "(none)"


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% by default)."""
    if total <= 0:
        return (0.0, 0.0)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(successes: int, total: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, total)
    return {
        "n": total,
        "matched": successes,
        "rate": round(successes / total, 4) if total else None,
        "ci95": [round(low, 4), round(high, 4)],
    }


def tool_pairs(predicted: Sequence[str], expected: Sequence[str]) -> list[tuple[str, str]]:
    """(expected, predicted) name pairs for a confusion table: same names paired first, then the
    leftovers in order, then missing (predicted ``(none)``) and extra (expected ``(none)``)."""
    want, got = Counter(expected), Counter(predicted)
    common = want & got
    pairs = [(name, name) for name in common.elements()]
    missing = list((want - common).elements())
    extra = list((got - common).elements())
    pairs += list(zip(missing, extra, strict=False))
    pairs += [(m, NONE) for m in missing[len(extra) :]]
    pairs += [(NONE, x) for x in extra[len(missing) :]]
    if not expected and not predicted:
        pairs.append((NONE, NONE))
    return pairs


def confusion(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per expected tool: how often it was expected, called right, and what was called instead."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        for expected, predicted in tool_pairs(
            record.get("predicted_tools") or [], record.get("expected_tools") or []
        ):
            table[expected][predicted] += 1
    rows = []
    for expected, row in sorted(table.items(), key=lambda item: (-sum(item[1].values()), item[0])):
        total = sum(row.values())
        instead = Counter({k: v for k, v in row.items() if k != expected})
        rows.append(
            {
                "expected": expected,
                "n": total,
                "correct": row.get(expected, 0),
                "accuracy": round(row.get(expected, 0) / total, 4),
                "instead": dict(instead.most_common(5)),
            }
        )
    return {"rows": rows}


def scored(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records that count in a match rate: neither an endpoint ``error`` nor ``skipped``."""
    return [r for r in records if not r.get("error") and not r.get("skipped")]


def counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """What is counted beside a match rate: every record, the scored ones, the endpoint errors and
    the traces not sent (``skipped``, an error first when a record has both)."""
    return {
        "examples": len(records),
        "scored": len(scored(records)),
        "errors": sum(1 for r in records if r.get("error")),
        # not sent: longer than the student's window even after the context policy's cuts
        "skipped": sum(1 for r in records if r.get("skipped") and not r.get("error")),
    }


def match_rate(records: Sequence[Mapping[str, Any]], mode: str, mean_score: bool = True) -> dict[str, Any]:
    """The match rate in ``mode``, the one definition every reported summary uses: matched / n with
    the Wilson 95% interval, where n counts only the scored records.  A record with an endpoint
    ``error`` or ``skipped`` is left out of n (an error says nothing about what the student would
    have chosen; a skipped trace was never asked); ``counts`` gives both beside the rate.  Each
    record holds ``verdicts`` {mode: {match, score, reason}}; ``mean_score`` adds the mean partial
    score."""
    kept = scored(records)
    entry = rate(sum(1 for r in kept if r["verdicts"][mode]["match"]), len(kept))
    if mean_score:
        entry["mean_score"] = (
            round(sum(r["verdicts"][mode]["score"] for r in kept) / len(kept), 4) if kept else None
        )
    return entry


def aggregate(records: Sequence[Mapping[str, Any]], modes: Sequence[str]) -> dict[str, Any]:
    """Match rate per mode (``match_rate``: Wilson 95% intervals, endpoint errors and skipped traces
    left out of n and counted beside it), mean partial score, per-category table and per-tool
    confusion.  Each record holds ``verdicts`` {mode: {match, score, reason}}, ``category``,
    ``expected_tools``, ``predicted_tools`` and optionally ``error`` or ``skipped``."""
    scored_records = scored(records)
    out: dict[str, Any] = dict(counts(records))
    out["modes"] = {mode: match_rate(records, mode) for mode in modes}
    out["unparseable"] = sum(
        1 for r in scored_records if str(r["verdicts"][modes[0]]["reason"]).startswith("unparseable")
    )
    categories: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in scored_records:
        categories[str(record.get("category") or NONE)].append(record)
    out["categories"] = {
        name: {mode: match_rate(group, mode, mean_score=False) for mode in modes}
        for name, group in sorted(categories.items())
    }
    out["tools"] = confusion(scored_records)
    return out
