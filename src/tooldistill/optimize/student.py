"""One student request with a prompt, scored by the matcher.

A **prompt** is what optimization changes: a system text and few-shot messages (OpenAI chat
messages: a user turn, the assistant's native ``tool_calls``, the tool results).  Running a prompt
on a trace sends the system text, then the demonstrations, then the trace's own conversation, with
the trace's tools as native tools (``request.build_request``); the reply is parsed
(``parse_message``) and judged (``scoring.judge``) in one match mode.  The outcome carries the
score, the verdict's reason (GEPA's feedback), the calls and the raw reply.

A failed request or a reply that cannot be parsed is an outcome with score 0 and the reason in
words, never an exception: one bad example must not stop an optimization run.  The 0 is only the
search's per-example metric; the reported summary (``summarize``) leaves a failed request out of
the match rate and counts it beside it, as ``evaluate.summarize`` does (``match.stats.match_rate``).

This module imports neither DSPy nor Ray Tune, so Tune trial workers start quickly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import Field

from tooldistill.context import ContextPolicy, DoesNotFit, Fit, fitter_for, summarize_fits
from tooldistill.evaluate import first_message, parse_response
from tooldistill.match.stats import counts, match_rate
from tooldistill.request import apply_prompt, trace_request
from tooldistill.request import safe_tool_name as _safe_name
from tooldistill.retrieval import DemoBank
from tooldistill.schema import Trace, trace_from_row, trace_to_row
from tooldistill.scoring import judge
from tooldistill.student import EndpointError, EndpointSettings, StudentClient


class StudentSettings(EndpointSettings):
    """Where the student answers and how it is asked: ``EndpointSettings`` (endpoint, model,
    timeout, retries, timed-out requests, key variable, with their defaults) and the request."""

    temperature: float = 0.0
    max_tokens: int = 512
    #: What serves ``model`` when the run started it: its serve profile's SHA-256 (set by the
    #: pipeline, never sent).  It is part of the key of every result asked of the student, so a
    #: changed profile (an engine setting such as ``tool_strict_level``) is measured again.
    served_by: str | None = None
    #: Sent as ``reasoning_effort`` when set (GPT-OSS reads it; others ignore it).
    reasoning_effort: str | None = None
    #: Match mode that gives the score and the feedback.
    mode: str = "chain"
    #: Modes measured beside ``mode`` (reported, never optimized): ``names`` is the tool-name chain,
    #: what "calls the same tools as Claude" means without the arguments.
    also_modes: tuple[str, ...] = ("names",)
    #: Concurrent requests when this process evaluates a batch itself.
    concurrency: int = Field(default=8, ge=1)
    #: How a request longer than the student's window is cut; the pipeline fills ``window`` and
    #: ``tokenizer`` from the served profile when they are not given.
    context: ContextPolicy = Field(default_factory=ContextPolicy)


@dataclass(frozen=True)
class Prompt:
    """System text, few-shot messages and, from a ``dicl`` phase on, a bank of the teacher's examples
    from which each request gets its nearest ones as more demonstrations (``retrieval.DemoBank``).
    The plain artifact is ``{"system": ..., "demos": [...]}``, with ``"dicl": {...}`` when it has a
    bank."""

    system: str = ""
    demos: tuple[Mapping[str, Any], ...] = ()
    bank: DemoBank | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.system, "demos": [dict(d) for d in self.demos]}
        if self.bank is not None:
            out["dicl"] = self.bank.model_dump(mode="json")
        return out

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Prompt:
        demos = value.get("demos") or []
        if not isinstance(demos, list) or not all(isinstance(d, dict) and "role" in d for d in demos):
            raise ValueError("prompt demos must be a list of chat messages with a 'role'")
        bank = DemoBank.model_validate(value["dicl"]) if value.get("dicl") is not None else None
        return cls(str(value.get("system") or value.get("instructions") or ""), tuple(demos), bank)

    def with_system(self, system: str) -> Prompt:
        """The same prompt (demos, bank) with another system text."""
        return replace(self, system=system)

    def demos_for(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The demonstrations ``request`` (the client's request, before any prompt) is sent with:
        the fixed ones, then the bank's nearest examples for it."""
        fixed = [dict(d) for d in self.demos]
        return fixed + self.bank.select(request) if self.bank is not None else fixed


