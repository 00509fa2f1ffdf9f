"""Ingest throughput: Ray Data vs a single-process loop over the same reader.

Generates N Claude Code session files (default 10,000, three decision points each), then
1. the loop: this process reads every file with the claude_code reader and writes one Parquet file;
2. Ray: ``tooldistill.ingest.ingest`` with the Ray executor (shards read as Ray Data tasks, one part
   per shard, manifest published last).
Both must produce the same trace ids.  Ray start-up is timed separately and is not part of the Ray
figure; its cost is printed so nobody has to guess.

3. the context policy's cost: ``--context-traces`` decision points shaped like real Claude Code
   ones (prompt lengths log-normal around a median of ~17k tokens, so most are over the CPU
   student's 8,192-token window) fitted with the CPU student's tokenizer (``tooldistill models
   prepare smollm2`` first; skipped when it is not prepared): fitted traces/s, the share cut, and
   the cost of one exact count for comparison.

Figures go to ``benchmarks/results/ingest.json``.

    python benchmarks/ingest.py [--files 10000] [--num-cpus N] [--context-traces 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tooldistill.executor import RayExecutor
from tooldistill.ingest import IngestConfig, discover, ingest
from tooldistill.readers import ReadContext, ReaderOptions, SourceFile, get_format
from tooldistill.schema import Trace, traces_to_table
from tooldistill.testing.synthetic import write_sessions

RESULTS = Path(__file__).parent / "results"


def loop_ingest(files: list[str], out: Path) -> tuple[int, set[str]]:
    """The baseline: one process, one file after another, one Parquet file at the end."""
    read = get_format("claude_code").read
    context = ReadContext.create(ReaderOptions())
    filesystem = pafs.LocalFileSystem()
    traces = []
    for uri in files:
        for item in read(SourceFile(uri, uri, filesystem), context):
            if isinstance(item, Trace):  # not Quarantined, not Ignored
                traces.append(item)
    pq.write_table(traces_to_table(traces), out, compression="zstd")
    return len(traces), {t.id for t in traces}


def cpu_flags() -> list[str]:
    """The CPU's vector flags that decide kernel speed (recorded beside every figure)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in flags if f.startswith(("avx", "amx")))


