"""The CPU student's speed: dtype and engine threads, and what Ray Serve costs in front of vLLM.

Two parts, one run, figures to ``benchmarks/results/serve.json`` with the CPU's model and flags:

1. **Engine settings** (``vllm serve`` on the prepared SmolLM2-135M, one engine at a time): prompt
   tokens/s (long tool-list prompts, one generated token) and generation tokens/s (short prompts,
   fixed-length answers) for bfloat16 and float32 weights and 1 and 2 engine threads.  On a CPU
   with native bf16 the float32 cells run again with ``ONEDNN_MAX_CPU_ISA=AVX2``, which keeps
   oneDNN (vLLM's CPU matrix products) to AVX2 as on a CPU without bf16; one thread's matrix
   product GFLOP/s per dtype, native and capped, shows the bf16 slow path that the dtype choice
   avoids (``serve.cpu``).  Every cell has a time budget.
2. **Ray Serve against vLLM** with the settings the CPU profile chooses here: the same model behind
   ``tooldistill serve`` and behind ``vllm serve``, output tokens/s and p50/p99 latency at
   concurrency 1, 8 and 32 (``--rounds``; the order flips every round).  Target: Ray Serve adds at
   most 15% latency and keeps at least 90% of the throughput.

    python benchmarks/serve.py [--part engine|ray|both] [--rounds 1] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
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

from tooldistill.serve.cpu import capabilities as cpu_capabilities
from tooldistill.serve.cpu import choose_dtype, machine_record, native_bf16, usable_cores
from tooldistill.serve.models import models_home, prepare

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


def tool_list(count: int, salt: int = 0) -> list[dict[str, Any]]:
    """A BFCL-like tool list (most of a real prompt is tool schemas); ``salt`` makes it differ
    from its first token on, so prefix caching cannot skip its prefill."""
    return [
        {
            "type": "function",
            "function": {
                "name": f"s{salt}_service_{i}_lookup",
                "description": f"Look up records of service {i} by account, region and date range; "
                "returns the matching entries with their status and owner.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "account": {"type": "string", "description": "The account identifier"},
                        "region": {"type": "string", "enum": ["eu", "us", "ap"]},
                        "start": {"type": "string", "description": "First day, YYYY-MM-DD"},
                        "end": {"type": "string", "description": "Last day, YYYY-MM-DD"},
                    },
                    "required": ["account"],
                },
            },
        }
        for i in range(count)
    ]


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


def engine_kwargs() -> dict[str, Any]:
    llm = yaml.safe_load(PROFILE.read_text())["applications"][0]["args"]["llm_configs"][0]
    return dict(llm["engine_kwargs"])


def start_ray(folder: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
    """The CPU profile as it is (its dtype and threads chosen for this machine), on this folder."""
    command = [sys.executable, "-m", "tooldistill.cli", "serve", "--config", str(PROFILE), "--port", str(port),
               "--model-source", str(folder), "--no-wait"]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def start_vllm(
    folder: Path, port: int, dtype: str, threads: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    engine = engine_kwargs()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
        "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
        "--max-model-len", str(engine["max_model_len"]), "--max-num-seqs", str(engine["max_num_seqs"]),
        "--enable-auto-tool-choice", "--tool-call-parser", engine["tool_call_parser"],
    ]  # fmt: skip
    if engine.get("enforce_eager"):
        command.append("--enforce-eager")
    if engine.get("enable_prefix_caching"):
        command.append("--enable-prefix-caching")
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # as the CPU profile's cpu_engine sets them (serve/app.py): unbound OpenMP threads
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": str(threads),
        **(extra_env or {}),
    }
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


def post(url: str, body: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def one(url: str, index: int, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {index}: describe the weather in Paris today."}],
        "tools": [TOOL],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    started = time.perf_counter()
    answer = post(url, body, timeout=600)
    return time.perf_counter() - started, int(answer["usage"]["completion_tokens"])


def budgeted(
    url: str, bodies: list[dict[str, Any]], concurrency: int, budget_s: float
) -> tuple[int, int, int, float]:
    """Send ``bodies`` ``concurrency`` at a time, starting no new one after ``budget_s``;
    returns (requests, prompt tokens, completion tokens, seconds)."""
    started = time.perf_counter()

    def send(body: dict[str, Any]) -> tuple[int, int] | None:
        if time.perf_counter() - started > budget_s:
            return None
        usage = post(url, body)["usage"]
        return int(usage["prompt_tokens"]), int(usage["completion_tokens"])

    with ThreadPoolExecutor(concurrency) as pool:
        done = [r for r in pool.map(send, bodies) if r is not None]
    return len(done), sum(r[0] for r in done), sum(r[1] for r in done), time.perf_counter() - started


def engine_cell(url: str, budget_s: float) -> dict[str, Any]:
    """Prompt tokens/s on ~1,000-token tool-list prompts, generation tokens/s on short ones."""
    post(url, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})  # warm
    prefill = [
        {
            "model": MODEL,
            # a different first line every time: prefix caching must not make prefill free
            "messages": [{"role": "user", "content": f"Ticket {i}: find the records of account A-{i}."}],
            "tools": tool_list(12, salt=i),
            "max_tokens": 1,
            "temperature": 0,
        }
        for i in range(16)
    ]
    n, prompt_tokens, _, seconds = budgeted(url, prefill, 2, budget_s)
    decode = [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Request {i}: describe the weather in Paris."}],
            "max_tokens": 64,
            "temperature": 0,
            "ignore_eos": True,
        }
        for i in range(32)
    ]
    m, _, completion_tokens, decode_s = budgeted(url, decode, 8, budget_s)
    return {
        "prefill_requests": n,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_per_s": round(prompt_tokens / seconds, 1),
        "decode_requests": m,
        "generated_tokens": completion_tokens,
        "generation_tokens_per_s": round(completion_tokens / decode_s, 1),
    }


def folders() -> dict[str, Path]:
    home = models_home()
    return {
        dtype: prepare("smollm2", home / f"{MODEL}-bench-{dtype}", dtype=dtype)[0]
        for dtype in ("bfloat16", "float32")
    }


MATMUL = """
import json, time, torch
torch.set_num_threads(1)
out = {}
for name in ("float32", "bfloat16"):
    a, b = torch.randn(64, 576, dtype=getattr(torch, name)), torch.randn(576, 1536, dtype=getattr(torch, name))
    for _ in range(3):
        a @ b
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < 2.0:
        a @ b
        n += 1
    out[name] = round(2 * 64 * 576 * 1536 * n / (time.perf_counter() - started) / 1e9, 2)