def demo_messages(trace: Trace, calls: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A trace and its calls as few-shot chat messages: the conversation's user turns (no system
    message: the prompt's own system text leads), the assistant's native tool calls, and one tool
    result per call, so that every OpenAI-compatible server accepts the sequence."""
    chosen = [
        {"name": c["name"], "arguments": dict(c.get("arguments") or {})}
        for c in (calls if calls is not None else [c.model_dump() for c in trace.reference_calls])
    ]
    messages: list[dict[str, Any]] = []
    for message in trace.messages:
        if message.role == "system":
            continue
        messages.append({"role": message.role, "content": message.content})
    ids = [f"demo_{trace.id[:8]}_{i}" for i in range(len(chosen))]
    assistant: dict[str, Any] = {"role": "assistant", "content": "" if chosen else "No tool is needed."}
    if chosen:
        assistant["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": _safe_name(c["name"]), "arguments": json.dumps(c["arguments"])},
            }
            for call_id, c in zip(ids, chosen, strict=True)
        ]
    messages.append(assistant)
    messages.extend({"role": "tool", "tool_call_id": call_id, "content": "(done)"} for call_id in ids)
    return messages


def request_for(trace: Trace, prompt: Prompt, settings: StudentSettings) -> dict[str, Any]:
    """The request the student is sent for ``trace`` (fitted into its window); raises
    ``context.DoesNotFit`` for a trace that cannot fit."""
    return fitted_request(trace, prompt, settings).request


def fitted_request(trace: Trace, prompt: Prompt, settings: StudentSettings) -> Fit:
    """The request for ``trace`` after the context policy, with what it cut."""
    request = raw_request(trace, prompt, settings)
    fitter = fitter_for(settings.context)
    return Fit(request) if fitter is None else fitter.fit(request)


def raw_request(trace: Trace, prompt: Prompt, settings: StudentSettings) -> dict[str, Any]:
    """The request before the context policy."""
    request = trace_request(trace, settings.model, settings.temperature, settings.max_tokens)
    request = apply_prompt(request, prompt.system or None, prompt.demos_for(request))
    if settings.reasoning_effort:
        request["reasoning_effort"] = settings.reasoning_effort
    return request


@dataclass
class Outcome:
    """One trace run with one prompt."""

    trace_id: str
    score: float
    match: bool
    reason: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    reply: str | None = None
    error: str | None = None
    latency_s: float = 0.0
    #: The verdict in each of ``also_modes`` (match or not).
    modes: dict[str, bool] = field(default_factory=dict)
    #: Why the trace was not sent (too long for the window after every cut); not scored.
    skipped: str | None = None
    #: What the context policy cut (``context.Fit.record``), when it cut anything.
    context: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "context": self.context,
            "trace_id": self.trace_id,
            "score": self.score,
            "match": self.match,
            "reason": self.reason,
            "calls": self.calls,
            "reply": self.reply,
            "error": self.error,
            "latency_s": self.latency_s,
            "modes": self.modes,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Outcome:
        fields: dict[str, Any] = {k: value[k] for k in cls.__dataclass_fields__ if k in value}
        return cls(**fields)


def reply_text(message: Mapping[str, Any] | None) -> str:
    """The reply as the reflection model should read it: text, then the native calls."""
    if not isinstance(message, Mapping):
        return "(no message)"
    parts = []
    if message.get("content"):
        parts.append(str(message["content"]))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {} if isinstance(call, Mapping) else {}
        parts.append(f"tool_call {function.get('name')}({function.get('arguments')})")
    return "\n".join(parts) or "(empty reply)"


def run_example(
    trace: Trace, prompt: Prompt, settings: StudentSettings, client: StudentClient | None = None
) -> Outcome:
    """Ask the student once and judge the reply; never raises for a bad answer or endpoint."""
    client = client or settings.client()
    try:
        fit = fitted_request(trace, prompt, settings)
    except DoesNotFit as error:
        return Outcome(trace.id, 0.0, False, f"skipped: {error}", skipped=str(error))
    started = time.perf_counter()
    try:
        response, _ = client.chat(fit.request)
    except EndpointError as error:
        # score 0 is what the search sees for this example (GEPA and DSPy need a number for every
        # one); every reported summary leaves the error out of the match rate (``summarize``)
        return Outcome(
            trace.id, 0.0, False, f"endpoint error: {error}", error=str(error),
            latency_s=time.perf_counter() - started,
        )  # fmt: skip
    latency = time.perf_counter() - started
    message = first_message(response)
    parsed = parse_response(response)
    also = [m for m in settings.also_modes if m != settings.mode]
    judged = judge(trace, parsed, [settings.mode, *also])
    verdict = judged["verdicts"][settings.mode]
    return Outcome(
        trace.id,
        float(verdict["score"]),
        bool(verdict["match"]),
        str(verdict["reason"]),
        judged["calls"],
        reply_text(message),
        latency_s=latency,
        modes={m: bool(judged["verdicts"][m]["match"]) for m in also},
        context=fit.record(),
    )


def run_batch(
    traces: Sequence[Trace],
    prompt: Prompt,
    settings: StudentSettings,
    concurrency: int | None = None,
    api_key: str | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every trace with one prompt, ``concurrency`` requests at a time, in input order.

    ``api_key`` overrides ``settings.api_key_env`` (a Tune trial on another node gets the key the
    driver read, since that node's environment may not hold it); ``on_outcome`` is called with each
    outcome as soon as it is in (from the worker threads)."""
    if not traces:
        return []
    client = settings.client(api_key)
    workers = max(1, min(concurrency or settings.concurrency, len(traces)))

    def one(trace: Trace) -> Outcome:
        outcome = run_example(trace, prompt, settings, client)
        if on_outcome is not None:
            on_outcome(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, traces))


