"""Parallel GEPA (candidates as Ray Tune trials) against ``dspy.GEPA`` at an equal metric-call budget.

A local OpenAI-compatible student answers every request after a fixed latency (200 ms by default);
its answers depend on the prompt (``optimize.testing.StudentServer``).  The reflection server
answers at once with the current instruction plus one more rule, and each rule makes one more tenth
of the questions right, so every optimizer climbs the same slow staircase and the comparison is
about how fast candidates get evaluated.  Three runs, each with the same budget of metric calls:

- ``dspy.GEPA`` with ``num_threads=1`` (examples one at a time),
- ``dspy.GEPA`` with ``num_threads=C`` (examples of one candidate in C threads),
- ours: ``PxNSampling(P, N)`` with P*N = C candidates per iteration, each candidate's evaluation a
  Ray Tune trial, up to C trials side by side, ``requests_per_trial`` requests each (default C: one
  candidate gets what ``dspy.GEPA`` gives one candidate, and C candidates run at once).

Reported per run: wall time, metric calls used, iterations/candidates, best validation score; for
ours also the Tune start-up (one-off: actors import ``ray.tune``) and the wall time after it.
Writes ``benchmarks/results/gepa_parallel.json``.

    .venv/bin/python benchmarks/gepa_parallel.py [--budget 3000] [--latency 0.2] [--c 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "gepa_parallel.json"


def run_dspy_gepa(
    student_url: str, reflection_url: str, train: list, val: list, budget: int, threads: int
) -> dict:
    import dspy

    from tooldistill.optimize.program import StudentProgram, example_of, feedback_metric
    from tooldistill.optimize.student import StudentSettings

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    settings = StudentSettings(endpoint=student_url, retries=1)
    reflection = dspy.LM("openai/reflector", api_base=reflection_url, api_key="unused", cache=False)
    optimizer = dspy.GEPA(
        metric=feedback_metric,
        reflection_lm=reflection,
        max_metric_calls=budget,
        num_threads=threads,
        reflection_minibatch_size=3,
        candidate_selection_strategy="pareto",
        track_stats=True,
        seed=0,
    )
    started = time.perf_counter()
    compiled = optimizer.compile(
        StudentProgram(settings), trainset=[example_of(t) for t in train], valset=[example_of(t) for t in val]
    )
    wall = time.perf_counter() - started
    results = compiled.detailed_results
    return {
        "optimizer": f"dspy.GEPA num_threads={threads}",
        "wall_s": round(wall, 2),
        "metric_calls": results.total_metric_calls,
        "candidates": len(results.candidates),
        "best_val_score": round(max(results.val_aggregate_scores), 4),
        "best_instructions_rules": str(compiled.step.signature.instructions).count("Rule "),
    }


def run_ours(
    student_url: str, reflection_url: str, root: Path, budget: int, c: int, parents: int, requests: int
) -> dict:
    from tooldistill.optimize.run import PhaseConfig, config_from_dict, run_gepa_phase
    from tooldistill.optimize.student import Prompt

    config = config_from_dict(
        {
            "run_dir": str(root / "ours"),
            "data": {"train": str(root / "train"), "val": str(root / "val"), "test": str(root / "val")},
            "student": {"endpoint": student_url, "retries": 1},
            "reflection": {
                "kind": "openai",
                "model": "reflector",
                "endpoint": reflection_url,
                "concurrency": c,
            },
            "tune": {
                "executor": "tune",
                "max_concurrent_trials": c,
                "requests_per_trial": requests,
                "cpus_per_trial": 2 / c,
            },
        }
    )
    phase = PhaseConfig(
        name="gepa",
        kind="gepa",
        train=10_000,
        val=10_000,
        max_metric_calls=budget,
        max_reflection_usd=None,
        parents_per_iteration=parents,
        mutations_per_parent=c // parents,
    )
    from tooldistill.optimize.program import DEFAULT_INSTRUCTIONS

    folder = root / "ours" / "gepa"
    events: list[dict[str, Any]] = []
    started = time.perf_counter()
    run_gepa_phase(config, phase, Prompt(DEFAULT_INSTRUCTIONS), folder, events.append)
    wall = time.perf_counter() - started
    candidates = json.loads((folder / "candidates.json").read_text())
    trials = json.loads((folder / "trials.json").read_text())
    first_trial = min(t["started"] for t in trials)
    last = [e for e in events if e.get("event") == "iteration"][-1]
    from tooldistill.optimize.tune_eval import TrialRecord, max_overlap

    startup = first_trial - (time.time() - wall)
    best = candidates["candidates"][candidates["best"]]
    return {
        "optimizer": f"ours: PxNSampling({parents}, {c // parents}), Ray Tune trials (max {c} side by side)",
        "wall_s": round(wall, 2),
        "tune_startup_s": round(startup, 2),
        "wall_after_startup_s": round(wall - startup, 2),
        "metric_calls": last["metric_calls"],
        "iterations": last["iteration"],
        "candidates": len(candidates["candidates"]),
        "tune_trials": len(trials),
        "max_trials_side_by_side": max_overlap([TrialRecord(**t) for t in trials]),
        "best_val_score": round(best["val_score"], 4),
        "best_instructions_rules": best["instructions"].count("Rule "),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=3000, help="metric calls per run")
    parser.add_argument("--latency", type=float, default=0.2, help="student latency per request (s)")
    parser.add_argument("--c", type=int, default=8, help="parallelism C")
    parser.add_argument("--parents", type=int, default=2)
    parser.add_argument(
        "--requests-per-trial", type=int, default=8, help="student requests in flight per trial (default: C)"
    )
    parser.add_argument("--train", type=int, default=30)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--skip-sequential", action="store_true", help="leave out num_threads=1 (slow)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import ray

    from tooldistill.optimize.testing import ReflectionServer, StudentServer, make_traces, write_traces

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="gepa-bench-"))
    train, val = make_traces(args.train), make_traces(args.val, 1000)
    write_traces(str(root / "train"), train)
    write_traces(str(root / "val"), val)
    runs = []
    with StudentServer(latency_s=args.latency) as student, ReflectionServer(incremental=True) as reflection:
        runs.append(
            run_ours(
                student.url, reflection.url, root, args.budget, args.c, args.parents, args.requests_per_trial
            )
        )
        print(json.dumps(runs[-1]), flush=True)
        runs.append(run_dspy_gepa(student.url, reflection.url, train, val, args.budget, args.c))
        print(json.dumps(runs[-1]), flush=True)
        if not args.skip_sequential:
            runs.append(run_dspy_gepa(student.url, reflection.url, train, val, args.budget, 1))
            print(json.dumps(runs[-1]), flush=True)
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)

    ours, threaded = runs[0], runs[1]
    summary: dict[str, Any] = {
        "speedup_vs_dspy_threads_c": round(threaded["wall_s"] / ours["wall_s"], 2),
        "speedup_vs_dspy_threads_c_after_tune_startup": round(
            threaded["wall_s"] / ours["wall_after_startup_s"], 2
        ),
        "target_vs_threads_c": 1.5,
        "val_score_no_worse_than_threads_c": ours["best_val_score"] >= threaded["best_val_score"],
    }
    if len(runs) > 2:
        sequential = runs[2]
        summary.update(
            speedup_vs_dspy_sequential=round(sequential["wall_s"] / ours["wall_s"], 2),
            speedup_vs_dspy_sequential_after_tune_startup=round(
                sequential["wall_s"] / ours["wall_after_startup_s"], 2
            ),
            target_vs_sequential=round(0.7 * args.c, 2),
            val_score_no_worse_than_sequential=ours["best_val_score"] >= sequential["best_val_score"],
        )
    report = {
        "benchmark": "gepa_parallel",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "setup": {
            "budget_metric_calls": args.budget,
            "student_latency_s": args.latency,
            "c": args.c,
            "requests_per_trial": args.requests_per_trial,
            "train": args.train,
            "val": args.val,
            "reflection": "local server, no latency, current instruction + one rule (each rule: +10% right)",
            "minibatch": 3,
        },
        "runs": runs,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
