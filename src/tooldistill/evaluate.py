"""Evaluate a student behind any OpenAI-compatible endpoint (``tooldistill evaluate``).

For each trace of a dataset: send its messages with its tools (native tool calling), parse the
reply, and judge the calls against the trace's reference in every match mode, and against the
teacher's consensus when the trace has teacher samples.  Requests run in a thread pool with a
concurrency limit, through the student's client (``student.StudentClient``): connection errors,
429 and 5xx are retried with backoff, and a request that times out is never sent again (the
student still has it): after a few such timeouts the evaluation stops with the throughput it
measured (``StudentTooSlow``).  Each example becomes one row of an ``evaluation`` dataset
(request, response, parsed calls, verdicts, latency, tokens, attempts); the aggregate (match rate
per mode with Wilson intervals, per-category and per-tool tables, the consistency ceiling) goes
into the manifest and ``summary.json``.  A trace whose request still failed after its retries is
an endpoint error: left out of the match rate and counted beside it (``match.stats.match_rate``).

An endpoint that cannot be reached fails before any example is sent, with one clear error.  The
API key is read from an environment variable and never written anywhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from tooldistill import store
from tooldistill.console import progress_bar
from tooldistill.context import ContextPolicy, DoesNotFit, fitter_for, summarize_fits
from tooldistill.match.consistency import consensus, consistency_report
from tooldistill.match.parse import Parsed, parse_message
from tooldistill.match.stats import aggregate
from tooldistill.request import apply_prompt, trace_request
from tooldistill.retrieval import DemoBank
from tooldistill.schema import Trace, content_hash
from tooldistill.scoring import check_modes, judge, write_json
from tooldistill.stage import StageRun, SummaryResult
from tooldistill.student import DEFAULTS, EndpointError, EndpointSettings, StudentClient
from tooldistill.student import StudentTooSlow as StudentTooSlow  # raised from here; the CLI catches it

STAGE = "evaluate"

EVAL_SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("source_id", pa.string()),
        ("category", pa.string()),
        ("request", pa.string()),
        ("response", pa.string()),
        ("output_form", pa.string()),
        ("calls", pa.string()),
        ("verdicts", pa.string()),
        ("consensus_verdicts", pa.string()),
        ("match", pa.bool_()),
        ("score", pa.float64()),
        ("reason", pa.string()),
        ("latency_s", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("attempts", pa.int64()),
        ("error", pa.string()),
        # what the context policy cut (JSON, null when nothing), and why a trace was not sent
        ("context", pa.string()),
        ("skipped", pa.string()),
    ]
)
store.SCHEMAS.setdefault("evaluation", EVAL_SCHEMA)


@dataclass(frozen=True)
class EvaluateConfig:
    dataset: str
    endpoint: str
    model: str
    out: str
    prompt: str | None = None
    modes: tuple[str, ...] = ("chain", "set", "names", "bfcl")
    concurrency: int = 8
    #: How the student is asked: the fields and defaults of ``student.EndpointSettings``.
    timeout_s: float = DEFAULTS.timeout_s
    retries: int = DEFAULTS.retries
    #: Timed-out requests (never sent again) after which the evaluation stops as too slow.
    max_timeouts: int = DEFAULTS.max_timeouts
    limit: int | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    api_key_env: str = DEFAULTS.api_key_env
    force: bool = False
    #: How a request longer than the student's window is cut (``context.ContextPolicy``).
    context: ContextPolicy | None = None

    def student(self) -> EndpointSettings:
        """Where the student answers and how it is asked (validated: a bad URL or timeout fails here)."""
        return EndpointSettings(
            endpoint=self.endpoint,
            model=self.model,
            timeout_s=self.timeout_s,
            retries=self.retries,
            max_timeouts=self.max_timeouts,
            api_key_env=self.api_key_env,
        )

    def config_hash(self, system: Any) -> str:
        """Hash of what decides the answers; ``system`` is the loaded prompt (text, or text and demos)."""
        return content_hash(
            {
                "endpoint": self.endpoint.rstrip("/"),
                "model": self.model,
                "prompt": system,
                "modes": list(self.modes),
                "limit": self.limit,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                **({"context": self.context.model_dump(mode="json")} if self.context else {}),
            },
            16,
        )


def load_prompt(path: str | None) -> str | None:
    """The system prompt of a prompt artifact: a JSON file with ``system`` (or ``instructions``),
    or plain text."""
    if path is None:
        return None
    try:
        text = store.read_file(path).decode("utf-8")
    except (store.StoreError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read prompt artifact {path}: {error}") from error
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict):
        for key in ("system", "instructions", "prompt"):
            if isinstance(value.get(key), str):
                return value[key]
    raise ValueError(f"prompt artifact {path} has no 'system' text")


def load_artifact(path: str | None) -> tuple[str | None, list[dict[str, Any]]]:
    """The system prompt and the few-shot messages (``demos``: OpenAI chat messages placed between
    the system prompt and the conversation) of a prompt artifact written by ``tooldistill optimize``."""
    system = load_prompt(path)
    if path is None:
        return system, []
    try:
        value = json.loads(store.read_file(path).decode("utf-8"))
    except ValueError:
        return system, []
    demos = value.get("demos") if isinstance(value, dict) else None
    if demos is None:
        return system, []
    if not isinstance(demos, list) or not all(isinstance(d, dict) and "role" in d for d in demos):
        raise ValueError(f"prompt artifact {path}: 'demos' must be a list of chat messages with a 'role'")
    return system, demos


def load_bank(path: str | None) -> DemoBank | None:
    """The ``dicl`` bank of a prompt artifact (``retrieval.DemoBank``), None when it has none."""
    if path is None:
        return None
    try:
        value = json.loads(store.read_file(path).decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("dicl") is None:
        return None
    try:
        return DemoBank.model_validate(value["dicl"])
    except ValueError as error:
        raise ValueError(f"prompt artifact {path}: its dicl bank is broken: {error}") from None


def first_message(response: Any) -> dict[str, Any] | None:
    """The first choice's message of a chat-completions response, or None."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        return message if isinstance(message, dict) else None
    return None


