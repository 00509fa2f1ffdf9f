"""The three optimization phases on BFCL traces with the CPU student; match rate per phase.

Data: BFCL single-turn traces from the installed ``bfcl-eval`` package, curated (embed, SemDeDup,
CaR) and split by ``tooldistill curate all`` into ``WORK/curate/split/{train,val,test}``; an existing
split can be given with ``--split``.  Student: ``--endpoint URL`` (an OpenAI-compatible endpoint
serving the student), or, without it, ``tooldistill serve --config configs/serve/cpu-smollm2.yaml``
is started here and stopped at the end.  Reflection model: ``--reflection-endpoint`` (any
OpenAI-compatible endpoint), else Claude when ``ANTHROPIC_API_KEY`` is set, else the student itself
(a 135M model is a poor reflector; the figures then say little about GEPA, and the JSON says so).

Writes ``benchmarks/results/phases_cpu.json``: baseline and every phase's test match rate with its
Wilson interval, the train sizes, the metric calls and dollars each GEPA phase used, wall times.

    .venv/bin/python benchmarks/phases_cpu.py [--endpoint http://127.0.0.1:8000/v1 --model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "phases_cpu.json"
SERVE_CONFIG = "configs/serve/cpu-smollm2.yaml"


def wait_for(endpoint: str, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{endpoint.rstrip('/')}/models", timeout=5):
                return
        except OSError:
            time.sleep(5)
    raise SystemExit(f"the student at {endpoint} did not answer within {timeout_s:.0f} s")


def start_student(endpoint: str) -> subprocess.Popen[bytes]:
    if not Path(SERVE_CONFIG).exists():
        raise SystemExit(f"no --endpoint given and {SERVE_CONFIG} does not exist: start a student first")
    process = subprocess.Popen(
        [sys.executable, "-m", "tooldistill.cli", "serve", "--config", SERVE_CONFIG], start_new_session=True
    )
    wait_for(endpoint, 900)
    return process


def prepare_split(work: Path) -> Path:
    from tooldistill.curate.pipeline import curate_all  # noqa: F401 - fails early without the embed extra

    split = work / "curate" / "split"
    if (split / "test" / "manifest.json").exists():
        return split
    traces = work / "traces"
    subprocess.run(
        [sys.executable, "-m", "tooldistill.cli", "ingest", "bfcl", "--format", "bfcl", "--out", str(traces)],
        check=True,
    )
    command = [sys.executable, "-m", "tooldistill.cli", "curate", "all", "--dataset", str(traces)]
    command += ["--out", str(work / "curate")]
    subprocess.run(command, check=True)
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=None, help="student endpoint; default: start tooldistill serve")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--split", default=None, help="folder with train/val/test datasets")
    parser.add_argument("--work", default="runs/phases-cpu")
    parser.add_argument("--reflection-endpoint", default=None)
    parser.add_argument("--reflection-model", default=None)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--val", type=int, default=30)
    parser.add_argument("--budget", type=int, default=600, help="metric calls per GEPA phase")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from tooldistill.optimize.run import config_from_dict, optimize

    work = Path(args.work)
    endpoint = args.endpoint or "http://127.0.0.1:8000/v1"
    student = None if args.endpoint else start_student(endpoint)
    try:
        wait_for(endpoint, 60)
        split = Path(args.split) if args.split else prepare_split(work)
        if args.reflection_endpoint:
            reflection: dict[str, Any] = {
                "kind": "openai",
                "endpoint": args.reflection_endpoint,
                "model": args.reflection_model or "reflector",
            }
            reflector = f"OpenAI-compatible {reflection['model']} at {args.reflection_endpoint}"
        elif os.environ.get("ANTHROPIC_API_KEY"):
            reflection = {"kind": "anthropic", "model": args.reflection_model or "claude-sonnet-4-5"}
            reflector = f"Claude {reflection['model']}"
        else:
            reflection = {"kind": "openai", "endpoint": endpoint, "model": args.model, "max_tokens": 512}
            reflector = f"the student itself ({args.model}): no reflection model was available"
        gepa = {"val": args.val, "max_metric_calls": args.budget, "max_reflection_usd": 5.0}
        config = config_from_dict(
            {
                "run_dir": str(work / "run"),
                "data": {
                    "train": str(split / "train"),
                    "val": str(split / "val"),
                    "test": str(split / "test"),
                    "test_limit": args.test_limit,
                },
                "student": {"endpoint": endpoint, "model": args.model, "max_tokens": 256, "concurrency": 16},
                "reflection": reflection,
                "phases": [
                    {
                        "name": "phase1",
                        "kind": "dspy",
                        "train": 50,
                        "max_bootstrapped_demos": 4,
                        "val": args.val,
                    },
                    {"name": "phase2", "kind": "gepa", "train": 50, **gepa},
                    {"name": "phase3", "kind": "gepa", "train": 15, "select": "car", **gepa},
                ],
            }
        )
        started = time.time()
        summary = optimize(config, progress=lambda e: print(json.dumps(e, default=str)[:300], flush=True))
        phases = []
        for phase in summary["phases"]:
            result = json.loads((work / "run" / phase["phase"] / "result.json").read_text())
            progress = result.get("progress") or {}
            phases.append(
                {
                    **phase,
                    "metric_calls": progress.get("metric_calls"),
                    "reflection_usd": progress.get("reflection_usd"),
                    "candidates": progress.get("candidates"),
                }
            )
        report = {
            "benchmark": "phases_cpu",
            "student": {"endpoint": endpoint, "model": args.model},
            "reflection": reflector,
            "split": str(split),
            "baseline": summary["baseline"],
            "phases": phases,
            "wall_s": round(time.time() - started, 1),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
    finally:
        if student is not None:
            os.killpg(student.pid, signal.SIGTERM)
            student.wait(timeout=60)


if __name__ == "__main__":
    main()