def long_requests(n: int, seed: int = 7) -> list[dict]:
    """Requests shaped like long Claude Code decision points: a request, then file reads."""
    from tooldistill.readers.claude_code import load_catalog
    from tooldistill.request import build_request
    from tooldistill.schema import Message, ToolCall, Trace

    rng = random.Random(seed)
    tools = list(load_catalog(None).values())
    line = "{i:5d}\tif value_{i} is not None: total += compute(value_{i}, scale={i})\n"
    requests = []
    for index in range(n):
        # ~3.5k tokens of tool catalog; the rest is history, median ~13k tokens of it
        history_tokens = int(rng.lognormvariate(9.0, 0.9))
        messages = [Message(role="user", content=f"Task {index}: make the failing test pass.")]
        written, k = 0, 0
        while written < history_tokens:
            size = min(history_tokens - written, int(rng.lognormvariate(6.5, 1.2)) + 20)
            text = "".join(line.format(i=i) for i in range(max(1, size // 22)))
            call = ToolCall(id=f"t{k}", name="Read", arguments={"file_path": f"/home/ana/proj/m{k}.py"})
            messages += [
                Message(role="assistant", content="", tool_calls=[call]),
                Message(role="tool", tool_call_id=f"t{k}", content=text),
            ]
            written, k = written + size, k + 1
        trace = Trace(
            source_id=f"long{index}", source="bench", messages=messages, tools=tools,
            reference_calls=[ToolCall(name="Bash", arguments={"command": "pytest -q"})],
        )  # fmt: skip
        requests.append(build_request(trace, "student", None, 0.0, 96))
    return requests


def context_policy_cost(n: int) -> dict | None:
    """Fitted traces/s with the CPU student's tokenizer, and what the fits cut."""
    from tooldistill.context import ContextPolicy, DoesNotFit, Fitter
    from tooldistill.serve.models import models_home, prepared

    folder = models_home() / "smollm2-135m-instruct"
    if prepared(folder) is None:
        print("context policy: skipped (run `tooldistill models prepare smollm2` first)")
        return None
    fitter = Fitter(ContextPolicy(window=8192, tokenizer=str(folder)))
    requests = long_requests(n)
    start = time.perf_counter()
    counts = [fitter.count(r) for r in requests]
    count_s = time.perf_counter() - start
    fits, skipped = [], 0
    start = time.perf_counter()
    for request in requests:
        try:
            fits.append(fitter.fit(request))
        except DoesNotFit:
            skipped += 1
    fit_s = time.perf_counter() - start
    over = sum(c > 8192 - 112 for c in counts)
    shares = [f.record()["share_cut"] for f in fits if f.cut]
    figures = {
        "traces": n,
        "window": 8192,
        "median_prompt_tokens": int(statistics.median(counts)),
        "over_window": over,
        "cut": len(shares),
        "skipped": skipped,
        "median_share_cut": round(statistics.median(shares), 4) if shares else None,
        "fit_seconds": round(fit_s, 3),
        "fitted_traces_per_s": round(n / fit_s, 1),
        "count_only_traces_per_s": round(n / count_s, 1),
        "fit_over_count_time": round(fit_s / count_s, 2),
    }
    print(
        f"context policy: {n} long traces (median {figures['median_prompt_tokens']:,} tokens, {over} over "
        f"the window) fitted at {figures['fitted_traces_per_s']:,.1f} traces/s ({figures['fit_over_count_time']}x "
        f"one exact count); {len(shares)} cut (median {figures['median_share_cut']}), {skipped} skipped"
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=3, help="decision points per session")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--context-traces", type=int, default=200, help="long traces for the context policy")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tooldistill-bench-ingest-"))
    try:
        start = time.perf_counter()
        write_sessions(work / "projects", args.files, turns=args.turns)
        generate_s = time.perf_counter() - start
        files = [f.uri for f in discover((str(work / "projects"),), "claude_code", ReaderOptions())]
        print(f"generated {len(files)} session files in {generate_s:.1f}s under {work}")

        start = time.perf_counter()
        loop_traces, loop_ids = loop_ingest(files, work / "loop.parquet")
        loop_s = time.perf_counter() - start
        print(f"loop: {loop_traces} traces in {loop_s:.2f}s = {loop_traces / loop_s:,.0f} traces/s")

        executor = RayExecutor(num_cpus=args.num_cpus)
        start = time.perf_counter()
        executor.start()
        ray_init_s = time.perf_counter() - start

        start = time.perf_counter()
        result = ingest(
            IngestConfig(sources=(str(work / "projects"),), format="claude_code", out=str(work / "ray")),
            executor=executor,
        )
        ray_s = time.perf_counter() - start
        ray_traces = result.dataset.manifest.rows
        ray_ids = set(result.dataset.to_arrow().column("id").to_pylist())
        print(
            f"ray:  {ray_traces} traces in {ray_s:.2f}s = {ray_traces / ray_s:,.0f} traces/s "
            f"(+ {ray_init_s:.1f}s ray.init, not counted; {len(result.dataset.manifest.parts)} parts)"
        )
        if ray_ids != loop_ids:
            print("ERROR: the two paths produced different traces", file=sys.stderr)
            return 1

        ratio = (ray_traces / ray_s) / (loop_traces / loop_s)
        context = context_policy_cost(args.context_traces) if args.context_traces else None
        figures = {
            "benchmark": "ingest",
            "files": len(files),
            "decision_points_per_file": args.turns,
            "traces": ray_traces,
            "loop_seconds": round(loop_s, 3),
            "loop_traces_per_s": round(loop_traces / loop_s, 1),
            "ray_seconds": round(ray_s, 3),
            "ray_traces_per_s": round(ray_traces / ray_s, 1),
            "ray_init_seconds": round(ray_init_s, 2),
            "ray_with_init_traces_per_s": round(ray_traces / (ray_s + ray_init_s), 1),
            "ray_over_loop": round(ratio, 3),
            "ray_not_slower": ratio >= 1.0,
            "num_cpus": args.num_cpus,
            "context_policy": context,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "cpu_flags": cpu_flags(),
            },
        }
        print(f"ray/loop throughput ratio: {ratio:.2f}x")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ingest.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {RESULTS / 'ingest.json'}")
        return 0 if ratio >= 1.0 else 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
