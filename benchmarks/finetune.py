"""What Ray Train costs around TRL, and what the finetune phase bought in a run.

1. **Throughput**: the same LoRA training (SmolLM2-135M, the same examples and settings) twice,
   alternately: through ``finetune.train.train`` (a Ray Train ``TorchTrainer`` with one worker) and
   as a plain one-process TRL run (``run_sft`` in this process, no Ray).  Training tokens/s of each
   (from the trainer's own token count, steps after the first) and their ratio; goal >= 0.9.
2. **Match rate** (``--run RUN``): the baseline and every phase of a finished run (``make demo``'s
   ``runs/demo``) with their 95% intervals, the finetune phase's training figures, and whether the
   best phase's interval lies entirely above the baseline's.

    python benchmarks/finetune.py [--examples 16] [--epochs 1] [--rounds 1] [--run runs/demo]

Figures to ``benchmarks/results/finetune.json`` with the CPU's model and flags.
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

from tooldistill.finetune.examples import ExampleSettings, build_examples
from tooldistill.finetune.train import TrainSettings, precision_bf16, run_sft, train
from tooldistill.optimize.student import Prompt, StudentSettings
from tooldistill.serve.cpu import capabilities, usable_cores
from tooldistill.serve.models import models_home, prepare

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent


def shown_run(run: str | Path) -> str:
    """A run folder as the results name it: relative to the repository (``runs/demo``), else by its
    name; the results are committed, so they name no path of the machine that measured them."""
    text = str(run)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    for root in (REPO, Path.cwd().resolve()):
        if path.is_relative_to(root) and path != root:
            return path.relative_to(root).as_posix()
    return path.name


def bfcl_examples(base: Path, n: int) -> list[dict[str, Any]]:
    """``n`` training rows from BFCL's simple_python traces (the bfcl-eval package's data)."""
    from transformers import AutoTokenizer

    from tooldistill.executor import LocalExecutor
    from tooldistill.ingest import IngestConfig, ingest
    from tooldistill.readers.base import ReaderOptions

    out = tempfile.mkdtemp(prefix="tooldistill-bench-ft-bfcl-")
    config = IngestConfig(
        sources=("bfcl",), format="bfcl", out=out, reader=ReaderOptions(categories=("simple_python",))
    )
    traces = ingest(config, LocalExecutor()).dataset.to_traces()[:n]
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    examples = build_examples(traces, Prompt(""), StudentSettings(model="m"), tokenizer, ExampleSettings())
    return examples.rows


def plain(base: Path, folder: Path, settings: TrainSettings, threads: int) -> dict[str, Any]:
    started = time.perf_counter()
    run_sft(
        {"settings": settings.model_dump(mode="json"), "folder": str(folder), "base_model": str(base),
         "threads": threads, "bf16": precision_bf16(settings)},
    )  # fmt: skip
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line]
    return {"seconds": round(time.perf_counter() - started, 1), "tokens_per_s": log[-1]["tokens_per_s"],
            "final_loss": log[-1]["loss"], "steps": log[-1]["step"]}  # fmt: skip


def with_ray(base: Path, folder: Path, settings: TrainSettings, threads: int) -> dict[str, Any]:
    result = train(str(base), folder, settings, threads=threads)
    return {"seconds": result.train_seconds, "tokens_per_s": result.tokens_per_s,
            "final_loss": result.final_loss, "steps": result.steps}  # fmt: skip


def run_figures(run: Path) -> dict[str, Any]:
    summary = json.loads((run / "optimize" / "summary.json").read_text())
    baseline = summary["baseline"]
    phases = summary["phases"]
    best = max(phases, key=lambda p: p["test"].get("rate") or 0.0)
    return {
        "run": shown_run(run),
        "baseline": {k: baseline.get(k) for k in ("n", "matched", "rate", "ci95", "errors")},
        "phases": [
            {
                "phase": p["phase"],
                "kind": p["kind"],
                **{k: p["test"].get(k) for k in ("n", "matched", "rate", "ci95")},
                **({"finetune": p["finetune"]} if "finetune" in p else {}),
            }
            for p in phases
        ],  # fmt: skip
        "best_phase": best["phase"],
        "best_interval_above_baseline": bool(best["test"]["ci95"][0] > baseline["ci95"][1]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--run", default=None, help="A finished run folder to read the match rates from.")
    parser.add_argument("--out", default=str(RESULTS / "finetune.json"))
    args = parser.parse_args()
    # its own folder: the default one is in the dtype this CPU serves
    base, _ = prepare("smollm2", models_home() / "smollm2-135m-instruct-bench-float32", dtype="float32")
    rows = bfcl_examples(base, args.examples)
    threads = usable_cores()
    settings = TrainSettings(epochs=args.epochs, batch_size=4, save_steps=10_000, max_length=768)
    runs: dict[str, list[dict[str, Any]]] = {"ray_train": [], "plain_trl": []}
    for round_ in range(args.rounds):
        order = ["ray_train", "plain_trl"] if round_ % 2 == 0 else ["plain_trl", "ray_train"]
        for name in order:
            folder = Path(tempfile.mkdtemp(prefix=f"tooldistill-bench-ft-{name}-"))
            (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            figures = (with_ray if name == "ray_train" else plain)(base, folder, settings, threads)
            figures["round"] = round_
            runs[name].append(figures)
            print(f"{name:>9}: {figures['tokens_per_s']} tokens/s, {figures['seconds']} s, "
                  f"loss {figures['final_loss']}", flush=True)  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)

    def mean(name: str) -> float:
        return sum(r["tokens_per_s"] for r in runs[name]) / len(runs[name])

    ratio = round(mean("ray_train") / mean("plain_trl"), 3)
    caps = capabilities()
    result: dict[str, Any] = {
        "benchmark": "finetune",
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": caps.get("cpu_name"),
            "flags": {k: bool(caps.get(k)) for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "bf16")},
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "model": "smollm2-135m-instruct (float32 weights)",
        "examples": len(rows),
        "example_tokens": sum(r["tokens"] for r in rows),
        "settings": settings.model_dump(mode="json"),
        "bf16_autocast": precision_bf16(settings),
        "threads": threads,
        "runs": runs,
        "tokens_per_s_ratio_ray_over_plain": ratio,
        "target": "Ray Train keeps >= 0.9 of a plain TRL run's training tokens/s",
        "meets_target": ratio >= 0.9,
    }
    out = Path(args.out)
    if args.run:
        result["match"] = run_figures(Path(args.run))
    elif out.exists():  # keep the match figures of the run measured before, said to be so
        earlier = json.loads(out.read_text()).get("match")
        if earlier:
            result["match"] = {
                **earlier,
                "run": shown_run(earlier.get("run", "")),
                "note": "carried over from the previous results (no --run given)",
            }
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ray/plain tokens/s: {ratio}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
