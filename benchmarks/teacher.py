"""Teacher capture throughput through the local Anthropic-compatible server.

The server runs in its own process (``python -m tooldistill.testing.anthropic_server``), answering
from the BFCL traces' reference calls, so its CPU is not counted against the client.  For each
concurrency (1, 8, 32), capture runs once without faults and once with 20% injected faults (429
with retry-after, 529, 500, slow answers, dropped connections), each time into a fresh output and
request cache, and the requests/s are recorded.  One more run at concurrency 8 without faults is
profiled (cProfile) to say where the client's CPU time goes: our code, the anthropic SDK and its
HTTP stack, the event loop, and the rest.  Figures go to ``benchmarks/results/teacher.json``.

    python benchmarks/teacher.py [--requests 600] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tooldistill.executor import LocalExecutor
from tooldistill.ingest import IngestConfig, ingest
from tooldistill.teacher.capture import CaptureConfig, capture

RESULTS = Path(__file__).parent / "results"
MODEL = "claude-sonnet-4-6"
SAMPLES = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(dataset: str, fault_rate: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "tooldistill.testing.anthropic_server", "--dataset", dataset,
            "--port", str(port), "--fault-rate", str(fault_rate), "--disagree-rate", "0.1",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stats", timeout=1).read()
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the local Anthropic server did not start")


def run(dataset: str, work: Path, concurrency: int, traces: int, name: str) -> dict[str, Any]:
    out = work / name
    config = CaptureConfig(
        dataset=dataset, out=str(out), model=MODEL, samples=SAMPLES, limit=traces, concurrency=concurrency
    )
    started = time.perf_counter()
    result = capture(config, show_progress=False)
    elapsed = time.perf_counter() - started
    summary = result.summary
    answered = summary["requests"]["answered"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "concurrency": concurrency,
        "requests": answered,
        "failed": summary["requests"]["failed"],
        "seconds": round(elapsed, 3),
        "requests_per_s": round(answered / elapsed, 1),
        "http_requests": summary["send"]["http_requests"],
        "retries": summary["send"]["retries"],
        "retried_on": summary["send"]["retried_on"],
        "latency_p50_s": summary["latency_s"]["p50"],
    }


GROUPS = {
    "tooldistill": ("/tooldistill/",),
    "anthropic SDK + HTTP": ("/anthropic/", "/httpx", "/httpcore", "/h11/", "/anyio/", "/pydantic"),
    "event loop + sockets": ("/asyncio/", "selectors", "socket", "ssl"),
    "storage (pyarrow, json, files)": ("/pyarrow/", "/json/", "<built-in method posix", "/os.py"),
}


def profile_shares(dataset: str, work: Path, traces: int) -> dict[str, float]:
    profiler = cProfile.Profile()
    profiler.enable()
    run(dataset, work, 8, traces, "profiled")
    profiler.disable()
    stats = pstats.Stats(profiler)
    totals: dict[str, float] = dict.fromkeys([*GROUPS, "other"], 0.0)
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{filename} {function}"
        group = next((g for g, needles in GROUPS.items() if any(n in where for n in needles)), "other")
        totals[group] += tottime
    whole = sum(totals.values()) or 1.0
    return {group: round(value / whole, 4) for group, value in totals.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="requests per run (two samples a trace)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--fault-rate", type=float, default=0.2)
    args = parser.parse_args()
    traces = args.requests // SAMPLES
    work = Path(tempfile.mkdtemp(prefix="tooldistill-bench-teacher-"))
    os.environ["ANTHROPIC_API_KEY"] = "sk-ant-local-benchmark-key"
    try:
        dataset = str(work / "bfcl")
        ingest(
            IngestConfig(sources=("bfcl",), format="bfcl", out=dataset), LocalExecutor(show_progress=False)
        )
        runs: list[dict[str, Any]] = []
        for fault_rate in (0.0, args.fault_rate):
            server, url = start_server(dataset, fault_rate)
            os.environ["ANTHROPIC_BASE_URL"] = url
            try:
                for concurrency in args.concurrency:
                    name = f"c{concurrency}-f{fault_rate}"
                    figures = run(dataset, work, concurrency, traces, name)
                    figures["fault_rate"] = fault_rate
                    runs.append(figures)
                    print(
                        f"concurrency {concurrency:>3} faults {fault_rate:.0%}: {figures['requests_per_s']:>7.1f} req/s "
                        f"({figures['requests']} answered, {figures['retries']} retries, {figures['failed']} failed)"
                    )
                if fault_rate == 0.0:
                    shares = profile_shares(dataset, work, traces)
                    print(
                        "client CPU time by part (concurrency 8, no faults): "
                        + ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
                    )
            finally:
                server.terminate()
                server.wait()
        by = {(r["concurrency"], r["fault_rate"]): r["requests_per_s"] for r in runs}
        result = {
            "benchmark": "teacher",
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "requests_per_run": args.requests,
            "runs": runs,
            "speedup_vs_concurrency_1": {
                f"c{c}_f{f}": round(by[(c, f)] / by[(args.concurrency[0], f)], 2) for (c, f) in by
            },
            "client_cpu_share": shares,
            "notes": "local server in its own process; default retry policy (0.5 s base, full jitter); "
            "the server's 429 asks for 0.05 s and a slow answer takes 0.2 s",
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "teacher.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS / 'teacher.json'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
