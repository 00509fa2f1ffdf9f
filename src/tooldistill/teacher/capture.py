"""``tooldistill teacher capture``: ask Claude for N samples per trace, losing nothing paid for.

For every trace of a dataset and every sample index, one request (its messages and tools in
Anthropic's format, see ``request.py``) is sent through the Messages API or the Message Batches
API.  Each answer is written to the request cache the moment it arrives; only then does it count as
done.  A rerun, or a run restarted after a kill, sends only the requests the cache does not hold,
and resumes polling batches an earlier run submitted.

The output is the input dataset with ``teacher_samples`` filled from the answers (one list of calls
per sample, in sample order) and ``metadata["teacher"]``: per-sample usage, cost, latency and stop
reason, and the trace's self-agreement (a quality signal for curation).  The run summary (tokens,
cost, prompt-cache hits, retries, failures, the consistency ceiling) goes into the manifest and
``summary.json``.  Requests that still failed after their retries are reported, and the dataset is
published as incomplete so the next run asks for them again.

What Claude wrote (text, tool-call arguments, thinking) passes through ``redact.Redactor`` before the
answer is written anywhere, the request cache included: a secret Claude repeats from the conversation
or makes up is stored as ``[REDACTED:<kind>]``, and the counts per kind go to the manifest's
``stats.secrets_redacted`` as ingest's do.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from tooldistill import store
from tooldistill.console import progress as terminal_progress
from tooldistill.layout import TeacherLayout, parent_and_name
from tooldistill.match.compare import chain_key
from tooldistill.match.consistency import consensus, consistency_report
from tooldistill.redact import Redactor
from tooldistill.schema import ToolCall, Trace, traces_to_table
from tooldistill.scoring import write_json
from tooldistill.stage import StageRun, SummaryResult
from tooldistill.teacher.cache import RequestCache
from tooldistill.teacher.client import (
    Answer,
    BatchSettings,
    Caller,
    Failure,
    Job,
    PermanentError,
    RetryPolicy,
    make_client,
    run_batches,
    run_messages,
)
from tooldistill.teacher.limits import RateLimiter
from tooldistill.teacher.options import CaptureConfig, ClaudeSettings
from tooldistill.teacher.pricing import Price, cost, price_for
from tooldistill.teacher.request import (
    build_params,
    calls_from_content,
    prefix_key,
    request_key,
    text_from_content,
)

STAGE = "teacher"
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
#: What ``metadata["teacher"]["requests"]`` keeps of each answer's record.
DATASET_FIELDS = ("key", "sample", "mode", "stop_reason", "usage", "cost_usd")


class TeacherError(RuntimeError):
    """The teacher cannot be asked at all (no key, unknown model, refused credentials)."""


@dataclass
class CaptureResult(SummaryResult):
    """The stage result of a capture, with the requests that failed (asked again next run)."""

    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    #: one job per distinct request (traces asking the very same thing share their jobs)
    jobs: list[Job]
    #: the request key of each sample of each trace
    wanted: dict[str, list[str]]
    #: API-to-original tool names of each trace
    names: dict[str, dict[str, str]]


def plan(traces: list[Trace], config: CaptureConfig) -> Plan:
    """The requests for every trace and sample."""
    jobs: list[Job] = []
    names: dict[str, dict[str, str]] = {}
    wanted: dict[str, list[str]] = {}
    seen: set[str] = set()
    for trace in traces:
        params, api_names = build_params(
            trace,
            model=config.model,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            system_prompt=config.system_prompt,
            cache=config.prompt_caching,
        )
        names[trace.id] = api_names
        prefix = prefix_key(params) if config.prompt_caching else ""
        keys = wanted.setdefault(trace.id, [])
        for sample in range(config.samples):
            key = request_key(params, sample)
            keys.append(key)
            if key not in seen:
                seen.add(key)
                jobs.append(Job(key=key, trace_id=trace.id, sample=sample, params=params, prefix=prefix))
    return Plan(jobs, wanted, names)


#: Keys of an answer's content blocks that hold no text of Claude's: the block's kind, ids, the tool's
#: name (ours, from the request) and the opaque signature of a thinking block.
_STRUCTURAL = frozenset({"type", "id", "name", "tool_use_id", "signature"})


def redact_content(content: list[Any], redactor: Redactor) -> list[Any]:
    """An answer's content blocks with secrets replaced in everything Claude wrote: the text of text
    and thinking blocks, the input of tool calls (keyed like ingest's call arguments: a value under
    ``password`` or ``api_key`` is a secret), citations.  An encrypted ``redacted_thinking`` block is
    kept as it came."""
    out: list[Any] = []
    for block in content:
        if not isinstance(block, dict):
            out.append(redactor.value(block))
        elif block.get("type") == "redacted_thinking":
            out.append(block)
        else:
            out.append({k: v if k in _STRUCTURAL else redactor.value(v) for k, v in block.items()})
    return out


def redact_record(record: dict[str, Any]) -> dict[str, Any]:
    """A stored answer made before redaction (an older cache, or ``redact`` off then), redacted now:
    its content counted, its calls and text (views of the same content) replaced alike."""
    counted, again = Redactor(), Redactor()
    calls = [
        {**call, "arguments": again.value(call.get("arguments") or {})} for call in record.get("calls") or []
    ]
    return {
        **record,
        "content": redact_content(list(record.get("content") or []), counted),
        "calls": calls,
        "text": again.text(str(record.get("text") or "")),
        "redacted": dict(sorted(counted.counts.items())),
    }


def make_record(
    answer: Answer, names: dict[str, str], prices: dict[str, Price] | None, redact: bool = True
) -> dict[str, Any]:
    """What is kept of one answer (never the request headers, so never the key), with secrets in
    what Claude wrote replaced (``redacted``: counts per kind; None when redaction is off)."""
    message = answer.message
    content = message.get("content") or []
    redactor = Redactor(enabled=redact)
    if redact:
        content = redact_content(list(content), redactor)
    usage = {name: int((message.get("usage") or {}).get(name) or 0) for name in USAGE_FIELDS}
    model = str(message.get("model") or answer.job.params.get("model") or "")
    return {
        "key": answer.job.key,
        "trace_id": answer.job.trace_id,
        "sample": answer.job.sample,
        "model": model,
        "mode": answer.mode,
        "message_id": message.get("id"),
        "content": content,
        "calls": [c.model_dump() for c in calls_from_content(content, names)],
        "text": text_from_content(content),
        "stop_reason": message.get("stop_reason"),
        "usage": usage,
        "cost_usd": cost(usage, price_for(model, prices), batch=answer.mode == "batch"),
        "latency_s": round(answer.latency_s, 4),
        "attempts": answer.attempts,
        "at": time.time(),
        "redacted": dict(sorted(redactor.counts.items())) if redact else None,
    }


def cached_record(cache: RequestCache, key: str, redact: bool) -> dict[str, Any] | None:
    """A stored answer; one stored unredacted is redacted now and stored again, so the secret
    leaves the cache too."""
    record = cache.get(key)
    if record is not None and redact and record.get("redacted") is None:
        record = redact_record(record)
        cache.put(key, record)
    return record


def secret_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """Secrets replaced per kind over ``records`` (one per distinct request)."""
    total: Counter[str] = Counter()
    for record in records:
        total.update(record.get("redacted") or {})
    return dict(sorted(total.items()))


def capture(
    config: CaptureConfig,
    show_progress: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CaptureResult:
    source = store.Dataset.open(config.dataset)
    inputs = [config.dataset, source.manifest.fingerprint]
    run = StageRun.start(STAGE, config.out, config.config_hash(), inputs, [config.dataset])
    earlier = run.existing(force=config.force)
    if earlier is not None:
        return CaptureResult(earlier.dataset, True, earlier.stats)
    traces = source.to_traces()
    if config.limit is not None:
        traces = traces[: config.limit]
    planned = plan(traces, config)
    jobs, names = planned.jobs, planned.names
    cache = RequestCache(config.cache_uri)
    done_before = cache.done_keys()
    pending = [job for job in jobs if job.key not in done_before]
    started = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    if pending:
        stats = asyncio.run(
            ask_claude(config, pending, names, cache, records, failures, show_progress, progress, len(jobs))
        )
    for job in jobs:
        if job.key not in records and job.key in done_before:
            record = cached_record(cache, job.key, config.redact)
            if record is not None:
                records[job.key] = record
    out_traces = [
        _with_samples(t, config, [records.get(key) for key in planned.wanted.get(t.id, [])]) for t in traces
    ]
    summary = summarize(jobs, records, failures, done_before, out_traces, config, stats)
    summary["elapsed_s"] = round(time.perf_counter() - started, 3)
    parts = [store.write_part(config.out, run.token, 0, traces_to_table(out_traces))] if out_traces else []
    stats = {"summary": summary, "secrets_redacted": summary["secrets_redacted"]}
    result = run.publish(parts, stats, complete=not failures)
    write_json(*parent_and_name(TeacherLayout(config.out).summary), summary)
    return CaptureResult(result.dataset, False, result.stats, result.complete, failures=failures)


def _with_samples(trace: Trace, config: CaptureConfig, found: list[dict[str, Any] | None]) -> Trace:
    got = sorted((r for r in found if r is not None), key=lambda r: r["sample"])
    samples = [[ToolCall(**c) for c in r["calls"]] for r in got]
    teacher: dict[str, Any] = {
        "model": config.model,
        "requested": config.samples,
        "samples": len(samples),
        # what was answered and paid, not how long it took or how often it was retried (those stay
        # in the request cache and the summary): the same answers make the same dataset, byte for
        # byte, whether the run went through at once or was killed and resumed
        "requests": [{k: r[k] for k in DATASET_FIELDS} for r in got],
    }
    updated = trace.model_copy(update={"teacher_samples": samples})
    if samples:
        schemas = {tool.name: tool.parameters for tool in trace.tools}
        reference = chain_key(trace.reference_calls, schemas)
        teacher["reference_agreement"] = round(
            sum(chain_key(s, schemas) == reference for s in samples) / len(samples), 4
        )
        agreed = consensus(updated)
        if agreed is not None:
            teacher.update(
                pairwise_agreement=round(agreed.pairwise, 4),
                all_agree=agreed.all_agree,
                consensus_support=round(agreed.support, 4),
            )
    return updated.model_copy(update={"metadata": {**trace.metadata, "teacher": teacher}})


async def ask_claude(
    config: ClaudeSettings,
    pending: list[Job],
    names: dict[str, dict[str, str]],
    cache: RequestCache,
    records: dict[str, dict[str, Any]],
    failures: list[dict[str, Any]],
    show_progress: bool,
    progress: Callable[[int, int], None] | None,
    total: int,
    label: str = "teacher",
) -> dict[str, Any]:
    """Send ``pending``; every answer is made a record (``make_record``), written to ``cache`` and
    put in ``records`` by key; requests that fail for good go to ``failures``."""
    client = make_client(config.timeout_s, config.api_key_env)
    limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
    caller = Caller(limiter, RetryPolicy(config.retries, config.retry_base_s, config.retry_cap_s))
    await _preflight(client, caller, config.model)
    already = total - len(pending)
    with terminal_progress(
        TextColumn(label + (" (batch)" if config.batch else "")),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        show=show_progress,
    ) as bar:
        task = bar.add_task(label, total=total, completed=already, note="")

        def advance() -> None:
            bar.advance(task)
            if progress is not None:
                progress(len(records) + len(failures) + already, total)

        async def on_answer(answer: Answer) -> None:
            if answer.job.key in records:
                return
            record = make_record(
                answer, names.get(answer.job.trace_id, {}), config.prices, redact=config.redact
            )
            # durable before it counts: a kill after this line loses nothing paid for
            await asyncio.to_thread(cache.put, answer.job.key, record)
            records[answer.job.key] = record
            advance()

        async def on_failure(failure: Failure) -> None:
            failures.append(
                {
                    "key": failure.job.key,
                    "trace_id": failure.job.trace_id,
                    "sample": failure.job.sample,
                    # an error message can quote the request back
                    "reason": Redactor(enabled=config.redact).text(failure.reason),
                    "attempts": failure.attempts,
                    "permanent": failure.permanent,
                }
            )
            advance()

        batch_counts: dict[str, int] = {}
        try:
            if config.batch:
                settings = BatchSettings(
                    config.poll_s,
                    config.poll_max_s,
                    config.resubmits,
                    config.batch_max_requests,
                    config.batch_max_bytes,
                )
                batch_counts = await run_batches(
                    client,
                    pending,
                    caller,
                    settings,
                    list(cache.open_batches()),
                    cache.save_batch,
                    cache.drop_batch,
                    on_answer,
                    on_failure,
                    on_event=lambda text: bar.update(task, note=text),
                )
            else:
                await run_messages(client, pending, caller, config.concurrency, on_answer, on_failure)
        except PermanentError as error:
            raise TeacherError(f"the Anthropic API refused the run: {error.reason}") from None
        finally:
            await client.close()
    return {
        "send": caller.stats.as_dict(),
        "limiter": {"pauses": limiter.pauses, "waited_s": round(limiter.waited_s, 3)},
        "batch": batch_counts,
    }


async def _preflight(client: Any, caller: Caller, model: str) -> None:
    """Check the key and the model name with a free call before any paid request."""
    try:
        await caller.call(lambda: client.models.retrieve(model))
    except PermanentError as error:
        if error.permanent and error.reason.startswith("HTTP 404"):
            raise TeacherError(f"unknown model {model!r}: {error.reason}") from None
        raise TeacherError(f"cannot use the Anthropic API: {error.reason}") from None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 4)


def summarize(
    jobs: list[Job],
    records: dict[str, dict[str, Any]],
    failures: list[dict[str, Any]],
    done_before: set[str],
    traces: list[Trace],
    config: CaptureConfig,
    stats: dict[str, Any],
) -> dict[str, Any]:
    keys = {job.key for job in jobs}
    kept = [records[k] for k in keys if k in records]
    tokens = {name: sum(r["usage"].get(name, 0) for r in kept) for name in USAGE_FIELDS}
    prompt_tokens = (
        tokens["input_tokens"] + tokens["cache_read_input_tokens"] + tokens["cache_creation_input_tokens"]
    )
    costs = [r["cost_usd"] for r in kept]
    new = [r for r in kept if r["key"] not in done_before]
    return {
        "model": config.model,
        "mode": "batch" if config.batch else "messages",
        "traces": len(traces),
        "samples_per_trace": config.samples,
        "requests": {
            "total": len(jobs),
            "answered": len(kept),
            "from_cache": len(keys & done_before),
            "answered_now": len(new),
            "failed": len(failures),
            "failures_by_reason": dict(Counter(f["reason"].split(":")[0] for f in failures)),
        },
        "tokens": tokens,
        "cost_usd": round(sum(costs), 6) if kept and None not in costs else None,
        "cost_usd_now": round(sum(r["cost_usd"] for r in new), 6) if new and None not in costs else None,
        "prompt_cache": {
            "read_share": round(tokens["cache_read_input_tokens"] / prompt_tokens, 4)
            if prompt_tokens
            else None,
            "requests_reading": sum(1 for r in kept if r["usage"].get("cache_read_input_tokens")),
            "requests_writing": sum(1 for r in kept if r["usage"].get("cache_creation_input_tokens")),
        },
        "latency_s": {
            "p50": _percentile([r["latency_s"] for r in new], 0.5),
            "p95": _percentile([r["latency_s"] for r in new], 0.95),
        },
        "stop_reasons": dict(Counter(str(r["stop_reason"]) for r in kept)),
        "secrets_redacted": secret_counts(kept),
        "consistency": consistency_report(traces),
        **stats,
    }
