"""The teacher's consistency ceiling, from N teacher samples per trace.

Two samples agree when they are equal in ``chain`` mode (same calls, same order, arguments equal
after schema normalization).  Per trace: do all samples agree, what share of sample pairs agree,
and which chain the majority chose (the consensus reference; a tie for the top is flagged and
broken by the earliest sample).  A student cannot be expected to match the teacher more often than
the teacher matches itself, so these figures are printed beside every match rate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from tooldistill.match.compare import chain_key
from tooldistill.match.stats import rate
from tooldistill.schema import ToolCall, Trace


@dataclass(frozen=True)
class Consensus:
    calls: list[ToolCall]
    #: share of samples that chose the consensus chain
    support: float
    #: another chain had as many votes
    tie: bool
    all_agree: bool
    pairwise: float
    samples: int


def consensus(trace: Trace) -> Consensus | None:
    """The majority chain of a trace's teacher samples; None with fewer than two samples."""
    samples = trace.teacher_samples
    if len(samples) < 2:
        return None
    schemas = {tool.name: tool.parameters for tool in trace.tools}
    keys = [chain_key(sample, schemas) for sample in samples]
    votes = Counter(keys)
    (_, count), *rest = votes.most_common()
    tie = bool(rest) and rest[0][1] == count
    winner = min(i for i, k in enumerate(keys) if votes[k] == count)
    pairs = list(combinations(keys, 2))
    pairwise = sum(1 for a, b in pairs if a == b) / len(pairs)
    return Consensus(
        calls=list(samples[winner]),
        support=count / len(samples),
        tie=tie,
        all_agree=len(votes) == 1,
        pairwise=pairwise,
        samples=len(samples),
    )


def consistency_report(traces: Iterable[Trace]) -> dict[str, Any]:
    """Aggregate consistency over the traces that carry at least two teacher samples."""
    total = 0
    found: list[tuple[Trace, Consensus]] = []
    for trace in traces:
        total += 1
        result = consensus(trace)
        if result is not None:
            found.append((trace, result))
    n = len(found)
    agree = sum(1 for _, c in found if c.all_agree)
    reference_hits = 0
    for trace, result in found:
        schemas = {tool.name: tool.parameters for tool in trace.tools}
        reference_hits += chain_key(result.calls, schemas) == chain_key(trace.reference_calls, schemas)
    return {
        "traces": total,
        "traces_with_samples": n,
        "samples_per_trace": round(sum(c.samples for _, c in found) / n, 2) if n else None,
        "all_agree": rate(agree, n),
        "mean_pairwise_agreement": round(sum(c.pairwise for _, c in found) / n, 4) if n else None,
        "mean_consensus_support": round(sum(c.support for _, c in found) / n, 4) if n else None,
        "ties": sum(1 for _, c in found if c.tie),
        "consensus_equals_reference": rate(reference_hits, n),
    }