print(json.dumps(out))
"""


def matmul_part(capped: bool) -> dict[str, Any]:
    """GFLOP/s of one thread's (64x576)@(576x1536) product (a SmolLM2 MLP shape) per dtype."""
    env = {**os.environ, **({"ONEDNN_MAX_CPU_ISA": "AVX2"} if capped else {})}
    done = subprocess.run([sys.executable, "-c", MATMUL], env=env, capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["isa"] = "avx2 (ONEDNN_MAX_CPU_ISA=AVX2)" if capped else "native"
    figures["bf16_over_fp32"] = round(figures["bfloat16"] / figures["float32"], 4)
    print(
        f"matmul {figures['isa']}: float32 {figures['float32']} GFLOP/s, bfloat16 {figures['bfloat16']} GFLOP/s"
    )
    return figures


def engine_part(budget_s: float) -> list[dict[str, Any]]:
    paths = folders()
    cores = usable_cores()
    native, _ = native_bf16(cpu_capabilities())
    # Capped to AVX2, vLLM's bf16 kernels fail outright (HTTP 500) instead of running slowly as on a
    # real AVX2 CPU, so the capped cells are float32 only; the bf16 slow path is in "matmul".
    isas = [("native", {}, ("bfloat16", "float32"))] + (
        [("avx2 (ONEDNN_MAX_CPU_ISA=AVX2)", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, ("float32",))] if native else []
    )
    cells = []
    for isa, extra, dtypes in isas:
        for dtype in dtypes:
            for threads in sorted({1, min(2, cores)}):
                port = free_port()
                process = start_vllm(paths[dtype], port, dtype, threads, extra)
                url = f"http://127.0.0.1:{port}"
                try:
                    startup = wait_ready(url, process)
                    figures = {"isa": isa, "dtype": dtype, "threads": threads, "startup_s": round(startup, 1)}
                    figures.update(engine_cell(url, budget_s))
                finally:
                    stop(process)
                cells.append(figures)
                print(
                    f"{isa:>30} {dtype:>8} threads={threads}: prompt {figures['prompt_tokens_per_s']:>7.1f} tok/s, "
                    f"generation {figures['generation_tokens_per_s']:>6.1f} tok/s",
                    flush=True,
                )
    return cells


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


def ray_part(rounds: int, max_tokens: int, concurrencies: list[int]) -> dict[str, Any]:
    choice = choose_dtype()
    folder, _ = prepare("smollm2", dtype=choice.dtype)
    work = Path(tempfile.mkdtemp(prefix="tooldistill-bench-serve-"))
    runs: dict[str, list[dict[str, Any]]] = {"ray_serve": [], "vllm": []}
    startup: dict[str, list[float]] = {"ray_serve": [], "vllm": []}
    for round_ in range(rounds):
        order = ["ray_serve", "vllm"] if round_ % 2 == 0 else ["vllm", "ray_serve"]
        for name in order:
            port = free_port()
            process = (
                start_ray(folder, port, work)
                if name == "ray_serve"
                else start_vllm(folder, port, choice.dtype, usable_cores())
            )
            url = f"http://127.0.0.1:{port}"
            try:
                startup[name].append(round(wait_ready(url, process), 1))
                for concurrency in concurrencies:
                    figures = load(url, concurrency, max_tokens)
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
    for concurrency in concurrencies:
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
    print(json.dumps(ratios, indent=2))
    return {
        "dtype": choice.to_json(),
        "max_tokens": max_tokens,
        "rounds": rounds,
        "startup_s": startup,
        "runs": runs,
        "ratios": ratios,
        "target": "Ray Serve throughput >= 0.90 of vLLM's and p50 latency <= 1.15x at every concurrency",
        "meets_target": meets,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["engine", "ray", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--budget", type=float, default=45.0, help="Seconds per engine cell and load.")
    parser.add_argument("--out", default=str(RESULTS / "serve.json"))
    args = parser.parse_args()
    caps = cpu_capabilities()
    result: dict[str, Any] = {
        "benchmark": "serve",
        "machine": machine_record(),
        "model": MODEL,
        "chosen": choose_dtype().to_json(),
    }
    if args.part in ("engine", "both"):
        result["matmul"] = [matmul_part(False)] + ([matmul_part(True)] if native_bf16(caps)[0] else [])
        result["engine"] = engine_part(args.budget)
    if args.part in ("ray", "both"):
        result["ray_vs_vllm"] = ray_part(args.rounds, args.max_tokens, args.concurrency)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