def check_endpoint(settings: StudentSettings) -> None:
    """Fail with one clear error when nothing answers at the student endpoint."""
    settings.client().check()


#: The verdict key of the optimized mode in ``summarize``'s records (an outcome does not name it).
_OPTIMIZED = "(optimized)"


def _record(outcome: Outcome) -> dict[str, Any]:
    """An outcome as a ``match.stats`` record, in the optimized mode and every ``also`` mode."""
    verdicts = {_OPTIMIZED: {"match": outcome.match, "score": outcome.score, "reason": outcome.reason}}
    for mode, matched in outcome.modes.items():
        verdicts[mode] = {"match": matched, "score": float(matched), "reason": ""}
    return {"error": outcome.error, "skipped": outcome.skipped, "verdicts": verdicts}


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Match rate with its Wilson interval and mean score, by the same definition as
    ``evaluate.summarize`` (``match.stats.match_rate``): endpoint errors and traces skipped by the
    context policy are left out of n and counted beside it (``errors``; ``context.skipped``), never
    as misses."""
    records = [_record(o) for o in outcomes]
    summary = match_rate(records, _OPTIMIZED)
    summary["errors"] = counts(records)["errors"]
    first_error = next((o.error for o in outcomes if o.error), None)
    if first_error:
        summary["first_error"] = first_error
    answered = [o for o in outcomes if not o.error and not o.skipped]
    also = sorted({m for o in answered for m in o.modes})
    if also:  # the same answers in the modes measured beside the optimized one
        for record in records:  # an answer without a verdict in one of them did not match there
            for mode in also:
                record["verdicts"].setdefault(mode, {"match": False, "score": 0.0, "reason": ""})
        summary["also"] = {m: match_rate(records, m, mean_score=False) for m in also}
    sent = [o for o in outcomes if not o.skipped]
    skipped = [o for o in outcomes if o.skipped]
    if any(o.context for o in sent) or skipped:
        summary["context"] = summarize_fits([o.context for o in sent], len(skipped))
        if skipped:
            summary["context"]["first_skipped"] = skipped[0].skipped
    return summary


def trace_to_wire(trace: Trace) -> dict[str, Any]:
    """A trace as plain JSON for a Tune trial's config (rows round-trip exactly)."""
    return trace_to_row(trace)


def trace_from_wire(value: Mapping[str, Any]) -> Trace:
    return trace_from_row(value)
