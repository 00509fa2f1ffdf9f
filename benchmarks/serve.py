"""What Ray Serve costs in front of vLLM: the same model, the same machine, the same load.

Two servers of SmolLM2-135M-Instruct (the prepared CPU student), started one after the other and
measured alternately (``--rounds``; the order flips every round so drift on a shared machine hits
both):

- **Ray Serve**: ``tooldistill serve`` with the CPU profile, one replica given both cores;
- **vLLM**: ``vllm serve`` on the same folder with the same engine settings.

At each concurrency (1, 8, 32) a fixed set of chat requests with a tool is sent, each asking for
exactly ``--max-tokens`` tokens (``ignore_eos``), and the output tokens/s and the p50/p99 request
latency are recorded.  Figures and Ray/vLLM ratios go to ``benchmarks/results/serve.json``.
Target: Ray Serve adds at most 15% latency and keeps at least 90% of the throughput.

    python benchmarks/serve.py [--rounds 1] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from tooldistill.serve.models import prepare

RESULTS = Path(__file__).parent / "results"
PROFILE = Path(__file__).parent.parent / "configs" / "serve" / "cpu-smollm2.yaml"
MODEL = "smollm2-135m-instruct"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
REQUESTS = {1: 8, 8: 32, 32: 64}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 900) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                if MODEL in response.read().decode():
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("server did not answer /v1/models in time")


def start_ray(folder: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
    profile = yaml.safe_load(PROFILE.read_text())
    llm = profile["applications"][0]["args"]["llm_configs"][0]
    llm["placement_group_config"] = {"bundles": [{"CPU": os.cpu_count() or 2}]}  # both cores, as vLLM gets
    path = work / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    command = [sys.executable, "-m", "tooldistill.cli", "serve", "--config", str(path), "--port", str(port),
               "--model-source", str(folder), "--no-wait"]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def start_vllm(folder: Path, port: int) -> subprocess.Popen[bytes]:
    engine = yaml.safe_load(PROFILE.read_text())["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
        "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(engine["max_model_len"]), "--max-num-seqs", str(engine["max_num_seqs"]),
        "--enable-auto-tool-choice", "--tool-call-parser", engine["tool_call_parser"],
    ]  # fmt: skip
    if engine.get("enforce_eager"):
        command.append("--enforce-eager")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    time.sleep(3)  # let the engine's processes go before the next server starts


def one(url: str, index: int, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {index}: describe the weather in Paris today."}],
        "tools": [TOOL],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - started, int(answer["usage"]["completion_tokens"])


def load(url: str, concurrency: int, max_tokens: int) -> dict[str, Any]:
    one(url, -1, 8)  # warm
    count = REQUESTS[concurrency]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: one(url, i, max_tokens), range(count)))
    wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {
        "concurrency": concurrency,
        "requests": count,
        "output_tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(latencies[len(latencies) // 2], 4),
        "latency_p99_s": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    folder, _ = prepare("smollm2")
    work = Path(tempfile.mkdtemp(prefix="tooldistill-bench-serve-"))
    runs: dict[str, list[dict[str, Any]]] = {"ray_serve": [], "vllm": []}
    startup: dict[str, list[float]] = {"ray_serve": [], "vllm": []}
    for round_ in range(args.rounds):
        order = ["ray_serve", "vllm"] if round_ % 2 == 0 else ["vllm", "ray_serve"]
        for name in order:
            port = free_port()
            process = start_ray(folder, port, work) if name == "ray_serve" else start_vllm(folder, port)
            url = f"http://127.0.0.1:{port}"
            try:
                startup[name].append(round(wait_ready(url, process), 1))
                for concurrency in args.concurrency:
                    figures = load(url, concurrency, args.max_tokens)
                    figures["round"] = round_
                    runs[name].append(figures)
                    print(
                        f"{name:>9} c={concurrency:<3} {figures['tokens_per_s']:>8.1f} tok/s  "
                        f"p50 {figures['latency_p50_s']:.3f} s  p99 {figures['latency_p99_s']:.3f} s",
                        flush=True,
                    )
            finally:
                stop(process)

    def mean(name: str, concurrency: int, key: str) -> float:
        values = [r[key] for r in runs[name] if r["concurrency"] == concurrency]
        return sum(values) / len(values)

    ratios = {}
    for concurrency in args.concurrency:
        ratios[f"c{concurrency}"] = {
            "throughput_ray_over_vllm": round(
                mean("ray_serve", concurrency, "tokens_per_s") / mean("vllm", concurrency, "tokens_per_s"), 3
            ),
            "p50_latency_ray_over_vllm": round(
                mean("ray_serve", concurrency, "latency_p50_s") / mean("vllm", concurrency, "latency_p50_s"),
                3,
            ),
            "p99_latency_ray_over_vllm": round(
                mean("ray_serve", concurrency, "latency_p99_s") / mean("vllm", concurrency, "latency_p99_s"),
                3,
            ),
        }
    meets = all(
        r["throughput_ray_over_vllm"] >= 0.90 and r["p50_latency_ray_over_vllm"] <= 1.15
        for r in ratios.values()
    )
    result = {
        "benchmark": "serve",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "model": MODEL,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "startup_s": startup,
        "runs": runs,
        "ratios": ratios,
        "target": "Ray Serve throughput >= 0.90 of vLLM's and p50 latency <= 1.15x at every concurrency",
        "meets_target": meets,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"target met: {meets}; wrote {RESULTS / 'serve.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