def parse_response(response: Any) -> Parsed:
    """The calls in a chat-completions response (its first choice's message)."""
    message = first_message(response)
    if message is None:
        return Parsed(error="unparseable: response has no message")
    return parse_message(message)


def evaluate_one(
    client: StudentClient,
    trace: Trace,
    config: EvaluateConfig,
    system: str | None,
    demos: Sequence[dict[str, Any]] | None = None,
    bank: DemoBank | None = None,
) -> dict[str, Any]:
    request = trace_request(trace, config.model, config.temperature, config.max_tokens)
    chosen = [*(demos or []), *(bank.select(request) if bank is not None else [])]
    request = apply_prompt(request, system, chosen)
    fitter = fitter_for(config.context)
    skipped: str | None = None
    context: dict[str, Any] | None = None
    if fitter is not None:
        try:
            fit = fitter.fit(request)
            request, context = fit.request, fit.record()
        except DoesNotFit as error:
            skipped = str(error)
    row: dict[str, Any] = {
        "trace_id": trace.id,
        "source_id": trace.source_id,
        "category": trace.category,
        "request": json.dumps(request, ensure_ascii=False),
        "response": None,
        "output_form": None,
        "calls": "[]",
        "verdicts": None,
        "consensus_verdicts": None,
        "match": False,
        "score": 0.0,
        "reason": None,
        "latency_s": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "attempts": 0,
        "error": None,
        "context": json.dumps(context) if context else None,
        "skipped": skipped,
    }
    if skipped:  # never sent: it would be an HTTP 400, not a measure of the student
        row["reason"] = f"skipped: {skipped}"
        return row
    started = time.perf_counter()
    try:
        response, attempts = client.chat(request)
    except EndpointError as error:
        row.update(
            error=str(error), reason=f"endpoint error: {error}", latency_s=time.perf_counter() - started
        )
        return row
    row["latency_s"] = round(time.perf_counter() - started, 4)
    row["attempts"] = attempts
    row["response"] = json.dumps(response, ensure_ascii=False)
    usage = response.get("usage") or {}
    row["prompt_tokens"] = usage.get("prompt_tokens")
    row["completion_tokens"] = usage.get("completion_tokens")
    parsed = parse_response(response)
    judged = judge(trace, parsed, config.modes)
    first = judged["verdicts"][config.modes[0]]
    row.update(
        output_form=parsed.form,
        calls=json.dumps(judged["calls"], ensure_ascii=False),
        verdicts=json.dumps(judged["verdicts"]),
        match=first["match"],
        score=first["score"],
        reason=first["reason"],
    )
    agreed = consensus(trace)
    if agreed is not None:
        against = judge(
            trace, parsed, [m for m in config.modes if m != "bfcl"] or ["chain"], reference=agreed.calls
        )
        row["consensus_verdicts"] = json.dumps(against["verdicts"])
    return row


class EvaluationResult(SummaryResult):
    """The stage result of an evaluation; ``summary`` holds its match rates."""


