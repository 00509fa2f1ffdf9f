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


def paired_difference(before: Mapping[str, bool], after: Mapping[str, bool]) -> dict[str, Any]:
    """How much ``after`` beats ``before`` on the same examples, and whether that could be luck.

    Both map an example's id to whether it matched; only ids in both count (an example one side
    did not score says nothing about the difference).  Two evaluations of the same traces are
    paired: an example both got right or both got wrong says nothing about which is better, so the
    test and the interval rest on the discordant ones: ``gained`` (wrong before, right after) and
    ``lost`` (right before, wrong after).  ``difference`` is the rate after minus the rate before,
    ``ci95`` its 95% interval by Newcombe's hybrid score method for paired proportions (1998,
    method 10: the two Wilson intervals combined through the pairs' correlation, with his
    continuity correction of it), and ``p_value`` the exact two-sided McNemar test (the gained ones
    as a binomial draw from the discordant ones at one half).  Far tighter than asking whether two
    Wilson intervals overlap, which treats two evaluations of the same traces as independent."""
    from scipy.stats import binomtest

    ids = sorted(set(before) & set(after))
    n = len(ids)
    both = sum(1 for i in ids if before[i] and after[i])
    gained = sum(1 for i in ids if after[i] and not before[i])
    lost = sum(1 for i in ids if before[i] and not after[i])
    neither = n - both - gained - lost
    entry: dict[str, Any] = {"n": n, "both": both, "gained": gained, "lost": lost, "neither": neither}
    if not n:
        return {**entry, "difference": None, "ci95": None, "p_value": None}
    p_after, p_before = (both + gained) / n, (both + lost) / n
    low_after, high_after = wilson_interval(both + gained, n)
    low_before, high_before = wilson_interval(both + lost, n)
    # the pairs' correlation, shrunk toward zero by n/2 when positive (Newcombe's correction)
    spread = (both + gained) * (lost + neither) * (both + lost) * (gained + neither)
    cross: float = both * neither - gained * lost
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = cross / math.sqrt(spread) if spread else 0.0
    below = (p_after - low_after) ** 2 - 2 * phi * (p_after - low_after) * (high_before - p_before)
    below += (high_before - p_before) ** 2
    above = (high_after - p_after) ** 2 - 2 * phi * (high_after - p_after) * (p_before - low_before)
    above += (p_before - low_before) ** 2
    difference = p_after - p_before
    low = max(-1.0, difference - math.sqrt(max(0.0, below)))
    high = min(1.0, difference + math.sqrt(max(0.0, above)))
    discordant = gained + lost
    p_value = binomtest(gained, discordant, 0.5).pvalue if discordant else 1.0
    return {
        **entry,
        "difference": round(difference, 4),
        "ci95": [round(low, 4), round(high, 4)],
        "p_value": float(f"{p_value:.3g}"),
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
