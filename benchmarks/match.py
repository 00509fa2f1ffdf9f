"""Matcher speed and agreement with bfcl-eval's own AST checker.

1. Every BFCL single-turn trace's ground truth plus the near misses of
   ``tooldistill.testing.mutations``: calls scored per second by our ``bfcl`` and ``chain`` modes
   and by bfcl-eval's checker, and the share of verdicts on which ours and BFCL's agree.
2. Where ``../shared/data/bfcl-claude/`` exists (real Claude outputs recorded by the leaderboard),
   each model's outputs scored by both, with Claude's accuracy and the agreement per category.
   Native tool-calling (``-FC``) results are decoded for BFCL's checker as the leaderboard does
   (``{name: json.loads(arguments)}``, names with ``_`` for dots); prompt-mode text is parsed with
   our parser for both sides (BFCL's own decoder needs its SDK stack).

    python benchmarks/match.py [--claude-dir PATH]

Figures go to ``benchmarks/results/match.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tooldistill.executor import LocalExecutor
from tooldistill.ingest import IngestConfig, ingest
from tooldistill.match import compare, parse_text, resolve_names
from tooldistill.readers.bfcl import SINGLE_TURN_CATEGORIES
from tooldistill.testing.bfcl_checker import PROMPT_MODEL, bfcl_verdict, load_entries
from tooldistill.testing.mutations import mutations

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLAUDE_DIR = ROOT.parent / "shared" / "data" / "bfcl-claude"
FILE_CATEGORIES = {
    "simple": "simple_python",
    "multiple_function": "multiple",
    "parallel_function": "parallel",
    "parallel_multiple_function": "parallel_multiple",
    "relevance": "irrelevance",
}


def ground_truth_section(traces: list[Any]) -> dict[str, Any]:
    cases = []
    for trace in traces:
        for label, calls in mutations(trace):
            cases.append((trace, label, calls))
    entries = {c: load_entries(c) for c in SINGLE_TURN_CATEGORIES}
    schemas = {t.id: {tool.name: tool.parameters for tool in t.tools} for t in traces}

    timings = {}
    ours: dict[str, list[bool]] = {}
    for mode in ("bfcl", "chain"):
        start = time.perf_counter()
        ours[mode] = [
            compare(calls, t.reference_calls, mode, schemas[t.id], t.acceptable, t.category).match
            for t, _, calls in cases
        ]
        timings[mode] = time.perf_counter() - start
    start = time.perf_counter()
    theirs = [
        bfcl_verdict(*_raw(entries, t), calls, *_truth(entries, t), t.category)[0] for t, _, calls in cases
    ]
    timings["bfcl_eval"] = time.perf_counter() - start

    per_category: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    agree: Counter[str] = Counter()
    for (trace, _, _), a, b in zip(cases, ours["bfcl"], theirs, strict=True):
        totals[trace.category] += 1
        agree[trace.category] += a == b
    for category in SINGLE_TURN_CATEGORIES:
        per_category[category] = {
            "cases": totals[category],
            "agree": agree[category],
            "agreement": round(agree[category] / totals[category], 5) if totals[category] else None,
        }
    n = len(cases)
    return {
        "traces": len(traces),
        "cases": n,
        "calls_scored_per_s": {k: round(n / v, 1) for k, v in timings.items()},
        "ours_bfcl_over_bfcl_eval_speed": round(timings["bfcl_eval"] / timings["bfcl"], 3),
        "agreement": round(sum(agree.values()) / n, 5),
        "per_category": per_category,
    }


def _raw(entries: dict[str, Any], trace: Any) -> tuple[Any]:
    return (entries[trace.category][trace.source_id][0],)


def _truth(entries: dict[str, Any], trace: Any) -> tuple[Any]:
    return (entries[trace.category][trace.source_id][1] or [],)


def claude_section(traces: list[Any], claude_dir: Path) -> dict[str, Any]:
    by_source = {t.source_id: t for t in traces}
    entries = {c: load_entries(c) for c in set(FILE_CATEGORIES.values())}
    models: dict[str, Any] = {}
    for folder in sorted(p for p in claude_dir.iterdir() if p.is_dir()):
        native = folder.name.endswith("-FC")
        stats: dict[str, Counter[str]] = defaultdict(Counter)
        disagreements = []
        for path in sorted(folder.glob("*_result.json")):
            file_category = path.name.removeprefix("gorilla_openfunctions_v1_test_").removesuffix(
                "_result.json"
            )
            category = FILE_CATEGORIES.get(file_category)
            if category is None:
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                record = json.loads(line)
                source_id = f"{category}_{record['id'].rsplit('_', 1)[1]}"
                trace = by_source.get(source_id)
                if trace is None:
                    stats[category]["missing_trace"] += 1
                    continue
                result = record["result"]
                # ours: the text as a student would return it, parsed and names resolved
                text = result if isinstance(result, str) else json.dumps(result)
                parsed = parse_text(text)
                calls = resolve_names(parsed.calls, trace.tool_names())
                schemas = {tool.name: tool.parameters for tool in trace.tools}
                if parsed.error:
                    ours_ok, why = False, parsed.error
                else:
                    verdict = compare(
                        calls, trace.reference_calls, "bfcl", schemas, trace.acceptable, trace.category
                    )
                    ours_ok, why = verdict.match, verdict.reason
                # theirs: the leaderboard's decoding
                functions, truth = entries[category][source_id]
                if native:
                    if isinstance(result, list):
                        decoded = [
                            {"name": k, "arguments": json.loads(v)}
                            for item in result
                            for k, v in item.items()
                        ]
                    else:
                        decoded = []  # a text answer: BFCL's decoder raises, i.e. no call
                    model_name = PROMPT_MODEL + "-FC"
                else:
                    decoded = [{"name": c.name, "arguments": c.arguments} for c in parse_text(text).calls]
                    model_name = PROMPT_MODEL
                theirs_ok, their_why = bfcl_verdict(functions, decoded, truth or [], category, model_name)
                stats[category]["n"] += 1
                stats[category]["ours"] += ours_ok
                stats[category]["bfcl"] += theirs_ok
                stats[category]["agree"] += ours_ok == theirs_ok
                if ours_ok != theirs_ok and len(disagreements) < 20:
                    disagreements.append(
                        f"{source_id}: ours={ours_ok} ({why[:120]}) bfcl={theirs_ok} ({their_why[:120]})"
                    )
        models[folder.name] = {
            "per_category": {
                c: {
                    "n": s["n"],
                    "claude_accuracy_ours": round(s["ours"] / s["n"], 4) if s["n"] else None,
                    "claude_accuracy_bfcl": round(s["bfcl"] / s["n"], 4) if s["n"] else None,
                    "agreement": round(s["agree"] / s["n"], 4) if s["n"] else None,
                }
                for c, s in sorted(stats.items())
            },
            "agreement": round(
                sum(s["agree"] for s in stats.values()) / max(1, sum(s["n"] for s in stats.values())), 4
            ),
            "disagreements": disagreements,
        }
    return models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claude-dir", type=Path, default=CLAUDE_DIR)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        dataset = ingest(
            IngestConfig(sources=("bfcl",), format="bfcl", out=f"{work}/bfcl"),
            LocalExecutor(show_progress=False),
        ).dataset
        traces = dataset.to_traces()
    figures: dict[str, Any] = {"benchmark": "match", "ground_truth": ground_truth_section(traces)}
    gt = figures["ground_truth"]
    print(
        f"{gt['cases']} cases from {gt['traces']} traces; calls scored per second: {gt['calls_scored_per_s']}"
    )
    print(f"agreement with bfcl-eval's checker: {gt['agreement']:.4%}")
    for category, row in gt["per_category"].items():
        print(f"  {category:24s} {row['agree']}/{row['cases']} = {row['agreement']:.4%}")
    if args.claude_dir.is_dir():
        figures["claude"] = claude_section(traces, args.claude_dir)
        for model, result in figures["claude"].items():
            print(f"{model}: agreement {result['agreement']:.2%}")
            for category, row in result["per_category"].items():
                print(
                    f"  {category:18s} n={row['n']:4d} accuracy ours {row['claude_accuracy_ours']:.1%} "
                    f"bfcl {row['claude_accuracy_bfcl']:.1%} agreement {row['agreement']:.1%}"
                )
            for line in result["disagreements"][:5]:
                print(f"    {line}")
    else:
        print(f"no {args.claude_dir}: real Claude outputs not scored")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "match.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {RESULTS / 'match.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
