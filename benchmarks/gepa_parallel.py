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

**What Tune adds** (``executor_comparison`` in the results): ours twice in one process on one Ray
node, the same phase, student server, reflection server and budget, once with
``tune.executor: tune`` (each evaluation a Tune trial, C side by side, ``requests_per_trial``
requests each) and once with ``tune.executor: threads`` (the same pairs in C threads of this
process, ``student.concurrency`` = ``requests_per_trial`` requests each).  ``--two-node`` adds the
Tune executor on the two-node loopback harness (``tooldistill.testing.cluster``: two raylets on
127.0.0.1 of this machine, one CPU each); without it that slot says it was not run.
``--executors-only`` runs just this comparison and keeps the rest of the results file as it is.

    .venv/bin/python benchmarks/gepa_parallel.py [--budget 3000] [--latency 0.2] [--c 8]
    .venv/bin/python benchmarks/gepa_parallel.py --executors-only --budget 600 [--two-node]
"""

from __future__ import annotations

import argparse
import json
import os
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
    student_url: str,
    reflection_url: str,
    root: Path,
    budget: int,
    c: int,
    parents: int,
    requests: int,
    executor: str = "tune",
    cpus_per_trial: float | None = None,
    label: str = "",
) -> dict:
    from tooldistill.optimize.run import PhaseConfig, config_from_dict, run_gepa_phase
    from tooldistill.optimize.student import Prompt

    run_dir = root / f"ours-{executor}{label}"
    config = config_from_dict(
        {
            "run_dir": str(run_dir),
            "data": {"train": str(root / "train"), "val": str(root / "val"), "test": str(root / "val")},
            # threads: each candidate's requests in student.concurrency threads (Tune: requests_per_trial)
            "student": {"endpoint": student_url, "retries": 1, "concurrency": requests},
            "reflection": {
                "kind": "openai",
                "model": "reflector",
                "endpoint": reflection_url,
                "concurrency": c,
            },
            "tune": {
                "executor": executor,
                "max_concurrent_trials": c,
                "requests_per_trial": requests,
                "cpus_per_trial": cpus_per_trial or 2 / c,
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

    folder = run_dir / "gepa"
    events: list[dict[str, Any]] = []
    started = time.perf_counter()
    run_gepa_phase(config, phase, Prompt(DEFAULT_INSTRUCTIONS), folder, events.append)
    wall = time.perf_counter() - started
    candidates = json.loads((folder / "candidates.json").read_text())
    last = [e for e in events if e.get("event") == "iteration"][-1]
    best = candidates["candidates"][candidates["best"]]
    if executor != "tune":
        return {
            "optimizer": f"ours: PxNSampling({parents}, {c // parents}), executor threads ({c} candidates "
            f"side by side, {requests} requests each)",
            "executor": executor,
            "wall_s": round(wall, 2),
            "metric_calls": last["metric_calls"],
            "iterations": last["iteration"],
            "candidates": len(candidates["candidates"]),
            "best_val_score": round(best["val_score"], 4),
            "best_instructions_rules": best["instructions"].count("Rule "),
        }
    trials = json.loads((folder / "trials.json").read_text())
    first_trial = min(t["started"] for t in trials)
    from tooldistill.optimize.tune_eval import TrialRecord, max_overlap

    startup = first_trial - (time.time() - wall)
    return {
        "optimizer": f"ours: PxNSampling({parents}, {c // parents}), Ray Tune trials (max {c} side by side)",
        "executor": executor,
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


def executor_summary(tune_run: dict, threads_run: dict) -> dict:
    """Threads against Tune trials at the same budget (> 1: threads faster)."""
    per_s = {
        name: run["metric_calls"] / run["wall_s"]
        for name, run in (("tune", tune_run), ("threads", threads_run))
    }
    return {
        "threads_speedup_vs_tune": round(tune_run["wall_s"] / threads_run["wall_s"], 2),
        "threads_speedup_vs_tune_after_startup": round(
            tune_run["wall_after_startup_s"] / threads_run["wall_s"], 2
        ),
        "metric_calls_per_s": {name: round(value, 1) for name, value in per_s.items()},
        "same_best_val_score": tune_run["best_val_score"] == threads_run["best_val_score"],
    }


def run_two_node(student_url: str, reflection_url: str, root: Path, args: argparse.Namespace) -> dict:
    """The Tune executor on the two-node loopback harness: two raylets on 127.0.0.1, one CPU each."""
    import ray

    from tooldistill.testing.cluster import loopback_cluster

    with loopback_cluster(1.0, {"node_b": 1.0}) as cluster:
        cluster.connect()
        nodes = len([n for n in ray.nodes() if n["Alive"]])
        run = run_ours(
            student_url,
            reflection_url,
            root,
            args.budget,
            args.c,
            args.parents,
            args.requests_per_trial,
            executor="tune",
            label="-two-node",
        )
    run["nodes"] = nodes
    run["cluster"] = "tooldistill.testing.cluster: 2 raylets on 127.0.0.1 of this machine, 1 CPU each"
    return run


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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
    parser.add_argument(
        "--executors-only",
        action="store_true",
        help="only ours with executor tune and threads; the rest of --out is kept as it is",
    )
    parser.add_argument(
        "--two-node", action="store_true", help="also the tune executor on the two-node loopback harness"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import gepa  # noqa: F401 - both executors' runs import it: not timed in either
    import ray

    import tooldistill.optimize.adapter  # noqa: F401 - imports ray.tune in this process, both ways
    from tooldistill.optimize.testing import ReflectionServer, StudentServer, make_traces, write_traces
    from tooldistill.serve.cpu import machine_record

    out = Path(args.out)
    previous = json.loads(out.read_text()) if args.executors_only and out.exists() else {}
    # a Ray instance of this benchmark's own, never one already running on the machine
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="gepa-bench-"))
    train, val = make_traces(args.train), make_traces(args.val, 1000)
    write_traces(str(root / "train"), train)
    write_traces(str(root / "val"), val)
    runs: list[dict] = []
    executors: dict[str, Any] = {"load_average_before": load_average()}
    with StudentServer(latency_s=args.latency) as student, ReflectionServer(incremental=True) as reflection:

        def ours(executor: str) -> dict:
            run = run_ours(
                student.url,
                reflection.url,
                root,
                args.budget,
                args.c,
                args.parents,
                args.requests_per_trial,
                executor=executor,
            )
            print(json.dumps(run), flush=True)
            return run

        tune_run = ours("tune")
        threads_run = ours("threads")
        executors["one_node"] = {
            "runs": [tune_run, threads_run],
            "summary": executor_summary(tune_run, threads_run),
        }
        if not args.executors_only:
            runs.append(tune_run)
            runs.append(run_dspy_gepa(student.url, reflection.url, train, val, args.budget, args.c))
            print(json.dumps(runs[-1]), flush=True)
            if not args.skip_sequential:
                runs.append(run_dspy_gepa(student.url, reflection.url, train, val, args.budget, 1))
                print(json.dumps(runs[-1]), flush=True)
        ray.shutdown()
        if args.two_node:
            two = run_two_node(student.url, reflection.url, root, args)
            print(json.dumps(two), flush=True)
            executors["two_node"] = {
                "runs": [two],
                "one_node_tune_wall_over_two_node_wall": round(tune_run["wall_s"] / two["wall_s"], 2),
                "note": "both nodes share this machine's cores: a check that trials run across raylets, "
                "not a speed-up from more hardware",
            }
        else:
            executors["two_node"] = {"runs": [], "not_run": "run with --two-node"}
    executors["load_average_after"] = load_average()
    shutil.rmtree(root, ignore_errors=True)

    setup = {
        "budget_metric_calls": args.budget,
        "student_latency_s": args.latency,
        "c": args.c,
        "requests_per_trial": args.requests_per_trial,
        "train": args.train,
        "val": args.val,
        "reflection": "local server, no latency, current instruction + one rule (each rule: +10% right)",
        "minibatch": 3,
    }
    comparison = {
        "what": "ours with tune.executor tune against threads: same phase, servers and budget, one process, "
        "one Ray node (two_node: the tune executor on the loopback two-node harness)",
        "machine": machine_record(),
        "setup": {
            **setup,
            "cpus_per_trial": round(2 / args.c, 4),
            "student_concurrency": args.requests_per_trial,
            "imports": "gepa and the adapter (so ray.tune) imported before either run is timed",
        },
        **executors,
    }
    if args.executors_only:
        report = {**previous, "benchmark": "gepa_parallel", "executor_comparison": comparison}
    else:
        ours_run, threaded = runs[0], runs[1]
        summary: dict[str, Any] = {
            "speedup_vs_dspy_threads_c": round(threaded["wall_s"] / ours_run["wall_s"], 2),
            "speedup_vs_dspy_threads_c_after_tune_startup": round(
                threaded["wall_s"] / ours_run["wall_after_startup_s"], 2
            ),
            "target_vs_threads_c": 1.5,
            "val_score_no_worse_than_threads_c": ours_run["best_val_score"] >= threaded["best_val_score"],
        }
        if len(runs) > 2:
            sequential = runs[2]
            summary.update(
                speedup_vs_dspy_sequential=round(sequential["wall_s"] / ours_run["wall_s"], 2),
                speedup_vs_dspy_sequential_after_tune_startup=round(
                    sequential["wall_s"] / ours_run["wall_after_startup_s"], 2
                ),
                target_vs_sequential=round(0.7 * args.c, 2),
                val_score_no_worse_than_sequential=ours_run["best_val_score"] >= sequential["best_val_score"],
            )
        report = {
            "benchmark": "gepa_parallel",
            "machine": machine_record(),
            "setup": setup,
            "runs": runs,
            "summary": summary,
            "executor_comparison": comparison,
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(comparison["one_node"]["summary"], indent=2))


if __name__ == "__main__":
    main()
