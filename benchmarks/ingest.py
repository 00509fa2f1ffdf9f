"""Ingest throughput: Ray Data vs a single-process loop over the same reader.

Generates N Claude Code session files (default 10,000, three decision points each), then
1. the loop: this process reads every file with the claude_code reader and writes one Parquet file;
2. Ray: ``tooldistill.ingest.ingest`` with the Ray executor (shards read as Ray Data tasks, one part
   per shard, manifest published last).
Both must produce the same trace ids.  Ray start-up is timed separately and is not part of the Ray
figure; its cost is printed so nobody has to guess.  Figures go to ``benchmarks/results/ingest.json``.

    python benchmarks/ingest.py [--files 10000] [--num-cpus N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tooldistill.executor import RayExecutor
from tooldistill.ingest import IngestConfig, discover, ingest
from tooldistill.readers import ReadContext, ReaderOptions, SourceFile, get_format
from tooldistill.readers.base import Quarantined
from tooldistill.schema import traces_to_table
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
            if not isinstance(item, Quarantined):
                traces.append(item)
    pq.write_table(traces_to_table(traces), out, compression="zstd")
    return len(traces), {t.id for t in traces}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=3, help="decision points per session")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
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
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
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