def evaluate(
    config: EvaluateConfig, progress: Callable[[int, int], None] | None = None, show_progress: bool = True
) -> EvaluationResult:
    """Run the evaluation: the answers dataset, its summary, and whether it was up to date.

    A run with endpoint errors is published (nothing good is lost) but incomplete, so the next run
    asks again instead of keeping the failures."""
    modes = tuple(check_modes(config.modes))
    config = replace(config, modes=modes)
    source = store.Dataset.open(config.dataset)
    system, demos = load_artifact(config.prompt)
    bank = load_bank(config.prompt)
    config_hash = config.config_hash(
        {"system": system, "demos": demos, **({"dicl": bank.model_dump(mode="json")} if bank else {})}
        if demos or bank
        else system
    )
    inputs = [config.dataset, source.manifest.fingerprint]
    run = StageRun.start(STAGE, config.out, config_hash, inputs, [config.dataset], kind="evaluation")
    earlier = run.existing(force=config.force)
    if earlier is not None:
        return EvaluationResult(earlier.dataset, True, earlier.stats)
    traces = source.to_traces()
    if config.limit is not None:
        traces = traces[: config.limit]
    client = config.student().client()
    client.check()
    fitter_for(config.context)  # a tokenizer that cannot be loaded fails here, before any request
    rows: list[dict[str, Any] | None] = [None] * len(traces)
    with (
        progress_bar("evaluate", len(traces), show_progress) as advance,
        ThreadPoolExecutor(max_workers=max(1, config.concurrency)) as pool,
    ):
        futures = {
            pool.submit(evaluate_one, client, t, config, system, demos, bank): i for i, t in enumerate(traces)
        }
        for done, future in enumerate(as_completed(futures), start=1):
            rows[futures[future]] = future.result()
            advance(1)
            if progress is not None:
                progress(done, len(traces))
    complete = [r for r in rows if r is not None]
    summary = summarize(complete, traces, modes, config.context)
    summary.update(endpoint=config.endpoint, model=config.model, prompt=config.prompt, dataset=config.dataset)
    summary["throughput"] = client.meter.throughput()
    table = pa.Table.from_pylist(complete, schema=EVAL_SCHEMA)
    parts = [store.write_part(config.out, run.token, 0, table)] if complete else []
    result = run.publish(parts, {"summary": summary}, complete=not summary["errors"])
    write_json(config.out, "summary.json", summary)
    return EvaluationResult(result.dataset, False, result.stats, result.complete)


def summarize(
    rows: Sequence[dict[str, Any]],
    traces: Sequence[Trace],
    modes: Sequence[str],
    context: ContextPolicy | None = None,
) -> dict[str, Any]:
    """Match rates against the reference and the consensus, beside the consistency ceiling."""
    by_id = {t.id: t for t in traces}
    records = []
    for row in rows:
        trace = by_id.get(row["trace_id"])
        calls = json.loads(row["calls"]) if row["calls"] else []
        records.append(
            {
                "category": row["category"],
                "error": row["error"],
                "skipped": row.get("skipped"),
                "verdicts": json.loads(row["verdicts"]) if row["verdicts"] else {},
                "predicted_tools": [c["name"] for c in calls],
                "expected_tools": [c.name for c in trace.reference_calls] if trace else [],
            }
        )
    summary = aggregate(records, list(modes))
    consensus_rows = [
        {**record, "verdicts": json.loads(row["consensus_verdicts"])}
        for record, row in zip(records, rows, strict=True)
        if row["consensus_verdicts"] and not row["error"] and not row.get("skipped")
    ]
    if consensus_rows:
        consensus_modes = list(consensus_rows[0]["verdicts"])
        summary["vs_consensus"] = aggregate(consensus_rows, consensus_modes)["modes"]
    summary["consistency"] = consistency_report(traces)
    latencies = sorted(r["latency_s"] for r in rows if r["latency_s"] is not None and not r["error"])
    if latencies:
        summary["latency_s"] = {
            "p50": round(latencies[len(latencies) // 2], 4),
            "p95": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))], 4),
        }
    summary["tokens"] = {
        "prompt": sum(r["prompt_tokens"] or 0 for r in rows),
        "completion": sum(r["completion_tokens"] or 0 for r in rows),
    }
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        summary["first_error"] = errors[0]
    if context is not None and context.window:
        summary["context"] = {
            "window": context.window,
            "tokenizer": "student" if context.tokenizer else "bytes",
            **summarize_fits(
                [
                    json.loads(r["context"]) if r.get("context") else None
                    for r in rows
                    if not r.get("skipped")
                ],
                sum(1 for r in rows if r.get("skipped")),
            ),
        }
        first_skip = next((r["skipped"] for r in rows if r.get("skipped")), None)
        if first_skip:
            summary["context"]["first_skipped"] = first_skip
    return summary
